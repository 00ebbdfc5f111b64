"""Helpers for tests that drive real processes under a real Tracer."""

from __future__ import annotations

import errno
import os
import secrets
import subprocess
import sys
import textwrap
import time
from contextlib import contextmanager
from typing import Callable, Sequence

from runtimeguard import Event, Tracer


_backlogs: dict[int, list[Event]] = {}


def wait_for(tracer: Tracer, match: Callable[[Event], bool], timeout: float = 3.0) -> Event:
    """The first event that matches, or AssertionError after timeout."""
    deadline = time.monotonic() + timeout
    seen = 0
    # Events after the match stay queued for the next wait_for on this tracer.
    backlog = _backlogs.setdefault(id(tracer), [])
    while True:
        if not backlog:
            if time.monotonic() >= deadline:
                break
            backlog += tracer.poll(max(0.0, min(0.2, deadline - time.monotonic())))
        while backlog:
            ev = backlog.pop(0)
            seen += 1
            if match(ev):
                return ev
    raise AssertionError(f"no matching event within {timeout}s ({seen} others seen)")


def drain(tracer: Tracer, quiet: float = 0.3) -> list[Event]:
    """Everything until the ring has been empty for `quiet` seconds."""
    out: list[Event] = []
    while True:
        got = tracer.poll(quiet)
        if not got:
            return out
        out += got


def python_child(code: str, **kwargs) -> subprocess.Popen:
    """A Python child that runs `code`; the tracer never traces its own process."""
    return subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, **kwargs)


def run_python(code: str, timeout: float = 10) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          timeout=timeout).stdout


def fill_until_full(path) -> None:
    """Writes zeros to path until its filesystem has no space left."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(fd)


def mount(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["mount", *args], capture_output=True, text=True)


def unmount(mountpoint) -> None:
    """Unmounts, lazily if the mount is still busy."""
    if subprocess.run(["umount", str(mountpoint)], capture_output=True).returncode:
        subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True)


def compiled(directory, source: str, *flags: str) -> str:
    """tests/<source>, a C program, built with cc into directory; its path."""
    exe = os.path.join(str(directory), os.path.splitext(source)[0])
    subprocess.run(["cc", "-O1", *flags, "-o", exe, os.path.join(os.path.dirname(os.path.abspath(__file__)), source)],
                   check=True)
    return exe


def skip_only_without(present: bool, what: str) -> None:
    """Skips where the kernel lacks what a test needs; where it has it and the
    mechanism still does not work, the test fails instead."""
    import pytest

    if present:
        pytest.fail(f"{what}: this kernel has it, yet it does not work")
    pytest.skip(f"{what}: not in this kernel")


@contextmanager
def worker_in_a_cgroup(code: str, prefix: Sequence[str] = ()):
    """A fresh cgroup, and a Python worker running code inside it (started
    through prefix, e.g. ``unshare --net``), talking over its stdin and
    stdout; (cgroup path, process). The worker ends when its stdin closes."""
    from runtimeguard import environment

    cgroup = os.path.join(environment.cgroup2_mount(), f"rg-worker-{secrets.token_hex(3)}")
    os.mkdir(cgroup)

    def enter():
        with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
            f.write("0")

    proc = subprocess.Popen([*prefix, sys.executable, "-c", code], preexec_fn=enter, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        yield cgroup, proc
    finally:
        proc.stdin.close()
        proc.wait(timeout=10)
        os.rmdir(cgroup)


# A worker for worker_in_a_cgroup that connects or sends as told, a line
# "connect|send ADDRESS PORT tcp|udp" each, and answers each with the errno
# the call got (0: it went through). Nonblocking: nothing waits for a peer.
SOCKET_WORKER = textwrap.dedent("""
    import socket, sys
    for line in sys.stdin:
        op, address, port, protocol = line.split()
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        kind = socket.SOCK_STREAM if protocol == "tcp" else socket.SOCK_DGRAM
        where = (address, int(port)) if family == socket.AF_INET else (address, int(port), 0, 0)
        s = socket.socket(family, kind)
        s.setblocking(False)
        try:
            s.connect(where) if op == "connect" else s.sendto(b"x", where)
            result = 0
        except OSError as e:
            result = e.errno
        finally:
            s.close()
        print(result, flush=True)
""")


def socket_errnos(proc, queries: Sequence[tuple[str, str, int, str]]) -> list[int]:
    """Each (op, address, port, protocol) query's errno as SOCKET_WORKER saw it."""
    proc.stdin.write("".join(f"{op} {address} {port} {protocol}\n" for op, address, port, protocol in queries))
    proc.stdin.flush()
    return [int(proc.stdout.readline()) for _ in queries]
