"""A throwaway virtual machine for testing runtimeguard's BPF LSM backend for real.

The development kernel refuses BPF LSM, so enforcement through LSM hooks can
only be exercised on another kernel. This boots Debian bookworm's stock 6.1
kernel (CONFIG_BPF_LSM=y, "bpf" in its default LSM list) in qemu, under KVM
where KVM can run it and emulated (TCG) elsewhere (see accelerator()), with a
tiny busybox initramfs. The guest sees the host's "/" read-only over 9p, so it
runs the host's own Python and this checkout's in-place build unchanged, with
fresh proc, sysfs, devtmpfs, cgroup2, securityfs and tmpfs scratch directories
of its own.

    result = run_in_vm("uname -r; cat /sys/kernel/security/lsm")
    result.returncode, result.output

ensure_vm_assets() installs qemu-system-x86 and busybox-static through apt-get
when missing and caches the kernel and initramfs in build/vm/. RG_VM_ACCEL=kvm
or =tcg overrides the choice of accelerator.

Two kinds of "no guest", with the reason in the message:
- VmUnavailable: the guest cannot be had on this kind of machine (not x86-64,
  no apt, qemu-system-x86 or busybox-static missing and either not root to
  install them or without an apt candidate). Tests that need the guest skip,
  except in CI (outcome()).
- VmBroken: it could be had, but a step failed (installing the packages,
  apt-get update, resolving or fetching the kernel package, unpacking it,
  building the initramfs, starting qemu). Always a failure: skipping would
  leave the suite green with no LSM coverage.
"""

from __future__ import annotations

import fcntl
import hashlib
import lzma
import os
import platform
import re
import shutil
import struct
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

ROOT = Path(__file__).resolve().parent.parent
VM_DIR = ROOT / "build" / "vm"
HOST_PACKAGES = ("qemu-system-x86", "busybox-static")
QEMU = "/usr/bin/qemu-system-x86_64"
BUSYBOX = "/bin/busybox"
# What the guest needs to mount the host's "/" over virtio 9p; their
# dependencies come from each module's own "depends=" list.
MODULES = ("virtio_pci", "9pnet_virtio", "9p")
EXIT_MARKER = "RG_VM_EXIT="  # what INIT prints after the script: RG_VM_EXIT=<status>

# PID 1 in the guest. Arguments (after "--" on the kernel command line): the
# repository root, the script, and the directory of the host's Python.
INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
root_dir=$1 script=$2 python_dir=$3
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in /modules/*.ko; do insmod "$m" || echo "rg-init: insmod $m failed" >/dev/ttyS1; done
# The script's output has ttyS1 to itself, kept apart from the kernel's
# console on ttyS0; raw, so lines end in "\n" alone.
stty -F /dev/ttyS1 raw -echo
exec </dev/null >/dev/ttyS1 2>&1

r=/newroot
mkdir -p /host $r
# cache=loose: the host tree does not change under a guest that lives for one
# script, and it makes Python's many stats and imports cheap. A 9p tag can be
# mounted once: /host keeps the whole tree in view, $r gets the scratch
# mounts over it.
mount -t 9p -o ro,trans=virtio,version=9p2000.L,msize=262144,cache=loose hostroot /host || poweroff -f
mount -o bind /host $r
mount -t proc proc $r/proc
mount -t sysfs sysfs $r/sys
mount -t devtmpfs devtmpfs $r/dev
mkdir -p $r/dev/pts $r/dev/shm
mount -t devpts devpts $r/dev/pts
mount -t tmpfs -o mode=1777 tmpfs $r/dev/shm
for d in tmp var/tmp; do mount -t tmpfs -o mode=1777 tmpfs $r/$d; done
mount -t tmpfs -o mode=755 tmpfs $r/run
if [ ! -d $r/sys/fs/cgroup ]; then
    mount -t tmpfs -o mode=755 tmpfs $r/sys/fs && mkdir $r/sys/fs/cgroup
fi
mount -t cgroup2 cgroup2 $r/sys/fs/cgroup
mount -t securityfs securityfs $r/sys/kernel/security
# The host has no /boot/config-<guest release>; a Debian install would, and
# runtimeguard reads the kernel's configuration from there.
mount -t tmpfs -o mode=755 tmpfs $r/boot && cp /config $r/boot/config-$(uname -r)
mkdir -p $r/tmp/home
# The checkout and the interpreter may live under a directory the scratch
# mounts cover (a CI clone in /tmp): shown again from the host's tree.
for d in "$root_dir" "${python_dir%/*}"; do
    if [ -d "/host$d" ] && [ ! -d "$r$d" ]; then
        mkdir -p "$r$d" && mount -o bind "/host$d" "$r$d"
    fi
done
ip link set lo up

env -i HOME=/tmp/home TERM=dumb LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1 PYTHONPATH="$root_dir" \
    PATH="$python_dir:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    chroot $r /bin/bash -c 'cd "$1" && exec /bin/bash "$2"' rg-vm "$root_dir" "$script"
echo "RG_VM_EXIT=$?"
# Waits until the UART has sent everything, so the marker is not cut off.
stty -F /dev/ttyS1 raw
poweroff -f
"""


class VmError(Exception):
    """The test VM could not be had; the message says what failed and why."""


class VmUnavailable(VmError):
    """This kind of machine cannot have the test VM (see the module's docstring)."""


class VmBroken(VmError):
    """The test VM can be had here, but building or booting it failed."""


def in_ci(environ=os.environ) -> bool:
    """CI=true (or any value but empty, 0, false, no), as CI services set it."""
    return environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def outcome(error: VmError, environ=os.environ) -> tuple[str, str]:
    """("skip" or "fail", message) for a test that needs the guest and got
    error: only an unavailable VM outside CI is skipped."""
    if isinstance(error, VmUnavailable):
        if in_ci(environ):
            return "fail", f"test VM unavailable, and CI={environ['CI']} allows no skip: {error}"
        return "skip", f"test VM unavailable: {error}"
    return "fail", f"test VM broken (this machine can have it, so this is a failure, not a skip): {error}"


@dataclass(frozen=True)
class VmAssets:
    kernel: Path
    initramfs: Path
    release: str


@dataclass(frozen=True)
class VmResult:
    returncode: Optional[int]
    """The script's exit status; None when it never finished (timeout, guest crash)."""
    output: str
    """The script's stdout and stderr."""
    console: str = ""
    """The kernel's console and qemu's own messages, for when something went wrong."""
    timed_out: bool = False


def accelerator() -> str:
    """"kvm" where KVM runs an unmodified kernel, else "tcg" (emulation: slower, same kernel)."""
    forced = os.environ.get("RG_VM_ACCEL")
    if forced:
        return forced
    # /dev/kvm alone is not enough: kvm_pvm (the pagetable-based KVM of some
    # cloud sandboxes, this project's development machine among them) only
    # runs guest kernels built for PVM. A stock kernel is emulated there one
    # exit at a time and takes minutes to decompress itself; TCG boots it in
    # seconds. Hardware KVM is kvm_intel or kvm_amd.
    hardware = any(os.path.exists(f"/sys/module/{m}") for m in ("kvm_intel", "kvm_amd"))
    return "kvm" if hardware and os.access("/dev/kvm", os.R_OK | os.W_OK) else "tcg"


def ensure_vm_assets() -> VmAssets:
    """The guest's kernel and initramfs, built once and cached in build/vm/."""
    if platform.machine() != "x86_64":
        # The guest runs the host's own Python and build from the shared "/".
        raise VmUnavailable(f"the x86-64 guest runs the host's binaries; this host is {platform.machine()}")
    VM_DIR.mkdir(parents=True, exist_ok=True)
    # Concurrent test processes share one cache.
    with open(VM_DIR / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _install_host_packages()
        release = _ensure_kernel()
        initramfs = _ensure_initramfs(release)
    return VmAssets(VM_DIR / release / "vmlinux", initramfs, release)


def run_in_vm(script: str, timeout: float = 300, memory_mb: int = 2048,
              assets: Optional[VmAssets] = None,
              started: Optional[Callable[[subprocess.Popen], None]] = None) -> VmResult:
    """Boots the guest, runs `script` with bash as root in the repository root, powers off.
    started(proc) is told the qemu process as soon as it runs."""
    assets = assets or ensure_vm_assets()
    fd, script_path = tempfile.mkstemp(dir=VM_DIR, prefix="script-", suffix=".sh")
    with os.fdopen(fd, "w") as f:
        f.write(script)
    fd, console_path = tempfile.mkstemp(dir=VM_DIR, prefix="console-", suffix=".log")
    os.close(fd)
    # mitigations=off: page-table isolation and retpolines cost a lot under
    # emulation and change nothing this guest is for.
    cmdline = (f"console=ttyS0 quiet panic=-1 mitigations=off -- {ROOT} {script_path} "
               f"{os.path.dirname(sys.executable)}")
    # TCG in one host thread: with a thread per vCPU, a vCPU running kernel code
    # that another vCPU live-patches (a tracepoint's static key flipping as a
    # BPF link is detached) was seen to spin there for good.
    cpu = (["-enable-kvm", "-cpu", "host"] if accelerator() == "kvm"
           else ["-accel", "tcg,thread=single", "-cpu", "max"])
    argv = [QEMU, "-nodefaults", "-no-user-config", *cpu, "-smp", "2", "-m", str(memory_mb),
            "-display", "none", "-no-reboot",
            "-kernel", str(assets.kernel), "-initrd", str(assets.initramfs), "-append", cmdline,
            "-serial", f"file:{console_path}", "-serial", "stdio",
            "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap"]
    timed_out = False
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        if started is not None:
            started(proc)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            proc.kill()
            out, err = proc.communicate()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        console = Path(console_path).read_text(errors="replace") + err.decode(errors="replace")
    finally:
        os.unlink(script_path)
        os.unlink(console_path)
    text = out.decode(errors="replace")
    if not timed_out and not text and proc.returncode != 0:
        raise VmBroken(f"qemu failed (status {proc.returncode}): {err.decode(errors='replace').strip()}")
    body, marker, status = text.rpartition(EXIT_MARKER)
    if marker and re.fullmatch(r"\d+\n?", status):
        return VmResult(int(status), body, console, timed_out)
    return VmResult(None, text, console, timed_out)


def _run(argv: list[str], what: str, cwd: Optional[Path] = None) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, cwd=cwd,
                              env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
    except OSError as e:
        raise VmBroken(f"{what} failed: cannot run {argv[0]}: {e.strerror}") from None
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise VmBroken(f"{what} failed (status {proc.returncode}): {' / '.join(tail)}")
    return proc.stdout


def _apt(argv: list[str], what: str, cwd: Optional[Path] = None) -> str:
    """apt-get/apt-cache, retried once after `apt-get update` (stale or missing package lists)."""
    try:
        return _run(argv, what, cwd)
    except VmBroken as e:
        first = e
    try:
        _run(["apt-get", "update", "-qq"], "apt-get update")
    except VmBroken as e:
        raise VmBroken(f"{first}; then {e}") from None
    try:
        return _run(argv, what, cwd)
    except VmBroken as e:
        raise VmBroken(f"{e} (again after apt-get update)") from None


def _install_host_packages() -> None:
    """qemu and busybox, installed when missing: VmUnavailable where this
    machine cannot have them, VmBroken where it can but installing fails."""
    if not _has_apt():
        raise VmUnavailable("no apt-get and dpkg-query here: qemu-system-x86, busybox-static and Debian's "
                            "kernel package come through apt")
    missing = [p for p in HOST_PACKAGES if not _installed(p)]
    if not missing:
        return
    if os.geteuid() != 0:
        raise VmUnavailable(f"{' '.join(missing)} not installed, and installing needs root")
    if not all(_candidate(p) for p in missing):
        # Maybe stale or absent package lists; a failing update is a VmBroken.
        _run(["apt-get", "update", "-qq"], "apt-get update")
    uninstallable = [p for p in missing if not _candidate(p)]
    if uninstallable:
        raise VmUnavailable(f"apt has no installation candidate for {' '.join(uninstallable)} "
                            "(not in this machine's apt sources)")
    _apt(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
         f"apt-get install {' '.join(missing)}")


def _has_apt() -> bool:
    return bool(shutil.which("dpkg-query") and shutil.which("apt-get"))


def _installed(package: str) -> bool:
    proc = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True)
    return proc.returncode == 0 and proc.stdout.endswith("ok installed")


def _candidate(package: str) -> bool:
    """Whether apt has a version of package to install."""
    policy = subprocess.run(["apt-cache", "policy", package], capture_output=True, text=True).stdout
    return "Candidate:" in policy and "Candidate: (none)" not in policy


def _ensure_kernel() -> str:
    """The release of the cached guest kernel; downloaded and unpacked the first time."""
    stamp = VM_DIR / "kernel-release"
    if stamp.exists():
        release = stamp.read_text().strip()
        if (VM_DIR / release / "vmlinux").exists():
            return release
    package = _kernel_package()
    with tempfile.TemporaryDirectory(dir=VM_DIR, prefix="download-") as tmp:
        _apt(["apt-get", "download", "-qq", package], f"apt-get download {package}", cwd=Path(tmp))
        deb = next(Path(tmp).glob("*.deb"), None)
        if deb is None:
            raise VmBroken(f"apt-get download {package} left no .deb")
        tree = Path(tmp) / "tree"
        _run(["dpkg-deb", "-x", str(deb), str(tree)], f"dpkg-deb -x {deb.name}")
        vmlinuz = next((tree / "boot").glob("vmlinuz-*"), None)
        if vmlinuz is None:
            raise VmBroken(f"{deb.name} has no boot/vmlinuz-*")
        release = vmlinuz.name.removeprefix("vmlinuz-")
        dest = VM_DIR / release
        shutil.rmtree(dest, ignore_errors=True)
        (dest / "modules").mkdir(parents=True)
        (dest / "vmlinux").write_bytes(_vmlinux(vmlinuz.read_bytes()))
        shutil.copy(tree / "boot" / f"config-{release}", dest / "config")
        # The .deb has no modules.dep (depmod writes it on install), so the
        # load order comes from each module's "depends=".
        for i, ko in enumerate(_load_order(tree / "lib" / "modules" / release / "kernel", MODULES)):
            shutil.copy(ko, dest / "modules" / f"{i:02d}-{ko.name}")
    stamp.write_text(release + "\n")
    return release


def _vmlinux(bzimage: bytes) -> bytes:
    """The kernel ELF inside a bzImage, or the bzImage itself when it is not xz-compressed.

    qemu boots the ELF directly through its PVH entry point. Emulated, the
    bzImage's own decompressor takes about 6 s of a 9 s boot.
    """
    start = bzimage.find(b"\xfd7zXZ\x00")
    if start < 0:
        return bzimage
    # The payload is followed by other data, which the decompressor leaves alone.
    elf = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(bzimage[start:])
    return elf if elf.startswith(b"\x7fELF") else bzimage


def _kernel_package() -> str:
    """Whatever bookworm's linux-image-amd64 points at now, unsigned when there is one."""
    depends = _apt(["apt-cache", "depends", "linux-image-amd64"], "apt-cache depends linux-image-amd64")
    found = re.search(r"Depends: (linux-image-\S+)", depends)
    if not found:
        raise VmBroken(f"linux-image-amd64 depends on no kernel image: {depends.strip()!r}")
    signed = found.group(1)
    unsigned = f"{signed}-unsigned"
    return unsigned if _candidate(unsigned) else signed


def _load_order(kernel_dir: Path, wanted: tuple[str, ...]) -> list[Path]:
    """The .ko files for `wanted` and everything they need, each after its dependencies."""
    paths = {p.name.removesuffix(".ko").replace("-", "_"): p for p in kernel_dir.rglob("*.ko")}
    order: list[Path] = []

    def visit(name: str) -> None:
        name = name.replace("-", "_")
        if name not in paths:
            raise VmBroken(f"the guest kernel has no module {name}")
        if paths[name] in order:
            return
        for dep in _modinfo(paths[name]).get("depends", "").split(","):
            if dep:
                visit(dep)
        order.append(paths[name])

    for name in wanted:
        visit(name)
    return order


def _modinfo(ko: Path) -> dict[str, str]:
    """The key=value strings of a module's .modinfo section (64-bit little-endian ELF)."""
    data = ko.read_bytes()
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)

    def section(i: int) -> tuple[int, int, int]:
        name, _type, _flags, _addr, offset, size = struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize)
        return name, offset, size

    _, strtab, _ = section(shstrndx)
    for i in range(shnum):
        name, offset, size = section(i)
        if data[strtab + name:data.index(b"\0", strtab + name)] == b".modinfo":
            pairs = (s.partition(b"=") for s in data[offset:offset + size].split(b"\0") if s)
            return {k.decode(): v.decode(errors="replace") for k, _, v in pairs}
    return {}


def _ensure_initramfs(release: str) -> Path:
    kernel_dir = VM_DIR / release
    modules = sorted((kernel_dir / "modules").iterdir())
    busybox = Path(BUSYBOX).read_bytes()
    files = [("init", INIT.encode(), 0o100755), ("bin/busybox", busybox, 0o100755),
             ("config", (kernel_dir / "config").read_bytes(), 0o100644)]
    files += [(f"modules/{m.name}", m.read_bytes(), 0o100644) for m in modules]
    key = hashlib.sha256(b"".join(name.encode() + data for name, data, _ in files)).hexdigest()[:16]
    path = VM_DIR / f"initramfs-{key}.cpio"
    if path.exists():
        return path
    for old in VM_DIR.glob("initramfs-*.cpio"):
        old.unlink()
    dirs = ["bin", "dev", "proc", "sys", "newroot", "modules"]
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as out:
        ino = 1
        for d in dirs:
            out.write(_cpio_entry(ino, d, 0o040755))
            ino += 1
        # The kernel opens /dev/console for init's stdio before anything is mounted.
        out.write(_cpio_entry(ino, "dev/console", 0o020600, rdev=(5, 1)))
        for name, data, mode in files:
            ino += 1
            out.write(_cpio_entry(ino, name, mode, data))
        out.write(_cpio_entry(0, "TRAILER!!!", 0))
    tmp.rename(path)
    return path


def _cpio_entry(ino: int, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> bytes:
    """One record of a "newc" cpio archive, as the kernel's initramfs unpacker reads it."""
    nlink = 2 if mode & 0o040000 else 1
    fields = (ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1], len(name) + 1, 0)
    header = b"070701" + b"".join(b"%08X" % v for v in fields) + name.encode() + b"\0"
    header += b"\0" * (-len(header) % 4)
    return header + data + b"\0" * (-len(data) % 4)
