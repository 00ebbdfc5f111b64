"""``CallTracer``: function probes on a ``Tracer``'s consumer.

Probes are resolved (file, symbol or note) before anything loads; the calls
sensor then counts every call in the kernel by (probe, process, user stack),
and, where asked, sends a record per call through a token bucket. Stacks are
stored by the kernel as (build id, file offset) frames, so they are
symbolized here, off the hot path, also after the process exited.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from typing import Callable, Iterable, Iterator, Optional, Sequence, Union

from .. import environment
from .._native import ffi, lib
from ..digests import shared_cache
from ..errors import BPFError, ProbeError, RuntimeGuardError
from ..tracer import Tracer
from . import probes as probes_module
from .paths import (CallFrame, ObservedCallPath, RuntimeCallEvent, RuntimeSignalSummary, SignalStatistics,
                    callstack_hash, combined_hash, node_hash, path_hash, trim_to_entry)
from .probes import Probe
from .redact import Redactor
from .symbols import ElfCache, MapsSnapshot, PackageIndex, Symbolizer, detect_runtime, function_signature

#: Records per second a probe sends at most, and its burst, by default:
#: counting in the kernel covers every call; records are samples of them.
DEFAULT_RATE = 10_000
DEFAULT_BURST = 1_000
_PATHS_READ_MAX = lib.RG_CALL_PATHS_MAX

#: Where the buffer of a TLS library's write or read is, and when it holds
#: the plaintext: a write's at entry (its length an argument), a read's at
#: return (its length the return value, or what the size_t argument points to).
TLS_FUNCTIONS = {
    "SSL_write": (1, 2, lib.RG_LENGTH_ARG),
    "SSL_write_ex": (1, 2, lib.RG_LENGTH_ARG),
    "SSL_read": (1, 2, lib.RG_LENGTH_RETVAL),
    "SSL_read_ex": (1, 3, lib.RG_LENGTH_POINTER),
}
TLS_LIBRARY = "libssl.so.3"


def tls_probes(library: str = TLS_LIBRARY) -> list[str]:
    """The probes that see TLS plaintext through OpenSSL's libssl: its
    writes and reads, with and without ``_ex`` (CPython's ssl module uses
    the ``_ex`` forms)."""
    return [f"{library}:{name}" for name in TLS_FUNCTIONS]


class _FileFacts:
    """Per binary: sha256 (the shared digest cache, one answer per file
    version) and Package URL."""

    def __init__(self):
        self._packages = PackageIndex()

    def of(self, path: Optional[str]) -> tuple[Optional[str], Optional[str]]:
        """(sha256 hex, purl); the purl of a file no package owns is a
        generic one carrying its digest."""
        if not path:
            return None, None
        sha = shared_cache().digest_of(path).sha256
        purl = self._packages.purl_of(path)
        if purl is None and sha is not None:
            purl = f"pkg:generic/{os.path.basename(path)}?checksum=sha256:{sha}"
        return sha, purl


class CallTracer:
    """Attaches function probes and reports the calls they see.

    ``probes``: specs (``libssl.so.3:SSL_write``, ``./app:handler``,
    ``usdt:/usr/bin/python3.11:python:function__entry``) or resolved
    ``Probe``s. ``returns``: a return probe beside each entry probe.
    Scope (``pids``, ``cgroups``, ``comms``) is the Tracer's, enforced in
    the kernel; by default every process that maps a probed file.

    ``records``: send a record per call (``poll``), at most ``rate`` per
    second per probe (``burst`` at once); calls are counted in the kernel
    either way (``call_paths``). ``stacks``: capture user stacks.

    ``plaintext``: bytes of each TLS write's and read's buffer to keep (0:
    none); ``tls``: probe libssl's writes and reads for it. ``redact_env``
    (environment variable names or patterns whose values are secrets) and
    ``redact`` (regular expressions) are replaced in captured buffers.
    """

    def __init__(self, probes: Iterable[Union[str, Probe]] = (), *, returns: bool = False,
                 pids: Iterable[int] = (), cgroups: Iterable[Union[int, str]] = (), comms: Iterable[str] = (),
                 records: bool = True, rate: int = DEFAULT_RATE, burst: int = DEFAULT_BURST, stacks: bool = True,
                 plaintext: int = 0, tls: bool = False, redact_env: Iterable[str] = (),
                 redact: Iterable[str] = (), ring_buffer_size: int = 8 << 20):
        if not 0 <= plaintext <= lib.RG_CALL_DATA_MAX:
            raise ValueError(f"plaintext {plaintext}: between 0 and {lib.RG_CALL_DATA_MAX} bytes")
        if rate < 0 or burst < 1:
            raise ValueError(f"rate {rate}/s, burst {burst}: the rate is at least 0 (0: every call), "
                             "the burst at least 1")
        self._elf = ElfCache()
        self._symbolizer = Symbolizer(self._elf)
        specs = list(probes) + (tls_probes() if tls else [])
        if not specs:
            raise ProbeError("no probes: give at least one (BINARY:SYMBOL), or tls=True")
        resolved = []
        for spec in dict.fromkeys(specs):
            probe = spec if isinstance(spec, Probe) else probes_module.parse(spec, returns=returns,
                                                                             elf_cache=self._elf)
            resolved.append(probe)
        if len(resolved) > lib.RG_CALL_PROBES_MAX:
            raise ProbeError(f"{len(resolved)} probes; at most {lib.RG_CALL_PROBES_MAX}")
        self.plaintext = plaintext
        self._layouts = {}
        for i, probe in enumerate(resolved):
            layout = TLS_FUNCTIONS.get(probe.symbol.name) if probe.symbol is not None and plaintext else None
            if layout is not None and layout[2] != lib.RG_LENGTH_ARG and not probe.returns:
                resolved[i] = probe = _with_return(probe)  # a read's buffer is full at its return
            self._layouts[i] = layout
        self.probes: tuple[Probe, ...] = tuple(resolved)
        self.records, self.rate, self.burst, self.stacks = records, rate, burst, stacks
        self._redactor = Redactor(redact_env, redact)
        self._scope = {"pids": tuple(pids), "cgroups": tuple(cgroups), "comms": tuple(comms)}
        self._ring_buffer_size = ring_buffer_size
        self._tracer = self._make_tracer()
        self._stats_fd = -1
        self._started_ns = 0
        self._stopped_ns = 0
        self._snapshots: dict[int, Optional[MapsSnapshot]] = {}
        self._runtimes: dict[int, str] = {}
        self._facts = _FileFacts()
        self._final_paths: Optional[list[ObservedCallPath]] = None
        self._final_states = None
        self._final_statistics: Optional[SignalStatistics] = None
        self._stacks: dict[tuple[int, bool], list[CallFrame]] = {}
        self._probe_cache: dict[int, tuple] = {}
        self._stack_hashes: dict[tuple[int, bool], str] = {}

    def _make_tracer(self) -> Tracer:
        return Tracer(events=["function_call"], ring_buffer_size=self._ring_buffer_size,
                      before_attach=self._attach, **self._scope)

    # ---- lifecycle ----

    def start(self) -> "CallTracer":
        if self._tracer.running:
            return self
        err = ffi.new("char[]", 512)
        fd = lib.rg_enable_bpf_stats(err, 512)
        self._stats_fd = fd if fd >= 0 else -1
        # The consumer's own libraries (libc, libssl) are those most stacks
        # pass through: learn their build ids while they are surely mapped.
        self._snapshot(os.getpid())
        try:
            self._tracer.start()
        except BaseException:
            self._close_stats()
            raise
        self._started_ns = time.time_ns()
        return self

    def _attach(self, tracer: Tracer) -> None:
        for i, probe in enumerate(self.probes):
            cfg = ffi.new("struct rg_call_probe *")
            cfg.flags = ((lib.RG_CALL_STACK if self.stacks else 0) | (lib.RG_CALL_RECORDS if self.records else 0)
                         | (lib.RG_CALL_USDT if probe.kind == "usdt" else 0)
                         | (lib.RG_CALL_RETURNS if probe.returns else 0))
            layout = self._layouts.get(i)
            if layout is not None:
                cfg.flags |= lib.RG_CALL_CAPTURE
                cfg.buffer_arg, cfg.length_arg, cfg.length_from = layout
                cfg.capture_bytes = self.plaintext
            cfg.string_args = sum(1 << a for a in probe.string_arguments)
            cfg.rate = self.rate
            cfg.burst = self.burst if self.rate else 0
            tracer._native_call(lib.rg_tracer_set_probe, i, cfg)
            path = os.fsencode(probe.path)
            if probe.kind == "usdt":
                tracer._native_call(lib.rg_tracer_attach_usdt, i, path, probe.provider.encode(),
                                    probe.name.encode(), -1)
                continue
            if probe.entry:
                tracer._native_call(lib.rg_tracer_attach_uprobe, i, path, probe.offset, 0, -1)
            if probe.returns:
                tracer._native_call(lib.rg_tracer_attach_uprobe, i, path, probe.offset, 1, -1)

    def run(self, argv: Sequence[str], *, on_call: Optional[Callable[[RuntimeCallEvent], None]] = None,
            poll_interval: float = 0.1) -> int:
        """Runs argv in a fresh cgroup with the probes scoped to it (every
        descendant stays in scope), hands each call record to ``on_call``,
        and returns its exit status once it and its descendants are done.
        The tracer is closed after: ``call_paths()``, ``summaries()`` and
        ``statistics()`` give the final figures."""
        if self._tracer.running or any(self._scope.values()):
            raise ProbeError("run() scopes the probes to the command: use a CallTracer that is neither "
                             "started nor given pids, cgroups or comms")
        # Before the command's cgroup is made: without privileges that fails first, and says less.
        environment.check_privileges()
        cgroup = environment.make_cgroup(environment.cgroup2_mount(), "runtimeguard-calls")
        proc = None
        try:
            self._scope = {**self._scope, "cgroups": (os.stat(cgroup).st_ino,)}
            self._tracer = self._make_tracer()
            self.start()
            try:
                proc = subprocess.Popen(list(argv), preexec_fn=lambda: environment.join_cgroup(cgroup))
            except OSError as e:
                raise ProbeError(f"cannot run {argv[0]!r}: {e.strerror}") from None
            while proc.poll() is None:
                calls = self.poll(poll_interval)
                if on_call is not None:
                    for call in calls:
                        on_call(call)
            while True:  # what is still in the ring
                calls = self.poll(0.05)
                if not calls:
                    break
                if on_call is not None:
                    for call in calls:
                        on_call(call)
            status = proc.returncode
            return 128 - status if status < 0 else status
        finally:
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
            environment.kill_cgroup(cgroup)
            self.close()
            os.rmdir(cgroup)

    def close(self) -> None:
        """Reads what the kernel counted one last time, then detaches."""
        if self._tracer.running:
            self._final_paths = self._read_paths()
            self._final_states = self._states()
            self._stopped_ns = time.time_ns()
            self._final_statistics = self._statistics_now()
        self._tracer.close()
        self._close_stats()

    def _close_stats(self) -> None:
        if self._stats_fd >= 0:
            os.close(self._stats_fd)
            self._stats_fd = -1

    def __enter__(self) -> "CallTracer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def tracer(self) -> Tracer:
        return self._tracer

    # ---- records ----

    def poll(self, timeout: Optional[float] = None) -> list[RuntimeCallEvent]:
        """The call records that arrived, waiting up to ``timeout`` seconds."""
        out = []
        for ev in self._tracer.poll(timeout):
            if ev.name == "function_call":
                out.append(self._call_event(ev))
        return out

    def __iter__(self) -> Iterator[RuntimeCallEvent]:
        while True:
            yield from self.poll(None)

    def _call_event(self, ev) -> RuntimeCallEvent:
        d = ev.data
        probe = self.probes[d.probe]
        self._snapshot(ev.pid)
        stack = self._stack(d.stack_id, ev.pid, d.phase == "return") if d.stack_id >= 0 else []
        sha, purl, signature, node = self._probe_facts(d.probe)
        strings: list[str] = []
        plaintext = None
        redactions = 0
        if d.data is not None:
            if probe.kind == "usdt":
                strings = [s.decode(errors="replace") for s in d.data.split(b"\0")[:len(probe.string_arguments)]]
            else:
                self._redactor.learn_process(ev.pid)
                plaintext, redactions = self._redactor.redact(d.data, d.data_truncated)
        workload = ev.workload
        container = workload.container.id if workload is not None and workload.container is not None else None
        if ev.pid not in self._runtimes and workload is not None and workload.process.executable:
            # Gone before its mappings were read: its executable (from its exec) still tells most runtimes.
            self._runtimes[ev.pid] = detect_runtime(workload.process.executable, [], self._elf)
        return RuntimeCallEvent(
            event_id=f"{ev.timestamp:x}-{ev.cpu}-{ev.seq}", timestamp=ev.timestamp, pid=ev.pid, tid=ev.tid,
            probe=probe.spec, phase=d.phase, symbol=probe.function, function_address=d.address,
            binary_offset=probe.offset, library=probe.path, runtime=self._runtime(ev.pid),
            function_signature=signature, node_hash=node, container_id=container,
            comm=ev.comm, user_stack=stack,
            callstack_hash=self._callstack_hash(d.stack_id, d.phase == "return", stack) if stack else None,
            purl=purl, binary_sha256=sha, arguments=list(d.arguments), result=d.result, usdt_strings=strings,
            plaintext=plaintext, plaintext_size=d.data_size if plaintext is not None else None,
            plaintext_truncated=bool(d.data_truncated) and plaintext is not None, redactions=redactions)

    # ---- symbols ----

    def _callstack_hash(self, stack_id: int, from_return: bool, stack: list[CallFrame]) -> str:
        """As its ObservedCallPath's: over the frames from the entry (main) on."""
        key = (stack_id, from_return)
        found = self._stack_hashes.get(key) if key in self._stacks else None
        if found is None:
            found = callstack_hash([f.key for f in trim_to_entry(stack)])
            if key in self._stacks:
                self._stack_hashes[key] = found
        return found

    def _probe_facts(self, index: int) -> tuple[Optional[str], Optional[str], str, str]:
        """(sha256, purl, signature, node hash) of a probe's function: its
        file is the one attached (by inode), so they are read once."""
        facts = self._probe_cache.get(index)
        if facts is None:
            probe = self.probes[index]
            sha, purl = self._facts.of(probe.path)
            signature = self._signature(probe)
            facts = self._probe_cache[index] = (sha, purl, signature, node_hash(purl or "", signature))
        return facts

    def _signature(self, probe: Probe) -> str:
        if probe.kind == "usdt":
            return f"usdt:{probe.provider}:{probe.name}"
        if probe.symbol is None:
            return f"?+{probe.offset:#x}"
        return function_signature(probe.symbol.name)

    def _snapshot(self, pid: int) -> Optional[MapsSnapshot]:
        """The process's mappings at first sight: they name the files of
        frames the kernel could only give as addresses, and its runtime."""
        if pid in self._snapshots:
            return self._snapshots[pid]
        try:
            snap = MapsSnapshot.read(pid, self._elf)
        except (OSError, ProcessLookupError, ValueError):
            snap = None
        self._snapshots[pid] = snap
        try:
            exe = os.readlink(f"/proc/{pid}/exe")
        except OSError:
            exe = None  # gone (or a zombie): the exec's record names it later
        if snap is not None and exe is not None:
            self._runtimes[pid] = detect_runtime(exe, [m.path for m in snap.mappings if m.path], self._elf)
        return snap

    def _runtime(self, pid: int) -> str:
        return self._runtimes.get(pid, "unknown")

    def _stack(self, stack_id: int, pid: int, from_return: bool) -> list[CallFrame]:
        # The kernel never removes a stored stack while the tracer runs: a
        # stack of build-id frames is the same for every process and call.
        key = (stack_id, from_return)
        cached = self._stacks.get(key)
        if cached is not None:
            return cached
        stack = self._read_stack(stack_id, pid, from_return)
        if stack and all(f.named_by == "build_id" for f in stack):
            if len(self._stacks) >= lib.RG_CALL_STACKS * 2:
                self._stacks.clear()
                self._stack_hashes.clear()
            self._stacks[key] = stack
        return stack

    def _read_stack(self, stack_id: int, pid: int, from_return: bool) -> list[CallFrame]:
        frames = ffi.new("struct rg_stack_frame[]", lib.RG_CALL_STACK_DEPTH)
        try:
            n = self._tracer._native_call(lib.rg_tracer_call_stack, stack_id, frames, lib.RG_CALL_STACK_DEPTH)
        except BPFError:
            return []
        out = []
        for i in range(n):
            f = frames[i]
            is_return_address = i > 0 or from_return
            if f.status == 1:
                frame = self._symbolizer.frame_from_build_id(bytes(f.build_id).hex(), f.offset_or_ip,
                                                             is_return_address=is_return_address)
            else:
                snap = self._snapshots.get(pid) or self._snapshot(pid)
                if snap is None:
                    out.append(CallFrame(function="?", signature=f"?+{f.offset_or_ip:#x}", offset=f.offset_or_ip,
                                         named_by="address"))
                    continue
                frame = self._symbolizer.frame_from_ip(snap, f.offset_or_ip, is_return_address=is_return_address)
            out.append(self._call_frame(frame, "build_id" if f.status == 1 else "address"))
        return out

    def _call_frame(self, frame, named_by: str) -> CallFrame:
        sha, purl = self._facts.of(frame.module)
        if frame.symbol is not None:
            function = frame.function or frame.symbol
            signature = function_signature(frame.symbol)
        else:
            function = "?"
            signature = f"?+{frame.offset:#x}"
        return CallFrame(function=function, signature=signature, offset=frame.offset,
                         function_offset=frame.symbol_offset if frame.symbol is not None else 0,
                         binary=frame.module, build_id=frame.build_id, purl=purl, sha256=sha, symbol=frame.symbol,
                         named_by=named_by)

    # ---- what the kernel counted ----

    def _read_paths(self) -> list[ObservedCallPath]:
        keys, counts, n = self._counted()
        offset = lib.rg_realtime_offset_ns()
        merged: dict[tuple, dict] = {}
        stacks: dict[tuple[int, int, bool], list[CallFrame]] = {}
        for i in range(n):
            k, c = keys[i], counts[i]
            probe = self.probes[k.probe >> 1]
            phase = "return" if k.probe & 1 else "entry"
            if k.stack_id >= 0:
                key = (k.stack_id, k.pid, phase == "return")
                if key not in stacks:
                    stacks[key] = self._stack(k.stack_id, k.pid, phase == "return")
                frames = stacks[key]
            else:
                frames = []
            path = trim_to_entry(frames) if frames else [self._probe_frame(probe)]
            chash = callstack_hash([f.key for f in path])
            group = merged.setdefault((probe.spec, phase, chash), {
                "probe": probe, "phase": phase, "path": path, "count": 0, "first": None, "last": None,
                "containers": set(), "pids": set()})
            group["count"] += c.count
            first, last = c.first_ns + offset, c.last_ns + offset
            group["first"] = first if group["first"] is None else min(group["first"], first)
            group["last"] = last if group["last"] is None else max(group["last"], last)
            group["pids"].add(k.pid)
            container = self._tracer._table.container(k.cgroup_id)
            if container is not None:
                group["containers"].add(container.id)
        out = []
        for (_spec, _phase, chash), g in merged.items():
            path = g["path"]
            nodes = [f.node_hash for f in path]
            out.append(ObservedCallPath(
                probe=g["probe"].spec, symbols=[f.function for f in path], count=g["count"],
                first_seen=g["first"], last_seen=g["last"], node_hashes=nodes, path_hash=path_hash(nodes),
                callstack_hash=chash, function_signatures=[f.signature for f in path], frames=path,
                binary_digests={f.binary: f.sha256 for f in path if f.binary and f.sha256},
                container_ids=sorted(g["containers"]), pids=sorted(g["pids"]), phase=g["phase"]))
        out.sort(key=lambda p: (p.probe, p.phase, -p.count, p.symbols))
        return out

    def _probe_frame(self, probe: Probe) -> CallFrame:
        sha, purl = self._facts.of(probe.path)
        signature = self._signature(probe)
        return CallFrame(function=probe.function, signature=signature, offset=probe.offset, binary=probe.path,
                         build_id=probe.build_id, purl=purl, sha256=sha,
                         symbol=probe.symbol.name if probe.symbol is not None else None)

    def call_paths(self) -> list[ObservedCallPath]:
        """Every (probe, call path) the kernel counted so far (after close:
        the final count), most counted first within a probe."""
        if not self._tracer.running and self._final_paths is not None:
            return self._final_paths
        return self._read_paths()

    def _states(self) -> list:
        states = []
        for i in range(len(self.probes)):
            st = ffi.new("struct rg_call_state *")
            self._tracer._native_call(lib.rg_tracer_probe_state, i, st)
            states.append(st)
        return states

    def summaries(self) -> list[RuntimeSignalSummary]:
        """Per container (None: processes in no container), what ran."""
        paths = self.call_paths()
        states = self._final_states if not self._tracer.running and self._final_states else self._states()
        dropped_total = sum(s.limited + s.paths_full for s in states) + self._tracer.stats().lost.get(
            "function_call", 0)
        by_container: dict[Optional[str], list[ObservedCallPath]] = {}
        for p in paths:
            for cid in (p.container_ids or [None]):
                by_container.setdefault(cid, []).append(p)
        if not by_container:
            by_container[None] = []
        stopped = self._stopped_ns or time.time_ns()
        out = []
        for cid, group in sorted(by_container.items(), key=lambda kv: kv[0] or ""):
            pids = {pid for p in group for pid in p.pids}
            runtimes = sorted({self._runtimes.get(pid, "unknown") for pid in pids})
            nodes = sorted({h for p in group for h in p.node_hashes})
            hashes = sorted({p.path_hash for p in group})
            out.append(RuntimeSignalSummary(
                started=self._started_ns, stopped=stopped, total_events=sum(p.count for p in group),
                call_paths=len(group), observed_symbols=sorted({s for p in group for s in p.symbols}),
                dropped_events=dropped_total if cid is None or len(by_container) == 1 else 0,
                detected_runtimes=runtimes, observed_node_hashes=nodes, observed_path_hashes=hashes,
                combined_hash=combined_hash(hashes), container_id=cid))
        return out

    def statistics(self) -> SignalStatistics:
        if not self._tracer.running and self._final_statistics is not None:
            return self._final_statistics
        return self._statistics_now()

    def _statistics_now(self) -> SignalStatistics:
        states = self._states()
        stats = self._tracer.stats()
        elapsed = max(1e-9, (time.time_ns() - self._started_ns) / 1e9)
        progs = ffi.new("struct rg_program_stats[]", 8)
        n = self._tracer._native_call(lib.rg_tracer_program_stats, b"calls", progs, 8)
        run_ns = sum(progs[i].run_time_ns for i in range(n))
        runs = sum(progs[i].run_count for i in range(n))
        calls = sum(s.calls for s in states)
        limited = sum(s.limited for s in states)
        paths_full = sum(s.paths_full for s in states)
        lost = stats.lost.get("function_call", 0)
        memory = self._tracer._native_call(lambda t, err, n: lib.rg_tracer_calls_memory(t))
        # Merged as call_paths() merges them: processes and stack ids apart are one path.
        unique = len(self._final_paths if self._final_paths is not None else self._read_paths())
        return SignalStatistics(
            events_per_second=calls / elapsed, records_per_second=stats.delivered.get("function_call", 0) / elapsed,
            unique_call_paths=unique, ring_buffer_utilization=stats.ring_buffer_fill,
            dropped_events=limited + paths_full + lost,
            cpu_overhead_percent=100.0 * run_ns / 1e9 / elapsed if self._stats_fd >= 0 else None,
            kernel_memory_bytes=memory, consumer_rss_bytes=_rss_bytes(),
            probe_run_time_ns=run_ns, probe_runs=runs, limited=limited, lost=lost, paths_not_counted=paths_full,
            stack_errors=sum(s.stack_errors for s in states))

    def _counted(self):
        """The kernel's (probe, process, stack) counts: keys, counts, how many."""
        keys = ffi.new("struct rg_call_path_key[]", _PATHS_READ_MAX)
        counts = ffi.new("struct rg_call_path_count[]", _PATHS_READ_MAX)
        return keys, counts, self._tracer._native_call(lib.rg_tracer_call_paths, keys, counts, _PATHS_READ_MAX)


def user_stack_mode() -> tuple[str, str]:
    """Which user stacks ``bpf_get_stackid`` gives inside a uprobe on this
    kernel, measured: a uprobe at the entry point of ``true``, run once.
    Returns ("build_id" | "address" | "none", a sentence saying what it means)."""
    true = shutil.which("true") or "/bin/true"
    try:
        from elftools.elf.elffile import ELFFile

        with open(true, "rb") as f:
            entry = ELFFile(f).header["e_entry"]
        offset = ElfCache().open(true).file_offset_of(entry)
        probe = Probe(spec=f"{true}:<entry point>", path=os.path.realpath(true), kind="uprobe", offset=offset)
        calls: list[RuntimeCallEvent] = []
        CallTracer([probe]).run([true], on_call=calls.append)
    except (OSError, ValueError, RuntimeGuardError) as exc:
        return "none", f"a uprobe could not be run: {exc}"
    stacks = [c.user_stack for c in calls if c.user_stack]
    if not stacks:
        return "none", f"a uprobe on {true} fired {len(calls)} times with no user stack"
    if stacks[0][0].named_by == "build_id":
        return "build_id", ("frames as build id + file offset: stacks are symbolized after the process "
                            "exited, from the files' build ids")
    return "address", ("frames as addresses only: symbolized through each process's mappings, read at first "
                       "sight (a process gone before then keeps unnamed frames)")


def _with_return(probe: Probe) -> Probe:
    import msgspec

    return msgspec.structs.replace(probe, returns=True)


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0
