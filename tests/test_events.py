"""Every event kind, from real processes, through the real kernel."""

from __future__ import annotations

import ipaddress
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap

import pytest

from runtimeguard import Tracer
from helpers import python_child, run_python, wait_for

pytestmark = pytest.mark.root


def test_exec_of_echo_has_exact_argv_and_parent():
    token = secrets.token_hex(8)
    with Tracer(events=["process_exec"]) as t:
        subprocess.run(["/bin/echo", token], check=True, capture_output=True)
        ev = wait_for(t, lambda e: e.name == "process_exec" and e.data.argv[-1:] == [token], timeout=1.0)
    assert ev.data.argv == ["/bin/echo", token]
    assert ev.data.executable == "/bin/echo"
    assert ev.data.return_code == 0
    assert ev.data.uid == os.getuid() and ev.data.gid == os.getgid()
    assert ev.data.ppid == os.getpid()
    proc = ev.workload.process
    assert proc.pid == ev.pid and proc.name == "echo" and proc.argv == ["/bin/echo", token]
    assert proc.parent.pid == os.getpid()
    assert proc.ancestors[0] == proc.parent
    assert ev.target_context is None and ev.action == "observed"


def test_failed_exec_reports_the_error():
    missing = f"/nonexistent-{secrets.token_hex(4)}/tool"
    with Tracer(events=["process_exec"]) as t:
        with pytest.raises(FileNotFoundError):
            subprocess.run([missing, "arg1"])
        ev = wait_for(t, lambda e: e.name == "process_exec" and e.data.executable == missing)
    assert ev.data.return_code == -2  # ENOENT
    assert ev.data.argv == [missing, "arg1"]


def test_failed_execveat_reports_its_arguments():
    # os.execve on a descriptor is fexecve: execveat(fd, "", argv, envp,
    # AT_EMPTY_PATH), whose arguments sit one register further along.
    token = secrets.token_hex(4)
    code = ("import os\ntry:\n    os.execve(os.open('/etc/hostname', os.O_RDONLY), ['fexecve', "
            f"'{token}'], {{}})\nexcept OSError as e:\n    print(e.errno)")
    with Tracer(events=["process_exec"]) as t:
        child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        ev = wait_for(t, lambda e: e.name == "process_exec" and e.data.argv == ["fexecve", token])
    assert ev.data.return_code == -int(child.stdout)  # /etc/hostname is no program
    assert ev.data.executable == ""


def test_fork_and_exit_code_and_signal():
    with Tracer(events=["process_fork", "process_exit"]) as t:
        p = subprocess.run(["sh", "-c", "exit 3"])
        assert p.returncode == 3
        exit_ev = wait_for(t, lambda e: e.name == "process_exit" and e.workload.process.argv == ["sh", "-c", "exit 3"])
        assert exit_ev.data.exit_code == 3 and exit_ev.data.signal is None
        assert exit_ev.data.duration_ns > 0

        sleeper = subprocess.Popen(["sleep", "30"])
        sleeper.kill()
        sleeper.wait()
        fork = wait_for(t, lambda e: e.name == "process_fork" and e.data.child_pid == sleeper.pid)
        assert fork.pid == os.getpid()
        killed = wait_for(t, lambda e: e.name == "process_exit" and e.pid == sleeper.pid)
    assert killed.data.signal == signal.SIGKILL and killed.data.exit_code is None
    assert killed.entity_id == fork.data.child_entity_id


def test_file_open_carries_device_and_inode_of_the_file():
    with tempfile.NamedTemporaryFile(prefix="rg-open-") as f:
        st = os.stat(f.name)
        with Tracer(events=["file_open"], comms=["cat"]) as t:
            subprocess.run(["cat", f.name], check=True)
            ev = wait_for(t, lambda e: e.name == "file_open" and e.data.path == f.name)
    assert ev.data.result >= 0
    assert (ev.data.device, ev.data.inode) == (st.st_dev, st.st_ino)
    tc = ev.target_context
    assert (tc.type, tc.device, tc.inode, tc.path) == ("inode", st.st_dev, st.st_ino, f.name)
    assert tc.formatted == f"{f.name} (inode {st.st_ino} on {os.major(st.st_dev)}:{os.minor(st.st_dev)})"
    assert ev.workload.process.name == "cat"


def test_failed_open_has_no_target():
    with Tracer(events=["file_open"], comms=["cat"]) as t:
        subprocess.run(["cat", "/nonexistent-rg-file"], capture_output=True)
        ev = wait_for(t, lambda e: e.name == "file_open" and e.data.path == "/nonexistent-rg-file")
    assert ev.data.result == -2 and ev.target_context is None


def _listener(family: int, host: str) -> socket.socket:
    s = socket.socket(family, socket.SOCK_STREAM)
    s.bind((host, 0))
    s.listen()
    return s


@pytest.mark.parametrize("family,listen_on,connect_to,formatted", [
    (socket.AF_INET, "127.1.2.3", "127.1.2.3", "127.1.2.3:{port}"),
    (socket.AF_INET6, "::1", "::1", "[::1]:{port}"),
    (socket.AF_INET6, "::", "::ffff:127.0.0.1", "[::ffff:127.0.0.1]:{port}"),
])
def test_tcp_connect_target_context(family, listen_on, connect_to, formatted):
    with _listener(family, listen_on) as server:
        port = server.getsockname()[1]
        with Tracer(events=["net_connect"]) as t:
            run_python(textwrap.dedent(f"""
                import socket
                s = socket.socket({int(family)}, socket.SOCK_STREAM)
                s.connect(({connect_to!r}, {port}))
            """))
            ev = wait_for(t, lambda e: e.name == "net_connect" and e.data.port == port)
    tc = ev.target_context
    assert tc.formatted == formatted.format(port=port)
    assert ipaddress.ip_address(tc.address) == ipaddress.ip_address(connect_to)
    assert tc.port == port and tc.type == ("ipv4" if family == socket.AF_INET else "ipv6")
    assert ev.data.protocol == "tcp" and ev.data.result == 0


def test_udp_connect_is_reported_as_udp():
    with Tracer(events=["net_connect"]) as t:
        run_python("import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).connect(('127.0.0.7', 5353))")
        ev = wait_for(t, lambda e: e.name == "net_connect" and e.data.address == "127.0.0.7")
    assert (ev.data.protocol, ev.data.port, ev.data.result) == ("udp", 5353, 0)
    assert ev.target_context.formatted == "127.0.0.7:5353"


def test_udp_sendto_and_sendmsg_destinations():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink:
        sink.bind(("127.0.0.9", 0))
        port = sink.getsockname()[1]
        with Tracer(events=["net_sendmsg"]) as t:
            run_python(textwrap.dedent(f"""
                import socket
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.sendto(b"x" * 5, ("127.0.0.9", {port}))
                s.sendmsg([b"y" * 7], [], 0, ("127.0.0.9", {port}))
            """))
            first = wait_for(t, lambda e: e.name == "net_sendmsg" and e.data.port == port)
            second = wait_for(t, lambda e: e.name == "net_sendmsg" and e.data.port == port)
    assert (first.data.syscall, first.data.result) == ("sendto", 5)
    assert (second.data.syscall, second.data.result) == ("sendmsg", 7)
    for ev in (first, second):
        assert ev.data.protocol == "udp"
        assert ev.target_context.formatted == f"127.0.0.9:{port}"


PTRACE_ATTACHER = textwrap.dedent("""
    import ctypes, os, signal, sys, time
    libc = ctypes.CDLL(None, use_errno=True)
    libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
    target = os.fork()
    if target == 0:
        time.sleep(30)
        os._exit(0)
    print(target, flush=True)
    sys.stdin.readline()
    {action}
    os.kill(target, signal.SIGKILL)
    os.waitpid(target, 0)
""")


def test_ptrace_attach_names_the_target():
    action = "libc.ptrace(16, target, None, None); os.waitpid(target, 0); libc.ptrace(17, target, None, None)"
    with Tracer(events=["ptrace"]) as t:
        child = python_child(PTRACE_ATTACHER.format(action=action))
        target = int(child.stdout.readline())
        with open(f"/proc/{target}/comm") as f:
            comm = f.read().rstrip("\n")
        child.stdin.write("go\n")
        child.stdin.flush()
        ev = wait_for(t, lambda e: e.name == "ptrace" and e.data.target_pid == target and e.data.request == 16)
        child.wait(timeout=10)
    # The target is a fork of a Python started by path: the kernel names it
    # after that path's last component, cut to 15 bytes.
    assert comm == os.path.basename(sys.executable)[:15]
    assert ev.data.result == 0 and ev.data.request_name == "PTRACE_ATTACH"
    assert ev.pid == child.pid
    tc = ev.target_context
    assert (tc.type, tc.pid, tc.comm) == ("pid", target, comm)
    assert tc.formatted == f"pid {target} ({comm})"


def test_proc_mem_read_and_process_vm_readv():
    action = textwrap.dedent("""
    with open(f"/proc/{target}/mem", "rb") as f: pass
    iov = (ctypes.c_char * 8)()
    class IOV(ctypes.Structure): _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
    local = IOV(ctypes.addressof(iov), 8); remote = IOV(0x1000, 8)
    libc.process_vm_readv(target, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
    """)
    with Tracer(events=["process_memory"]) as t:
        child = python_child(PTRACE_ATTACHER.format(action=action))
        target = int(child.stdout.readline())
        child.stdin.write("go\n")
        child.stdin.flush()
        opened = wait_for(t, lambda e: e.name == "process_memory" and e.data.method == "proc_mem_open")
        readv = wait_for(t, lambda e: e.name == "process_memory" and e.data.method == "process_vm_readv")
        child.wait(timeout=10)
    for ev in (opened, readv):
        assert ev.data.target_pid == target and ev.pid == child.pid
        assert ev.target_context.pid == target
    assert opened.data.result >= 0
    assert readv.data.result == -14  # EFAULT: the remote address is unmapped
