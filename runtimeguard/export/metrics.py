"""Prometheus metrics: what a tracer or guard saw and what it cost.

``Metrics`` is a sink (``write(record)``, ``close()``) that counts the events
it is given, reads a tracer's counters at each scrape, and serves them over
HTTP with the official ``prometheus-client`` (extra ``runtimeguard[metrics]``)::

    metrics = Metrics(bpf_run_time=True)
    with Tracer() as tracer:
        metrics.watch(tracer)
        port = metrics.serve(9464)
        for ev in tracer:
            metrics.write(ev.record())

Each instance has a registry of its own (or the one it is given), never the
process-wide default one.

Metrics (every label value comes from a bounded set: the event table, the
policy's rule ids, the four actions, the sensors' programs; never pids, paths
or addresses):

``runtimeguard_events_total{event}`` (counter)
    Events given to ``write()``, by event name; every known name is present
    from the start, at 0. An audit-log line with ``repeated`` = N counts N + 1.
``runtimeguard_decisions_total{event, rule, action}`` (counter)
    The guard's decisions given to ``write()`` (``connect_denied``,
    ``exfil_blocked``, ``open_inode``, ``mirage_trap``, ``ptrace_denied``,
    ``protected_file_changed``, ``namespace_denied``), by the rule that made
    them (``network.deny[0]``; "" when the record names none) and their
    action (``blocked``, ``would_block``, ``killed``, ``observed``). A line
    with ``repeated`` = N counts N + 1.

Read from the watched tracer at each scrape (absent until ``watch()`` or
``bind()``):

``runtimeguard_delivered_total{event}`` (counter)
    Records decoded from the ring buffer, by event name.
``runtimeguard_lost_total{event}`` (counter)
    Records the ring buffer could not take (it was full), by event name; every
    event the tracer delivers is present, at 0 until one is lost.
``runtimeguard_malformed_total`` (counter)
    Records skipped as too short or of an unknown kind.
``runtimeguard_ring_buffer_size_bytes`` (gauge)
    The ring buffer's size.
``runtimeguard_ring_buffer_used_bytes`` (gauge)
    Bytes in the ring buffer not yet consumed, at the scrape.
``runtimeguard_ring_buffer_fill_ratio`` (gauge)
    used / size, 0 to 1: near 1, records are about to be lost.

Only with ``bpf_run_time=True`` (the kernel then times every BPF program on
the host; see ``Metrics``):

``runtimeguard_bpf_program_run_seconds_total{program}`` (counter)
    Time the kernel spent running the program (``rg_exec``), since BPF
    statistics were turned on.
``runtimeguard_bpf_program_runs_total{program}`` (counter)
    Times the kernel ran it, over the same span.

A scrape that cannot read the tracer (it closed, or failed) serves what the
last successful read gave.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Callable, Iterable, Iterator, Optional

from .._native import ffi, lib
from ..errors import BPFError, RuntimeGuardError, TracerStateError
from ..schema import BLOCK_EVENTS, EVENT_IDS, EventRecord

try:
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
except ImportError:  # the extra is not installed: Metrics() says so
    CollectorRegistry = None  # type: ignore[assignment,misc]

__all__ = ["Metrics"]

_MISSING = "metrics need the metrics extra: pip install 'runtimeguard[metrics]'"
_DECISIONS = frozenset(BLOCK_EVENTS)


class Metrics:
    """A sink that counts events for Prometheus, and reads a tracer's counters
    at each scrape.

    ``registry``: where the metrics are registered; by default a new
    ``CollectorRegistry`` of this instance's own, so instances never collide.
    Two instances on one given registry do (ValueError from prometheus-client).

    ``bpf_run_time``: also export each BPF program's run time and run count.
    The kernel measures them only while BPF statistics are on, and then for
    every BPF program on the host, not only runtimeguard's (two clock reads
    per run); they are turned on by ``watch()``/``bind()`` and off again by
    ``close()`` (the kernel keeps them on while anyone holds them on).

    The way to use it: ``write`` as a Tracer's or Guard's event callback (or
    in the loop that consumes events), ``watch(tracer)`` (or ``bind``) for the
    tracer's counters, ``serve(port)`` for the HTTP endpoint, ``close()`` at
    the end. ``write`` is safe from any thread, concurrently with scrapes.
    """

    def __init__(self, registry: Optional["CollectorRegistry"] = None, *, bpf_run_time: bool = False):
        if CollectorRegistry is None:
            raise RuntimeGuardError(_MISSING)
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=False)
        self.bpf_run_time = bpf_run_time
        self._lock = threading.Lock()
        self._events: dict[str, int] = dict.fromkeys(EVENT_IDS, 0)
        self._decisions: dict[tuple[str, str, str], int] = {}
        self._stats: Optional[Callable[[], Any]] = None
        self._program_stats: Optional[Callable[[], dict]] = None
        self._stat_events: frozenset[str] = frozenset()
        self._last_stats: Any = None
        self._last_programs: Optional[dict] = None
        self._stats_fd = -1
        self._server = None
        self._thread: Optional[threading.Thread] = None
        self._closed = False
        self._collector = _Collector(self)
        self.registry.register(self._collector)

    # ---- the sink ----

    def write(self, record: EventRecord) -> None:
        """Counts one event (an ``EventRecord``; a live ``Event`` is counted
        the same). Never blocks on I/O, never raises; ignored after close()."""
        if self._closed:
            return
        name = record.name
        # An audit-log line folds identical decisions: it stands for 1 + repeated of them.
        n = 1 + getattr(record, "repeated", 0)
        if name in _DECISIONS:
            policy = record.policy
            key = (name, policy.rule if policy is not None else "", record.action)
            with self._lock:
                self._events[name] = self._events.get(name, 0) + n
                self._decisions[key] = self._decisions.get(key, 0) + n
        else:
            with self._lock:
                self._events[name] = self._events.get(name, 0) + n

    def close(self) -> None:
        """Stops the HTTP server, turns BPF statistics off (if this instance
        turned them on), and unregisters the metrics. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            server, thread, self._server, self._thread = self._server, self._thread, None, None
            self._stats = self._program_stats = None
        try:
            if server is not None:
                server.shutdown()
                server.server_close()
                thread.join()
        finally:
            self._close_stats_fd()
            try:
                self.registry.unregister(self._collector)
            except KeyError:
                pass

    def __enter__(self) -> "Metrics":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- the tracer's counters ----

    def watch(self, tracer) -> "Metrics":
        """Reads ``tracer``'s counters (a ``Tracer``, or a ``CallTracer``'s
        ``.tracer``) at each scrape: its stats, and with ``bpf_run_time`` its
        programs' run time. A scrape never starts it; after it closes, its
        final counters are served. Replaces what was watched before."""
        def stats():
            # Tracer.stats() on a tracer not started yet would start it: loading
            # programs from the HTTP server's thread is not a scrape's business.
            if not tracer.running and getattr(tracer, "_final_stats", None) is None:
                raise TracerStateError("the tracer is not running")
            return tracer.stats()

        return self.bind(stats, tracer.program_stats, events=tracer.events)

    def bind(self, stats: Callable[[], Any], program_stats: Optional[Callable[[], dict]] = None, *,
             events: Optional[Iterable[str]] = None) -> "Metrics":
        """Reads counters from callables at each scrape, for sources other
        than a Tracer (``Guard.stats``, whose tracer the guard owns).

        ``stats``: returns a ``TracerStats`` (or a ``GuardStats``).
        ``program_stats``: returns {program name: (run time ns, runs)}, as
        ``Tracer.program_stats``; read only with ``bpf_run_time``.
        ``events``: the event names whose ``lost_total`` and
        ``delivered_total`` are shown even at 0 (default: every event name).

        With ``bpf_run_time`` and ``program_stats``, turns BPF statistics on:
        BPFError when the kernel refuses (before Linux 5.8, or without
        CAP_SYS_ADMIN)."""
        if self._closed:
            raise RuntimeGuardError("this Metrics is closed")
        if self.bpf_run_time and program_stats is not None and self._stats_fd < 0:
            err = ffi.new("char[]", 512)
            fd = lib.rg_enable_bpf_stats(err, 512)
            if fd < 0:
                raise BPFError(ffi.string(err).decode(errors="replace"), -fd)
            with self._lock:
                if self._closed:  # close() ran meanwhile: it would never close this one
                    os.close(fd)
                    raise RuntimeGuardError("this Metrics is closed")
                self._stats_fd = fd
        with self._lock:
            self._stats = stats
            self._program_stats = program_stats if self.bpf_run_time else None
            # A loss notice is made from the counters, never itself lost: no series for it.
            self._stat_events = frozenset(EVENT_IDS if events is None else events) - {"lost"}
            self._last_stats = None
            self._last_programs = None
        return self

    def _close_stats_fd(self) -> None:
        with self._lock:
            fd, self._stats_fd = self._stats_fd, -1
        if fd >= 0:
            os.close(fd)

    def _read(self):
        """(stats, program stats) for a scrape: fresh where the source
        answers, else what it last gave (None: never)."""
        stats_source, program_source = self._stats, self._program_stats
        if stats_source is not None:
            try:
                self._last_stats = stats_source()
            except Exception:
                pass  # closed or failing: a scrape must still answer, with the last values
        if program_source is not None:
            try:
                self._last_programs = program_source()
            except Exception:
                pass
        return self._last_stats, self._last_programs

    # ---- the endpoint ----

    def serve(self, port: int, addr: str = "127.0.0.1") -> int:
        """Serves the metrics at ``http://addr:port/metrics`` (any path, in
        fact) from a daemon thread; returns the port bound (``port`` 0: a free
        one). ``addr`` "0.0.0.0" or "::" listens on every interface.
        RuntimeGuardError when already serving, closed, or the port is taken."""
        with self._lock:
            if self._closed:
                raise RuntimeGuardError("this Metrics is closed")
            if self._server is not None:
                raise RuntimeGuardError(f"already serving metrics on port {self._server.server_port}")
            try:
                started = start_http_server(port, addr=addr, registry=self.registry)
            except OSError as e:
                raise RuntimeGuardError(f"cannot serve metrics on {addr} port {port}: "
                                        f"{e.strerror or e}") from None
            if not isinstance(started, tuple):
                # Before 0.20 the server could not be stopped: no way to honour close().
                raise RuntimeGuardError("metrics need prometheus-client 0.20 or later: "
                                        "pip install 'runtimeguard[metrics]'")
            self._server, self._thread = started
            return self._server.server_port

    @property
    def port(self) -> Optional[int]:
        """The port being served, or None."""
        server = self._server
        return server.server_port if server is not None else None


class _Collector:
    """Builds every family at each scrape from the counts and the source."""

    def __init__(self, metrics: Metrics):
        self._metrics = metrics

    def describe(self) -> Iterator:
        # Names only: lets a registry refuse a second Metrics without reading a tracer.
        yield from self._families(None, None, {}, {}, frozenset(), describe=True)

    def collect(self) -> Iterator:
        m = self._metrics
        with m._lock:
            events, decisions, stat_events = dict(m._events), dict(m._decisions), m._stat_events
        stats, programs = m._read() if m._stats is not None or m._program_stats is not None else (None, None)
        yield from self._families(stats, programs, events, decisions, stat_events)

    def _families(self, stats, programs, events, decisions, stat_events, describe: bool = False) -> Iterator:
        family = CounterMetricFamily("runtimeguard_events", "Events counted, by event name.", labels=["event"])
        for name, n in events.items():
            family.add_metric([name], n)
        yield family
        family = CounterMetricFamily("runtimeguard_decisions",
                                     "Guard decisions, by event name, the rule that made them and their action.",
                                     labels=["event", "rule", "action"])
        for key, n in decisions.items():
            family.add_metric(list(key), n)
        yield family
        if describe or stats is not None:
            names = sorted(stat_events | set(stats.delivered) | set(stats.lost)) if stats is not None else []
            delivered = CounterMetricFamily("runtimeguard_delivered", "Records decoded from the ring buffer.",
                                            labels=["event"])
            lost = CounterMetricFamily("runtimeguard_lost", "Records the ring buffer could not take (full).",
                                       labels=["event"])
            for name in names:
                delivered.add_metric([name], stats.delivered.get(name, 0))
                lost.add_metric([name], stats.lost.get(name, 0))
            yield delivered
            yield lost
            yield CounterMetricFamily("runtimeguard_malformed",
                                      "Ring buffer records skipped as too short or of an unknown kind.",
                                      value=None if describe else stats.malformed)
            yield GaugeMetricFamily("runtimeguard_ring_buffer_size_bytes", "The ring buffer's size.",
                                    value=None if describe else stats.ring_buffer_size)
            yield GaugeMetricFamily("runtimeguard_ring_buffer_used_bytes",
                                    "Bytes in the ring buffer not consumed yet.",
                                    value=None if describe else stats.ring_buffer_used)
            yield GaugeMetricFamily("runtimeguard_ring_buffer_fill_ratio",
                                    "Ring buffer used / size, 0 to 1; near 1, records are about to be lost.",
                                    value=None if describe else stats.ring_buffer_fill)
        if describe or programs is not None:
            seconds = CounterMetricFamily("runtimeguard_bpf_program_run_seconds",
                                          "Time the kernel spent running the BPF program, while BPF statistics "
                                          "were on.", labels=["program"])
            runs = CounterMetricFamily("runtimeguard_bpf_program_runs",
                                       "Times the kernel ran the BPF program, while BPF statistics were on.",
                                       labels=["program"])
            for name, (run_ns, count) in sorted((programs or {}).items()):
                seconds.add_metric([name], run_ns / 1e9)
                runs.add_metric([name], count)
            yield seconds
            yield runs
