"""runtimeguard doctor without root: every fact any user can read, each
mechanism only a BPF probe can tell marked not probed (never missing), and
an exit status that says the report is incomplete. Run for real as nobody."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import ROOT, unprivileged_env
from runtimeguard.capabilities import (_CONFIG_FACTS, _PROBES, Capabilities, _ruled_out, ia32_emulation,
                                       kernel_config)
from runtimeguard.cli import EXIT_INCOMPLETE
from runtimeguard.environment import mounts

CLI = [sys.executable, "-m", "runtimeguard"]
# Only a probe (or a run) tells whether these work.
PROBED = {name for name, _, _ in _PROBES} | {"fanotify_permission", "bpf_sock_destroy", "uprobe_user_stacks"}
FACTS = ("btf", "kernel_config", "active_lsms", "cgroup2", "ia32_emulation")


def doctor(prefix, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*prefix, *CLI, "doctor", *args], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env=unprivileged_env() if prefix else None)


@pytest.fixture(scope="module")
def as_nobody_json(unprivileged) -> dict:
    result = doctor(unprivileged, "--json")
    assert result.returncode == EXIT_INCOMPLETE, result.stderr
    return json.loads(result.stdout)


def test_without_root_the_report_is_incomplete_and_says_so(unprivileged):
    result = doctor(unprivileged)
    assert result.returncode == EXIT_INCOMPLETE, result.stderr
    assert "Traceback" not in result.stderr
    (note,) = result.stderr.splitlines()
    assert note.startswith("runtimeguard: incomplete report: ") and note.count("runtimeguard:") == 1
    assert note.endswith("run doctor as root for the rest")
    lines = result.stdout.splitlines()
    assert lines[0] == f"kernel {os.uname().release}"
    rows = {line.split()[1]: line.split(None, 2) for line in lines if line.startswith("  ")}
    for name in PROBED:
        status, _, detail = rows[name]
        # Not probed, or ruled out by what any user can read: never a bare "missing".
        assert (status == "?" and detail.startswith("not probed: ") and "(run as root)" in detail) or (
            status == "NO" and (" is off" in detail or "not an active LSM" in detail)), rows[name]
    for name in FACTS:
        assert rows[name][0] in ("ok", "NO"), rows[name]
    assert "enforcement and gaps: not determined (they follow from the probes marked ?)" in lines


def test_without_root_the_json_report_matches_the_host(as_nobody_json):
    caps = msgspec.convert(as_nobody_json, Capabilities)
    assert caps.complete is False and caps.enforcement == {} and caps.gaps == []
    assert caps.kernel == os.uname().release
    assert caps.feature("tracepoint").available is None and "CAP_SYS_ADMIN" in caps.feature("tracepoint").detail
    assert caps.available("btf") == os.path.exists("/sys/kernel/btf/vmlinux")
    assert caps.available("cgroup2") == any(m.fs_type == "cgroup2" and m.root == "/" for m in mounts())
    config = kernel_config()
    assert caps.available("kernel_config") == bool(config)
    assert caps.available("ia32_emulation") == bool(ia32_emulation(config))
    for name in PROBED:
        f = caps.feature(name)
        assert f.available is None or (f.available is False and f.detail == _ruled_out(name, config)), f


@pytest.mark.root
def test_as_root_the_report_is_complete_and_agrees_with_the_unprivileged_one(as_nobody_json):
    result = doctor((), "--json")
    assert result.returncode == 0, result.stderr
    full = msgspec.convert(json.loads(result.stdout), Capabilities)
    partial = msgspec.convert(as_nobody_json, Capabilities)
    assert full.complete and all(f.available is not None for f in full.features)
    assert [f.name for f in full.features] == [f.name for f in partial.features]
    for name in FACTS:
        # Where the LSM list was read may differ (securityfs can be closed to nobody); what is known may not.
        same = ("available",) if name == "active_lsms" else ("available", "detail")
        assert [getattr(full.feature(name), a) for a in same] == [getattr(partial.feature(name), a) for a in same]
    # What the unprivileged report rules out, the probes find missing too.
    for f in partial.features:
        if f.available is False:
            assert full.available(f.name) is False, (f, full.feature(f.name))


# ---- what the kernel config alone rules out ----

BPF_FEATURES = sorted(PROBED - {"fanotify_permission", "uprobe_user_stacks"})


@given(enabled=st.sets(st.sampled_from(_CONFIG_FACTS)), feature=st.sampled_from(BPF_FEATURES + ["fanotify_permission"]))
def test_a_feature_is_ruled_out_only_by_an_option_that_is_off(enabled, feature):
    config = {name: "y" for name in enabled}
    config["CONFIG_LSM"] = '"lockdown,bpf"'
    reason = _ruled_out(feature, config)
    if reason and "not an active LSM" not in reason:
        option = reason.split()[0]
        assert option in _CONFIG_FACTS and option not in enabled, reason
    if not enabled:
        # Nothing enabled: no BPF at all, and no fanotify permission events.
        assert reason
    if enabled == set(_CONFIG_FACTS):
        assert reason == "" or "not an active LSM" in reason, reason


def test_without_the_config_only_the_active_lsms_can_rule_out():
    for name in PROBED:
        reason = _ruled_out(name, {})
        assert reason == "" or (name.startswith("bpf_lsm") and "is not an active LSM" in reason), (name, reason)
