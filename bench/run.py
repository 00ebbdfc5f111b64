#!/usr/bin/env python3
"""runtimeguard benchmarks, the `make bench` entry point.

Measured (each 3 times, median):
  1. cost to the traced workload: ns added per operation of a C loop
     (bench/gen/workload.c: openat+close, a loopback TCP connect, an exec),
     with the C libbpf reference (bench/ref/) attached and with a runtimeguard
     Tracer attached (file_open, net_connect, process_exec), filtered to the
     generator's pid (its cgroup for the exec storm), against the same loop
     untraced;
  2. cost to the consumer: CPU ns (user + sys) of the consuming process per
     delivered event, runtimeguard's Tracer in this Python process against
     the C reference consumer and bcc's Python ring-buffer consumer
     (bench/bcc/peer.py) on the same openat records;
  3. loss: the highest offered rate at which a default Tracer delivers every
     event (paced generator, stepping up);
  4. latency: syscall to Struct in Python, p50/p99 at a low and a high rate;
  5. memory: RSS of this process over 60 s at 200 k events/s, after warm-up;
  6. function probes (bench/calls.py): ns a probed call gains, counting in
     the kernel against a record per call at 1 M calls/s, symbolization;
  7. hostname rules (bench/hostnames.py): ns they add to a connect against
     CIDR rules only, and what reading DNS answers adds to a round trip.
The generator runs pinned to one CPU, the consumers to the other.

Prints a table and writes the same as JSON to build/bench/results.json.
Needs root (loading BPF programs).
"""
import contextlib
import json
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import time

from calls import call_rows
from hostnames import hostname_rows

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "build", "bench")
GEN = os.path.join(OUT, "workload")
REF = os.path.join(OUT, "ref")
sys.path.insert(0, ROOT)

CALLS = int(os.environ.get("BENCH_CALLS", 1_000_000))  # openat+close per run
REPEATS = int(os.environ.get("BENCH_REPEATS", 3))
REF_DRAIN_MS = 5
WORKLOAD_TARGET_RATIO = 1.5
# The consumer's targets, as multiples of the msgspec yardstick measured in
# the same run: a typed Event per event, the batch API per event, and the
# exec path (process table included) in ns.
EVENTS_TARGET_YARDSTICKS = 2.5
BATCH_TARGET_YARDSTICKS = 1.0
EXEC_TARGET_NS = 2000.0
# The exec path's Python is measured poll by poll, at the top rate and at
# EXEC_SLOW_RATE (a few execs a poll): the slope of a poll's Python against
# the execs it brought is what each exec costs, the intercept what a wake-up
# costs whatever it brings.
EXEC_SLOW_RATE = 200
EXEC_SLOW_CALLS = int(os.environ.get("BENCH_EXEC_SLOW_CALLS", 400))

# The other traced loops: operations per run (each is far slower than an
# openat), and the event runtimeguard reports for each.
LOOP_CALLS = {"connect": int(os.environ.get("BENCH_CONNECT_CALLS", 50_000)),
              "exec": int(os.environ.get("BENCH_EXEC_CALLS", 2_000))}
LOOP_EVENTS = {"openat": "file_open", "connect": "net_connect", "exec": "process_exec"}
BCC_PEER = os.path.join(ROOT, "bench", "bcc", "peer.py")
SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's python3-bpfcc is installed for it
BCC_TARGET_FACTOR = 3.0           # runtimeguard's consumer at least this much cheaper

LOSS_TARGET_RATE = 1_000_000    # events/s offered with zero loss, default ring
LOSS_RATES = (100_000, 200_000, 400_000, 800_000, 1_000_000)
LOSS_SECONDS = 1.0
LATENCY_RATES = (1_000, 100_000)  # events/s, paced
LATENCY_SECONDS = 2.0
LATENCY_TARGET_FACTOR = 2.0     # p99 under this many times the configured bound
RSS_RATE = 200_000
RSS_WARMUP_S = float(os.environ.get("BENCH_RSS_WARMUP", 10))
RSS_SECONDS = float(os.environ.get("BENCH_RSS_SECONDS", 60))
RSS_TARGET_GROWTH = 0.05


def cpus():
    avail = sorted(os.sched_getaffinity(0))
    if len(avail) >= 2:
        return {avail[0]}, {avail[1]}  # consumer, generator
    return set(avail), set(avail)


CONSUMER_CPUS, GEN_CPUS = cpus()


def build():
    subprocess.run(["make", "-s", "-f", os.path.join(ROOT, "bench", "Makefile")], check=True)


def ensure_bcc():
    """Debian's bcc, and kernel headers where bcc looks for them. This kernel
    has no headers package of its own: Debian's are linked in, as bcc's own
    programs need only what a tracepoint's format gives them. Set up here, for
    the benchmark alone; nothing already there is replaced."""
    def installed(pkg):
        out = subprocess.run(["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True, text=True).stdout
        return out.endswith("ok installed")

    depends = subprocess.run(["apt-cache", "depends", "linux-headers-amd64"], capture_output=True,
                             text=True).stdout
    headers = next((line.split(": ", 1)[1].strip() for line in depends.splitlines()
                    if "Depends: linux-headers-" in line), None)
    missing = [p for p in ("python3-bpfcc", headers) if p and not installed(p)]
    if missing:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        if subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], env=env,
                          capture_output=True).returncode != 0:
            subprocess.run(["apt-get", "update", "-qq"], env=env, check=True)
            subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], env=env,
                           check=True, capture_output=True)
    modules = f"/lib/modules/{platform.release()}"
    if headers and not os.path.exists(os.path.join(modules, "build")):
        os.makedirs(modules, exist_ok=True)
        os.symlink(f"/usr/src/{headers}", os.path.join(modules, "build"))
        common = headers.rsplit("-", 1)[0] + "-common"
        if not os.path.exists(os.path.join(modules, "source")):
            os.symlink(f"/usr/src/{common}", os.path.join(modules, "source"))


class BenchCgroup:
    """A cgroup of its own for the exec storm: its children get new pids, so
    the tracers filter on the cgroup. Removed on exit (empty by then)."""

    def __enter__(self):
        from runtimeguard import environment

        self.path = os.path.join(environment.cgroup2_mount(), f"runtimeguard-bench-{os.getpid()}")
        os.mkdir(self.path)
        self.id = os.stat(self.path).st_ino
        return self

    def __exit__(self, *exc):
        for _ in range(50):  # the last children may still be leaving
            try:
                os.rmdir(self.path)
                return
            except OSError:
                time.sleep(0.1)
        os.rmdir(self.path)


def spawn_generator(calls, rate=0, mode="openat", cgroup=None, env=None):
    def setup():
        os.sched_setaffinity(0, GEN_CPUS)
        if cgroup is not None:
            with open(os.path.join(cgroup.path, "cgroup.procs"), "w") as f:
                f.write("0")

    gen = subprocess.Popen([GEN, mode, str(calls)] + ([str(rate)] if rate else []), stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, text=True, preexec_fn=setup, env=env)
    line = gen.stdout.readline()
    if line.strip() != "ready":
        gen.kill()
        raise RuntimeError(f"generator did not start: {line!r}")
    return gen


def go(gen):
    gen.stdin.write("go\n")
    gen.stdin.flush()


def generator_result(gen):
    out = gen.stdout.readline().split()
    gen.wait()
    if gen.returncode != 0 or len(out) != 2:
        raise RuntimeError(f"generator failed (status {gen.returncode}, output {out})")
    return int(out[0])


@contextlib.contextmanager
def bpf_stats():
    """The kernel's per-program run time accounting (kernel.bpf_stats_enabled),
    on for the block: it costs two clock reads per program run, so the
    wall-clock comparisons run without it."""
    path = "/proc/sys/kernel/bpf_stats_enabled"
    with open(path) as f:
        before = f.read().strip()
    with open(path, "w") as f:
        f.write("1")
    try:
        yield
    finally:
        with open(path, "w") as f:
            f.write(before)


def bpf_program_ns(prefix):
    """Run time, in ns, of the loaded BPF programs named prefix*, since they
    were loaded (0 unless bpf_stats() was on)."""
    out = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True, check=True).stdout
    return sum(p.get("run_time_ns", 0) for p in json.loads(out) if p.get("name", "").startswith(prefix))


def loop_scope(mode):
    """The exec storm's own cgroup; the other loops are filtered by pid."""
    return BenchCgroup() if mode == "exec" else contextlib.nullcontext()


def loop_calls(mode):
    return CALLS if mode == "openat" else LOOP_CALLS[mode]


# Machine identity: an exec storm whose children get a 2 KiB environment
# (one identity-bearing name among 2 KiB of ordinary ones), traced with the
# environment scan off and on. The scan's cost is the exec programs' extra
# run time, against an untraced exec's wall time.
IDENTITY_TARGET = 0.05
IDENTITY_OPTIONS = {"identity_env": ["OPENAI_API_KEY", "AWS_*", "*_TOKEN"], "identity_argv": ["openai"]}


def identity_environment() -> dict:
    env = {"PATH": "/usr/bin:/bin", "HOME": "/root", "LANG": "C.UTF-8", "OPENAI_API_KEY": "sk-bench"}
    i = 0
    while sum(len(k) + len(v) + 2 for k, v in env.items()) < 2048 - 70:
        env[f"BENCH_SETTING_{i:02d}"] = "v" * 50
        i += 1
    return env


def run_identity():
    from runtimeguard import Tracer

    env = identity_environment()
    size = sum(len(k) + len(v) + 2 for k, v in env.items())
    untraced = statistics.median(run_untraced("exec", env=env)["ns_per_call"] for _ in range(REPEATS))
    with bpf_stats():
        off = [run_runtimeguard("exec", env=env)["bpf_ns_per_call"] for _ in range(REPEATS)]
        on = [run_runtimeguard("exec", env=env, tracer_options=IDENTITY_OPTIONS)["bpf_ns_per_call"]
              for _ in range(REPEATS)]
    # The scan is on for real: the same environment shows its identity.
    with BenchCgroup() as cgroup:
        with Tracer(events=["process_exec"], cgroups=[cgroup.id], **IDENTITY_OPTIONS) as t:
            gen = spawn_generator(1, mode="exec", cgroup=cgroup, env=env)
            go(gen)
            generator_result(gen)
            seen = []
            for _ in range(20):
                seen += [ev.data.identities for ev in t.poll(0.1) if ev.name == "process_exec"]
                if seen:
                    break
    if ["env:OPENAI_API_KEY"] not in seen:
        raise RuntimeError(f"identity bench: the environment scan found {seen}, not env:OPENAI_API_KEY")
    return {"env_bytes": size, "untraced_ns": untraced, "off_ns": statistics.median(off),
            "on_ns": statistics.median(on)}


def run_untraced(mode="openat", env=None):
    calls = loop_calls(mode)
    with loop_scope(mode) as cgroup:
        gen = spawn_generator(calls, mode=mode, cgroup=cgroup, env=env)
        go(gen)
        return {"ns_per_call": generator_result(gen) / calls}


def run_reference(mode="openat"):
    if mode == "exec":
        return run_consumer_process([REF, "--cgroup", "{cgroup}", "--event", mode, "--drain-ms", str(REF_DRAIN_MS)],
                                    mode)
    return run_consumer_process([REF, "--pid", "{pid}", "--event", mode, "--drain-ms", str(REF_DRAIN_MS)], mode)


def run_consumer_process(argv, mode="openat"):
    """The generator under a consumer process that prints "ready" and, on
    SIGTERM, one JSON line of events, lost and cpu_ns."""
    with loop_scope(mode) as cgroup:
        return _run_consumer_process(argv, mode, cgroup)


def _run_consumer_process(argv, mode, cgroup):
    calls = loop_calls(mode)
    gen = spawn_generator(calls, mode=mode, cgroup=cgroup)
    argv = [a.replace("{pid}", str(gen.pid)).replace("{cgroup}", str(cgroup.id if cgroup else 0)) for a in argv]
    consumer = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True,
                                preexec_fn=lambda: os.sched_setaffinity(0, CONSUMER_CPUS))
    try:
        line = consumer.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"{argv[0]} did not start: {line!r}")
        go(gen)
        elapsed = generator_result(gen)
        prog_ns = bpf_program_ns("ref_") if argv[0] == REF else 0
        time.sleep(0.05)  # past a few drain periods
        consumer.send_signal(signal.SIGTERM)
        out, _ = consumer.communicate(timeout=30)
        stats = json.loads(out.strip().splitlines()[-1])
    finally:
        if consumer.poll() is None:
            consumer.kill()
        if gen.poll() is None:
            gen.kill()
    return {"ns_per_call": elapsed / calls, "events": stats["events"], "lost": stats["lost"],
            "cpu_ns": stats["cpu_ns"], "cpu_ns_per_event": stats["cpu_ns"] / max(1, stats["events"]),
            "bpf_ns_per_call": prog_ns / calls}


# libbpf-tools' snoops (Debian's libbpf-tools), the peers for the BPF side:
# the same operation, traced by a tool that also copies the path.
SNOOPS = {"openat": "/usr/sbin/opensnoop", "exec": "/usr/sbin/execsnoop"}
SNOOP_PROGRAMS = "tracepoint__syscalls__"  # libbpf-tools' program names
SNOOP_TARGETS = {"openat": 1.5, "exec": 2.0}  # runtimeguard's BPF time at most this many times the snoop's


def ensure_libbpf_tools():
    if all(os.access(p, os.X_OK) for p in SNOOPS.values()):
        return
    subprocess.run(["apt-get", "update", "-qq"], check=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "libbpf-tools"], check=True,
                   env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))


def run_snoop(mode):
    """The snoop of mode on the same loop, filtered as runtimeguard is (the
    generator's pid; its cgroup for the exec storm): its programs' run time
    per operation (bpf_stats() must be on)."""
    with loop_scope(mode) as cgroup:
        calls = loop_calls(mode)
        gen = spawn_generator(calls, mode=mode, cgroup=cgroup)
        argv = [SNOOPS[mode], "-p", str(gen.pid)] if mode == "openat" else [SNOOPS[mode], "-c", cgroup.path]
        snoop = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                 preexec_fn=lambda: os.sched_setaffinity(0, CONSUMER_CPUS))
        try:
            deadline = time.monotonic() + 20
            while bpf_program_ns(SNOOP_PROGRAMS) == 0 and not _snoop_programs():
                if snoop.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{argv[0]} did not attach: {snoop.stderr.read()!r}")
                time.sleep(0.05)
            time.sleep(0.2)
            before = bpf_program_ns(SNOOP_PROGRAMS)
            go(gen)
            generator_result(gen)
            return (bpf_program_ns(SNOOP_PROGRAMS) - before) / calls
        finally:
            snoop.terminate()
            snoop.wait()
            if gen.poll() is None:
                gen.kill()


def _snoop_programs():
    out = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True, check=True).stdout
    return [p for p in json.loads(out) if p.get("name", "").startswith(SNOOP_PROGRAMS)]


def run_bcc():
    return run_consumer_process([SYSTEM_PYTHON, BCC_PEER, "--pid", "{pid}", "--drain-ms", str(REF_DRAIN_MS)])


# How the runtimeguard consumer takes the events: "events" (for ev in
# tracer: a typed Event each, nothing read), "batch" (poll_batch: columns),
# "records" (each event read whole: ev.record(), workload and target resolved).
CONSUMER_APIS = ("events", "batch", "records")


def run_runtimeguard(mode="openat", api="events", rate=0, calls=None, env=None, tracer_options=None):
    with loop_scope(mode) as cgroup:
        return _run_runtimeguard(mode, cgroup, api, rate, calls, env, tracer_options or {})


def run_exec_polls(rate=0, calls=None):
    """The exec storm, each poll's Python measured on its own: (execs it
    delivered, thread CPU ns around it less its native poll's). The stats()
    read between polls stays outside the measured windows."""
    from runtimeguard import Tracer

    calls = calls or LOOP_CALLS["exec"]
    samples = []
    with loop_scope("exec") as cgroup:
        gen = spawn_generator(calls, rate=rate, mode="exec", cgroup=cgroup)
        tracer = Tracer(events=["process_exec"], cgroups=[cgroup.id])
        try:
            tracer.start()
            native = tracer.stats().poll_cpu_ns
            go(gen)
            delivered, exited_at = 0, None
            while delivered < calls:
                before = time.thread_time_ns()
                n = len(tracer.poll(0.05))
                spent = time.thread_time_ns() - before
                after = tracer.stats().poll_cpu_ns
                if n:
                    samples.append((n, spent - (after - native)))
                native, delivered = after, delivered + n
                if exited_at is None and gen.poll() is not None:
                    exited_at = time.monotonic()
                if exited_at is not None and time.monotonic() - exited_at > 1.0:
                    break
            generator_result(gen)
        finally:
            tracer.close()
            if gen.poll() is None:
                gen.kill()
    return samples


def theil_sen(points):
    """The median of the pairwise slopes, and the median intercept under it:
    a line that a few outlying polls (the first, which reads the generator's
    ancestry from /proc; one the VM paused in) do not move."""
    slopes = sorted((y2 - y1) / (x2 - x1) for i, (x1, y1) in enumerate(points)
                    for x2, y2 in points[i + 1:] if x2 != x1)
    slope = statistics.median(slopes)
    return slope, statistics.median(y - slope * x for x, y in points)


def _take(tracer, api):
    if api == "batch":
        return len(tracer.poll_batch(0.05))
    events = tracer.poll(0.05)
    if api == "records":
        for ev in events:
            ev.record()
    return len(events)


def _run_runtimeguard(mode, cgroup, api, rate=0, calls=None, env=None, tracer_options={}):
    from runtimeguard import Tracer

    calls, event = calls or loop_calls(mode), LOOP_EVENTS[mode]
    gen = spawn_generator(calls, rate=rate, mode=mode, cgroup=cgroup, env=env)
    tracer = (Tracer(events=[event], cgroups=[cgroup.id], **tracer_options) if cgroup
              else Tracer(events=[event], pids=[gen.pid], **tracer_options))
    try:
        tracer.start()
        delivered = 0
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        go(gen)
        exited_at = None
        # The consumer does nothing per event but receive it (or, "records",
        # read it whole): the events are counted per batch, and by kind from
        # the tracer's stats afterwards. The generator's exit is looked at
        # ten times a second, not after every poll: the harness's own Python
        # (subprocess's poll) stays out of the consumer's figure.
        next_look = 0.0
        while delivered < calls:
            delivered += _take(tracer, api)
            now = time.monotonic()
            if now >= next_look:
                next_look = now + 0.1
                if exited_at is None and gen.poll() is not None:
                    exited_at = now
                if exited_at is not None and now - exited_at > 1.0:
                    break
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        elapsed = generator_result(gen)
        prog_ns = bpf_program_ns("rg_")
        stats = tracer.stats()
        native_ns = stats.poll_cpu_ns
        lost = stats.lost_total
        delivered = min(delivered, stats.delivered.get(event, 0))
    finally:
        tracer.close()
        if gen.poll() is None:
            gen.kill()
    cpu_ns = ((r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)) * 1e9
    return {"ns_per_call": elapsed / calls, "events": delivered, "lost": lost, "cpu_ns": cpu_ns,
            "cpu_ns_per_event": cpu_ns / max(1, delivered), "bpf_ns_per_call": prog_ns / calls,
            # The consumer's CPU outside the native poll (which drains, encodes
            # and teaches the process table): Python's share.
            "python_ns": cpu_ns - native_ns, "polls": stats.polls,
            "python_ns_per_event": (cpu_ns - native_ns) / max(1, delivered)}


def realtime_offset_ns():
    return time.clock_gettime_ns(time.CLOCK_REALTIME) - time.clock_gettime_ns(time.CLOCK_BOOTTIME)


def traced_run(rate, calls, on_events=None, on_tick=None):
    """A paced generator under a default Tracer polled here: (delivered, lost,
    offered rate achieved). on_events(events, arrival_ns) sees each batch;
    on_tick() runs after every poll."""
    from runtimeguard import Tracer

    gen = spawn_generator(calls, rate)
    tracer = Tracer(events=["file_open"], pids=[gen.pid])
    try:
        tracer.start()
        delivered = 0
        go(gen)
        exited_at = None
        while True:
            offset = realtime_offset_ns()
            events = tracer.poll(0.05)
            # Event times are the kernel's boot-time clock moved to wall-clock
            # time at the poll; a batch across a wall-clock step (NTP, the VM
            # paused) has no latency to measure.
            if on_events is not None and events and abs(realtime_offset_ns() - offset) < 1_000_000:
                on_events(events, time.time_ns())
            delivered += sum(1 for ev in events if ev.name == "file_open")
            if on_tick is not None:
                on_tick()
            if exited_at is None and gen.poll() is not None:
                exited_at = time.monotonic()
            if exited_at is not None and (delivered >= calls or time.monotonic() - exited_at > 1.0):
                break
        elapsed = generator_result(gen)
        lost = tracer.stats().lost.get("file_open", 0)
    finally:
        tracer.close()
        if gen.poll() is None:
            gen.kill()
    return delivered, lost, calls / (elapsed / 1e9)


def run_loss():
    """Offered rate stepping up: the highest at which every event arrives."""
    steps = []
    for rate in LOSS_RATES:
        calls = int(rate * LOSS_SECONDS)
        delivered, lost, achieved = traced_run(rate, calls)
        steps.append({"rate": rate, "achieved": achieved, "calls": calls, "delivered": delivered, "lost": lost})
        print(f"loss: offered {rate:,}/s (achieved {achieved:,.0f}/s): delivered {delivered:,}, lost {lost:,}",
              flush=True)
    clean = [st for st in steps if st["lost"] == 0 and st["delivered"] == st["calls"]]
    return {"steps": steps, "best_zero_loss": max((st["achieved"] for st in clean), default=0.0)}


def run_latency(bound_ms):
    """Syscall to Struct in Python: arrival time minus the event's kernel timestamp."""
    out = {}
    for rate in LATENCY_RATES:
        lat = []

        def record(events, arrival):
            lat.extend((arrival - ev.timestamp) / 1e6 for ev in events if ev.name == "file_open")

        traced_run(rate, int(rate * LATENCY_SECONDS), on_events=record)
        lat.sort()
        pick = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] if lat else None
        out[rate] = {"events": len(lat), "p50_ms": pick(0.50), "p99_ms": pick(0.99), "bound_ms": bound_ms}
        print(f"latency at {rate:,}/s: p50 {out[rate]['p50_ms']:.2f} ms, p99 {out[rate]['p99_ms']:.2f} ms "
              f"({len(lat):,} events)", flush=True)
    return out


def machine_speed():
    """The yardstick for this machine's Python speed: msgspec decoding an
    array-like Struct of ints and a Literal name (about 220 ns per event on the
    reference machine of BENCHMARKS.md), ns per event, best of 20 batches."""
    from typing import Literal

    import msgspec

    class Yardstick(msgspec.Struct, array_like=True, gc=False):
        name: Literal["file_open", "process_exec"]
        timestamp: int
        seq: int
        cpu: int
        pid: int
        tid: int
        entity_id: int
        cgroup_id: int

    n = 4096
    data = msgspec.msgpack.encode([Yardstick("file_open", 1_700_000_000_000_000_000, 123_456, 1, 4242, 4243,
                                             2**62 + 5, 12_345)] * n)
    decoder = msgspec.msgpack.Decoder(list[Yardstick])
    best = float("inf")
    for _ in range(20):
        t0 = time.perf_counter_ns()
        decoder.decode(data)
        best = min(best, (time.perf_counter_ns() - t0) / n)
    return best


def rss_kib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def run_rss():
    """RSS of this (consuming) process under a steady load, after warm-up."""
    samples = []
    start = time.monotonic()
    next_sample = [start]

    def tick():
        now = time.monotonic()
        if now >= next_sample[0]:
            samples.append((now - start, rss_kib()))
            next_sample[0] = now + 1.0

    calls = int(RSS_RATE * (RSS_WARMUP_S + RSS_SECONDS))
    delivered, lost, achieved = traced_run(RSS_RATE, calls, on_tick=tick)
    steady = [kib for t, kib in samples if t >= RSS_WARMUP_S]
    growth = (steady[-1] - steady[0]) / steady[0] if len(steady) >= 2 else None
    peak = max((kib for _, kib in samples), default=None)
    print(f"rss at {RSS_RATE:,}/s: peak {peak:,} KiB, growth after warm-up "
          f"{'-' if growth is None else f'{growth * 100:+.2f} %'} ({delivered:,} events, {lost:,} lost)", flush=True)
    return {"samples": samples, "peak_kib": peak, "growth": growth, "delivered": delivered, "lost": lost,
            "achieved": achieved}


# The guard's file judges (fanotify backend, against the tracepoint one):
# what a guarded workload's opens of files nobody protects cost, on the
# protected files' filesystem, and how long a protected open waits for its
# answer.
FILE_GUARD_CALLS = int(os.environ.get("BENCH_FILE_GUARD_CALLS", 300_000))
DECISION_CALLS = int(os.environ.get("BENCH_DECISION_CALLS", 3_000))
FILE_GUARD_TARGET = 0.10  # added cost per unrelated open, of an untraced openat+close
PROTECTED_TREE = (10, 100)  # directories, files in each


def file_guard_tree():
    """A protected tree and token, and an unrelated file beside them (same filesystem)."""
    import tempfile

    os.makedirs(OUT, exist_ok=True)
    root = tempfile.mkdtemp(prefix="files-", dir=OUT)
    dirs, files = PROTECTED_TREE
    for d in range(dirs):
        os.makedirs(os.path.join(root, "protected", f"d{d}"))
        for f in range(files):
            with open(os.path.join(root, "protected", f"d{d}", f"f{f}"), "w") as fh:
                fh.write("secret\n")
    for name in ("token", "unrelated"):
        with open(os.path.join(root, name), "w") as fh:
            fh.write("x\n")
    return root


def open_loop(path, calls, cgroup, latencies=False):
    """The generator's openat loop on path, in cgroup: ns per call, and with
    latencies, p50/p99 ns per open."""
    env = dict(os.environ, WORKLOAD_PATH=path)
    if latencies:
        env["WORKLOAD_LATENCIES"] = "1"
    gen = spawn_generator(calls, cgroup=cgroup, env=env)
    go(gen)
    out = gen.stdout.readline().split()
    gen.wait()
    result = {"ns_per_call": int(out[0]) / calls, "failed": int(out[1])}
    if latencies:
        result.update(p50_ns=int(out[2]), p99_ns=int(out[3]))
    return result


@contextlib.contextmanager
def guarding(root, cgroup, backend, protect=True):
    """A guard in enforce mode on cgroup, protecting root's tree and token
    (or nothing), its decisions polled on a thread so none waits for room."""
    import threading

    from runtimeguard.guard import Guard
    from runtimeguard.policy import Policy

    protected = [os.path.join(root, "token"), os.path.join(root, "protected")] if protect else []
    policy = Policy.from_dict({"version": 1, "mode": "enforce", "files": {"protect": protected}})
    stop = threading.Event()
    with Guard(policy, cgroup=cgroup.path, backend=backend) as g:
        def poll():
            while not stop.is_set():
                g.poll(0.05)

        poller = threading.Thread(target=poll)
        poller.start()
        try:
            yield g
        finally:
            stop.set()
            poller.join()


def run_file_guard():
    """Interleaved runs: untraced, fanotify guard, tracepoint guard."""
    import shutil

    root = file_guard_tree()
    unrelated, token = os.path.join(root, "unrelated"), os.path.join(root, "token")
    runs = {"untraced": [], "fanotify": [], "unmarked": [], "tracepoint": [], "untraced_token": [], "decision": []}
    try:
        with BenchCgroup() as cgroup:
            open_loop(unrelated, FILE_GUARD_CALLS, cgroup)  # warm-up
            for _ in range(REPEATS):
                runs["untraced"].append(open_loop(unrelated, FILE_GUARD_CALLS, cgroup))
                runs["untraced_token"].append(open_loop(token, DECISION_CALLS, cgroup, latencies=True))
                # The same guard with nothing to protect: what the marks add.
                with guarding(root, cgroup, "fanotify", protect=False):
                    runs["unmarked"].append(open_loop(unrelated, FILE_GUARD_CALLS, cgroup))
                for backend in ("fanotify", "tracepoint"):
                    with guarding(root, cgroup, backend) as g:
                        runs[backend].append(open_loop(unrelated, FILE_GUARD_CALLS, cgroup))
                        if backend == "fanotify":
                            decided = open_loop(token, DECISION_CALLS, cgroup, latencies=True)
                            marks = g.stats().file_judge_marks
                    if backend == "fanotify":
                        decided["marks"] = marks
                        runs["decision"].append(decided)
                print("file guard: untraced {:.0f} ns, fanotify {:.0f} ns (nothing protected {:.0f} ns), tracepoint "
                      "{:.0f} ns per unrelated open; protected open p50 {:.1f} us".format(
                          *(runs[k][-1]["ns_per_call"] for k in ("untraced", "fanotify", "unmarked", "tracepoint")),
                          runs["decision"][-1]["p50_ns"] / 1000), flush=True)
    finally:
        shutil.rmtree(root)
    refused = [r["failed"] for r in runs["decision"]]
    if any(f != DECISION_CALLS for f in refused):
        raise RuntimeError(f"the fanotify guard refused {refused} of {DECISION_CALLS} protected opens")
    return runs


def median(runs, key):
    return statistics.median(r[key] for r in runs)


def fmt(v, unit=""):
    return "-" if v is None else f"{v:,.1f}{unit}"


def file_guard_rows(runs):
    base = median(runs["untraced"], "ns_per_call")
    rows = [{"metric": "guard files: unrelated openat+close on the protected files' filesystem, untraced, ns/call",
             "runtimeguard": None, "reference": None, "value": base, "ratio": None, "target": None,
             "verdict": None}]
    protected = f"{PROTECTED_TREE[0] * PROTECTED_TREE[1] + PROTECTED_TREE[0] + 2:,} inodes marked"
    marks = median(runs["fanotify"], "ns_per_call") - median(runs["unmarked"], "ns_per_call")
    rows.append({"metric": f"guard files, fanotify marks ({protected}): added ns per unrelated openat+close of a "
                           "guarded process, against the same guard protecting nothing",
                 "runtimeguard": marks, "reference": base, "ratio": marks / base, "ratio_label": "x untraced",
                 "target": f"<= {FILE_GUARD_TARGET:.2f}x untraced",
                 "verdict": "PASS" if marks / base <= FILE_GUARD_TARGET else "FALL SHORT"})
    for backend in ("fanotify", "tracepoint"):
        added = median(runs[backend], "ns_per_call") - base
        rows.append({"metric": f"guard files, whole guard ({backend} backend, {protected if backend == 'fanotify' else 'the same files protected'}): "
                               "added ns per unrelated openat+close of a guarded process (syscall tracepoints included)",
                     "runtimeguard": added, "reference": base, "ratio": added / base, "ratio_label": "x untraced",
                     "target": None, "verdict": None})
    for pct in ("p50", "p99"):
        decided = median(runs["decision"], f"{pct}_ns")
        untraced = median(runs["untraced_token"], f"{pct}_ns")
        rows.append({"metric": f"guard files (fanotify backend): decision latency {pct}, us per protected open "
                               "refused (EPERM), against the same open untraced",
                     "runtimeguard": decided / 1000, "reference": untraced / 1000, "ratio": decided / untraced,
                     "target": None, "verdict": None})
    return rows


def print_table(rows):
    header = ("metric", "runtimeguard", "reference", "ratio", "target", "verdict")
    table = []
    for r in rows:
        if "value" in r:
            cells = (r["metric"], fmt(r["value"]) + r.get("value_label", " (untraced)"), "", "", "-", "-")
        else:
            ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}{r.get('ratio_label', 'x ref')}"
            if "ratio_to_target" in r:
                ratio += f", {r['ratio_to_target']:.2f}x target"
            cells = (r["metric"], fmt(r["runtimeguard"]), fmt(r["reference"]), ratio, r["target"] or "-",
                     r["verdict"] or "-")
        table.append(cells)
    widths = [max(len(str(c[i])) for c in [header] + table) for i in range(len(header))]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"
    print()
    print(line(header))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for cells in table:
        print(line(cells))
    print()


def main():
    if os.geteuid() != 0:
        sys.exit("bench/run.py needs root (loading BPF programs)")
    build()
    os.sched_setaffinity(0, CONSUMER_CPUS)
    if sys.argv[1:] == ["files"]:
        print_table(file_guard_rows(run_file_guard()))
        return
    if sys.argv[1:] == ["calls"]:
        print_table(call_rows(REPEATS, GEN_CPUS))
        return
    if sys.argv[1:] == ["hostnames"]:
        print_table(hostname_rows(REPEATS, GEN_CPUS))
        return
    started = time.monotonic()
    ensure_bcc()
    ensure_libbpf_tools()
    raw = {"untraced": [], "reference": [], "bcc": [], "runtimeguard": [], "batch": [], "records": []}
    run_untraced()  # warm-up: page cache, CPU frequency, first-run costs; not recorded
    run_runtimeguard()  # and the consumer's first-touch page faults
    for i in range(REPEATS):
        raw["untraced"].append(run_untraced())
        raw["reference"].append(run_reference())
        raw["bcc"].append(run_bcc())
        raw["runtimeguard"].append(run_runtimeguard())
        raw["batch"].append(run_runtimeguard(api="batch"))
        raw["records"].append(run_runtimeguard(api="records"))
        print(f"repeat {i + 1}/{REPEATS}: " + ", ".join(
            f"{k} {v[-1]['ns_per_call']:.1f} ns/call" for k, v in raw.items()), flush=True)

    base = median(raw["untraced"], "ns_per_call")
    ref_call = median(raw["reference"], "ns_per_call")
    rg_call = median(raw["runtimeguard"], "ns_per_call")
    ref_added, rg_added = ref_call - base, rg_call - base
    wl_ratio = rg_added / ref_added if ref_added > 0 else None
    ref_cpu = median(raw["reference"], "cpu_ns_per_event")
    rg_cpu = median(raw["runtimeguard"], "cpu_ns_per_event")
    batch_cpu = median(raw["batch"], "cpu_ns_per_event")
    records_cpu = median(raw["records"], "cpu_ns_per_event")
    bcc_cpu = median(raw["bcc"], "cpu_ns_per_event")
    bcc_factor = bcc_cpu / rg_cpu if rg_cpu else None
    incomplete = {k: [r["events"] for r in raw[k] if r["events"] != CALLS]
                  for k in ("reference", "bcc", "runtimeguard", "batch", "records")}

    loops = {}
    for mode in LOOP_CALLS:
        runs = {"untraced": [], "reference": [], "runtimeguard": []}
        for i in range(REPEATS):
            runs["untraced"].append(run_untraced(mode))
            runs["reference"].append(run_reference(mode))
            runs["runtimeguard"].append(run_runtimeguard(mode))
        loops[mode] = runs
        base_m = median(runs["untraced"], "ns_per_call")
        short = [r["events"] for k in ("reference", "runtimeguard") for r in runs[k] if r["events"] != LOOP_CALLS[mode]]
        if short:
            print(f"warning: {mode} loop: some runs delivered {short} events, expected {LOOP_CALLS[mode]}")
        print(f"{mode} loop ({LOOP_CALLS[mode]:,} per run): untraced {base_m:,.0f} ns, added: reference "
              f"{median(runs['reference'], 'ns_per_call') - base_m:,.0f} ns, runtimeguard "
              f"{median(runs['runtimeguard'], 'ns_per_call') - base_m:,.0f} ns", flush=True)

    # The BPF programs' own run time per operation, from the kernel's
    # accounting: one run each with it on. It isolates the programs' cost where
    # the operation's own cost varies more than the tracing adds (connect, exec).
    prog_time = {}
    with bpf_stats():
        for mode in ("openat",) + tuple(LOOP_CALLS):
            prog_time[mode] = {"reference": run_reference(mode)["bpf_ns_per_call"],
                               "runtimeguard": run_runtimeguard(mode)["bpf_ns_per_call"]}
            if mode in SNOOPS:
                prog_time[mode]["snoop"] = run_snoop(mode)
            print(f"{mode}: BPF program time per operation: reference {prog_time[mode]['reference']:,.0f} ns, "
                  f"runtimeguard {prog_time[mode]['runtimeguard']:,.0f} ns"
                  + (f", {os.path.basename(SNOOPS[mode])} {prog_time[mode]['snoop']:,.0f} ns" if mode in SNOOPS
                     else ""), flush=True)

    yardstick = machine_speed()
    exec_cpu = median(loops["exec"]["runtimeguard"], "cpu_ns_per_event")
    exec_python = median(loops["exec"]["runtimeguard"], "python_ns_per_event")
    # Poll by poll, at the top rate and slowed: Python per poll against the
    # execs in it. The slope is Python's cost per exec; the intercept, a
    # wake-up's, paid whatever a poll brings.
    exec_polls = [p for _ in range(REPEATS) for p in run_exec_polls() + run_exec_polls(EXEC_SLOW_RATE, EXEC_SLOW_CALLS)]
    exec_slope, exec_wake = theil_sen(exec_polls)
    execs_per_poll = statistics.median(r["events"] / r["polls"] for r in loops["exec"]["runtimeguard"])
    print(f"exec path: Python per exec (slope over {len(exec_polls)} polls) {exec_slope:,.0f} ns, per wake-up "
          f"{exec_wake:,.0f} ns; at the top rate {exec_python:,.0f} ns per exec, {execs_per_poll:.0f} execs a poll",
          flush=True)
    exec_ref_cpu = median(loops["exec"]["reference"], "cpu_ns_per_event")
    print(f"machine speed: the msgspec yardstick decodes in {yardstick:.0f} ns per event "
          "(220 on the reference machine)",
          flush=True)

    identity = run_identity()
    identity_added = identity["on_ns"] - identity["off_ns"]
    print(f"identity: exec with a {identity['env_bytes']:,}-byte environment, untraced {identity['untraced_ns']:,.0f} ns; "
          f"BPF per exec {identity['off_ns']:,.0f} ns with the scan off, {identity['on_ns']:,.0f} ns on", flush=True)
    file_guard = run_file_guard()
    calls = call_rows(REPEATS, GEN_CPUS)
    hostnames = hostname_rows(REPEATS, GEN_CPUS)
    from runtimeguard.tracer import DEFAULT_MAX_LATENCY_MS
    loss = run_loss()
    latency = run_latency(DEFAULT_MAX_LATENCY_MS)
    rss = run_rss()
    high = latency[max(LATENCY_RATES)]
    latency_limit = LATENCY_TARGET_FACTOR * DEFAULT_MAX_LATENCY_MS
    over = [st for st in loss["steps"] if st["rate"] >= 2 * loss["best_zero_loss"]]

    rows = [
        {"metric": "machine speed: the msgspec yardstick, ns/event (about 220 on the reference machine)",
         "runtimeguard": None, "reference": None, "value": yardstick, "value_label": "", "ratio": None,
         "target": None, "verdict": None},
        {"metric": "openat+close untraced, ns/call", "runtimeguard": None, "reference": None,
         "value": base, "ratio": None, "target": None, "verdict": None},
        {"metric": "openat+close traced, ns/call", "runtimeguard": rg_call, "reference": ref_call,
         "ratio": rg_call / ref_call, "target": None, "verdict": None},
        {"metric": "traced workload: added ns per openat+close", "runtimeguard": rg_added, "reference": ref_added,
         "ratio": wl_ratio, "target": f"ratio <= {WORKLOAD_TARGET_RATIO}",
         "verdict": None if wl_ratio is None else ("PASS" if wl_ratio <= WORKLOAD_TARGET_RATIO else "FALL SHORT")},
        {"metric": "consumer CPU ns per delivered event, `for ev in tracer` (a typed Event each, nothing read), "
                   "against the yardstick", "runtimeguard": rg_cpu, "reference": yardstick,
         "ratio": rg_cpu / yardstick, "ratio_label": "x yardstick",
         "target": f"<= {EVENTS_TARGET_YARDSTICKS}x yardstick",
         "verdict": "PASS" if rg_cpu <= EVENTS_TARGET_YARDSTICKS * yardstick else "FALL SHORT"},
        {"metric": "consumer CPU ns per delivered event vs bcc's Python consumer", "runtimeguard": rg_cpu,
         "reference": bcc_cpu, "ratio": rg_cpu / bcc_cpu if bcc_cpu else None, "ratio_label": "x bcc",
         "target": f"bcc >= {BCC_TARGET_FACTOR:.0f}x runtimeguard",
         "verdict": "PASS" if bcc_factor is not None and bcc_factor >= BCC_TARGET_FACTOR else "FALL SHORT"},
        {"metric": "consumer CPU ns per delivered event, against the C libbpf reference", "runtimeguard": rg_cpu,
         "reference": ref_cpu, "ratio": rg_cpu / ref_cpu if ref_cpu else None, "target": None, "verdict": None},
        {"metric": "batch API (poll_batch: a numpy row per event): consumer CPU ns per delivered event",
         "runtimeguard": batch_cpu, "reference": yardstick, "ratio": batch_cpu / yardstick,
         "ratio_label": "x yardstick", "target": f"<= {BATCH_TARGET_YARDSTICKS}x yardstick",
         "verdict": "PASS" if batch_cpu <= BATCH_TARGET_YARDSTICKS * yardstick else "FALL SHORT"},
        {"metric": "every event read whole (ev.record(): data, workload, target): consumer CPU ns per event",
         "runtimeguard": records_cpu, "reference": yardstick, "ratio": records_cpu / yardstick,
         "ratio_label": "x yardstick", "target": None, "verdict": None},
        {"metric": f"exec path: Python CPU ns each exec adds (its fork and exit, and the process table, included): "
                   f"the slope of a poll's Python against its execs, over {len(exec_polls)} polls at the top rate "
                   f"and at {EXEC_SLOW_RATE}/s",
         "runtimeguard": exec_slope, "reference": None, "ratio": exec_slope / EXEC_TARGET_NS,
         "ratio_label": "x target", "target": f"<= {EXEC_TARGET_NS:,.0f} ns",
         "verdict": "PASS" if exec_slope <= EXEC_TARGET_NS else "FALL SHORT"},
        {"metric": "exec path: Python CPU ns per wake-up, whatever it brings (the same line's intercept)",
         "runtimeguard": exec_wake, "reference": None, "ratio": None, "target": None, "verdict": None},
        {"metric": f"exec path: Python CPU ns per delivered exec at the top rate, wake-ups included "
                   f"(the consumer's CPU less the native poll's; {execs_per_poll:.0f} execs a poll)",
         "runtimeguard": exec_python, "reference": None, "ratio": None, "target": None, "verdict": None},
        {"metric": "exec path: the whole consumer's CPU ns per delivered exec (native poll included), "
                   "against the C libbpf reference's",
         "runtimeguard": exec_cpu, "reference": exec_ref_cpu, "ratio": exec_cpu / exec_ref_cpu if exec_ref_cpu else None,
         "target": None, "verdict": None},
        {"metric": f"machine identity: BPF ns the environment scan adds per exec ({identity['env_bytes']:,}-byte "
                   f"environment, {len(IDENTITY_OPTIONS['identity_env'])} name patterns; kernel.bpf_stats_enabled), "
                   "against the untraced exec's wall time",
         "runtimeguard": identity_added, "reference": identity["untraced_ns"],
         "ratio": identity_added / identity["untraced_ns"], "ratio_label": "x untraced exec",
         "target": f"<= {IDENTITY_TARGET:.2f}x untraced exec",
         "verdict": "PASS" if identity_added <= IDENTITY_TARGET * identity["untraced_ns"] else "FALL SHORT"},
        {"metric": "consumer ceiling: events/s one core decodes at that cost", "runtimeguard": 1e9 / rg_cpu,
         "reference": 1e9 / ref_cpu if ref_cpu else None, "ratio": None, "target": None, "verdict": None},
        {"metric": "loss: highest offered events/s with zero loss, default ring", "runtimeguard": loss["best_zero_loss"],
         "reference": None, "ratio": loss["best_zero_loss"] / LOSS_TARGET_RATE, "ratio_label": "x target",
         "target": f">= {LOSS_TARGET_RATE:,}/s",
         "verdict": "PASS" if loss["best_zero_loss"] >= LOSS_TARGET_RATE else
                    "FALL SHORT" if any(st["lost"] for st in loss["steps"]) else
                    "NOT REACHED: the generator peaks below the target rate, and nothing was lost",
         "note": "lost at 2x: " + (", ".join(f"{st['lost']:,} of {st['calls']:,} at {st['rate']:,}/s" for st in over)
                                   or "not reached by the generator")},
        {"metric": f"latency p99 ms at {max(LATENCY_RATES):,} events/s (p50 {high['p50_ms'] or 0:.2f} ms; "
                   f"at {min(LATENCY_RATES):,}/s p99 {latency[min(LATENCY_RATES)]['p99_ms'] or 0:.2f} ms)",
         "runtimeguard": high["p99_ms"], "reference": None,
         "ratio": (high["p99_ms"] or 0) / latency_limit, "ratio_label": "x target",
         "target": f"< {latency_limit:.0f} ms ({LATENCY_TARGET_FACTOR:.0f}x the {DEFAULT_MAX_LATENCY_MS} ms bound)",
         "verdict": "PASS" if high["p99_ms"] is not None and high["p99_ms"] < latency_limit else "FALL SHORT"},
        {"metric": f"memory: RSS growth over {RSS_SECONDS:.0f} s at {RSS_RATE:,} events/s (peak {rss['peak_kib']:,} KiB)",
         "runtimeguard": None if rss["growth"] is None else rss["growth"] * 100, "reference": None,
         "ratio": None if rss["growth"] is None else abs(rss["growth"]) / RSS_TARGET_GROWTH, "ratio_label": "x target",
         "target": f"within {RSS_TARGET_GROWTH * 100:.0f} %",
         "verdict": "PASS" if rss["growth"] is not None and abs(rss["growth"]) <= RSS_TARGET_GROWTH else "FALL SHORT"},
    ]
    rows += file_guard_rows(file_guard)
    rows += calls
    rows += hostnames
    # The other loops, and the programs' run time, right after the openat row.
    at = 4
    for mode, times in prog_time.items():
        rows.insert(at, {"metric": f"BPF program time per {mode} (kernel.bpf_stats_enabled, one run each)",
                         "runtimeguard": times["runtimeguard"], "reference": times["reference"],
                         "ratio": times["runtimeguard"] / times["reference"] if times["reference"] else None,
                         "target": None, "verdict": None})
        at += 1
        if "snoop" in times:
            snoop, limit = times["snoop"], SNOOP_TARGETS[mode]
            ratio = times["runtimeguard"] / snoop if snoop else None
            rows.insert(at, {"metric": f"BPF program time per {mode}, against libbpf-tools' "
                                       f"{os.path.basename(SNOOPS[mode])} (one run each)",
                             "runtimeguard": times["runtimeguard"], "reference": snoop, "ratio": ratio,
                             "ratio_label": f"x {os.path.basename(SNOOPS[mode])}", "target": f"ratio <= {limit}",
                             "verdict": None if ratio is None else "PASS" if ratio <= limit else "FALL SHORT"})
            at += 1
    for at, (mode, runs) in enumerate(loops.items(), start=at):
        base_m = median(runs["untraced"], "ns_per_call")
        ref_m = median(runs["reference"], "ns_per_call") - base_m
        rg_m = median(runs["runtimeguard"], "ns_per_call") - base_m
        spread = max(r["ns_per_call"] for r in runs["untraced"]) - min(r["ns_per_call"] for r in runs["untraced"])
        what = "connect (TCP, loopback, with accept and close)" if mode == "connect" else "exec (spawn and wait)"
        rows.insert(at, {"metric": f"traced workload: added ns per {what}, untraced {base_m:,.0f} ns "
                                   f"(spread {spread:,.0f} ns)", "name": f"{mode} loop",
                         "runtimeguard": rg_m, "reference": ref_m,
                         "ratio": rg_m / ref_m if ref_m > spread and rg_m > spread else None,
                         "target": None, "verdict": None,
                         "note": None if ref_m > spread and rg_m > spread else
                         f"the added cost is within the untraced runs' spread ({spread:,.0f} ns): "
                         "too small to measure against the operation's own cost here"})

    print_table(rows)
    print(f"{CALLS:,} calls per run, {REPEATS} runs each, medians; generator on CPU {sorted(GEN_CPUS)}, "
          f"consumers on CPU {sorted(CONSUMER_CPUS)}; reference drains every {REF_DRAIN_MS} ms, "
          f"runtimeguard in its default configuration.")
    for r in rows:
        if r.get("note"):
            print(f"{r.get('name', r['metric'].split(':')[0])}: {r['note']}")
    for k, bad in incomplete.items():
        if bad:
            print(f"warning: {k} delivered {bad} events in some runs, expected {CALLS} "
                  f"(lost: {[r['lost'] for r in raw[k]]})")

    results = {
        "machine": {"kernel": platform.release(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "machine_speed_ns": yardstick,
        "config": {"calls": CALLS, "loop_calls": LOOP_CALLS, "repeats": REPEATS, "ref_drain_ms": REF_DRAIN_MS,
                   "generator_cpus": sorted(GEN_CPUS), "consumer_cpus": sorted(CONSUMER_CPUS)},
        "rows": rows,
        "raw": raw,
        "loops": loops,
        "bpf_program_ns": prog_time,
        "loss": loss,
        "latency": latency,
        "rss": rss,
        "file_guard": file_guard,
        "calls": calls,
        "seconds": time.monotonic() - started,
    }
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
        f.write("\n")
    print(f"written: {os.path.relpath(os.path.join(OUT, 'results.json'), ROOT)} ({results['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
