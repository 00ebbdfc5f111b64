"""The guard's BPF LSM backend, on a kernel that runs BPF LSM.

The kernel this project is developed on refuses BPF LSM, so the backend is
checked in a virtual machine booting Debian's 6.1 kernel, which has it
(tests/kernelvm.py): the checks in tests/lsm/ run there, with this checkout's
build and this interpreter, as one pytest session whose output is shown on a
failure.
"""

from __future__ import annotations

import shlex
import sys
import threading

import pytest

from kernelvm import VmError, ensure_vm_assets, run_in_vm

pytestmark = pytest.mark.root

CHECKS = "tests/lsm/check_guard_lsm.py"
SCRIPT = f"{shlex.quote(sys.executable)} -m pytest -q -p no:cacheprovider -o addopts=-ra {CHECKS}"
# About 300 s emulated on an idle 2-core machine; the margin is for a busy one.
TIMEOUT_S = 1800


class EarlyRun:
    """The guest's run, started when the session's tests are collected
    (conftest.py calls start_early()), so its minutes of emulation overlap
    the rest of the suite; the test below takes its result."""

    def __init__(self, assets):
        self.result = self.error = None
        self.qemu = None
        self._thread = threading.Thread(target=self._run, args=(assets,), name="lsm-vm", daemon=True)
        self._thread.start()

    def _run(self, assets):
        try:
            self.result = run_in_vm(SCRIPT, timeout=TIMEOUT_S, assets=assets, started=self._started)
        except BaseException as e:  # re-raised in the test
            self.error = e

    def _started(self, proc):
        self.qemu = proc

    def wait(self):
        self._thread.join()
        if self.error is not None:
            raise self.error
        return self.result


_early = None


def start_early() -> None:
    """Starts the guest's run now, if its kernel can be had; if not, the test
    reports why (the vm_assets fixture) as it always did."""
    global _early
    if _early is None:
        try:
            assets = ensure_vm_assets()
        except VmError:
            return
        _early = EarlyRun(assets)


def background_pids() -> set[int]:
    """The qemu process running beside the other tests (not theirs to reap)."""
    return {_early.qemu.pid} if _early is not None and _early.qemu is not None else set()


def test_lsm_backend_on_a_kernel_that_runs_bpf_lsm(vm_assets):
    result = _early.wait() if _early is not None else run_in_vm(SCRIPT, timeout=TIMEOUT_S, assets=vm_assets)
    assert not result.timed_out, f"the guest timed out; its output so far:\n{result.output}\n{result.console[-3000:]}"
    assert result.returncode == 0, f"checks failed in the guest:\n{result.output}"
    assert " passed" in result.output and "skipped" not in result.output, result.output
