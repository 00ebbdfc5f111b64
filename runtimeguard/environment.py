"""The host interfaces runtimeguard needs: privileges, tracefs, bpffs, cgroup v2.

Checked before anything is loaded. tracefs and bpffs are mounted only when
absent; the cgroup v2 hierarchy is found in /proc/self/mountinfo, never
assumed to be at /sys/fs/cgroup.
"""

from __future__ import annotations

import os
import resource
import secrets
import signal
import time
from dataclasses import dataclass

from ._native import ffi, lib
from .errors import EnvironmentSetupError, PrivilegeError

CAP_SYS_ADMIN = 21
CAP_PERFMON = 38
CAP_BPF = 39

TRACEFS = "/sys/kernel/tracing"
BPFFS = "/sys/fs/bpf"


@dataclass(frozen=True)
class Mount:
    mount_point: str
    fs_type: str
    root: str


def mounts(mountinfo: str = "/proc/self/mountinfo") -> list[Mount]:
    found = []
    with open(mountinfo) as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields = left.split()
            fs_type = right.split()[0] if right else ""
            found.append(Mount(_unescape(fields[4]), fs_type, _unescape(fields[3])))
    return found


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as octal.
    return field.encode().decode("unicode_escape") if "\\" in field else field


def cgroup2_mount() -> str:
    """Where the cgroup v2 hierarchy is mounted (hybrid hosts: .../unified)."""
    for m in mounts():
        if m.fs_type == "cgroup2" and m.root == "/":
            return m.mount_point
    raise EnvironmentSetupError(
        "no cgroup v2 hierarchy is mounted (none of type cgroup2 in /proc/self/mountinfo)")


def effective_capabilities() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def check_privileges() -> None:
    """Raises PrivilegeError naming what is missing to load BPF tracing programs."""
    caps = effective_capabilities()
    has = lambda cap: bool(caps & (1 << cap))  # noqa: E731
    if has(CAP_SYS_ADMIN):
        return
    missing = [name for cap, name in ((CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON")) if not has(cap)]
    # Mounting tracefs, and cgroup attachment, need CAP_SYS_ADMIN as well.
    missing.append("CAP_SYS_ADMIN")
    raise PrivilegeError(missing, f"effective capabilities are {caps:#x}")


def _mount(source: str, target: str, fs_type: str) -> None:
    if lib.mount(source.encode(), target.encode(), fs_type.encode(), 0, ffi.NULL) != 0:
        err = ffi.errno
        raise EnvironmentSetupError(f"mounting {fs_type} at {target} failed: {os.strerror(err)}")


def ensure_mounted(fs_type: str, target: str) -> bool:
    """Mounts fs_type at target unless one is already mounted; True if we mounted it."""
    if any(m.fs_type == fs_type for m in mounts()):
        return False
    os.makedirs(target, exist_ok=True)
    _mount("none", target, fs_type)
    return True


def tracefs_root() -> str:
    for m in mounts():
        if m.fs_type == "tracefs" and m.root == "/":
            return m.mount_point
    raise EnvironmentSetupError("tracefs is not mounted")


# Descriptors one Tracer holds at most: programs, links, perf events, maps, BTF.
TRACER_DESCRIPTORS = 256


def ensure_descriptors(needed: int = TRACER_DESCRIPTORS) -> None:
    """Raises the soft RLIMIT_NOFILE (up to the hard limit) when fewer than
    `needed` descriptors are left. Running out part-way through loading would
    not only fail the load: libbpf caches its kernel feature probes, and a
    probe that failed for want of a descriptor poisons every later load."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    in_use = len(os.listdir("/proc/self/fd"))
    if soft - in_use >= needed:
        return
    target = in_use + needed if hard == resource.RLIM_INFINITY else min(hard, in_use + needed)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target - in_use < needed:
        raise EnvironmentSetupError(
            f"RLIMIT_NOFILE leaves {target - in_use} free file descriptors (hard limit {hard}); "
            f"a tracer needs up to {needed}")


def prepare() -> None:
    """Everything needed before loading: privileges first, then mounts."""
    check_privileges()
    ensure_descriptors()
    # Syscall tracepoints are found through tracefs; libbpf looks in /sys/kernel/tracing.
    ensure_mounted("tracefs", TRACEFS)
    ensure_mounted("bpf", BPFFS)
    if not os.path.exists("/sys/kernel/btf/vmlinux"):
        raise EnvironmentSetupError(
            "the kernel has no BTF (/sys/kernel/btf/vmlinux missing): CO-RE programs cannot be "
            "relocated; a kernel built with CONFIG_DEBUG_INFO_BTF=y is required")


def kill_cgroup(path: str, timeout: float = 5.0) -> None:
    """Kills whatever the command left running in its cgroup, and waits."""
    procs = os.path.join(path, "cgroup.procs")
    try:
        with open(os.path.join(path, "cgroup.kill"), "w") as f:
            f.write("1")
    except FileNotFoundError:  # kernels before 5.14: one by one
        with open(procs) as f:
            for pid in f.read().split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(procs) as f:
            if not f.read().strip():
                return
        time.sleep(0.01)


def make_cgroup(parent: str, prefix: str) -> str:
    """A new, empty cgroup under parent (a cgroup v2 directory) for one
    command: its path."""
    path = os.path.join(parent, f"{prefix}-{os.getpid()}-{secrets.token_hex(4)}")
    os.mkdir(path)
    return path


def join_cgroup(path: str) -> None:
    """Moves the calling process into the cgroup: in a child, before exec,
    so the command's first instruction already runs in it."""
    with open(os.path.join(path, "cgroup.procs"), "w") as f:
        f.write("0")
