"""Each policy option test_guard.py does not drive, against real workloads:
files.action: report, mirage.kill, taint.from, taint.block_egress: false,
network.raw_sockets: allow, host rules, a cgroup scope named by absolute
path, decoy templates and existing decoys, ptrace.deny: false with
protect_pids (from inside and from outside the scope), and the process a
ptrace decision names. Expectations are written out: the outcome each
workload prints, the rule each decision names, os.stat of each file.

Each test runs one guard on a cgroup of its own and several workloads in it
(a guard costs about a second to load and detach).
"""

from __future__ import annotations

import base64
import os
import re
import socket
import stat
import subprocess
import sys
import textwrap
import threading

import pytest

from runtimeguard.errors import RuntimeGuardError
from runtimeguard.guard import Guard
from runtimeguard.policy import Policy
from test_guard import ping_sockets_allowed  # noqa: F401 - a fixture
from test_record_fields import cgroup  # noqa: F401 - a fixture

pytestmark = pytest.mark.root


def run_in(cgroup: str, code: str, *args: str) -> subprocess.CompletedProcess:
    """A Python workload inside the guarded cgroup."""
    def enter():
        with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
            f.write("0")
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], preexec_fn=enter,
                          capture_output=True, text=True, timeout=20)


def decisions(g: Guard) -> list:
    """Every decision until none has come for a while (fanotify's come at poll)."""
    out = []
    while True:
        got = g.poll(0.3)
        if not got:
            return out
        out += got


# The file judges this kernel runs without BPF LSM.
FILE_BACKENDS = ("fanotify", "tracepoint")


def stopped(g: Guard, area: str) -> tuple[str, int]:
    """What a refusal in area ("files" or "ptrace") does to a Python workload,
    per backend: (action, exit status). EPERM where it is refused before the
    operation (BPF LSM; fanotify for files), else a kill after the syscall."""
    before = g.backend == "lsm" or (g.backend == "fanotify" and area == "files")
    return ("blocked", 1) if before else ("killed", -9)


@pytest.fixture
def files(tmp_path):
    (tmp_path / "token").write_text("s3cr3t\n")
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "id_rsa").write_text("not really a key\n")
    return tmp_path


@pytest.fixture
def tcp_listener():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    yield s.getsockname()[1]
    s.close()


# ---------------------------------------------------------------- files.action: report

@pytest.mark.parametrize("backend", FILE_BACKENDS)
def test_files_action_report_lets_opens_and_changes_through_and_reports_them(files, cgroup, backend):
    policy = Policy.from_dict({"version": 1, "name": "report", "mode": "enforce", "files": {
        "protect": [str(files / "token"), str(files / "secrets")], "action": "report"}})
    token_st, key_st = os.stat(files / "token"), os.stat(files / "secrets" / "id_rsa")
    with Guard(policy, cgroup=cgroup, backend=backend) as g:
        read_token = run_in(cgroup, f"print(open({str(files / 'token')!r}).read(), end='')")
        read_key = run_in(cgroup, f"print(open({str(files / 'secrets' / 'id_rsa')!r}).read(), end='')")
        # Lives on after the change: there would be someone to kill.
        unlink = run_in(cgroup, f"import os, time; os.unlink({str(files / 'token')!r}); time.sleep(0.5); "
                                "print('alive')")
        got = decisions(g)
    assert (read_token.returncode, read_token.stdout) == (0, "s3cr3t\n")
    assert (read_key.returncode, read_key.stdout) == (0, "not really a key\n")
    assert (unlink.returncode, unlink.stdout) == (0, "alive\n")
    assert not (files / "token").exists()
    opens = [(e.name, e.action, e.data.blocked, e.data.would_deny, (e.data.device, e.data.inode), e.policy.rule,
              e.policy.mode, e.policy.name) for e in got if e.name == "open_inode"]
    assert opens == [
        ("open_inode", "observed", False, False, (token_st.st_dev, token_st.st_ino), "files.protect[0]", "enforce",
         "report"),
        ("open_inode", "observed", False, False, (key_st.st_dev, key_st.st_ino), "files.protect[1]", "enforce",
         "report"),
    ]
    changes = [e for e in got if e.name == "protected_file_changed"]
    assert changes and changes[0].data.operation == "delete"
    assert {(e.action, e.data.blocked, e.policy.rule, e.target_context.inode) for e in changes} == {
        ("observed", False, "files.protect[0]", token_st.st_ino)}
    assert len(got) == len(opens) + len(changes)


# ---------------------------------------------------------------- mirage.kill

OPEN_THEN_SAY = """
    import sys
    try:
        open(sys.argv[1]).read()
        print("read", flush=True)
    except PermissionError:
        print("refused", flush=True)
        sys.exit(1)
"""


@pytest.mark.parametrize("backend", FILE_BACKENDS)
def test_mirage_kill_stops_the_decoy_opener_while_files_are_only_reported(files, cgroup, backend):
    """mirage.kill and files.action are separate switches: with kill on for
    decoys and report for protected files, the decoy's opener is stopped and
    the protected file's reader is not."""
    decoy = files / "credentials.env"
    policy = Policy.from_dict({"version": 1, "mode": "enforce",
                               "files": {"protect": [str(files / "token")], "action": "report"},
                               "mirage": {"decoys": [{"path": str(decoy), "template": "env"}], "kill": True}})
    with Guard(policy, cgroup=cgroup, backend=backend) as g:
        decoy_st = os.stat(decoy)
        opener = run_in(cgroup, OPEN_THEN_SAY, str(decoy))
        reader = run_in(cgroup, OPEN_THEN_SAY, str(files / "token"))
        bystander = run_in(cgroup, OPEN_THEN_SAY, "/etc/hostname")
        got = decisions(g)
        action, status = stopped(g, "files")
    assert opener.returncode == status and "read" not in opener.stdout
    assert [(p.returncode, p.stdout) for p in (reader, bystander)] == [(0, "read\n")] * 2
    token_st = os.stat(files / "token")
    assert [(e.name, e.action, e.data.blocked, (e.data.device, e.data.inode), e.target_context.path, e.policy.rule)
            for e in got] == [
        ("mirage_trap", action, True, (decoy_st.st_dev, decoy_st.st_ino), str(decoy), "mirage.decoys[0]"),
        ("open_inode", "observed", False, (token_st.st_dev, token_st.st_ino), str(files / "token"),
         "files.protect[0]"),
    ]
    assert not decoy.exists(), "the decoy the guard made is removed"


# ---------------------------------------------------------------- taint

READ_THEN_CONNECT = """
    import socket, sys
    open(sys.argv[1]).read()
    try:
        socket.create_connection(("127.0.0.1", int(sys.argv[2])), timeout=2).close()
        print("connected")
    except PermissionError:
        print("refused")
"""


@pytest.mark.parametrize("backend", FILE_BACKENDS)
@pytest.mark.parametrize("sources,decoy_taints,file_taints", [
    (["files"], False, True),
    (["mirage"], True, False),
])
def test_taint_from_only_the_named_sources(files, cgroup, tcp_listener, sources, decoy_taints, file_taints, backend):
    decoy = files / "aws-credentials"
    policy = Policy.from_dict({"version": 1, "mode": "enforce",
                               "files": {"protect": [str(files / "token")], "action": "report"},
                               "mirage": {"decoys": [{"path": str(decoy)}]},
                               "taint": {"from": sources, "block_egress": True}})
    with Guard(policy, cgroup=cgroup, backend=backend) as g:
        after_decoy = run_in(cgroup, READ_THEN_CONNECT, str(decoy), str(tcp_listener))
        after_file = run_in(cgroup, READ_THEN_CONNECT, str(files / "token"), str(tcp_listener))
        got = decisions(g)
    assert (after_decoy.returncode, after_file.returncode) == (0, 0), after_decoy.stderr + after_file.stderr
    assert after_decoy.stdout == ("refused\n" if decoy_taints else "connected\n")
    assert after_file.stdout == ("refused\n" if file_taints else "connected\n")
    expected = [("mirage_trap", "observed", "mirage.decoys[0]", False)]
    if decoy_taints:
        expected.append(("exfil_blocked", "blocked", "taint.block_egress", True))
    expected.append(("open_inode", "observed", "files.protect[0]", False))
    if file_taints:
        expected.append(("exfil_blocked", "blocked", "taint.block_egress", True))
    assert [(e.name, e.action, e.policy.rule, getattr(e.data, "tainted", False)) for e in got] == expected
    assert all(e.target_context.formatted == f"127.0.0.1:{tcp_listener}" for e in got if e.name == "exfil_blocked")


SEND_AROUND_A_DECOY = """
    import socket, sys, time
    decoy, port, denied = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"before")
    time.sleep(0.2)
    open(decoy).read()
    s.sendall(b"after")             # a socket connected before the taint
    s.close()
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        print("connected")
    except PermissionError:
        print("refused")
    try:
        socket.create_connection((denied, port), timeout=2).close()
        print("connected")
    except PermissionError:
        print("refused")
"""


def test_taint_without_block_egress_blocks_nothing_a_rule_allows(tmp_path, cgroup):
    """taint.block_egress: false: the decoy read is reported and taints, but
    the tainted process still connects and sends; only a deny rule refuses,
    and the refusal names that rule, not the taint."""
    decoy = tmp_path / "id_ed25519"
    policy = Policy.from_dict({"version": 1, "mode": "enforce", "network": {"deny": [{"cidr": "127.0.0.2/32"}]},
                               "mirage": {"decoys": [{"path": str(decoy)}]}, "taint": {"block_egress": False}})
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    port = server.getsockname()[1]
    received = []

    def serve():
        conn, _ = server.accept()
        conn.settimeout(5)
        with conn:
            while chunk := conn.recv(100):
                received.append(chunk)

    reader = threading.Thread(target=serve)
    reader.start()
    try:
        with Guard(policy, cgroup=cgroup) as g:
            workload = run_in(cgroup, SEND_AROUND_A_DECOY, str(decoy), str(port), "127.0.0.2")
            reader.join(timeout=5)
            got = decisions(g)
    finally:
        server.close()
        reader.join()
    assert (workload.returncode, workload.stdout) == (0, "connected\nrefused\n"), workload.stderr
    assert b"".join(received) == b"beforeafter"
    assert [(e.name, e.action, e.policy.rule, getattr(e.data, "tainted", False)) for e in got] == [
        ("mirage_trap", "observed", "mirage.decoys[0]", False),
        ("connect_denied", "blocked", "network.deny[0]", False),
    ]
    assert got[1].target_context.formatted == f"127.0.0.2:{port}"


# ---------------------------------------------------------------- network.raw_sockets: allow

RAW_SOCKETS = """
    import socket
    for family, kind, proto in ((socket.AF_INET, socket.SOCK_RAW, 1), (socket.AF_INET, socket.SOCK_DGRAM, 1),
                                (socket.AF_PACKET, socket.SOCK_RAW, 0)):
        socket.socket(family, kind, proto).close()
        print("made", flush=True)
"""


def test_raw_sockets_allow_lets_raw_ping_and_packet_sockets_be_made(cgroup, ping_sockets_allowed):  # noqa: F811
    policy = Policy.from_dict({"version": 1, "mode": "enforce", "network": {"raw_sockets": "allow"}})
    with Guard(policy, cgroup=cgroup) as g:
        workload = run_in(cgroup, RAW_SOCKETS)
        got = decisions(g)
    assert (workload.returncode, workload.stdout) == (0, "made\n" * 3), workload.stderr
    assert got == []


# ---------------------------------------------------------------- host rules

TRY = """
    import socket, sys
    for target in sys.argv[1:]:
        host, port = target.rsplit(":", 1)
        try:
            socket.create_connection((host, int(port)), timeout=2).close()
            print("connected")
        except PermissionError:
            print("refused")
"""


def test_host_rules_match_observed_answers_only_not_etc_hosts(cgroup):
    """Nothing is resolved in advance: localhost comes from /etc/hosts, no
    DNS answer names it, so a deny rule naming it does not hold (the README
    says so: deny by name holds for observed answers; default deny holds for
    the rest). Observed answers are tests/test_guard_hostnames.py's."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    port = server.getsockname()[1]
    policy = Policy.from_dict({"version": 1, "mode": "enforce",
                               "network": {"deny": [{"host": "localhost", "ports": [port]}],
                                           "dns": {"servers": ["127.0.0.53"]}}})
    try:
        with Guard(policy, cgroup=cgroup) as g:
            workload = run_in(cgroup, TRY, f"localhost:{port}", f"127.0.0.1:{port}")
            got = decisions(g)
    finally:
        server.close()
    assert workload.stdout == "connected\nconnected\n", workload.stderr
    assert got == []


# ---------------------------------------------------------------- scope by absolute cgroup path

CONNECT_AND_OPEN = """
    import os, socket, sys
    print(os.getpid(), flush=True)
    try:
        socket.create_connection(("127.0.0.2", 9), timeout=2).close()
    except PermissionError:
        sys.exit(3)
    except OSError:
        pass  # nothing listens; the guard let it through
    open(sys.argv[1]).read()
"""


def test_scope_cgroup_by_absolute_path_covers_its_subtree_only(files, cgroup):
    """An audit-mode guard on a cgroup named by absolute path: a process in a
    cgroup below it is judged, by the socket hooks (attached to the cgroup)
    and by the tracepoint or LSM judges (which look the scope up by level);
    one in a sibling whose name starts the same, and this test's own
    children, are not."""
    inner = os.path.join(cgroup, "inner")
    sibling = cgroup + "-sibling"
    os.mkdir(inner)
    os.mkdir(sibling)
    inner_id = os.stat(inner).st_ino
    token = str(files / "token")
    policy = Policy.from_dict({"version": 1, "mode": "audit", "scope": {"type": "cgroup", "cgroup": cgroup},
                               "network": {"deny": [{"cidr": "127.0.0.2/32"}]}, "files": {"protect": [token]},
                               "ptrace": {"deny": False}})
    try:
        with Guard(policy) as g:
            judged = run_in(inner, CONNECT_AND_OPEN, token)
            beside = run_in(sibling, CONNECT_AND_OPEN, token)
            outside = subprocess.run(py_argv(CONNECT_AND_OPEN) + [token], capture_output=True, text=True,
                                     timeout=20)
            got = decisions(g)
    finally:
        os.rmdir(inner)
        os.rmdir(sibling)
    assert [p.returncode for p in (judged, beside, outside)] == [0, 0, 0]
    pid = int(judged.stdout)
    assert [(e.name, e.pid, e.action, e.policy.mode, e.policy.rule, e.cgroup_id) for e in got] == [
        ("connect_denied", pid, "would_block", "audit", "network.deny[0]", inner_id),
        ("open_inode", pid, "would_block", "audit", "files.protect[0]", inner_id)]


def py_argv(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


# ---------------------------------------------------------------- decoy templates

AWS = re.compile(r"\[default\]\naws_access_key_id = AKIA[A-Z2-7]{16}\naws_secret_access_key = [A-Za-z0-9+/]{40}\n")
ENV = re.compile(r"DATABASE_URL=postgres://app:[0-9a-f]{24}@db\.internal:5432/app\n"
                 r"OPENAI_API_KEY=sk-[0-9a-f]{48}\nSTRIPE_SECRET_KEY=sk_live_[0-9a-f]{24}\n")
SSH_KEY = re.compile(r"-----BEGIN OPENSSH PRIVATE KEY-----\n([A-Za-z0-9+/=\n]+)-----END OPENSSH PRIVATE KEY-----\n")
GENERIC = re.compile(r"token=[0-9a-f]{40}\n")


def test_decoys_look_like_their_templates_and_an_existing_file_is_used_as_is(tmp_path, cgroup):
    made = {"aws": tmp_path / "a", "env": tmp_path / "e", "ssh_key": tmp_path / "k", "generic": tmp_path / "g"}
    guessed = tmp_path / ".env"  # no template given: guessed from the name
    existing = tmp_path / "existing-credentials"
    existing.write_bytes(b"mine\n")
    existing.chmod(0o644)
    existing_st = os.stat(existing)
    decoys = [{"path": str(p), "template": t} for t, p in made.items()]
    decoys += [{"path": str(guessed)}, {"path": str(existing), "template": "aws"}]
    policy = Policy.from_dict({"version": 1, "mode": "enforce", "mirage": {"decoys": decoys}})
    with Guard(policy, cgroup=cgroup) as g:
        content = {p: p.read_text() for p in (*made.values(), guessed, existing)}
        modes = {p: stat.S_IMODE(os.stat(p).st_mode) for p in (*made.values(), guessed, existing)}
        opener = run_in(cgroup, OPEN_THEN_SAY, str(existing))
        got = decisions(g)
    assert AWS.fullmatch(content[made["aws"]]), content[made["aws"]]
    assert ENV.fullmatch(content[made["env"]]) and ENV.fullmatch(content[guessed]), content[made["env"]]
    key = SSH_KEY.fullmatch(content[made["ssh_key"]])
    assert key and len(base64.b64decode(key.group(1))) == 300, content[made["ssh_key"]]
    assert GENERIC.fullmatch(content[made["generic"]]), content[made["generic"]]
    assert content[existing] == "mine\n"
    assert modes == {**{p: 0o600 for p in (*made.values(), guessed)}, existing: 0o644}
    # The existing file is the decoy: opening it is a trap, by its inode.
    assert (opener.returncode, opener.stdout) == (0, "read\n")
    assert [(e.name, e.policy.rule, e.target_context.inode, e.target_context.path) for e in got] == [
        ("mirage_trap", "mirage.decoys[5]", existing_st.st_ino, str(existing))]
    # Made ones are removed at close; the existing one stays as it was.
    assert [p.exists() for p in (*made.values(), guessed)] == [False] * 5
    assert existing.read_bytes() == b"mine\n" and os.stat(existing).st_ino == existing_st.st_ino


# ---------------------------------------------------------------- ptrace: deny false, protect_pids

READ_ENVIRON = """
    import sys
    open(f"/proc/{sys.argv[1]}/environ", "rb").read()
    print("read", flush=True)
"""

READ_MEMORY = """
    import ctypes, errno, sys
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(8)
    iov = (ctypes.c_void_p * 2)(ctypes.addressof(buf), 8)
    if libc.process_vm_readv(int(sys.argv[1]), iov, 1, iov, 1, 0) < 0 and ctypes.get_errno() == errno.EPERM:
        raise PermissionError("process_vm_readv")  # refused (BPF LSM); EFAULT is no refusal
    print("read", flush=True)
"""


@pytest.fixture
def two_sleepers():
    procs = [subprocess.Popen(["/bin/sleep", "30"]) for _ in range(2)]
    yield [p.pid for p in procs]
    for p in procs:
        p.kill()
        p.wait()


def test_ptrace_deny_false_leaves_unprotected_processes_readable(cgroup, two_sleepers):
    protected, other = two_sleepers
    policy = Policy.from_dict({"version": 1, "mode": "enforce",
                               "ptrace": {"deny": False, "protect_pids": [protected]}})
    with Guard(policy, cgroup=cgroup) as g:
        environ_other = run_in(cgroup, READ_ENVIRON, str(other))
        memory_other = run_in(cgroup, READ_MEMORY, str(other))
        memory_protected = run_in(cgroup, READ_MEMORY, str(protected))
        got = decisions(g)
        action, status = stopped(g, "ptrace")
    assert [(p.returncode, p.stdout) for p in (environ_other, memory_other)] == [(0, "read\n")] * 2
    assert memory_protected.returncode == status and memory_protected.stdout == ""
    assert [(e.name, e.data.method, e.target_context.pid, e.policy.rule, e.action) for e in got] == [
        ("ptrace_denied", "process_vm_readv", protected, "ptrace.protect_pids[0]", action)]


def test_protect_pids_judges_only_guarded_processes(cgroup, two_sleepers):
    """ptrace.protect_pids: "processes outside the scope that no guarded
    process may ptrace or read". A process outside the scope (this test's
    child) is no guarded process: reading a protected pid's memory is not
    the guard's business, whichever way it reads it."""
    protected, _ = two_sleepers
    policy = Policy.from_dict({"version": 1, "mode": "enforce",
                               "ptrace": {"deny": True, "protect_pids": [protected]}})
    with Guard(policy, cgroup=cgroup) as g:
        environ = subprocess.run(py_argv(READ_ENVIRON) + [str(protected)], capture_output=True, text=True,
                                 timeout=20)
        memory = subprocess.run(py_argv(READ_MEMORY) + [str(protected)], capture_output=True, text=True,
                                timeout=20)
        got = decisions(g)
    assert [(p.returncode, p.stdout) for p in (environ, memory)] == [(0, "read\n")] * 2
    assert got == []


TRACEME = """
    import ctypes, os
    child = os.fork()
    if child == 0:
        ctypes.CDLL(None).ptrace(0, 0, None, None)  # PTRACE_TRACEME: this process's parent becomes its tracer
        os._exit(0)
    print(os.getpid(), child, flush=True)
    os.waitpid(child, 0)
"""

GETFD_ON_AN_EVENTFD = """
    import ctypes, os
    libc = ctypes.CDLL(None, use_errno=True)
    print(libc.syscall(438, os.eventfd(0), 0, 0), ctypes.get_errno(), flush=True)  # pidfd_getfd: EBADF
"""


def test_ptrace_decisions_name_the_process_reached(cgroup):
    """PTRACE_TRACEME reaches the caller's parent: that is the target named.
    pidfd_getfd on a descriptor that is no pidfd reaches no process (EBADF):
    nothing to judge, nobody to stop."""
    policy = Policy.from_dict({"version": 1, "mode": "enforce", "ptrace": {"deny": True}})
    with Guard(policy, cgroup=cgroup) as g:
        traceme = run_in(cgroup, TRACEME)
        getfd = run_in(cgroup, GETFD_ON_AN_EVENTFD)
        got = decisions(g)
        action, _ = stopped(g, "ptrace")
    parent, child = map(int, traceme.stdout.split())
    assert ((getfd.returncode, getfd.stdout),
            [(e.name, e.pid, e.data.method, e.target_context.pid, e.policy.rule, e.action) for e in got]) == (
        (0, "-1 9\n"), [("ptrace_denied", child, "ptrace", parent, "ptrace.deny", action)])


@pytest.mark.parametrize("scope", ["/", "/etc", "no-such-cgroup-here"])
def test_a_scope_that_is_no_cgroup_is_a_clear_error(scope):
    """An absolute path outside the cgroup2 mount, or one that is no cgroup
    there, is refused before anything is loaded."""
    policy = Policy.from_dict({"version": 1, "mode": "enforce", "scope": {"type": "cgroup", "cgroup": scope}})
    with pytest.raises(RuntimeGuardError, match=rf"scope: '{scope}' is not a cgroup v2 directory"):
        Guard(policy).start()
