"""The files that execs and opens really reach, resolved in the kernel from
the file itself, whatever name the caller passed: checked against what the
test made and stat()ed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time

import pytest

from runtimeguard import Tracer
from runtimeguard._native import lib
from helpers import drain
from test_event_model import cgroup, run_in  # noqa: F401 (a fixture, and the way into it)

pytestmark = pytest.mark.root


@pytest.fixture
def workdir():
    path = os.path.realpath(tempfile.mkdtemp(prefix="rg-test-"))
    yield path
    shutil.rmtree(path)


EXECVEAT = {"x86_64": 322, "aarch64": 281}[os.uname().machine]

# Each way of naming an executable: the child execs a copy of true, its
# argv[0] saying which way it was named.
EXEC_WAYS = textwrap.dedent(f"""
    import ctypes, os, sys
    way, d = sys.argv[1], sys.argv[2]
    true = os.path.join(d, "true")
    if way == "relative":
        os.chdir(d)
        os.execv("./true", ["relative"])
    if way == "symlink":
        os.execv(os.path.join(d, "link"), ["symlink"])
    if way == "fexecve":
        os.execve(os.open(true, os.O_RDONLY), ["fexecve"], {{}})
    if way == "execveat":
        libc = ctypes.CDLL(None, use_errno=True)
        argv = (ctypes.c_char_p * 2)(b"execveat", None)
        envp = (ctypes.c_char_p * 1)(None)
        dirfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        libc.syscall({EXECVEAT}, dirfd, b"true", argv, envp, 0)
        sys.exit("execveat: " + os.strerror(ctypes.get_errno()))
    if way == "memfd":
        fd = os.memfd_create("rg-fileless")
        os.write(fd, open(true, "rb").read())
        os.execve(fd, ["memfd"], {{}})
    if way == "deleted":
        gone = os.path.join(d, "gone")
        fd = os.open(gone, os.O_RDONLY)
        os.unlink(gone)
        os.execve(fd, ["deleted"], {{}})
""")


def test_an_exec_reports_the_file_it_ran_whatever_its_name(cgroup, workdir):
    true = os.path.join(workdir, "true")
    shutil.copy("/usr/bin/true", true)
    shutil.copy("/usr/bin/true", os.path.join(workdir, "gone"))
    os.symlink(true, os.path.join(workdir, "link"))
    st, gone_st = os.stat(true), os.stat(os.path.join(workdir, "gone"))
    ways = ["relative", "symlink", "fexecve", "execveat", "memfd", "deleted"]
    with Tracer(events=["process_exec"], cgroups=[cgroup]) as t:
        for way in ways:
            out = run_in(cgroup, [sys.executable, "-c", EXEC_WAYS, way, workdir], text=True)
            assert out.returncode == 0, (way, out.stderr)
        events = drain(t)
    execs = {ev.data.argv[0]: ev for ev in events if ev.name == "process_exec" and ev.data.argv[0] in ways}
    assert set(execs) == set(ways)
    # As passed, beside what it was.
    assert execs["relative"].data.executable == "./true"
    assert execs["symlink"].data.executable == os.path.join(workdir, "link")
    assert execs["fexecve"].data.executable == "/dev/fd/3"
    assert execs["execveat"].data.executable.endswith("/true") and execs["execveat"].data.executable.startswith("/dev/fd/")
    for way in ("relative", "symlink", "fexecve", "execveat"):
        d = execs[way].data
        assert (d.resolved_executable, d.executable_device, d.executable_inode, d.fileless) == (
            true, st.st_dev, st.st_ino, False), way
        assert execs[way].workload.process.executable == true
        assert execs[way].record().workload.process.executable == true
    memfd = execs["memfd"].data
    assert memfd.executable.startswith("/dev/fd/")
    assert memfd.resolved_executable == "/memfd:rg-fileless" and memfd.fileless
    deleted = execs["deleted"].data
    assert (deleted.resolved_executable, deleted.executable_inode, deleted.fileless) == (
        os.path.join(workdir, "gone"), gone_st.st_ino, True)
    assert execs["deleted"].workload.process.executable == os.path.join(workdir, "gone")


def test_a_script_resolves_to_the_interpreter_that_ran_it(cgroup, workdir):
    # As /proc/<pid>/exe says: the kernel runs the interpreter; the script is in argv.
    script = os.path.join(workdir, "script")
    with open(script, "w") as f:
        f.write("#!/bin/sh\ntrue\n")
    os.chmod(script, 0o755)
    with Tracer(events=["process_exec"], cgroups=[cgroup]) as t:
        assert run_in(cgroup, [script]).returncode == 0
        events = drain(t)
    d = next(ev.data for ev in events if ev.name == "process_exec" and ev.data.executable == script)
    interpreter = os.path.realpath("/bin/sh")
    assert (d.resolved_executable, d.executable_inode) == (interpreter, os.stat(interpreter).st_ino)
    assert d.argv[-1] == script


def test_a_failed_exec_resolves_nothing(cgroup, workdir):
    missing = os.path.join(workdir, "missing")
    with Tracer(events=["process_exec"], cgroups=[cgroup]) as t:
        run_in(cgroup, [sys.executable, "-c", f"import os\ntry:\n    os.execv({missing!r}, ['x'])\nexcept OSError:\n    pass"])
        events = drain(t)
    failed = next(ev.data for ev in events if ev.name == "process_exec" and ev.data.executable == missing)
    assert failed.return_code == -2
    assert (failed.resolved_executable, failed.executable_inode, failed.fileless) == (None, None, False)


def test_processes_that_predate_the_tracer_name_their_file_the_same_way(workdir):
    # Read from /proc: the symlink resolved, and a deleted file by the name it had.
    true = os.path.join(workdir, "sleep")
    shutil.copy("/usr/bin/sleep", true)
    os.symlink(true, os.path.join(workdir, "link"))
    gone = os.path.join(workdir, "gone")
    shutil.copy("/usr/bin/sleep", gone)
    linked = subprocess.Popen([os.path.join(workdir, "link"), "30"])
    deleted = subprocess.Popen([gone, "30"])
    try:
        time.sleep(0.1)
        os.unlink(gone)
        t = Tracer(events=["process_exec"])
        try:
            t.start()
            assert t.process(linked.pid).executable == true
            assert t.process(deleted.pid).executable == gone
        finally:
            t.close()
    finally:
        for p in (linked, deleted):
            p.kill()
            p.wait()


OPEN_WAYS = textwrap.dedent("""
    import os, sys
    d = sys.argv[1]
    dirfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    os.close(os.open("rel", os.O_RDONLY, dir_fd=dirfd))
    os.close(os.open(os.path.join(d, "link"), os.O_RDONLY))
    fd = os.open(os.path.join(d, "rel"), os.O_RDONLY)
    os.close(os.open(f"/proc/self/fd/{fd}", os.O_RDONLY))
    mnt = os.open(os.path.join(d, "mnt"), os.O_RDONLY | os.O_DIRECTORY)
    os.close(os.open("inside", os.O_RDONLY, dir_fd=mnt))
    try:
        os.open("absent", os.O_RDONLY, dir_fd=dirfd)
    except FileNotFoundError:
        pass
""")


def test_an_open_reports_the_file_it_opened_whatever_its_name(cgroup, workdir):
    rel = os.path.join(workdir, "rel")
    with open(rel, "w"):
        pass
    os.symlink(rel, os.path.join(workdir, "link"))
    mnt = os.path.join(workdir, "mnt")
    os.mkdir(mnt)
    # A mount of its own: the walk goes up through the mount point.
    subprocess.run(["mount", "-t", "tmpfs", "rg-test", mnt], check=True)
    try:
        inside = os.path.join(mnt, "inside")
        with open(inside, "w"):
            pass
        rel_st, inside_st = os.stat(rel), os.stat(inside)
        with Tracer(events=["file_open"], cgroups=[cgroup]) as t:
            out = run_in(cgroup, [sys.executable, "-c", OPEN_WAYS, workdir], text=True)
            assert out.returncode == 0, out.stderr
            events = drain(t)
    finally:
        subprocess.run(["umount", mnt], check=True)
    opens = {ev.data.path: ev.data for ev in events if ev.name == "file_open"}
    for passed in ("rel", os.path.join(workdir, "link"), rel):
        d = opens[passed]
        assert (d.resolved_path, d.device, d.inode, d.resolved_path_truncated) == (
            rel, rel_st.st_dev, rel_st.st_ino, False), passed
    proc = next(d for p, d in opens.items() if p.startswith("/proc/self/fd/"))
    assert (proc.resolved_path, proc.inode) == (rel, rel_st.st_ino)
    assert (opens["inside"].resolved_path, opens["inside"].inode) == (inside, inside_st.st_ino)
    assert opens["inside"].device == inside_st.st_dev != rel_st.st_dev
    assert opens["absent"].result == -2 and opens["absent"].resolved_path is None


def test_resolved_paths_past_the_limits_keep_their_end(cgroup, workdir):
    # Longer than the path limit, and deeper than the walk goes: each is cut
    # at its start and says so; what is kept is the path's true end.
    long_dir = os.path.join(workdir, *["l" * 100] * 3)
    deep_dir = os.path.join(workdir, *["d"] * (lib.RG_PATH_DEPTH + 5))
    files = []
    for d in (long_dir, deep_dir):
        os.makedirs(d)
        files.append(os.path.join(d, "f"))
        with open(files[-1], "w"):
            pass
    script = "import sys\nfor p in sys.argv[1:]:\n    open(p).close()"
    with Tracer(events=["file_open"], cgroups=[cgroup]) as t:
        out = run_in(cgroup, [sys.executable, "-c", script, *files], text=True)
        assert out.returncode == 0, out.stderr
        events = drain(t)
    opens = {ev.data.inode: ev.data for ev in events if ev.name == "file_open"}
    long, deep = (opens[os.stat(f).st_ino] for f in files)
    assert len(files[0]) > lib.RG_PATH_LEN - 1
    assert long.resolved_path_truncated and files[0].endswith(long.resolved_path)
    assert len(long.resolved_path) > lib.RG_PATH_LEN - 1 - 101  # all but the name that did not fit
    assert len(files[1]) < lib.RG_PATH_LEN - 1
    assert deep.resolved_path_truncated and files[1].endswith(deep.resolved_path)
    assert deep.resolved_path.count("/") == lib.RG_PATH_DEPTH
    # Within both limits: whole.
    shallow = os.path.join(workdir, *["d"] * (lib.RG_PATH_DEPTH - workdir.count("/") - 1), "f")
    assert shallow.count("/") == lib.RG_PATH_DEPTH
    with open(shallow, "w"):
        pass
    with Tracer(events=["file_open"], cgroups=[cgroup]) as t:
        run_in(cgroup, [sys.executable, "-c", script, shallow])
        events = drain(t)
    whole = next(ev.data for ev in events if ev.name == "file_open" and ev.data.path == shallow)
    assert (whole.resolved_path, whole.resolved_path_truncated) == (shallow, False)
