"""The audit log, and the notification tracker that keeps the operator's
screen readable while the log keeps everything.

The audit log is NDJSON: one ``Event`` per line, encoded by
``schema.json_encoder``, so every line decodes back to an ``Event`` with
``schema.json_decoder``.

Durability: ``AuditLogger`` keeps no user-space buffer. ``write()`` returns
only after ``os.write`` has handed the whole line to the kernel, so an event
that ``write()`` accepted is in the file (in the page cache: it survives the
process being killed, SIGKILL included, though not a power cut unless
``flush(fsync=True)`` ran). There is nothing for a SIGTERM to lose, and
``close()`` only releases descriptors. A SIGTERM handler may still call
``close()``, even one that interrupts this thread's own ``write()``: the
close then happens as soon as that write has finished.
``install_sigterm_flush()`` installs such a handler.

Concurrent writers: the log is opened with ``O_APPEND`` and each line, or
each batch of whole lines, goes out in one ``os.write``. On Linux a write to
a regular file holds the inode lock for its whole length and ``O_APPEND``
places it at the end of the file under that lock, so appenders, threads or
processes, never interleave within a write, whatever its size: this is not
the ``PIPE_BUF`` rule, which is about pipes. It holds on local filesystems
(ext4, xfs, btrfs, tmpfs); not on NFS, where ``O_APPEND`` is emulated by
the client. A write is split only on an error (the disk filling mid-line)
or a fatal signal arriving mid-write; the logger finishes a short write at
once and, if the rest cannot be written, removes the fragment it left
(when nothing was appended after it), so a failed line never leaves half
a line behind.

Rotation: when a line would take the file past ``max_bytes``, the writer
takes an ``flock`` on ``PATH.lock``, checks that ``PATH`` is still the file
it has open (another process may have rotated it already, and then it only
reopens), and renames ``PATH`` -> ``PATH.1`` -> ... -> ``PATH.<backups>``,
dropping the oldest. A writer in another process that still holds the
renamed file appends its next lines there (in ``PATH.1``, not lost); that
file is full, so its next size check sends it through the lock to the new
``PATH``. A file may therefore end a few concurrent lines past
``max_bytes``. Lines are lost only when more than ``backups`` rotations
happen while some writer still holds the oldest file.
"""

from __future__ import annotations

import collections
import errno as _errno
import fcntl
import os
import signal
import threading
import time
import warnings
from typing import Any, Callable, Iterable, Iterator, Literal, Optional

import msgspec

from .errors import RuntimeGuardError
from .schema import Event, json_decoder, json_encoder

__all__ = [
    "AuditLogError", "AuditLogger", "AuditLogReader", "Notice", "NotificationTracker",
    "audit_log_files", "install_sigterm_flush", "read_audit_log",
]

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
RETRY_QUEUE_MAX = 10_000
"""Events kept for retry while the log cannot be written (on_error="count")."""

# Several lines go out in one write up to this size: large enough to make
# write_many cheap, small enough that a batch never dwarfs max_bytes.
_BATCH_BYTES = 256 * 1024

_OPEN_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC


class AuditLogError(RuntimeGuardError):
    """The audit log could not be opened, written, rotated or read.

    ``path`` is the file and ``errno`` the system error (0 when the problem
    is the content, such as an undecodable line).
    """

    def __init__(self, message: str, path: str, errno: int = 0):
        super().__init__(message)
        self.path = path
        self.errno = errno


def _error(path: str, doing: str, exc: OSError) -> AuditLogError:
    name = _errno.errorcode.get(exc.errno or 0, "")
    reason = os.strerror(exc.errno) if exc.errno else str(exc)
    return AuditLogError(f"audit log {path}: {doing} failed: {reason}" + (f" ({name})" if name else ""),
                         path, exc.errno or 0)


class AuditLogger:
    """Appends events to an NDJSON audit log; see the module docstring.

    ``on_error="raise"``: a failed write raises ``AuditLogError`` and the event
    is not in the log. ``on_error="count"``: the failure is counted in
    ``errors`` and the event waits in a retry queue (at most
    ``RETRY_QUEUE_MAX`` events; later ones are counted in ``dropped``),
    written, in order and ahead of newer events, by the next ``write``,
    ``write_many`` or ``flush`` that can. Lines already in the file are never
    touched.

    Thread-safe. Processes may each open their own logger on the same path.
    """

    def __init__(self, path: str | os.PathLike, *, max_bytes: int = DEFAULT_MAX_BYTES, backups: int = 5,
                 on_error: Literal["raise", "count"] = "raise"):
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, not {max_bytes}")
        if backups < 0:
            raise ValueError(f"backups must be 0 or more, not {backups}")
        if on_error not in ("raise", "count"):
            raise ValueError(f'on_error must be "raise" or "count", not {on_error!r}')
        self.path = os.fspath(path)
        self.max_bytes = max_bytes
        self.backups = backups
        self.on_error = on_error
        self.lines_written = 0
        self.bytes_written = 0
        self.errors = 0
        """Failed attempts to write, rotate or fsync."""
        self.dropped = 0
        """Events lost: the retry queue was full, or still held events at close()."""
        # Reentrant so that close() from a signal handler that interrupted this
        # thread's own write() does not deadlock; _busy makes it wait for that write.
        self._lock = threading.RLock()
        self._busy = False
        self._close_pending = False
        self._closed = False
        self._line = bytearray()
        """Reused encode buffer: no allocation per event."""
        self._retry: collections.deque[bytes] = collections.deque()
        self._lock_fd = -1
        try:
            self._fd = os.open(self.path, _OPEN_FLAGS, 0o600)
        except OSError as exc:
            raise _error(self.path, "open", exc) from exc

    # ---- public API ----

    @property
    def pending(self) -> int:
        """Events in the retry queue, accepted but not yet in the file."""
        return len(self._retry)

    @property
    def closed(self) -> bool:
        return self._closed

    def write(self, event: Event) -> bool:
        """Append one event as one line, in one ``os.write``.

        True: the line is in the file. False (only with ``on_error="count"``):
        it could not be written and waits in the retry queue.
        """
        with self._lock:
            self._busy = True
            try:
                self._check_open()
                line = self._line
                json_encoder.encode_into(event, line)
                line.append(10)  # b"\n"
                return self._emit(line, 1)
            finally:
                self._finish()

    def write_many(self, events: Iterable[Event]) -> int:
        """Append events, several whole lines per ``os.write``; the number now in the file.

        Each batch is atomic like a single line. If the iterable or an
        encode fails, the events before it are written first.
        """
        with self._lock:
            self._busy = True
            try:
                self._check_open()
                buf = self._line
                del buf[:]
                limit = min(_BATCH_BYTES, self.max_bytes)
                lines = written = 0
                try:
                    for event in events:
                        start = len(buf)
                        try:
                            json_encoder.encode_into(event, buf, start)
                        except BaseException:
                            del buf[start:]
                            raise
                        buf.append(10)
                        if lines and len(buf) > limit:
                            # The batch is full without this line: send it, keep the line.
                            head = buf[:start]
                            del buf[:start]
                            batch, lines = lines, 0
                            written += batch if self._emit(head, batch) else 0
                        lines += 1
                finally:
                    if lines:
                        batch, lines = lines, 0
                        written += batch if self._emit(buf, batch) else 0
                return written
            finally:
                self._finish()

    def flush(self, fsync: bool = False) -> bool:
        """Retry queued events; with ``fsync``, also force the file to stable storage.

        There is no buffer to flush otherwise. True when nothing is left pending.
        """
        with self._lock:
            self._busy = True
            try:
                self._check_open()
                ok = self._drain()
                if fsync and self._fd >= 0:
                    try:
                        os.fsync(self._fd)
                    except OSError as exc:
                        self.errors += 1
                        if self.on_error == "raise":
                            raise _error(self.path, "fsync", exc) from exc
                        ok = False
                return ok
            finally:
                self._finish()

    def close(self) -> None:
        """Retry queued events once more, then release the descriptors. Idempotent.

        Safe in a signal handler: if the handler interrupted a write of this
        logger, the close happens when that write is done.
        """
        with self._lock:
            if self._busy:
                self._close_pending = True
                return
            self._close_now()

    def __enter__(self) -> AuditLogger:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __del__(self) -> None:
        # Descriptors only: never write from a finalizer.
        for fd in (getattr(self, "_fd", -1), getattr(self, "_lock_fd", -1)):
            if fd >= 0 and not getattr(self, "_closed", True):
                try:
                    os.close(fd)
                except OSError:
                    pass

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return (f"<AuditLogger {self.path!r} {state} lines={self.lines_written} errors={self.errors} "
                f"pending={self.pending}>")

    # ---- internals (called with the lock held) ----

    def _check_open(self) -> None:
        if self._closed:
            raise AuditLogError(f"audit log {self.path} is closed", self.path)

    def _finish(self) -> None:
        self._busy = False
        if self._close_pending:
            self._close_now()

    def _close_now(self) -> None:
        if self._closed:
            return
        self._close_pending = False
        if self._retry:
            self._drain()
        self._closed = True
        if self._retry:
            lost = len(self._retry)
            self.dropped += lost
            self._retry.clear()
            warnings.warn(f"audit log {self.path}: {lost} events could not be written and are lost",
                          RuntimeWarning, stacklevel=3)
        for fd in (self._fd, self._lock_fd):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._fd = self._lock_fd = -1

    def _emit(self, data: bytes | bytearray, lines: int) -> bool:
        """Write whole lines; on failure raise or queue them per on_error."""
        if self._retry and not self._drain():
            # Still failing: queue behind the older events to keep the order.
            self._enqueue(data)
            return False
        try:
            self._append(data)
        except OSError as exc:
            self.errors += 1
            if self.on_error == "raise":
                raise _error(self.path, "write", exc) from exc
            self._enqueue(data)
            return False
        self.lines_written += lines
        self.bytes_written += len(data)
        return True

    def _enqueue(self, data: bytes | bytearray) -> None:
        # JSON lines hold no raw newline, so splitting gives back the events.
        for line in bytes(data).splitlines(keepends=True):
            if len(self._retry) < RETRY_QUEUE_MAX:
                self._retry.append(line)
            else:
                # Keep the oldest: the start of an outage matters most, and
                # `dropped` says how much is missing after it.
                self.dropped += 1

    def _drain(self) -> bool:
        retry = self._retry
        while retry:
            size = count = 0
            for line in retry:
                if count and size + len(line) > min(_BATCH_BYTES, self.max_bytes):
                    break
                size += len(line)
                count += 1
            batch = b"".join(retry.popleft() for _ in range(count))
            try:
                self._append(batch)
            except OSError:
                self.errors += 1
                retry.extendleft(reversed(batch.splitlines(keepends=True)))
                return False
            self.lines_written += count
            self.bytes_written += size
        return True

    def _append(self, data: bytes | bytearray) -> None:
        """Rotate if needed, then write all of data at the end of the file."""
        if self._fd < 0:
            # A reopen after rotation failed earlier: try again.
            self._fd = os.open(self.path, _OPEN_FLAGS, 0o600)
        size = os.fstat(self._fd).st_size
        if size and size + len(data) > self.max_bytes:
            self._rotate(len(data))
        fd = self._fd
        done = os.write(fd, data)
        if done == len(data):
            return
        # A short write: finish it at once, so as little as possible can land
        # between the two parts.
        end = os.lseek(fd, 0, os.SEEK_CUR)  # O_APPEND left the offset after our bytes
        start = end - done
        with memoryview(data) as view:
            try:
                while done < len(view):
                    n = os.write(fd, view[done:])
                    if n == 0:
                        raise OSError(_errno.EIO, os.strerror(_errno.EIO))
                    done += n
                    end += n
            except OSError:
                self._remove_fragment(fd, start, end)
                raise

    def _remove_fragment(self, fd: int, start: int, end: int) -> None:
        # Only when nothing was appended after the fragment: truncating then
        # would cut another writer's lines.
        try:
            if os.fstat(fd).st_size == end:
                os.ftruncate(fd, start)
        except OSError:
            pass

    def _rotate(self, incoming: int) -> None:
        if self._lock_fd < 0:
            self._lock_fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            mine = os.fstat(self._fd)
            try:
                current = os.stat(self.path)
            except FileNotFoundError:
                current = None
            if current is None or (current.st_dev, current.st_ino) != (mine.st_dev, mine.st_ino):
                # Another writer rotated while we waited or wrote: follow it.
                self._reopen()
                size = os.fstat(self._fd).st_size
                if not size or size + incoming <= self.max_bytes:
                    return
            self._shift_backups()
            self._reopen()
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _shift_backups(self) -> None:
        path = self.path
        if self.backups == 0:
            os.unlink(path)
            return
        # os.replace onto PATH.<backups> drops the oldest.
        for i in range(self.backups - 1, 0, -1):
            try:
                os.replace(f"{path}.{i}", f"{path}.{i + 1}")
            except FileNotFoundError:
                pass
        os.replace(path, f"{path}.1")

    def _reopen(self) -> None:
        fd = os.open(self.path, _OPEN_FLAGS, 0o600)
        old, self._fd = self._fd, fd
        os.close(old)


def install_sigterm_flush(logger: AuditLogger) -> Any:
    """On SIGTERM, close ``logger``, then do what was there before.

    The previous handler, if a function, is called next; if SIGTERM was
    ignored, nothing more happens; otherwise ``SystemExit(128 + SIGTERM)`` is
    raised so ``finally`` blocks run. Closing loses nothing (there is no
    buffer; see the module docstring): it retries queued events and releases
    the descriptors. Call from the main thread. Returns the previous handler.
    """
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum: int, frame: Any) -> None:
        logger.close()
        if callable(previous):
            previous(signum, frame)
        elif previous != signal.SIG_IGN:
            raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_sigterm)
    return previous


# ---- reading ----

class AuditLogReader:
    """Reads one audit log file back as ``Event``s.

    A torn last line (no final newline, or undecodable: a writer killed
    mid-line, a disk that filled) is skipped and counted in ``torn_lines``.
    An undecodable line anywhere else is corruption: ``AuditLogError`` with
    its line number.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self.torn_lines = 0
        self.lines_read = 0
        """Lines decoded into events by events()."""

    def events(self) -> Iterator[Event]:
        try:
            f = open(self.path, "rb")
        except OSError as exc:
            raise _error(self.path, "open", exc) from exc
        with f:
            # One line of lookahead: only the last line may be torn.
            held: Optional[bytes] = None
            number = 0
            for number, line in enumerate(f, 1):
                if held is not None:
                    yield self._decode(held, number - 1)
                held = line
            if held is None:
                return
            if not held.endswith(b"\n"):
                self.torn_lines += 1
                return
            try:
                event = json_decoder.decode(held)
            except msgspec.DecodeError:
                self.torn_lines += 1
                return
            self.lines_read += 1
            yield event

    __iter__ = events

    def _decode(self, line: bytes, number: int) -> Event:
        try:
            event = json_decoder.decode(line)
        except msgspec.DecodeError as exc:
            raise AuditLogError(f"audit log {self.path}, line {number}: not an event: {exc}", self.path) from None
        self.lines_read += 1
        return event


def read_audit_log(path: str | os.PathLike) -> Iterator[Event]:
    """The events of one audit log file; a torn last line is skipped with a warning."""
    reader = AuditLogReader(path)
    yield from reader.events()
    if reader.torn_lines:
        warnings.warn(f"audit log {reader.path}: skipped a torn last line", RuntimeWarning, stacklevel=2)


def audit_log_files(path: str | os.PathLike) -> list[str]:
    """An audit log and its rotated backups that exist, oldest first."""
    path = os.fspath(path)
    directory, base = os.path.split(path)
    numbered = []
    for name in os.listdir(directory or "."):
        suffix = name[len(base) + 1:]
        if name.startswith(base + ".") and suffix.isdigit():
            numbered.append((int(suffix), os.path.join(directory, name)))
    files = [p for _, p in sorted(numbered, reverse=True)]
    if os.path.exists(path):
        files.append(path)
    return files


# ---- notifications ----

class Notice(msgspec.Struct, frozen=True, gc=False):
    """What ``NotificationTracker.observe`` decided. True when ``notify``."""

    notify: bool
    suppressed: int = 0
    """With a notification: repeats of this pair suppressed in its previous
    window and not reported yet ("... and 57 more since")."""

    def __bool__(self) -> bool:
        return self.notify


class NotificationTracker:
    """Tells the operator once per (rule, target) per window.

    The first event of a pair notifies and opens a window of ``window_s``
    seconds; repeats inside it are suppressed and counted; the first event
    after it notifies again and carries the count. Pairs whose window closed
    with repeats nobody has heard of wait in ``drain_suppressed()`` for a
    summary. The audit log still records every event: this only decides
    what is shown.

    Memory: a pair is forgotten as soon as its window closes (amortized
    O(1) per call), and at most ``max_entries`` pairs are held; beyond that
    the oldest is evicted, its unreported repeats counted in
    ``lost_suppressed``, so a storm of unique targets costs bounded memory
    (and an evicted pair notifies early rather than never). Time comes from
    ``clock``, which must not go backwards. Not thread-safe: one consumer.
    """

    def __init__(self, window_s: float = 60.0, clock: Callable[[], float] = time.monotonic,
                 max_entries: int = 100_000):
        if window_s <= 0:
            raise ValueError(f"window_s must be positive, not {window_s}")
        if max_entries <= 0:
            raise ValueError(f"max_entries must be positive, not {max_entries}")
        self.window_s = window_s
        self.clock = clock
        self.max_entries = max_entries
        self.lost_suppressed = 0
        """Repeats evicted under the max_entries cap before being reported."""
        # Pairs in their window: key -> [window start, repeats]; ordered by start.
        self._open: collections.OrderedDict[tuple[str, str], list] = collections.OrderedDict()
        # Pairs whose window closed with unreported repeats: key -> repeats.
        self._closed: collections.OrderedDict[tuple[str, str], int] = collections.OrderedDict()

    def observe(self, rule: str, target: str) -> Notice:
        now = self.clock()
        self._expire(now)
        key = (rule, target)
        entry = self._open.get(key)
        if entry is not None:
            entry[1] += 1
            return Notice(False)
        suppressed = self._closed.pop(key, 0)
        self._open[key] = [now, 0]
        while len(self._open) + len(self._closed) > self.max_entries:
            if self._closed:
                self.lost_suppressed += self._closed.popitem(last=False)[1]
            else:
                self.lost_suppressed += self._open.popitem(last=False)[1][1]
        return Notice(True, suppressed)

    def should_notify(self, rule: str, target: str) -> bool:
        return self.observe(rule, target).notify

    def suppressed(self, rule: str, target: str) -> int:
        """Repeats of the pair suppressed and not reported yet."""
        key = (rule, target)
        entry = self._open.get(key)
        return entry[1] if entry is not None else self._closed.get(key, 0)

    def drain_suppressed(self) -> list[tuple[str, str, int]]:
        """(rule, target, repeats) for each pair whose window closed with
        unreported repeats, then forgets them: for a periodic summary."""
        self._expire(self.clock())
        out = [(rule, target, n) for (rule, target), n in self._closed.items()]
        self._closed.clear()
        return out

    def __len__(self) -> int:
        return len(self._open) + len(self._closed)

    def _expire(self, now: float) -> None:
        opened = self._open
        while opened:
            key, (start, repeats) = next(iter(opened.items()))
            if now - start < self.window_s:
                break
            del opened[key]
            if repeats:
                self._closed[key] = repeats
