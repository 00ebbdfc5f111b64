"""Shared fixtures. Every test must leave this process holding no BPF
programs, maps, links or perf events, and no child processes."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

_KERNEL_OBJECT_KINDS = ("bpf-prog", "bpf-map", "bpf_link", "[perf_event]", "bpf-link")

_ROOT_REASON = ("needs root (euid 0): loads BPF programs, makes cgroups, namespaces or mounts, runs the guard or "
                "the test VM; running as uid {}")


def pytest_configure(config):
    config.addinivalue_line("markers", "root: needs root (euid 0); skipped, with the reason, when not root")


def pytest_collection_modifyitems(config, items):
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason=_ROOT_REASON.format(os.geteuid()))
    for item in items:
        if item.get_closest_marker("root") is not None:
            item.add_marker(skip)


def will_run(item) -> bool:
    """Whether the test runs here: not one marked root in a session without root."""
    return os.geteuid() == 0 or item.get_closest_marker("root") is None


def kernel_objects(pid: int | str = "self") -> list[str]:
    """The BPF and perf-event descriptors a process holds."""
    found = []
    fd_dir = f"/proc/{pid}/fd"
    for fd in os.listdir(fd_dir):
        try:
            target = os.readlink(f"{fd_dir}/{fd}")
        except OSError:
            continue
        if target.startswith("anon_inode:") and any(k in target for k in _KERNEL_OBJECT_KINDS):
            found.append(target)
    return sorted(found)


def background_pids() -> set[int]:
    """Processes the session runs beside the tests on purpose (the LSM
    checks' VM, started at collection): not a test's leftovers."""
    module = sys.modules.get("test_guard_lsm")
    return module.background_pids() if module is not None else set()


def children(pid: int | str = "self") -> list[int]:
    kids = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids += [int(x) for x in f.read().split()]
        except OSError:
            pass
    return kids


@pytest.fixture(autouse=True)
def leaves_nothing_behind():
    before = kernel_objects()
    yield
    import gc

    gc.collect()
    left = kernel_objects()
    assert left == before, f"test left BPF objects open: {sorted(set(left) - set(before))}"
    def leftovers():
        return [kid for kid in children() if kid not in background_pids()]

    deadline = time.monotonic() + 2
    while leftovers() and time.monotonic() < deadline:
        for kid in leftovers():
            try:
                os.waitpid(kid, os.WNOHANG)
            except ChildProcessError:
                pass
        time.sleep(0.02)
    assert leftovers() == [], f"test left child processes: {leftovers()}"


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 64 KiB tmpfs (16 pages) that fills up after a few hundred log lines;
    unmounted at the end."""
    mountpoint = tmp_path / "tmpfs"
    mountpoint.mkdir()
    from helpers import mount, unmount

    done = mount("-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(mountpoint))
    if done.returncode:
        # Root can mount a tmpfs on any kernel this runs on: only without root is it a skip.
        if os.geteuid() != 0:
            pytest.skip(f"mounting a tmpfs needs root: {done.stderr.strip()}")
        pytest.fail(f"cannot mount a tmpfs: {done.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        unmount(mountpoint)
    assert not os.path.ismount(mountpoint)


@pytest.fixture(scope="session")
def vm_assets():
    """The test VM's kernel and initramfs (tests/kernelvm.py), built once. The
    tests that need it skip, with the reason, only where this kind of machine
    cannot have it and not in CI; a build that fails where it could work
    fails them (kernelvm.outcome())."""
    from kernelvm import VmError, ensure_vm_assets, outcome

    try:
        return ensure_vm_assets()
    except VmError as e:
        verdict, message = outcome(e)
    if verdict == "skip":
        pytest.skip(message)
    pytest.fail(message, pytrace=False)


def rg_program_ids() -> set[int]:
    """runtimeguard's programs loaded on the host (bpftool)."""
    import json

    out = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True, check=True).stdout
    return {p["id"] for p in json.loads(out or "[]") if p.get("name", "").startswith("rg_")}


def held_program_ids(pid: int | str = "self") -> set[int]:
    """Programs a process keeps loaded, through program or link descriptors."""
    ids = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fdinfo")
    except OSError:
        return ids
    for fd in fds:
        try:
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                for line in f:
                    if line.startswith("prog_id:"):
                        ids.add(int(line.split()[1]))
        except OSError:
            continue
    return ids


def pytest_collection_finish(session):
    # Tests that run for minutes outside this process (an emulated VM) start
    # now, beside the others, if their module says how.
    started = set()
    for item in session.items:
        if not will_run(item):
            continue
        module = getattr(item, "module", None)
        start = getattr(module, "start_early", None)
        if start is not None and module not in started:
            started.add(module)
            start()


def pytest_sessionfinish(session, exitstatus):
    # Nothing of ours may outlive the suite: every runtimeguard program still
    # loaded must be held by some other live process (another tool's tracer).
    # A check that cannot run fails the session too: silence would pass a leak.
    # Without root no test can load a program, nor can bpftool list them.
    if os.geteuid() != 0:
        return
    try:
        deadline = time.monotonic() + 3
        while True:
            left = rg_program_ids()
            if left:
                for pid in filter(str.isdigit, os.listdir("/proc")):
                    if int(pid) != os.getpid():
                        left -= held_program_ids(pid)
            # Programs are freed asynchronously after their last reference goes.
            if not left or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    except subprocess.CalledProcessError as e:
        why = f"bpftool -j prog show exited with status {e.returncode}: {(e.stderr or '').strip()}"
    except (OSError, ValueError) as e:  # no bpftool, or output that is not JSON
        why = f"{type(e).__name__}: {e}"
    else:
        why = None
    if why is not None:
        session.exitstatus = 1
        print(f"\ncannot tell whether the tests left runtimeguard programs loaded ({why}); "
              "`make deps` installs bpftool", file=sys.stderr)
        return
    if left:
        session.exitstatus = 1
        print(f"\nruntimeguard programs left loaded by the tests: {sorted(left)}", file=sys.stderr)


@pytest.fixture
def fork():
    """Starts a process running a function (a fork of this one); kills
    whatever is still running at the end."""
    context = multiprocessing.get_context("fork")
    started = []

    def start(target, *args, **kwargs):
        proc = context.Process(target=target, args=args, kwargs=kwargs)
        proc.start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.is_alive():
            proc.kill()
        proc.join()


NOBODY = 65534
_CAP_SYS_ADMIN, _CAP_PERFMON, _CAP_BPF = 21, 38, 39


@pytest.fixture(scope="session")
def unprivileged():
    """A command prefix that runs a program as nobody (uid and gid 65534, no
    groups, without CAP_SYS_ADMIN, CAP_BPF or CAP_PERFMON), with this tree
    importable: [] when the tests already run without root. Where this
    interpreter is out of nobody's reach (pyenv under a /root of mode 0700),
    nobody keeps CAP_DAC_READ_SEARCH alone, to read it: no privilege over BPF,
    cgroups, mounts or fanotify. Skips, saying why, when neither works."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is needed to run a command as nobody")
    as_nobody = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    reading = ["--inh-caps=-all,+dac_read_search", "--ambient-caps=-all,+dac_read_search"]
    check = ("import os, runtimeguard.cli; caps = next(int(line.split()[1], 16) for line in open('/proc/self/status') "
             "if line.startswith('CapEff:')); print(os.geteuid(), caps)")
    failures = []
    for prefix in (as_nobody, as_nobody + reading):
        done = subprocess.run([*prefix, sys.executable, "-c", check], cwd=ROOT, env=unprivileged_env(),
                              capture_output=True, text=True, timeout=60)
        if done.returncode == 0:
            euid, caps = map(int, done.stdout.split())
            assert euid == NOBODY, done.stdout
            assert not caps & (1 << _CAP_SYS_ADMIN | 1 << _CAP_PERFMON | 1 << _CAP_BPF), f"capabilities {caps:#x}"
            return prefix
        failures.append(f"{' '.join(prefix)}: {done.stderr.strip().splitlines()[-1:]}")
    pytest.skip(f"cannot run {sys.executable} with this tree as nobody: {'; '.join(failures)}")


def unprivileged_env() -> dict[str, str]:
    """The environment for a command run through the unprivileged prefix: this
    tree importable, no bytecode written into it."""
    return {**os.environ, "PYTHONPATH": ROOT, "PYTHONDONTWRITEBYTECODE": "1"}
