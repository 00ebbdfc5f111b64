"""The function probes' benchmark (runtimeguard.calls), part of `make bench`;
alone: `python3 bench/run.py calls`.

Measured, each against a reference taken in the same run:
  1. ns a probed function's call costs its caller: the same C loop
     (bench/gen/calls.c) unprobed, then with an entry probe, an entry and a
     return probe, and an entry probe that captures the user stack (calls
     counted in the kernel, no record per call);
  2. at 1 M calls/s offered, counting in the kernel against a record per
     call: the consumer's CPU per call, what the workload kept of its rate,
     and what was lost;
  3. symbolizing a stack the kernel stored as build ids: per unique stack,
     cold (files read) and cached.
"""
from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
GEN = os.path.join(ROOT, "build", "bench", "calls")
LOOP_CALLS = int(os.environ.get("BENCH_PROBE_CALLS", 300_000))
PACED_CALLS = int(os.environ.get("BENCH_PACED_CALLS", 2_000_000))
PACED_RATE = 1_000_000
STACK_DEPTH = 30


def _gen(*args: str, cpus=None) -> float:
    """Runs the workload; its mean wall ns per call."""
    out = subprocess.run([GEN, *args], capture_output=True, text=True, check=True,
                         preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None).stdout
    return float(out.split()[0])


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def probe_cost(repeats: int, gen_cpus) -> dict:
    from runtimeguard.calls import CallTracer

    variants = {"entry": {"stacks": False}, "entry + return": {"stacks": False, "returns": True},
                "entry, with stack": {"stacks": True}}
    runs = {"untraced": [], **{k: [] for k in variants}}
    for _ in range(repeats):
        runs["untraced"].append(_gen("loop", str(LOOP_CALLS), cpus=gen_cpus))
        for name, options in variants.items():
            with CallTracer([f"{GEN}:probed"], records=False, **options) as tracer:
                runs[name].append(_gen("loop", str(LOOP_CALLS), cpus=gen_cpus))
                counted = sum(p.count for p in tracer.call_paths())
            expected = LOOP_CALLS * (2 if options.get("returns") else 1)
            if counted != expected:
                print(f"warning: calls {name}: counted {counted:,}, expected {expected:,}")
    return {k: statistics.median(v) for k, v in runs.items()} | {"raw": runs}


def aggregation_against_records(gen_cpus) -> dict:
    from runtimeguard.calls import CallTracer

    out = {}
    for name, records in (("kernel counts", False), ("a record per call", True)):
        tracer = CallTracer([f"{GEN}:probed"], records=records, rate=0, stacks=True).start()
        try:
            cpu0, wall0 = _cpu_s(), time.monotonic()
            proc = subprocess.Popen([GEN, "paced", str(PACED_CALLS), str(PACED_RATE)], stdout=subprocess.PIPE,
                                    text=True, preexec_fn=lambda: os.sched_setaffinity(0, gen_cpus))
            delivered = 0
            while proc.poll() is None:
                delivered += len(tracer.poll(0.05)) if records else 0
                if not records:
                    time.sleep(0.05)
            while records:
                got = tracer.poll(0.1)
                if not got:
                    break
                delivered += len(got)
            ns_per_call = float(proc.stdout.read().split()[0])
            counted = sum(p.count for p in tracer.call_paths())
            cpu = _cpu_s() - cpu0
            stats = tracer.statistics()
            out[name] = {"consumer_cpu_ns_per_call": cpu * 1e9 / PACED_CALLS, "workload_ns_per_call": ns_per_call,
                         "counted": counted, "records": delivered, "lost": stats.lost,
                         "probe_ns_per_call": stats.probe_run_time_ns / max(1, stats.probe_runs),
                         "seconds": time.monotonic() - wall0}
        finally:
            tracer.close()
        print(f"calls at {PACED_RATE:,}/s offered, {name}: consumer {out[name]['consumer_cpu_ns_per_call']:.0f} ns "
              f"CPU per call, workload {out[name]['workload_ns_per_call']:.0f} ns per call, counted "
              f"{counted:,}/{PACED_CALLS:,}, records {delivered:,}, lost {stats.lost:,}", flush=True)
    return out


def symbolization() -> dict:
    """Per unique stack: symbolized with empty caches (the files read), then again."""
    from runtimeguard._native import ffi, lib
    from runtimeguard.calls import CallTracer
    from runtimeguard.calls.symbols import BuildIdIndex, ElfCache, ElfFile, MapsSnapshot, Symbolizer
    from runtimeguard.errors import RuntimeGuardError

    tracer = CallTracer([f"{GEN}:probed"], records=False).start()
    try:
        _gen("stacks", str(STACK_DEPTH * 10), str(STACK_DEPTH))
        keys = ffi.new("struct rg_call_path_key[]", 1024)
        counts = ffi.new("struct rg_call_path_count[]", 1024)
        n = tracer.tracer._native_call(lib.rg_tracer_call_paths, keys, counts, 1024)
        stacks = []
        frames = ffi.new("struct rg_stack_frame[]", lib.RG_CALL_STACK_DEPTH)
        for i in range(n):
            m = tracer.tracer._native_call(lib.rg_tracer_call_stack, keys[i].stack_id, frames,
                                           lib.RG_CALL_STACK_DEPTH)
            stacks.append([(bytes(frames[j].build_id).hex(), frames[j].offset_or_ip) for j in range(m)
                           if frames[j].status == 1])
    finally:
        tracer.close()
    # Cold: the build ids' files are known (as the probes' and the mapping
    # snapshots' are) but none is read yet.
    index = BuildIdIndex()
    for path in {GEN, *MapsSnapshot.read(os.getpid()).paths}:
        try:
            build_id = ElfFile.open(path).build_id
        except (OSError, RuntimeGuardError):
            continue
        if build_id:
            index.add(build_id, path)
    symbolizer = Symbolizer(ElfCache(index=index))

    def once() -> float:
        start = time.perf_counter_ns()
        for stack in stacks:
            for i, (build_id, offset) in enumerate(stack):
                symbolizer.frame_from_build_id(build_id, offset, is_return_address=i > 0)
        return (time.perf_counter_ns() - start) / len(stacks)

    cold = once()
    named = sum(symbolizer.frame_from_build_id(b, o, is_return_address=i > 0).symbol is not None
                for stack in stacks for i, (b, o) in enumerate(stack))
    cached = statistics.median(once() for _ in range(5))
    frames_per_stack = statistics.mean(len(s) for s in stacks)
    print(f"symbolization: {named} of {sum(map(len, stacks))} frames named; "
          f"{len(stacks)} unique stacks of {frames_per_stack:.0f} frames: cold {cold / 1000:,.0f} µs, "
          f"cached {cached / 1000:,.1f} µs per stack", flush=True)
    return {"stacks": len(stacks), "frames_per_stack": frames_per_stack, "cold_ns": cold, "cached_ns": cached}


def call_rows(repeats: int, gen_cpus) -> list[dict]:
    cost = probe_cost(repeats, gen_cpus)
    base = cost["untraced"]
    print(f"probed function: untraced {base:.1f} ns/call; added: " + ", ".join(
        f"{k} {cost[k] - base:,.0f} ns" for k in ("entry", "entry + return", "entry, with stack")), flush=True)
    paced = aggregation_against_records(gen_cpus)
    sym = symbolization()
    counts, records = paced["kernel counts"], paced["a record per call"]
    rows = [{"metric": f"function probes: a C loop's call, unprobed, ns/call ({LOOP_CALLS:,} calls)",
             "runtimeguard": None, "reference": None, "value": base, "ratio": None, "target": None,
             "verdict": None}]
    for name in ("entry", "entry + return", "entry, with stack"):
        rows.append({"metric": f"function probes: ns a call gains, {name} probe (calls counted in the kernel), "
                               "against the unprobed call",
                     "runtimeguard": cost[name] - base, "reference": base, "ratio": (cost[name] - base) / base,
                     "ratio_label": "x unprobed call", "target": None, "verdict": None})
    rows.append({"metric": f"function probes at {PACED_RATE:,} calls/s offered: consumer CPU ns per call, a record "
                           "per call against counting in the kernel",
                 "runtimeguard": records["consumer_cpu_ns_per_call"], "reference": counts["consumer_cpu_ns_per_call"],
                 "ratio": records["consumer_cpu_ns_per_call"] / max(1e-9, counts["consumer_cpu_ns_per_call"]),
                 "ratio_label": "x counting", "target": None, "verdict": None,
                 "note": f"counting: {counts['counted']:,} of {PACED_CALLS:,} calls counted, workload at "
                         f"{counts['workload_ns_per_call']:.0f} ns/call; records: {records['records']:,} sent, "
                         f"{records['lost']:,} lost, workload at {records['workload_ns_per_call']:.0f} ns/call"})
    rows.append({"metric": f"symbolizing a stored stack ({sym['frames_per_stack']:.0f} frames, build ids): "
                           "µs per unique stack, cached against cold",
                 "runtimeguard": sym["cached_ns"] / 1000, "reference": sym["cold_ns"] / 1000,
                 "ratio": sym["cached_ns"] / sym["cold_ns"], "ratio_label": "x cold", "target": None,
                 "verdict": None})
    return rows
