"""The test VM (tests/kernelvm.py) boots a kernel with BPF LSM active, and runtimeguard, run
from this checkout with this interpreter, finds BPF LSM usable there."""

from __future__ import annotations

import shlex
import sys

import pytest

from kernelvm import VmResult, run_in_vm

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


def test_guest_runs_the_bookworm_kernel(guest):
    assert _line(guest, "uname: ").startswith("6.1")


def test_bpf_is_an_active_lsm(guest):
    assert "bpf" in _line(guest, "lsm: ").split(",")


def test_runtimeguard_finds_bpf_lsm(guest):
    available = [line for line in guest.output.splitlines() if line.startswith(("True ", "False "))]
    assert available, guest.output
    assert available[0].startswith("True "), guest.output


@pytest.mark.parametrize("name", ["process_fork", "process_exec", "failed_exec", "file_open", "net_connect",
                                  "process_exit"])
def test_sensor_loads_and_reports_on_the_guest_kernel(guest, name):
    assert _line(guest, f"sensor: {name} ") == "True", guest.output
