"""Every field the kernel fills, from real processes, against what the test
itself knows: the pid it spawned or was told, the ids it set, the CPU it
pinned, the fd the workload got, os.stat of the file, the port it bound.

Nothing expected here is computed by runtimeguard: entity ids come from the
reference in test_encoder.py fed with /proc/<pid>/stat, cgroup ids from
os.stat of the cgroup directory, times from the test's own clock.
"""

from __future__ import annotations

import json
import os
import resource
import secrets
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from runtimeguard import Tracer
from runtimeguard.guard import Guard
from helpers import drain, python_child
from test_encoder import BOOT_ID, NS_PER_TICK, reference_entity_id
from test_guard import DENIED_V4, make_policy, secrets_dir  # noqa: F401 - secrets_dir is a fixture

pytestmark = pytest.mark.root

# Clocks: the encoder turns boot time into wall time once; allow for that
# and for a CPU's timestamp being read a little before the test's own.
SLACK_NS = 50_000_000


def start_ticks(pid: int) -> int:
    """Field 22 of /proc/<pid>/stat: the start time in clock ticks since boot."""
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[19])


def entity_of(pid: int) -> int:
    return reference_entity_id(pid, start_ticks(pid) * NS_PER_TICK, BOOT_ID, NS_PER_TICK)


def cgroup2_root() -> str:
    with open("/proc/self/mounts") as f:
        return next(line.split()[1] for line in f if line.split()[2] == "cgroup2")


def cgroup_id_of(pid: int | str = "self") -> int:
    """The cgroup v2 id of a process: the inode of its cgroup directory."""
    with open(f"/proc/{pid}/cgroup") as f:
        path = next(line.split(":", 2)[2].strip() for line in f if line.startswith("0::"))
    return os.stat(cgroup2_root() + path).st_ino


def first_of(tracer: Tracer, matchers: dict, timeout: float = 5.0) -> dict:
    """The first event each matcher takes, whatever order they come in
    (events of different CPUs, a core dump delaying one exit)."""
    found, deadline = {}, time.monotonic() + timeout
    while len(found) < len(matchers) and time.monotonic() < deadline:
        for e in tracer.poll(0.2):
            for key, match in matchers.items():
                if key not in found and match(e):
                    found[key] = e
    assert len(found) == len(matchers), f"never seen: {sorted(set(matchers) - set(found))}"
    return {key: found[key] for key in matchers}


def within(value: int, lo: int, hi: int) -> bool:
    return lo - SLACK_NS <= value <= hi + SLACK_NS


# ---------------------------------------------------------------- processes

# The shell forks /bin/sleep, says its pid, waits for it, exits 7.
SHELL = "/bin/sleep 0.3 & echo $!; wait $!; exit 7"


def test_exec_fork_exit_of_a_shell_under_other_ids_on_a_pinned_cpu():
    cpu = max(os.sched_getaffinity(0))
    argv = ["/bin/sh", "-c", SHELL, "rg-dollar-zero"]

    def become():
        os.sched_setaffinity(0, {cpu})
        os.setgroups([])
        os.setresgid(4322, 65534, 65534)  # real gid 4322, effective 65534
        os.setresuid(4321, 65534, 65534)  # real uid 4321, effective 65534

    with Tracer(events=["process_exec", "process_fork", "process_exit"]) as t:
        before = time.time_ns()
        shell = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, preexec_fn=become,
                                 env={"PATH": "/usr/bin:/bin"})
        sleeper = int(shell.stdout.readline())
        shell_entity, sleeper_entity = entity_of(shell.pid), entity_of(sleeper)
        assert shell.wait(timeout=10) == 7
        after = time.time_ns()
        found = first_of(t, {
            "spawn": lambda e: e.name == "process_fork" and e.data.child_pid == shell.pid,
            "sh_exec": lambda e: e.name == "process_exec" and e.pid == shell.pid,
            "sh_fork": lambda e: e.name == "process_fork" and e.pid == shell.pid,
            "sleep_exec": lambda e: e.name == "process_exec" and e.pid == sleeper,
            "sleep_exit": lambda e: e.name == "process_exit" and e.pid == sleeper,
            "sh_exit": lambda e: e.name == "process_exit" and e.pid == shell.pid,
        })
    spawn, sh_exec, sh_fork, sleep_exec, sleep_exit, sh_exit = found.values()
    me, my_cgroup = os.getpid(), cgroup_id_of()

    # This process forked the shell, from its main thread.
    assert (spawn.pid, spawn.tid, spawn.entity_id) == (me, threading.get_native_id(), entity_of(me))
    assert (spawn.data.child_pid, spawn.data.child_entity_id) == (shell.pid, shell_entity)
    assert within(spawn.data.child_start_time, before, after)

    d = sh_exec.data
    assert (sh_exec.pid, sh_exec.tid, sh_exec.entity_id, sh_exec.cgroup_id, sh_exec.cpu) == (
        shell.pid, shell.pid, shell_entity, my_cgroup, cpu)
    assert (d.executable, d.argv, d.comm) == ("/bin/sh", argv, "sh")
    assert (d.uid, d.euid, d.gid) == (4321, 65534, 4322)
    assert (d.ppid, d.parent_entity_id) == (me, entity_of(me))
    assert d.start_time == spawn.data.child_start_time and within(d.start_time, before, after)
    assert (d.return_code, d.executable_truncated, d.argv_truncated) == (0, False, False)
    assert within(sh_exec.timestamp, before, after) and sh_exec.action == "observed"

    assert (sh_fork.tid, sh_fork.cpu, sh_fork.cgroup_id) == (shell.pid, cpu, my_cgroup)
    assert (sh_fork.data.child_pid, sh_fork.data.child_entity_id) == (sleeper, sleeper_entity)

    d = sleep_exec.data
    assert (sleep_exec.entity_id, sleep_exec.cpu) == (sleeper_entity, cpu)
    assert (d.executable, d.argv, d.comm) == ("/bin/sleep", ["/bin/sleep", "0.3"], "sleep")
    # Real ids are inherited; the shell may have dropped its effective uid
    # (dash and bash do when it differs from the real one): not asserted.
    assert (d.uid, d.gid, d.ppid, d.parent_entity_id) == (4321, 4322, shell.pid, shell_entity)
    assert d.start_time == sh_fork.data.child_start_time

    assert (sleep_exit.data.exit_code, sleep_exit.data.signal, sleep_exit.data.core_dumped) == (0, None, False)
    assert 300_000_000 <= sleep_exit.data.duration_ns <= after - before
    assert (sh_exit.data.exit_code, sh_exit.data.signal, sh_exit.data.core_dumped) == (7, None, False)
    assert 300_000_000 <= sh_exit.data.duration_ns <= after - before
    assert (sh_exit.entity_id, sh_exit.cpu) == (shell_entity, cpu)
    assert within(sh_exit.timestamp, before, after)
    assert sh_exit.timestamp - sh_exec.data.start_time == pytest.approx(sh_exit.data.duration_ns, abs=SLACK_NS)


def test_exit_status_signal_and_core_dump(tmp_path):
    def core_limit(n):
        return lambda: resource.setrlimit(resource.RLIMIT_CORE, (n, n))

    with Tracer(events=["process_exit"]) as t:
        dumped = subprocess.Popen(["/bin/sleep", "30"], preexec_fn=core_limit(resource.RLIM_INFINITY), cwd=tmp_path)
        undumped = subprocess.Popen(["/bin/sleep", "30"], preexec_fn=core_limit(0), cwd=tmp_path)
        terminated = subprocess.Popen(["/bin/sleep", "30"])
        high = subprocess.Popen(["/bin/sh", "-c", "exit 255"])
        statuses = {}
        for proc, sig in ((dumped, signal.SIGQUIT), (undumped, signal.SIGQUIT), (terminated, signal.SIGTERM)):
            proc.send_signal(sig)
        for proc in (dumped, undumped, terminated, high):
            statuses[proc.pid] = os.waitpid(proc.pid, 0)[1]
            proc.returncode = os.waitstatus_to_exitcode(statuses[proc.pid])
        wanted = [dumped.pid, undumped.pid, terminated.pid, high.pid]
        got = {pid: ev.data for pid, ev in first_of(t, {
            pid: lambda e, pid=pid: e.name == "process_exit" and e.pid == pid for pid in wanted}).items()}
    # What wait(2) said, and what the kernel reported.
    assert os.WCOREDUMP(statuses[dumped.pid]), "this machine did not dump a core: nothing to compare"
    assert not os.WCOREDUMP(statuses[undumped.pid])
    assert [(got[pid].exit_code, got[pid].signal, got[pid].core_dumped) for pid in wanted] == [
        (None, 3, True), (None, 3, False), (None, 15, False), (255, None, False)]


# ---------------------------------------------------------------- files

# Each open through its own syscall number, with flags and mode written out;
# the results (descriptors or -errno) and the thread's id are printed.
OPENS = textwrap.dedent("""
    import ctypes, json, os, sys, threading
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    class OpenHow(ctypes.Structure):
        _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]
    def call(nr, *args):
        r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) if isinstance(a, int) else a for a in args])
        return r if r >= 0 else -ctypes.get_errno()
    AT_FDCWD = -100
    os.chdir(sys.argv[1])
    how = OpenHow(0o102, 0o644, 4)  # O_RDWR|O_CREAT, RESOLVE_NO_SYMLINKS
    out = {}
    sys.stdin.readline()
    out["open"] = call(2, b"a", 0, 0)                          # open(O_RDONLY)
    out["creat"] = call(85, b"b", 0o640)                       # creat
    out["openat"] = call(257, AT_FDCWD, b"c", 0o301, 0o600)    # O_WRONLY|O_CREAT|O_EXCL
    out["openat2"] = call(437, AT_FDCWD, b"d", ctypes.byref(how), 24)
    out["exists"] = call(257, AT_FDCWD, b"c", 0o301, 0o600)    # EEXIST
    out["missing"] = call(2, b"missing/x", 0, 0)               # ENOENT
    def in_thread():
        out["thread"] = call(257, AT_FDCWD, b"a", 0o4000, 0)   # O_NONBLOCK
        out["tid"] = threading.get_native_id()
    worker = threading.Thread(target=in_thread)
    worker.start()
    worker.join()
    print(json.dumps(out), flush=True)
""")


def traced_go(child: subprocess.Popen, kinds: list[str]) -> tuple[dict, list]:
    """Traces a child waiting for "go" on its stdin: what it printed (one
    JSON line) and the events of those kinds it made; the child is reaped."""
    try:
        with Tracer(events=kinds, pids=[child.pid]) as t:
            child.stdin.write("go\n")
            child.stdin.flush()
            out = json.loads(child.stdout.readline())
            events = drain(t)
    finally:
        child.stdin.close()
        child.wait(timeout=10)
    return out, events


def test_file_open_fields_for_each_open_syscall(tmp_path):
    (tmp_path / "a").write_text("a\n")
    child = subprocess.Popen([sys.executable, "-c", OPENS, str(tmp_path)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    out, events = traced_go(child, ["file_open"])
    st = {name: os.stat(tmp_path / name) for name in "abcd"}
    pid = child.pid

    def opened(path, flags, mode, result, syscall, tid=pid):
        return (path, flags, mode, result, st[path].st_dev, st[path].st_ino, syscall, pid, tid)

    expected = [
        opened("a", 0, 0, out["open"], "open"),
        opened("b", 0o1101, 0o640, out["creat"], "creat"),  # creat is O_WRONLY|O_CREAT|O_TRUNC
        opened("c", 0o301, 0o600, out["openat"], "openat"),
        opened("d", 0o102, 0o644, out["openat2"], "openat2"),
        ("c", 0o301, 0o600, -17, 0, 0, "openat", pid, pid),
        ("missing/x", 0, 0, -2, 0, 0, "open", pid, pid),
        opened("a", 0o4000, 0, out["thread"], "openat", tid=out["tid"]),
    ]
    assert all(out[k] >= 3 for k in ("open", "creat", "openat", "openat2", "thread"))
    assert out["tid"] != pid
    mine = sorted((e for e in events if e.data.path in ("a", "b", "c", "d", "missing/x")), key=lambda e: e.timestamp)
    assert [(e.data.path, e.data.flags, e.data.mode, e.data.result, e.data.device, e.data.inode, e.data.syscall,
             e.pid, e.tid) for e in mine] == expected
    assert all(not e.data.path_truncated for e in mine)
    assert [e.target_context is None for e in mine] == [False, False, False, False, True, True, False]


# ---------------------------------------------------------------- network

CONNECTS = textwrap.dedent("""
    import json, socket, sys
    tcp4, refused4, tcp6, udp6_sink, udp4_sink = map(int, sys.argv[1:])
    out = {}
    keep = []
    def sock(family, kind):
        s = socket.socket(family, kind)
        keep.append(s)
        return s
    sys.stdin.readline()
    s = sock(socket.AF_INET, socket.SOCK_STREAM); s.connect(("127.0.0.1", tcp4)); out["tcp4"] = s.fileno()
    s = sock(socket.AF_INET, socket.SOCK_STREAM); out["refused4_errno"] = s.connect_ex(("127.0.0.1", refused4))
    out["refused4"] = s.fileno()
    s = sock(socket.AF_INET6, socket.SOCK_STREAM); s.connect(("::1", tcp6)); out["tcp6"] = s.fileno()
    s = sock(socket.AF_INET6, socket.SOCK_DGRAM); s.connect(("::1", 5353)); out["udp6"] = s.fileno()
    s = sock(socket.AF_INET6, socket.SOCK_DGRAM); out["sent6"] = s.sendto(b"12345", ("::1", udp6_sink))
    out["sendto6"] = s.fileno()
    s = sock(socket.AF_INET, socket.SOCK_DGRAM); out["sent4"] = s.sendmsg([b"abc"], [], 0, ("127.0.0.1", udp4_sink))
    out["sendmsg4"] = s.fileno()
    print(json.dumps(out), flush=True)
""")


def test_connect_and_send_fields_tcp_udp_v4_v6():
    servers = []

    def bound(family, kind, host, listen):
        s = socket.socket(family, kind)
        s.bind((host, 0))
        if listen:
            s.listen(8)
        servers.append(s)
        return s.getsockname()[1]

    ports = [bound(socket.AF_INET, socket.SOCK_STREAM, "127.0.0.1", True),
             bound(socket.AF_INET, socket.SOCK_STREAM, "127.0.0.1", False),  # bound, not listening: refused
             bound(socket.AF_INET6, socket.SOCK_STREAM, "::1", True),
             bound(socket.AF_INET6, socket.SOCK_DGRAM, "::1", False),
             bound(socket.AF_INET, socket.SOCK_DGRAM, "127.0.0.1", False)]
    tcp4, refused4, tcp6, udp6_sink, udp4_sink = ports
    child = subprocess.Popen([sys.executable, "-c", CONNECTS, *map(str, ports)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        out, events = traced_go(child, ["net_connect", "net_sendmsg"])
    finally:
        for s in servers:
            s.close()
    assert out["refused4_errno"] == 111 and (out["sent6"], out["sent4"]) == (5, 3)
    got = [(e.name, e.data.family, e.data.protocol, e.data.address, e.data.port, e.data.result, e.data.fd,
            getattr(e.data, "syscall", None), e.pid, e.target_context.formatted)
           for e in sorted(events, key=lambda e: e.timestamp)]
    pid = child.pid
    assert got == [
        ("net_connect", "ipv4", "tcp", "127.0.0.1", tcp4, 0, out["tcp4"], None, pid, f"127.0.0.1:{tcp4}"),
        ("net_connect", "ipv4", "tcp", "127.0.0.1", refused4, -111, out["refused4"], None, pid,
         f"127.0.0.1:{refused4}"),
        ("net_connect", "ipv6", "tcp", "::1", tcp6, 0, out["tcp6"], None, pid, f"[::1]:{tcp6}"),
        ("net_connect", "ipv6", "udp", "::1", 5353, 0, out["udp6"], None, pid, "[::1]:5353"),
        ("net_sendmsg", "ipv6", "udp", "::1", udp6_sink, 5, out["sendto6"], "sendto", pid, f"[::1]:{udp6_sink}"),
        ("net_sendmsg", "ipv4", "udp", "127.0.0.1", udp4_sink, 3, out["sendmsg4"], "sendmsg", pid,
         f"127.0.0.1:{udp4_sink}"),
    ]


# A small ring wrapped many times, its bytes first written with "A"s (failed
# opens of a long path): a field the kernel leaves unwritten in a record
# shows whatever an earlier one left there.
SCRIBBLE = """
import os, time


def scribble():
    time.sleep(0.005)  # lets the consumer keep up with the small ring
    for _ in range(3):
        try:
            os.open("/nonexistent-rg-" + "A" * 230, os.O_RDONLY)
        except FileNotFoundError:
            pass
"""

NOT_A_SOCKET = SCRIBBLE + textwrap.dedent("""
    import ctypes, os, socket, struct, sys
    libc = ctypes.CDLL(None, use_errno=True)
    addr = struct.pack("<HH4s8x", socket.AF_INET, socket.htons(9), socket.inet_aton("127.0.0.1"))
    null, event = os.open("/dev/null", os.O_RDONLY), os.eventfd(0)
    sys.stdin.readline()
    for _ in range(60):
        scribble()
        libc.connect(null, addr, len(addr))   # ENOTSOCK: no socket, so no protocol
        libc.connect(event, addr, len(addr))  # the same through a file whose private data is no socket
    print(null, event, flush=True)
""")


def scribbled_run(code: str, kind: str, *args: str) -> tuple[list, str]:
    """Runs a SCRIBBLE workload under a tracer with a 4 KiB ring: its events
    of kind (the scribbling opens feed the ring but are not kept) and what it
    printed."""
    child = subprocess.Popen([sys.executable, "-c", code, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
    try:
        with Tracer(events=[kind, "file_open"], pids=[child.pid], ring_buffer_size=4096, max_latency_ms=2) as t:
            child.stdin.write("go\n")
            child.stdin.flush()
            events = []
            while child.poll() is None:
                events += t.poll(0.02)
            events += drain(t)
    finally:
        child.wait(timeout=10)
    return [e for e in events if e.name == kind], child.stdout.read()


def test_connect_on_a_descriptor_that_is_no_socket_has_no_protocol():
    not_socket, printed = scribbled_run(NOT_A_SOCKET, "net_connect")
    null, event = map(int, printed.split())
    assert len(not_socket) >= 40, f"only {len(not_socket)} of 120 reported"
    assert {(e.data.protocol, e.data.result, e.data.fd, e.data.address, e.data.port) for e in not_socket} == {
        (None, -88, null, "127.0.0.1", 9), (None, -88, event, "127.0.0.1", 9)}  # ENOTSOCK


# ---------------------------------------------------------------- ptrace and process memory

PTRACE_AND_MEMORY = textwrap.dedent("""
    import ctypes, json, os, sys, time
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    def call(nr, *args):
        r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) if isinstance(a, int) else a for a in args])
        return r if r >= 0 else -ctypes.get_errno()
    class IOV(ctypes.Structure):
        _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
    known = ctypes.create_string_buffer(b"rg-known", 8)  # at the same address in the fork
    target = os.fork()
    if target == 0:
        time.sleep(30)
        os._exit(0)
    print(target, flush=True)
    sys.stdin.readline()
    out = {}
    word = ctypes.c_long()
    out["attach"] = call(101, 16, target, 0, 0)                   # PTRACE_ATTACH
    os.waitpid(target, 0)
    out["peek"] = call(101, 2, target, ctypes.addressof(known), ctypes.addressof(word))  # PTRACE_PEEKDATA
    out["word"] = ctypes.string_at(ctypes.addressof(word), 8).decode()
    out["detach"] = call(101, 17, target, 0, 0)                   # PTRACE_DETACH
    out["missing"] = call(101, 16, 4194305, 0, 0)                 # above any pid: ESRCH
    out["mem"] = call(257, -100, f"/proc/{target}/mem".encode(), 2, 0)        # O_RDWR
    out["environ"] = call(257, -100, f"/proc/{target}/environ".encode(), 0, 0)  # O_RDONLY
    local_buf = ctypes.create_string_buffer(8)
    local, remote = IOV(ctypes.addressof(local_buf), 8), IOV(ctypes.addressof(known), 8)
    out["readv"] = call(310, target, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
    out["read"] = local_buf.raw.decode()
    unmapped = IOV(0x1000, 8)
    out["writev"] = call(311, target, ctypes.byref(local), 1, ctypes.byref(unmapped), 1, 0)
    os.kill(target, 9)
    os.waitpid(target, 0)
    print(json.dumps(out), flush=True)
""")


def test_ptrace_and_process_memory_fields():
    child = python_child(PTRACE_AND_MEMORY)
    target = int(child.stdout.readline())
    out, events = traced_go(child, ["ptrace", "process_memory"])
    assert (out["word"], out["read"]) == ("rg-known", "rg-known")
    assert out["mem"] >= 3 and out["environ"] >= 3
    events.sort(key=lambda e: e.timestamp)
    ptrace = [(e.data.request, e.data.target_pid, e.data.result, e.pid, e.tid, e.target_context.pid)
              for e in events if e.name == "ptrace"]
    pid = child.pid
    assert ptrace == [(16, target, 0, pid, pid, target), (2, target, 0, pid, pid, target),
                      (17, target, 0, pid, pid, target), (16, 4194305, -3, pid, pid, 4194305)]
    memory = [(e.data.method, e.data.target_pid, e.data.result, e.data.flags, e.pid, e.target_context.formatted)
              for e in events if e.name == "process_memory"]
    assert memory == [
        ("proc_mem_open", target, out["mem"], 2, pid, f"pid {target}"),
        ("proc_environ_open", target, out["environ"], 0, pid, f"pid {target}"),
        ("process_vm_readv", target, 8, 0, pid, f"pid {target}"),
        ("process_vm_writev", target, -14, 0, pid, f"pid {target}"),  # EFAULT: the remote page is unmapped
    ]


# process_vm_readv has no open flags: it must not report an earlier record's
# bytes as its flags (a small ring scribbled over, as above).
VM_READS = SCRIBBLE + textwrap.dedent("""
    import ctypes, os, sys
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(8)
    iov = (ctypes.c_void_p * 2)(ctypes.addressof(buf), 8)
    target = int(sys.argv[1])
    sys.stdin.readline()
    for _ in range(60):
        scribble()
        os.close(os.open(f"/proc/{target}/environ", os.O_RDONLY | os.O_NONBLOCK))
        libc.process_vm_readv(target, iov, 1, iov, 1, 0)
    print("done", flush=True)
""")


def test_process_vm_readv_has_no_flags():
    target = subprocess.Popen(["/bin/sleep", "30"])
    try:
        events, _ = scribbled_run(VM_READS, "process_memory", str(target.pid))
    finally:
        target.kill()
        target.wait()
    reads = [e for e in events if e.data.method == "process_vm_readv"]
    opens = [e for e in events if e.data.method == "proc_environ_open"]
    assert len(reads) >= 20 and len(opens) >= 20
    assert {e.data.flags for e in opens} == {0o4000 | os.O_CLOEXEC}  # Python's os.open adds O_CLOEXEC
    assert {(e.data.flags, e.data.target_pid) for e in reads} == {(0, target.pid)}


# ---------------------------------------------------------------- guard decisions

@pytest.fixture
def cgroup():
    """A cgroup to guard; whatever is left in it is killed before it is removed."""
    path = os.path.join(cgroup2_root(), f"rg-fields-{secrets.token_hex(3)}")
    os.mkdir(path)
    yield path
    with open(os.path.join(path, "cgroup.kill"), "w") as f:
        f.write("1")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        with open(os.path.join(path, "cgroup.procs")) as f:
            if not f.read().strip():
                break
        time.sleep(0.01)
    os.rmdir(path)


def run_in(cgroup: str, code: str) -> subprocess.CompletedProcess:
    def enter():
        with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
            f.write("0")
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], preexec_fn=enter, capture_output=True,
                          text=True, timeout=20)


NAMED = """
    import ctypes, json, os, socket, sys, threading
    ctypes.CDLL(None).prctl(15, b"{comm}", 0, 0, 0)  # PR_SET_NAME: the comm the kernel reports
    out = {{"pid": os.getpid()}}
    print(json.dumps(out), flush=True)
"""

# One process that survives: refused connects and sends (one of them from a
# thread), a decoy read, then a connect refused because of the taint.
EGRESS = NAMED + """
    def refused(family, kind, address, send):
        s = socket.socket(family, kind)
        try:
            s.sendto(b"x", address) if send else s.connect(address)
            return False
        except PermissionError:
            return True
    def from_thread():
        out["thread"] = refused(socket.AF_INET, socket.SOCK_STREAM, ("{denied}", 9), False)
        out["tid"] = threading.get_native_id()
    worker = threading.Thread(target=from_thread)
    worker.start()
    worker.join()
    out["tcp6"] = refused(socket.AF_INET6, socket.SOCK_STREAM, ("::1", 9), False)
    out["udp6"] = refused(socket.AF_INET6, socket.SOCK_DGRAM, ("::1", 9), True)
    out["udp4"] = refused(socket.AF_INET, socket.SOCK_DGRAM, ("{denied}", 5353), True)
    open("{decoy}").read()
    out["tainted"] = refused(socket.AF_INET, socket.SOCK_STREAM, ("127.0.0.1", 9), False)
    print(json.dumps(out), flush=True)
"""

OPEN = NAMED + """
    open("{path}").read()
    print("read", flush=True)
"""

READ_MEMORY = NAMED + """
    import errno
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(8)
    iov = (ctypes.c_void_p * 2)(ctypes.addressof(buf), 8)
    if libc.process_vm_readv({target}, iov, 1, iov, 1, 0) < 0 and ctypes.get_errno() == errno.EPERM:
        raise PermissionError("process_vm_readv")
    print("read", flush=True)
"""


def test_decision_records_name_the_process_and_the_target(secrets_dir, cgroup):
    # make_policy's rules, compiled in this order: network.deny[0] (index 0),
    # network.deny[1] (1), files.protect[0] (2), files.protect[1] (3),
    # mirage.decoys[0] (4).
    decoy, token, id_rsa = secrets_dir / "aws-credentials", secrets_dir / "token", secrets_dir / "secrets" / "id_rsa"
    victim = subprocess.Popen(["/bin/sleep", "30"])
    try:
        with Guard(make_policy(secrets_dir), cgroup=cgroup) as g:
            egress = run_in(cgroup, EGRESS.format(comm="rg-egress", denied=DENIED_V4, decoy=decoy))
            decoy_st = os.stat(decoy)
            opens = {name: run_in(cgroup, OPEN.format(comm=f"rg-open-{name}", path=path))
                     for name, path in (("token", token), ("id_rsa", id_rsa))}
            memory = run_in(cgroup, READ_MEMORY.format(comm="rg-memory", target=victim.pid))
            decisions = []
            while got := g.poll(0.3):
                decisions += got
            backend = g.backend
    finally:
        victim.kill()
        victim.wait()
    assert egress.returncode == 0, egress.stderr
    first, out = (json.loads(line) for line in egress.stdout.splitlines())
    assert out == {"pid": first["pid"], "thread": True, "tid": out["tid"], "tcp6": True, "udp6": True,
                   "udp4": True, "tainted": True}
    # Refused before the operation (EPERM), or killed after it.
    stopped = "blocked" if backend in ("lsm", "fanotify") else "killed"
    stopped_ptrace = "blocked" if backend == "lsm" else "killed"
    for name, proc in opens.items():
        assert proc.returncode == (-9 if stopped == "killed" else 1), (name, proc.stderr)
        assert "read" not in proc.stdout
    assert memory.returncode == (-9 if stopped_ptrace == "killed" else 1), memory.stderr
    assert "read" not in memory.stdout
    pids = {name: json.loads(proc.stdout.splitlines()[0])["pid"] for name, proc in opens.items()}
    pids["memory"] = json.loads(memory.stdout.splitlines()[0])["pid"]
    scope = os.stat(cgroup).st_ino

    pid = first["pid"]
    net = [(e.name, e.pid, e.tid, e.data.comm, e.data.family, e.data.protocol, e.target_context.formatted,
            e.data.rule_index, e.policy.rule, e.data.tainted, e.action, e.cgroup_id)
           for e in decisions if e.name in ("connect_denied", "exfil_blocked")]
    assert net == [
        ("connect_denied", pid, out["tid"], "rg-egress", "ipv4", "tcp", f"{DENIED_V4}:9", 0, "network.deny[0]",
         False, "blocked", scope),
        ("connect_denied", pid, pid, "rg-egress", "ipv6", "tcp", "[::1]:9", 1, "network.deny[1]", False,
         "blocked", scope),
        ("exfil_blocked", pid, pid, "rg-egress", "ipv6", "udp", "[::1]:9", 1, "network.deny[1]", False,
         "blocked", scope),
        ("exfil_blocked", pid, pid, "rg-egress", "ipv4", "udp", f"{DENIED_V4}:5353", 0, "network.deny[0]", False,
         "blocked", scope),
        ("exfil_blocked", pid, pid, "rg-egress", "ipv4", "tcp", "127.0.0.1:9", -2, "taint.block_egress", True,
         "blocked", scope),
    ]

    def inode(st):
        return st.st_dev, st.st_ino

    files = [(e.name, e.pid, e.data.comm, (e.data.device, e.data.inode), (e.target_context.device,
              e.target_context.inode), e.target_context.path, e.data.rule_index, e.policy.rule, e.action,
              e.cgroup_id) for e in decisions if e.name in ("open_inode", "mirage_trap")]
    assert files == [
        ("mirage_trap", pid, "rg-egress", inode(decoy_st), inode(decoy_st), str(decoy), 4, "mirage.decoys[0]",
         "observed", scope),
        ("open_inode", pids["token"], "rg-open-token", inode(os.stat(token)), inode(os.stat(token)), str(token), 2,
         "files.protect[0]", stopped, scope),
        ("open_inode", pids["id_rsa"], "rg-open-id_rsa", inode(os.stat(id_rsa)), inode(os.stat(id_rsa)),
         f"{secrets_dir / 'secrets'}/.../id_rsa", 3, "files.protect[1]", stopped, scope),
    ]

    ptrace = [(e.pid, e.data.comm, e.data.method, e.target_context.pid, e.target_context.formatted,
               e.data.rule_index, e.policy.rule, e.action, e.cgroup_id)
              for e in decisions if e.name == "ptrace_denied"]
    assert ptrace == [(pids["memory"], "rg-memory", "process_vm_readv", victim.pid, f"pid {victim.pid} (sleep)", -3,
                       "ptrace.deny", stopped_ptrace, scope)]
    assert all(e.policy.mode == "enforce" and e.policy.name == "test" and e.data.blocked and not e.data.would_deny
               for e in decisions if e.action != "observed")
    assert len(decisions) == len(net) + len(files) + len(ptrace)
