"""The ``runtimeguard`` command: trace, watch, calls, schema, doctor, demo, run, check-policy."""

from __future__ import annotations

import argparse
import collections
import errno
import json
import logging
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from typing import Callable, Iterable, Optional, TextIO

import msgspec

from . import environment
from .errors import RuntimeGuardError
from .schema import EVENT_IDS, PTRACE_REQUESTS, TRUNCATED, Event, json_encoder, json_schema
from .audit import DEFAULT_MAX_BYTES as DEFAULT_AUDIT_MAX_BYTES
from .tracer import (ALL_EVENTS, DEFAULT_EVENTS, DEFAULT_MAX_LATENCY_MS, DEFAULT_RING_BUFFER_SIZE, MAX_LATENCY_MS,
                     MIN_RING_BUFFER_SIZE, Tracer)

EXIT_INTERRUPTED = 130
# A command that runs another (run, calls -- CMD) and is stopped by SIGTERM did
# not see it finish: the shell's status for "ended by SIGTERM", never success.
EXIT_TERMINATED = 128 + signal.SIGTERM
# sysexits.h EX_NOPERM: doctor without the privileges its probes need reported
# only part of what it checks.
EXIT_INCOMPLETE = 77
_DRAIN_S = 0.3
# The kernel's largest pid_max (PID_MAX_LIMIT on 64-bit).
_PID_MAX_LIMIT = 4194304


class _Terminated(Exception):
    """SIGTERM, turned into an exception so ``with Tracer`` still detaches."""


# ---- the table ----

_COLUMNS = (("TIME", 12), ("EVENT", 14), ("PID", 7), ("COMM", 15))


def _errno_name(result: int) -> str:
    return errno.errorcode.get(-result, f"errno {-result}")


def _outcome(result: int, ok: str = "ok") -> str:
    return ok if result >= 0 else _errno_name(result)


def details(ev: Event) -> str:
    """The DETAILS column: what the event did, in one line."""
    d, tc = ev.data, ev.target_context
    name = ev.name
    if name == "process_exec":
        # argv cut at its limit ends in the marker; so does an executable shown for it.
        text = " ".join(d.argv) + (TRUNCATED if d.argv_truncated else "") if d.argv else (
            d.executable + (TRUNCATED if d.executable_truncated else ""))
        if d.fileless:
            # Nothing on disk ran: what did is named (a memfd, a deleted file).
            text += f" [fileless: {d.resolved_executable}]"
        return text if d.return_code >= 0 else f"{text} -> {_errno_name(d.return_code)}"
    if name == "process_fork":
        return f"child {d.child_pid}"
    if name == "process_exit":
        if d.signal is not None:
            sig = signal.Signals(d.signal).name if d.signal in signal.Signals._value2member_map_ else d.signal
            return f"killed by {sig}" + (" (core dumped)" if d.core_dumped else "")
        return f"exit {d.exit_code}"
    if name == "file_open":
        path = tc.formatted if tc is not None else (d.resolved_path or d.path) + (TRUNCATED if d.path_truncated else "")
        return f"{path} -> {_outcome(d.result, f'fd {d.result}')}"
    if name in ("net_connect", "net_sendmsg"):
        where = tc.formatted if tc is not None else (
            f"[{d.address}]:{d.port}" if d.family == "ipv6" else f"{d.address}:{d.port}")
        ok = "ok" if name == "net_connect" else f"{d.result} bytes"
        return f"{d.protocol or d.family} {where} -> {_outcome(d.result, ok)}"
    if name == "ptrace":
        target = tc.formatted if tc is not None else f"pid {d.target_pid}"
        return f"{PTRACE_REQUESTS.get(d.request, f'request {d.request}')} {target} -> {_outcome(d.result)}"
    if name == "process_memory":
        target = tc.formatted if tc is not None else f"pid {d.target_pid}"
        return f"{d.method} {target} -> {_outcome(d.result)}"
    if name == "lost":
        kinds = ", ".join(f"{k} {n}" for k, n in d.by_kind.items())
        return f"{d.count} records lost" + (f" ({kinds})" if kinds else "")
    return tc.formatted if tc is not None else ""


# Every C0 and C1 control character (and DEL) as a visible escape: argv and
# paths come from the traced processes, and must not drive the terminal.
_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7f, 0xa0))}
_ESCAPES.update({ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t", ord("\\"): "\\\\"})


def escape(text: str) -> str:
    """text with control characters (and backslashes) escaped, for a terminal."""
    return text.translate(_ESCAPES)


def fit(text: str, room: int) -> str:
    """text cut to room characters: in the middle, so the start and the
    outcome (" -> ENOENT") stay visible."""
    if len(text) <= room:
        return text
    head, sep, outcome = text.rpartition(" -> ")
    tail = sep + outcome if sep and len(sep + outcome) <= room // 2 else ""
    body = head if tail else text
    keep = room - len(tail) - 1
    left = (keep + 1) // 2
    return body[:left] + "…" + body[len(body) - (keep - left):] + tail


class Table:
    columns: tuple[tuple[str, int], ...] = _COLUMNS
    rest = "DETAILS"

    def __init__(self, out: TextIO):
        self.out = out
        self.width = shutil.get_terminal_size(fallback=(160, 24)).columns

    def _line(self, cells: Iterable[str], rest: str) -> str:
        fixed = " ".join(escape(c)[:w].ljust(w) for c, (_, w) in zip(cells, self.columns))
        room = max(self.width - len(fixed) - 1, 10)
        return f"{fixed} {fit(escape(rest), room)}"

    def header(self) -> None:
        self.out.write(self._line((h for h, _ in self.columns), self.rest) + "\n")

    def row(self, ev: Event) -> None:
        t = time.localtime(ev.timestamp // 1_000_000_000)
        stamp = time.strftime("%H:%M:%S", t) + f".{ev.timestamp // 1_000_000 % 1000:03d}"
        comm = ev.workload.process.name if ev.workload is not None else ""
        action = "" if ev.action == "observed" else f"[{ev.action}] "
        self.out.write(self._line((stamp, ev.name, str(ev.pid), comm), action + details(ev)) + "\n")


# ---- running a tracer until told to stop ----

def _on_sigterm(signum, frame):
    raise _Terminated()


def _run(body: Callable[[], int], terminated_status: int = 0) -> int:
    """Runs a command body: errors as one line, Ctrl-C, SIGTERM (then exiting
    with terminated_status) and closed pipes quietly."""
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return body()
    except RuntimeGuardError as e:
        print(f"runtimeguard: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except _Terminated:
        return terminated_status
    except BrokenPipeError:
        # Point stdout at /dev/null so the interpreter's final flush cannot fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)


class _Parser(argparse.ArgumentParser):
    """Usage errors in the form of every other error: one line, "runtimeguard:"
    once, the command and option at fault, and where the usage is."""

    def error(self, message: str):
        command = self.prog.partition(" ")[2]
        # argparse says "argument --pid: invalid ..."; the option alone reads better after the command.
        option, _, reason = message.partition(": ") if message.startswith("argument ") else ("", "", message)
        at = " ".join(filter(None, (command, option.removeprefix("argument "))))
        self.exit(2, f"runtimeguard: {at + ': ' if at else ''}{reason} (see {self.prog} --help)\n")


class _LogFormatter(logging.Formatter):
    """Library log lines (a detection rule that raised, an exporter retrying)
    on stderr like the command's own: "runtimeguard:" once, then who said it
    when that is not runtimeguard itself."""

    def format(self, record: logging.LogRecord) -> str:
        package = record.name.partition(".")[0]
        who = "" if package in ("runtimeguard", "root") else f"{package}: "
        return f"runtimeguard: {who}{record.getMessage()}"


def _event_list(value: str) -> tuple[str, ...]:
    if value == "all":
        return ALL_EVENTS
    names = tuple(n.strip() for n in value.split(",") if n.strip())
    unknown = [n for n in names if n not in ALL_EVENTS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown event(s) {', '.join(unknown) or '(none given)'}; known: {', '.join(ALL_EVENTS)}, all")
    return names


def _size(value: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    try:
        if value[-1:].lower() in units:
            size = int(value[:-1]) * units[value[-1].lower()]
        else:
            size = int(value)
    except ValueError:
        size = 0
    if size <= 0:
        raise argparse.ArgumentTypeError(f"not a size: {value!r} (a positive number of bytes, or with K/M/G)")
    return size


def _ring_buffer_size(value: str) -> int:
    size = _size(value)
    if size < MIN_RING_BUFFER_SIZE or size & (size - 1):
        raise argparse.ArgumentTypeError(f"not a power of two of at least {MIN_RING_BUFFER_SIZE}: {value!r}")
    return size


def _otlp_endpoint(value: str) -> str:
    from .export.otlp import logs_url

    try:
        logs_url(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an http:// or https:// URL: {value!r} "
                                         "(http://collector:4318, or a full /v1/logs URL)") from None
    return value


def _integer(what: str, low: int, high: Optional[int], bounds: str) -> Callable[[str], int]:
    """An argparse type: an integer from low to high (None: no bound), else
    "not a <what>: <value> (<bounds>)"."""
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            number = None
        if number is None or number < low or (high is not None and number > high):
            raise argparse.ArgumentTypeError(f"not a {what}: {value!r} ({bounds})")
        return number
    return parse


_latency_ms = _integer("latency", 1, MAX_LATENCY_MS, f"1 to {MAX_LATENCY_MS} ms")
_pid = _integer("process id", 1, _PID_MAX_LIMIT, f"1 to {_PID_MAX_LIMIT}")
_port = _integer("port", 0, 65535, "0 to 65535; 0: any free port")
_count = _integer("count", 0, None, "0 or more")


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise argparse.ArgumentTypeError(f"not a duration: {value!r} (seconds, more than 0)")
    return seconds


def _check_runnable(program: str) -> None:
    """Refuses a command that cannot be started before anything is loaded for it."""
    if shutil.which(program) is not None:
        return
    if os.sep not in program:
        why = "not found in PATH"
    elif not os.path.exists(program):
        why = "no such file"
    elif os.path.isdir(program):
        why = "a directory"
    else:
        why = "not executable"
    raise RuntimeGuardError(f"cannot run {program!r}: {why}")


def _tracer(args: argparse.Namespace, events: Iterable[str], **filters) -> Tracer:
    try:
        return Tracer(events, ring_buffer_size=args.ring_buffer_size, max_latency_ms=args.max_latency_ms,
                      **filters)
    except ValueError as e:
        raise RuntimeGuardError(str(e)) from None


# ---- exports ----

def _header(value: str) -> tuple[str, str]:
    name, sep, text = value.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"not a header: {value!r} (NAME=VALUE)")
    return name.strip(), text.strip()


class _Exports:
    """The exporters a command was asked for (--otlp-endpoint, --metrics-port):
    every event goes to each; metrics read the counters on each scrape."""

    def __init__(self, args: argparse.Namespace):
        self.sinks: list = []
        self.metrics = None
        try:
            if getattr(args, "otlp_endpoint", None):
                from .export.otlp import OtlpLogs

                self.sinks.append(OtlpLogs(args.otlp_endpoint, headers=dict(args.otlp_header or ()) or None))
            if getattr(args, "metrics_port", None) is not None:
                from .export.metrics import Metrics

                self.metrics = Metrics(bpf_run_time=not args.no_bpf_run_time)
                self.sinks.append(self.metrics)
        except ValueError as e:
            self.close()
            raise RuntimeGuardError(str(e)) from None
        except BaseException:
            self.close()
            raise

    def serve(self, args: argparse.Namespace, stats, program_stats=None) -> None:
        """Binds the metrics to their counters and starts serving them."""
        if self.metrics is None:
            return
        self.metrics.bind(stats, program_stats)
        port = self.metrics.serve(args.metrics_port, args.metrics_address)
        print(f"runtimeguard: metrics on http://{args.metrics_address}:{port}/metrics", file=sys.stderr, flush=True)

    def write(self, events: Iterable[Event]) -> None:
        if not self.sinks:
            return
        for ev in events:
            rec = ev.record()
            for sink in self.sinks:
                sink.write(rec)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()
        self.sinks = []


def _poll_until(tracer: Tracer, deadline: Optional[float], emit: Callable[[list[Event]], None]) -> None:
    """Hands each poll's events to emit until the deadline (None: until
    interrupted), waking at least once a second."""
    while deadline is None or time.monotonic() < deadline:
        wait = 1.0 if deadline is None else max(0.0, min(1.0, deadline - time.monotonic()))
        emit(tracer.poll(wait))


def cmd_trace(args: argparse.Namespace) -> int:
    as_json = args.format == "json" or (args.format is None and not sys.stdout.isatty())
    tracer = _tracer(args, args.events, pids=args.pid, comms=args.comm, cgroups=args.cgroup)
    deadline = None if args.duration is None else time.monotonic() + args.duration
    exports = _Exports(args)
    try:
        with tracer:
            exports.serve(args, tracer.stats, tracer.program_stats)
            if as_json:
                out = sys.stdout.buffer

                def show(events):
                    out.write(b"".join(json_encoder.encode(ev.record()) + b"\n" for ev in events))
                    out.flush()
            else:
                table = Table(sys.stdout)
                print(f"runtimeguard: tracing {', '.join(args.events)} (Ctrl-C to stop)", file=sys.stderr)
                table.header()

                def show(events):
                    for ev in events:
                        table.row(ev)
                    sys.stdout.flush()

            def emit(events):
                show(events)
                exports.write(events)

            try:
                _poll_until(tracer, deadline, emit)
            finally:
                if not as_json:
                    s = tracer.stats()
                    print(f"runtimeguard: {s.returned} events delivered, {s.lost_total} lost", file=sys.stderr)
    finally:
        exports.close()
    return 0


_FILE_OPEN = EVENT_IDS["file_open"]
_CATEGORIES = {"process_exec": "process", "process_fork": "process", "process_exit": "process",
               "file_open": "file", "net_connect": "network", "net_sendmsg": "network", "ptrace": "memory",
               "process_memory": "memory", "lost": "notice", "mode_changed": "notice", "detection": "detection"}


class WatchTable(Table):
    """``watch``'s table: each event with its process's context; a
    detection marked ``!``, its ATT&CK technique id as its category and its
    rule as its event. The last column says what happened: a detection's
    technique, tactic, severity and summary, an exec's arguments, a
    connect's source and destination."""

    columns = (("", 1), ("TIME", 12), ("CATEGORY", 9), ("HOST", 10), ("EVENT", 23), ("PID", 7), ("BINARY", 12),
               ("PARENT", 12), ("IDENTITY", 14), ("CONTAINER", 12))
    rest = "ARGS / NETWORK / DETECTION"

    def __init__(self, out: TextIO, host: str):
        super().__init__(out)
        self.host = host

    def row(self, ev) -> None:
        t = time.localtime(ev.timestamp // 1_000_000_000)
        stamp = time.strftime("%H:%M:%S", t) + f".{ev.timestamp // 1_000_000 % 1000:03d}"
        wl = ev.workload
        p = wl.process if wl is not None else None
        binary = (os.path.basename(p.executable) if p.executable else p.name) if p is not None else ""
        parent = (p.parent.name or os.path.basename(p.parent.executable or "")) if p and p.parent else ""
        identity = ",".join(getattr(p, "identities", None) or ()) if p is not None else ""
        c = wl.container if wl is not None else None
        container = (c.name or c.id[:12]) if c is not None else ""
        name = ev.name
        if name == "detection":
            # The technique id in a column of its own: it survives a narrow terminal.
            threat = ev.threat
            technique = f"{threat.mitre_technique} ({threat.mitre_tactic}) " if threat.mitre_technique else ""
            text = f"{technique}[{threat.severity}] {ev.data.summary}"
            cells = ("!", stamp, threat.mitre_technique_id or "detection", self.host, ev.data.rule, str(ev.pid),
                     binary, parent, identity, container)
        else:
            text = details(ev)
            if name in ("net_connect", "net_sendmsg") and ev.data.local_address is not None:
                d = ev.data
                local = f"[{d.local_address}]:{d.local_port}" if d.family == "ipv6" else \
                    f"{d.local_address}:{d.local_port}"
                text = f"{local} -> {text}"
            if ev.action != "observed":
                text = f"[{ev.action}] {text}"
            cells = (" ", stamp, _CATEGORIES.get(name, "guard"), self.host, name, str(ev.pid), binary, parent,
                     identity, container)
        self.out.write(self._line(cells, text) + "\n")


def cmd_watch(args: argparse.Namespace) -> int:
    from .detections import Detector

    detector = Detector(args.rules)
    options = detector.tracer_options(pids=args.pid, comms=args.comm, cgroups=args.cgroup)
    events = options.pop("events")
    tracer = _tracer(args, events, **options)
    deadline = None if args.duration is None else time.monotonic() + args.duration
    # The input is sound; the banner below is only true if the programs can load.
    environment.check_privileges()
    if not args.json:
        print(f"runtimeguard: watching with {len(detector.rules)} detection rules ({', '.join(events)}; "
              "Ctrl-C to stop)", file=sys.stderr)
        if "file_open" in events and "watch_files" not in options and not (args.pid or args.comm or args.cgroup):
            print("runtimeguard: every file open on the host is traced (no --pid, --comm or --cgroup): "
                  "expect load", file=sys.stderr)
    # A Tracer without watch_files hands the rules every open; only what one
    # with it would deliver is shown, so the table is the same either way.
    filtered = "file_open" in events and "watch_files" not in options

    def shown(ev) -> bool:
        return not filtered or ev.id != _FILE_OPEN or detector.watches(ev.data.resolved_path or ev.data.path)

    exports = _Exports(args)
    try:
        with tracer:
            exports.serve(args, tracer.stats, tracer.program_stats)
            if args.json:
                out = sys.stdout.buffer

                def emit(events):
                    kept = [ev for ev in detector.run(events) if shown(ev)]
                    if kept:
                        out.write(b"".join(json_encoder.encode(ev.record()) + b"\n" for ev in kept))
                        out.flush()
                        exports.write(kept)
            else:
                table = WatchTable(sys.stdout, socket.gethostname())
                table.header()

                def emit(events):
                    kept = [ev for ev in detector.run(events) if shown(ev)]
                    for ev in kept:
                        table.row(ev)
                    sys.stdout.flush()
                    exports.write(kept)
            try:
                _poll_until(tracer, deadline, emit)
            finally:
                if not args.json:
                    s, d = tracer.stats(), detector.stats()
                    errors = sum(d.errors.values())
                    print(f"runtimeguard: {s.returned} events, {sum(d.detections.values())} detections, "
                          f"{s.lost_total} lost" + (f", {errors} rule errors" if errors else ""), file=sys.stderr)
    finally:
        exports.close()
    return 0


def _call_line(call) -> str:
    t = time.localtime(call.timestamp // 1_000_000_000)
    stamp = time.strftime("%H:%M:%S", t) + f".{call.timestamp // 1_000_000 % 1000:03d}"
    what = call.symbol + (" returned" if call.phase == "return" else "")
    if call.phase == "return" and call.result is not None:
        what += f" {call.result}"
    if call.usdt_strings:
        what += " " + " ".join(call.usdt_strings)
    if call.plaintext is not None:
        shown = call.plaintext[:120]
        more = "…" if call.plaintext_truncated or len(call.plaintext) > len(shown) else ""
        what += f" [{call.plaintext_size} bytes] {shown!r}{more}"
    return f"{stamp} {call.pid:>7} {call.comm:<15} {what}"


def cmd_calls(args: argparse.Namespace) -> int:
    from .calls import CallTracer

    if not args.probe and not args.tls:
        raise RuntimeGuardError("calls: give at least one --probe BINARY:SYMBOL, or --tls")
    if args.plaintext and not args.tls and not any(p.rsplit(":", 1)[-1] in ("SSL_write", "SSL_write_ex", "SSL_read",
                                                                            "SSL_read_ex") for p in args.probe):
        raise RuntimeGuardError("calls: --plaintext copies TLS buffers: probe libssl's SSL_write/SSL_read "
                                "(or give --tls)")
    if args.argv:
        _check_runnable(args.argv[0])
    try:
        tracer = CallTracer(args.probe, returns=args.returns, pids=args.pid, cgroups=args.cgroup,
                            records=not args.no_records, rate=args.rate, plaintext=args.plaintext, tls=args.tls,
                            redact_env=args.redact_env, redact=args.redact)
    except ValueError as e:
        raise RuntimeGuardError(str(e)) from None
    out = sys.stdout.buffer
    # The probes are sound; the banner below is only true if they can attach.
    environment.check_privileges()

    def show(call) -> None:
        if args.json:
            out.write(msgspec.json.encode({"type": "call", **msgspec.to_builtins(call)}) + b"\n")
            out.flush()
        else:
            print(_call_line(call), flush=True)

    if not args.json:
        print(f"runtimeguard: probing {', '.join(p.spec for p in tracer.probes)}", file=sys.stderr)
    status = 0
    if args.argv:
        status = tracer.run(args.argv, on_call=show)
    else:
        deadline = None if args.duration is None else time.monotonic() + args.duration
        with tracer:
            try:
                while deadline is None or time.monotonic() < deadline:
                    wait = 1.0 if deadline is None else max(0.0, min(1.0, deadline - time.monotonic()))
                    for call in tracer.poll(wait):
                        show(call)
            except KeyboardInterrupt:
                pass
    paths, summaries, statistics = tracer.call_paths(), tracer.summaries(), tracer.statistics()
    if args.json:
        for kind, items in (("call_path", paths), ("summary", summaries), ("statistics", [statistics])):
            for item in items:
                out.write(msgspec.json.encode({"type": kind, **msgspec.to_builtins(item)}) + b"\n")
        out.flush()
        return status
    print(f"\ncall paths ({len(paths)}):", file=sys.stderr)
    for p in paths:
        print(f"  {p.count:>8}  {' -> '.join(p.symbols)}{'  (return)' if p.phase == 'return' else ''}  "
              f"{p.path_hash[:19]}", file=sys.stderr)
    for sm in summaries:
        print(f"{sm.container_id or 'host'}: {sm.total_events} calls, {sm.call_paths} paths, "
              f"{sm.dropped_events} dropped, runtimes {', '.join(sm.detected_runtimes) or '-'}, "
              f"combined {sm.combined_hash[:19]}", file=sys.stderr)
    cpu = "n/a" if statistics.cpu_overhead_percent is None else f"{statistics.cpu_overhead_percent:.3f} %"
    print(f"{statistics.events_per_second:.0f} calls/s, probes' CPU {cpu}, "
          f"{statistics.kernel_memory_bytes // 1024} KiB of maps", file=sys.stderr)
    return status


def cmd_schema(args: argparse.Namespace) -> int:
    print(json.dumps(json_schema(), indent=2))
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from .calls.tracer import user_stack_mode
    from .capabilities import Feature, report

    caps = report()
    if caps.complete:
        mode, why = user_stack_mode()
        stacks = Feature("uprobe_user_stacks", mode != "none", f"{mode}: {why}")
    else:
        # Measured by running a uprobe: ruled out with uprobes, else as unprobed as they are.
        uprobe = caps.feature("uprobe")
        if uprobe is not None and uprobe.available is False:
            stacks = Feature("uprobe_user_stacks", False, uprobe.detail)
        else:
            stacks = Feature("uprobe_user_stacks", None, "not probed: measured by running a uprobe (run as root)")
    caps = msgspec.structs.replace(caps, features=caps.features + [stacks])
    if args.json:
        print(json.dumps(msgspec.to_builtins(caps), indent=2))
    else:
        print(f"kernel {caps.kernel}\n\nfeatures:")
        width = max(len(f.name) for f in caps.features)
        for f in caps.features:
            status = {True: "ok", False: "NO", None: "?"}[f.available]
            print(f"  {status:<3} {f.name:<{width}}  {f.detail}")
        if caps.complete:
            print("\nenforcement:")
            for area, how in caps.enforcement.items():
                print(f"  {area + ':':<16}{how}")
            print("\ngaps:" if caps.gaps else "\ngaps: none known")
            for gap in caps.gaps:
                print(f"  - {gap}")
        else:
            print("\nenforcement and gaps: not determined (they follow from the probes marked ?)")
    if not caps.complete:
        unprobed = sum(f.available is None for f in caps.features)
        print(f"runtimeguard: incomplete report: {unprobed} features were not probed (that needs privileges "
              "this process lacks); run doctor as root for the rest", file=sys.stderr)
        # What any user can read may already rule the basics out; if not, only root can tell.
        ruled_out = any(f.available is False for f in caps.features if f.name in ("tracepoint", "ring_buffer", "btf"))
        return 1 if ruled_out else EXIT_INCOMPLETE
    return 0 if caps.available("tracepoint") and caps.available("ring_buffer") else 1


def _in_tree(ev: Event, root: int) -> bool:
    if ev.pid == root:
        return True
    wl = ev.workload
    return wl is not None and any(a.pid == root for a in wl.process.ancestors)


def cmd_demo(args: argparse.Namespace) -> int:
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_demo_workload.py")
    counts: collections.Counter = collections.Counter()
    hidden_startup = 0
    table = Table(sys.stdout)
    with _tracer(args, ALL_EVENTS) as tracer:
        print(f"runtimeguard: tracing the host for about {args.seconds:g} s while a demo workload runs; "
              "showing the workload's process tree", file=sys.stderr)
        table.header()
        workload = subprocess.Popen([sys.executable, script, str(args.seconds)], stdout=subprocess.DEVNULL)
        try:
            started = False
            stop_at = None
            hard_stop = time.monotonic() + args.seconds + 10
            while stop_at is None or time.monotonic() < stop_at:
                for ev in tracer.poll(0.1):
                    if ev.name != "lost" and not _in_tree(ev, workload.pid):
                        continue
                    counts[ev.name] += 1
                    # The interpreter's start-up file opens (its own modules) come
                    # before the workload's first fork; they are noise here.
                    if ev.pid == workload.pid and ev.name == "process_fork":
                        started = True
                    if ev.name == "file_open" and ev.pid == workload.pid and not started:
                        hidden_startup += 1
                        continue
                    table.row(ev)
                sys.stdout.flush()
                if stop_at is None and workload.poll() is not None:
                    stop_at = time.monotonic() + _DRAIN_S
                if time.monotonic() > hard_stop:
                    raise RuntimeGuardError(f"the demo workload (pid {workload.pid}) did not finish")
            lost = tracer.stats().lost_total
        finally:
            if workload.poll() is None:
                workload.kill()
            workload.wait()
    summary = ", ".join(f"{name} {n}" for name, n in sorted(counts.items())) or "none"
    print(f"\n{sum(counts.values())} events from the workload: {summary}; {lost} lost"
          + (f" ({hidden_startup} interpreter start-up file opens not shown)" if hidden_startup else ""))
    if workload.returncode != 0:
        raise RuntimeGuardError(f"the demo workload exited with status {workload.returncode}")
    return 0


def cmd_check_policy(args: argparse.Namespace) -> int:
    from .policy import check_policy

    policy = check_policy(args.file)
    rules = len(policy.network_rules())
    print(f"{args.file}: ok ({policy.mode} mode, {rules} network rules, "
          f"{len(policy.protected_paths())} protected paths, {len(policy.mirage.decoys)} decoys)")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .audit import NotificationTracker
    from .guard import Guard, choose_backend, describe_backend, format_decision
    from .policy import Policy

    if not args.argv:
        raise RuntimeGuardError("run: no command given (runtimeguard run --policy FILE -- CMD ARGS...)")
    policy = Policy.load(args.policy)
    _check_runnable(args.argv[0])
    notices = NotificationTracker()

    def show(ev: Event) -> None:
        target = ev.target_context.formatted if ev.target_context is not None else ""
        if notices.should_notify(ev.policy.rule if ev.policy else "", f"{ev.name} {target}"):
            print(f"runtimeguard: {format_decision(ev)}", file=sys.stderr, flush=True)

    if args.mode is not None:
        policy = policy.with_mode(args.mode)
    exports = _Exports(args)
    step_summary = os.environ.get("GITHUB_STEP_SUMMARY") if not args.no_step_summary else None
    summary = None
    if args.summary or step_summary:
        from .export.summary import RunSummary

        summary = RunSummary()
        exports.sinks.append(summary)
    # Observed connects and sends name the destinations a summary lists and
    # the exporters count.
    observe = ("net_connect", "net_sendmsg") if exports.sinks else ()
    audit = dict(audit_max_bytes=args.audit_max_bytes, audit_backups=args.audit_backups,
                 audit_rotate_every_s=args.audit_rotate_every, audit_compress=args.audit_compress)
    try:
        g = Guard(policy, audit_log=args.audit_log, on_event=show, backend=args.backend, sinks=exports.sinks,
                  observe=observe, **audit)
        # The same (cached) probes the guard's start() consults, so this line names what it will use.
        how = describe_backend(choose_backend(args.backend))
        print(f"runtimeguard: {policy.mode} mode; egress by cgroup hooks (EPERM); {how}", file=sys.stderr, flush=True)
        # Switching mode on the running guard: SIGUSR1 enforces, SIGUSR2 audits.
        signal.signal(signal.SIGUSR1, lambda *_: g.request_mode("enforce"))
        signal.signal(signal.SIGUSR2, lambda *_: g.request_mode("audit"))
        started = time.time()
        exit_status = None
        try:
            exports.serve(args, g.stats, g.program_stats)
            exit_status = g.run(args.argv, user=args.user).exit_status
            return exit_status
        finally:
            if summary is not None:
                report = dict(argv=args.argv, policy_name=policy.name, mode=g.mode, exit_status=exit_status,
                              started=started, ended=time.time(), stats=g.final_stats())
                # The command's status stands whatever happens to its report.
                for where, write in ((args.summary, summary.write_file),
                                     (step_summary, lambda _, **kw: summary.append_github_step_summary(**kw))):
                    if not where:
                        continue
                    try:
                        write(where, **report)
                    except OSError as e:
                        print(f"runtimeguard: cannot write the summary to {where}: {e.strerror or e}",
                              file=sys.stderr)
                    else:
                        if where == args.summary:
                            print(f"runtimeguard: summary in {where}", file=sys.stderr)
    finally:
        exports.close()


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="runtimeguard", description="See and control what processes do, via eBPF.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def tracer_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--ring-buffer-size", type=_ring_buffer_size, default=DEFAULT_RING_BUFFER_SIZE, metavar="BYTES",
                       help="power of two (K/M/G suffixes allowed); default %(default)s")
        p.add_argument("--max-latency-ms", type=_latency_ms, default=DEFAULT_MAX_LATENCY_MS, metavar="MS",
                       help="longest an event waits unread in the kernel; default %(default)s")

    def export_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--otlp-endpoint", type=_otlp_endpoint, metavar="URL",
                       help="send every event as an OpenTelemetry log record over OTLP/HTTP "
                            "(http://collector:4318; extra runtimeguard[otlp])")
        p.add_argument("--otlp-header", type=_header, action="append", metavar="NAME=VALUE",
                       help="an HTTP header for the OTLP endpoint (authentication)")
        p.add_argument("--metrics-port", type=_port, metavar="PORT",
                       help="serve Prometheus metrics on PORT (0: any free port; extra runtimeguard[metrics])")
        p.add_argument("--metrics-address", default="127.0.0.1", metavar="ADDR",
                       help="the address metrics are served on; default %(default)s")
        p.add_argument("--no-bpf-run-time", action="store_true",
                       help="no per-program BPF run time in the metrics (it turns on the kernel's BPF statistics, "
                            "which every BPF program on the host then pays for)")

    trace = sub.add_parser("trace", help="stream live events as a table or NDJSON")
    trace.add_argument("--events", type=_event_list, default=DEFAULT_EVENTS, metavar="E1,E2|all",
                       help=f"default: {','.join(DEFAULT_EVENTS)}")
    trace.add_argument("--pid", type=_pid, action="extend", nargs="+", default=[], metavar="N")
    trace.add_argument("--comm", action="extend", nargs="+", default=[], metavar="NAME")
    trace.add_argument("--cgroup", action="extend", nargs="+", default=[], metavar="PATH",
                       help="a cgroup v2 path (relative to the hierarchy) or id; covers its subtree")
    trace.add_argument("--format", choices=("table", "json"),
                       help="default: table on a terminal, NDJSON otherwise")
    trace.add_argument("--duration", type=_seconds, metavar="S", help="stop after S seconds")
    tracer_options(trace)
    export_options(trace)
    trace.set_defaults(func=cmd_trace)

    watch = sub.add_parser("watch", help="stream events with detections (MITRE ATT&CK) as a table or NDJSON")
    watch.add_argument("--rules", metavar="FILE", help="detection tuning (YAML) over the defaults")
    watch.add_argument("--json", action="store_true", help="NDJSON: one event line per event, detections included")
    watch.add_argument("--pid", type=_pid, action="extend", nargs="+", default=[], metavar="N")
    watch.add_argument("--comm", action="extend", nargs="+", default=[], metavar="NAME")
    watch.add_argument("--cgroup", action="extend", nargs="+", default=[], metavar="PATH",
                       help="a cgroup v2 path (relative to the hierarchy) or id; covers its subtree")
    watch.add_argument("--duration", type=_seconds, metavar="S", help="stop after S seconds")
    tracer_options(watch)
    export_options(watch)
    watch.set_defaults(func=cmd_watch)

    calls = sub.add_parser("calls", help="probe functions (uprobes, USDT) and report the call paths that ran",
                           description="Probes are BINARY:SYMBOL (libssl.so.3:SSL_write, ./app:handler), "
                           "uretprobe:BINARY:SYMBOL, or usdt:BINARY:PROVIDER:NAME "
                           "(usdt:/usr/bin/python3.11:python:function__entry). With -- CMD, only the command "
                           "and its descendants are probed, and the report follows its end.")
    calls.add_argument("--probe", action="append", default=[], metavar="SPEC")
    calls.add_argument("--returns", action="store_true", help="a return probe beside each entry probe")
    calls.add_argument("--tls", action="store_true", help="probe libssl's SSL_write/SSL_read (and _ex forms)")
    calls.add_argument("--plaintext", type=_count, default=0, metavar="N",
                       help="keep up to N bytes of each TLS write's and read's plaintext (default: none)")
    calls.add_argument("--redact-env", action="append", default=[], metavar="NAME|PATTERN",
                       help="environment variables (fnmatch patterns) whose values are redacted from plaintext")
    calls.add_argument("--redact", action="append", default=[], metavar="REGEX",
                       help="a regular expression redacted from plaintext")
    calls.add_argument("--rate", type=_count, default=10_000, metavar="N",
                       help="call records per second per probe at most (0: all); calls are counted regardless")
    calls.add_argument("--no-records", action="store_true", help="count call paths only, no record per call")
    calls.add_argument("--json", action="store_true", help="NDJSON: calls, then call paths, summaries, statistics")
    calls.add_argument("--pid", type=_pid, action="extend", nargs="+", default=[], metavar="N")
    calls.add_argument("--cgroup", action="extend", nargs="+", default=[], metavar="PATH")
    calls.add_argument("--duration", type=_seconds, metavar="S", help="without a command: stop after S seconds")
    calls.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD ARGS")
    calls.set_defaults(func=cmd_calls)

    schema = sub.add_parser("schema", help="print the JSON Schema of one NDJSON event")
    schema.set_defaults(func=cmd_schema)

    doctor = sub.add_parser("doctor", help="report what this kernel allows")
    doctor.add_argument("--json", action="store_true")
    doctor.set_defaults(func=cmd_doctor)

    run = sub.add_parser("run", help="run a command under a policy; exits with its status",
                         description="SIGUSR1 switches the running guard to enforce mode, SIGUSR2 to audit.")
    run.add_argument("--policy", required=True, metavar="FILE", help="YAML, TOML or JSON policy")
    run.add_argument("--mode", choices=("audit", "enforce"), help="override the policy's mode")
    run.add_argument("--audit-log", metavar="PATH", help="NDJSON log of every decision")
    run.add_argument("--audit-max-bytes", type=_size, default=DEFAULT_AUDIT_MAX_BYTES, metavar="BYTES",
                     help="rotate the audit log past this size (K/M/G suffixes allowed); default %(default)s")
    run.add_argument("--audit-rotate-every", type=_seconds, metavar="S", help="rotate the audit log every S seconds too")
    run.add_argument("--audit-backups", type=_count, default=5, metavar="N", help="rotated files kept; default %(default)s")
    run.add_argument("--audit-compress", action="store_true", help="gzip rotated audit log files")
    run.add_argument("--summary", metavar="FILE.md", help="write a Markdown report of the run (also appended to "
                                                          "$GITHUB_STEP_SUMMARY when it is set)")
    run.add_argument("--no-step-summary", action="store_true", help="do not append to $GITHUB_STEP_SUMMARY")
    export_options(run)
    run.add_argument("--backend", choices=("auto", "lsm", "fanotify", "tracepoint"), default="auto",
                     help="what holds files, ptrace and process memory: auto (default: the strongest this kernel "
                     "runs), lsm (EPERM before each), fanotify (EPERM before opening a protected file or decoy; "
                     "tracepoints kill on the rest), tracepoint (kill after the syscall)")
    run.add_argument("--user", metavar="USER", help="run the command as this user (name or uid), with no "
                     "supplementary groups and no_new_privs, so it cannot undo the guard")
    run.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD ARGS")
    run.set_defaults(func=cmd_run)

    check = sub.add_parser("check-policy", help="validate a policy without loading anything")
    check.add_argument("file", metavar="FILE")
    check.set_defaults(func=cmd_check_policy)

    demo = sub.add_parser("demo", help="trace a small built-in workload (loopback only)")
    demo.add_argument("--seconds", type=_seconds, default=4.0, metavar="N")
    tracer_options(demo)
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = _parser().parse_args(argv)
    if getattr(args, "argv", None) and args.argv[0] == "--":
        args.argv = args.argv[1:]
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_LogFormatter())
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    return _run(lambda: args.func(args), EXIT_TERMINATED if getattr(args, "argv", None) else 0)
