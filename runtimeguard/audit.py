"""The audit log, and the notification tracker that keeps the operator's
screen readable while the log keeps everything.

The audit log is NDJSON: one ``EventRecord`` per line, encoded by
``schema.json_encoder``, so every line decodes back to an ``EventRecord`` with
``schema.json_decoder``.

Durability: ``AuditLogger`` keeps no user-space buffer. ``write()`` returns
only after ``os.write`` has handed the whole line to the kernel, so an event
that ``write()`` accepted is in the file (in the page cache: it survives the
process being killed, SIGKILL included, though not a power cut unless
``flush(fsync=True)`` ran). There is nothing for a SIGTERM to lose, and
``close()`` only releases descriptors, but for one thing: with coalescing
(below), the counts of folded repeats wait in memory for at most one
interval; ``close()`` writes them, a SIGKILL loses them (never a first
occurrence: that is written at once). A signal handler may call
``close()``, even one that interrupts a call of this logger (a ``write()``,
or ``close()`` itself) in its own thread: the close then happens as soon as
that call has finished. If the handler then raises (to end the program),
the exception cuts that call short, but the logger still closes on the
way out (with CPython 3.11 or later: earlier ones may also run the handler
at the very start of a ``finally``, before it can do anything); only a line
the call had not written yet is lost, which with coalescing may be a count
of earlier decisions. ``install_sigterm_flush()`` installs a handler that
loses nothing: it raises only once the call it interrupted has finished and
the logger is closed.

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
happen while some writer still holds the oldest file. An empty file is
never rotated.

Rotation by time (``rotate_every_s``, off by default): a file is also
rotated once it is ``rotate_every_s`` seconds old, by the next write or
``tick()`` (so an idle log rolls too), through the same lock and the same
check as above, so concurrent writers agree on who rotates. Its age counts
from its birth: the wall-clock time (``time.time_ns()``, so it survives
restarts; a clock step moves rotation with it) at which a time-rotating
logger first saw the file hold a line; in practice the write of its first
line, whose writer records it at once. The birth is kept in ``PATH.lock``
as one text line, ``runtimeguard-audit-birth 1 DEV INO CRC BORN_NS``: the
file's device and inode and the CRC-32 of its first line (at most 256
bytes), so a record never applies to another file that reuses the inode
number; every process and every restart reads the same one. A file with no
valid record (the lock file was removed, or only loggers without
``rotate_every_s`` wrote it) gets one when a time-rotating logger first sees
it: its age then counts from that moment, so time rotation may come up to
one interval late, never early. A rotation by time that fails (say, the
directory is not writable) is counted in ``errors`` and retried a second
later; the line still goes to the current file.

Compression (``compress``, off by default): rotated files are gzipped to
``PATH.<n>.gz``, all but ``PATH.1``, which stays plain for one rotation
(as with logrotate's ``delaycompress``): a shipper that follows the renamed
file reads its tail there, and late lines of other writers land there. A
file is compressed in a background thread of the logger that rotated,
after it has shifted to ``PATH.2`` or beyond, never under the rotation lock
(writers never wait for it), into a temporary ``PATH.gz-tmp-*`` that is
synced, then, under the rotation lock, renamed to ``PATH.<n>.gz`` where
``n`` is the file's position then (it may have shifted meanwhile; if it was
dropped, the copy is discarded), and only then is the plain file unlinked.
The guarantee: no line is ever lost to compression. Every logger holds a
shared ``flock`` on the file it appends to, taken when it opens the file
and checked to be still linked after it is taken; the compressor takes an
exclusive ``flock`` without waiting, and a file a writer holds is left
plain for a later pass (at the next rotation). So while a file is read for
compression no writer can append to it, and once it is unlinked no writer
can take it again. The plain file is unlinked only once its ``.gz``,
holding exactly its bytes (checked by size under the rotation lock), is in
place: a crash in between leaves both, and readers then read the plain one.
A writer lets go of a renamed file at its next size or time check that
finds it due, or at ``tick()``, which notices the rotation; an idle writer
that never ticks keeps its file plain. Where ``flock`` is not supported,
nothing is compressed. The guarantee covers writers that take the shared
``flock`` (every ``AuditLogger`` does); for one that takes none, the size
check still keeps the plain file when lines were added during the copy,
but a line added in the instant between that check and the unlink would
be lost. ``close()`` waits for a compression under way. With ``backups``
below 2 nothing is compressed. ``PATH.kept`` is never compressed.

Permissions: every file of the log (``PATH``, its rotated and compressed
files, ``PATH.kept``, ``PATH.lock``) is mode 0600, whatever the umask: a file
the logger creates is made 0600, and a file of the log it opens with other
bits (wider, or narrower) is set back to 0600 when the logger may change it
(it owns it, or runs as root): the log holds command lines, paths and
addresses. A shipper must run as the log's owner or be able to read any
file (root, or ``CAP_DAC_READ_SEARCH``).

Coalescing (``coalesce_s``, off by default; the guard turns it on): a workload
must not be able to flush the log by repeating one denied operation.
Identical decisions (same event name, rule, process, target, action and
data) are folded: the first is written at once; repeats within
``coalesce_s`` of the last line written for them are counted, and one line
per interval at most carries the latest of them with ``repeated: N``, the
number of other identical decisions folded into it. A line stands for
``1 + repeated`` decisions, so the decisions made are the lines plus the sum
of ``repeated``. Pending counts are written when their interval ends (on the
next write, or ``tick()``), by ``flush()``, and at ``close()``: none is lost
by closing. ``lost`` records of one source are merged the same way (counts
added). Other events are never folded.

First records (``keep_first``, off by default; the guard turns it on): the
logger remembers where it wrote the first record of each (rule, target) of
the run (events without a rule: per event name; ``lost`` records: per
source and event kind counted). When rotation is about to drop a file
holding such records, it copies them to ``PATH.kept`` first, which is
never rotated. So every first record stays somewhere in the log's files,
once: in the file it was written to while that file exists (or its
``.gz``, when this logger compressed it), in ``PATH.kept`` after.
``audit_log_files()`` lists ``PATH.kept`` first (it holds the oldest
records). ``keep_first`` caps the targets kept per rule, so
a workload that makes ever new targets (a port scan) cannot grow
``PATH.kept`` without bound or starve another rule; firsts beyond the cap
are counted in ``keep_skipped``. Only records this logger wrote and whose
file it rotated away itself are kept; ``PATH.kept`` grows by at most
``keep_first`` records per rule per run and is never trimmed.

Write failures (``on_error="count"``): lines that cannot be written wait in
the retry queue; those that do not fit in it (or are still there at
``close()``) are lost, counted in ``dropped`` and, per event name, in
``dropped_by_kind``. As soon as writing works again, after the queued lines,
the logger writes a ``lost`` record (``source: "audit_log"``, ``error``: the
errno name) counting them per kind.
"""

from __future__ import annotations

import collections
import errno as _errno
import fcntl
import gzip
import os
import re
import secrets
import signal
import stat
import threading
import time
import warnings
import zlib
from typing import Any, Callable, Iterable, Iterator, Literal, Optional, Union

import msgspec

from .errors import RuntimeGuardError
from .schema import BLOCK_EVENTS, EVENT_IDS, Event, EventRecord, LostData, as_record, json_decoder, json_encoder

__all__ = [
    "AuditLogError", "AuditLogger", "AuditLogReader", "Coalescer", "Notice", "NotificationTracker",
    "audit_log_files", "coalesce_key", "install_sigterm_flush", "read_audit_log",
]

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
RETRY_QUEUE_MAX = 10_000
"""Events kept for retry while the log cannot be written (on_error="count")."""
DEFAULT_COALESCE_S = 1.0
"""The guard's coalescing interval: at most one line per second per repeated decision."""
DEFAULT_KEEP_FIRST = 1000
"""The guard's cap on first records kept from rotation, per rule."""
KEPT_SUFFIX = ".kept"
"""``PATH.kept``: first records whose file was rotated away; never rotated."""
GZ_SUFFIX = ".gz"
"""``PATH.<n>.gz``: a rotated file, compressed (``compress=True``)."""
LOCK_SUFFIX = ".lock"
"""``PATH.lock``: the rotation lock, and the birth of ``PATH`` (``rotate_every_s``)."""
COMPRESS_LEVEL = 6
"""gzip level of rotated files: zlib's default trade of speed for size."""

_TMP_MARK = ".gz-tmp-"
# The birth record in PATH.lock: one fixed-size line, so a rewrite in place
# never leaves the tail of a longer one behind.
_BIRTH_TAG = b"runtimeguard-audit-birth"
_BIRTH_SIZE = 128
_HEAD_BYTES = 256
# PATH.<n> or PATH.<n>.gz, n from 1; ASCII digits only (str.isdigit takes "²").
_BACKUP_NAME = re.compile(r"([1-9][0-9]*)(\.gz)?\Z")

# Several lines go out in one write up to this size: large enough to make
# write_many cheap, small enough that a batch never dwarfs max_bytes.
_BATCH_BYTES = 256 * 1024

# Read too: the first line dates the file (rotate_every_s).
_OPEN_FLAGS = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC


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


# ---- files ----

def _fix_mode(fd: int) -> None:
    """Set an open file of the log to 0600 if it is anything else."""
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) != 0o600:
            os.fchmod(fd, 0o600)
    except OSError:
        pass  # not ours to change (another owner, a read-only filesystem): it still works


def _close_quietly(fd: int) -> None:
    if fd >= 0:
        try:
            os.close(fd)
        except OSError:
            pass


def _open_private(path: str, flags: int) -> int:
    """Open (creating if need be) a file of the log, mode 0600 whatever the umask."""
    fd = os.open(path, flags | os.O_CREAT | os.O_CLOEXEC, 0o600)
    _fix_mode(fd)
    return fd


def _first_line(fd: int) -> Optional[bytes]:
    """A file's first line, or its first _HEAD_BYTES bytes when the line is
    longer; None while not even that is there (a first write in progress)."""
    head = os.pread(fd, _HEAD_BYTES, 0)
    end = head.find(b"\n")
    if end >= 0:
        return head[:end + 1]
    return head if len(head) == _HEAD_BYTES else None


def _birth_record(dev: int, ino: int, crc: int, born_ns: int) -> bytes:
    text = b"%s 1 %d %d %d %d" % (_BIRTH_TAG, dev, ino, crc, born_ns)
    return text.ljust(_BIRTH_SIZE - 1) + b"\n"


def _parse_birth(raw: bytes) -> Optional[tuple[int, int, int, int]]:
    """(dev, ino, crc, born_ns) of a birth record; None if there is none."""
    parts = raw.split()
    if len(parts) != 6 or parts[0] != _BIRTH_TAG or parts[1] != b"1":
        return None
    try:
        dev, ino, crc, born = (int(p) for p in parts[2:])
    except ValueError:
        return None
    return dev, ino, crc, born


# ---- coalescing ----

def coalesce_key(event: EventRecord) -> Optional[tuple]:
    """What makes two events the same decision for coalescing; None: never folded.

    Decisions: the event name, action, process (pid and entity id), rule,
    mode, target and the decision's data (rule index, comm, method, ...).
    ``lost`` notices: one key per source (their counts are added up).
    """
    name = event.name
    if name == "lost":
        return ("lost", event.data.source)
    if name not in BLOCK_EVENTS:
        return None
    policy, target = event.policy, event.target_context
    return (name, event.action, event.pid, event.entity_id, policy.rule if policy is not None else None,
            policy.mode if policy is not None else None, target.formatted if target is not None else None,
            event.data)


def _merge_lost(a: EventRecord, b: EventRecord) -> EventRecord:
    """b's event carrying the loss of both notices."""
    by_kind = dict(a.data.by_kind)
    for kind, n in b.data.by_kind.items():
        by_kind[kind] = by_kind.get(kind, 0) + n
    data = msgspec.structs.replace(b.data, count=a.data.count + b.data.count, by_kind=by_kind,
                                   error=b.data.error or a.data.error)
    return msgspec.structs.replace(b, data=data)


class Coalescer:
    """Folds identical decisions; the pure logic behind ``AuditLogger(coalesce_s=...)``.

    ``add(event)`` returns the lines to write now, in order: the event itself
    when it is the first of its key (``coalesce_key``) or is never folded,
    and the summaries of other keys whose interval has ended. A repeat within
    ``interval_s`` of the last line written for its key is counted instead;
    once the interval has ended, one line carries the latest repeat with
    ``repeated`` = the other repeats folded into it. So per key: the first
    decision is written at once, lines are at least ``interval_s`` apart,
    and lines + sum(repeated) == decisions once ``flush()`` has run.

    Memory: a key is forgotten one interval after its last line if nothing
    was folded since; at most ``max_entries`` keys are held, the oldest
    evicted past that (its pending count written then, never dropped).
    Time comes from ``clock``, which must not go backwards. Not thread-safe.
    """

    def __init__(self, interval_s: float = DEFAULT_COALESCE_S, clock: Callable[[], float] = time.monotonic,
                 max_entries: int = 100_000):
        if not interval_s > 0:
            raise ValueError(f"interval_s must be positive, not {interval_s}")
        if max_entries <= 0:
            raise ValueError(f"max_entries must be positive, not {max_entries}")
        self.interval_s = interval_s
        self.clock = clock
        self.max_entries = max_entries
        self.coalesced = 0
        """Decisions given out only as part of a line's ``repeated`` count."""
        self.pending = 0
        """Events folded and not given out yet."""
        # key -> [time of the key's last line, events folded since, the latest of them]; oldest line first.
        self._entries: collections.OrderedDict[tuple, list] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, event: EventRecord) -> list[EventRecord]:
        now = self.clock()
        out: list[EventRecord] = []
        self._expire(now, out)
        key = coalesce_key(event)
        if key is None:
            out.append(event)
            return out
        entry = self._entries.get(key)
        if entry is None:
            self._entries[key] = [now, 0, None]
            out.append(event)
            if len(self._entries) > self.max_entries:
                _, oldest = self._entries.popitem(last=False)
                if oldest[1]:
                    out.append(self._summary(oldest))
            return out
        entry[1] += 1
        entry[2] = event if entry[2] is None or event.name != "lost" else _merge_lost(entry[2], event)
        self.pending += 1
        return out

    def due(self) -> list[EventRecord]:
        """The summaries whose interval has ended."""
        out: list[EventRecord] = []
        self._expire(self.clock(), out)
        return out

    def flush(self) -> list[EventRecord]:
        """Every pending summary now; then forgets every key."""
        out = [self._summary(entry) for entry in self._entries.values() if entry[1]]
        self._entries.clear()
        return out

    def _summary(self, entry: list) -> EventRecord:
        folded, event = entry[1], entry[2]
        self.pending -= folded
        entry[1], entry[2] = 0, None
        if event.name == "lost" or folded == 1:
            return event
        self.coalesced += folded - 1
        return msgspec.structs.replace(event, repeated=folded - 1)

    def _expire(self, now: float, out: list[EventRecord]) -> None:
        entries = self._entries
        interval = self.interval_s
        while entries:
            key, entry = next(iter(entries.items()))
            if now - entry[0] < interval:
                break
            if entry[1]:
                out.append(self._summary(entry))
                entry[0] = now
                entries.move_to_end(key)
            else:
                del entries[key]


class _NameOnly(msgspec.Struct):
    name: str = "?"


_name_decoder = msgspec.json.Decoder(_NameOnly)


def _line_name(line: bytes) -> str:
    try:
        return _name_decoder.decode(line).name
    except msgspec.DecodeError:
        return "?"


class AuditLogger:
    """Appends events to an NDJSON audit log; see the module docstring.

    ``on_error="raise"``: a failed write raises ``AuditLogError`` and the event
    is not in the log. ``on_error="count"``: the failure is counted in
    ``errors`` and the event waits in a retry queue (at most
    ``RETRY_QUEUE_MAX`` events; later ones are counted in ``dropped`` and
    ``dropped_by_kind``), written, in order and ahead of newer events, by the
    next ``write``, ``write_many``, ``tick`` or ``flush`` that can, followed
    by a ``lost`` record for the dropped ones. Lines already in the file are
    never touched.

    ``coalesce_s``: fold identical decisions, one line per interval at most
    (0: off). ``keep_first``: keep the first record of each (rule, target),
    up to this many targets per rule, from rotation in ``PATH.kept`` (0:
    off). ``clock``: the monotonic clock coalescing uses.

    ``rotate_every_s``: also rotate a non-empty file once it is this many
    seconds old (None: by size only), on the next write or ``tick()``.
    ``compress``: gzip rotated files from ``PATH.2`` on, in the background.
    See the module docstring for both.

    Thread-safe. Processes may each open their own logger on the same path.
    """

    def __init__(self, path: str | os.PathLike, *, max_bytes: int = DEFAULT_MAX_BYTES, backups: int = 5,
                 on_error: Literal["raise", "count"] = "raise", coalesce_s: float = 0.0, keep_first: int = 0,
                 clock: Callable[[], float] = time.monotonic, rotate_every_s: Optional[float] = None,
                 compress: bool = False):
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, not {max_bytes}")
        if backups < 0:
            raise ValueError(f"backups must be 0 or more, not {backups}")
        if rotate_every_s is not None and not rotate_every_s > 0:
            raise ValueError(f"rotate_every_s must be None (off) or positive, not {rotate_every_s}")
        if on_error not in ("raise", "count"):
            raise ValueError(f'on_error must be "raise" or "count", not {on_error!r}')
        if coalesce_s < 0:
            raise ValueError(f"coalesce_s must be 0 (off) or positive, not {coalesce_s}")
        if keep_first < 0:
            raise ValueError(f"keep_first must be 0 (off) or positive, not {keep_first}")
        self.path = os.fspath(path)
        self.max_bytes = max_bytes
        self.backups = backups
        self.on_error = on_error
        self.coalesce_s = coalesce_s
        self.keep_first = keep_first
        self.clock = clock
        self.rotate_every_s = rotate_every_s
        self.compress = bool(compress)
        self.lines_written = 0
        self.bytes_written = 0
        self.errors = 0
        """Failed attempts to write, rotate or fsync."""
        self.dropped = 0
        """Events lost: the retry queue was full, or still held events at close()."""
        self.dropped_by_kind: dict[str, int] = {}
        """``dropped`` per event name."""
        self.lost_records = 0
        """``lost`` records written for dropped events."""
        self.kept_lines = 0
        """First records copied to ``PATH.kept`` before their file was rotated away."""
        self.keep_skipped = 0
        """Lines of (rule, target) pairs not kept because their rule's cap was reached
        (each such pair's first line, and its later lines)."""
        self.keep_lost = 0
        """First records that could not be kept (their file rotated away by another process,
        unreadable, or ``PATH.kept`` unwritable until close)."""
        self.rotations = 0
        """Rotations this logger made (by size or time; not those it followed)."""
        self.files_compressed = 0
        """Rotated files this logger's compressor replaced by their ``.gz``."""
        self.compress_errors = 0
        """Compressions that failed (the plain file stays, nothing is lost; retried at the next rotation)."""
        # Reentrant so that close() from a signal handler that interrupted this
        # thread's own write() does not deadlock; _busy makes it wait for that write.
        self._lock = threading.RLock()
        self._busy = False
        self._close_pending = False
        self._after_close: Optional[Callable[[], None]] = None
        """What a signal handler that found the logger busy wants done once it is closed."""
        self._closed = False
        self._line = bytearray()
        """Reused encode buffer: no allocation per event."""
        self._retry: collections.deque[tuple[bytes, bool]] = collections.deque()
        """(line, is a first record to keep)."""
        self._retry_at = 0.0
        self._unreported: dict[str, int] = {}
        """Dropped events no lost record has reported yet."""
        self._last_error = ""
        self._coalescer = Coalescer(coalesce_s, clock) if coalesce_s > 0 else None
        # First records: the (rule, target) pairs seen, pairs per rule, and where
        # the kept lines are: (st_dev, st_ino) -> [(offset, length) or the line itself].
        self._first_seen: set[tuple] = set()
        self._first_per_rule: collections.Counter = collections.Counter()
        self._pinned: dict[tuple[int, int], list] = {}
        self._kept_backlog: list[bytes] = []
        # The compressor thread moves the first records of a file it compressed:
        # _pinned is shared with it (a leaf lock: nothing is waited for under it).
        self._pin_lock = threading.Lock()
        self._lock_fd = -1
        # Time rotation: the birth of the file known last, by (st_dev, st_ino).
        self._every_ns = None if rotate_every_s is None else max(1, int(rotate_every_s * 1e9))
        self._birth_key: Optional[tuple[int, int]] = None
        self._birth_ns = 0
        self._rotate_retry_at = 0.0
        # The compressor: one thread at a time, started by a rotation, gone when idle.
        self._compress_lock = threading.Lock()
        self._compress_wanted = False
        self._compressor: Optional[threading.Thread] = None
        try:
            self._fd = self._open_log()
        except OSError as exc:
            raise _error(self.path, "open", exc) from exc

    # ---- public API ----

    @property
    def pending(self) -> int:
        """Events in the retry queue, accepted but not yet in the file."""
        return len(self._retry)

    @property
    def repeats_pending(self) -> int:
        """Decisions folded by coalescing whose count is not written yet."""
        return self._coalescer.pending if self._coalescer is not None else 0

    @property
    def coalesced(self) -> int:
        """Decisions written only as part of a line's ``repeated`` count."""
        return self._coalescer.coalesced if self._coalescer is not None else 0

    @property
    def closed(self) -> bool:
        return self._closed

    def write(self, event: Union[Event, EventRecord]) -> bool:
        """Append one event as one line, in one ``os.write`` (a live
        ``Event`` is resolved into its ``EventRecord`` first).

        True: the line is in the file (with coalescing: or the event is
        counted for a later line). False (only with ``on_error="count"``):
        it could not be written and waits in the retry queue.
        """
        with self._lock:
            self._busy = True
            try:
                self._check_open()
                event = as_record(event)
                if self._coalescer is None:
                    return self._write_lines((event,)) == 1
                lines = self._coalescer.add(event)
                return self._write_lines(lines) == len(lines)
            finally:
                self._busy = False  # here, not in _finish: see there
                self._finish()

    def write_many(self, events: Iterable[Union[Event, EventRecord]]) -> int:
        """Append events, several whole lines per ``os.write``; the number of lines now in the file.

        Each batch is atomic like a single line. If the iterable or an
        encode fails, the events before it are written first. With
        coalescing, folded events make no line of their own.
        """
        with self._lock:
            self._busy = True
            try:
                self._check_open()
                events = map(as_record, events)
                if self._coalescer is not None:
                    events = self._coalesced(events)
                return self._write_lines(events)
            finally:
                self._busy = False  # here, not in _finish: see there
                self._finish()

    def tick(self) -> int:
        """Write the coalesced counts whose interval has ended; retry queued
        events (at most once per second while the log cannot be written);
        rotate the file if it is due by time (``rotate_every_s``: so an idle
        log rolls too); move to the new ``PATH`` if another writer rotated
        the file away (so a file this logger no longer needs can be
        compressed). Call it now and then (the guard does, on every poll).
        Lines written."""
        with self._lock:
            self._busy = True
            try:
                self._check_open()
                lines = self._coalescer.due() if self._coalescer is not None else []
                if lines:
                    return self._write_lines(lines)
                if (self._retry or self._unreported) and self.clock() >= self._retry_at:
                    self._retry_at = self.clock() + 1.0
                    self._catch_up()
                self._tick_rotate()
                return 0
            finally:
                self._busy = False  # here, not in _finish: see there
                self._finish()

    def flush(self, fsync: bool = False) -> bool:
        """Write every pending coalesced count and retry queued events; with
        ``fsync``, also force the file to stable storage. True when nothing
        is left pending."""
        with self._lock:
            self._busy = True
            try:
                self._check_open()
                if self._coalescer is not None:
                    lines = self._coalescer.flush()
                    if lines:
                        self._write_lines(lines)
                ok = self._catch_up()
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
                self._busy = False  # here, not in _finish: see there
                self._finish()

    def close(self) -> None:
        """Write pending coalesced counts, retry queued events once more,
        wait for a compression under way, then release the descriptors.
        Idempotent.

        Safe in a signal handler: if the handler interrupted a call of this
        logger in its thread (a write, or a close), the close happens when
        that call is done.
        """
        with self._lock:
            self._close_pending = True
            if not self._busy:
                self._finish()

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
                f"pending={self.pending} dropped={self.dropped}>")

    # ---- internals (called with the lock held) ----

    def _check_open(self) -> None:
        if self._closed:
            raise AuditLogError(f"audit log {self.path} is closed", self.path)

    def _finish(self) -> None:
        """At the end of a call, with _busy cleared: the close a signal handler
        asked for while the call ran, then what the handler wanted after it."""
        # Signal handlers run between bytecodes of this thread, at the
        # interpreter's checks (CPython 3.11+): on entering a function (this one
        # too), after a call, inside a call retried after EINTR; never between
        # a plain load and store. So each call clears _busy in
        # its own finally, before calling anything, and not here: a handler
        # that closes and then raises (a SIGTERM handler's SystemExit) may run
        # on entering this method, and with _busy still set its close() would
        # only mark the close pending, then its exception would leave before
        # anything cleared _busy or looked at _close_pending; the logger would
        # stay open, and busy for good (every later close() only marking it
        # pending again). Cleared first, a handler that runs from here on finds
        # the logger idle and closes it itself.
        #
        # The close runs with _busy set: a handler that interrupts it only asks
        # again, instead of starting a second close in the middle of this one,
        # which would release the descriptors and mark the logger closed while
        # this one still has lines in hand (the counts it took out of the
        # coalescer): lost, or written to the file reopened after the close,
        # and that descriptor leaked.
        if self._close_pending and not self._closed:
            self._busy = True
            try:
                self._close_now()
            finally:
                self._busy = False
        then, self._after_close = self._after_close, None
        if then is not None:
            then()

    def _close_then(self, then: Callable[[], None]) -> None:
        """close(), then then(): both now, or, when called from a signal handler
        that interrupted a call of this logger in this thread, both once that
        call has finished (so then() may raise without cutting it short)."""
        with self._lock:
            self._close_pending = True
            self._after_close = then
            if not self._busy:
                self._finish()

    def _close_now(self) -> None:
        """The close itself, with _busy set (see _finish)."""
        if self._closed:
            return
        # Closing never raises for a write that fails: what cannot be written
        # is counted in dropped, with a warning.
        on_error, self.on_error = self.on_error, "count"
        try:
            if self._coalescer is not None:
                lines = self._coalescer.flush()
                if lines:
                    self._write_lines(lines)
            if self._retry or self._unreported:
                self._catch_up()
            if self._kept_backlog:
                self._write_kept()
        finally:
            self.on_error = on_error
        self._wait_compressor()
        lost = list(self._retry)
        self._retry.clear()
        for line, _ in lost:
            self._count_dropped(line)
        unkept = bool(self._kept_backlog)
        self.keep_lost += sum(chunk.count(b"\n") for chunk in self._kept_backlog)
        self._kept_backlog.clear()
        # Each descriptor is forgotten before it is closed: if an exception cuts
        # this close short, the next one never closes a number reused since.
        fd, self._fd = self._fd, -1
        _close_quietly(fd)
        fd, self._lock_fd = self._lock_fd, -1
        _close_quietly(fd)
        self._closed = True
        self._close_pending = False
        # Last: a warning may raise (-W error), and the logger is closed by then.
        if lost:
            warnings.warn(f"audit log {self.path}: {len(lost)} events could not be written and are lost",
                          RuntimeWarning, stacklevel=4)
        if unkept:
            warnings.warn(f"audit log {self.path}: first records could not be kept in {self.path}{KEPT_SUFFIX}",
                          RuntimeWarning, stacklevel=4)

    def _coalesced(self, events: Iterable[EventRecord]) -> Iterator[EventRecord]:
        add = self._coalescer.add
        for event in events:
            yield from add(event)

    def _write_lines(self, events: Iterable[EventRecord]) -> int:
        """Encode and write events, batched; the number of lines now in the file."""
        buf = self._line
        del buf[:]
        limit = min(_BATCH_BYTES, self.max_bytes)
        keep = self.keep_first
        lines = written = 0
        pins: list[tuple[int, int]] = []  # (start, length) in buf of the first records to keep
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
                    head_pins, pins = pins, []
                    batch, lines = lines, 0
                    written += batch if self._emit(head, batch, head_pins) else 0
                    start = 0
                if keep and self._is_first(event):
                    pins.append((start, len(buf) - start))
                lines += 1
        finally:
            if lines:
                batch, lines = lines, 0
                written += batch if self._emit(buf, batch, pins) else 0
        return written

    def _emit(self, data: bytes | bytearray, lines: int, pins: list[tuple[int, int]]) -> bool:
        """Write whole lines; on failure raise or queue them per on_error."""
        if (self._retry or self._unreported) and not self._catch_up():
            # Still failing: queue behind the older events to keep the order.
            self._enqueue(data, pins)
            return False
        try:
            short = self._append(data)
        except OSError as exc:
            self._failed(exc)
            if self.on_error == "raise":
                raise _error(self.path, "write", exc) from exc
            self._enqueue(data, pins)
            return False
        self.lines_written += lines
        self.bytes_written += len(data)
        if pins:
            self._track(data, pins, short)
        return True

    def _failed(self, exc: OSError) -> None:
        self.errors += 1
        self._last_error = _errno.errorcode.get(exc.errno or 0, "") or str(exc)

    def _enqueue(self, data: bytes | bytearray, pins: list[tuple[int, int]]) -> None:
        starts = {start for start, _ in pins}
        pos = 0
        # JSON lines hold no raw newline, so splitting gives back the events.
        for line in bytes(data).splitlines(keepends=True):
            if len(self._retry) < RETRY_QUEUE_MAX:
                self._retry.append((line, pos in starts))
            else:
                # Keep the oldest: the start of an outage matters most, and
                # `dropped` (and the lost record) says how much is missing after it.
                self._count_dropped(line)
            pos += len(line)

    def _count_dropped(self, line: bytes) -> None:
        name = _line_name(line)
        self.dropped += 1
        self.dropped_by_kind[name] = self.dropped_by_kind.get(name, 0) + 1
        self._unreported[name] = self._unreported.get(name, 0) + 1

    def _catch_up(self) -> bool:
        """Write the queued lines, then the lost record for dropped ones. True when both are done."""
        return self._drain() and self._report_lost()

    def _drain(self) -> bool:
        retry = self._retry
        while retry:
            size = count = 0
            pins: list[tuple[int, int]] = []
            for line, pinned in retry:
                if count and size + len(line) > min(_BATCH_BYTES, self.max_bytes):
                    break
                if pinned:
                    pins.append((size, len(line)))
                size += len(line)
                count += 1
            batch = [retry.popleft() for _ in range(count)]
            data = b"".join(line for line, _ in batch)
            try:
                short = self._append(data)
            except OSError as exc:
                self._failed(exc)
                retry.extendleft(reversed(batch))
                return False
            self.lines_written += count
            self.bytes_written += size
            if pins:
                self._track(data, pins, short)
        return True

    def _report_lost(self) -> bool:
        """Write the lost record for dropped events not reported yet."""
        if not self._unreported:
            return True
        by_kind = dict(self._unreported)
        event = EventRecord(timestamp=time.time_ns(), id=EVENT_IDS["lost"], name="lost", pid=os.getpid(),
                            tid=threading.get_native_id(),
                            data=LostData(count=sum(by_kind.values()), by_kind=by_kind, source="audit_log",
                                          error=self._last_error or None))
        data = json_encoder.encode(event) + b"\n"
        pins = [(0, len(data))] if self.keep_first and self._is_first(event) else []
        try:
            short = self._append(data)
        except OSError as exc:
            self._failed(exc)
            return False
        self._unreported.clear()
        self.lost_records += 1
        self.lines_written += 1
        self.bytes_written += len(data)
        if pins:
            self._track(data, pins, short)
        return True

    # ---- first records ----

    def _is_first(self, event: EventRecord) -> bool:
        """Whether event is the run's first record of its (rule, target), and
        within the rule's cap; marks it seen."""
        seen = self._first_seen
        if event.name == "lost":
            source = event.data.source
            new = [kind for kind in event.data.by_kind if ("lost", source, kind) not in seen]
            seen.update(("lost", source, kind) for kind in new)
            return bool(new)
        policy, target = event.policy, event.target_context
        rule = policy.rule if policy is not None else event.name
        key = (rule, target.formatted if target is not None else "")
        if key in seen:
            return False
        if self._first_per_rule[rule] >= self.keep_first:
            self.keep_skipped += 1
            return False
        seen.add(key)
        self._first_per_rule[rule] += 1
        return True

    def _track(self, data: bytes | bytearray, pins: list[tuple[int, int]], short: bool) -> None:
        """Remember where the first records of data, just written, are."""
        try:
            st = os.fstat(self._fd)
            end = os.lseek(self._fd, 0, os.SEEK_CUR)  # O_APPEND: right after our bytes
        except OSError:
            # Nowhere to look them up later: keep a copy now (it may end up twice in the files).
            self._kept_backlog.extend(bytes(data[start:start + n]) for start, n in pins)
            return
        with self._pin_lock:
            where = self._pinned.setdefault((st.st_dev, st.st_ino), [])
            if short:
                # A write finished in parts may have others' lines in between: hold the lines themselves.
                where.extend(bytes(data[start:start + n]) for start, n in pins)
            else:
                base = end - len(data)
                where.extend((base + start, n) for start, n in pins)

    def _take_pinned(self, victim: str) -> bytes:
        """The kept lines of a file about to be dropped; forgets them."""
        if not self._pinned:
            return b""
        try:
            fd = os.open(victim, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return b""
        try:
            st = os.fstat(fd)
            with self._pin_lock:
                return b"".join(self._pinned_lines(fd, self._pinned.pop((st.st_dev, st.st_ino), [])))
        finally:
            os.close(fd)

    def _pinned_lines(self, fd: int, entries: list) -> list[bytes]:
        """The kept lines entries point at in the open file fd (with the pin lock held)."""
        lines = []
        for entry in entries:
            if isinstance(entry, bytes):
                lines.append(entry)
                continue
            offset, n = entry
            try:
                chunk = os.pread(fd, n, offset)
            except OSError:
                chunk = b""
            if len(chunk) == n and chunk.endswith(b"\n"):
                lines.append(chunk)
            else:
                self.keep_lost += 1
        return lines

    def _forget_vanished(self) -> None:
        """Kept lines whose file another writer rotated away: lost, counted."""
        live = set()
        try:
            present = self._backups_present() if self.backups else {}
        except OSError:
            present = {}
        for name in [self.path] + [self._slot(i)[j] for i, forms in present.items() for j in forms]:
            try:
                st = os.stat(name)
            except OSError:
                continue
            live.add((st.st_dev, st.st_ino))
        try:
            st = os.fstat(self._fd)
            live.add((st.st_dev, st.st_ino))  # a file this writer still appends to, even if renamed away
        except OSError:
            pass
        with self._pin_lock:
            for key in [k for k in self._pinned if k not in live]:
                self.keep_lost += len(self._pinned.pop(key))

    def _write_kept(self) -> None:
        """Append the kept lines waiting to PATH.kept; they wait for the next try on failure."""
        blob = b"".join(self._kept_backlog)
        if not blob:
            self._kept_backlog.clear()
            return
        try:
            fd = _open_private(self.path + KEPT_SUFFIX, _OPEN_FLAGS)
        except OSError as exc:
            self._failed(exc)
            return
        start = done = 0
        try:
            start = os.fstat(fd).st_size
            with memoryview(blob) as view:
                while done < len(view):
                    n = os.write(fd, view[done:])
                    if n == 0:
                        raise OSError(_errno.EIO, os.strerror(_errno.EIO))
                    done += n
        except OSError as exc:
            self._failed(exc)
            self._remove_fragment(fd, start, start + done)
            return
        finally:
            os.close(fd)
        self.kept_lines += blob.count(b"\n")
        self._kept_backlog.clear()

    # ---- the file ----

    def _open_log(self) -> int:
        """Open PATH to append, holding a shared flock on it as long as it is open:
        the compressor never takes a file that a writer holds."""
        for attempt in range(10):
            fd = _open_private(self.path, _OPEN_FLAGS)
            try:
                # Without waiting: only a compressor holds it exclusively, and then it is an
                # old file we opened just before rotations moved it away; PATH is another now.
                fcntl.flock(fd, fcntl.LOCK_SH | (fcntl.LOCK_NB if attempt < 9 else 0))
            except BlockingIOError:
                os.close(fd)
                continue
            except OSError:
                return fd  # no flock on this filesystem: no compressor can take the file either
            try:
                if os.fstat(fd).st_nlink:
                    return fd
            except OSError:
                pass
            # Compressed or dropped before we held it: open the new PATH.
            os.close(fd)
        raise OSError(_errno.EAGAIN, "the audit log file keeps disappearing while being opened")

    def _lock_file(self) -> int:
        if self._lock_fd < 0:
            self._lock_fd = _open_private(self.path + LOCK_SUFFIX, os.O_RDWR)
        return self._lock_fd

    def _append(self, data: bytes | bytearray) -> bool:
        """Rotate if needed, then write all of data at the end of the file.
        True when the write went out in more than one part."""
        if self._fd < 0:
            # A reopen after rotation failed earlier: try again.
            self._fd = self._open_log()
        fd = self._fd
        st = os.fstat(fd)
        size = st.st_size
        if size and size + len(data) > self.max_bytes:
            self._rotate(len(data))
        elif self._time_check(st):
            try:
                self._rotate(len(data))
            except OSError as exc:
                # A rotation missed must not cost the line: it goes to the current file.
                self._failed(exc)
                self._rotate_retry_at = time.monotonic() + 1.0
        rotated, fd = fd != self._fd, self._fd
        done = os.write(fd, data)
        if done == len(data):
            if self._every_ns is not None and (rotated or self._birth_key != (st.st_dev, st.st_ino)):
                # Perhaps the file's first line: its birth is recorded now, not at the next write.
                self._note_birth()
            return False
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
        return True

    def _remove_fragment(self, fd: int, start: int, end: int) -> None:
        # Only when nothing was appended after the fragment: truncating then
        # would cut another writer's lines.
        try:
            if os.fstat(fd).st_size == end:
                os.ftruncate(fd, start)
        except OSError:
            pass

    def _tick_rotate(self) -> None:
        if self._fd < 0 or time.monotonic() < self._rotate_retry_at:
            return
        try:
            st = os.fstat(self._fd)
            try:
                current = os.stat(self.path)
                moved = (current.st_dev, current.st_ino) != (st.st_dev, st.st_ino)
            except FileNotFoundError:
                moved = True
            if moved or self._time_check(st):
                self._rotate(None)
        except OSError as exc:
            self._failed(exc)
            self._rotate_retry_at = time.monotonic() + 1.0

    def _rotate(self, incoming: Optional[int]) -> None:
        """Under the lock: follow another writer's rotation, then rotate if the file
        is still due, by size for a write of incoming bytes or by time (incoming
        None: by time only). An empty file is never rotated."""
        lock_fd = self._lock_file()
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        shifted = False
        try:
            mine = os.fstat(self._fd)
            try:
                current = os.stat(self.path)
            except FileNotFoundError:
                current = None
            if current is None or (current.st_dev, current.st_ino) != (mine.st_dev, mine.st_ino):
                # Another writer rotated while we waited or wrote: follow it.
                self._reopen()
                mine = os.fstat(self._fd)
            if not mine.st_size:
                return
            full = incoming is not None and mine.st_size + incoming > self.max_bytes
            if not full and not self._due(mine, locked=True):
                return
            self._shift_backups()
            shifted = True
            self.rotations += 1
            self._reopen()
        finally:
            fcntl.flock(lock_fd, fcntl.LOCK_UN)
            if shifted and self.compress and self.backups >= 2:
                self._start_compressor()

    def _slot(self, i: int) -> list[str]:
        """The names place i of the rotation may hold: PATH; or PATH.i, then PATH.i.gz."""
        return [self.path] if i == 0 else [f"{self.path}.{i}", f"{self.path}.{i}{GZ_SUFFIX}"]

    def _backups_present(self) -> dict[int, list[int]]:
        """Place (1..backups) -> the forms there (0: plain, 1: .gz); one listing,
        not a stat per place: backups may be large."""
        directory, base = os.path.split(self.path)
        present: dict[int, list[int]] = {}
        for name in os.listdir(directory or "."):
            if name.startswith(base + "."):
                match = _BACKUP_NAME.match(name, len(base) + 1)
                if match is not None and int(match.group(1)) <= self.backups:
                    present.setdefault(int(match.group(1)), []).append(0 if match.group(2) is None else 1)
        return present

    def _shift_backups(self) -> None:
        # The compressor renames only under the same lock, so what is seen here stays.
        backups = self.backups
        present = self._backups_present() if backups else {}
        present[0] = [0]  # PATH, being rotated
        if backups == 0:
            victims = [self.path]
        elif backups - 1 in present:
            # The oldest is dropped only when a file moves onto its place.
            victims = [self._slot(backups)[j] for j in present.get(backups, [])]
        else:
            victims = []
        if self._pinned:
            # Held before the drop: if the drop then fails, a copy too many, never one too few.
            for victim in victims:
                kept = self._take_pinned(victim)
                if kept:
                    self._kept_backlog.append(kept)
        if backups == 0:
            os.unlink(self.path)
        else:
            # From the oldest on, so each place is empty when a file moves onto it, but the last.
            for i in sorted((i for i in present if i < backups), reverse=True):
                names, targets, forms = self._slot(i), self._slot(i + 1), present[i]
                for j in present.get(i + 1, []) if i + 1 == backups else []:
                    if j not in forms:
                        # The oldest in the other form (plain or .gz) than what moves onto it.
                        try:
                            os.unlink(targets[j])
                        except FileNotFoundError:
                            pass
                for j in forms:
                    # os.replace onto the last place drops the oldest.
                    os.replace(names[j], targets[j])
        if self._kept_backlog:
            self._write_kept()
        if self._pinned:
            self._forget_vanished()

    def _reopen(self) -> None:
        fd = self._open_log()
        old, self._fd = self._fd, fd
        os.close(old)

    # ---- rotation by time ----

    def _time_check(self, st: os.stat_result) -> bool:
        """Whether the file may be due by time: so the locked path must look
        (its birth is not known here yet, or it is due)."""
        if self._every_ns is None or not st.st_size or time.monotonic() < self._rotate_retry_at:
            return False
        if self._birth_key != (st.st_dev, st.st_ino):
            return True
        return time.time_ns() - self._birth_ns >= self._every_ns

    def _due(self, st: os.stat_result, locked: bool) -> bool:
        if self._every_ns is None or not st.st_size:
            return False
        born = self._birth(st, locked)
        return born is not None and time.time_ns() - born >= self._every_ns

    def _note_birth(self) -> None:
        """After a write: learn (or record, if this was the file's first line) the birth of the file."""
        try:
            self._birth(os.fstat(self._fd), locked=False)
        except OSError:
            pass

    def _birth(self, st: os.stat_result, locked: bool) -> Optional[int]:
        """The birth of the file this logger has open (st: its fstat), in ns since
        the epoch: the record in PATH.lock, or now, recorded there, if it has none.
        None while the file holds no whole first line (nothing to date yet)."""
        key = (st.st_dev, st.st_ino)
        if self._birth_key == key:
            return self._birth_ns
        if not st.st_size:
            return None
        try:
            head = _first_line(self._fd)
        except OSError:
            return None
        if head is None:
            return None
        crc = zlib.crc32(head)
        born = None
        try:
            lock_fd = self._lock_file()
            if not locked:
                fcntl.flock(lock_fd, fcntl.LOCK_EX)
            try:
                record = _parse_birth(os.pread(lock_fd, _BIRTH_SIZE, 0))
                if record is not None and record[:3] == (*key, crc):
                    born = record[3]
                else:
                    born = time.time_ns()
                    os.pwrite(lock_fd, _birth_record(*key, crc, born), 0)
            finally:
                if not locked:
                    fcntl.flock(lock_fd, fcntl.LOCK_UN)
        except OSError:
            if born is None:
                born = time.time_ns()  # not shared: this logger alone goes by it
        self._birth_key, self._birth_ns = key, born
        return born

    # ---- compression: a background thread, which never takes self._lock ----

    def _start_compressor(self) -> None:
        with self._compress_lock:
            self._compress_wanted = True
            if self._compressor is not None and self._compressor.is_alive():
                return
            thread = threading.Thread(target=self._compress_loop, name="runtimeguard-audit-gzip", daemon=True)
            try:
                thread.start()
            except RuntimeError:
                self.compress_errors += 1  # no thread to be had: the next rotation tries again
                return
            self._compressor = thread

    def _wait_compressor(self) -> None:
        with self._compress_lock:
            thread = self._compressor
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _compress_loop(self) -> None:
        while True:
            with self._compress_lock:
                if not self._compress_wanted:
                    self._compressor = None
                    return
                self._compress_wanted = False
            try:
                self._compress_pass()
            except Exception:
                # Nothing is lost: the plain files stay, for the next pass.
                self.compress_errors += 1

    def _compress_pass(self) -> None:
        """Compress every plain rotated file from PATH.2 on that no writer holds."""
        self._sweep_temporaries()
        seen: set[tuple[int, int]] = set()
        for k in sorted(k for k, forms in self._backups_present().items() if k >= 2 and 0 in forms):
            try:
                fd = os.open(f"{self.path}.{k}", os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                st = os.fstat(fd)
                if (st.st_dev, st.st_ino) not in seen:  # rotations may move it ahead of us
                    seen.add((st.st_dev, st.st_ino))
                    self._compress_one(fd, k)
            except OSError:
                self.compress_errors += 1
            finally:
                os.close(fd)

    def _compress_one(self, fd: int, k: int) -> None:
        """Replace the plain file fd, opened as PATH.k, by its .gz; leave it if a writer holds it."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return  # a writer still appends to it (or no flock here): left plain
        st = os.fstat(fd)
        if not st.st_nlink:
            return  # compressed or dropped since it was opened
        tmp = f"{self.path}{_TMP_MARK}{secrets.token_hex(8)}"
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        installed = False
        try:
            _fix_mode(out)
            fcntl.flock(out, fcntl.LOCK_EX)  # a live temporary: other compressors' sweeps leave it
            size = _gzip_copy(fd, out, st.st_mtime)
            os.fsync(out)  # before the plain file goes
            os.utime(out, ns=(st.st_atime_ns, st.st_mtime_ns))  # its age is its last line's, as the plain file's
            installed = self._install_compressed(fd, out, tmp, size, k)
        finally:
            os.close(out)
            if not installed:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
        if installed:
            self.files_compressed += 1

    def _install_compressed(self, fd: int, out: int, tmp: str, size: int, k: int) -> bool:
        """Under the rotation lock: the .gz in place of the plain file, wherever rotations moved it."""
        lock_fd = _open_private(self.path + LOCK_SUFFIX, os.O_RDWR)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            st = os.fstat(fd)
            if st.st_size != size or not st.st_nlink:
                return False  # written to by a writer that takes no flock, or gone: keep it as it is
            key = (st.st_dev, st.st_ino)
            present = self._backups_present()
            for n in sorted(n for n, forms in present.items() if n >= k and 0 in forms):  # files only move on
                plain = f"{self.path}.{n}"
                try:
                    here = os.stat(plain)
                except FileNotFoundError:
                    continue
                if (here.st_dev, here.st_ino) == key:
                    break
            else:
                return False  # dropped meanwhile: so is its copy
            os.replace(tmp, plain + GZ_SUFFIX)
            os.unlink(plain)
            if self._pinned:
                # Its first records, as lines (its offsets mean nothing in the .gz), under the .gz's inode.
                gz = os.fstat(out)
                with self._pin_lock:
                    entries = self._pinned.pop(key, None)
                    if entries:
                        self._pinned[(gz.st_dev, gz.st_ino)] = self._pinned_lines(fd, entries)
            return True
        finally:
            os.close(lock_fd)  # and with it the flock

    def _sweep_temporaries(self) -> None:
        """Remove the temporaries of compressors that died: a live one holds a flock on its own."""
        directory, base = os.path.split(self.path)
        try:
            names = os.listdir(directory or ".")
        except OSError:
            return
        for name in names:
            if not name.startswith(base + _TMP_MARK):
                continue
            full = os.path.join(directory, name)
            try:
                fd = os.open(full, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                os.unlink(full)
            except OSError:
                pass
            finally:
                os.close(fd)


def _gzip_copy(src: int, dst: int, mtime: float) -> int:
    """gzip all of the file src into dst; the bytes read."""
    done = 0
    with open(dst, "wb", closefd=False) as raw, \
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=COMPRESS_LEVEL, mtime=int(mtime)) as gz:
        while True:
            chunk = os.pread(src, 1 << 20, done)
            if not chunk:
                break
            gz.write(chunk)
            done += len(chunk)
    return done


def install_sigterm_flush(logger: AuditLogger) -> Any:
    """On SIGTERM, close ``logger``, then do what was there before.

    The previous handler, if a function, is called next; if SIGTERM was
    ignored, nothing more happens; otherwise ``SystemExit(128 + SIGTERM)`` is
    raised so ``finally`` blocks run. Closing loses nothing (see the module
    docstring): it writes pending repeat counts, retries queued events and
    releases the descriptors. If the signal interrupts a call of ``logger``
    (a ``write()``, say), the close and what comes after it wait until that
    call has finished, which they then end: the ``SystemExit`` comes out of
    that call. Call from the main thread. Returns the previous handler.
    """
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum: int, frame: Any) -> None:
        def after_close() -> None:
            if callable(previous):
                previous(signum, frame)
            elif previous != signal.SIG_IGN:
                raise SystemExit(128 + signum)

        # Not close() then raise: raised in the middle of a write, the SystemExit
        # would cut it short, and with it any line it had in hand (a coalesced
        # count of decisions already accepted); in the middle of close(), it would
        # leave the close half done. The logger runs after_close itself when the
        # call it is in has finished and closed it.
        logger._close_then(after_close)

    signal.signal(signal.SIGTERM, on_sigterm)
    return previous


# ---- reading ----

class AuditLogReader:
    """Reads one audit log file back as ``EventRecord``s; a gzip file (a
    compressed rotated file, ``PATH.<n>.gz``) is decompressed on the fly.

    A torn last line (no final newline, or undecodable: a writer killed
    mid-line, a disk that filled) is skipped and counted in ``torn_lines``.
    An undecodable line anywhere else is corruption: ``AuditLogError`` with
    its line number; so is a gzip file that is not whole.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self.torn_lines = 0
        self.lines_read = 0
        """Lines decoded into events by events()."""

    def events(self) -> Iterator[EventRecord]:
        try:
            f = open(self.path, "rb")
        except OSError as exc:
            raise _error(self.path, "open", exc) from exc
        with f:
            # By content, not name: an NDJSON line starts with "{", never with gzip's magic.
            if f.peek(2)[:2] != b"\x1f\x8b":
                yield from self._lines(f)
                return
            with gzip.GzipFile(fileobj=f, mode="rb") as gz:
                try:
                    yield from self._lines(gz)
                except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
                    raise AuditLogError(f"audit log {self.path}: not a whole gzip file: {exc}", self.path) from None

    __iter__ = events

    def _lines(self, f: Iterable[bytes]) -> Iterator[EventRecord]:
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

    def _decode(self, line: bytes, number: int) -> EventRecord:
        try:
            event = json_decoder.decode(line)
        except msgspec.DecodeError as exc:
            raise AuditLogError(f"audit log {self.path}, line {number}: not an event: {exc}", self.path) from None
        self.lines_read += 1
        return event


def read_audit_log(path: str | os.PathLike) -> Iterator[EventRecord]:
    """The events of one audit log file; a torn last line is skipped with a warning."""
    reader = AuditLogReader(path)
    yield from reader.events()
    if reader.torn_lines:
        warnings.warn(f"audit log {reader.path}: skipped a torn last line", RuntimeWarning, stacklevel=2)


def audit_log_files(path: str | os.PathLike) -> list[str]:
    """An audit log and its rotated backups that exist, oldest first; first
    ``PATH.kept``, if any (first records kept from rotated-away files).
    A backup is ``PATH.<n>`` or ``PATH.<n>.gz`` (``AuditLogReader`` reads
    both); where both are there (a compression cut short) the plain one."""
    path = os.fspath(path)
    directory, base = os.path.split(path)
    return [os.path.join(directory, name) for name in _log_file_order(base, os.listdir(directory or "."))]


def _log_file_order(base: str, names: Iterable[str]) -> list[str]:
    """Of the names in a directory, those of the log named base, oldest first:
    ``base.kept``, the backups from the highest number down (``base.<n>``, or
    ``base.<n>.gz`` when there is no plain one), then ``base``. Other names
    (``base.lock``, temporaries, other logs) are left out."""
    backups: dict[int, str] = {}
    kept = current = False
    for name in names:
        if name == base:
            current = True
        elif name == base + KEPT_SUFFIX:
            kept = True
        elif name.startswith(base + "."):
            match = _BACKUP_NAME.match(name, len(base) + 1)
            if match is not None:
                n = int(match.group(1))
                if match.group(2) is None or n not in backups:
                    backups[n] = name
    files = [backups[n] for n in sorted(backups, reverse=True)]
    if kept:
        files.insert(0, base + KEPT_SUFFIX)
    if current:
        files.append(base)
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
