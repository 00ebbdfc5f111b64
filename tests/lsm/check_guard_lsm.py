"""The guard's BPF LSM backend, on a kernel that runs BPF LSM.

The development kernel refuses BPF LSM, so tests/test_guard_lsm.py boots a
kernel that has it (tests/kernelvm.py) and runs this file there. Outside such
a kernel pytest does not collect it (the name does not start with test_).

Where the tracepoint backend kills the caller after the syscall, these
operations are refused before they happen: the caller gets EPERM and lives.
An event that says "blocked" proves none of that, so each check asserts it
from the caller's side: the errno the very call got (EPERM, not EACCES nor
any other failure), that the caller lived to see it, and that the operation
had no effect (nothing read, linked, changed, attached or sent). The
audit-mode checks assert the opposite: the operation went through. Every
decision names its rule (runtimeguard.guard.Guard.rule_id(); make_policy's
order).
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import textwrap
import time

import pytest

from helpers import compiled
from runtimeguard.capabilities import capabilities, lsm_enforcement
from runtimeguard.guard import Guard, guard
from runtimeguard.policy import Policy
from tests.test_guard import PTRACER, listener, make_policy, py, scope_cgroup, secrets_dir  # noqa: F401 (fixtures)
# The same behaviour under either backend: the file_open hook taints as the tracepoint did.
from tests.test_guard import test_decoy_read_taints_and_blocks_later_egress  # noqa: F401
from tests.test_guard import test_threads_and_plain_forks_are_never_judged_as_sharing  # noqa: F401
from tests.test_guard import clone_files_sibling

EPERM = "Operation not permitted"  # strerror(EPERM): how C tools report it (EACCES is "Permission denied")
# make_policy's rules, as the guard names them.
TOKEN_RULE = "files.protect[0]"  # <root>/token
SECRETS_RULE = "files.protect[1]"  # <root>/secrets/, and everything beneath it
DECOY_RULE = "mirage.decoys[0]"  # <root>/aws-credentials
# Python snippets print what a call got: "done", or the errno's name.
OUTCOME = """
import errno
def outcome(operation):
    try:
        operation()
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
    return "done"
"""


def py_outcome(code: str) -> list[str]:
    """py(code), with outcome() defined."""
    return py(OUTCOME + textwrap.dedent(code))


@pytest.fixture(autouse=True, scope="module")
def lsm_runs_here():
    works, why = lsm_enforcement()
    assert works, f"this file runs on a kernel with BPF LSM active: {why}"


def test_capabilities_report_the_lsm_backend():
    e = capabilities().enforcement
    for area in ("files", "ptrace", "process_memory", "file_changes", "namespaces"):
        assert e[area].startswith("BPF LSM"), (area, e[area])


def only(result, name):
    (ev,) = [e for e in result.events if e.name == name]
    return ev


def refused(ev, rule):
    """An enforce-mode decision that refused the operation, under `rule`."""
    assert ev.action == "blocked" and ev.data.blocked and not ev.data.would_deny, ev
    assert ev.policy.rule == rule and ev.policy.mode == "enforce", ev.policy


def tree(root) -> dict:
    """Every entry under root with what a change to it would alter: content
    (or link target), mode, owner, inode and link count."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    content = f.read()
            else:
                content = os.readlink(path) if stat.S_ISLNK(st.st_mode) else None
            out[os.path.relpath(path, root)] = (content, st.st_mode, st.st_uid, st.st_gid, st.st_ino, st.st_nlink)
    return out


@pytest.mark.parametrize("command,rule", [
    ("cat token", TOKEN_RULE),
    ("cat secrets/id_rsa", SECRETS_RULE),
    ("ln -s token sym && cat sym", TOKEN_RULE),
])
def test_protected_file_open_gets_eperm_and_the_caller_lives(secrets_dir, capfd, command, rule):
    result = guard(make_policy(secrets_dir), ["sh", "-c", f"cd {secrets_dir} && {command}; echo status=$?"])
    out, err = capfd.readouterr()
    opened = command.split()[-1]
    assert result.exit_status == 0, "the shell lives"
    assert out == "status=1\n", "cat lived (not killed), printed nothing it read, and failed"
    assert err == f"cat: {opened}: {EPERM}\n", "the open itself got EPERM"
    ev = only(result, "open_inode")
    refused(ev, rule)
    assert ev.workload.process.name == "cat"
    st = os.stat(secrets_dir / opened)
    assert (ev.target_context.device, ev.target_context.inode) == (st.st_dev, st.st_ino)


def test_hard_link_to_a_protected_file_is_refused(secrets_dir, capfd):
    before = tree(secrets_dir)
    result = guard(make_policy(secrets_dir), ["ln", str(secrets_dir / "token"), str(secrets_dir / "link")])
    _, err = capfd.readouterr()
    assert result.exit_status == 1, "ln lives to report the refusal"
    assert err.startswith("ln: failed to create hard link") and err.endswith(f": {EPERM}\n"), err
    assert tree(secrets_dir) == before, "no link was made (the token's link count included)"
    ev = only(result, "protected_file_changed")
    assert ev.data.operation == "create" and not ev.data.detected_not_prevented
    refused(ev, TOKEN_RULE)


def test_open_through_io_uring_gets_eperm(secrets_dir, capfd):
    exe = compiled(secrets_dir, "uring_open.c")
    capfd.readouterr()
    result = guard(make_policy(secrets_dir), [str(exe), str(secrets_dir / "token")])
    out, err = capfd.readouterr()
    assert result.exit_status == 3, "the program lived and its io_uring open completed with an error"
    assert err == f"io_uring open: {EPERM}\n" and out == "", "the completion carried EPERM; nothing was read"
    ev = only(result, "open_inode")
    refused(ev, TOKEN_RULE)
    assert ev.target_context.inode == os.stat(secrets_dir / "token").st_ino


def test_audit_mode_lets_the_open_through_and_reports_it(secrets_dir, capfd):
    result = guard(make_policy(secrets_dir, mode="audit"), ["cat", str(secrets_dir / "token")])
    out, err = capfd.readouterr()
    assert result.exit_status == 0 and (out, err) == ("s3cr3t\n", ""), "cat read the file"
    ev = only(result, "open_inode")
    assert ev.action == "would_block" and ev.data.would_deny and not ev.data.blocked
    assert ev.policy.rule == TOKEN_RULE and ev.policy.mode == "audit"


@pytest.mark.parametrize("command,operation,rule", [
    ("rm token", "delete", TOKEN_RULE),
    ("mv token moved", "move", TOKEN_RULE),
    ("mv secrets/id_rsa elsewhere", "move", SECRETS_RULE),
    (f"{sys.executable} -c 'import os; os.truncate(\"token\", 0)'", "modify", TOKEN_RULE),
    ("chmod 000 token", "attributes", TOKEN_RULE),
    ("chown nobody token", "attributes", TOKEN_RULE),
    ("rm secrets/id_rsa", "delete", SECRETS_RULE),
    ("touch secrets/new", "create", SECRETS_RULE),
    ("mkdir secrets/sub", "create", SECRETS_RULE),
    ("mv other token", "move", TOKEN_RULE),  # over the protected file
])
def test_changes_to_protected_files_are_refused(secrets_dir, capfd, command, operation, rule):
    (secrets_dir / "other").write_text("x\n")
    before = tree(secrets_dir)
    result = guard(make_policy(secrets_dir), ["sh", "-c", f"cd {secrets_dir} && {command}"])
    _, err = capfd.readouterr()
    # 1: the tool (or Python's uncaught PermissionError) reports the failure; killed would be 137.
    assert result.exit_status == 1, "the tool lives to report the refusal"
    assert err.strip() and EPERM in err.strip().splitlines()[-1], f"the call got EPERM: {err!r}"
    assert tree(secrets_dir) == before, "nothing changed: contents, modes, owners, links, entries"
    changes = [e for e in result.events if e.name == "protected_file_changed"]
    assert changes and {e.data.operation for e in changes} == {operation}
    for ev in changes:
        refused(ev, rule)
        assert not ev.data.detected_not_prevented


def test_change_in_audit_mode_happens_and_is_reported_once(secrets_dir, capfd):
    result = guard(make_policy(secrets_dir, mode="audit"), ["rm", str(secrets_dir / "token")])
    _, err = capfd.readouterr()
    assert result.exit_status == 0 and err == "" and not (secrets_dir / "token").exists(), "the file was removed"
    ev = only(result, "protected_file_changed")
    assert ev.action == "would_block" and ev.data.would_deny and not ev.data.blocked
    assert not ev.data.detected_not_prevented
    assert ev.policy.rule == TOKEN_RULE and ev.policy.mode == "audit"


# The caller prints what its call got, whether the target ended up traced
# (its TracerPid), and the target's pid; then kills the target and exits 0.
ACCESS = PTRACER.replace("    {action}\n", """    import errno
    def check(result, what):
        if result < 0:
            raise OSError(ctypes.get_errno(), what)
    try:
        {action}
        outcome = "done"
    except OSError as e:
        outcome = errno.errorcode.get(e.errno, str(e.errno))
    with open(f"/proc/{{target}}/status") as f:
        tracer = dict(line.split(":", 1) for line in f)["TracerPid"].strip()
    os.kill(target, 9)
    print(f"outcome={{outcome}} tracer={{tracer}} target={{target}}")
""")
VM_READV = ("buf = ctypes.create_string_buffer(8); iov = (ctypes.c_void_p * 2)(ctypes.addressof(buf), 8); "
            "check(libc.process_vm_readv(target, iov, 1, iov, 1, 0), 'process_vm_readv')")


def access_outcome(out: str) -> tuple[str, str, int]:
    """(outcome, tracer pid, target pid) from ACCESS's line."""
    fields = dict(f.split("=", 1) for f in out.split())
    assert set(fields) == {"outcome", "tracer", "target"}, out
    return fields["outcome"], fields["tracer"], int(fields["target"])


@pytest.mark.parametrize("action,method", [
    ("check(libc.ptrace(16, target, None, None), 'ptrace')", "ptrace"),
    (VM_READV, "process_vm_readv"),
    ("open(f'/proc/{target}/mem', 'rb')", "proc_mem_open"),
    ("open(f'/proc/{target}/environ', 'rb').read()", "proc_environ_open"),
    ("check(libc.syscall(438, os.pidfd_open(target), 0, 0), 'pidfd_getfd')", "pidfd_getfd"),
])
def test_ptrace_and_memory_access_get_eperm(secrets_dir, capfd, action, method):
    result = guard(make_policy(secrets_dir), py(ACCESS.format(action=action)))
    out, err = capfd.readouterr()
    assert result.exit_status == 0, f"the caller lived: {err}"
    outcome, tracer, target = access_outcome(out)
    assert outcome == "EPERM", "the call itself got EPERM"
    assert tracer == "0", "the target is not traced"
    ev = only(result, "ptrace_denied")
    refused(ev, "ptrace.deny")
    assert ev.data.method == method
    assert ev.target_context.type == "pid" and ev.target_context.pid == target


def test_audit_mode_lets_ptrace_through_and_reports_it(secrets_dir, capfd):
    action = "check(libc.ptrace(16, target, None, None), 'ptrace')"
    result = guard(make_policy(secrets_dir, mode="audit"), py(ACCESS.format(action=action)))
    out, err = capfd.readouterr()
    assert result.exit_status == 0, err
    outcome, tracer, target = access_outcome(out)
    assert outcome == "done" and tracer != "0", "the attach went through"
    ev = only(result, "ptrace_denied")
    assert ev.action == "would_block" and ev.data.would_deny and not ev.data.blocked
    assert ev.policy.rule == "ptrace.deny" and ev.policy.mode == "audit"
    assert ev.data.method == "ptrace" and ev.target_context.pid == target


@pytest.mark.parametrize("call", ["clone", "clone3", "clone3-untouched"])
def test_a_process_sharing_the_descriptor_table_is_refused(secrets_dir, capfd, tmp_path, call):
    """clone(CLONE_FILES) without CLONE_THREAD: EPERM from task_alloc, the
    caller lives, the would-be child never runs."""
    marker = tmp_path / "child-ran"
    result = guard(make_policy(secrets_dir), clone_files_sibling(marker, call))
    out, err = capfd.readouterr()
    assert result.exit_status == 0, f"the caller lived: {err}"
    assert out == "clone returned -1 1\n", "the clone itself got EPERM"
    time.sleep(0.3)
    assert not marker.exists(), "no child ran"
    ev = only(result, "ptrace_denied")
    refused(ev, "ptrace.deny")
    assert ev.data.method == "clone_files"
    assert ev.target_context.type == "pid" and ev.target_context.pid == ev.workload.process.pid


def test_sharing_the_descriptor_table_in_audit_mode_goes_through(secrets_dir, capfd, tmp_path):
    marker = tmp_path / "child-ran"
    result = guard(make_policy(secrets_dir, mode="audit"), clone_files_sibling(marker))
    out, err = capfd.readouterr()
    assert result.exit_status == 0 and marker.exists(), err
    ev = only(result, "ptrace_denied")
    assert ev.action == "would_block" and ev.data.method == "clone_files"


def test_refused_attach_leaves_the_target_running(secrets_dir, capfd):
    # {target} below is the child's own f-string: format() leaves the value it inserts alone.
    code = PTRACER.format(action="""import errno
    r = libc.ptrace(16, target, None, None)
    error = errno.errorcode.get(ctypes.get_errno())
    time.sleep(0.3)  # an attach that went through would have stopped the target by now
    with open(f"/proc/{target}/status") as f:
        status = dict(line.split(":", 1) for line in f)
    os.kill(target, 9)
    print(r, error, status["State"].split()[0], status["TracerPid"].strip())""")
    result = guard(make_policy(secrets_dir), py(code))
    out, err = capfd.readouterr()
    assert result.exit_status == 0, err
    assert out == "-1 EPERM S 0\n", "ptrace got EPERM; the target sleeps on, untraced"
    refused(only(result, "ptrace_denied"), "ptrace.deny")


def test_protected_pid_is_covered_through_any_of_its_threads(secrets_dir, capfd):
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
            import ctypes, errno
            libc = ctypes.CDLL(None, use_errno=True)
            libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
            r = libc.ptrace(16, {tid}, None, None)
            error = errno.errorcode.get(ctypes.get_errno())
            with open("/proc/{victim.pid}/task/{tid}/status") as f:
                tracer = dict(line.split(":", 1) for line in f)["TracerPid"].strip()
            print(r, error, tracer)
        """
        result = guard(Policy.from_text(text), py(code))
        out, err = capfd.readouterr()
        assert result.exit_status == 0, err
        assert out == "-1 EPERM 0\n", "ptrace got EPERM; the thread is not traced"
        ev = only(result, "ptrace_denied")
        refused(ev, "ptrace.protect_pids[0]")
        assert ev.target_context.pid == victim.pid
        assert victim.poll() is None, "the victim lives on"
    finally:
        victim.kill()
        victim.wait()


def test_packet_socket_gets_eperm(secrets_dir, capfd):
    code = """
        import socket
        print(outcome(lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3)).close()))
    """
    result = guard(make_policy(secrets_dir), py_outcome(code))
    out, err = capfd.readouterr()
    assert result.exit_status == 0, err
    assert out == "EPERM\n", "socket() got EPERM: no packet socket was made"
    ev = only(result, "exfil_blocked")
    refused(ev, "network.raw_sockets")
    assert ev.target_context.type == "socket" and ev.data.family == "packet"


@pytest.fixture
def allowed_listener():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    s.settimeout(5)
    yield s
    s.close()


def received(server: socket.socket) -> bytes:
    """Everything the one client of server sent, up to its close."""
    conn, _ = server.accept()
    conn.settimeout(5)
    data = b""
    with conn:
        while chunk := conn.recv(4096):
            data += chunk
    return data


def test_tainted_process_cannot_send_on_a_socket_connected_before(secrets_dir, capfd, allowed_listener):
    port = allowed_listener.getsockname()[1]
    decoy = secrets_dir / "aws-credentials"
    code = f"""
        import socket
        s = socket.create_connection(("127.0.0.1", {port}), timeout=2)
        s.sendall(b"before")
        open({str(decoy)!r}).read()
        print(outcome(lambda: s.sendall(b"after")))
        s.close()
    """
    result = guard(make_policy(secrets_dir), py_outcome(code))
    out, err = capfd.readouterr()
    assert result.exit_status == 0, err
    assert out == "EPERM\n", "the send after the taint got EPERM"
    assert received(allowed_listener) == b"before", "nothing was sent after the taint"
    assert [e.name for e in result.events] == ["mirage_trap", "exfil_blocked"]
    trap, ev = result.events
    assert trap.action == "observed" and trap.policy.rule == DECOY_RULE
    refused(ev, "taint.block_egress")
    assert ev.data.tainted
    assert ev.target_context.formatted == f"127.0.0.1:{port}"


def test_tracepoint_backend_runs_without_the_sock_destroy_kfunc(secrets_dir):
    """6.1 has no bpf_sock_destroy: the socket destroyer does not load, and
    says why; the guard loads and runs without it (the LSM backend, used here,
    needs none: it refuses those sends before anything is queued)."""
    caps = capabilities()
    f = caps.feature("bpf_sock_destroy")
    assert not f.available and "6.5" in f.detail, f
    assert caps.enforcement["tainted_sends"].startswith("BPF LSM")
    assert not [gap for gap in caps.gaps if "bpf_sock_destroy" in gap]
    g = Guard(make_policy(secrets_dir), backend="tracepoint")
    result = g.run(["/bin/true"])
    assert result.exit_status == 0 and g.backend == "tracepoint"
    assert g.tainted_sockets_destroyed == 0
    assert "bpf_sock_destroy" in (g.socket_destroy_error or ""), g.socket_destroy_error


def test_refused_open_of_a_protected_file_does_not_taint(secrets_dir, capfd, allowed_listener):
    port = allowed_listener.getsockname()[1]
    code = f"""
        import socket
        print("open", outcome(lambda: open({str(secrets_dir / "token")!r}).read()))
        print("send", outcome(lambda: socket.create_connection(("127.0.0.1", {port}), timeout=2).sendall(b"x")))
    """
    result = guard(make_policy(secrets_dir), py_outcome(code))
    out, err = capfd.readouterr()
    assert result.exit_status == 0, err
    assert out == "open EPERM\nsend done\n", "the open got EPERM; the process, untainted, may send"
    assert received(allowed_listener) == b"x"
    assert [e.name for e in result.events] == ["open_inode"]
    refused(result.events[0], TOKEN_RULE)


def test_enforcement_holds_with_the_ring_buffer_full(secrets_dir, scope_cgroup):
    """Nobody drains a tiny ring, which fills up: the refusals happen all the same."""
    cgroup, run = scope_cgroup

    def enter():
        with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
            f.write("0")

    token = secrets_dir / "token"
    with Guard(make_policy(secrets_dir), cgroup=cgroup, ring_buffer_size=4096) as g:
        for _ in range(20):
            run(["/bin/true"])
        cat = subprocess.run(["cat", str(token)], preexec_fn=enter, capture_output=True, text=True)
        assert (cat.returncode, cat.stdout, cat.stderr) == (1, "", f"cat: {token}: {EPERM}\n"), \
            "cat lives to report EPERM, having read nothing"
        assert g.stats().lost_total > 0


# A clone into a new UTS namespace (the raw syscall, with no stack: like
# fork; not a user namespace, which the kernel refuses in the guest's chroot
# before any hook runs), a mount, an unshare: what each call got.
NAMESPACE_CALLS = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
what, arg = sys.argv[1], sys.argv[2]
if what == "clone":
    pid = libc.syscall(56, 0x04000000 | 17, 0, 0, 0, 0)  # clone(CLONE_NEWUTS | SIGCHLD)
    if pid == 0:
        open(arg, "w").close()
        os._exit(0)
    print("clone returned", pid, ctypes.get_errno() if pid < 0 else 0, flush=True)
    if pid > 0:
        os.waitpid(pid, 0)
elif what == "mount":
    r = libc.mount(b"none", arg.encode(), b"tmpfs", 0, None)
    print("mount returned", r, ctypes.get_errno() if r else 0, flush=True)
else:
    libc.unshare(0x10000000)
    print("unshare returned", flush=True)
"""


def test_a_clone_into_a_new_namespace_gets_eperm(secrets_dir, capfd, tmp_path):
    """task_alloc refuses it: the caller lives, no child runs."""
    marker = tmp_path / "child-ran"
    result = guard(make_policy(secrets_dir), py(NAMESPACE_CALLS) + ["clone", str(marker)])
    out, err = capfd.readouterr()
    assert result.exit_status == 0 and out == "clone returned -1 1\n", err
    time.sleep(0.3)
    assert not marker.exists(), "no child ran"
    ev = only(result, "namespace_denied")
    refused(ev, "namespaces.deny")
    assert (ev.data.operation, ev.data.namespaces) == ("clone", ("uts",))


def test_a_mount_gets_eperm(secrets_dir, capfd, tmp_path):
    """sb_mount refuses it before anything is mounted."""
    target = tmp_path / "mnt"
    target.mkdir()
    result = guard(make_policy(secrets_dir), py(NAMESPACE_CALLS) + ["mount", str(target)])
    out, err = capfd.readouterr()
    assert result.exit_status == 0 and out == "mount returned -1 1\n", err
    assert not os.path.ismount(target)
    ev = only(result, "namespace_denied")
    refused(ev, "namespaces.deny")
    assert ev.data.operation == "mount" and ev.target_context.formatted == "mount"


def test_unshare_has_no_lsm_hook_and_is_killed(secrets_dir, capfd):
    result = guard(make_policy(secrets_dir), py(NAMESPACE_CALLS) + ["unshare", "-"])
    out, _ = capfd.readouterr()
    assert result.exit_status == 128 + 9 and out == ""
    ev = only(result, "namespace_denied")
    assert (ev.action, ev.data.operation, ev.data.namespaces) == ("killed", "unshare", ("user",))
