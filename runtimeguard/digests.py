"""Binary digests: each process's executable identified by its content.

A :class:`BinaryDigest` is the SHA-256 of the executed file and its ELF GNU
build-id, so an event's process can be matched against lists of known
binaries. Hashing reads the whole file, far too slow for the event path, so a
:class:`DigestCache` does it on one background thread and keeps the results
by file version, (device, inode, ctime in ns, size): one binary is read once
however many processes run it, and read again once it has been changed.

The file is read through ``/proc/<pid>/exe`` while the process lives, which
reaches files deleted since the exec and files in other mount namespaces
(containers). When the process has gone, the path it ran is tried instead,
and used only if it is still the same file (same device and inode).
"""

from __future__ import annotations

import collections
import errno
import hashlib
import os
import stat
import struct
import threading
import weakref
from typing import Callable, Optional, Union

import msgspec

from .schema import BinaryDigest

__all__ = [
    "BinaryDigest", "DigestCache", "DigestStats", "build_id_of_bytes", "build_id_of_fd", "shared_cache",
    "DEFAULT_MAX_SIZE", "DEFAULT_MAX_ENTRIES", "DEFAULT_MAX_PENDING", "CHUNK_SIZE",
]

DEFAULT_MAX_SIZE = 256 * 1024 * 1024
DEFAULT_MAX_ENTRIES = 4096
DEFAULT_MAX_PENDING = 1024
# Large enough that hashlib releases the GIL for each update and the
# syscall count stays low; small enough to stop a hash promptly.
CHUNK_SIZE = 1024 * 1024

# (st_dev, st_ino, st_ctime_ns, st_size): any write or chmod changes the ctime,
# so a key names one content of one file.
FileKey = tuple[int, int, int, int]

GONE = "gone"
PERMISSION_DENIED = "permission denied"
CHANGED = "changed while being read"
NOT_REGULAR = "not a regular file"

# ---- the ELF build-id ----

_ELF_MAGIC = b"\x7fELF"
_ELFCLASS32, _ELFCLASS64 = 1, 2
_ELFDATA2LSB, _ELFDATA2MSB = 1, 2
_PT_NOTE = 4
_NT_GNU_BUILD_ID = 3
_GNU_OWNER = b"GNU\0"
# Real executables have about a dozen program headers and notes of a few
# hundred bytes: these bounds only stop a hostile file from making us read much.
_MAX_PROGRAM_HEADERS = 512
_MAX_PROGRAM_HEADER_SIZE = 1024  # 32 or 56 in practice
_MAX_NOTE_SEGMENT = 64 * 1024
_MAX_BUILD_ID = 128  # bytes; linkers write 8 to 20, --build-id=0x... a little more

# (header layout: e_phoff, e_phentsize, e_phnum offsets and formats;
#  program header layout: p_type, p_offset, p_filesz, p_align offsets and formats; its least size)
_LAYOUTS = {
    _ELFCLASS32: ((28, "I"), (42, "H"), (44, "H"), (0, "I"), (4, "I"), (16, "I"), (28, "I"), 32, 52),
    _ELFCLASS64: ((32, "Q"), (54, "H"), (56, "H"), (0, "I"), (8, "Q"), (32, "Q"), (48, "Q"), 56, 64),
}


def _read_field(order: str, field: tuple[int, str], data: bytes, base: int = 0) -> int:
    offset, code = field
    return struct.unpack_from(order + code, data, base + offset)[0]


def _build_id(read: Callable[[int, int], bytes]) -> Optional[str]:
    """The first GNU build-id note of the PT_NOTE segments, from read(offset,
    size), which returns at most size bytes (fewer at the end of what may be
    read). Every length and offset is checked against what was really read:
    a truncated or hostile file gives None, never an exception."""
    head = read(0, 64)
    if len(head) < 16 or head[:4] != _ELF_MAGIC:
        return None
    layout = _LAYOUTS.get(head[4])
    order = {_ELFDATA2LSB: "<", _ELFDATA2MSB: ">"}.get(head[5])
    if layout is None or order is None:
        return None
    e_phoff, e_phentsize, e_phnum, p_type, p_offset, p_filesz, p_align, phdr_size, ehdr_size = layout
    if len(head) < ehdr_size:
        return None
    phoff = _read_field(order, e_phoff, head)
    entry_size = _read_field(order, e_phentsize, head)
    count = min(_read_field(order, e_phnum, head), _MAX_PROGRAM_HEADERS)
    if not phdr_size <= entry_size <= _MAX_PROGRAM_HEADER_SIZE or count == 0:
        return None
    table = read(phoff, entry_size * count)
    for i in range(len(table) // entry_size):
        base = i * entry_size
        if _read_field(order, p_type, table, base) != _PT_NOTE:
            continue
        # The gABI pads notes to 4 bytes; segments of 8-byte-aligned notes
        # (.note.gnu.property on 64-bit) say so in p_align.
        align = 8 if _read_field(order, p_align, table, base) == 8 else 4
        notes = read(_read_field(order, p_offset, table, base),
                     min(_read_field(order, p_filesz, table, base), _MAX_NOTE_SEGMENT))
        found = _build_id_in_notes(notes, order, align)
        if found is not None:
            return found or None
    return None


def _build_id_in_notes(notes: bytes, order: str, align: int) -> Optional[str]:
    """The build-id of the first GNU build-id note; "" when that note is
    malformed (the search stops there); None when there is none."""
    position = 0
    while position + 12 <= len(notes):
        name_size, desc_size, note_type = struct.unpack_from(order + "III", notes, position)
        name_start = position + 12
        # Padding counts from the note's start (its header included), as
        # readelf and the linkers lay notes out.
        desc_start = position + _padded(12 + name_size, align)
        desc_end = desc_start + desc_size
        if desc_end > len(notes):
            return None  # cut short: nothing after it can be trusted either
        if note_type == _NT_GNU_BUILD_ID and notes[name_start:name_start + name_size] == _GNU_OWNER:
            return notes[desc_start:desc_end].hex() if 0 < desc_size <= _MAX_BUILD_ID else ""
        position = position + _padded(desc_end - position, align)
    return None


def _padded(size: int, align: int) -> int:
    return (size + align - 1) & ~(align - 1)


def build_id_of_bytes(data: bytes) -> Optional[str]:
    """The GNU build-id (lowercase hex) of an ELF image in memory; None if
    it has none, is not ELF, or is cut before the note ends."""
    view = memoryview(data)

    def read(offset: int, size: int) -> bytes:
        return bytes(view[offset:offset + size]) if 0 <= offset < len(view) and size > 0 else b""

    return _build_id(read)


def build_id_of_fd(fd: int, limit: int) -> Optional[str]:
    """The GNU build-id of the ELF file open as fd, reading nothing at or
    past byte limit (a few small reads: header, program headers, notes)."""

    def read(offset: int, size: int) -> bytes:
        size = min(size, limit - offset)
        return os.pread(fd, size, offset) if 0 <= offset and size > 0 else b""

    return _build_id(read)


# ---- the cache ----


class DigestStats(msgspec.Struct, frozen=True):
    """A DigestCache's counters since it was made."""

    requests: int
    """request() calls."""
    dropped: int
    """Requests refused because ``max_pending`` were already waiting."""
    hashed: int
    """Files read to hash them: the costly work, once per file version."""
    cached: int
    """Digests answered from the cache, the file not read again."""
    failed: int
    """Digests that came out with an ``error``."""
    entries: int
    """File versions cached now."""
    pending: int
    """Requests waiting for the worker now."""


class _Abandoned(Exception):
    """The cache is stopping: the file being hashed is left unfinished."""


class _ReadRequest(msgspec.Struct, frozen=True, gc=False):
    pid: int
    device: Optional[int]
    inode: Optional[int]
    path: Optional[str]


_caches: "weakref.WeakSet[DigestCache]" = weakref.WeakSet()


WORKER_IDLE_S = 1.0  # a worker with nothing to do for this long ends


class DigestCache:
    """Binary digests by file version, computed once each, off the caller's thread.

    ``request(pid, device, inode, path)`` asks, without waiting, for the
    digest of what process pid executes: the process table calls it when it
    builds a process. One background thread (a daemon, started by a request,
    ended by ``stop()`` or after ``WORKER_IDLE_S`` with nothing to do) reads
    the file and keeps the result. Later,
    ``lookup_process(pid, device, inode)`` or ``get(device, inode, ctime_ns,
    size)`` answer from memory without waiting, and ``digest_of(...)``
    computes one on the caller's thread, waiting as long as that takes.

    A digest may be absent (``lookup_process`` and ``get`` give None): until
    the worker has reached the request (requests queue behind each other,
    and a large file takes a while to read); when it was never requested or
    was dropped (the queue holds at most ``max_pending``; ``stats().dropped``
    counts the others); after the cache was stopped (pending requests are
    discarded); or once it has been evicted (the least recently used of more
    than ``max_entries`` file versions go). A digest that is present may
    carry an ``error`` instead of a ``sha256``: then it is final for that
    exec (the file was too large, gone, or unreadable).

    Files larger than ``max_size`` bytes are not hashed (``error`` says so,
    ``size`` says how large); their build-id is still found if its note lies
    within the first ``max_size`` bytes, as it does in any linked binary.
    Nothing past ``max_size`` is ever read.

    Thread-safe: any thread may call any method. Two callers asking for the
    same file version at once share one read of it.
    """

    def __init__(self, max_size: int = DEFAULT_MAX_SIZE, max_entries: int = DEFAULT_MAX_ENTRIES,
                 max_pending: int = DEFAULT_MAX_PENDING, chunk_size: int = CHUNK_SIZE):
        if max_size < 0:
            raise ValueError(f"max_size {max_size} must be at least 0")
        if max_entries < 1 or max_pending < 1:
            raise ValueError(f"max_entries ({max_entries}) and max_pending ({max_pending}) must be at least 1")
        if chunk_size < 4096:
            raise ValueError(f"chunk_size {chunk_size} must be at least 4096")
        self.max_size = max_size
        self.max_entries = max_entries
        self.max_pending = max_pending
        self.chunk_size = chunk_size
        self._reset_after_fork()
        self._requests = self._dropped = self._hashed = self._cached = self._failed = 0
        self._listeners: list[Callable[[], None]] = []
        _caches.add(self)

    def _reset_after_fork(self) -> None:
        # Also the initial state: a forked child has none of the parent's
        # threads, and a lock one of them held would never be released.
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._digests: collections.OrderedDict[FileKey, BinaryDigest] = getattr(
            self, "_digests", collections.OrderedDict())
        # (pid, device, inode) of a requested exec -> its digest, errors
        # included, so the answer outlives the process.
        self._by_exec: collections.OrderedDict[tuple, BinaryDigest] = getattr(
            self, "_by_exec", collections.OrderedDict())
        self._queue: collections.deque[_ReadRequest] = collections.deque()
        self._queued: set[tuple] = set()
        self._reading: dict[FileKey, threading.Event] = {}
        # The one thread serving the queue; one that is no longer this has been
        # told to stop (it ends after its current chunk).
        self._worker: Optional[threading.Thread] = None

    def __enter__(self) -> "DigestCache":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- asking without waiting ----

    def request(self, pid: int, device: Optional[int] = None, inode: Optional[int] = None,
                path: Optional[str] = None) -> bool:
        """Queues the digest of what pid executes for the worker and returns
        at once: no file is touched on the caller's thread. device and inode
        (as ``os.stat()`` reports them: an exec event's
        ``executable_device`` and ``executable_inode``) make sure it is that
        file: if pid runs another by then, or has exited, path (the exec's
        ``resolved_executable``) is read instead, if it still is that file
        (without device and inode, path is not used). False when the
        request was dropped (``max_pending`` already waiting)."""
        exec_key = (pid, device, inode)
        with self._lock:
            self._requests += 1
            if exec_key in self._queued or (device is not None and exec_key in self._by_exec):
                return True
            if len(self._queue) >= self.max_pending:
                self._dropped += 1
                return False
            self._queue.append(_ReadRequest(pid, device, inode, path))
            self._queued.add(exec_key)
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._work, name="runtimeguard-digests", daemon=True)
                self._worker.start()
            self._wake.notify()
        return True

    def lookup_process(self, pid: int, device: Optional[int] = None,
                       inode: Optional[int] = None) -> Optional[BinaryDigest]:
        """The digest of what pid executes, if known now; never reads the file.
        With device and inode, the answer to a request for that exec, even
        after the process exited; else (or if not yet answered) the cached
        digest of the file ``/proc/<pid>/exe`` names now (one stat(), and
        only if it is that device and inode). None: not computed yet, or
        unknown (see the class)."""
        if device is not None and inode is not None:
            with self._lock:
                found = self._by_exec.get((pid, device, inode))
            if found is not None:
                return found
        try:
            st = os.stat(f"/proc/{pid}/exe")
        except OSError:
            return None
        if device is not None and inode is not None and (st.st_dev, st.st_ino) != (device, inode):
            return None
        with self._lock:
            found = self._by_exec.get((pid, st.st_dev, st.st_ino))
        return found if found is not None else self.get(st.st_dev, st.st_ino, st.st_ctime_ns, st.st_size)

    def answer(self, pid: int, device: int, inode: int) -> Optional[BinaryDigest]:
        """The answer to request(pid, device, inode), if the worker has given
        it; never touches a file (cheap enough to ask on every read)."""
        with self._lock:
            return self._by_exec.get((pid, device, inode))

    def get(self, device: int, inode: int, ctime_ns: int, size: int) -> Optional[BinaryDigest]:
        """The cached digest of that file version (``os.stat()``'s
        ``st_dev``, ``st_ino``, ``st_ctime_ns``, ``st_size``), or None."""
        key = (device, inode, ctime_ns, size)
        with self._lock:
            found = self._digests.get(key)
            if found is not None:
                self._digests.move_to_end(key)
            return found

    # ---- waiting for it ----

    def digest_of(self, target: Union[int, str, bytes, os.PathLike], *, device: Optional[int] = None,
                  inode: Optional[int] = None, path: Optional[str] = None) -> BinaryDigest:
        """The digest of a process's executable (target a pid) or of a file
        (target a path), computed now on this thread unless cached. For a
        pid, device, inode and path are as for ``request()``; for a path,
        device and inode, if given, must match or the answer is ``gone``."""
        return self._digest(target, device, inode, path, background=False)[0]

    # ---- the worker ----

    def add_listener(self, listener: Callable[[], None]) -> None:
        """listener() is called, from the worker's thread, each time a
        requested digest is answered (a process table then drops the answers
        it cached without it). It must not block; what it raises is ignored."""
        with self._lock:
            self._listeners.append(listener)

    def stop(self, timeout: Optional[float] = None) -> None:
        """Ends the worker, discarding the requests still waiting; a file
        being hashed is left after its current chunk. Digests computed so far
        stay. A later request() starts a new worker."""
        with self._lock:
            worker, self._worker = self._worker, None
            self._queue.clear()
            self._queued.clear()
            self._wake.notify_all()
        if worker is not None and worker is not threading.current_thread():
            worker.join(timeout)

    @property
    def running(self) -> bool:
        """Whether a worker thread is alive."""
        worker = self._worker
        return worker is not None and worker.is_alive()

    def stats(self) -> DigestStats:
        with self._lock:
            return DigestStats(self._requests, self._dropped, self._hashed, self._cached, self._failed,
                               len(self._digests), len(self._queue))

    def _work(self) -> None:
        me = threading.current_thread()
        while True:
            with self._lock:
                while not self._queue and self._worker is me:
                    # Idle: the thread ends, and the next request starts another.
                    if not self._wake.wait(WORKER_IDLE_S) and not self._queue and self._worker is me:
                        self._worker = None
                        return
                if self._worker is not me:
                    return
                request = self._queue.popleft()
            asked = (request.pid, request.device, request.inode)
            found = None
            try:
                digest, found = self._digest(request.pid, request.device, request.inode, request.path,
                                             background=True)
            except _Abandoned:
                return
            except Exception as e:  # the worker must outlive any one file
                digest = BinaryDigest(error=f"{type(e).__name__}: {e}")
                with self._lock:
                    self._failed += 1
            with self._lock:
                self._queued.discard(asked)
                if request.device is not None and request.inode is not None:
                    self._remember_exec(asked, digest)
                elif found is not None:
                    # Asked by pid alone: by the file found, as lookup_process() asks.
                    self._remember_exec((request.pid, found.st_dev, found.st_ino), digest)
                listeners = list(self._listeners)
            for listener in listeners:
                try:
                    listener()
                except Exception:  # a listener's failure is not the worker's
                    pass

    def _remember_exec(self, exec_key: tuple, digest: BinaryDigest) -> None:
        by_exec = self._by_exec
        by_exec[exec_key] = digest
        by_exec.move_to_end(exec_key)
        while len(by_exec) > 4 * self.max_entries:
            by_exec.popitem(last=False)

    # ---- computing one ----

    def _digest(self, target, device: Optional[int], inode: Optional[int], path: Optional[str],
                background: bool) -> tuple[BinaryDigest, Optional[os.stat_result]]:
        """The digest, and the stat of the file it is of (None if none was opened)."""
        fd, failure = self._open(target, device, inode, path)
        if fd is None:
            with self._lock:
                self._failed += 1
            return BinaryDigest(error=failure), None
        try:
            st = os.fstat(fd)
            return self._digest_open(fd, st, background), st
        finally:
            os.close(fd)

    @staticmethod
    def _open(target, device: Optional[int], inode: Optional[int],
              path: Optional[str]) -> tuple[Optional[int], Optional[str]]:
        """(fd, None) of the file to read, or (None, why not)."""
        if isinstance(target, int) and not isinstance(target, bool):
            fd, failure = _open_checked(f"/proc/{target}/exe", device, inode)
            if fd is not None or failure != GONE or path is None or device is None or inode is None:
                return fd, failure
            # Gone, or running something else: the path, if it is still that file.
            return _open_checked(path, device, inode)
        return _open_checked(os.fspath(target), device, inode)

    def _digest_open(self, fd: int, st: os.stat_result, background: bool) -> BinaryDigest:
        key = (st.st_dev, st.st_ino, st.st_ctime_ns, st.st_size)
        while True:
            with self._lock:
                found = self._digests.get(key)
                if found is not None:
                    self._digests.move_to_end(key)
                    self._cached += 1
                    return found
                reading = self._reading.get(key)
                if reading is None:
                    done = self._reading[key] = threading.Event()
                    break
            reading.wait()  # another thread reads it: share its result
        digest = None
        try:
            digest = self._read(fd, st, background)
        finally:
            with self._lock:
                del self._reading[key]
                if digest is not None:
                    if digest.error is not None:
                        self._failed += 1
                    # A file caught changing is not that version's digest.
                    if digest.error != CHANGED:
                        self._digests[key] = digest
                        while len(self._digests) > self.max_entries:
                            self._digests.popitem(last=False)
            done.set()
        return digest

    def _read(self, fd: int, st: os.stat_result, background: bool) -> BinaryDigest:
        size = st.st_size
        if not stat.S_ISREG(st.st_mode):
            return BinaryDigest(size=size, error=NOT_REGULAR)
        limit = self.max_size
        try:
            build_id = build_id_of_fd(fd, min(size, limit))
        except OSError as e:
            return BinaryDigest(size=size, error=_reason(e))
        if size > limit:
            return BinaryDigest(build_id=build_id, size=size, error=f"too large ({size} bytes > limit {limit})")
        with self._lock:
            self._hashed += 1
        sha256 = hashlib.sha256()
        # Sized to the file, small ones being the rule; never so small that a
        # file growing while it is read would be read in tiny steps.
        buffer = bytearray(min(self.chunk_size, max(size, 64 * 1024)))
        view = memoryview(buffer)
        offset = 0
        try:
            while True:
                if background and self._worker is not threading.current_thread():
                    raise _Abandoned
                n = os.preadv(fd, [buffer], offset)
                if n == 0:
                    break
                offset += n
                if offset > limit:  # grew past the limit while being read
                    return BinaryDigest(build_id=build_id, size=offset, error=CHANGED)
                sha256.update(view[:n])
            after = os.fstat(fd)
        except OSError as e:
            return BinaryDigest(build_id=build_id, size=size, error=_reason(e))
        if offset != size or (after.st_ctime_ns, after.st_size) != (st.st_ctime_ns, size):
            return BinaryDigest(build_id=build_id, size=size, error=CHANGED)
        return BinaryDigest(sha256.hexdigest(), build_id, size)


def _open_checked(path: str, device: Optional[int], inode: Optional[int]) -> tuple[Optional[int], Optional[str]]:
    """Opens path for reading, if it is the file (device, inode) where given."""
    try:
        # O_NONBLOCK: a FIFO put in a binary's place must not hang the worker.
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as e:
        return None, _reason(e)
    if device is not None and inode is not None:
        try:
            st = os.fstat(fd)
        except OSError as e:
            os.close(fd)
            return None, _reason(e)
        if (st.st_dev, st.st_ino) != (device, inode):
            os.close(fd)
            return None, GONE
    return fd, None


def _reason(e: OSError) -> str:
    if e.errno in (errno.ENOENT, errno.ESRCH, errno.ENOTDIR):
        return GONE
    if e.errno in (errno.EACCES, errno.EPERM):
        return PERMISSION_DENIED
    return e.strerror or str(e)


def _after_fork_in_child() -> None:
    for cache in list(_caches):
        cache._reset_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)

_shared: Optional[DigestCache] = None
_shared_lock = threading.Lock()


def shared_cache() -> DigestCache:
    """The DigestCache every Tracer of this Python process shares (made with
    the defaults on first use), so a binary is hashed once per process."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = DigestCache()
        return _shared
