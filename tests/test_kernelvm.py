"""The test VM (tests/kernelvm.py) boots a kernel with BPF LSM active, and runtimeguard, run
from this checkout with this interpreter, finds BPF LSM usable there."""

from __future__ import annotations

import shlex
import sys

import pytest

from kernelvm import VmResult, run_in_vm

CAPABILITIES = ("import runtimeguard; c = runtimeguard.capabilities(); print(c.available('bpf_lsm'), c.enforcement); "
                "print('bpf_lsm feature:', c.feature('bpf_lsm'))")


@pytest.fixture(scope="module")
def guest(vm_assets) -> VmResult:
    # One boot for every check below.
    script = f"""
        echo "uname: $(uname -r)"
        echo "lsm: $(cat /sys/kernel/security/lsm)"
        {shlex.quote(sys.executable)} -c {shlex.quote(CAPABILITIES)}
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
