"""The hostname rules' benchmark, part of `make bench`; alone:
`python3 bench/run.py hostnames`.

Measured in one run, each against a reference taken in the same run
(bench/gen/dns.c, medians of REPEATS):
  1. what a connect costs: a UDP connect() (the cgroup connect hook runs,
     no packet leaves) with no guard, under a guard with CIDR rules only,
     and under the same guard with host rules too, the destination an
     observed answer for a name a glob matches;
  2. what the DNS answer path adds: a query and its answer over loopback
     (client and responder in one process), with no guard and under a
     guard that reads both (the query remembered at egress, the answer
     matched, its name hashed and matched, its address held at ingress).
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
GEN = os.path.join(ROOT, "build", "bench", "dns")
CONNECTS = int(os.environ.get("BENCH_HOST_CONNECTS", 200_000))
ROUND_TRIPS = int(os.environ.get("BENCH_DNS_ROUND_TRIPS", 20_000))
RULES = 16

CIDR_RULES = "\n".join(f"    - {{cidr: 10.{i}.0.0/16, ports: [22]}}" for i in range(RULES))
HOST_RULES = "\n".join(f"    - {{host: h{i}.example.test}}" for i in range(RULES - 1)) + \
    '\n    - {host: "*.allowed.test"}'


def _policy(hosts: bool):
    from runtimeguard.policy import Policy

    allow = f"  allow:\n{HOST_RULES}\n" if hosts else ""
    return Policy.from_text(f"""version: 1
mode: enforce
network:
  default: allow
  deny:
{CIDR_RULES}
{allow}  dns: {{servers: [127.0.0.153]}}
""")


def _run(mode: str, n: int, policy=None, cpus=None, programs=None) -> float:
    """The generator's ns per operation; programs: a dict to fill with the
    guard's BPF run time per program (ns, runs), read before it detaches."""
    argv = [GEN, mode, str(n)]
    if policy is None:
        out = subprocess.run(argv, capture_output=True, text=True, check=True,
                             preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None).stdout
        return float(out.split()[0])
    from runtimeguard.guard import Guard

    out_path = os.path.join(ROOT, "build", "bench", "dns.out")
    shell = f'exec "$0" "$@" > {out_path}'
    if cpus:
        shell = f"exec taskset -c {','.join(map(str, cpus))} \"$0\" \"$@\" > {out_path}"
    class Measured(Guard):
        def close(self):
            if programs is not None and self._tracer is not None and self._tracer.running:
                programs.update(self.program_stats())
            super().close()

    result = Measured(policy).run(["sh", "-c", shell, *argv])
    if result.exit_status != 0:
        raise RuntimeError(f"{argv} exited {result.exit_status} under the guard")
    with open(out_path) as f:
        return float(f.read().split()[0])


def measure(repeats: int, gen_cpus=None) -> dict:
    cidr, hosts = _policy(False), _policy(True)
    runs = {k: [] for k in ("connect, no guard", "connect, CIDR rules", "connect, CIDR and host rules",
                            "answer, no guard", "answer, guard")}
    for _ in range(repeats):
        runs["connect, no guard"].append(_run("connect", CONNECTS, cpus=gen_cpus))
        runs["connect, CIDR rules"].append(_run("connect", CONNECTS, cidr, gen_cpus))
        runs["connect, CIDR and host rules"].append(_run("connect", CONNECTS, hosts, gen_cpus))
        runs["answer, no guard"].append(_run("rt", ROUND_TRIPS, cpus=gen_cpus))
        runs["answer, guard"].append(_run("rt", ROUND_TRIPS, hosts, gen_cpus))
    # Where the answer path's time goes: the programs' own run time (the
    # kernel's BPF statistics, on for this one run).
    from runtimeguard._native import ffi, lib

    err = ffi.new("char[]", 512)
    fd = lib.rg_enable_bpf_stats(err, 512)
    programs: dict = {}
    try:
        if fd >= 0:
            _run("rt", ROUND_TRIPS, hosts, gen_cpus, programs)
    finally:
        if fd >= 0:
            os.close(fd)
    per_run = {name: t / n for name, (t, n) in programs.items() if n and name.startswith("rg_guard_dns")}
    return {k: statistics.median(v) for k, v in runs.items()} | {"raw": runs, "programs": per_run}


def hostname_rows(repeats: int, gen_cpus=None) -> list[dict]:
    m = measure(repeats, gen_cpus)
    base, cidr, hosts = m["connect, no guard"], m["connect, CIDR rules"], m["connect, CIDR and host rules"]
    rt, rt_guard = m["answer, no guard"], m["answer, guard"]
    programs = m["programs"]
    print(f"hostnames: connect {base:,.0f} ns unguarded, {cidr:,.0f} CIDR rules, {hosts:,.0f} with host rules; "
          f"DNS round trip {rt:,.0f} ns unguarded, {rt_guard:,.0f} guarded; programs per packet: " +
          ", ".join(f"{k} {v:,.0f} ns" for k, v in programs.items()), flush=True)
    none = dict(target=None, verdict=None)
    return [
        {"metric": f"hostname rules: a UDP connect(), no guard, ns ({CONNECTS:,} connects)", "runtimeguard": None,
         "reference": None, "value": base, "ratio": None, **none},
        {"metric": f"hostname rules: ns a connect gains under {RULES} CIDR rules, against no guard",
         "runtimeguard": cidr - base, "reference": base, "ratio": (cidr - base) / base,
         "ratio_label": "x unguarded connect", **none},
        {"metric": f"hostname rules: ns a connect gains under the same CIDR rules and {RULES} host rules (its "
                   "destination answered for a name a glob matches), against CIDR rules only",
         "runtimeguard": hosts - cidr, "reference": cidr, "ratio": hosts / cidr,
         "ratio_label": "x CIDR-only connect", **none},
        {"metric": f"hostname rules: a DNS query and its answer over loopback, ns added by the guard reading both, "
                   f"against no guard ({ROUND_TRIPS:,} round trips)",
         "runtimeguard": rt_guard - rt, "reference": rt, "ratio": rt_guard / rt,
         "ratio_label": "x unguarded round trip", **none,
         "note": "the programs' own time per packet (every packet of the scope passes both; a query and an "
                 "answer are parsed): " + ", ".join(f"{k} {v:,.0f} ns" for k, v in programs.items()) +
                 "; the rest is the dns_answer record per answer: its wake-up and the consumer's decoding "
                 "on a 2-CPU machine"},
    ]


if __name__ == "__main__":
    for row in hostname_rows(3, {0}):
        print(row)
