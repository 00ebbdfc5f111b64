"""Host interfaces: found where they are, mounted only when absent."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from conftest import ROOT
from runtimeguard import environment
from runtimeguard.errors import EnvironmentSetupError

FRESH_NAMESPACE = textwrap.dedent("""
    import subprocess, sys
    from runtimeguard import environment, Tracer
    # Start from a host without tracefs and bpffs, as a fresh machine is.
    for m in environment.mounts():
        if m.fs_type in ("tracefs", "bpf"):
            subprocess.run(["umount", "-l", m.mount_point], check=True)
    assert not [m for m in environment.mounts() if m.fs_type in ("tracefs", "bpf")]
    with Tracer(events=["process_exec"]):
        pass
    environment.prepare()  # a second time: nothing mounted twice
    print(sorted((m.fs_type, m.mount_point) for m in environment.mounts() if m.fs_type in ("tracefs", "bpf")))
""")


@pytest.mark.root
def test_tracefs_and_bpffs_are_mounted_when_absent_and_only_once():
    out = subprocess.run(["unshare", "--mount", "--propagation", "private", sys.executable, "-c",
                          FRESH_NAMESPACE], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[('bpf', '/sys/fs/bpf'), ('tracefs', '/sys/kernel/tracing')]"


def test_cgroup2_mount_comes_from_mountinfo():
    expected = [line.split()[4] for line in open("/proc/self/mountinfo")
                if line.split(" - ")[1].startswith("cgroup2 ")]
    assert environment.cgroup2_mount() == expected[0]


def test_mountinfo_escapes_are_decoded(tmp_path):
    info = tmp_path / "mountinfo"
    info.write_text("36 35 98:0 / /mnt/with\\040space rw - ext4 /dev/x rw\n")
    assert environment.mounts(str(info))[0].mount_point == "/mnt/with space"


@pytest.mark.root
def test_a_mount_the_kernel_refuses_is_an_error_saying_why(tmp_path):
    with pytest.raises(EnvironmentSetupError,
                       match=rf"^mounting no-such-filesystem at {tmp_path} failed: No such device$"):
        environment.ensure_mounted("no-such-filesystem", str(tmp_path))
    assert not os.path.ismount(tmp_path)
