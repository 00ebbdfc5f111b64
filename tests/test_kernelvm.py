"""The test VM (tests/kernelvm.py) boots a kernel with BPF LSM active, and runtimeguard, run
from this checkout with this interpreter, finds BPF LSM usable there; where it cannot be had,
the tests that need it skip only on a machine that cannot have it, and fail elsewhere."""

from __future__ import annotations

import os
import shlex
import sys
from types import SimpleNamespace

import pytest

import kernelvm
from kernelvm import VmBroken, VmResult, VmUnavailable, outcome, run_in_vm

CAPABILITIES = ("import runtimeguard; c = runtimeguard.capabilities(); print(c.available('bpf_lsm'), c.enforcement); "
                "print('bpf_lsm feature:', c.feature('bpf_lsm'))")
# Every sensor loads on the older kernel and reports. The shell forks (the
# tracer never sees its own process's forks) and fails an exec; the Python it
# starts opens a file, connects (refused) and exits.
SENSORS = """
import shlex, subprocess, sys, time
from runtimeguard import Tracer
from runtimeguard.tracer import ALL_EVENTS
code = "import socket; open('/etc/hostname').read(); socket.socket().connect_ex(('127.0.0.1', 1))"
with Tracer(events=ALL_EVENTS) as t:
    shell = subprocess.Popen(["/bin/sh", "-c", f"/nonexistent-rg 2>/dev/null; "
                                               f"{shlex.quote(sys.executable)} -c {shlex.quote(code)}; true"])
    shell.wait()
    checks = {
        "process_fork": lambda ev: ev.name == "process_fork" and ev.pid == shell.pid,
        "process_exec": lambda ev: ev.name == "process_exec" and ev.data.executable == sys.executable,
        "failed_exec": lambda ev: (ev.name == "process_exec" and ev.data.executable == "/nonexistent-rg"
                                   and ev.data.return_code == -2),
        "file_open": lambda ev: ev.name == "file_open" and ev.data.path == "/etc/hostname",
        "net_connect": lambda ev: ev.name == "net_connect" and ev.data.port == 1,
        "process_exit": lambda ev: ev.name == "process_exit" and ev.pid == shell.pid,
    }
    seen, deadline = set(), time.monotonic() + 10
    while time.monotonic() < deadline and len(seen) < len(checks):
        for ev in t.poll(0.2):
            seen.update(label for label, check in checks.items() if check(ev))
for label in checks:
    print("sensor:", label, label in seen)
"""


@pytest.fixture(scope="module")
def guest(vm_assets) -> VmResult:
    # One boot for every check below.
    script = f"""
        echo "uname: $(uname -r)"
        echo "lsm: $(cat /sys/kernel/security/lsm)"
        {shlex.quote(sys.executable)} -c {shlex.quote(CAPABILITIES)}
        {shlex.quote(sys.executable)} -c {shlex.quote(SENSORS)}
    """
    result = run_in_vm(script, assets=vm_assets)
    assert not result.timed_out, f"guest timed out; output so far:\n{result.output}\n{result.console}"
    assert result.returncode == 0, f"guest script failed:\n{result.output}\n{result.console}"
    return result


def _line(result: VmResult, prefix: str) -> str:
    found = [line for line in result.output.splitlines() if line.startswith(prefix)]
    assert found, f"no line starting with {prefix!r} in:\n{result.output}"
    return found[0].removeprefix(prefix)


@pytest.mark.root
def test_guest_runs_the_bookworm_kernel(guest):
    assert _line(guest, "uname: ").startswith("6.1")


@pytest.mark.root
def test_bpf_is_an_active_lsm(guest):
    assert "bpf" in _line(guest, "lsm: ").split(",")


@pytest.mark.root
def test_runtimeguard_finds_bpf_lsm(guest):
    available = [line for line in guest.output.splitlines() if line.startswith(("True ", "False "))]
    assert available, guest.output
    assert available[0].startswith("True "), guest.output


@pytest.mark.root
@pytest.mark.parametrize("name", ["process_fork", "process_exec", "failed_exec", "file_open", "net_connect",
                                  "process_exit"])
def test_sensor_loads_and_reports_on_the_guest_kernel(guest, name):
    assert _line(guest, f"sensor: {name} ") == "True", guest.output


# Without booting anything: which failures skip the tests that need the
# guest, and which fail them (kernelvm.outcome(), conftest.vm_assets).

@pytest.mark.parametrize("error,ci,verdict", [
    (VmUnavailable("qemu-system-x86 has no candidate"), None, "skip"),
    (VmUnavailable("qemu-system-x86 has no candidate"), "false", "skip"),
    (VmUnavailable("qemu-system-x86 has no candidate"), "true", "fail"),
    (VmUnavailable("qemu-system-x86 has no candidate"), "1", "fail"),
    (VmBroken("apt-get download linux-image-6.1 failed"), None, "fail"),
    (VmBroken("apt-get download linux-image-6.1 failed"), "true", "fail"),
])
def test_only_an_unavailable_vm_outside_ci_is_skipped(error, ci, verdict):
    environ = {} if ci is None else {"CI": ci}
    got, message = outcome(error, environ)
    assert got == verdict and str(error) in message


@pytest.fixture
def fake_apt(monkeypatch):
    """kernelvm's view of dpkg and apt, faked: what is installed, what apt
    could install, which commands fail; every command run is recorded."""
    apt = SimpleNamespace(present=True, installed=set(), candidates=set(), failing=set(), runs=[])

    def run(argv, what, cwd=None):
        apt.runs.append(" ".join(argv[:2]))
        if " ".join(argv[:2]) in apt.failing:
            raise VmBroken(f"{what} failed (status 100): E: no")
        if argv[:2] == ["apt-get", "install"]:
            apt.installed.update(argv[5:])
        return ""

    monkeypatch.setattr(kernelvm, "HOST_PACKAGES", ("qemu-system-x86", "busybox-static"))
    monkeypatch.setattr(kernelvm, "_has_apt", lambda: apt.present)
    monkeypatch.setattr(kernelvm, "_installed", lambda p: p in apt.installed)
    monkeypatch.setattr(kernelvm, "_candidate", lambda p: p in apt.candidates)
    monkeypatch.setattr(kernelvm, "_run", run)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    return apt


def test_installed_packages_need_nothing(fake_apt):
    fake_apt.installed = {"qemu-system-x86", "busybox-static"}
    kernelvm._install_host_packages()
    assert fake_apt.runs == []


def test_missing_packages_are_installed(fake_apt):
    fake_apt.candidates = {"qemu-system-x86", "busybox-static"}
    kernelvm._install_host_packages()
    assert fake_apt.runs == ["apt-get install"] and fake_apt.installed == {"qemu-system-x86", "busybox-static"}


def test_no_apt_is_unavailable(fake_apt):
    fake_apt.present = False
    with pytest.raises(VmUnavailable, match="no apt-get"):
        kernelvm._install_host_packages()


def test_not_root_is_unavailable(fake_apt, monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    fake_apt.candidates = {"qemu-system-x86", "busybox-static"}
    with pytest.raises(VmUnavailable, match="installing needs root"):
        kernelvm._install_host_packages()
    assert fake_apt.runs == []


def test_no_candidate_after_an_update_is_unavailable(fake_apt):
    fake_apt.candidates = {"busybox-static"}
    with pytest.raises(VmUnavailable, match="no installation candidate for qemu-system-x86"):
        kernelvm._install_host_packages()
    assert fake_apt.runs == ["apt-get update"]


@pytest.mark.parametrize("candidates,failing,match", [
    # Installable, but the install fails (and so does it again after an update).
    ({"qemu-system-x86", "busybox-static"}, {"apt-get install"},
     "apt-get install qemu-system-x86 busybox-static failed.*again after apt-get update"),
    # Whether it is installable cannot be told: the package lists cannot be fetched.
    (set(), {"apt-get update"}, "apt-get update failed"),
])
def test_a_failing_install_is_broken(fake_apt, candidates, failing, match):
    fake_apt.candidates, fake_apt.failing = candidates, failing
    with pytest.raises(VmBroken, match=match):
        kernelvm._install_host_packages()


def test_a_kernel_package_that_cannot_be_fetched_is_broken(fake_apt, monkeypatch, tmp_path):
    monkeypatch.setattr(kernelvm, "VM_DIR", tmp_path)
    monkeypatch.setattr(kernelvm, "_kernel_package", lambda: "linux-image-rg-nonexistent")
    fake_apt.failing = {"apt-get download"}
    with pytest.raises(VmBroken, match="download linux-image-rg-nonexistent failed.*again after apt-get update"):
        kernelvm._ensure_kernel()
    assert fake_apt.runs == ["apt-get download", "apt-get update", "apt-get download"]


def test_a_host_that_is_not_x86_64_is_unavailable(monkeypatch):
    monkeypatch.setattr(kernelvm.platform, "machine", lambda: "aarch64")
    with pytest.raises(VmUnavailable, match="this host is aarch64"):
        kernelvm.ensure_vm_assets()
