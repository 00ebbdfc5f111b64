#!/usr/bin/env python3
"""Mutation checks: does the test suite notice when the product is broken?

Each entry of MUTATIONS is one small, deliberate bug: a file, the exact
original text (it must occur exactly once in that file, else the mutation is
*stale* and has to be rewritten against the current code), its replacement,
and the tests that are meant to catch it.

For each selected mutation, in sequence (builds and kernel tests do not
share a 2-core machine well):

  1. a copy of a snapshot of the working tree (tracked and untracked files,
     uncommitted changes included, plus build/deps so libbpf & co. are not
     rebuilt from source), built once unmutated,
  2. the mutation applied to the copy,
  3. `python3 setup.py -q build_ext --inplace` there (BPF objects,
     skeletons, the cffi extension; only what the mutation touched is redone),
  4. `python3 -m pytest -q -x -p no:cacheprovider <tests>` there,
  5. the copy removed (unless --keep).

Outcomes: caught (a test failed, or the process died in it, and the catch
was confirmed: that test fails again on the mutant and passes on the
unmutated tree), survived (the
tests passed), broken (the mutated tree did not build: neither, the
mutation needs fixing), stale (the original text is not in the file exactly
once), and the inconclusive ones: flaky (every failure seen was
unconfirmed; each is set aside, --deselect, and the rest run again, up to
--max-flaky times), timeout, error (pytest could not run the tests, or none
matched), and escaped (the tests imported runtimeguard from somewhere else
than the copy). Confirming matters on a shared machine: some tests look at
global state (the cgroup root's entries, programs loaded on the host) that
another test run changes under them.

Nothing is written to the checkout the script lives in: the snapshot, the
copies, the builds, pytest's temporary files and the Hypothesis database are
all under one temporary directory. The guest kernel for the BPF LSM tests is
cached outside it (--vm-cache; seeded from the checkout's build/vm when that
exists), so it is downloaded once, not once per mutation.

    scripts/mutate.py --list                   # the table
    scripts/mutate.py --check                  # does every mutation still apply? (no build; all of them)
    scripts/mutate.py net-port-hi-ignored 6    # by name or number
    scripts/mutate.py --all                    # everything, the LSM one included (long)
    scripts/mutate.py --baseline 1 2           # first check that the unmutated tree passes those tests

Exit status: 0 when every mutation run was caught; 1 when one survived or
was stale; 3 when none did but some were broken or inconclusive; 2 on a
usage error.
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
# A test spec is a path, a node id (path::name...) or a glob; a glob that
# matches nothing is skipped (a test file another branch has not added yet).
NETWORK_TESTS = ("tests/test_guard.py", "tests/test_net_matcher.py", "tests/*network*.py", "tests/*matcher*.py")
GUARD_TESTS = ("tests/test_guard.py", "tests/test_guard_options.py")


@dataclasses.dataclass(frozen=True)
class Mutation:
    name: str
    file: str
    original: str
    """Exact text; may span neighbouring lines when the changed line alone is not unique."""
    replacement: str
    tests: tuple[str, ...]
    what: str
    slow: bool = False
    """Left out of a run with no names unless --all (boots a VM for minutes)."""


MUTATIONS: tuple[Mutation, ...] = (
    Mutation(
        "ipv4-bytes-reversed", "csrc/encode.c",
        "\tinet_ntop(family == AF_INET6 ? AF_INET6 : AF_INET, addr, text, sizeof(text));",
        "\tif (family != AF_INET6) { unsigned char r4[4] = { addr[3], addr[2], addr[1], addr[0] }; "
        "inet_ntop(AF_INET, r4, text, sizeof(text)); } else inet_ntop(AF_INET6, addr, text, sizeof(text));",
        ("tests/test_encoder.py", "tests/test_guard.py"),
        "an IPv4 address's bytes are reversed before formatting (127.0.0.2 -> 2.0.0.127)"),
    Mutation(
        "net-port-hi-ignored", "bpf/guard.bpf.c",
        "if (m->port < r->port_lo || m->port > r->port_hi)",
        "if (m->port < r->port_lo)",
        NETWORK_TESTS,
        "the kernel's network matcher ignores a rule's upper port bound"),
    Mutation(
        "dns-answer-for-another-name-counted", "bpf/dns.bpf.h",
        "if (!q || q->name_hash != st->hash || q->qtype != qtype) {",
        "if (!q || q->qtype != qtype) {",
        ("tests/test_guard_hostnames.py::test_an_answer_for_another_name_opens_nothing",),
        "an answer counts for a query of another name (the question is not checked against the query)"),
    Mutation(
        "dns-untrusted-server-counted", "bpf/dns.bpf.h",
        "if (!rg_dns_trusted(p.server, p.family))",
        "if (0 && !rg_dns_trusted(p.server, p.family))",
        ("tests/test_guard_hostnames.py::test_an_answer_from_an_untrusted_server_opens_nothing",),
        "answers from any server count, not only network.dns.servers'"),
    Mutation(
        "host-exact-name-not-looked-up", "bpf/dns.bpf.h",
        "\trg_dns_note_hit(st, st->hash, 0, 0);",
        "\t(void)0; /* mutated: the whole name is not looked up */",
        ("tests/test_guard_hostnames.py::test_allowed_name_connects_first_time_and_others_are_refused",
         "tests/test_host_matcher.py"),
        "a name matches globs only, never an exact host rule"),
    Mutation(
        "taint-not-inherited-on-fork", "bpf/guard.bpf.c",
        "\t\tbpf_map_update_elem(&rg_tainted, &ctgid, &one, BPF_ANY);",
        "\t\t(void)one; /* mutated: the child is not tainted */",
        GUARD_TESTS,
        "a tainted process's children, forked later, are not tainted"),
    Mutation(
        "audit-refuses-denied-connect", "bpf/guard.bpf.c",
        # The return line alone is in three programs: the next one's SEC() pins rg_egress's.
        "\treturn action == RG_ACTION_BLOCKED ? 0 : 1;\n}\n\nSEC(\"cgroup/connect4\")",
        "\treturn 0; /* mutated: refused in audit mode too */\n}\n\nSEC(\"cgroup/connect4\")",
        NETWORK_TESTS,
        "audit mode refuses a denied connect or send (EPERM) instead of only reporting it"),
    Mutation(
        "lost-notice-never-emitted", "csrc/ring.c",
        "\t\tcheck_lost(t);",
        "\t\t(void)check_lost; /* mutated */",
        ("tests/test_tracer.py",),
        "the `lost` notice is never put in the stream (records are still counted lost)"),
    Mutation(
        "tracepoint-no-sigkill", "bpf/guard.bpf.c",
        "\t\tbpf_send_signal(SIGKILL);",
        "\t\t(void)SIGKILL; /* mutated: reported as killed, never sent */",
        GUARD_TESTS,
        "the tracepoint backend reports `killed` but never sends SIGKILL"),
    Mutation(
        "net-protocol-ignored", "bpf/guard.bpf.c",
        "\tif (r->protocol && r->protocol != m->protocol)",
        "\tif (0 && r->protocol != m->protocol) /* mutated */",
        NETWORK_TESTS,
        "the kernel's network matcher ignores a rule's protocol (tcp/udp)"),
    Mutation(
        "net-default-deny-ignored", "bpf/guard.bpf.c",
        "\t\t\tdenied = cfg->net_default_deny;",
        "\t\t\tdenied = 0; /* mutated */",
        NETWORK_TESTS,
        "`network.default: deny` is ignored: what no rule matches is allowed"),
    Mutation(
        "path-truncated-off-by-one", "bpf/file.bpf.c",
        # Against the line as fixed for the exact boundary (256 bytes of room,
        # the NUL included: a path of 255 bytes fits, 256 is cut); the
        # mutation is the bug that fix removed.
        "\te->path_truncated = rg_user_str_cut(n, RG_PATH_LEN, path);",
        "\te->path_truncated = n == RG_PATH_LEN; /* mutated */",
        ("tests/test_events.py", "tests/test_tracer.py", "tests/test_encoder.py", "tests/test_*truncat*.py"),
        "file_open's path_truncated off by one: a path of exactly 255 bytes (it fits) is marked truncated"),
    Mutation(
        "ptrace-deny-reported-as-network-default", "runtimeguard/guard.py",
        '            return "ptrace.deny"',
        '            return "network.default"  # mutated',
        ("tests/test_encoder.py", "tests/test_guard.py", "tests/test_audit.py"),
        "the blanket ptrace.deny is named rule `network.default` in events and the audit log"),
    Mutation(
        "detected-not-prevented-default-flipped", "runtimeguard/schema.py",
        "    detected_not_prevented: bool = True",
        "    detected_not_prevented: bool = False  # mutated",
        ("tests/test_schema.py", "tests/test_encoder.py", "tests/test_audit.py"),
        "protected_file_changed's detected_not_prevented defaults to false (schema-level tests only)"),
    Mutation(
        "lsm-file-open-not-refused", "bpf/guard.bpf.c",
        "\treturn rg_lsm_verdict(rg_judge_open(file, true));",
        "\trg_judge_open(file, true); return 0; /* mutated: reported blocked, not refused */",
        ("tests/test_guard_lsm.py",),
        "the LSM file_open hook reports `blocked` but lets the open through (boots a VM: ~4 min)",
        slow=True),
    # ---- more, cheap ----
    Mutation(
        "ipv4-mapped-v6-not-unwrapped", "bpf/guard.bpf.c",
        "\t\tif (w0 == 0 && w1 == 0 && w2 == bpf_htonl(0xffff)) {",
        "\t\tif (0) { /* mutated */",
        NETWORK_TESTS,
        "a connect to ::ffff:a.b.c.d is matched as IPv6, escaping the IPv4 rules"),
    Mutation(
        "mirage-kill-flag-ignored", "bpf/guard.bpf.c",
        "\tbool act = v->kind == RG_PROTECT_MIRAGE ? cfg->mirage_kill : cfg->file_kill;",
        "\tbool act = cfg->file_kill; /* mutated: decoys follow files.action */",
        GUARD_TESTS,
        "mirage.kill is ignored: a decoy's opener is treated per files.action"),
    Mutation(
        "protected-file-taint-not-set", "bpf/guard.bpf.c",
        "\tif ((cfg->taint_from & (1U << v->kind)) && action != RG_ACTION_BLOCKED) {",
        "\tif ((cfg->taint_from & (1U << v->kind)) && v->kind != RG_PROTECT_FILE && action != RG_ACTION_BLOCKED) {",
        GUARD_TESTS,
        "opening a protected file (taint.from: files) does not taint; decoys still do"),
    Mutation(
        "exec-filename-truncated-off-by-one", "bpf/process.bpf.c",
        "\te->filename_truncated = rg_kernel_str_cut(n, sizeof(e->filename), filename);",
        "\te->filename_truncated = n == sizeof(e->filename); /* mutated */",
        ("tests/test_events.py", "tests/test_*truncat*.py", "tests/test_tracer.py"),
        "process_exec's executable_truncated off by one: a 255-byte executable path is marked truncated"),
    Mutation(
        "own-memory-access-judged", "bpf/guard.bpf.c",
        "\tif (tgid == cfg->guard_tgid || target == tgid)",
        "\tif (tgid == cfg->guard_tgid) /* mutated */",
        GUARD_TESTS,
        "a process reading its own /proc/self/mem or environ is judged as ptrace"),
    Mutation(
        "protect-pids-judge-the-whole-host", "bpf/guard.bpf.c",
        "\tif (!guarded || (!cfg->ptrace_deny && !protected_rule))",
        "\tif (!(guarded && cfg->ptrace_deny) && !protected_rule) /* mutated */",
        GUARD_TESTS,
        "ptrace.protect_pids also stops processes outside the guard's scope"),
    Mutation(
        "guard-drops-lost-notices", "runtimeguard/guard.py",
        '            if name == "lost":',
        '            if name == "lost-never":  # mutated',
        ("tests/test_guard_audit.py",),
        "the guard drops the ring buffer's lost notices: a decision the kernel could not report leaves no trace"),
    Mutation(
        "credentials-from-the-exec", "runtimeguard/processes.py",
        "        uid, euid, gid, comm = seen\n        changes = {}",
        "        uid, euid, gid, comm = seen\n        return None  # mutated\n        changes = {}",
        ("tests/test_processes.py", "tests/test_event_model.py"),
        "the process record keeps the exec's credentials and name after a setuid() or a rename"),
    Mutation(
        "ns-pid-of-the-host", "bpf/common.bpf.h",
        "\tlevel &= 31;",
        "\tlevel = 0; /* mutated */",
        ("tests/test_event_model.py",),
        "the pid namespace fields name the host's pid and namespace, not the process's own"),
    Mutation(
        "path-walk-stops-at-a-mount", "bpf/common.bpf.h",
        "\t\t\t/* Up through the mount point, into the mount beneath. */\n",
        "\t\t\twhole = true; /* mutated */\n\t\t\tbreak;\n",
        ("tests/test_resolved_paths.py",),
        "a resolved path ends at the first mount point, as if that were the root"),
    Mutation(
        "fileless-never-flagged", "bpf/common.bpf.h",
        "\t*unlinked = !BPF_CORE_READ(dentry, d_hash.pprev) && dentry != mnt_root;",
        "\t*unlinked = 0; /* mutated */",
        ("tests/test_resolved_paths.py",),
        "a memfd or deleted executable is not flagged fileless"),
    Mutation(
        "process-answer-outlives-an-exec", "csrc/proctable.c",
        "\t__atomic_add_fetch(&pt->generation, 1, __ATOMIC_RELEASE);\n\tmemmove(",
        "\t/* mutated: the generation never moves */\n\tmemmove(",
        ("tests/test_processes.py",),
        "a workload answered before an exec is still given for events after it"),
    Mutation(
        "process-deletion-leaves-a-hole", "csrc/proctable.c",
        "\tBACKWARD_SHIFT(pt, i, pt->slots[j_], hash64(pt->slots[j_]->entity), pt->slots[hole_] = pt->slots[j_],\n"
        "\t\t       pt->slots[j_] = NULL);",
        "\tpt->slots[i] = NULL; /* mutated: no backward shift */",
        ("tests/test_proctable.py",),
        "forgetting a process cuts the probe chain: processes learned after it in the chain are lost"),
    Mutation(
        "table-entries-unbounded", "csrc/ring.c",
        "\tif (t->out.count >= t->opts.batch_limit || t->out.table_count >= t->opts.batch_limit ||",
        "\tif (t->out.count >= t->opts.batch_limit || /* mutated */",
        ("tests/test_event_model.py",),
        "a batch of forks and exits nobody asked for writes past the table entries' buffer"),
    Mutation(
        "full-batch-drained-again", "csrc/ring.c",
        "\t\t\tif (t->out.count || t->backlog)",
        "\t\t\tif (t->out.count) /* mutated */",
        ("tests/test_event_model.py",),
        "a batch filled by table entries alone is drained into again, past its buffer"),
    Mutation(
        "strangers-never-met", "csrc/proctable.c",
        "\tnote_parent(pt, e->parent_pid, e->parent_entity_id);",
        "\t/* mutated: parents that predate the tracer are not reported */",
        ("tests/test_event_model.py",),
        "a parent that predates the tracer and exits before its child's event is read goes unnamed"),
    Mutation(
        "exited-ancestors-not-parked", "csrc/proctable.c",
        "\t\tif (p && p->children)\n\t\t\tp->parked = 1;",
        "\t\tif (0 && p && p->children) /* mutated */\n\t\t\tp->parked = 1;",
        ("tests/test_proctable.py",),
        "an exited ancestor of a live process is forgotten with the other exited processes"),
    Mutation(
        "identity-suffix-never-looked-up", "bpf/process.bpf.c",
        "\t\t\tif (s->suffix_lengths)\n",
        "\t\t\tif (0 && s->suffix_lengths) /* mutated */\n",
        ("tests/test_identity.py",),
        "environment names are not matched by suffix patterns"),
    Mutation(
        "resolved-path-copied-short", "bpf/file.bpf.c",
        "\t\t__u32 len = RG_PATH_LEN - 1 - start;",
        "\t\t__u32 len = RG_PATH_LEN - 2 - start; /* mutated */",
        ("tests/test_resolved_paths.py",),
        "the resolved path loses its last byte on the way into the record"),
    Mutation(
        "non-socket-protocol-left-stale", "bpf/net.bpf.c",
        "\te->protocol = e->sock_type = 0; /* unknown unless the descriptor is a socket */",
        "\t/* mutated: protocol left as the ring buffer had it */",
        ("tests/test_record_fields.py",),
        "a connect on a descriptor that is no socket reports whatever bytes the ring held as its protocol"),
    Mutation(
        "tainted-sockets-not-destroyed", "bpf/sockdestroy.bpf.c",
        "\tif (bpf_sock_destroy(skc) == 0)",
        "\tif (0 && bpf_sock_destroy(skc) == 0) /* mutated */",
        ("tests/test_guard_sockets.py",),
        "the guard detaches with a tainted socket's dropped data still queued: TCP delivers it afterwards"),
    Mutation(
        "exited-owner-untainted", "bpf/guard.bpf.c",
        "\t\t\tbpf_map_update_elem(&rg_tainted_gone, &tgid, &one, BPF_ANY);",
        "\t\t\t(void)one; /* mutated: forgotten at exit */",
        ("tests/test_guard_sockets.py",),
        "a tainted process's taint is forgotten when it exits: its socket's data queued then is sent"),
    Mutation(
        "segments-without-data-dropped", "bpf/guard.bpf.c",
        "\treturn skb->len == off + (tcp[12] >> 4) * 4;",
        "\treturn false; /* mutated: acknowledgements and FINs dropped with the data */",
        ("tests/test_guard_sockets.py",),
        "a tainted process's acknowledgements are dropped: it can no longer receive on a socket connected before"),
    Mutation(
        "clone-thread-exemption-removed", "bpf/guard.bpf.c",
        "\tif ((flags & (CLONE_FILES | CLONE_THREAD)) != CLONE_FILES)",
        "\tif (!(flags & CLONE_FILES)) /* mutated: threads judged too */",
        ("tests/test_guard.py::test_threads_and_plain_forks_are_never_judged_as_sharing",),
        "starting a thread (CLONE_THREAD | CLONE_FILES) is refused as a process sharing the descriptor table"),
    Mutation(
        "clone3-flags-unread", "bpf/guard.bpf.c",
        "\trg_judge_clone_files(flags, false);\n\tif (flags & RG_CLONE_NEW_ANY)\n\t\trg_judge_namespace(RG_NS_CLONE3",
        "\t(void)flags; /* mutated: clone3 never judged */\n\tif (flags & RG_CLONE_NEW_ANY)\n\t\trg_judge_namespace(RG_NS_CLONE3",
        ("tests/test_guard.py::test_a_process_sharing_the_descriptor_table_is_never_created",),
        "clone3 with CLONE_FILES creates a process sharing the caller's descriptor table unjudged"),
    Mutation(
        "unshare-never-judged", "bpf/guard.bpf.c",
        "\t\trg_judge_namespace(RG_NS_UNSHARE, ctx->args[0] & RG_CLONE_NEW_ANY, false);",
        "\t\t(void)0; /* mutated */",
        ("tests/test_guard_namespaces.py",),
        "unshare(CLONE_NEW*) by a guarded process goes unjudged"),
    Mutation(
        "namespace-allow-list-ignored", "runtimeguard/guard.py",
        "for kind, bit in _NAMESPACE_FLAGS.items() if kind not in allowed)",
        "for kind, bit in _NAMESPACE_FLAGS.items())  # mutated",
        ("tests/test_guard_namespaces.py",),
        "namespaces.allow is ignored: every kind is denied"),
    Mutation(
        "fanotify-judge-never-denies", "csrc/filejudge.c",
        "\tif (action == RG_ACTION_BLOCKED)\n\t\tresp->response = FAN_DENY;",
        "\t(void)0; /* mutated: reported blocked, allowed */",
        ("tests/test_guard_files.py",),
        "the fanotify judge reports `blocked` but lets the open through"),
    Mutation(
        "fanotify-judge-ignores-scope", "csrc/filejudge.c",
        "\tif (opener_in_scope(j, pid, &cfg, &cgroup_id) != 1)\n\t\treturn 0;",
        "\topener_in_scope(j, pid, &cfg, &cgroup_id); /* mutated: every opener judged */",
        ("tests/test_guard_files.py",),
        "the fanotify judge refuses processes outside the guard's scope"),
    Mutation(
        "fanotify-judge-taints-nothing", "csrc/filejudge.c",
        "\t\tbpf_map_update_elem(j->tainted_fd, &pid, &one, BPF_ANY);",
        "\t\t(void)one; /* mutated: no taint */",
        GUARD_TESTS,
        "a decoy opened under the fanotify backend does not taint its reader"),
    Mutation(
        "fanotify-reads-reported-each-time", "csrc/filejudge.c",
        "\tif (!change && (m->mask & (FAN_ACCESS_PERM | FAN_PRE_ACCESS))) {",
        "\tif (0) { /* mutated: every read reported */",
        ("tests/test_guard_files.py",),
        "each read of a protected file is reported, not each process's first access"),
    Mutation(
        "new-directories-not-marked", "csrc/filejudge.c",
        "\t\tmark_new_directory(j, info);",
        "\t\t(void)info; /* mutated */",
        ("tests/test_guard_files.py",),
        "a directory made beneath a protected one while the guard runs is not protected"),
    Mutation(
        "mapped-network-rule-left-ipv6", "csrc/guardmaps.c",
        "\tif (a.mapped && prefix_len >= 96) {",
        "\tif (0 && a.mapped && prefix_len >= 96) { /* mutated */",
        ("tests/test_guard_maps.py",),
        "a rule for ::ffff:a.b.c.d/N is written as an IPv6 network, which connects to a.b.c.d never match"),
    Mutation(
        "judged-decisions-after-the-ring", "csrc/ring.c",
        "\t\ttake_judged_until(t, ((const struct rg_header *)data)->timestamp_ns);",
        "\t\t(void)0; /* mutated: the judge's decisions come after the ring's records */",
        GUARD_TESTS,
        "a decoy's open comes after the sends it tainted in the stream"),
)


# ---------------------------------------------------------------- helpers

def log(msg: str) -> None:
    print(f"[mutate {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def occurrences(root: Path, m: Mutation) -> int:
    try:
        return (root / m.file).read_text().count(m.original)
    except FileNotFoundError:
        return -1


def stale_reason(root: Path, m: Mutation) -> Optional[str]:
    n = occurrences(root, m)
    if n == 1:
        return None
    if n < 0:
        return f"{m.file} does not exist"
    return f"the original text occurs {n} times in {m.file} (must be exactly once)"


def snapshot(dest: Path, vm_dir: Optional[Path]) -> None:
    """The working tree as it is now: every tracked file that exists, every
    untracked file not ignored, plus build/deps (prebuilt static libbpf,
    libelf, zlib: rebuilding them means downloading their sources)."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for rel in sorted(set(filter(None, listed))):
        src = REPO / rel
        if not src.exists() and not src.is_symlink():
            continue  # deleted in the working tree, not yet in the index
        if src.is_dir() and not src.is_symlink():
            continue  # a submodule or nested repository
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest / rel, follow_symlinks=False)
    deps = REPO / "build" / "deps"
    if (deps / "lib" / "libbpf.a").exists():
        shutil.copytree(deps, dest / "build" / "deps", symlinks=True)
    if vm_dir is not None:
        # tests/kernelvm.py keeps the guest kernel in <root>/build/vm: shared by every copy.
        (dest / "build").mkdir(exist_ok=True)
        os.symlink(vm_dir, dest / "build" / "vm")
    # Reports which runtimeguard the tests imported (see run_tests).
    (dest / "_rg_mutate_probe.py").write_text(PROBE)


def _test_cgroups() -> str:
    """Where the tests make their cgroups (their fixtures name them
    rg-test-<hex>, at the top of the cgroup v2 hierarchy)."""
    with open("/proc/self/mounts") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 2 and fields[2] == "cgroup2":
                return os.path.join(fields[1], "rg-test-*")
    return "/nonexistent/rg-test-*"


TEST_CGROUPS = _test_cgroups()

PROBE = '''"""pytest plugin written by scripts/mutate.py: which runtimeguard the tests
imported, and which tests (or test files, at collection) failed."""
import json, os, sys

_failed = []


def _note(report):
    if report.failed and report.nodeid not in _failed:
        _failed.append(report.nodeid)


pytest_runtest_logreport = pytest_collectreport = _note


def pytest_runtest_logstart(nodeid, location):
    # Written before each test: if the process dies in it (a crash in native
    # code), the test it died in is known.
    with open(os.environ["RG_MUTATE_PROBE_OUT"] + ".running", "w") as f:
        f.write(nodeid)


def pytest_sessionfinish(session, exitstatus):
    mods = {name: getattr(sys.modules.get(name), "__file__", None) for name in ("runtimeguard", "runtimeguard._native")}
    with open(os.environ["RG_MUTATE_PROBE_OUT"], "w") as f:
        json.dump({"modules": mods, "failed": _failed}, f)
'''


def prepare_vm_cache(cache: Path) -> None:
    cache.mkdir(parents=True, exist_ok=True)
    seed = REPO / "build" / "vm"
    if not (cache / "kernel-release").exists() and (seed / "kernel-release").exists():
        log(f"seeding the VM cache {cache} from {seed}")
        for item in seed.iterdir():
            if item.name.startswith(("script-", "console-", "download-", ".lock")):
                continue
            target = cache / item.name
            if item.is_dir():
                shutil.copytree(item, target, dirs_exist_ok=True)
            else:
                shutil.copy2(item, target)


def child_env(root: Path) -> dict:
    env = dict(os.environ)
    env.update(PYTHONDONTWRITEBYTECODE="1", HYPOTHESIS_STORAGE_DIRECTORY=str(root / ".hypothesis"),
               RG_MUTATE_PROBE_OUT=str(root / ".mutate-probe.json"))
    # Anything that could point Python at another checkout.
    for var in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTEST_ADDOPTS", "PYTEST_PLUGINS"):
        env.pop(var, None)
    return env


def run_logged(argv: list[str], cwd: Path, logfile: Path, timeout: Optional[float]) -> tuple[Optional[int], float]:
    """(exit status or None on timeout, seconds). Output appended to logfile."""
    start = time.monotonic()
    with open(logfile, "a") as out:
        out.write(f"$ {' '.join(argv)}\n")
        out.flush()
        proc = subprocess.Popen(argv, cwd=cwd, env=child_env(cwd), stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: pytest and whatever it started
            proc.wait()
            rc = None
        except BaseException:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
    return rc, time.monotonic() - start


def build(root: Path, logfile: Path) -> tuple[bool, float]:
    rc, secs = run_logged([PYTHON, "setup.py", "-q", "build_ext", "--inplace"], root, logfile, timeout=1800)
    return rc == 0, secs


def native_so(root: Path) -> Optional[Path]:
    found = sorted((root / "runtimeguard").glob("_native*.so"))
    return found[0] if found else None


def expand_tests(root: Path, specs: tuple[str, ...]) -> list[str]:
    out: list[str] = []
    for spec in specs:
        path, sep, rest = spec.partition("::")
        if any(c in path for c in "*?["):
            matches = sorted(os.path.relpath(p, root) for p in glob.glob(str(root / path)))
        else:
            matches = [path] if (root / path).exists() else []
        for p in matches:
            item = p + sep + rest
            if item not in out:
                out.append(item)
    return out


def tail_lines(logfile: Path, n: int) -> list[str]:
    return logfile.read_text(errors="replace").splitlines()[-n:]


def summarize(logfile: Path, offset: int = 0) -> str:
    """The failing test (or the errors), and pytest's last line, of the output from offset on."""
    with open(logfile, errors="replace") as f:
        f.seek(offset)
        lines = f.read().splitlines()
    first = next((l for l in lines if l.startswith(("FAILED ", "ERROR "))), "")
    last = next((l.strip("= ") for l in reversed(lines) if l.strip()), "")
    return f"{first[:150]} | {last}" if first else last


@dataclasses.dataclass
class Outcome:
    name: str
    result: str
    detail: str = ""
    build_s: float = 0.0
    test_s: float = 0.0
    tests: tuple[str, ...] = ()


@dataclasses.dataclass
class TestRun:
    result: str  # caught, survived, timeout, escaped, error
    detail: str
    secs: float
    failed: list[str]  # node ids; a bare path for a file that failed to collect


def run_tests(root: Path, tests: list[str], logfile: Path, timeout: float, basetemp: Path,
              deselect: tuple[str, ...] = ()) -> TestRun:
    probe = root / ".mutate-probe.json"
    running = root / ".mutate-probe.json.running"
    for stale in (probe, running):
        if stale.exists():
            stale.unlink()
    argv = [PYTHON, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-p", "_rg_mutate_probe",
            f"--basetemp={basetemp}", *(f"--deselect={d}" for d in deselect), *tests]
    offset = logfile.stat().st_size if logfile.exists() else 0
    cgroups_before = set(glob.glob(TEST_CGROUPS))
    rc, secs = run_logged(argv, root, logfile, timeout)
    if rc is None or rc < 0:
        # Killed (a timeout, a crash): the tests' fixtures never tore down
        # their cgroups. Those that are empty now go.
        for path in set(glob.glob(TEST_CGROUPS)) - cgroups_before:
            try:
                os.rmdir(path)
            except OSError:
                pass
    if rc is None:
        return TestRun("timeout", f"no result after {timeout:.0f}s", secs, [])
    escaped, failed = [], []
    if probe.exists():
        report = json.loads(probe.read_text())
        failed = report["failed"]
        for mod, path in report["modules"].items():
            if path and not os.path.realpath(path).startswith(os.path.realpath(root) + os.sep):
                escaped.append(f"{mod} from {path}")
    if escaped:
        return TestRun("escaped", "tests imported " + ", ".join(escaped), secs, failed)
    detail = summarize(logfile, offset)
    if rc == 0:
        return TestRun("survived", detail, secs, failed)
    if rc in (1, 2):  # 1: a test failed; 2: interrupted, e.g. an import error at collection
        return TestRun("caught", detail, secs, failed)
    if rc < 0 and running.exists():
        # Killed by a signal (SIGABRT, SIGSEGV: the native code crashed) in a
        # test: that test failed.
        node = running.read_text()
        return TestRun("caught", f"crashed (signal {-rc}) in {node}", secs, [node])
    return TestRun("error", f"pytest exit {rc}: {detail}", secs, failed)


def judge(copy: Path, pristine: Path, tests: list[str], logfile: Path, args, basetemp: Path) -> tuple[str, str, float]:
    """Runs the tests on the mutated copy. A failure counts as caught only
    once confirmed: the failing test fails again on the mutant, and passes on
    the unmutated tree (given the mutant's Hypothesis examples). Otherwise it
    is set aside as flaky (a test that, say, saw another test run's cgroup
    come and go on this shared machine) and the rest run again without it."""
    deselect: list[str] = list(args.deselect)
    flaky: list[str] = []
    total = 0.0
    for _ in range(1 + args.max_flaky):
        left = [t for t in tests if t not in deselect]  # a file that failed to collect goes as a whole
        if not left:
            return "flaky", f"no test file left: {', '.join(flaky)}", total
        run = run_tests(copy, left, logfile, args.timeout, basetemp, tuple(d for d in deselect if "::" in d))
        total += run.secs
        note = f" (set aside as flaky: {', '.join(flaky)})" if flaky else ""
        if run.result != "caught" or args.no_confirm:
            return run.result, run.detail + note, total
        if not run.failed:
            return "error", f"pytest failed but named no failing test (a session-level check?): {run.detail}", total
        node = run.failed[0]
        with open(logfile, "a") as f:
            f.write(f"\n# confirming: {node} again on the mutant, then on the unmutated tree\n")
        again = run_tests(copy, [node], logfile, args.timeout, basetemp)
        total += again.secs
        if (pristine / ".hypothesis").exists():
            shutil.rmtree(pristine / ".hypothesis")
        if (copy / ".hypothesis").exists():
            shutil.copytree(copy / ".hypothesis", pristine / ".hypothesis")
        clean = None
        for _ in range(max(1, args.confirm_runs) if again.result == "caught" else 0):
            clean = run_tests(pristine, [node], logfile, args.timeout, basetemp)
            total += clean.secs
            if clean.result != "survived":
                break
        if again.result == "caught" and clean is not None and clean.result == "survived":
            return "caught", run.detail + note, total
        why = ("passed when run again on the mutant" if again.result != "caught"
               else f"fails on the unmutated tree too ({clean.result if clean else 'not run'})")
        flaky.append(f"{node} [{why}]")
        deselect.append(node)
        log(f"  {node}: {why}; running the rest without it")
    return "flaky", f"{len(flaky)} failures not confirmed: {', '.join(flaky)}", total


def copy_tree(src: Path, dest: Path) -> None:
    subprocess.run(["cp", "-a", f"{src}/.", str(dest)], check=True)


def apply(root: Path, m: Mutation) -> None:
    path = root / m.file
    text = path.read_text()
    assert text.count(m.original) == 1
    path.write_text(text.replace(m.original, m.replacement))
    # Strictly newer than anything the unmutated build produced, whatever the
    # filesystem's timestamp granularity: make and build_ext go by mtime.
    later = time.time() + 2
    os.utime(path, (later, later))


# ---------------------------------------------------------------- main

def select(names: list[str], run_all: bool) -> list[Mutation]:
    if not names:
        return [m for m in MUTATIONS if run_all or not m.slow]
    chosen: list[Mutation] = []
    for name in names:
        if name.isdigit() and 1 <= int(name) <= len(MUTATIONS):
            hits = [MUTATIONS[int(name) - 1]]
        else:
            hits = [m for m in MUTATIONS if fnmatch.fnmatchcase(m.name, name)]
        if not hits:
            print(f"mutate: no mutation named {name!r} (see --list)", file=sys.stderr)
            sys.exit(2)
        chosen += [m for m in hits if m not in chosen]
    return chosen


def print_list() -> None:
    for i, m in enumerate(MUTATIONS, 1):
        state = stale_reason(REPO, m)
        print(f"{i:2d}. {m.name}{'  [slow]' if m.slow else ''}{'  [STALE: ' + state + ']' if state else ''}")
        print(f"    {m.what}")
        print(f"    {m.file}; tests: {' '.join(m.tests)}")


def print_table(outcomes: list[Outcome]) -> None:
    w = max([len(o.name) for o in outcomes] + [8])
    print()
    print(f"{'mutation':<{w}}  {'result':<9} {'build':>6} {'tests':>6}  detail")
    print(f"{'-' * w}  {'-' * 9} {'-' * 6} {'-' * 6}  {'-' * 40}")
    for o in outcomes:
        b = f"{o.build_s:.0f}s" if o.build_s else "-"
        t = f"{o.test_s:.0f}s" if o.test_s else "-"
        print(f"{o.name:<{w}}  {o.result:<9} {b:>6} {t:>6}  {o.detail}")
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.result] = counts.get(o.result, 0) + 1
    print("\n" + ", ".join(f"{n} {r}" for r, n in sorted(counts.items())))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="Mutations are named or numbered as in --list; shell-style patterns work "
                                        "(e.g. 'net-*').")
    ap.add_argument("names", nargs="*", help="mutations to run (default: all but the slow ones)")
    ap.add_argument("--list", action="store_true", help="print the mutations, and which are stale, and exit")
    ap.add_argument("--check", action="store_true",
                    help="only check that every selected mutation applies to the working tree (no build)")
    ap.add_argument("--all", action="store_true", help="with no names: the slow ones (a VM boot) too")
    ap.add_argument("--keep", action="store_true", help="keep the copies and logs for inspection")
    ap.add_argument("--baseline", action="store_true",
                    help="first run each distinct test list on the unmutated copy: a mutation 'caught' by tests "
                         "that already fail means nothing")
    ap.add_argument("--workdir", default=None, help="where the temporary directory goes (default: $TMPDIR or /tmp)")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds for one mutation's tests (default 3600)")
    ap.add_argument("--vm-cache", default=os.path.expanduser("~/.cache/runtimeguard-mutate/vm"),
                    help="where the LSM test's guest kernel is kept between copies and runs (default: %(default)s)")
    ap.add_argument("--no-confirm", action="store_true",
                    help="take any failure as a catch, without running the failing test again on the mutant "
                         "and on the unmutated tree")
    ap.add_argument("--confirm-runs", type=int, default=2,
                    help="times the failing test must pass on the unmutated tree to confirm a catch (default 2)")
    ap.add_argument("--tests", action="append", default=[], metavar="SPEC",
                    help="run these tests (path, node id or glob; repeatable) instead of each mutation's own list, "
                         "e.g. to see whether one file alone catches it")
    ap.add_argument("--deselect", action="append", default=[], metavar="NODEID",
                    help="leave this test out (a known-flaky one); repeatable")
    ap.add_argument("--max-flaky", type=int, default=3,
                    help="unconfirmed failures set aside per mutation before giving up (default 3)")
    ap.add_argument("-v", "--verbose", action="store_true", help="print the tail of every log")
    args = ap.parse_args()

    if args.list:
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `--list | head`
        print_list()
        return 0
    # Started as a background job of a non-interactive shell (`scripts/mutate.py &`),
    # this process ignores SIGINT and SIGQUIT, and an ignored signal stays ignored
    # across exec: the tests' own children (the CLI they stop with SIGINT) would
    # ignore it too. A handled signal is reset to the default in a child.
    for sig in (signal.SIGINT, signal.SIGQUIT):
        if signal.getsignal(sig) == signal.SIG_IGN:
            signal.signal(sig, signal.default_int_handler)
    chosen = select(args.names, args.all or args.check)
    if args.tests:
        chosen = [dataclasses.replace(m, tests=tuple(args.tests)) for m in chosen]
    outcomes: list[Outcome] = []

    if args.check:
        for m in chosen:
            reason = stale_reason(REPO, m)
            outcomes.append(Outcome(m.name, "stale" if reason else "ok", reason or m.file, tests=m.tests))
        print_table(outcomes)
        return 1 if any(o.result == "stale" for o in outcomes) else 0

    needs_vm = any("lsm" in t or "kernelvm" in t for m in chosen for t in m.tests)
    vm_dir = Path(args.vm_cache).resolve() if needs_vm else None
    if vm_dir is not None:
        prepare_vm_cache(vm_dir)

    if args.workdir and (Path(args.workdir).resolve().as_posix() + "/").startswith(REPO.as_posix() + "/"):
        print("mutate: --workdir must be outside the checkout", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="rg-mutate-", dir=args.workdir))
    base = work / "base"
    base.mkdir()
    log(f"snapshot of {REPO} in {base}")
    snapshot(base, vm_dir)

    # Stale ones are reported, not run; checked against the snapshot, so a
    # file saved between the check and the copy cannot slip through.
    runnable = []
    for m in chosen:
        reason = stale_reason(base, m)
        if reason:
            outcomes.append(Outcome(m.name, "stale", reason, tests=m.tests))
            log(f"STALE {m.name}: {reason}")
        else:
            runnable.append(m)

    try:
        if runnable:
            log("building the unmutated snapshot")
            ok, secs = build(base, work / "base-build.log")
            if not ok:
                log("the UNMUTATED tree does not build; nothing can be measured:")
                print("\n".join(tail_lines(work / "base-build.log", 30)))
                for m in runnable:
                    outcomes.append(Outcome(m.name, "broken", "the unmutated tree does not build", tests=m.tests))
                runnable = []
            else:
                log(f"built in {secs:.0f}s")
        base_so = native_so(base)
        base_so_stat = base_so.stat().st_mtime_ns if base_so else None

        pristine = work / "unmutated"  # where a failing test is run again, to confirm a catch
        baseline_failed: dict[tuple[str, ...], str] = {}
        if args.baseline and runnable:
            for specs in dict.fromkeys(m.tests for m in runnable):
                copy = work / "baseline"
                copy.mkdir()
                copy_tree(base, copy)
                tests = expand_tests(copy, specs)
                logfile = work / "baseline.log"
                log(f"baseline: {' '.join(tests)}")
                run = run_tests(copy, tests, logfile, args.timeout, work / "pt")
                log(f"baseline {'passes' if run.result == 'survived' else 'FAILS'} ({run.secs:.0f}s): {run.detail}")
                if run.result != "survived":
                    baseline_failed[specs] = f"{run.result}: {run.detail}"
                shutil.rmtree(copy)

        for m in runnable:
            number = [x.name for x in MUTATIONS].index(m.name) + 1
            # Short: pytest's temporary paths (AF_UNIX sockets among them) live below work/pt.
            copy = work / f"{number:02d}"
            copy.mkdir()
            copy_tree(base, copy)
            logfile = work / f"{number:02d}-{m.name}.log"
            tests = expand_tests(copy, m.tests)
            o = Outcome(m.name, "", tests=tuple(tests))
            outcomes.append(o)
            log(f"{m.name}: {m.what}")
            apply(copy, m)
            ok, o.build_s = build(copy, logfile)
            so = native_so(copy)
            native = m.file.endswith((".c", ".h"))
            if not ok:
                o.result, o.detail = "broken", "build failed: " + " / ".join(tail_lines(logfile, 3))
            elif native and (so is None or so.stat().st_mtime_ns == base_so_stat):
                o.result, o.detail = "broken", "the build did not pick the mutation up (extension not rebuilt)"
            elif not tests:
                o.result, o.detail = "error", f"no test matches {' '.join(m.tests)}"
            else:
                log(f"{m.name}: built in {o.build_s:.0f}s; pytest {' '.join(tests)}")
                if not pristine.exists():
                    pristine.mkdir()
                    copy_tree(base, pristine)
                o.result, o.detail, o.test_s = judge(copy, pristine, tests, logfile, args, work / "pt")
                if o.result == "caught" and m.tests in baseline_failed:
                    o.result, o.detail = "error", "the unmutated tree fails these tests too: " + \
                        baseline_failed[m.tests]
            log(f"{m.name}: {o.result.upper()} {o.detail}")
            if args.verbose or o.result in ("broken", "error", "escaped"):
                print("\n".join("    " + l for l in tail_lines(logfile, 25)), flush=True)
            if not args.keep:
                shutil.rmtree(copy, ignore_errors=True)
    except KeyboardInterrupt:
        log("interrupted")
    finally:
        if args.keep:
            log(f"kept: {work} (copies, and a .log per mutation)")
        else:
            shutil.rmtree(work, ignore_errors=True)

    print_table(outcomes)
    results = {o.result for o in outcomes}
    if results & {"survived", "stale"}:
        return 1
    if results - {"caught"}:
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
