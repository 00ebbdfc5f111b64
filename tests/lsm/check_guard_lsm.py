"""The guard's BPF LSM backend, on a kernel that runs BPF LSM.

The development kernel refuses BPF LSM, so tests/test_guard_lsm.py boots a
kernel that has it (tests/kernelvm.py) and runs this file there. Outside such
a kernel pytest does not collect it (the name does not start with test_).

Where the tracepoint backend kills the caller after the syscall, these
operations are refused before they happen: the caller gets EPERM and lives.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from runtimeguard.capabilities import capabilities, lsm_enforcement
from runtimeguard.guard import Guard, guard
from runtimeguard.policy import Policy
from tests.test_guard import PTRACER, listener, make_policy, py, scope_cgroup, secrets_dir  # noqa: F401 (fixtures)
# The same behaviour under either backend: the file_open hook taints as the tracepoint did.
from tests.test_guard import test_decoy_read_taints_and_blocks_later_egress  # noqa: F401

EPERM_EXIT = 3


@pytest.fixture(autouse=True, scope="module")
def lsm_runs_here():
    works, why = lsm_enforcement()
    assert works, f"this file runs on a kernel with BPF LSM active: {why}"


def test_capabilities_report_the_lsm_backend():
    e = capabilities().enforcement
    for area in ("files", "ptrace", "process_memory", "file_changes"):
        assert e[area].startswith("BPF LSM"), (area, e[area])


def only(result, name):
    (ev,) = [e for e in result.events if e.name == name]
    return ev


@pytest.mark.parametrize("command", [
    "cat token",
    "cat secrets/id_rsa",
    "ln -s token sym && cat sym",
])
def test_protected_file_open_gets_eperm_and_the_caller_lives(secrets_dir, command):
    result = guard(make_policy(secrets_dir), ["sh", "-c", f"cd {secrets_dir} && {command}; echo status=$?"])
    assert result.exit_status == 0, "the shell and cat live"
    ev = only(result, "open_inode")
    assert ev.action == "blocked" and ev.data.blocked and not ev.data.would_deny
    assert ev.workload.process.name == "cat"
    st = os.stat(secrets_dir / command.split()[-1])
    assert (ev.target_context.device, ev.target_context.inode) == (st.st_dev, st.st_ino)


def test_hard_link_to_a_protected_file_is_refused(secrets_dir):
    result = guard(make_policy(secrets_dir), ["ln", str(secrets_dir / "token"), str(secrets_dir / "link")])
    assert result.exit_status == 1 and not (secrets_dir / "link").exists()
    ev = only(result, "protected_file_changed")
    assert ev.data.operation == "create" and ev.action == "blocked" and not ev.data.detected_not_prevented


def test_open_through_io_uring_gets_eperm(secrets_dir):
    exe = secrets_dir / "uring_open"
    source = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "uring_open.c")
    subprocess.run(["cc", "-O1", "-o", str(exe), source], check=True)
    result = guard(make_policy(secrets_dir), [str(exe), str(secrets_dir / "token")])
    assert result.exit_status == 3, "the io_uring open completed with an error"
    assert only(result, "open_inode").action == "blocked"


def test_audit_mode_lets_the_open_through_and_reports_it(secrets_dir):
    result = guard(make_policy(secrets_dir, mode="audit"), ["cat", str(secrets_dir / "token")])
    assert result.exit_status == 0
    assert [e.action for e in result.events if e.name == "open_inode"] == ["would_block"]


@pytest.mark.parametrize("command,operation,survivor", [
    ("rm token", "delete", "token"),
    ("mv token moved", "move", "token"),
    ("mv secrets/id_rsa elsewhere", "move", "secrets/id_rsa"),
    (f"{sys.executable} -c 'import os; os.truncate(\"token\", 0)'", "modify", "token"),
    ("chmod 000 token", "attributes", "token"),
    ("chown nobody token", "attributes", "token"),
    ("rm secrets/id_rsa", "delete", "secrets/id_rsa"),
    ("touch secrets/new", "create", None),
    ("mkdir secrets/sub", "create", None),
    ("echo x > other && mv other token", "move", "token"),
])
def test_changes_to_protected_files_are_refused(secrets_dir, command, operation, survivor):
    before = {p: (secrets_dir / p).read_bytes() for p in ("token", "secrets/id_rsa")}
    modes = {p: os.stat(secrets_dir / p).st_mode for p in before}
    result = guard(make_policy(secrets_dir), ["sh", "-c", f"cd {secrets_dir} && {command}"])
    assert result.exit_status != 0, "the tool reports the refusal"
    changes = [e for e in result.events if e.name == "protected_file_changed"]
    assert changes and {e.data.operation for e in changes} == {operation}
    ev = changes[0]
    assert ev.action == "blocked" and ev.data.blocked and not ev.data.detected_not_prevented
    assert ev.policy.rule.startswith("files.protect[")
    for p, content in before.items():
        assert (secrets_dir / p).read_bytes() == content and os.stat(secrets_dir / p).st_mode == modes[p]
    assert not (secrets_dir / "secrets" / "new").exists() and not (secrets_dir / "secrets" / "sub").exists()


def test_change_in_audit_mode_happens_and_is_reported_once(secrets_dir):
    result = guard(make_policy(secrets_dir, mode="audit"), ["rm", str(secrets_dir / "token")])
    assert result.exit_status == 0 and not (secrets_dir / "token").exists()
    ev = only(result, "protected_file_changed")
    assert ev.action == "would_block" and ev.data.would_deny and not ev.data.detected_not_prevented


ACCESS = PTRACER.replace("    {action}\n", """    import sys
    def check(result, what):
        if result < 0:
            raise OSError(ctypes.get_errno(), what)  # PermissionError for EPERM
    try:
        {action}
    except PermissionError:
        sys.exit(3)
    finally:
        os.kill(target, 9)
""")
VM_READV = ("buf = ctypes.create_string_buffer(8); iov = (ctypes.c_void_p * 2)(ctypes.addressof(buf), 8); "
            "check(libc.process_vm_readv(target, iov, 1, iov, 1, 0), 'process_vm_readv')")


@pytest.mark.parametrize("action,method", [
    ("check(libc.ptrace(16, target, None, None), 'ptrace')", "ptrace"),
    (VM_READV, "process_vm_readv"),
    ("open(f'/proc/{target}/mem', 'rb')", "proc_mem_open"),
    ("open(f'/proc/{target}/environ', 'rb').read()", "proc_environ_open"),
    ("check(libc.syscall(438, os.pidfd_open(target), 0, 0), 'pidfd_getfd')", "pidfd_getfd"),
])
def test_ptrace_and_memory_access_get_eperm(secrets_dir, action, method):
    result = guard(make_policy(secrets_dir), py(ACCESS.format(action=action)))
    assert result.exit_status == 3
    ev = only(result, "ptrace_denied")
    assert ev.action == "blocked" and ev.data.method == method
    assert ev.target_context.type == "pid" and ev.target_context.pid > 0


def test_refused_attach_leaves_the_target_running(secrets_dir):
    code = PTRACER.format(action=f"""import sys
    r = libc.ptrace(16, target, None, None)
    time.sleep(0.3)
    with open(f"/proc/{{target}}/stat") as f:
        state = f.read().rsplit(")", 1)[1].split()[0]
    os.kill(target, 9)
    sys.exit(3 if r != 0 and state in "SR" else 1)""")
    result = guard(make_policy(secrets_dir), py(code))
    assert result.exit_status == 3


def test_protected_pid_is_covered_through_any_of_its_threads(secrets_dir):
    victim = subprocess.Popen([sys.executable, "-c", "import threading, time\n"
                               "threading.Thread(target=time.sleep, args=(30,)).start()\ntime.sleep(30)"])
    try:
        deadline = time.monotonic() + 5
        while len(os.listdir(f"/proc/{victim.pid}/task")) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        tid = max(int(t) for t in os.listdir(f"/proc/{victim.pid}/task"))
        assert tid != victim.pid
        text = f"version: 1\nmode: enforce\nptrace:\n  deny: false\n  protect_pids: [{victim.pid}]\n"
        code = f"""
            import ctypes, sys
            libc = ctypes.CDLL(None, use_errno=True)
            libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
            sys.exit(3 if libc.ptrace(16, {tid}, None, None) != 0 else 0)
        """
        result = guard(Policy.from_text(text), py(code))
        assert result.exit_status == 3
        ev = only(result, "ptrace_denied")
        assert ev.target_context.pid == victim.pid and ev.policy.rule == "ptrace.protect_pids[0]"
    finally:
        victim.kill()
        victim.wait()


def test_packet_socket_gets_eperm(secrets_dir):
    code = f"""
        import socket, sys
        try:
            socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
        except PermissionError:
            sys.exit({EPERM_EXIT})
    """
    result = guard(make_policy(secrets_dir), py(code))
    assert result.exit_status == EPERM_EXIT
    ev = only(result, "exfil_blocked")
    assert ev.action == "blocked" and ev.target_context.type == "socket"


@pytest.fixture
def allowed_listener():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    yield s.getsockname()[1]
    s.close()


def test_tainted_process_cannot_send_on_a_socket_connected_before(secrets_dir, allowed_listener):
    listener = allowed_listener
    decoy = secrets_dir / "aws-credentials"
    code = f"""
        import socket, sys
        s = socket.create_connection(("127.0.0.1", {listener}), timeout=2)
        s.sendall(b"before")
        open({str(decoy)!r}).read()
        try:
            s.sendall(b"after")
        except PermissionError:
            sys.exit({EPERM_EXIT})
    """
    result = guard(make_policy(secrets_dir), py(code))
    assert result.exit_status == EPERM_EXIT
    assert [e.name for e in result.events] == ["mirage_trap", "exfil_blocked"]
    ev = result.events[1]
    assert ev.data.tainted and ev.action == "blocked" and ev.policy.rule == "taint.block_egress"
    assert ev.target_context.formatted == f"127.0.0.1:{listener}"


def test_refused_open_of_a_protected_file_does_not_taint(secrets_dir, allowed_listener):
    listener = allowed_listener
    code = f"""
        import socket, sys
        try:
            open({str(secrets_dir / "token")!r}).read()
        except PermissionError:
            pass
        socket.create_connection(("127.0.0.1", {listener}), timeout=2).close()
    """
    result = guard(make_policy(secrets_dir), py(code))
    assert result.exit_status == 0
    assert [e.name for e in result.events] == ["open_inode"]


def test_enforcement_holds_with_the_ring_buffer_full(secrets_dir, scope_cgroup):
    """Nobody drains a tiny ring, which fills up: the refusals happen all the same."""
    cgroup, run = scope_cgroup
    with Guard(make_policy(secrets_dir), cgroup=cgroup, ring_buffer_size=4096) as g:
        for _ in range(20):
            run(["/bin/true"])
        assert run(["cat", str(secrets_dir / "token")]) == 1, "cat lives to report EPERM"
        assert g.stats().lost_total > 0
