"""The fanotify backend: protected files and decoys refused with EPERM before
the open, whatever makes it. Each test drives one way in for real, in enforce
mode (EPERM, the file untouched) and in audit mode (it happens and is
reported): an overlay mounted in an unprivileged user namespace, open with
O_TRUNC, the 32-bit open syscall, io_uring's fixed-file table, exec, reads
through a descriptor opened before the guard started, and directories made
beneath a protected one while the guard runs."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import textwrap
import time

import msgspec
import pytest

from helpers import compiled, skip_only_without
from runtimeguard import environment
from runtimeguard.capabilities import fanotify_permission, ia32_emulation, io_uring_enabled, kernel_config
from runtimeguard.errors import BPFError
from runtimeguard.guard import Guard, guard
from runtimeguard.policy import Policy

from test_guard import command_cgroups, make_policy, py, scope_cgroup, secrets_dir  # noqa: F401 (fixtures)

pytestmark = pytest.mark.root


@pytest.fixture(autouse=True)
def _fanotify_runs_here():
    works, why = fanotify_permission()
    if not works:
        config = kernel_config()
        skip_only_without(not config or config.get("CONFIG_FANOTIFY_ACCESS_PERMISSIONS") == "y",
                          f"fanotify permission events ({why})")


def opened(events, name="open_inode"):
    return [e for e in events if e.name == name]


@pytest.fixture
def shared_dir():
    """A directory every user can enter (pytest's are root's alone), with a
    protected file in a layer an overlay can be made of."""
    d = tempfile.mkdtemp(prefix="rg-files-")
    os.chmod(d, 0o755)
    for sub in ("lower", "upper", "work", "merged"):
        os.mkdir(os.path.join(d, sub))
    with open(os.path.join(d, "lower", "secret"), "w") as f:
        f.write("s3cr3t\n")
    os.chmod(os.path.join(d, "lower", "secret"), 0o644)
    for sub in ("upper", "work", "merged"):
        os.chown(os.path.join(d, sub), 65534, 65534)
    yield d
    subprocess.run(["rm", "-rf", d], check=True)


OVERLAY = """
    set -u
    mount -t overlay overlay -o lowerdir={d}/lower,upperdir={d}/upper,workdir={d}/work {d}/merged || exit 9
    cat {d}/merged/secret
"""


@pytest.mark.parametrize("user", [None, "nobody"])
@pytest.mark.parametrize("mode", ["enforce", "audit"])
def test_a_protected_file_read_through_an_overlay(shared_dir, mode, user):
    """Class 1: the overlay shows the lower file under another device and
    inode; the open reaches the lower inode's mark all the same. As nobody,
    through an unprivileged user namespace (unshare -Urm)."""
    # The namespaces section would stop the unshare first: allowed, to try the mark alone.
    policy = Policy.from_dict({"version": 1, "mode": mode, "files": {"protect": [f"{shared_dir}/lower"]},
                               "namespaces": {"deny": False}})
    script = textwrap.dedent(OVERLAY.format(d=shared_dir))
    argv = ["unshare", "-Urm", "sh", "-c", script] if user else ["unshare", "-m", "sh", "-c", script]
    result = guard(policy, argv, user=user, backend="fanotify")
    lower = os.stat(f"{shared_dir}/lower/secret")
    (ev,) = opened(result.events)
    assert (ev.target_context.device, ev.target_context.inode) == (lower.st_dev, lower.st_ino)
    assert ev.workload.process.name == "cat" and ev.policy.rule == "files.protect[0]"
    if mode == "enforce":
        assert (result.exit_status, ev.action) == (1, "blocked")  # cat: Operation not permitted
    else:
        assert (result.exit_status, ev.action) == (0, "would_block")


def test_a_protected_file_read_through_a_bind_mount(secrets_dir, tmp_path):
    """Another mount of the same directory reaches the same marked inodes."""
    view = tmp_path / "view"
    view.mkdir()
    script = f"mount --bind {secrets_dir / 'secrets'} {view} && cat {view / 'id_rsa'}"
    policy = make_policy(secrets_dir)
    policy = msgspec.structs.replace(policy, namespaces=msgspec.structs.replace(policy.namespaces, deny=False))
    result = guard(policy, ["unshare", "-m", "--propagation", "private", "sh", "-c", script], backend="fanotify")
    (ev,) = opened(result.events)
    assert (result.exit_status, ev.action) == (1, "blocked")
    assert ev.target_context.inode == (secrets_dir / "secrets" / "id_rsa").stat().st_ino


@pytest.mark.parametrize("mode", ["enforce", "audit"])
def test_open_with_o_trunc_is_refused_before_it_truncates(secrets_dir, mode):
    """Class 3: a shell's `: > file` opens with O_TRUNC. The permission is
    asked before the truncation: in enforce mode the file keeps its bytes."""
    token = secrets_dir / "token"
    before = token.read_bytes()
    result = guard(make_policy(secrets_dir, mode=mode), ["sh", "-c", f"( : > {token} ); echo $?"],
                   backend="fanotify")
    (ev,) = opened(result.events)
    if mode == "enforce":
        assert token.read_bytes() == before and ev.action == "blocked"
    else:
        assert token.read_bytes() == b"" and ev.action == "would_block"
    assert ev.target_context.inode == token.stat().st_ino


@pytest.fixture(scope="module")
def int80_open(tmp_path_factory):
    exe = compiled(tmp_path_factory.mktemp("int80"), "int80_open.c", "-no-pie")
    if subprocess.run([exe, "/etc/hostname"], capture_output=True).returncode == 2:
        skip_only_without(bool(ia32_emulation(kernel_config())), "32-bit syscalls")
    return exe


@pytest.mark.parametrize("mode", ["enforce", "audit"])
def test_the_32_bit_open_syscall(secrets_dir, int80_open, mode):
    """Class 4: int 0x80 open bypasses the 64-bit syscall tracepoints, not
    the open's permission event."""
    result = guard(make_policy(secrets_dir, mode=mode), [int80_open, str(secrets_dir / "token")],
                   backend="fanotify")
    (ev,) = opened(result.events)
    # int80_open: 3 when the open failed, 0 when it read the file.
    expected = (3, "blocked") if mode == "enforce" else (0, "would_block")
    assert (result.exit_status, ev.action) == expected
    assert ev.workload.process.name == "int80_open"


@pytest.fixture(scope="module")
def uring_open(tmp_path_factory):
    exe = compiled(tmp_path_factory.mktemp("uring"), "uring_open.c")
    if subprocess.run([exe, "/etc/hostname", "fixed"], capture_output=True).returncode == 2:
        skip_only_without(io_uring_enabled(kernel_config()), "io_uring with a fixed-file table")
    return exe


def test_io_uring_open_into_the_fixed_file_table_in_audit_mode(secrets_dir, uring_open):
    """Class 4: the open leaves no descriptor to judge afterwards; it is
    judged before (refused in enforce mode: test_guard's io_uring test)."""
    result = guard(make_policy(secrets_dir, mode="audit"), [uring_open, str(secrets_dir / "token"), "fixed"],
                   backend="fanotify")
    (ev,) = opened(result.events)
    assert (result.exit_status, ev.action) == (0, "would_block")


@pytest.mark.parametrize("mode", ["enforce", "audit"])
def test_exec_of_a_protected_program(secrets_dir, mode):
    tool = secrets_dir / "secrets" / "tool"
    tool.write_bytes(open("/bin/true", "rb").read())
    tool.chmod(0o755)
    result = guard(make_policy(secrets_dir, mode=mode), py(f"""
        import os, sys
        try:
            os.execv({str(tool)!r}, ["tool"])
        except PermissionError as e:
            assert e.errno == 1, e
            sys.exit(3)
    """), backend="fanotify")
    (ev,) = opened(result.events)
    assert ev.target_context.inode == tool.stat().st_ino
    assert (result.exit_status, ev.action) == ((3, "blocked") if mode == "enforce" else (0, "would_block"))


# Opens path out of the guard's scope, waits, enters the scope (procs), then
# uses the descriptor: exit 3 when refused with EPERM.
HOLD_THEN_USE = """
    import os, sys
    fd = os.open({path!r}, {flags})
    print("opened", flush=True)
    sys.stdin.readline()
    with open({procs!r}, "w") as f:
        f.write("0")
    try:
        for _ in range({times}):
            {use}
    except PermissionError as e:
        assert e.errno == 1, e
        print("refused", flush=True)
        sys.exit(3)
    print("{done}", flush=True)
"""
READ = dict(flags="os.O_RDONLY", use="os.pread(fd, 64, 0)", times=2, done="read")
WRITE = dict(flags="os.O_WRONLY", use="os.pwrite(fd, b'overwritten', 0)", times=1, done="written")


@pytest.mark.parametrize("mode", ["enforce", "audit"])
def test_a_descriptor_opened_out_of_scope_is_judged_at_read(secrets_dir, scope_cgroup, mode):
    """A descriptor opened by a process the guard does not cover, which then
    enters the scope (a descriptor handed in, inherited or passed over a
    socket, is the same): its reads are judged (FAN_ACCESS_PERM) and reported
    once, not per read. (Descriptors opened before the guard started raise
    no read permission events on Linux 6.14+: see the README.)"""
    cgroup, _ = scope_cgroup
    with Guard(make_policy(secrets_dir, mode=mode), cgroup=cgroup, backend="fanotify") as g:
        holder = subprocess.Popen(
            py(HOLD_THEN_USE.format(path=str(secrets_dir / "token"), procs=os.path.join(cgroup, "cgroup.procs"),
                                    **READ)),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout.readline() == "opened\n"
            assert g.poll(0.2) == []  # out of scope: allowed, not reported
            out, _ = holder.communicate("go\n", timeout=10)
            got = g.poll(0.5)
        finally:
            if holder.poll() is None:
                holder.kill()
                holder.wait()
    (ev,) = opened(got)
    assert ev.pid == holder.pid and ev.target_context.inode == (secrets_dir / "token").stat().st_ino
    if mode == "enforce":
        assert (holder.returncode, out, ev.action) == (3, "refused\n", "blocked")
    else:
        assert (holder.returncode, out, ev.action) == (0, "read\n", "would_block")


def test_a_write_through_a_handed_in_descriptor_is_refused_where_pre_content_events_work(secrets_dir,
                                                                                         scope_cgroup):
    """Pre-content events come before a write too: a descriptor opened for
    writing out of scope cannot change the file once its process is guarded."""
    token = secrets_dir / "token"
    if not _pre_content_filesystem(token):
        _skip_without_pre_content(token)
    cgroup, _ = scope_cgroup
    with Guard(make_policy(secrets_dir), cgroup=cgroup, backend="fanotify") as g:
        holder = subprocess.Popen(
            py(HOLD_THEN_USE.format(path=str(token), procs=os.path.join(cgroup, "cgroup.procs"), **WRITE)),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout.readline() == "opened\n"
            out, _ = holder.communicate("go\n", timeout=10)
            got = g.poll(0.5)
        finally:
            if holder.poll() is None:
                holder.kill()
                holder.wait()
    assert (holder.returncode, out, token.read_text()) == (3, "refused\n", "s3cr3t\n")
    (ev,) = opened(got)
    assert ev.pid == holder.pid and ev.action == "blocked"


def test_directories_made_beneath_a_protected_one_while_the_guard_runs(secrets_dir, scope_cgroup):
    """A directory made (or moved in) beneath a protected one after the start
    is marked as it appears: a file written there later is protected too."""
    cgroup, run = scope_cgroup
    made = secrets_dir / "secrets" / "made" / "deeper"
    moved = secrets_dir / "elsewhere"
    (moved / "inner").mkdir(parents=True)
    (moved / "inner" / "key").write_text("k\n")
    with Guard(make_policy(secrets_dir), cgroup=cgroup, backend="fanotify") as g:
        made.mkdir(parents=True)
        os.rename(moved, secrets_dir / "secrets" / "moved")
        time.sleep(0.2)  # the marks follow the notifications
        (made / "new-key").write_text("k\n")
        statuses = [run(["cat", str(made / "new-key")]),
                    run(["cat", str(secrets_dir / "secrets" / "moved" / "inner" / "key")])]
        got = g.poll(0.5)
    assert statuses == [1, 1]
    assert [(e.action, e.policy.rule) for e in opened(got)] == [("blocked", "files.protect[1]")] * 2


def test_the_guard_itself_and_processes_out_of_scope_open_freely(secrets_dir, scope_cgroup):
    """The guard's own opens are answered by its judge (no deadlock); a
    process outside the scope is allowed and not reported."""
    cgroup, _ = scope_cgroup
    with Guard(make_policy(secrets_dir), cgroup=cgroup, backend="fanotify") as g:
        assert (secrets_dir / "token").read_text() == "s3cr3t\n"
        outside = subprocess.run(["cat", str(secrets_dir / "secrets" / "id_rsa")], capture_output=True)
        got = g.poll(0.3)
        stats = g.stats()
    assert outside.returncode == 0 and got == []
    assert stats.file_judge_asked >= 2 and stats.file_judge_denied == 0


def test_a_killed_guard_leaves_no_open_waiting(secrets_dir):
    """If the guard dies, its fanotify group goes with it: opens that waited
    for an answer and later ones are allowed (fail-open, as documented)."""
    policy = secrets_dir / "policy.yaml"
    policy.write_text(f"version: 1\nmode: enforce\nfiles:\n  protect: [{secrets_dir / 'token'}]\n")
    guard_proc = subprocess.Popen([sys.executable, "-m", "runtimeguard", "run", "--policy", str(policy), "--",
                                   "sleep", "30"], stderr=subprocess.PIPE, text=True)
    root = environment.cgroup2_mount()
    try:
        assert guard_proc.stderr.readline().startswith("runtimeguard: enforce mode")
        # Started when the command's cgroup holds the command.
        deadline = time.monotonic() + 10
        while not any(os.path.exists(os.path.join(root, c, "cgroup.procs")) and open(
                os.path.join(root, c, "cgroup.procs")).read().strip()
                for c in os.listdir(root) if c.startswith(f"runtimeguard-{guard_proc.pid}-")):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.kill(guard_proc.pid, signal.SIGKILL)
        guard_proc.wait()
        opener = subprocess.run(["cat", str(secrets_dir / "token")], capture_output=True, timeout=5)
        assert opener.returncode == 0 and opener.stdout == b"s3cr3t\n"
    finally:
        if guard_proc.poll() is None:
            guard_proc.kill()
            guard_proc.wait()
        for c in os.listdir(root):
            if c.startswith(f"runtimeguard-{guard_proc.pid}-"):
                with open(os.path.join(root, c, "cgroup.kill"), "w") as f:
                    f.write("1")
                deadline = time.monotonic() + 5
                while open(os.path.join(root, c, "cgroup.procs")).read().strip() and time.monotonic() < deadline:
                    time.sleep(0.02)
                os.rmdir(os.path.join(root, c))


def test_a_path_fanotify_cannot_judge_is_a_clear_error(tmp_path):
    """A FIFO cannot be judged by its open (the event would open it too):
    refused at start, saying what and why, nothing left running."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    policy = Policy.from_dict({"version": 1, "mode": "enforce", "files": {"protect": [str(fifo)]}})
    with pytest.raises(BPFError, match=rf"protecting {fifo}: not a regular file or a directory"):
        guard(policy, ["true"], backend="fanotify")
    assert command_cgroups(os.getpid()) == set()


TRUNCATE_BY_PATH = """
    import os, sys, time
    try:
        os.truncate({path!r}, 0)
    except PermissionError as e:
        assert e.errno == 1, e
        sys.exit(3)
    time.sleep(10)  # a changer that lives on, for the detection to find
"""


def _skip_without_pre_content(path) -> None:
    release = tuple(int(x) for x in re.findall(r"\d+", os.uname().release)[:2])
    fs = next((m.fs_type for m in environment.mounts() if m.mount_point == _mount_point(path)), "")
    skip_only_without(release >= (6, 14) and fs == "ext4",
                      f"fanotify pre-content events on {fs or 'this filesystem'}")


def _mount_point(path) -> str:
    path = os.path.realpath(path)
    while not os.path.ismount(path):
        path = os.path.dirname(path)
    return path


def _pre_content_filesystem(path) -> bool:
    """Whether fanotify pre-content events work on path's filesystem
    (Linux 6.14+: ext4 measured, not tmpfs): a guard says so by its marks."""
    policy = Policy.from_dict({"version": 1, "mode": "audit", "files": {"protect": [str(path)]},
                               "scope": {"type": "host"}})
    with Guard(policy, backend="fanotify") as g:
        return g.stats().file_judge_marks_refusing_truncate > 0


@pytest.mark.parametrize("mode", ["enforce", "audit"])
def test_truncate_by_path_is_refused_where_the_filesystem_has_pre_content_events(secrets_dir, mode):
    """Class 7: truncate(2) names the file by path and opens nothing. Where
    the filesystem takes fanotify pre-content events it is refused before
    it truncates (EPERM, reported as a prevented change); in audit mode it
    happens, and the change watch reports it."""
    token = secrets_dir / "token"
    if not _pre_content_filesystem(token):
        _skip_without_pre_content(token)
    result = guard(make_policy(secrets_dir, mode=mode), py(TRUNCATE_BY_PATH.format(path=str(token))),
                   backend="fanotify")
    changes = [e for e in result.events if e.name == "protected_file_changed" and e.data.operation == "modify"]
    assert changes and changes[0].target_context.inode == token.stat().st_ino
    if mode == "enforce":
        assert result.exit_status == 3 and token.read_text() == "s3cr3t\n"
        assert [(e.action, e.data.blocked, e.data.detected_not_prevented) for e in changes] == [
            ("blocked", True, False)]
    else:
        assert token.read_text() == ""
        assert {(e.action, e.data.detected_not_prevented) for e in changes} == {("would_block", True)}


def test_truncate_by_path_on_tmpfs_is_detected_not_prevented(tiny_tmpfs):
    """tmpfs takes no pre-content events: truncate(2) happens, and is
    reported after the fact, its process killed in enforce mode."""
    token = tiny_tmpfs / "token"
    token.write_text("s3cr3t\n")
    policy = Policy.from_dict({"version": 1, "mode": "enforce", "files": {"protect": [str(token)]}})
    g = Guard(policy, backend="fanotify")
    result = g.run(py(TRUNCATE_BY_PATH.format(path=str(token))))
    assert g.stats().file_judge_marks_refusing_truncate == 0
    assert result.exit_status == 128 + 9 and token.read_text() == ""
    (ev,) = [e for e in result.events if e.name == "protected_file_changed"]
    assert (ev.data.operation, ev.action, ev.data.detected_not_prevented) == ("modify", "killed", True)
