"""The event model against real processes: every event carries the acting
task's credentials and name as they are when it happens (and the process
record follows them), and the batch API's rows say what the typed events
say. Expected values come from what the test itself did."""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time

import pytest

from runtimeguard import Tracer, schema
from runtimeguard.environment import cgroup2_mount
from helpers import drain

pytestmark = pytest.mark.root


@pytest.fixture
def cgroup():
    path = os.path.join(cgroup2_mount(), f"rg-test-{secrets.token_hex(4)}")
    os.mkdir(path)
    yield path
    os.rmdir(path)


def run_in(cgroup: str, argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    def enter():
        with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
            f.write("0")
    return subprocess.run(argv, preexec_fn=enter, capture_output=True, timeout=30, **kwargs)


CHANGE_IDENTITY = textwrap.dedent("""
    import ctypes, os, socket, sys
    before, after, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    pid = os.fork()
    if pid == 0:
        open(before).close()
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)
        ctypes.CDLL(None).prctl(15, b"rg-renamed", 0, 0, 0)  # PR_SET_NAME
        open(after).close()
        s = socket.socket()
        try:
            s.connect(("127.0.0.1", port))
        except OSError:
            pass
        os._exit(7)
    os.waitpid(pid, 0)
""")


@pytest.fixture
def shared_dir():
    """A directory nobody (uid 65534) can read, unlike pytest's tmp_path."""
    path = tempfile.mkdtemp(prefix="rg-test-")
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path)


def test_events_carry_the_credentials_and_name_of_the_moment(cgroup, shared_dir):
    # A forked child opens a file, drops to nobody and renames itself, then
    # opens, connects and exits: the events after the change say so, the one
    # before does not, and so do their processes.
    before, after = os.path.join(shared_dir, "before"), os.path.join(shared_dir, "after")
    for path in (before, after):
        with open(path, "w") as f:
            f.write("x")
        os.chmod(path, 0o644)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    try:
        with Tracer(events=["file_open", "net_connect", "process_exit", "process_fork"], cgroups=[cgroup]) as t:
            out = run_in(cgroup, [sys.executable, "-c", CHANGE_IDENTITY, str(before), str(after), str(port)])
            assert out.returncode == 0, out.stderr
            events = drain(t)
    finally:
        listener.close()
    child = next(ev.data.child_pid for ev in events if ev.name == "process_fork")
    mine = [ev for ev in events if ev.pid == child]
    opened = {ev.data.path: ev for ev in mine if ev.name == "file_open"}
    early, late = opened[before], opened[after]
    connect = next(ev for ev in mine if ev.name == "net_connect" and ev.data.port == port)
    exit_ = next(ev for ev in mine if ev.name == "process_exit")
    assert (early.uid, early.euid, early.gid) == (os.getuid(), os.geteuid(), os.getgid())
    assert early.comm == "python3" or early.comm.startswith("python")
    for ev in (late, connect, exit_):
        assert (ev.uid, ev.euid, ev.gid, ev.comm) == (65534, 65534, 65534, "rg-renamed"), ev.name
        process = ev.workload.process
        assert (process.uid, process.euid, process.gid, process.name) == (65534, 65534, 65534, "rg-renamed")
        assert ev.record().workload.process.uid == 65534
    # The event before the change keeps the process as it was then, read after.
    assert (early.workload.process.uid, early.workload.process.name) == (os.getuid(), early.comm)
    assert exit_.data.exit_code == 7


def test_the_batch_api_rows_say_what_the_events_say(cgroup, tmp_path):
    pytest.importorskip("numpy")
    files = [tmp_path / f"f{i}" for i in range(5)]
    for f in files:
        f.write_text("x")
    with Tracer(events=["file_open", "process_exec"], cgroups=[cgroup]) as t:
        out = run_in(cgroup, ["/bin/cat", *map(str, files), "/nonexistent-rg-path"])
        assert out.returncode == 1
        batches, deadline = [], time.monotonic() + 3
        while time.monotonic() < deadline:
            b = t.poll_batch(0.2)
            if len(b):
                batches.append(b)
            elif batches:
                break
    assert batches
    rows = [(b, i) for b in batches for i in range(len(b))]
    names = [n for b in batches for n in b.names()]
    assert "process_exec" in names
    cat_pid = next(int(b.rows[i]["pid"]) for b, i in rows if b.names()[i] == "process_exec")
    seen = {}
    for b, i in rows:
        r, ev = b.rows[i], b.event(i)
        assert (ev.id, ev.timestamp, ev.pid, ev.tid) == (int(r["id"]), int(r["timestamp"]), int(r["pid"]),
                                                          int(r["tid"]))
        assert (ev.seq, ev.cpu, ev.entity_id, ev.cgroup_id) == (int(r["seq"]), int(r["cpu"]), int(r["entity_id"]),
                                                                int(r["cgroup_id"]))
        assert (ev.uid, ev.gid) == (int(r["uid"]), int(r["gid"]))
        if ev.name == "file_open" and ev.pid == cat_pid:
            assert int(r["result"]) == ev.data.result
            seen[ev.data.path] = ev
    for f in files:
        ev = seen[str(f)]
        assert ev.data.result >= 0 and ev.data.inode == os.stat(f).st_ino
        assert ev.workload.process.executable in ("/bin/cat", "/usr/bin/cat")
    assert seen["/nonexistent-rg-path"].data.result == -2
    # A sub-batch keeps the records its rows point into.
    b = batches[0]
    opens = b.select(b.rows["id"] == 4)
    assert all(n == "file_open" for n in opens.names())
    assert [opens.event(i).data.path for i in range(len(opens))] == [
        b.event(i).data.path for i in range(len(b)) if b.names()[i] == "file_open"]


LOCAL_ENDS = textwrap.dedent("""
    import socket, sys
    port, port6 = int(sys.argv[1]), int(sys.argv[2])
    s = socket.socket()
    s.connect(("127.0.0.1", port))
    s6 = socket.socket(socket.AF_INET6)
    s6.connect(("::1", port6))
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.sendto(b"x", ("127.0.0.1", 9))
    refused = socket.socket()
    try:
        refused.connect(("127.0.0.1", int(sys.argv[3])))
    except ConnectionRefusedError:
        pass
    print(s.getsockname()[1], s6.getsockname()[1], u.getsockname()[1])
""")


def test_connects_and_sends_carry_their_local_end(cgroup):
    listeners = [socket.socket(), socket.socket(socket.AF_INET6), socket.socket()]
    try:
        listeners[0].bind(("127.0.0.1", 0))
        listeners[1].bind(("::1", 0))
        listeners[2].bind(("127.0.0.1", 0))  # bound, never listening: refused
        for s in listeners[:2]:
            s.listen()
        ports = [s.getsockname()[1] for s in listeners]
        with Tracer(events=["net_connect", "net_sendmsg"], cgroups=[cgroup]) as t:
            out = run_in(cgroup, [sys.executable, "-c", LOCAL_ENDS, *map(str, ports)], text=True)
            assert out.returncode == 0, out.stderr
            events = drain(t)
    finally:
        for s in listeners:
            s.close()
    local_v4, local_v6, local_udp = map(int, out.stdout.split())
    by_port = {ev.data.port: ev.data for ev in events}
    v4, v6, udp, refused = by_port[ports[0]], by_port[ports[1]], by_port[9], by_port[ports[2]]
    assert (v4.local_address, v4.local_port) == ("127.0.0.1", local_v4)
    assert (v6.local_address, v6.local_port) == ("::1", local_v6)
    assert (udp.local_address, udp.local_port, udp.syscall) == ("0.0.0.0", local_udp, "sendto")
    assert refused.result == -111 and refused.local_port == 0  # the port a refused connect took is released


def test_processes_in_a_pid_namespace_carry_their_own_pid_and_namespace(cgroup):
    # In a new pid namespace the shell is pid 1 there and execs into the
    # command, whose exec (and fork) say so, with the namespace's inode.
    script = "echo $$; readlink /proc/self/ns/pid; exec /bin/sh -c 'echo $$; sleep 0.1'"
    with Tracer(events=["process_exec", "process_fork"], cgroups=[cgroup]) as t:
        out = run_in(cgroup, ["unshare", "--pid", "--fork", "/bin/sh", "-c", script], text=True)
        assert out.returncode == 0, out.stderr
        events = drain(t)
    lines = out.stdout.split()
    inside_pid, ns_link, exec_pid = int(lines[0]), lines[1], int(lines[2])
    pid_ns = int(ns_link.partition("[")[2].rstrip("]"))
    assert inside_pid == exec_pid == 1
    assert pid_ns != int(os.readlink("/proc/self/ns/pid").partition("[")[2].rstrip("]"))
    inside = [ev for ev in events if ev.name == "process_exec" and ev.data.pid_ns == pid_ns]
    execs = [ev for ev in inside if ev.pid == inside[0].pid]
    assert [ev.data.argv[:2] for ev in execs] == [["/bin/sh", "-c"], ["/bin/sh", "-c"]]
    others = {ev.data.argv[0]: ev.data.ns_pid for ev in inside if ev.pid != execs[0].pid}
    assert set(others) == {"readlink", "sleep"} and all(n > 1 for n in others.values())
    for ev in execs:
        assert ev.data.ns_pid == 1 and ev.pid != 1
        assert (ev.workload.process.ns_pid, ev.workload.process.pid_ns) == (1, pid_ns)
    forks = [ev for ev in events if ev.name == "process_fork" and ev.data.child_pid == execs[0].pid]
    assert [(ev.data.child_ns_pid, ev.data.child_pid_ns) for ev in forks] == [(1, pid_ns)]
    # Processes the tracer did not see start are read from /proc the same way.
    mine = Tracer(events=["process_exec"])
    try:
        mine.start()
        me = mine.process(os.getpid())
    finally:
        mine.close()
    assert me.ns_pid == os.getpid()
    assert me.pid_ns == int(os.readlink("/proc/self/ns/pid").partition("[")[2].rstrip("]"))


def test_names_that_are_not_utf8_keep_their_bytes(cgroup, shared_dir):
    # Two names that differ only in bytes that are not UTF-8 show the same
    # text (U+FFFD); their bytes tell them apart, exactly.
    a = os.fsencode(shared_dir) + b"/x\xff"
    b = os.fsencode(shared_dir) + b"/x\xfe"
    for path in (a, b):
        with open(path, "w") as f:
            f.write("x")
    script = "import os, sys\nfor p in sys.argv[1:]:\n    open(os.fsencode(p)).close()\nos.execv('/bin/true', ['true', sys.argv[1]])"
    with Tracer(events=["file_open", "process_exec"], cgroups=[cgroup]) as t:
        out = run_in(cgroup, [sys.executable, "-c", script, os.fsdecode(a), os.fsdecode(b)])
        assert out.returncode == 0, out.stderr
        events = drain(t)
    opens = [ev.data for ev in events if ev.name == "file_open" and ev.data.path_bytes is not None]
    assert [d.path_bytes for d in opens] == [a, b]
    assert opens[0].path == opens[1].path == os.fsdecode(shared_dir) + "/x\ufffd"
    assert [d.os_path for d in opens] == [a, b]
    true = next(ev.data for ev in events if ev.name == "process_exec" and ev.data.argv[0] == "true")
    assert true.argv_bytes == [b"true", a] and true.argv == ["true", opens[0].path]
    assert true.executable_bytes is None and true.comm_bytes is None  # valid UTF-8: no copy
    line = json.loads(schema.json_encoder.encode(next(
        ev for ev in events if ev.name == "file_open" and ev.data.path_bytes == b).record()))
    assert base64.b64decode(line["data"]["path_bytes"]) == b


def test_processes_nobody_asked_about_are_learned_across_tiny_batches(cgroup):
    # Only net_connect is asked for: the forks and exits of 200 subshells
    # (no exec: never an event) and of 100 execs of true only feed the
    # process table, in polls of at most 8 entries.
    script = ("for i in $(seq 200); do (read x < /dev/null) & echo $!; done; wait; "
              "for i in $(seq 100); do /bin/true & echo $!; done; wait")
    with Tracer(events=["net_connect"], cgroups=[cgroup], batch_limit=8) as t:
        out = run_in(cgroup, ["/bin/sh", "-c", script], text=True)
        assert out.returncode == 0, out.stderr
        drain(t)
        children = [int(pid) for pid in out.stdout.split()]
        assert len(children) == 300
        shell = os.path.realpath("/bin/sh")
        for i, pid in enumerate(children):
            process = t.process(pid)
            assert process is not None and process.pid == pid, pid
            assert process.executable == (shell if i < 200 else os.path.realpath("/bin/true")), pid
        assert t.stats().delivered["process_fork"] >= 300


def test_a_parent_that_predates_the_tracer_is_named_after_it_exits(cgroup):
    # The shell starts before the tracer, forks and execs a child after, and
    # exits before anyone reads the child's event: its parent is still named
    # (read from /proc when the poll first saw the child, while it ran).
    shell = subprocess.Popen(["/bin/sh", "-c", "read go; /bin/true rg-late-child; sleep 1"], stdin=subprocess.PIPE,
                             preexec_fn=lambda: open(os.path.join(cgroup, "cgroup.procs"), "w").write("0"))
    try:
        with Tracer(events=["process_exec"], cgroups=[cgroup]) as t:
            shell.stdin.write(b"go\n")
            shell.stdin.close()
            events = drain(t)
            shell.wait(timeout=30)
            events += drain(t)
            child = next(ev for ev in events if ev.name == "process_exec" and ev.data.argv[-1:] == ["rg-late-child"])
            assert not os.path.exists(f"/proc/{shell.pid}")
            parent = child.workload.process.parent
            assert parent is not None and parent.pid == shell.pid
            assert parent.executable == os.path.realpath("/bin/sh")
    finally:
        if shell.poll() is None:
            shell.kill()
            shell.wait()


def test_the_native_polls_cpu_is_counted():
    with Tracer(events=["process_exec"]) as t:
        before = time.thread_time_ns()
        subprocess.run(["/bin/true"])
        drain(t)
        spent = time.thread_time_ns() - before
        polled = t.stats().poll_cpu_ns
    # The polls ran on this thread: part of its CPU time, and not nothing.
    assert 0 < polled <= spent
