"""capabilities(): every mechanism really loaded on this kernel, reported consistently."""

import os
import pathlib
import re

import msgspec
import pytest

import runtimeguard
from runtimeguard.capabilities import (_PROBES, CHANGES_DETECTED, CHANGES_FANOTIFY, DETECT_ONLY, FANOTIFY_FILES, KILL_AFTER,
                                       NETWORK_HOOKS, TAINTED_SOCKETS_DESTROYED, TAINTED_SOCKETS_DROPPED,
                                       TAINTED_SOCKETS_LSM, Capabilities, capabilities, explain, lsm_enforcement)


@pytest.fixture(scope="module")
def caps() -> Capabilities:
    return capabilities()


@pytest.mark.root
def test_cached_and_exported(caps):
    assert capabilities() is caps
    assert runtimeguard.capabilities() is caps


@pytest.mark.root
def test_the_basics_work(caps):
    for name in ("tracepoint", "ring_buffer", "tp_btf", "btf", "tracefs", "bpffs", "cgroup2"):
        assert caps.available(name), caps.feature(name)
    assert caps.kernel == os.uname().release
    assert all(f.detail for f in caps.features)
    assert len({f.name for f in caps.features}) == len(caps.features)


@pytest.mark.root
def test_refusals_say_why(caps):
    # BPF LSM loads fail with EPERM on this project's kernel (lockdown); elsewhere they may load.
    probed = {name for name, _, _ in _PROBES} | {"bpf_sock_destroy"}
    for f in caps.features:
        assert "\n" not in f.detail
        if f.name in probed and not f.available:
            assert ("failed" in f.detail or "not an active LSM" in f.detail) and len(f.detail) < 200, f


@pytest.mark.root
def test_enforcement_follows_the_features(caps):
    e = caps.enforcement
    assert (e["network"] == NETWORK_HOOKS) == caps.available("cgroup_connect4")
    lsm = caps.available("bpf_lsm") and caps.available("bpf_lsm_path")
    assert lsm_enforcement()[0] == lsm
    for area in ("files", "ptrace", "process_memory", "file_changes"):
        assert e[area].startswith("BPF LSM") == lsm
        if not lsm and area == "files" and caps.available("fanotify_permission"):
            assert e[area] == FANOTIFY_FILES
        elif not lsm and area != "file_changes":
            assert e[area] == (KILL_AFTER if caps.available("bpf_send_signal") else DETECT_ONLY)
    if not lsm:
        assert e["file_changes"] == (CHANGES_FANOTIFY if caps.available("fanotify_permission") else CHANGES_DETECTED)


@pytest.mark.root
def test_tainted_sends_follow_the_features(caps):
    """A tainted process's sends on a socket connected before the taint: EPERM
    with BPF LSM, else dropped at egress, and with the kfunc the sockets are
    destroyed before the guard detaches; without both, a gap says so."""
    lsm = caps.available("bpf_lsm") and caps.available("bpf_lsm_path")
    destroy = caps.feature("bpf_sock_destroy")
    how = caps.enforcement["tainted_sends"]
    if lsm:
        assert how == TAINTED_SOCKETS_LSM
    elif caps.available("cgroup_skb"):
        assert how == (TAINTED_SOCKETS_DESTROYED if destroy.available else TAINTED_SOCKETS_DROPPED)
    gaps = [g for g in caps.gaps if "bpf_sock_destroy" in g]
    assert bool(gaps) == (not lsm and not destroy.available)
    if not destroy.available:
        assert "failed" in destroy.detail and "\n" not in destroy.detail


@pytest.mark.root
def test_ia32_gap_matches_the_feature(caps):
    ia32 = caps.feature("ia32_emulation")
    compat_gaps = [g for g in caps.gaps if "32-bit" in g]
    assert bool(compat_gaps) == ia32.available
    if os.path.exists("/proc/kallsyms"):
        with open("/proc/kallsyms") as f:
            has_entry = any(line.endswith(" ia32_sys_call\n") for line in f)
        if not has_entry:
            assert not ia32.available


@pytest.mark.root
def test_round_trips_as_json(caps):
    assert msgspec.json.decode(msgspec.json.encode(caps), type=Capabilities) == caps


def test_explain_keeps_one_short_line():
    libbpf = ("loading lsm/file_open: Operation not permitted\n"
              "libbpf: prog 'rg_probe_lsm': BPF program load failed: Operation not permitted\n"
              "libbpf: failed to load object 'rg_probe'\n")
    assert explain(libbpf, 1) == "load failed: Operation not permitted (lockdown?)"
    lsm_off = ("loading lsm/file_open: Invalid argument\n"
               "libbpf: prog 'rg_probe_lsm': BPF program load failed: Invalid argument\n")
    assert explain(lsm_off, 22, "bpf_lsm", {"CONFIG_BPF": "y"}) == \
        "load failed: Invalid argument (CONFIG_BPF_LSM is off)"
    no_hook = ("attaching tp_btf/sched_process_fork: No such file or directory\n"
               "libbpf: prog 'rg_probe_tp_btf': failed to attach: No such file or directory\n")
    assert explain(no_hook, 2, "tp_btf") == \
        "attach failed: No such file or directory (the kernel has no such attach point)"
    verifier = "loading tp/x: Invalid argument\nlibbpf: prog 'x': R1 invalid mem access 'scalar'\n"
    assert explain(verifier, 22) == "load failed: Invalid argument: prog 'x': R1 invalid mem access 'scalar'"


BPF = pathlib.Path(__file__).resolve().parents[1] / "bpf"
# SEC("kind/target") int name(...) or int BPF_PROG(name, ...)
_PROGRAM = re.compile(r'SEC\("([^"]+)"\)\s*int\s+(?:BPF_PROG\()?(\w+)')


def _program_kinds(source: pathlib.Path) -> dict[str, str]:
    """Each BPF program of a bpf/*.bpf.c file, by name: its section's kind (tp, lsm, cgroup, ...)."""
    return {name: section.split("/")[0] for section, name in _PROGRAM.findall(source.read_text())}


def test_every_probe_is_a_mechanism_a_sensor_uses():
    """doctor probes what the sensors rely on, and nothing else: every program
    in probe.bpf.c is in the feature table, and is of a kind some sensor's
    program is."""
    probes = _program_kinds(BPF / "probe.bpf.c")
    sensor_kinds = {kind for source in BPF.glob("*.bpf.c") if source.name != "probe.bpf.c"
                    for kind in _program_kinds(source).values()}
    assert {"tp", "tp_btf", "lsm", "cgroup", "cgroup_skb", "uprobe"} <= sensor_kinds
    assert set(probes) == {program for _, program, _ in _PROBES}
    unused = {program: kind for program, kind in probes.items() if kind not in sensor_kinds}
    assert not unused, f"probes of program kinds no sensor uses: {unused}"
