"""Shared fixtures. Every test must leave this process holding no BPF
programs, maps, links or perf events, and no child processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

_KERNEL_OBJECT_KINDS = ("bpf-prog", "bpf-map", "bpf_link", "[perf_event]", "bpf-link")


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
    deadline = time.monotonic() + 2
    while children() and time.monotonic() < deadline:
        for kid in children():
            try:
                os.waitpid(kid, os.WNOHANG)
            except ChildProcessError:
                pass
        time.sleep(0.02)
    assert children() == [], f"test left child processes: {children()}"


def rg_programs() -> list[dict]:
    """runtimeguard's programs loaded on the host (bpftool), with their holders."""
    import json

    out = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True, check=True).stdout
    return [p for p in json.loads(out or "[]") if p.get("name", "").startswith("rg_")]


def pytest_sessionfinish(session, exitstatus):
    # Nothing of ours may outlive the suite: no program held by this process,
    # none pinned or orphaned.
    deadline = time.monotonic() + 3
    while True:
        try:
            progs = rg_programs()
        except (OSError, subprocess.CalledProcessError):
            return
        mine = [p for p in progs if any(h.get("pid") == os.getpid() for h in p.get("pids", []))]
        orphans = [p for p in progs if not p.get("pids")]
        # Programs are freed asynchronously after their last reference goes.
        if not (mine or orphans) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    if mine or orphans:
        session.exitstatus = 1
        print(f"\nruntimeguard programs left loaded: {[(p['id'], p['name']) for p in mine + orphans]}",
              file=sys.stderr)
