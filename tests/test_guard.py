"""The guard against real clients: every block event, in both modes."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import msgspec
import pytest

from helpers import compiled, skip_only_without
from runtimeguard import environment
from runtimeguard.capabilities import fanotify_permission, io_uring_enabled, kernel_config
from runtimeguard.errors import RuntimeGuardError
from runtimeguard.guard import Guard, guard
from runtimeguard.policy import Policy
from runtimeguard.schema import json_decoder

DENIED_V4 = "127.0.0.2"


@pytest.fixture
def secrets_dir(tmp_path):
    d = tmp_path / "secrets"
    d.mkdir()
    (d / "id_rsa").write_text("not really a key\n")
    (tmp_path / "token").write_text("s3cr3t\n")
    return tmp_path


def make_policy(root, mode="enforce", **extra) -> Policy:
    text = textwrap.dedent(f"""
        version: 1
        name: test
        mode: {mode}
        network:
          default: allow
          deny:
            - cidr: {DENIED_V4}/32
            - cidr: "::1/128"
              ports: [9]
        files:
          protect: ["{root}/token", "{root}/secrets"]
        mirage:
          decoys: [{{path: "{root}/aws-credentials", template: aws}}]
          kill: false
        ptrace:
          deny: true
        taint:
          block_egress: true
    """)
    return Policy.from_text(text, "yaml")


def command_cgroups(guard_pid: int) -> set[str]:
    """The cgroups a guard in process guard_pid made for its commands (other
    guards on the machine make their own, named by their pid)."""
    return {n for n in os.listdir(environment.cgroup2_mount()) if n.startswith(f"runtimeguard-{guard_pid}-")}


def py(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def names(result) -> list[str]:
    return [e.name for e in result.events]


@pytest.fixture
def listener():
    s = socket.socket()
    s.bind((DENIED_V4, 0))
    s.listen()
    yield s.getsockname()[1]
    s.close()


CONNECT = """
    import socket, sys
    try:
        socket.create_connection(({host!r}, {port}), timeout=2).close()
    except PermissionError as e:
        assert e.errno == 1, e  # EPERM (not EACCES)
        sys.exit(3)
"""


@pytest.mark.root
def test_connect_denied_in_enforce_gets_eperm(secrets_dir, listener):
    result = guard(make_policy(secrets_dir), py(CONNECT.format(host=DENIED_V4, port=listener)))
    assert result.exit_status == 3
    (ev,) = [e for e in result.events if e.name == "connect_denied"]
    assert ev.action == "blocked" and ev.data.blocked and not ev.data.would_deny
    assert ev.target_context.formatted == f"{DENIED_V4}:{listener}"
    assert ev.policy.rule == "network.deny[0]" and ev.policy.mode == "enforce"
    assert ev.workload.process.name == "python3"


@pytest.mark.root
def test_connect_in_audit_mode_is_allowed_and_reported(secrets_dir, listener):
    result = guard(make_policy(secrets_dir, mode="audit"), py(CONNECT.format(host=DENIED_V4, port=listener)))
    assert result.exit_status == 0
    (ev,) = [e for e in result.events if e.name == "connect_denied"]
    assert ev.action == "would_block" and ev.data.would_deny and not ev.data.blocked
    assert ev.policy.mode == "audit"


@pytest.mark.root
def test_ipv4_mapped_destination_matches_the_ipv4_rule(secrets_dir, listener):
    code = CONNECT.replace("socket.create_connection(({host!r}, {port}), timeout=2)",
                           "socket.socket(socket.AF_INET6).connect(({host!r}, {port}))")
    result = guard(make_policy(secrets_dir), py(code.format(host=f"::ffff:{DENIED_V4}", port=listener)))
    assert result.exit_status == 3
    assert [e.target_context.address for e in result.events if e.name == "connect_denied"] == [DENIED_V4]


@pytest.mark.root
def test_ipv6_rule_with_port(secrets_dir):
    code = """
        import socket, sys
        s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        s.connect(("::1", 10))  # allowed port
        try:
            socket.socket(socket.AF_INET6, socket.SOCK_DGRAM).connect(("::1", 9))
        except PermissionError as e:
            assert e.errno == 1, e  # EPERM (not EACCES)
            sys.exit(3)
    """
    result = guard(make_policy(secrets_dir), py(code))
    assert result.exit_status == 3
    (ev,) = [e for e in result.events if e.name == "connect_denied"]
    assert ev.target_context.formatted == "[::1]:9" and ev.data.protocol == "udp"


# Each case: the policy's network section, then (protocol, address, port,
# refused?, rule named). UDP connects send nothing; TCP ones go to loopback
# ports where nothing listens. Expectations are written out by hand.
NETWORK_CASES = {
    "udp_only_deny_leaves_tcp_alone": (
        {"deny": [{"cidr": "127.0.0.2/32", "protocol": "udp"}]},
        [("udp", "127.0.0.2", 9, True, "network.deny[0]"), ("tcp", "127.0.0.2", 9, False, None)]),
    "tcp_only_deny_leaves_udp_alone": (
        {"deny": [{"cidr": "127.0.0.2/32", "protocol": "tcp"}]},
        [("tcp", "127.0.0.2", 9, True, "network.deny[0]"), ("udp", "127.0.0.2", 9, False, None)]),
    "default_deny_without_allows_refuses_loopback_too": (
        {"default": "deny"},
        [("tcp", "127.0.0.1", 9, True, "network.default"), ("udp", "::1", 53, True, "network.default")]),
    "default_deny_with_allows": (
        {"default": "deny", "allow": [{"cidr": "127.0.0.0/8", "ports": [53, "8000-8002"], "protocol": "udp"},
                                      {"cidr": "::1/128", "ports": [443]}]},
        [("udp", "127.9.9.9", 53, False, None), ("udp", "127.0.0.1", 8000, False, None),
         ("udp", "127.0.0.1", 8002, False, None), ("udp", "127.0.0.1", 8003, True, "network.default"),
         ("udp", "127.0.0.1", 52, True, "network.default"), ("tcp", "127.0.0.1", 53, True, "network.default"),
         ("udp", "10.0.0.1", 53, True, "network.default"), ("tcp", "::1", 443, False, None),
         ("udp", "::1", 443, False, None), ("tcp", "::1", 444, True, "network.default")]),
    "port_range_bounds_are_inclusive": (
        {"deny": [{"cidr": "127.0.0.2/32", "ports": ["1000-1010", 22]}]},
        [("udp", "127.0.0.2", 999, False, None), ("udp", "127.0.0.2", 1000, True, "network.deny[0]"),
         ("udp", "127.0.0.2", 1010, True, "network.deny[0]"), ("udp", "127.0.0.2", 1011, False, None),
         ("udp", "127.0.0.2", 22, True, "network.deny[0]"), ("udp", "127.0.0.2", 21, False, None)]),
    "deny_wins_over_a_wider_allow": (
        {"default": "deny", "allow": [{"cidr": "127.0.0.0/8"}], "deny": [{"cidr": "127.0.0.0/30", "ports": [7]}]},
        [("udp", "127.0.0.3", 7, True, "network.deny[0]"), ("udp", "127.0.0.4", 7, False, None),
         ("udp", "127.0.0.3", 8, False, None)]),
    "prefix_edges": (
        {"deny": [{"cidr": "127.0.1.0/24"}, {"cidr": "::1/127"}]},
        [("udp", "127.0.0.255", 9, False, None), ("udp", "127.0.1.0", 9, True, "network.deny[0]"),
         ("udp", "127.0.1.255", 9, True, "network.deny[0]"), ("udp", "127.0.2.0", 9, False, None),
         ("udp", "::", 9, True, "network.deny[1]"), ("udp", "::2", 9, False, None)]),
    "ipv4_rule_covers_ipv4_mapped_ipv6": (
        {"deny": [{"cidr": "127.0.0.2/32", "protocol": "udp"}]},
        [("udp", "::ffff:127.0.0.2", 9, True, "network.deny[0]"), ("udp", "::ffff:127.0.0.3", 9, False, None),
         ("tcp", "::ffff:127.0.0.2", 9, False, None)]),
    "ipv6_rule_does_not_cover_ipv4_mapped_ipv6": (
        {"deny": [{"cidr": "::/0"}]},
        [("udp", "::ffff:127.0.0.2", 9, False, None), ("udp", "::1", 9, True, "network.deny[0]")]),
}

TRY_CONNECTS = """
    import errno, socket, sys
    out = open({out!r}, "w")
    for proto, address, port in {destinations!r}:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        s = socket.socket(family, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
        try:
            s.connect((address, port))
            print("through", file=out)
        except PermissionError as e:
            assert e.errno == 1, e  # EPERM (not EACCES)
            print("refused", file=out)
        except OSError as e:
            print("through", errno.errorcode[e.errno], file=out)  # the guard let it pass; nobody answered
        s.close()
"""


@pytest.mark.root
@pytest.mark.parametrize("case", NETWORK_CASES)
def test_network_rules_decide_each_destination(secrets_dir, case):
    network, expectations = NETWORK_CASES[case]
    policy = Policy.from_dict({"version": 1, "mode": "enforce", "network": network})
    destinations = [(proto, address, port) for proto, address, port, _, _ in expectations]
    out = secrets_dir / "outcomes"
    result = guard(policy, py(TRY_CONNECTS.format(destinations=destinations, out=str(out))))
    assert result.exit_status == 0
    outcomes = [line.split()[0] for line in out.read_text().splitlines()]
    assert outcomes == ["refused" if refused else "through" for *_, refused, _ in expectations]
    denied = [(proto, address.removeprefix("::ffff:"), port, rule)
              for proto, address, port, refused, rule in expectations if refused]
    assert [(e.data.protocol, e.target_context.address, e.target_context.port, e.policy.rule)
            for e in result.events] == denied
    assert all(e.name == "connect_denied" and e.action == "blocked" for e in result.events)


@pytest.fixture
def ping_sockets_allowed():
    """Lets every group open ICMP datagram sockets, as a root workload could."""
    knob = "/proc/sys/net/ipv4/ping_group_range"
    with open(knob) as f:
        before = f.read()
    with open(knob, "w") as f:
        f.write("0 2147483647")
    yield
    with open(knob, "w") as f:
        f.write(before)


@pytest.mark.root
@pytest.mark.parametrize("family,kind,proto,formatted,status,action", [
    # ICMP "ping" datagram sockets skip the sendmsg hook as raw ones do.
    ("AF_INET", "SOCK_DGRAM", 1, "ping socket (ipv4, protocol 1)", 3, "blocked"),
    # An inet raw socket is refused by the cgroup hook: EPERM.
    ("AF_INET", "SOCK_RAW", 1, "raw socket (ipv4, protocol 1)", 3, "blocked"),
    # Packet sockets never reach that hook: the caller is killed at socket().
    ("AF_PACKET", "SOCK_RAW", 0, "packet socket (packet, protocol 0)", 128 + 9, "killed"),
])
def test_raw_and_packet_sockets_are_refused(secrets_dir, family, kind, proto, formatted, status, action,
                                            ping_sockets_allowed):
    code = f"""
        import socket, sys
        try:
            socket.socket(socket.{family}, socket.{kind}, {proto})
        except PermissionError as e:
            assert e.errno == 1, e  # EPERM (not EACCES)
            sys.exit(3)
    """
    result = guard(make_policy(secrets_dir), py(code))
    assert result.exit_status == status
    (ev,) = [e for e in result.events if e.name == "exfil_blocked"]
    assert ev.action == action
    assert ev.target_context.type == "socket" and ev.target_context.formatted == formatted
    assert ev.policy.rule == "network.raw_sockets"
    assert guard(make_policy(secrets_dir, mode="audit"), py(code)).exit_status == 0


@pytest.mark.root
def test_udp_sendto_denied_destination_is_exfil_blocked(secrets_dir):
    code = f"""
        import socket, sys
        try:
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", ({DENIED_V4!r}, 5353))
        except PermissionError as e:
            assert e.errno == 1, e  # EPERM (not EACCES)
            sys.exit(3)
    """
    result = guard(make_policy(secrets_dir), py(code))
    assert result.exit_status == 3
    (ev,) = [e for e in result.events if e.name == "exfil_blocked"]
    assert ev.target_context.formatted == f"{DENIED_V4}:5353" and not ev.data.tainted


# The backends this kernel runs for files: the fanotify judge answers EPERM
# before the open; the tracepoint judge kills after it.
FILE_BACKENDS = ["fanotify", "tracepoint"]
REFUSED = {"fanotify": (1, "blocked"), "tracepoint": (128 + 9, "killed")}


@pytest.mark.root
@pytest.mark.parametrize("how,command,rule", [
    ("direct", "cat token", "files.protect[0]"),
    ("inside_dir", "cat secrets/id_rsa", "files.protect[1]"),
    ("deep_inside_dir", "cat secrets/" + "/".join("d" * 40) + "/f", "files.protect[1]"),
    # Made by the workload itself, after the guard resolved the inodes. A
    # hard link and a rename change the protected file: the change watch may
    # kill ln or mv once it is done, so cat runs whatever became of them.
    ("hardlink", "ln token link; cat link", "files.protect[0]"),
    ("symlink", "ln -s token sym && cat sym", "files.protect[0]"),
    ("renamed", "mv token renamed; cat renamed", "files.protect[0]"),
])
@pytest.mark.parametrize("backend", FILE_BACKENDS)
def test_protected_file_open_is_refused(secrets_dir, how, command, rule, backend):
    deep = secrets_dir / "secrets" / "/".join("d" * 40)
    deep.mkdir(parents=True)
    (deep / "f").write_text("x\n")
    result = guard(make_policy(secrets_dir), ["sh", "-c", f"cd {secrets_dir} && {command}"], backend=backend)
    (ev,) = [e for e in result.events if e.name == "open_inode"]
    # cat: "Operation not permitted" and status 1, or killed.
    assert (result.exit_status, ev.action) == REFUSED[backend]
    opened = secrets_dir / command.split()[-1]
    st = os.stat(opened)
    assert (ev.target_context.device, ev.target_context.inode) == (st.st_dev, st.st_ino)
    assert ev.workload.process.name == "cat" and ev.policy.rule == rule


# By path, not through an open: truncate(2), not truncate(1), which opens the
# file first (an open_inode refusal). The fanotify backend refuses truncate(2)
# where the filesystem takes pre-content events (test_guard_files.py).
@pytest.mark.root
@pytest.mark.parametrize("backend,change,operation,rule", [
    (backend, change, operation, rule) for backend in FILE_BACKENDS for change, operation, rule in (
        ("os.unlink('token')", "delete", "files.protect[0]"),
        ("os.rename('token', 'moved')", "move", "files.protect[0]"),
        ("os.chmod('token', 0)", "attributes", "files.protect[0]"),
        ("os.unlink('secrets/id_rsa')", "delete", "files.protect[1]"),
    )] + [("tracepoint", "os.truncate('token', 0)", "modify", "files.protect[0]")])
def test_changes_by_path_are_detected_not_prevented(secrets_dir, backend, change, operation, rule):
    # The changer lives on after the change, so there is someone to kill.
    code = f"import os, time; os.chdir({str(secrets_dir)!r}); {change}; time.sleep(10)"
    result = guard(make_policy(secrets_dir), [sys.executable, "-c", code], backend=backend)
    assert result.exit_status == 128 + 9
    changes = [e for e in result.events if e.name == "protected_file_changed"]
    # An unlink also changes the inode's link count: a second, "attributes", report.
    assert changes and changes[0].data.operation == operation
    assert {(e.action, e.policy.rule, e.workload.process.name) for e in changes} == {("killed", rule, "python3")}
    ev = changes[0]
    assert ev.data.detected_not_prevented and not ev.data.blocked
    protected = secrets_dir / ("secrets" if "secrets/" in change else "token")
    assert ev.target_context.path == str(protected)


@pytest.mark.root
def test_process_that_changed_a_protected_file_is_killed_after_the_fact(secrets_dir):
    code = f"""
        import os, time
        os.unlink({str(secrets_dir / "token")!r})
        time.sleep(10)
    """
    result = guard(make_policy(secrets_dir), py(code))
    assert result.exit_status == 128 + 9
    (ev,) = [e for e in result.events if e.name == "protected_file_changed" and e.data.operation == "delete"]
    assert ev.action == "killed" and ev.workload.process.name == "python3"


@pytest.fixture(scope="module")
def uring_open(tmp_path_factory):
    return compiled(tmp_path_factory.mktemp("uring"), "uring_open.c")


# fd0: the open returns descriptor 0; overflow: its completion overflows the
# queue and reaches the ring through io_uring_cqe_overflow; fixed: the open
# goes into the ring's fixed-file table and never has a descriptor, which
# only the fanotify judge (or BPF LSM) sees.
@pytest.mark.root
@pytest.mark.parametrize("backend,mode", [(b, m) for b in FILE_BACKENDS for m in ("plain", "fd0", "overflow")]
                         + [("fanotify", "fixed")])
def test_open_through_io_uring_is_refused(secrets_dir, uring_open, backend, mode):
    if subprocess.run([uring_open, "/etc/hostname", mode], capture_output=True).returncode == 2:
        skip_only_without(io_uring_enabled(kernel_config()), "io_uring")
    result = guard(make_policy(secrets_dir), [uring_open, str(secrets_dir / "token"), mode], backend=backend)
    # uring_open: 3 when the open failed (EPERM), after saying so.
    assert result.exit_status == {"fanotify": 3, "tracepoint": 128 + 9}[backend]
    (ev,) = [e for e in result.events if e.name == "open_inode"]
    assert ev.action == REFUSED[backend][1] and ev.target_context.inode == os.stat(secrets_dir / "token").st_ino


BY_HANDLE = """
    import ctypes, os, struct, sys
    libc = ctypes.CDLL(None, use_errno=True)
    path = sys.argv[1]
    handle = ctypes.create_string_buffer(8 + 128)
    struct.pack_into("=I", handle, 0, 128)
    mount_id = ctypes.c_int()
    # Naming the file opens nothing; the open comes from the handle alone.
    assert libc.name_to_handle_at(-100, path.encode(), handle, ctypes.byref(mount_id), 0) == 0
    fd = libc.open_by_handle_at(os.open(os.path.dirname(path), os.O_RDONLY), handle, os.O_RDONLY)
    if fd < 0:
        sys.exit(3 if ctypes.get_errno() == 1 else 1)
    os.read(fd, 64)
"""


@pytest.mark.root
@pytest.mark.parametrize("backend", FILE_BACKENDS)
def test_open_by_handle_is_refused(secrets_dir, backend):
    """open_by_handle_at names an inode without a path: judged like any open."""
    result = guard(make_policy(secrets_dir), py(BY_HANDLE) + [str(secrets_dir / "token")], backend=backend)
    (ev,) = [e for e in result.events if e.name == "open_inode"]
    # py: 3 when the open got EPERM.
    assert (result.exit_status, ev.action) == {"fanotify": (3, "blocked"), "tracepoint": (128 + 9, "killed")}[backend]
    assert ev.target_context.inode == os.stat(secrets_dir / "token").st_ino


@pytest.mark.root
def test_protected_file_in_audit_mode_is_read(secrets_dir):
    result = guard(make_policy(secrets_dir, mode="audit"), ["cat", str(secrets_dir / "token")])
    assert result.exit_status == 0
    assert [e.action for e in result.events if e.name == "open_inode"] == ["would_block"]


@pytest.mark.root
def test_decoy_read_taints_and_blocks_later_egress(secrets_dir, listener):
    decoy = secrets_dir / "aws-credentials"
    code = f"""
        import socket, sys
        open({str(decoy)!r}).read()
        try:
            socket.create_connection(("127.0.0.1", {listener}), timeout=2)
        except PermissionError as e:
            assert e.errno == 1, e  # EPERM (not EACCES)
            sys.exit(3)
    """
    result = guard(make_policy(secrets_dir), py(code))
    assert result.exit_status == 3
    assert names(result) == ["mirage_trap", "exfil_blocked"]
    trap, exfil = result.events
    assert trap.action == "observed" and trap.policy.rule == "mirage.decoys[0]"
    assert exfil.data.tainted and exfil.policy.rule == "taint.block_egress"
    assert not decoy.exists(), "a decoy the guard created is removed on exit"


PTRACER = """
    import ctypes, os, time
    libc = ctypes.CDLL(None, use_errno=True)
    libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
    target = os.fork()
    if target == 0:
        time.sleep(30)
        os._exit(0)
    {action}
"""


@pytest.mark.root
@pytest.mark.parametrize("action,method", [
    ("libc.ptrace(16, target, None, None)", "ptrace"),
    ("open(f'/proc/{target}/mem', 'rb')", "proc_mem_open"),
    ("open(f'/proc/{target}/environ', 'rb').read()", "proc_environ_open"),
    ("libc.syscall(438, os.pidfd_open(target), 0, 0)", "pidfd_getfd"),
    ("buf = ctypes.create_string_buffer(8); iov = (ctypes.c_void_p * 2)(ctypes.addressof(buf), 8); "
     "libc.process_vm_readv(target, iov, 1, iov, 1, 0)", "process_vm_readv"),
])
def test_ptrace_and_memory_access_are_killed(secrets_dir, action, method):
    result = guard(make_policy(secrets_dir), py(PTRACER.format(action=action)))
    assert result.exit_status == 128 + 9
    (ev,) = [e for e in result.events if e.name == "ptrace_denied"]
    assert ev.action == "killed" and ev.data.method == method
    assert ev.policy.rule == "ptrace.deny"
    assert ev.target_context.type == "pid" and ev.target_context.pid > 0


# A process sharing the caller's descriptor table (clone(CLONE_FILES) without
# CLONE_THREAD) would outlive a kill for an open and use the descriptor. The
# would-be child writes a marker: it must not exist when the clone is refused.
CLONE_FILES_SIBLING = """
    import ctypes, os, struct, sys, time
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    CLONE_FILES, SIGCHLD = 0x400, 17
    args = struct.pack("=8Q", CLONE_FILES, 0, 0, 0, SIGCHLD, 0, 0, 0)
    if sys.argv[2] == "clone3":
        pid = libc.syscall(435, ctypes.create_string_buffer(args, 64), ctypes.c_size_t(64))
    elif sys.argv[2] == "clone3-untouched":
        # The arguments in a mapping never touched: the kernel faults its page
        # in, a BPF program cannot read it.
        with open(sys.argv[1] + ".args", "wb") as f:
            f.write(args.ljust(4096, b"\\0"))
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
        fd = os.open(sys.argv[1] + ".args", os.O_RDONLY)
        addr = libc.mmap(None, 4096, 1, 1, fd, 0)  # PROT_READ, MAP_SHARED
        pid = libc.syscall(435, ctypes.c_void_p(addr), ctypes.c_size_t(64))
    else:
        pid = libc.syscall(56, ctypes.c_ulong(CLONE_FILES | SIGCHLD), None, None, None, None)
    if pid == 0:
        open(sys.argv[1], "w").close()
        os._exit(0)
    print("clone returned", pid, ctypes.get_errno(), flush=True)
    if pid > 0:
        os.waitpid(pid, 0)
"""


def clone_files_sibling(marker, call="clone") -> list[str]:
    return py(CLONE_FILES_SIBLING) + [str(marker), call]


@pytest.mark.root
@pytest.mark.parametrize("call", ["clone", "clone3", "clone3-untouched"])
def test_a_process_sharing_the_descriptor_table_is_never_created(secrets_dir, tmp_path, call):
    marker = tmp_path / "child-ran"
    result = guard(make_policy(secrets_dir), clone_files_sibling(marker, call))
    assert result.exit_status == 128 + 9
    time.sleep(0.5)
    assert not marker.exists(), "the would-be child never ran"
    (ev,) = [e for e in result.events if e.name == "ptrace_denied"]
    # clone3 arguments the program cannot read are judged as every namespace kind too.
    assert [e.data.namespaces for e in result.events if e.name == "namespace_denied"] == (
        [("time", "mnt", "cgroup", "uts", "ipc", "user", "pid", "net")] if call == "clone3-untouched" else [])
    assert (ev.name, ev.action, ev.data.method) == ("ptrace_denied", "killed", "clone_files")
    assert ev.policy.rule == "ptrace.deny"
    assert ev.target_context.type == "pid" and ev.target_context.pid == ev.workload.process.pid


@pytest.mark.root
def test_a_process_sharing_the_descriptor_table_in_audit_mode(secrets_dir, tmp_path):
    marker = tmp_path / "child-ran"
    result = guard(make_policy(secrets_dir, mode="audit"), clone_files_sibling(marker))
    assert result.exit_status == 0 and marker.exists()
    (ev,) = result.events
    assert (ev.name, ev.action, ev.data.method) == ("ptrace_denied", "would_block", "clone_files")


@pytest.mark.root
def test_sharing_the_descriptor_table_is_governed_by_ptrace_deny(tmp_path):
    marker = tmp_path / "child-ran"
    policy = Policy.from_dict({"version": 1, "mode": "enforce", "ptrace": {"deny": False}})
    result = guard(policy, clone_files_sibling(marker))
    assert result.exit_status == 0 and marker.exists() and result.events == []


@pytest.mark.root
def test_threads_and_plain_forks_are_never_judged_as_sharing(secrets_dir):
    """A thread is CLONE_THREAD | CLONE_FILES; a fork shares nothing."""
    code = """
        import os, threading
        t = threading.Thread(target=lambda: None)
        t.start()
        t.join()
        pid = os.fork()
        if pid == 0:
            os._exit(7)
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 7
        print("done", flush=True)
    """
    result = guard(make_policy(secrets_dir), py(code))
    assert result.exit_status == 0 and result.events == []


@pytest.mark.root
def test_protected_pid_and_the_guard_itself_carry_their_own_rules(secrets_dir):
    """With ptrace.deny off, only the pids the policy names (and the guard)
    are out of reach; a guarded process may still read its own child."""
    outside = subprocess.Popen(["sleep", "30"])
    try:
        policy = Policy.from_dict({"version": 1, "mode": "enforce",
                                   "ptrace": {"deny": False, "protect_pids": [outside.pid]}})
        own_child = "open(f'/proc/{target}/environ', 'rb').read(); print('read own child', flush=True)"
        result = guard(policy, py(PTRACER.format(action=own_child)))
        assert result.exit_status == 0 and result.events == []
        result = guard(policy, py(f"open('/proc/{outside.pid}/environ', 'rb').read()"))
        assert result.exit_status == 128 + 9
        (ev,) = result.events
        assert (ev.name, ev.data.method, ev.target_context.pid) == ("ptrace_denied", "proc_environ_open", outside.pid)
        assert ev.policy.rule == "ptrace.protect_pids[0]"
        # Not PTRACE_ATTACH: without BPF LSM the attach completes before the
        # kill and would leave this test's own process stopped.
        result = guard(policy, py("import os; open(f'/proc/{os.getppid()}/environ', 'rb').read()"))
        assert result.exit_status == 128 + 9
        (ev,) = result.events
        assert (ev.target_context.pid, ev.policy.rule) == (os.getpid(), "guard")
    finally:
        outside.kill()
        outside.wait()


@pytest.mark.root
def test_own_memory_and_environment_are_not_judged(secrets_dir):
    code = """
        import os
        open(f"/proc/{os.getpid()}/mem", "rb").close()
        open("/proc/self/environ", "rb").read()
    """
    result = guard(make_policy(secrets_dir), py(code))
    assert result.exit_status == 0 and result.events == []


@pytest.mark.root
def test_auto_backend_is_the_strongest_that_starts_and_does_what_it_claims(secrets_dir):
    """backend="lsm" starts or is refused with the reason; "auto" picks it
    exactly when it starts, else fanotify where its permission events work;
    and the backend chosen does to a protected open what it claims: EPERM
    with the caller alive (lsm, fanotify), or a kill (tracepoint)."""
    try:
        Guard(make_policy(secrets_dir), backend="lsm").run(["true"])
        lsm_starts = True
    except RuntimeGuardError as e:
        assert str(e).startswith("the BPF LSM backend is not available here: bpf_lsm")
        assert not (secrets_dir / "aws-credentials").exists(), "nothing is set up from a refused start"
        lsm_starts = False
    auto = Guard(make_policy(secrets_dir))
    result = auto.run(py(f"""
        import sys
        try:
            open({str(secrets_dir / "token")!r}).read()
        except PermissionError as e:
            assert e.errno == 1, e  # EPERM (not EACCES)
            sys.exit(3)
    """))
    (ev,) = [e for e in result.events if e.name == "open_inode"]
    if lsm_starts:
        assert (auto.backend, result.exit_status, ev.action) == ("lsm", 3, "blocked")
    elif fanotify_permission()[0]:
        assert (auto.backend, result.exit_status, ev.action) == ("fanotify", 3, "blocked")
        assert auto.mechanisms["files"].startswith("fanotify permission events (EPERM before the open")
        assert auto.mechanisms["ptrace"].startswith("tracepoint")
    else:
        assert (auto.backend, result.exit_status, ev.action) == ("tracepoint", 128 + 9, "killed")


@pytest.mark.root
def test_command_run_as_another_user_cannot_undo_the_guard(secrets_dir):
    # Shell, not Python: this interpreter may live where "nobody" cannot read.
    script = f"""
        set -u
        [ "$(id -u)" = 65534 ] && [ "$(id -G)" = 65534 ] || exit 1
        grep -q '^NoNewPrivs:[[:space:]]*1$' /proc/self/status || exit 2
        echo $$ > {environment.cgroup2_mount()}/cgroup.procs 2>/dev/null && exit 3
        kill -0 $PPID 2>/dev/null && exit 4  # signal 0: the permission check alone
        exit 0
    """
    result = guard(make_policy(secrets_dir), ["sh", "-c", textwrap.dedent(script)], user="nobody")
    assert result.exit_status == 0


@pytest.mark.root
def test_protected_file_where_changes_cannot_be_watched_is_a_clear_error():
    # procfs has no file handles for fanotify; only BPF LSM could guard changes there.
    policy = Policy.from_text("version: 1\nmode: enforce\nfiles:\n  protect: [/proc/version]\n")
    with pytest.raises(RuntimeGuardError, match=r"files.protect: changes by path cannot be watched .*/proc/version"):
        guard(policy, ["true"], backend="tracepoint")
    assert command_cgroups(os.getpid()) == set()


def test_unknown_user_is_refused_before_anything_runs(secrets_dir):
    with pytest.raises(RuntimeGuardError, match="no such user 'no-such-user-here'"):
        guard(make_policy(secrets_dir), ["true"], user="no-such-user-here")
    assert not (secrets_dir / "aws-credentials").exists()


@pytest.mark.root
def test_double_forked_setsid_grandchild_stays_in_scope(secrets_dir, listener):
    code = f"""
        import os, socket, sys, time
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                try:
                    socket.create_connection(({DENIED_V4!r}, {listener}), timeout=2)
                    open("{secrets_dir}/result", "w").write("connected")
                except PermissionError as e:
                    assert e.errno == 1, e  # EPERM (not EACCES)
                    open("{secrets_dir}/result", "w").write("denied")
                os._exit(0)
            os._exit(0)
        time.sleep(1)
    """
    result = guard(make_policy(secrets_dir), py(code))
    assert (secrets_dir / "result").read_text() == "denied"
    assert names(result) == ["connect_denied"]


@pytest.mark.root
def test_exit_status_comes_back_and_cgroup_is_removed(secrets_dir):
    assert guard(make_policy(secrets_dir), ["sh", "-c", "exit 7"]).exit_status == 7
    assert command_cgroups(os.getpid()) == set()


@pytest.mark.root
def test_missing_command_is_a_clear_error(secrets_dir):
    from runtimeguard.errors import RuntimeGuardError

    with pytest.raises(RuntimeGuardError, match="cannot run"):
        guard(make_policy(secrets_dir), ["/nonexistent/command"])


@pytest.fixture
def scope_cgroup():
    """A cgroup to guard, and a way to run commands in it."""
    cgroup = os.path.join(environment.cgroup2_mount(), f"rg-test-{secrets.token_hex(3)}")
    os.mkdir(cgroup)

    def enter():
        with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
            f.write("0")

    def run(argv):
        return subprocess.run(argv, preexec_fn=enter, capture_output=True).returncode

    yield cgroup, run
    os.rmdir(cgroup)


@pytest.mark.root
def test_enforcement_holds_with_the_ring_buffer_full(secrets_dir, listener, scope_cgroup):
    """Nobody drains a tiny ring, which fills up: the decisions are made all the same."""
    cgroup, run = scope_cgroup
    with Guard(make_policy(secrets_dir), cgroup=cgroup, ring_buffer_size=4096) as g:
        for _ in range(20):
            run(["/bin/true"])
        assert run(py(CONNECT.format(host=DENIED_V4, port=listener))) == 3
        # The fanotify judge answers on its own thread, whatever the ring holds.
        assert run(["cat", str(secrets_dir / "token")]) == (1 if g.backend == "fanotify" else -9)
        assert g.stats().lost_total > 0


@pytest.mark.root
def test_mode_switch_on_a_running_guard_is_logged(secrets_dir, listener, tmp_path):
    root = environment.cgroup2_mount()
    cgroup = os.path.join(root, f"rg-mode-{secrets.token_hex(3)}")
    os.mkdir(cgroup)
    log = tmp_path / "audit.ndjson"

    def connect():
        def enter():
            with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
                f.write("0")
        return subprocess.run(py(CONNECT.format(host=DENIED_V4, port=listener)), preexec_fn=enter).returncode

    try:
        with Guard(make_policy(secrets_dir, mode="audit"), cgroup=cgroup, audit_log=str(log)) as g:
            assert connect() == 0
            g.set_mode("enforce")
            assert connect() == 3
            g.poll(0.2)
    finally:
        os.rmdir(cgroup)
    lines = [json_decoder.decode(line) for line in log.read_bytes().splitlines()]
    assert [(e.name, e.action) for e in lines] == [
        ("connect_denied", "would_block"), ("mode_changed", "observed"), ("connect_denied", "blocked")]
    assert all(e.name == "mode_changed" or e.target_context.formatted == f"{DENIED_V4}:{listener}" for e in lines)


EXAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


# What try_forbidden.py prints for each attempt; the file, ptrace and memory
# ones depend on the mechanism run's first line names.
EXPECTED_OUTCOMES = {
    "audit": {"connect_sinkhole": "failed (not by the guard)", "udp_to_sinkhole": "done", "read_shadow": "done",
              "read_decoy_then_send": "done", "ptrace_attach": "done", "read_process_memory": "done",
              "make_namespace": "done"},
    # unshare: killed at syscall entry by every backend (no LSM hook sees it).
    "enforce": {"connect_sinkhole": "refused (EPERM)", "udp_to_sinkhole": "refused (EPERM)",
                "read_decoy_then_send": "refused (EPERM)", "make_namespace": "killed by SIGKILL"},
}
# The first line's mechanism: what happens to the file reads, and to ptrace
# and memory access, and the actions enforce mode logs.
BY_MECHANISM = {
    "syscall tracepoints": ("killed by SIGKILL", "killed by SIGKILL", {"blocked", "killed", "observed"}),
    "fanotify": ("refused (EPERM)", "killed by SIGKILL", {"blocked", "killed", "observed"}),
    # unshare: killed by every backend.
    "BPF LSM hooks": ("refused (EPERM)", "refused (EPERM)", {"blocked", "killed", "observed"}),
}


@pytest.mark.root
@pytest.mark.parametrize("mode", ["enforce", "audit"])
def test_example_policy_from_the_command_line(tmp_path, mode):
    """The README's acceptance run: each forbidden thing blocked (enforce) or
    only reported (audit); one audit line per decision; the exit status back;
    and the mechanism named on the first line is the one that acted."""
    log = tmp_path / "audit.ndjson"
    out = subprocess.run(
        [sys.executable, "-m", "runtimeguard", "run", "--policy", os.path.join(EXAMPLE, "agent-policy.yaml"),
         "--mode", mode, "--audit-log", str(log), "--", sys.executable, os.path.join(EXAMPLE, "try_forbidden.py")],
        capture_output=True, text=True, timeout=60, cwd=os.path.dirname(EXAMPLE))
    assert out.returncode == 0, out.stderr
    first = out.stderr.splitlines()[0]
    prefix = f"runtimeguard: {mode} mode; egress by cgroup hooks (EPERM); "
    assert first.startswith(prefix), first
    mechanism = first[len(prefix):].split(":", 1)[0]
    assert mechanism in BY_MECHANISM, first
    file_stopped, ptrace_stopped, enforce_actions = BY_MECHANISM[mechanism]
    expected = dict(EXPECTED_OUTCOMES[mode])
    if mode == "enforce":
        expected.update(read_shadow=file_stopped, ptrace_attach=ptrace_stopped, read_process_memory=ptrace_stopped)
    outcomes = dict(line.split(None, 1) for line in out.stdout.splitlines())
    assert {k: v.strip() for k, v in outcomes.items()} == expected
    decisions = [json_decoder.decode(line) for line in log.read_bytes().splitlines()]
    assert sorted((e.name, e.policy.rule) for e in decisions) == sorted([
        ("connect_denied", "network.deny[0]"), ("exfil_blocked", "network.deny[0]"),
        ("open_inode", "files.protect[0]"), ("mirage_trap", "mirage.decoys[0]"),
        ("exfil_blocked", "taint.block_egress"), ("ptrace_denied", "ptrace.deny"), ("ptrace_denied", "ptrace.deny"),
        ("namespace_denied", "namespaces.deny")])
    assert all(e.target_context is not None and e.policy.mode == mode for e in decisions)
    assert {e.action for e in decisions} == (enforce_actions if mode == "enforce" else {"would_block"})
    assert "(rule files.protect[0])" in out.stderr


@pytest.mark.root
def test_run_returns_the_commands_exit_status():
    out = subprocess.run([sys.executable, "-m", "runtimeguard", "run", "--policy",
                          os.path.join(EXAMPLE, "agent-policy.yaml"), "--", "sh", "-c", "exit 5"],
                         capture_output=True, text=True, timeout=60, cwd=os.path.dirname(EXAMPLE))
    assert out.returncode == 5, out.stderr


def test_check_policy_command(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nnetwork:\n  deny:\n    - cidr: 10.0.0.300/8\n")
    good = subprocess.run([sys.executable, "-m", "runtimeguard", "check-policy",
                           os.path.join(EXAMPLE, "agent-policy.yaml")], capture_output=True, text=True,
                          cwd=os.path.dirname(EXAMPLE))
    assert good.returncode == 0 and "ok" in good.stdout
    out = subprocess.run([sys.executable, "-m", "runtimeguard", "check-policy", str(bad)], capture_output=True,
                         text=True, cwd=os.path.dirname(EXAMPLE))
    assert out.returncode == 1 and "network.deny[0].cidr" in out.stderr


@pytest.mark.root
def test_ctrl_c_cleans_up_cgroup_and_decoys(tmp_path):
    decoy = tmp_path / "decoy-env"
    policy = tmp_path / "p.yaml"
    policy.write_text(f"version: 1\nmode: enforce\nmirage:\n  decoys: [{{path: '{decoy}', template: env}}]\n")
    # A shell's background job starts with SIGINT ignored, and exec keeps that:
    # give the guard the default disposition a terminal's Ctrl-C meets.
    proc = subprocess.Popen([sys.executable, "-m", "runtimeguard", "run", "--policy", str(policy), "--",
                             "sleep", "30"], stderr=subprocess.PIPE, text=True, cwd=os.path.dirname(EXAMPLE),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 10
    while not (decoy.exists() and command_cgroups(proc.pid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert decoy.exists(), "the decoy is created while the guard runs"
    assert len(command_cgroups(proc.pid)) == 1, "and the command's cgroup"
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=10) == 128 + signal.SIGINT
    assert not decoy.exists()
    assert command_cgroups(proc.pid) == set()
    assert "Traceback" not in proc.stderr.read()


@pytest.mark.root
@pytest.mark.parametrize("mode,delivered", [("enforce", b"before"), ("audit", b"beforeafter")])
def test_tainted_process_sends_nothing_on_a_socket_connected_before(secrets_dir, scope_cgroup, mode, delivered):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    received = []

    def serve():
        conn, _ = server.accept()
        conn.settimeout(3)
        with conn:
            try:
                while chunk := conn.recv(100):
                    received.append(chunk)
            except OSError:
                pass

    port = server.getsockname()[1]
    reader = threading.Thread(target=serve)
    reader.start()
    code = f"""
        import socket, time
        s = socket.create_connection(("127.0.0.1", {port}))
        s.sendall(b"before")
        time.sleep(0.3)
        open({str(secrets_dir / "aws-credentials")!r}).read()
        s.sendall(b"after")  # accepted into the socket's buffer; its packets are dropped
        time.sleep(1)
    """
    cgroup, run = scope_cgroup
    try:
        with Guard(make_policy(secrets_dir, mode=mode), cgroup=cgroup) as g:
            assert run(py(code)) == 0
            # What left while the guard was attached.
            during = b"".join(received)
            time.sleep(0.1)
            decisions = g.poll(1)
    finally:
        reader.join()  # 3 s past the last byte: TCP would have retransmitted what was queued
        server.close()
    assert [e.name for e in decisions] == ["mirage_trap", "exfil_blocked"], decisions
    assert during == delivered
    # Nor once the guard has detached: in enforce mode the tracepoint backend
    # destroys the socket first, the LSM backend never queued the data
    # (tests/test_guard_sockets.py: more cases).
    assert b"".join(received) == delivered
    exfil = decisions[1]
    assert exfil.data.tainted and exfil.policy.rule == "taint.block_egress"
    assert exfil.action == ("blocked" if mode == "enforce" else "would_block")
    assert exfil.target_context.formatted == f"127.0.0.1:{port}"
    assert exfil.workload.process.name == "python3"


@pytest.mark.root
def test_taint_passes_to_children_forked_later(secrets_dir, listener):
    code = f"""
        import os, socket, sys
        open({str(secrets_dir / "aws-credentials")!r}).read()
        pid = os.fork()
        if pid == 0:
            try:
                socket.create_connection(("127.0.0.1", {listener}), timeout=2)
            except PermissionError as e:
                assert e.errno == 1, e  # EPERM (not EACCES)
                os._exit(3)
            os._exit(0)
        sys.exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
    """
    result = guard(make_policy(secrets_dir), py(code))
    assert result.exit_status == 3
    (ev,) = [e for e in result.events if e.name == "exfil_blocked"]
    assert ev.data.tainted and ev.pid != result.events[0].pid


@pytest.mark.root
def test_tcp_fast_open_to_a_denied_destination_is_refused(secrets_dir, listener):
    code = f"""
        import socket, sys
        s = socket.socket()
        try:
            s.sendto(b"x", socket.MSG_FASTOPEN, ({DENIED_V4!r}, {listener}))
        except PermissionError as e:
            assert e.errno == 1, e  # EPERM (not EACCES)
            sys.exit(3)
    """
    result = guard(make_policy(secrets_dir), py(code))
    assert result.exit_status == 3
    assert [e.name for e in result.events] == ["connect_denied"]


@pytest.mark.root
def test_protected_pid_cannot_be_traced_even_when_ptrace_is_allowed(secrets_dir):
    victim = subprocess.Popen(["sleep", "30"])
    try:
        text = textwrap.dedent(f"""
            version: 1
            mode: enforce
            ptrace:
              deny: false
              protect_pids: [{victim.pid}]
        """)
        code = f"""
            import ctypes
            libc = ctypes.CDLL(None, use_errno=True)
            libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
            libc.ptrace(16, {victim.pid}, None, None)
        """
        result = guard(Policy.from_text(text), py(code))
        assert result.exit_status == 128 + 9
        (ev,) = result.events
        assert ev.name == "ptrace_denied" and ev.target_context.pid == victim.pid
        assert ev.target_context.formatted == f"pid {victim.pid} (sleep)"
        assert ev.policy.rule == "ptrace.protect_pids[0]"
    finally:
        victim.kill()
        victim.wait()


@pytest.mark.root
def test_cli_mode_switch_by_signal(tmp_path, listener):
    policy = tmp_path / "p.yaml"
    policy.write_text(f"version: 1\nmode: audit\nnetwork:\n  deny: [{{cidr: {DENIED_V4}/32}}]\n")
    log = tmp_path / "audit.ndjson"
    code = f"""
        import socket, sys, time
        for _ in range(100):
            try:
                socket.create_connection(({DENIED_V4!r}, {listener}), timeout=2).close()
                print("connected", flush=True)
            except PermissionError as e:
                assert e.errno == 1, e  # EPERM (not EACCES)
                print("refused", flush=True)
                break
            time.sleep(0.05)
    """
    proc = subprocess.Popen([sys.executable, "-m", "runtimeguard", "run", "--policy", str(policy), "--audit-log",
                             str(log), "--"] + py(code), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=os.path.dirname(EXAMPLE))
    assert proc.stdout.readline().strip() == "connected"
    proc.send_signal(signal.SIGUSR1)
    lines = proc.stdout.read().split()
    assert proc.wait(timeout=20) == 0
    assert lines[-1] == "refused"
    names = [json_decoder.decode(line).name for line in log.read_bytes().splitlines()]
    assert "mode_changed" in names and names[-1] == "connect_denied"


@pytest.mark.root
@pytest.mark.parametrize("scope", ["host", "cgroup"])
def test_policy_scope_host_and_cgroup(tmp_path, listener, scope):
    root = environment.cgroup2_mount()
    outer = os.path.join(root, f"rg-scope-{secrets.token_hex(3)}")
    os.mkdir(outer)
    try:
        scope_text = "{type: host}" if scope == "host" else f"{{type: cgroup, cgroup: {os.path.basename(outer)}}}"
        # Only what the test's own processes do can match: a host-wide guard
        # must not judge the rest of the machine (ptrace.deny would).
        policy = Policy.from_text(f"version: 1\nmode: enforce\nscope: {scope_text}\nptrace: {{deny: false}}\n"
                                  f"network:\n  deny: [{{cidr: {DENIED_V4}/32}}]\n")
        connect = py(CONNECT.format(host=DENIED_V4, port=listener))

        def in_outer():
            with open(os.path.join(outer, "cgroup.procs"), "w") as f:
                f.write("0")

        with Guard(policy) as g:
            # Host scope: any process; cgroup scope: only processes in that cgroup.
            assert subprocess.run(connect).returncode == (3 if scope == "host" else 0)
            assert subprocess.run(connect, preexec_fn=in_outer).returncode == 3
            g.poll(0.2)
        # run() puts the command in a cgroup of its own inside the scope.
        assert guard(policy, connect).exit_status == 3
    finally:
        os.rmdir(outer)



@pytest.mark.root
def test_a_decision_names_the_identity_of_the_process_it_stopped(secrets_dir, listener):
    policy = Policy.from_dict({**msgspec.to_builtins(make_policy(secrets_dir)),
                               "identity": {"env": ["OPENAI_API_KEY"], "argv": ["rg-agent"]}})
    command = ["env", "OPENAI_API_KEY=sk-test", *py(CONNECT.format(host=DENIED_V4, port=listener)), "rg-agent"]
    result = guard(policy, command)
    assert result.exit_status == 3
    (ev,) = [e for e in result.events if e.name == "connect_denied"]
    assert ev.workload.process.name == "python3"
    assert ev.workload.process.identities == ["env:OPENAI_API_KEY", "argv:rg-agent"]
