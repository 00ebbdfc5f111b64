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

from kernelvm import run_in_vm

CHECKS = "tests/lsm/check_guard_lsm.py"


def test_lsm_backend_on_a_kernel_that_runs_bpf_lsm(vm_assets):
    script = f"{shlex.quote(sys.executable)} -m pytest -q -p no:cacheprovider -o addopts=-ra {CHECKS}"
    # About 200 s emulated on an idle 2-core machine; the margin is for a busy one.
    result = run_in_vm(script, timeout=1800, assets=vm_assets)
    assert not result.timed_out, f"the guest timed out; its output so far:\n{result.output}\n{result.console[-3000:]}"
    assert result.returncode == 0, f"checks failed in the guest:\n{result.output}"
    assert " passed" in result.output and "skipped" not in result.output, result.output
