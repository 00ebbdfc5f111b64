"""What this kernel really lets runtimeguard do, learned by loading each mechanism.

A kernel can list a program type and still refuse it (lockdown, a missing
CONFIG, an LSM list without "bpf"), so nothing here is inferred from version
numbers: every BPF feature is a tiny program from bpf/probe.bpf.c, loaded and,
for tracing types, attached. Without the privileges to load them, report()
gives what any user can read (kernel config, LSMs, mounts) and marks every
mechanism only a probe can tell as not probed, never as missing.
"""

from __future__ import annotations

import errno
import functools
import gzip
import os
import re
from typing import Optional

import msgspec

from . import environment
from .errors import EnvironmentSetupError, PrivilegeError

_ERR_LEN = 4096

# (feature name, probe program in bpf/probe.bpf.c, what it is for): one per mechanism a sensor relies on.
_PROBES = (
    ("tracepoint", "rg_probe_tp", "syscall tracepoints: exec, file, network, ptrace events"),
    ("tp_btf", "rg_probe_tp_btf", "BTF tracepoints: fork, exec, exit"),
    ("bpf_lsm", "rg_probe_lsm", "BPF LSM: synchronous EPERM"),
    ("bpf_lsm_path", "rg_probe_lsm_path", "BPF LSM path hooks: refuse changes to protected files"),
    ("cgroup_connect4", "rg_probe_connect4", "cgroup connect hooks: block connects"),
    ("cgroup_sendmsg4", "rg_probe_sendmsg4", "cgroup sendmsg hooks: block datagrams"),
    ("cgroup_skb", "rg_probe_skb", "cgroup packet filters"),
    ("cgroup_sock_create", "rg_probe_sock_create", "cgroup socket creation hooks"),
    ("uprobe", "rg_probe_uprobe", "uprobes on user functions (runtimeguard calls)"),
    ("bpf_send_signal", "rg_probe_send_signal", "bpf_send_signal(SIGKILL): kill a caller"),
    ("ring_buffer", "rg_probe_ringbuf", "BPF ring buffer: the event stream"),
)

_LSM_STRENGTH = {
    "files": "BPF LSM (EPERM before open)",
    "ptrace": "BPF LSM (EPERM before attach)",
    "process_memory": "BPF LSM (EPERM before the memory is opened)",
    "file_changes": "BPF LSM (EPERM before unlink, rename, truncate, chmod, create)",
}
KILL_AFTER = "tracepoint + bpf_send_signal(SIGKILL) (kill after the syscall)"
FANOTIFY_FILES = ("fanotify permission events (EPERM before the open, whatever makes it: any open syscall, "
                  "32-bit, io_uring, exec, overlayfs; a read through a descriptor handed into the scope refused)")
CHANGES_DETECTED = "fanotify (detected after the fact, the process killed then)"
CHANGES_FANOTIFY = ("fanotify: truncate(2) refused before it truncates where the filesystem takes pre-content events "
                    "(Linux 6.14+; ext4 here, measured; not tmpfs); the rest detected after the fact, the process killed then")
DETECT_ONLY = "detect only"
UNAVAILABLE = "unavailable (syscall tracepoints do not work)"
NETWORK_HOOKS = "cgroup sock_addr hooks (EPERM before connect/send)"
TAINTED_SOCKETS_LSM = "BPF LSM socket_sendmsg (EPERM before the send: nothing is queued)"
TAINTED_SOCKETS_DESTROYED = ("cgroup_skb egress drop while the guard runs, bpf_sock_destroy before it detaches "
                             "(queued data discarded, never sent)")
TAINTED_SOCKETS_DROPPED = ("cgroup_skb egress drop while the guard runs only (data still queued when it detaches "
                           "may be sent then)")


class Feature(msgspec.Struct, frozen=True):
    name: str
    available: Optional[bool]
    """None: not probed, for want of the privileges the probe needs (see
    :func:`report`); the detail says which."""
    detail: str


class Capabilities(msgspec.Struct, frozen=True):
    features: list[Feature]
    enforcement: dict[str, str]
    """Per area, the strongest mechanism that works here."""
    gaps: list[str]
    """What this kernel lets escape observation or enforcement."""
    kernel: str
    complete: bool = True
    """False: made without the privileges the BPF probes need (:func:`report`):
    what could not be probed has ``available`` None, and enforcement and gaps,
    which follow from the probes, are left empty."""

    def feature(self, name: str) -> Optional[Feature]:
        return next((f for f in self.features if f.name == name), None)

    def available(self, name: str) -> bool:
        f = self.feature(name)
        return bool(f and f.available)


@functools.lru_cache(maxsize=None)
def capabilities() -> Capabilities:
    """Probes once per process; raises PrivilegeError when not privileged."""
    environment.prepare()
    source, config = _read_kernel_config()
    features = [_probe(name, program, purpose, config) for name, program, purpose in _PROBES]
    features = [_check_lsm_active(f, config) if f.name.startswith("bpf_lsm") else f for f in features]
    features.append(_fanotify_feature())
    features.append(_probe("bpf_sock_destroy", None, "iter/tcp + kfunc bpf_sock_destroy: the guard destroys a "
                           "tainted process's TCP sockets, their queued data discarded, before it detaches", config))
    features += _facts(source, config, privileged=True)
    ia32 = ia32_emulation(config)
    works = {f.name for f in features if f.available}
    return Capabilities(features=features, enforcement=_enforcement(works), gaps=_gaps(works, ia32, config),
                        kernel=os.uname().release)


def report() -> Capabilities:
    """What ``runtimeguard doctor`` shows: :func:`capabilities` when this
    process may load BPF programs; otherwise everything that can be learned
    without them (kernel, BTF, kernel config, active LSMs, cgroup v2, 32-bit
    emulation; mechanisms the config or the LSM list rules out), with
    ``complete`` False and each mechanism that needs a probe marked not
    probed (``available`` None), not missing."""
    try:
        return capabilities()
    except PrivilegeError as e:
        return _unprivileged(e.missing)


def _unprivileged(missing: list[str]) -> Capabilities:
    source, config = _read_kernel_config()
    needs = ", ".join(missing[:-1]) + " and " + missing[-1] if len(missing) > 1 else "".join(missing)
    not_probed = f"not probed: loading a BPF program needs {needs} (run as root)"

    def unprobed(name: str, needed: str = not_probed) -> Feature:
        ruled_out = _ruled_out(name, config)
        return Feature(name, False, ruled_out) if ruled_out else Feature(name, None, needed)

    features = [unprobed(name) for name, _, _ in _PROBES]
    features.append(unprobed("fanotify_permission", "not probed: fanotify permission events need CAP_SYS_ADMIN "
                             "(run as root)"))
    features.append(unprobed("bpf_sock_destroy"))
    features += _facts(source, config, privileged=False)
    return Capabilities(features=features, enforcement={}, gaps=[], kernel=os.uname().release, complete=False)


# The kernel options a mechanism cannot work without, beyond CONFIG_BPF_SYSCALL
# for every BPF one.
_REQUIRED_CONFIG = {"uprobe": ("CONFIG_UPROBES",), "bpf_lsm": ("CONFIG_BPF_LSM",),
                    "bpf_lsm_path": ("CONFIG_BPF_LSM",),
                    "fanotify_permission": ("CONFIG_FANOTIFY_ACCESS_PERMISSIONS",)}


def _ruled_out(feature: str, config: dict[str, str]) -> str:
    """Why a mechanism cannot work here whatever the privileges, from what any
    user can read (the kernel config, the active LSMs), or "" when only a probe
    can tell."""
    needed = _REQUIRED_CONFIG.get(feature, ())
    if feature != "fanotify_permission":
        needed = ("CONFIG_BPF_SYSCALL", *needed)
    off = next((name for name in needed if not config.get(name)), None) if config else None
    if off is not None:
        return f"{off} is off"
    if feature.startswith("bpf_lsm"):
        active, source = _active_lsms(config)
        if active is not None and "bpf" not in active:
            return f"'bpf' is not an active LSM ({','.join(active)}, {source})"
    return ""


def _probe(name: str, program: Optional[str], purpose: str, config: dict[str, str]) -> Feature:
    """Loads the named probe program; program None: the guard's socket
    destroyer (bpf/sockdestroy.bpf.c), loaded and run once."""
    from ._native import ffi, lib

    err = ffi.new("char[]", _ERR_LEN)
    if program is None:
        ret = lib.rg_probe_sock_destroy(err, _ERR_LEN)
    else:
        ret = lib.rg_probe(program.encode(), err, _ERR_LEN)
    if ret == 0:
        return Feature(name, True, purpose)
    return Feature(name, False, explain(ffi.string(err).decode(errors="replace"), -ret, name, config))


def explain(message: str, err: int, feature: str = "", config: Optional[dict[str, str]] = None) -> str:
    """One short line: the failing step, the errno text, and the likely reason."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    first = lines[0] if lines else os.strerror(err)
    step, _, reason = first.partition(": ")
    verb = step.split(" ", 1)[0]
    head = {"loading": "load failed", "attaching": "attach failed"}.get(verb, step)
    text = f"{head}: {reason or os.strerror(err)}"
    hint = _hint(err, verb, feature, config or {})
    if hint:
        return f"{text} ({hint})"
    libbpf = _first_meaningful(lines[1:])
    return f"{text}: {libbpf}" if libbpf else text


def _hint(err: int, verb: str, feature: str, config: dict[str, str]) -> str:
    if feature == "bpf_lsm" and config and config.get("CONFIG_BPF_LSM") is None:
        return "CONFIG_BPF_LSM is off"
    if feature == "bpf_sock_destroy" and verb == "loading":
        return "the kfunc bpf_sock_destroy needs Linux 6.5+"
    if err == errno.EPERM and verb == "loading":
        return "lockdown?"
    if err == errno.ENOENT and verb == "attaching":
        return "the kernel has no such attach point"
    return ""


# libbpf lines that only repeat the error the first line already gives.
_NOISE = ("failed to load object", "failed to load: ", "BPF program load failed", "permission error while")


def _first_meaningful(lines: list[str], limit: int = 120) -> str:
    for line in lines:
        line = line.removeprefix("libbpf:").strip()
        if line and not any(n in line for n in _NOISE) and not line.startswith("-- BEGIN"):
            return line if len(line) <= limit else line[: limit - 1] + "…"
    return ""


def _check_lsm_active(f: Feature, config: dict[str, str]) -> Feature:
    # A BPF LSM program loads and attaches even when "bpf" is not an active
    # LSM; it then never runs.
    active = active_lsms(config)
    if f.available and active is not None and "bpf" not in active:
        return Feature(f.name, False, f"loads, but 'bpf' is not an active LSM ({','.join(active)})")
    return f


def active_lsms(config: dict[str, str]) -> Optional[list[str]]:
    return _active_lsms(config)[0]


def _active_lsms(config: dict[str, str]) -> tuple[Optional[list[str]], str]:
    """The active LSMs, or None when nothing says, and where they were read."""
    try:
        with open("/sys/kernel/security/lsm") as fh:
            return fh.read().strip().split(","), "/sys/kernel/security/lsm"
    except OSError:
        pass
    boot = _boot_param("lsm")
    if boot is not None:
        return boot.split(","), "lsm= on the kernel command line"
    configured = config.get("CONFIG_LSM")
    if configured:
        return configured.strip('"').split(","), "CONFIG_LSM; /sys/kernel/security/lsm not readable"
    return None, "no /sys/kernel/security/lsm, lsm= or CONFIG_LSM"


# The kernel options the features above depend on, as doctor lists them.
_CONFIG_FACTS = ("CONFIG_BPF_SYSCALL", "CONFIG_DEBUG_INFO_BTF", "CONFIG_BPF_EVENTS", "CONFIG_CGROUP_BPF",
                 "CONFIG_BPF_LSM", "CONFIG_UPROBES", "CONFIG_FANOTIFY_ACCESS_PERMISSIONS")


def _facts(source: str, config: dict[str, str], privileged: bool) -> list[Feature]:
    """What any user can read, without loading anything; privileged: this
    process could mount what is missing (it did, before probing)."""
    btf = os.path.exists("/sys/kernel/btf/vmlinux")
    facts = [Feature("btf", btf, "/sys/kernel/btf/vmlinux" if btf else "no /sys/kernel/btf/vmlinux")]
    if config:
        options = ", ".join(f"{name}={config[name]}" if config.get(name) else f"{name} off" for name in _CONFIG_FACTS)
        facts.append(Feature("kernel_config", True, f"{source}: {options}"))
    else:
        facts.append(Feature("kernel_config", False, f"not readable from /proc/config.gz or /boot/config-"
                             f"{os.uname().release}: mechanisms are known only by probing"))
    active, where = _active_lsms(config)
    facts.append(Feature("active_lsms", active is not None, f"{','.join(active)} ({where})" if active else where))
    try:
        facts.append(Feature("cgroup2", True, f"mounted at {environment.cgroup2_mount()}"))
    except EnvironmentSetupError as e:
        facts.append(Feature("cgroup2", False, str(e)))
    for name, fs_type, target in (("tracefs", "tracefs", environment.TRACEFS), ("bpffs", "bpf", environment.BPFFS)):
        where = next((m.mount_point for m in environment.mounts() if m.fs_type == fs_type), None)
        if where is not None:
            facts.append(Feature(name, True, f"mounted at {where}"))
        elif privileged:
            facts.append(Feature(name, False, "not mounted"))
        else:
            # Run as root, runtimeguard mounts it itself: absent now is not missing.
            facts.append(Feature(name, None, f"not mounted; run as root, runtimeguard mounts it at {target}"))
    ia32 = ia32_emulation(config)
    if ia32:
        facts.append(Feature("ia32_emulation", True, f"present ({ia32}): 32-bit syscalls bypass the syscall "
                             "tracepoints"))
    else:
        facts.append(Feature("ia32_emulation", False, "absent: no 32-bit syscall escapes the syscall tracepoints"))
    return facts


def kernel_config() -> dict[str, str]:
    """CONFIG_* = value for the running kernel, or {} when it does not say."""
    return _read_kernel_config()[1]


def _read_kernel_config() -> tuple[str, dict[str, str]]:
    """Where the running kernel's config was read ("" when nowhere), and its
    CONFIG_* = value."""
    candidates = (("/proc/config.gz", gzip.open), (f"/boot/config-{os.uname().release}", open))
    for path, opener in candidates:
        try:
            with opener(path, "rt") as f:
                return path, dict(line.rstrip("\n").split("=", 1) for line in f if line.startswith("CONFIG_"))
        except (OSError, ValueError, EOFError):
            continue
    return "", {}


def ia32_emulation(config: dict[str, str]) -> str:
    """How we know the kernel runs 32-bit x86 syscalls, or "" when it does not."""
    if os.uname().machine != "x86_64":
        return ""
    boot = _boot_param("ia32_emulation")
    if boot is not None:
        on = boot.lower() in ("1", "y", "yes", "on", "true")
        return ("ia32_emulation=" + boot) if on and (not config or config.get("CONFIG_IA32_EMULATION")) else ""
    if config:
        on = config.get("CONFIG_IA32_EMULATION") == "y" and not config.get("CONFIG_IA32_EMULATION_DEFAULT_DISABLED")
        return "CONFIG_IA32_EMULATION=y" if on else ""
    try:
        with open("/proc/kallsyms") as f:
            if any(line.endswith((" ia32_sys_call\n", " __ia32_sys_openat\n")) for line in f):
                return "ia32 syscall entry in /proc/kallsyms"
    except OSError:
        pass
    return ""


def _boot_param(name: str) -> Optional[str]:
    try:
        with open("/proc/cmdline") as f:
            cmdline = f.read()
    except OSError:
        return None
    # The kernel's own parameters end at "--"; the rest is init's.
    found = re.findall(rf"(?:^|\s){re.escape(name)}=(\S*)", cmdline.split(" -- ")[0])
    return found[-1] if found else None


def _fanotify_feature() -> Feature:
    works, why = fanotify_permission()
    return Feature("fanotify_permission", works, why)


@functools.lru_cache(maxsize=None)
def fanotify_permission() -> tuple[bool, str]:
    """Whether fanotify permission events (FAN_OPEN_PERM) work here, and if not, why."""
    from ._native import ffi, lib

    err = ffi.new("char[]", _ERR_LEN)
    ret = lib.rg_probe_fanotify_permission(err, _ERR_LEN)
    if ret == 0:
        return True, "fanotify permission events: the guard refuses opens of protected files with EPERM"
    return False, ffi.string(err).decode(errors="replace")


def guard_mechanisms(backend: str) -> dict[str, str]:
    """What holds each area under a guard backend ("lsm", "fanotify",
    "tracepoint"), and what it guarantees."""
    caps = capabilities()
    enforcement = dict(caps.enforcement)
    if backend == "lsm":
        return enforcement
    works = {f.name for f in caps.features if f.available}
    fallback = KILL_AFTER if {"tracepoint", "bpf_send_signal"} <= works else DETECT_ONLY
    for area in _LSM_STRENGTH:
        enforcement[area] = CHANGES_DETECTED if area == "file_changes" else fallback
    if backend == "fanotify":
        enforcement["files"] = FANOTIFY_FILES
        enforcement["file_changes"] = CHANGES_FANOTIFY
    enforcement["namespaces"] = _namespaces(False, fallback)
    return enforcement


def _namespaces(lsm: bool, fallback: str) -> str:
    if fallback != KILL_AFTER:
        return fallback
    if lsm:
        return ("BPF LSM (EPERM before clone with new namespaces, mount, move_mount, pivot_root); unshare, setns, "
                "fsmount, open_tree clones, mount_setattr killed at syscall entry (no LSM hook sees them)")
    return ("killed at syscall entry (a clone leaves no child; unshare and setns complete in a process that never "
            "returns to user space; a mount in a namespace the guard shares completes before the kill)")


def _enforcement(works: set[str]) -> dict[str, str]:
    if "tracepoint" not in works:
        fallback = UNAVAILABLE
    elif "bpf_send_signal" in works:
        fallback = KILL_AFTER
    else:
        fallback = DETECT_ONLY
    enforcement = {"network": NETWORK_HOOKS if "cgroup_connect4" in works else fallback}
    lsm = _LSM_FEATURES <= works
    for area, strength in _LSM_STRENGTH.items():
        enforcement[area] = strength if lsm else CHANGES_DETECTED if area == "file_changes" else fallback
    if not lsm and "fanotify_permission" in works:
        enforcement["files"] = FANOTIFY_FILES
        enforcement["file_changes"] = CHANGES_FANOTIFY
    enforcement["namespaces"] = _namespaces(lsm, fallback)
    # A tainted process's sends on a socket it connected before the taint.
    if lsm:
        enforcement["tainted_sends"] = TAINTED_SOCKETS_LSM
    elif "cgroup_skb" in works:
        enforcement["tainted_sends"] = (TAINTED_SOCKETS_DESTROYED if "bpf_sock_destroy" in works
                                          else TAINTED_SOCKETS_DROPPED)
    else:
        enforcement["tainted_sends"] = DETECT_ONLY
    return enforcement


# The guard's LSM backend needs both: file_open and the others, and the path hooks.
_LSM_FEATURES = {"bpf_lsm", "bpf_lsm_path"}


@functools.lru_cache(maxsize=None)
def lsm_enforcement() -> tuple[bool, str]:
    """Whether the guard's BPF LSM hooks run here, and if not, why: probes the
    two LSM mechanisms only (cheaper than :func:`capabilities`)."""
    environment.prepare()
    config = kernel_config()
    for name, program, purpose in _PROBES:
        if name in _LSM_FEATURES:
            f = _check_lsm_active(_probe(name, program, purpose, config), config)
            if not f.available:
                return False, f"{name}: {f.detail}"
    return True, "BPF LSM hooks load and 'bpf' is an active LSM"


def _gaps(works: set[str], ia32: str, config: dict[str, str]) -> list[str]:
    gaps = []
    if ia32:
        lsm = _LSM_FEATURES <= works
        opens = ("; the guard's file judge still refuses their opens of protected files"
                 if lsm or "fanotify_permission" in works else "")
        gaps.append("32-bit (ia32 compat) processes' file opens, connects, sends, ptrace and memory reads, "
                    "namespace and mount calls are not observed or judged at the syscall tracepoints, which do "
                    f"not fire for compat syscalls (network enforcement by cgroup hooks still applies{opens})")
    lsm = _LSM_FEATURES <= works
    files_before = lsm or "fanotify_permission" in works
    if io_uring_enabled(config):
        judged = ("the guard judges every io_uring open of a protected file before it happens"
                  if files_before else "the guard judges io_uring opens at completion, except opens into the "
                  "fixed-file table")
        gaps.append("file opens and connects submitted through io_uring are not reported as file_open/"
                    f"net_connect events ({judged}, and its cgroup hooks see io_uring connects); "
                    "sysctl kernel.io_uring_disabled=2 closes this")
    if not lsm and "bpf_send_signal" in works:
        what = "ptrace and memory" if files_before else "file, ptrace and memory"
        changes = "unlink, rename, chmod, chown, truncate(2)" + (
            " where the filesystem takes no fanotify pre-content events" if files_before else "")
        gaps.append(f"{what} enforcement kills the caller after the syscall: the syscall completes (an opened "
                    "file is opened) but the process never returns to user space; changes to protected files "
                    f"by path ({changes}) are detected after the fact, not prevented")
    if not _LSM_FEATURES <= works and "bpf_sock_destroy" not in works:
        gaps.append("a tainted process's data on a TCP socket it connected before the taint is dropped while "
                    "the guard runs, but what is still queued when the guard detaches may be sent then: "
                    "neither BPF LSM nor the kfunc bpf_sock_destroy (Linux 6.5+) is available")
    if "tracepoint" not in works:
        gaps.append("syscall tracepoints do not work: no file, network or ptrace events")
    if "ring_buffer" not in works:
        gaps.append("the BPF ring buffer does not work: no events can be delivered")
    return gaps


def io_uring_enabled(config: dict[str, str]) -> bool:
    try:
        with open("/proc/sys/kernel/io_uring_disabled") as f:
            return f.read().strip() != "2"
    except OSError:
        # Before 6.6 there is no switch: io_uring is there if the kernel has it.
        return config.get("CONFIG_IO_URING") == "y"
