"""``Tracer``: load the sensors, consume the ring buffer, hand out Events.

The native consumer polls with the GIL released, encodes a whole batch of
records into one msgpack buffer, and Python decodes it with one msgspec call:
each event's header at once, the rest when it is read (see schema.Event).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import math
import os
import threading
import time
import weakref
from typing import AsyncIterator, Callable, Iterable, Iterator, Optional, Union

import msgspec

from . import environment, identity
from .batch import ROW_SIZE, EventBatch, numpy_module, row_dtype
from ._native import ffi, lib
from .errors import BPFError, TracerStateError
from .processes import ProcessTable, shared_table
from .schema import BLOCK_EVENTS, EVENT_IDS, Event, batch_decoder

#: What a guard's sensor reports besides its decisions: the DNS answers its
#: hostname rules read. A Tracer delivers them (and the decisions) whenever
#: it carries the guard.
GUARD_EVENTS = ("dns_answer",)
#: Every event a Tracer can deliver ("lost" notices are always delivered):
#: the kinds the sensors record that are not the guard's.
ALL_EVENTS = tuple(name for name, k in EVENT_IDS.items()
                   if lib.rg_kinds[k].record_size and name not in BLOCK_EVENTS and name not in GUARD_EVENTS)
#: The default set: file_open is a firehose host-wide, so it is opt-in;
#: function_call needs probes (``runtimeguard.calls.CallTracer`` attaches them).
DEFAULT_EVENTS = tuple(e for e in ALL_EVENTS if e not in ("file_open", "function_call"))
# The process table needs these whatever the caller asked for.
_TABLE_EVENTS = ("process_exec", "process_fork", "process_exit")

DEFAULT_RING_BUFFER_SIZE = 8 << 20
DEFAULT_MAX_LATENCY_MS = 20
MIN_RING_BUFFER_SIZE = 4096
MAX_LATENCY_MS = 10_000
_POLL_SLICE_MS = 200  # lets Python run signal handlers while a poll waits
_ERR_LEN = 8192

_live: "weakref.WeakSet[Tracer]" = weakref.WeakSet()
_NO_LOCK = contextlib.nullcontext()


def _after_fork_in_child() -> None:
    for tracer in list(_live):
        tracer._abandon()


os.register_at_fork(after_in_child=_after_fork_in_child)


class TracerStats(msgspec.Struct, frozen=True):
    delivered: dict[str, int]
    """Records decoded from the ring buffer, per event name."""
    lost: dict[str, int]
    """Records the ring buffer could not take, per event name."""
    lost_total: int
    malformed: int
    """Records skipped as too short or of an unknown kind."""
    returned: int
    """Events handed to the caller."""
    ring_buffer_size: int
    ring_buffer_used: int
    ring_buffer_fill: float
    bytes: int
    polls: int
    processes: int
    """Processes in the table."""
    poll_cpu_ns: int = 0
    """CPU time the polls took in native code (draining the ring, encoding,
    teaching the process table); the rest of a consumer's CPU is Python's."""


class _Native:
    """The C tracer and the lock every use of it takes. Shared with the
    finalizer, which must not hold the Tracer alive: closing (explicitly, or at
    interpreter exit) waits for a poll in another thread to finish its slice."""

    __slots__ = ("ptr", "lock")

    def __init__(self, ptr):
        self.ptr = ptr
        self.lock = threading.Lock()


def _close_native(native: _Native) -> None:
    with native.lock:
        if native.ptr is not None:
            lib.rg_tracer_close(native.ptr)
            native.ptr = None


def _kernel_object_fds(fds: Iterable[str]) -> list[int]:
    """Those of the descriptors that are BPF objects, perf events, epoll, or
    the guard's fanotify group and its event counters."""
    owned = []
    for fd in fds:
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(("anon_inode:bpf", "anon_inode:[perf_event]", "anon_inode:[eventpoll]",
                              "anon_inode:[fanotify]", "anon_inode:[eventfd]")):
            owned.append(int(fd))
    return owned


def _cgroup_id(cgroup: Union[int, str]) -> int:
    if isinstance(cgroup, int):
        return cgroup
    path = cgroup
    if not os.path.isabs(path):
        path = os.path.join(environment.cgroup2_mount(), path)
    try:
        return os.stat(path).st_ino
    except OSError as e:
        raise ValueError(f"cgroup {cgroup!r}: {e.strerror}") from None


def _rule_terms(ports: tuple[int, int], protocol: int, action: int, rule_index: int):
    lo, hi = ports
    return ffi.new("struct rg_guard_rule_terms *", {"port_lo": lo, "port_hi": hi, "protocol": protocol,
                                                    "action": action, "rule_index": rule_index})


def _watched_inode(path: str) -> tuple[int, int]:
    """The (device, inode) that name a watched path."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise ValueError(f"watch_files: {path}: {e.strerror}") from None
    return st.st_dev, st.st_ino


def _native_cgroup_path(mount: Optional[str]) -> Optional[Callable[[int], Optional[str]]]:
    """cgroup id -> path in O(1) through the kernfs file handle (needs
    CAP_DAC_READ_SEARCH); None where the mount cannot be opened."""
    if mount is None:
        return None
    try:
        mount_fd = os.open(mount, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    prefix = os.path.realpath(mount).rstrip("/")
    buf = ffi.new("char[]", 4096)

    def resolve(cgroup_id: int) -> Optional[str]:
        n = lib.rg_cgroup_path(mount_fd, cgroup_id, buf, 4096)
        if n < 0:
            return None
        path = ffi.string(buf, n).decode(errors="replace")
        if path == prefix:
            return "/"
        return path[len(prefix):] if path.startswith(prefix + "/") else None

    return resolve


class Tracer:
    """Observes processes through eBPF and yields :class:`Event` structs.

    ``with Tracer(events=["process_exec"]) as t: for ev in t: ...``

    Filters run in the kernel: ``pids`` (thread group ids), ``comms`` (the
    kernel's 15-byte command name), ``cgroups`` (paths or ids; a cgroup covers
    its whole subtree, so a process tree put in its own cgroup is one filter).
    Filters of different kinds must all match.
    """

    def __init__(
        self,
        events: Optional[Iterable[str]] = None,
        *,
        pids: Iterable[int] = (),
        comms: Iterable[str] = (),
        cgroups: Iterable[Union[int, str]] = (),
        ring_buffer_size: int = DEFAULT_RING_BUFFER_SIZE,
        max_latency_ms: int = DEFAULT_MAX_LATENCY_MS,
        callback: Optional[Callable[[Event], None]] = None,
        batch_limit: int = 4096,
        guard_cgroup_fd: int = -1,
        guard_lsm: bool = False,
        guard_fanotify: bool = False,
        before_attach: Optional[Callable[["Tracer"], None]] = None,
        identity_env: Iterable[str] = (),
        identity_argv: Iterable[str] = (),
        watch_files: Iterable[Union[str, os.PathLike]] = (),
    ):
        if isinstance(events, str):  # "process_exec", or "process_exec,file_open"
            events = [n.strip() for n in events.split(",") if n.strip()]
        names = tuple(DEFAULT_EVENTS if events is None else events)
        # "lost" is always delivered; naming it is allowed, not needed.
        unknown = [n for n in names if n not in ALL_EVENTS and n != "lost"]
        if unknown:
            raise ValueError(f"unknown event(s) {', '.join(map(repr, unknown))}; known: {', '.join(ALL_EVENTS)}, "
                             "lost")
        if ring_buffer_size < MIN_RING_BUFFER_SIZE or ring_buffer_size & (ring_buffer_size - 1):
            raise ValueError(f"ring_buffer_size {ring_buffer_size} must be a power of two of at least "
                             f"{MIN_RING_BUFFER_SIZE}")
        if not 1 <= max_latency_ms <= MAX_LATENCY_MS:
            raise ValueError(f"max_latency_ms {max_latency_ms} must be between 1 and {MAX_LATENCY_MS}")
        # Loss notices always; guard decisions whenever the guard is loaded.
        guard_events = frozenset(BLOCK_EVENTS) | frozenset(GUARD_EVENTS) if guard_cgroup_fd >= 0 else frozenset()
        self.events = frozenset(names) | {"lost"} | guard_events
        self._wanted_ids = frozenset(EVENT_IDS[name] for name in self.events)
        self.pids = tuple(int(p) for p in pids)
        self.comms = tuple(c.encode()[:15].decode(errors="ignore") for c in comms)
        self.cgroups = tuple(_cgroup_id(c) for c in cgroups)
        self.ring_buffer_size = ring_buffer_size
        self.max_latency_ms = max_latency_ms
        self.callback = callback
        self._batch_limit = batch_limit
        if isinstance(watch_files, (str, os.PathLike)):
            watch_files = [watch_files]
        self.watch_files = tuple(os.fspath(p) for p in watch_files)
        if self.watch_files and "file_open" not in self.events:
            raise ValueError("watch_files reports file_open events: add \"file_open\" to events")
        if len(self.watch_files) > lib.RG_WATCH_MAX:
            raise ValueError(f"watch_files: {len(self.watch_files)} paths; at most {lib.RG_WATCH_MAX}")
        self.identity_env = identity.checked(identity_env, "identity_env", env=True)
        self.identity_argv = identity.checked(identity_argv, "identity_argv", env=False)
        # The guard's hooks: its socket programs attach to this cgroup, and its
        # policy maps are filled by before_attach, after load, before attach.
        self._guard_cgroup_fd = guard_cgroup_fd
        self._guard_lsm = guard_lsm
        self._guard_fanotify = guard_fanotify
        self._before_attach = before_attach
        self._handle = None
        self._closed = False
        self._owner = os.getpid()
        self._lock = threading.Lock()
        self._pending: list[Event] = []
        self._returned = 0
        self._table: Optional[ProcessTable] = None
        self._final_stats: Optional[TracerStats] = None

    # ---- lifecycle ----

    def start(self) -> "Tracer":
        """Loads, fills the filter maps, then attaches. Idempotent."""
        if self._handle is not None:
            return self
        if self._closed:
            raise TracerStateError("this Tracer is closed; create a new one")
        environment.prepare()
        opts = ffi.new("struct rg_options *")
        opts.event_mask = sum(1 << EVENT_IDS[name] for name in set(self.events) | set(_TABLE_EVENTS)
                              if name != "lost")
        opts.wanted_mask = sum(1 << EVENT_IDS[name] for name in self.events)
        opts.ring_bytes = self.ring_buffer_size
        opts.wakeup_bytes = self.ring_buffer_size // 4
        opts.max_latency_ms = self.max_latency_ms
        opts.filter_flags = ((lib.RG_FILTER_PID if self.pids else 0) | (lib.RG_FILTER_COMM if self.comms else 0)
                             | (lib.RG_FILTER_CGROUP if self.cgroups else 0)
                             | (lib.RG_FILTER_FILES if self.watch_files else 0))
        opts.self_tgid = os.getpid()
        opts.batch_limit = self._batch_limit
        opts.guard_cgroup_fd = self._guard_cgroup_fd
        opts.guard_lsm = self._guard_lsm
        if self._guard_fanotify:
            opts.guard_fanotify = 1
            root = environment.cgroup2_mount().encode()
            if len(root) >= len(opts.cgroup_root):
                raise environment.EnvironmentSetupError(f"the cgroup2 mount path {root!r} is too long")
            opts.cgroup_root = root
        err = ffi.new("char[]", _ERR_LEN)
        out = ffi.new("struct rg_tracer **")
        fds_before = set(os.listdir("/proc/self/fd"))
        self._check(lib.rg_tracer_open(opts, out, err, _ERR_LEN), err)
        handle = out[0]
        try:
            for pid in self.pids:
                self._check(lib.rg_tracer_add_pid(handle, pid, err, _ERR_LEN), err)
            for comm in self.comms:
                self._check(lib.rg_tracer_add_comm(handle, comm.encode(), err, _ERR_LEN), err)
            for cgroup in self.cgroups:
                self._check(lib.rg_tracer_add_cgroup(handle, cgroup, err, _ERR_LEN), err)
            for path in self.watch_files:
                self._check(lib.rg_tracer_watch_inode(handle, *_watched_inode(path), err, _ERR_LEN), err)
            for pattern in self.identity_env:
                self._check(lib.rg_tracer_watch_env(handle, pattern.encode(), err, _ERR_LEN), err)
            for pattern in self.identity_argv:
                self._check(lib.rg_tracer_watch_argv(handle, pattern.encode(), err, _ERR_LEN), err)
            if self._before_attach is not None:
                self._handle = handle
                try:
                    self._before_attach(self)
                finally:
                    self._handle = None
            self._check(lib.rg_tracer_attach(handle, err, _ERR_LEN), err)
            try:
                cgroup_mount = environment.cgroup2_mount()
            except environment.EnvironmentSetupError:
                cgroup_mount = None
            self._table = shared_table(lib.rg_entity_id, lib.rg_realtime_offset_ns, cgroup_mount,
                                       lambda: _native_cgroup_path(cgroup_mount))
            # Each poll teaches the table the batch's execs, forks and exits.
            lib.rg_tracer_set_proc_table(handle, self._table.native)
            self._batch = ffi.new("struct rg_batch *")
            self._kernel_fds = _kernel_object_fds(set(os.listdir("/proc/self/fd")) - fds_before)
        except BaseException:
            lib.rg_tracer_close(handle)
            raise
        self._native = _Native(handle)
        self._handle = handle
        self._finalizer = weakref.finalize(self, _close_native, self._native)
        _live.add(self)
        return self

    @staticmethod
    def _check(ret: int, err) -> None:
        if ret < 0:
            raise BPFError(ffi.string(err).decode(errors="replace"), -ret)

    def close(self) -> None:
        """Detaches every program and frees every map. Idempotent; safe from
        another thread while one polls (it waits for the poll's current slice)."""
        self._closed = True
        if self._handle is None:
            return
        self._final_stats = self._read_stats()
        self._handle = None
        _live.discard(self)
        self._finalizer()

    def _abandon(self) -> None:
        # In a forked child: the fds and maps are the parent's too. Drop our
        # copies of the fds without detaching anything, so the parent's close()
        # really detaches, and never touch the parent's ring buffer.
        if self._handle is not None:
            self._finalizer.detach()
            self._native.ptr = None
            for fd in self._kernel_fds:
                try:
                    os.close(fd)
                except OSError:
                    pass
            self._handle = None
        self._closed = True

    def __enter__(self) -> "Tracer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def running(self) -> bool:
        return self._handle is not None

    def _usable(self):
        if self._handle is None:
            if os.getpid() != self._owner:
                raise TracerStateError(
                    f"this Tracer belongs to process {self._owner}; a forked child cannot consume its "
                    "ring buffer: create a new Tracer in the child")
            if self._closed:
                raise TracerStateError("this Tracer is closed")
            self.start()
        return self._handle

    # ---- the guard's policy maps (csrc/guardmaps.c) ----
    # Policy-level values in; the C side makes the kernel's keys and values.
    # Each raises BPFError saying what was refused and why.

    def _guard_call(self, call, *args) -> int:
        if self._handle is None:
            raise TracerStateError("this Tracer is not loaded")
        err = ffi.new("char[]", _ERR_LEN)
        with self._native_lock():
            ret = call(self._handle, *args, err, _ERR_LEN)
        self._check(ret, err)
        return ret

    def guard_address_rule(self, slot: int, address: str, prefix_len: int, ports: tuple[int, int], protocol: int,
                           action: int, rule_index: int) -> None:
        """Network rule number slot, for destinations in address/prefix_len
        ("10.0.0.0", 8); protocol: RG_GUARD_PROTO_*, action: RG_NET_*."""
        terms = _rule_terms(ports, protocol, action, rule_index)
        self._guard_call(lib.rg_guard_set_address_rule, slot, address.encode(), prefix_len, terms)

    def guard_host_rule(self, slot: int, pattern: str, ports: tuple[int, int], protocol: int, action: int,
                        rule_index: int) -> None:
        """Network rule number slot, for destinations answered for names host
        pattern (added by guard_host_pattern first) matches."""
        terms = _rule_terms(ports, protocol, action, rule_index)
        self._guard_call(lib.rg_guard_set_host_rule, slot, pattern.encode(), terms)

    def guard_host_pattern(self, pattern: str, bit: int) -> None:
        """Host pattern ("api.example.com", "*.example.com") holds bit ``bit``
        of the marks the DNS programs give the addresses they read."""
        self._guard_call(lib.rg_guard_add_host_pattern, pattern.encode(), bit)

    def guard_trust_dns_server(self, address: str) -> None:
        """The DNS programs count answers from this server."""
        self._guard_call(lib.rg_guard_trust_dns_server, address.encode())

    def guard_allow_resolved(self, address: str, patterns: int, name: str, ttl_s: float) -> None:
        """Opens address to the host patterns of the bits in patterns for
        ttl_s seconds, as an observed answer for name would."""
        self._guard_call(lib.rg_guard_allow_resolved, address.encode(), patterns, name.encode(), int(ttl_s * 1e9))

    def guard_answered_name(self, name_hash: int) -> Optional[str]:
        """The name the DNS programs recorded under name_hash; None when they
        hold none (never answered, or pushed out since)."""
        name = ffi.new("char[]", lib.RG_DNS_NAME_LEN)
        if not self._guard_call(lib.rg_guard_answered_name, name_hash, name, lib.RG_DNS_NAME_LEN):
            return None
        return ffi.string(name).decode(errors="replace")

    def guard_protect_inode(self, st_dev: int, st_ino: int, kind: int, rule_index: int, is_dir: bool) -> None:
        """The file or directory os.stat() gives st_dev and st_ino for is
        protected by the rule (kind: RG_PROTECT_*; is_dir: all beneath it too)."""
        self._guard_call(lib.rg_guard_protect_inode, st_dev, st_ino, kind, rule_index, is_dir)

    def guard_protect_pid(self, pid: int, rule_index: int) -> None:
        """pid is protected from ptrace and memory access by the rule."""
        self._guard_call(lib.rg_guard_protect_pid, pid, rule_index)

    def guard_configure(self, cfg) -> None:
        """Writes the guard's settings (a ``struct rg_guard_config *``): the
        first write switches the guard on, a later one changes it in place."""
        self._guard_call(lib.rg_guard_configure, cfg)

    def protect_path(self, path: str, kind: int, rule_index: int) -> None:
        """The guard's fanotify file judge: marks path (a file, or a directory
        and every directory and file beneath it on its filesystem) as
        protected by the rule. BPFError when it cannot be marked."""
        if self._handle is None:
            raise TracerStateError("this Tracer is not loaded")
        err = ffi.new("char[]", _ERR_LEN)
        with self._native_lock():
            self._check(lib.rg_tracer_protect_path(self._handle, os.fsencode(path), kind, rule_index, err,
                                                   _ERR_LEN), err)

    def destroy_tainted_sockets(self) -> int:
        """The guard (tracepoint backend): destroys every TCP socket whose
        connecting process is tainted, living or exited, discarding the data
        queued in it; returns how many. BPFError, saying why, when this tracer
        has no socket destroyer: it did not load (no bpf_sock_destroy kfunc
        before Linux 6.5), or the guard runs the LSM backend, which needs none."""
        if self._handle is None:
            raise TracerStateError("this Tracer is not loaded")
        err = ffi.new("char[]", _ERR_LEN)
        with self._native_lock():
            ret = lib.rg_tracer_destroy_tainted_sockets(self._handle, err, _ERR_LEN)
        self._check(ret, err)
        return ret

    def _native_call(self, fn, *args) -> int:
        """Calls a native function that takes the tracer, then ``args``, then
        an error buffer (``lib.rg_tracer_attach_uprobe``), under the lock that
        keeps the tracer alive; BPFError with its message on failure."""
        if self._handle is None:
            raise TracerStateError("this Tracer is not loaded")
        err = ffi.new("char[]", _ERR_LEN)
        with self._native_lock():
            if self._handle is None:
                raise TracerStateError("this Tracer is closed")
            ret = fn(self._handle, *args, err, _ERR_LEN)
        self._check(ret, err)
        return ret

    def _native_lock(self):
        # Before start() finishes (before_attach), no other thread can see the handle.
        native = getattr(self, "_native", None)
        return native.lock if native is not None and native.ptr is not None else _NO_LOCK

    # ---- consuming ----

    def poll(self, timeout: Optional[float] = None) -> list[Event]:
        """Waits up to ``timeout`` seconds (None: until there are events) and
        returns them. A callback, if given, is called for each first; an
        exception it raises propagates from here, and the events after the one
        that raised are returned by the next poll."""
        with self._lock:
            events, self._pending = self._pending, []
        if not events:
            events = self._poll_native(timeout)
        self._returned += len(events)
        if self.callback is not None:
            for i, ev in enumerate(events):
                try:
                    self.callback(ev)
                except BaseException:
                    with self._lock:
                        self._pending = events[i + 1:] + self._pending
                    raise
        return events

    def poll_batch(self, timeout: Optional[float] = None) -> EventBatch:
        """The batch API, for firehoses: waits as ``poll`` does and returns
        the events as one ``EventBatch`` (a numpy structured array of rows,
        ``event(i)`` for the typed Event of a row); empty when the timeout
        passed with none. The callback is not called. Needs numpy."""
        numpy_module()
        batch = self._poll_native(timeout, columnar=True)
        self._returned += len(batch)
        return batch

    def _poll_native(self, timeout: Optional[float], columnar: bool = False):
        self._usable()
        native = self._native
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        take = self._take_columns if columnar else self._take_events
        while True:
            if deadline is None:
                wait_ms = _POLL_SLICE_MS
            else:
                # Round up: a sub-millisecond remainder must still wait, not spin.
                wait_ms = math.ceil(max(0.0, min(_POLL_SLICE_MS / 1000, deadline - time.monotonic())) * 1000)
            # One slice at a time under the lock: close() from another thread
            # (or at interpreter exit) waits at most one slice, never frees the
            # tracer under a running poll.
            with native.lock:
                if native.ptr is None:
                    raise TracerStateError("this Tracer is closed")
                n = lib.rg_tracer_poll(native.ptr, wait_ms, int(columnar), self._batch)
                if n < 0 and n != -errno.EINTR:
                    raise BPFError(f"polling ring buffer rg_events: {os.strerror(-n)}", -n)
                if n > 0:
                    out = take(self._batch)
                    if len(out):
                        return out
            if deadline is not None and time.monotonic() >= deadline:
                return EventBatch(numpy_module().empty(0, row_dtype()), b"") if columnar else []

    def _take_events(self, batch) -> list[Event]:
        events = batch_decoder.decode(ffi.buffer(batch.data, batch.len))
        if batch.fresh_cgroup_count or batch.stranger_count:
            self._table.meet(batch)
        if batch.unwanted:
            wanted = self._wanted_ids
            events = [ev for ev in events if ev.id in wanted]
        return events

    def _take_columns(self, batch) -> EventBatch:
        np = numpy_module()
        rows = np.frombuffer(ffi.buffer(batch.rows, batch.count * ROW_SIZE), dtype=row_dtype()).copy()
        out = EventBatch(rows, bytes(ffi.buffer(batch.data, batch.len)))
        if batch.fresh_cgroup_count or batch.stranger_count:
            self._table.meet(batch)
        if batch.unwanted:
            out = out.select(np.isin(rows["id"], list(self._wanted_ids)))
        return out

    def __iter__(self) -> Iterator[Event]:
        """Events as they come. A Tracer closed before the loop starts raises
        TracerStateError, as poll() does; one closed by another thread while
        the loop runs ends it (the way to stop a loop from elsewhere)."""
        self._usable()
        return self._iterate()

    def _iterate(self) -> Iterator[Event]:
        while True:
            try:
                events = self.poll()
            except TracerStateError:
                if self._closed:
                    return
                raise
            yield from events

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._aiter()

    async def _aiter(self) -> AsyncIterator[Event]:
        """Sleeps in the event loop on the ring buffer's epoll fd, with a
        timer for the records submitted without a wake-up."""
        loop = asyncio.get_running_loop()
        fd = lib.rg_tracer_epoll_fd(self._usable())
        while not self._closed:
            events = self.poll(0)
            for ev in events:
                yield ev
            if events:
                continue
            woken = loop.create_future()

            def wake() -> None:
                if not woken.done():
                    woken.set_result(None)

            loop.add_reader(fd, wake)
            timer = loop.call_later(self.max_latency_ms / 1000, wake)
            try:
                await woken
            finally:
                loop.remove_reader(fd)
                timer.cancel()

    def process(self, pid: int):
        """The Process the table knows for pid (read from /proc if needed), or None."""
        return self._table.by_pid(pid) if self._table is not None else None

    # ---- introspection ----

    def stats(self) -> TracerStats:
        """Counters so far; after close(), the final ones."""
        if self._handle is None and self._final_stats is not None:
            return self._final_stats
        self._usable()
        return self._read_stats()

    def _native_stats(self):
        s = ffi.new("struct rg_stats *")
        with self._native.lock:
            if self._native.ptr is None:
                raise TracerStateError("this Tracer is closed")
            lib.rg_tracer_stats(self._native.ptr, s)
        return s

    def file_judge_stats(self) -> tuple[int, int, int, int]:
        """The guard's fanotify file judge: (permission events answered, of
        them refused, inodes marked, of them those that refuse truncate(2)
        too); zeros where it does not run."""
        self._usable()
        s = self._native_stats()
        return s.file_judge_asked, s.file_judge_denied, s.file_judge_marks, s.file_judge_pre_content_marks

    def program_stats(self) -> dict[str, tuple[int, int]]:
        """Every loaded BPF program of every loaded sensor, by program name
        (``rg_exec``): (run time in ns, runs), as the kernel counts them. It
        counts only while BPF statistics are on (``rg_enable_bpf_stats``'s
        descriptor is open somewhere, or sysctl kernel.bpf_stats_enabled=1),
        so both are 0 otherwise. Unlike stats(), never starts the tracer:
        TracerStateError when it is not running."""
        # csrc/loader.c sensor_names; one that is not loaded has no programs.
        sensors = (b"process", b"file", b"net", b"ptrace", b"guard", b"calls")
        found: dict[str, tuple[int, int]] = {}
        cap = 64

        def read(handle, err, errlen) -> int:
            nonlocal cap
            for sensor in sensors:
                while True:
                    progs = ffi.new("struct rg_program_stats[]", cap)
                    n = lib.rg_tracer_program_stats(handle, sensor, progs, cap, err, errlen)
                    if n < 0:
                        return n
                    if n < cap:  # a full array may be cut short: the native side stops at cap
                        break
                    cap *= 2
                for i in range(n):
                    found[ffi.string(progs[i].name).decode()] = (progs[i].run_time_ns, progs[i].run_count)
            return 0

        # One call, so a scrape takes the lock a concurrent poll holds once, not once per sensor.
        self._native_call(read)
        return found

    def _read_stats(self) -> TracerStats:
        s = self._native_stats()
        names = {v: k for k, v in EVENT_IDS.items()}
        delivered = {names.get(k, f"kind-{k}"): s.delivered[k] for k in range(lib.RG_KIND_SLOTS) if s.delivered[k]}
        lost = {names.get(k, f"kind-{k}"): s.lost[k] for k in range(lib.RG_KIND_SLOTS) if s.lost[k]}
        return TracerStats(
            delivered=delivered, lost=lost, lost_total=sum(lost.values()), malformed=s.malformed,
            returned=self._returned, ring_buffer_size=s.ring_size, ring_buffer_used=s.ring_used,
            ring_buffer_fill=s.ring_used / s.ring_size if s.ring_size else 0.0, bytes=s.bytes,
            polls=s.polls, processes=len(self._table) if self._table else 0, poll_cpu_ns=s.poll_cpu_ns,
        )
