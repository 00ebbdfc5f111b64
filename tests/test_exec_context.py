"""The context an exec's program starts in, read in the kernel at exec:
login uid, saved and filesystem uids, capabilities, set-uid, terminal,
what descriptors 0-2 are, working directory, and the exec's own id. Each
checked against what the test set up, or against what the exec'd program
itself read from /proc/self."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap

import pytest

from runtimeguard import Tracer
from runtimeguard.processes import exec_id_of
from helpers import drain
from test_event_model import cgroup, run_in  # noqa: F401,F811 (a fixture, and the way into it)

with open("/proc/sys/kernel/random/boot_id") as _f:
    BOOT_ID = _f.read().strip()


@pytest.fixture
def workdir():
    path = os.path.realpath(tempfile.mkdtemp(prefix="rg-test-"))
    yield path
    shutil.rmtree(path)


def execs_of(events, marker: str, program: str = "cat"):
    """The done execs of program (argv[0]) whose last argument is marker."""
    return [ev for ev in events if ev.name == "process_exec" and ev.data.return_code == 0
            and ev.data.argv[-1:] == [marker] and os.path.basename(ev.data.argv[0]) == program]


def status_of(text: str) -> dict[str, str]:
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


# The child sets up its descriptors 0-2 as asked, then execs cat of its own
# /proc/self/status (so the exec'd program reports its credentials itself);
# "marker" in argv finds it.
STDIO_WAYS = textwrap.dedent("""
    import os, socket, sys
    way, marker, d = sys.argv[1], sys.argv[2], sys.argv[3]
    keep = {}
    if way == "inet":
        srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen()
        c = socket.create_connection(srv.getsockname()); keep["a"] = srv.accept()
        os.dup2(c.fileno(), 0)
    elif way == "unix":
        a, b = socket.socketpair(); keep["b"] = b
        os.dup2(a.fileno(), 0)
    elif way == "pipe":
        r, w = os.pipe(); keep["w"] = w
        os.dup2(r, 0)
    elif way == "file":
        os.dup2(os.open(os.path.join(d, "input"), os.O_RDONLY), 0)
    elif way == "directory":
        os.dup2(os.open(d, os.O_RDONLY | os.O_DIRECTORY), 0)
    elif way == "devnull":
        os.dup2(os.open("/dev/null", os.O_RDONLY), 0)
    elif way == "closed":
        os.close(0)
    os.chdir(d)
    os.execv("/bin/cat", ["cat", "/proc/self/status", marker])
""")


@pytest.mark.root
def test_an_exec_says_what_its_stdin_is(cgroup, workdir):
    open(os.path.join(workdir, "input"), "w").close()
    ways = {"inet": "inet_socket", "unix": "unix_socket", "pipe": "pipe", "file": "file",
            "directory": "directory", "devnull": "char_device", "closed": "none"}
    with Tracer(events=["process_exec"], cgroups=[cgroup]) as t:
        for way in ways:
            run_in(cgroup, [sys.executable, "-c", STDIO_WAYS, way, f"rg-stdio-{way}", workdir])
        events = drain(t)
    for way, kind in ways.items():
        (ev,) = execs_of(events, f"rg-stdio-{way}")
        # run_in captures stdout and stderr: pipes.
        assert (ev.data.stdin, ev.data.stdout, ev.data.stderr) == (kind, "pipe", "pipe"), way
        assert ev.data.cwd == workdir and not ev.data.cwd_truncated
        assert ev.data.tty is None


PTY_CHILD = textwrap.dedent("""
    import os, pty, sys
    marker, d = sys.argv[1], sys.argv[2]
    pid, fd = pty.fork()
    if pid == 0:
        os.chdir(d)
        os.execv("/bin/sh", ["sh", "-c", "tty; exit 0", marker])
    out = b""
    while True:
        try:
            chunk = os.read(fd, 1024)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    os.waitpid(pid, 0)
    print(out.decode().strip())
""")


@pytest.mark.root
def test_an_exec_on_a_terminal_names_it(cgroup, workdir):
    with Tracer(events=["process_exec"], cgroups=[cgroup]) as t:
        out = run_in(cgroup, [sys.executable, "-c", PTY_CHILD, "rg-on-a-pty", workdir], text=True)
        events = drain(t)
    tty = out.stdout.strip()  # what tty(1) printed: /dev/pts/N
    assert re.fullmatch(r"/dev/pts/\d+", tty), out
    (ev,) = execs_of(events, "rg-on-a-pty", "sh")
    assert ev.data.tty == tty.removeprefix("/dev/")
    assert (ev.data.stdin, ev.data.stdout, ev.data.stderr) == ("tty", "tty", "tty")
    assert ev.data.cwd == workdir
    assert ev.workload.process.tty == ev.data.tty and ev.workload.process.cwd == workdir


LOGIN_THEN_EXEC = textwrap.dedent("""
    import os, sys
    with open("/proc/self/loginuid", "w") as f:
        f.write(sys.argv[1])
    os.execv("/bin/cat", ["cat", "/proc/self/loginuid", sys.argv[2]])
""")


@pytest.mark.root
def test_an_exec_carries_the_login_uid(cgroup, workdir):
    with Tracer(events=["process_exec"], cgroups=[cgroup]) as t:
        out = run_in(cgroup, [sys.executable, "-c", LOGIN_THEN_EXEC, "4321", "rg-login"], text=True)
        events = drain(t)
    assert out.stdout.startswith("4321"), out
    (ev,) = execs_of(events, "rg-login")
    assert ev.data.auid == 4321
    assert ev.workload.process.auid == 4321


# The exec'd program reports what it got: its credentials from
# /proc/self/status, and AT_SECURE (type 23) from its auxiliary vector.
SELF_REPORT = textwrap.dedent("""
    import struct, sys
    status = dict(l.split(":\\t", 1) for l in open("/proc/self/status").read().splitlines() if ":\\t" in l)
    auxv = open("/proc/self/auxv", "rb").read()
    pairs = dict(struct.iter_unpack("=QQ", auxv[: len(auxv) // 16 * 16]))
    print(status["Uid"].strip(), status["CapEff"].strip(), status["CapPrm"].strip(), pairs.get(23, 0))
""")


@pytest.mark.root
@pytest.mark.parametrize("how", [
    [],                                                                      # root, every capability
    ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"],  # none
    ["setpriv", "--ruid", "65534", "--euid", "0", "--clear-groups"],        # real uid apart: a secure exec
    ["setpriv", "--bounding-set", "-all,+net_raw,+chown", "--inh-caps", "-all"],  # a few
])
def test_an_exec_carries_the_credentials_the_program_sees(cgroup, how):
    marker = f"rg-creds-{len(how)}-{abs(hash(tuple(how))) % 1000}"
    with Tracer(events=["process_exec"], cgroups=[cgroup]) as t:
        out = run_in(cgroup, how + [sys.executable, "-I", "-c", SELF_REPORT, marker], text=True)
        events = drain(t)
    assert out.returncode == 0, out
    *uids, cap_eff, cap_prm, secure = out.stdout.split()
    real, effective, saved, fs = (int(x) for x in uids)
    (ev,) = [e for e in events if e.name == "process_exec" and e.data.return_code == 0
             and e.data.argv[-1:] == [marker] and e.data.argv[0] == sys.executable]
    assert (ev.data.uid, ev.data.euid, ev.data.suid, ev.data.fsuid) == (real, effective, saved, fs)
    assert ev.data.cap_effective == int(cap_eff, 16)
    assert ev.data.cap_permitted == int(cap_prm, 16)
    assert ev.data.secureexec == bool(int(secure))
    if "--bounding-set" in how:
        assert ev.data.capability_names() == ["CAP_CHOWN", "CAP_NET_RAW"]


@pytest.mark.root
def test_a_set_user_id_exec_says_so(cgroup, workdir):
    # su is set-user-id root: run by nobody, the kernel raises it (AT_SECURE).
    su = shutil.which("su")
    assert su and os.stat(su).st_mode & 0o4000
    plain = os.path.join(workdir, "plain-su")
    shutil.copy(su, plain)  # the same program without the bit
    os.chmod(plain, 0o755)
    with Tracer(events=["process_exec"], cgroups=[cgroup]) as t:
        for binary in (su, plain):
            run_in(cgroup, ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", binary, "--version"])
        events = drain(t)
    raised = [ev for ev in events if ev.name == "process_exec" and ev.data.return_code == 0
              and ev.data.resolved_executable in (os.path.realpath(su), plain)]
    by_file = {ev.data.resolved_executable: ev for ev in raised}
    assert by_file[os.path.realpath(su)].data.secureexec
    assert by_file[os.path.realpath(su)].data.euid == 0 and by_file[os.path.realpath(su)].data.uid == 65534
    assert not by_file[plain].data.secureexec
    assert by_file[plain].data.euid == 65534


EXEC_TWICE_THEN_FORK = textwrap.dedent("""
    import os, sys
    marker, d = sys.argv[1], sys.argv[2]
    pid = os.fork()
    if pid == 0:
        open(os.path.join(d, "from-the-fork"), "w").close()
        os._exit(0)
    os.waitpid(pid, 0)
    print(pid)
    sys.stdout.flush()
    os.execv("/bin/sh", ["sh", "-c", "exec /bin/cat " + os.path.join(d, "from-the-fork") + " " + marker])
""")


@pytest.mark.root
def test_exec_ids_name_each_image_once(cgroup, workdir):
    with Tracer(events=["process_exec", "file_open"], cgroups=[cgroup]) as t:
        out = run_in(cgroup, [sys.executable, "-c", EXEC_TWICE_THEN_FORK, "rg-exec-ids", workdir], text=True)
        events = drain(t)
    forked = int(out.stdout.split()[0])
    sh, cat = (ev for ev in events if ev.name == "process_exec" and "rg-exec-ids" in " ".join(ev.data.argv)
               and ev.data.return_code == 0 and os.path.basename(ev.data.argv[0]) in ("sh", "cat"))
    # One process, two images: two ids, each the boot's id, the pid and the exec's time.
    assert sh.pid == cat.pid
    assert sh.data.exec_id != cat.data.exec_id
    for ev in (sh, cat):
        assert ev.data.exec_id == f"{BOOT_ID}:{ev.pid}:{ev.data.exec_id.rsplit(':', 1)[1]}"
    # The process's later events carry its image's id.
    opened = [ev for ev in events if ev.name == "file_open" and ev.pid == cat.pid
              and ev.data.path.endswith("from-the-fork")]
    assert opened and all(ev.workload.process.exec_id == cat.data.exec_id for ev in opened)
    # A forked child that never exec'd: an id of its own (its start), not its parent's.
    (made,) = [ev for ev in events if ev.name == "file_open" and ev.pid == forked]
    child = made.workload.process
    assert child.exec_id.startswith(f"{BOOT_ID}:{forked}:")
    assert child.exec_id not in (sh.data.exec_id, cat.data.exec_id)
    assert child.parent.pid == sh.pid


@pytest.mark.root
def test_a_process_that_predates_the_tracer_gets_an_exec_id_from_its_start(cgroup, workdir):
    marker = os.path.join(workdir, "opened-late")
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import os, sys
        os.chdir({workdir!r})
        sys.stdin.readline()
        open({marker!r}, "w").close()
        sys.stdin.readline()
    """)], stdin=subprocess.PIPE, text=True,
        preexec_fn=lambda: open(os.path.join(cgroup, "cgroup.procs"), "w").write("0"))
    try:
        with Tracer(events=["file_open"], cgroups=[cgroup]) as t:
            child.stdin.write("open\n")
            child.stdin.flush()
            events = []
            while not any(e.data.path == marker for e in events):
                got = t.poll(5)
                assert got, "the child's open was not seen"
                events += got
            (ev,) = [e for e in events if e.data.path == marker]
            process = ev.workload.process  # read while the child lives: from /proc
            with open(f"/proc/{child.pid}/stat") as f:
                start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
    finally:
        child.stdin.close()
        child.wait(timeout=10)
    ticks_ns = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
    assert process.exec_id == exec_id_of(child.pid, start_ticks * ticks_ns)
    assert process.exec_id.startswith(f"{BOOT_ID}:{child.pid}:")
    assert process.cwd == workdir


@pytest.mark.root
def test_a_process_carries_its_executables_digest(cgroup, workdir):
    import hashlib
    import time

    # A shell of its own (a copy, made unique), so its digest is computed
    # here: it opens one file, waits, then opens another.
    shell = os.path.join(workdir, "rg-sh")
    shutil.copy("/bin/dash" if os.path.exists("/bin/dash") else "/bin/sh", shell)
    with open(shell, "ab") as f:
        f.write(os.urandom(16))
    for name in ("first", "second"):
        with open(os.path.join(workdir, name), "w") as f:
            f.write("x\n")
    with open(shell, "rb") as f:
        expected = hashlib.sha256(f.read()).hexdigest()
    readelf = subprocess.run(["readelf", "-n", shell], capture_output=True, text=True).stdout
    build_id = re.search(r"Build ID: ([0-9a-f]+)", readelf).group(1)
    script = f"read x < {workdir}/first; sleep 1; read y < {workdir}/second"
    with Tracer(events=["file_open"], cgroups=[cgroup]) as t:
        child = subprocess.Popen([shell, "-c", script],
                                 preexec_fn=lambda: open(os.path.join(cgroup, "cgroup.procs"), "w").write("0"))
        try:
            events = []
            deadline = time.monotonic() + 15
            while not [e for e in events if e.data.path.endswith("/second")] and time.monotonic() < deadline:
                for ev in t.poll(0.2):
                    events.append(ev)
                    ev.workload  # read as it comes: the first read asks for the digest
        finally:
            child.wait(timeout=10)
    (first,) = [e for e in events if e.data.path.endswith("/first")]
    (second,) = [e for e in events if e.data.path.endswith("/second")]
    assert first.workload.process.executable == second.workload.process.executable == shell
    # Computed off the event path: not there when the first open was read,
    # there for the open a second later.
    assert first.workload.process.executable_digest is None
    digest = second.workload.process.executable_digest
    assert digest is not None and digest.sha256 == expected and digest.build_id == build_id
    assert digest.size == os.path.getsize(shell) and digest.error is None


def test_a_terminal_read_from_proc_is_named_as_the_exec_event_names_it():
    # /proc/<pid>/stat's tty_nr is the kernel's new_encode_dev() of the
    # terminal: checked against a real pty's device and its name.
    import pty

    from runtimeguard.processes import _tty_name

    master, slave = pty.openpty()
    try:
        rdev = os.fstat(slave).st_rdev
        major, minor = os.major(rdev), os.minor(rdev)
        tty_nr = (minor & 0xFF) | (major << 8) | ((minor & ~0xFF) << 12)
        assert _tty_name(tty_nr) == os.ttyname(slave).removeprefix("/dev/")
    finally:
        os.close(master)
        os.close(slave)
    assert _tty_name(0) is None
