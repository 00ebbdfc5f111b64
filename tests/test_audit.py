"""The audit log and the notification tracker, on real files and real
filesystems: concurrent processes, rotation, SIGTERM and SIGKILL mid-stream,
a full tmpfs and an ext4 that the kernel turned read-only."""

from __future__ import annotations

import contextlib
import dis
import errno
import itertools
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import fill_until_full, mount, unmount
from runtimeguard import audit
from runtimeguard.audit import (
    AuditLogError,
    AuditLogger,
    AuditLogReader,
    NotificationTracker,
    audit_log_files,
    install_sigterm_flush,
    read_audit_log,
)
from runtimeguard.errors import RuntimeGuardError
from runtimeguard.schema import (
    ConnectDeniedData,
    EventRecord,
    LostData,
    ModeChangedData,
    NetConnectData,
    OpenInodeData,
    PolicyRef,
    Process,
    ProcessExecData,
    ProcessRef,
    ProtectedFileChangedData,
    TargetContext,
    Workload,
)

# Fork: children start in milliseconds and share make_event with the test.

CURL = Process(pid=4321, entity_id=99, name="curl", executable="/usr/bin/curl",
               argv=["curl", "http://127.0.0.1/"], uid=1000, ppid=4000,
               parent=ProcessRef(pid=4000, entity_id=98, name="bash"))
WORKLOAD = Workload(process=CURL, cgroup="/runtimeguard/run-1")


def make_event(writer: int, seq: int, pad: int = 0) -> EventRecord:
    """Events of several kinds; pid says who wrote it, seq its order, pad makes it long."""
    kind = seq % 4
    if pad or kind == 3:
        return EventRecord(timestamp=1_700_000_000_000_000_000 + seq, id=1, name="process_exec", pid=writer, seq=seq,
                     data=ProcessExecData(executable="/bin/sh", argv=["sh", "-c", "x" * pad], comm="sh", uid=0,
                                          euid=0, gid=0, ppid=1, parent_entity_id=1, start_time=seq, return_code=0))
    if kind == 0:
        return EventRecord(timestamp=1_700_000_000_000_000_000 + seq, id=5, name="net_connect", pid=writer, seq=seq,
                     data=NetConnectData(family="ipv4", protocol="tcp", address="127.0.0.1", port=80, result=0, fd=3),
                     target_context=TargetContext(type="ipv4", formatted="127.0.0.1:80", address="127.0.0.1", port=80))
    if kind == 1:
        return EventRecord(timestamp=1_700_000_000_000_000_000 + seq, id=10, name="connect_denied", pid=writer, seq=seq,
                     workload=WORKLOAD, action="blocked", policy=PolicyRef(rule="deny-loopback", mode="enforce"),
                     data=ConnectDeniedData(rule_index=0, blocked=True, would_deny=False, comm="curl",
                                            family="ipv6", protocol="tcp"),
                     target_context=TargetContext(type="ipv6", formatted="[::1]:443", address="::1", port=443))
    return EventRecord(timestamp=1_700_000_000_000_000_000 + seq, id=12, name="open_inode", pid=writer, seq=seq,
                 workload=WORKLOAD, action="would_block", policy=PolicyRef(rule="secrets", mode="audit"),
                 data=OpenInodeData(rule_index=1, blocked=False, would_deny=True, comm="cat", device=2049,
                                    inode=1234),
                 target_context=TargetContext(type="inode", formatted="/etc/shadow (inode 1234 on 8:1)",
                                              device=2049, inode=1234, path="/etc/shadow"))


def read_all(path) -> tuple[list[EventRecord], int]:
    """Every event of a log and its backups, oldest first, and the torn lines seen."""
    events, torn = [], 0
    for name in audit_log_files(path):
        reader = AuditLogReader(name)
        events += reader.events()
        torn += reader.torn_lines
    return events, torn


def assert_exactly_once(events: list[EventRecord], counts: dict[int, int]) -> None:
    """Each writer's seqs 0..n-1 all there, once each, in the order written."""
    by_writer: dict[int, list[int]] = {}
    for event in events:
        by_writer.setdefault(event.pid, []).append(event.seq)
    assert {w: len(s) for w, s in by_writer.items()} == counts
    for writer, seqs in by_writer.items():
        assert seqs == list(range(counts[writer])), f"writer {writer} out of order or duplicated"


def run_writer(path: str, writer: int, count: int, many: bool, **logger_args) -> None:
    with AuditLogger(path, **logger_args) as log:
        if many:
            for start in range(0, count, 50):
                log.write_many(make_event(writer, s, pad=6000 if s % 97 == 0 else 0)
                               for s in range(start, min(start + 50, count)))
        else:
            for seq in range(count):
                log.write(make_event(writer, seq, pad=6000 if seq % 97 == 0 else 0))


def join_all(procs) -> None:
    for p in procs:
        p.join(30)
        assert p.exitcode == 0, f"writer {p.pid} exited with {p.exitcode}"


# ---- writing and reading back ----

def test_every_line_decodes_back_to_an_equal_event(tmp_path):
    path = tmp_path / "audit.ndjson"
    events = [make_event(7, seq) for seq in range(12)] + [make_event(7, 12, pad=10_000)]
    with AuditLogger(path) as log:
        for event in events[:5]:
            assert log.write(event) is True
        assert log.write_many(events[5:]) == len(events) - 5
        assert log.lines_written == len(events)
        assert log.bytes_written == os.path.getsize(path)
    assert os.stat(path).st_mode & 0o777 == 0o600
    reader = AuditLogReader(path)
    assert list(reader.events()) == events
    assert reader.torn_lines == 0 and reader.lines_read == len(events)
    assert {e.name for e in events} == {"net_connect", "connect_denied", "open_inode", "process_exec"}
    # Exactly one line per event, each ending in a newline.
    assert path.read_bytes().count(b"\n") == len(events)


def test_protected_file_changed_lines_say_whether_the_change_was_prevented(tmp_path):
    # fanotify (the guard in Python) leaves detected_not_prevented at its
    # default, true, and the line leaves it out; a change refused by the LSM
    # hooks carries false, written out. Read back, each must say what it said.
    def changed(action, **prevented):
        return EventRecord(timestamp=1_700_000_000_000_000_000, id=16, name="protected_file_changed", pid=77, tid=77,
                     action=action, data=ProtectedFileChangedData(
                         rule_index=0, blocked=action == "blocked", would_deny=False, comm="rm",
                         operation="delete", device=2049, inode=1234, **prevented))

    path = tmp_path / "audit.ndjson"
    with AuditLogger(path) as log:
        log.write(changed("killed"))
        log.write_many([changed("blocked", detected_not_prevented=False)])
    head = ('{"timestamp":1700000000000000000,"id":16,"name":"protected_file_changed","data":'
            '{"type":"protected_file_changed","rule_index":0,"blocked":%s,"would_deny":false,"comm":"rm",'
            '"operation":"delete","device":2049,"inode":1234%s},"pid":77,"tid":77,"action":"%s"}\n')
    assert path.read_text() == (head % ("false", "", "killed")
                                + head % ("true", ',"detected_not_prevented":false', "blocked"))
    assert [e.data.detected_not_prevented for e in read_audit_log(path)] == [True, False]


def test_write_many_sends_whole_lines_in_batches(tmp_path):
    # A batch never passes max_bytes, so rotation still applies between lines.
    path = tmp_path / "audit.ndjson"
    with AuditLogger(path, max_bytes=3000, backups=100) as log:
        assert log.write_many(make_event(1, s) for s in range(200)) == 200
    events, torn = read_all(path)
    assert torn == 0
    assert_exactly_once(events, {1: 200})
    assert all(os.path.getsize(p) <= 3000 for p in audit_log_files(path))


def test_write_many_keeps_the_events_before_a_failing_iterable(tmp_path):
    path = tmp_path / "audit.ndjson"

    def events():
        yield make_event(1, 0)
        yield make_event(1, 1)
        raise RuntimeError("source failed")

    with AuditLogger(path) as log:
        with pytest.raises(RuntimeError):
            log.write_many(events())
        with pytest.raises(TypeError):
            log.write_many([make_event(1, 2), object()])
    assert [e.seq for e in read_audit_log(path)] == [0, 1, 2]


def test_close_is_idempotent_and_writing_after_it_is_an_error(tmp_path):
    log = AuditLogger(tmp_path / "audit.ndjson")
    log.write(make_event(1, 0))
    log.close()
    log.close()
    assert log.closed
    with pytest.raises(AuditLogError, match="closed"):
        log.write(make_event(1, 1))
    assert issubclass(AuditLogError, RuntimeGuardError)
    with pytest.raises(ValueError):
        AuditLogger(tmp_path / "x", on_error="ignore")


def test_open_failure_names_the_path(tmp_path):
    with pytest.raises(AuditLogError, match="No such file or directory") as info:
        AuditLogger(tmp_path / "missing" / "audit.ndjson")
    assert str(tmp_path / "missing") in str(info.value)
    assert info.value.errno == errno.ENOENT


def test_close_from_a_signal_handler_during_writes(tmp_path):
    # SIGALRM every 50 us closes the logger from the handler, usually in the
    # middle of a write(): that write still finishes, and exactly the writes
    # that returned True are in the file.
    path = tmp_path / "audit.ndjson"
    log = AuditLogger(path)
    alarms = 0

    def on_alarm(signum, frame):
        nonlocal alarms
        alarms += 1
        if alarms == 200:
            log.close()

    previous = signal.signal(signal.SIGALRM, on_alarm)
    accepted = 0
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.00005, 0.00005)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if log.write(make_event(1, accepted)):
                    accepted += 1
            except AuditLogError:
                break
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0, 0)
        signal.signal(signal.SIGALRM, previous)
    assert log.closed
    events = list(read_audit_log(path))
    assert len(events) == accepted > 0
    assert [e.seq for e in events] == list(range(accepted))


# ---- concurrency ----

def test_concurrent_processes_and_threads_never_interleave(tmp_path, fork):
    path = str(tmp_path / "audit.ndjson")
    # Four processes (two line by line, two in batches), and four threads of
    # this process sharing one logger, all appending at once. Every 97th
    # event is over 6 KiB so lines cross page boundaries.
    procs = [fork(run_writer, path, w, 2000, w % 2 == 1) for w in range(4)]
    shared = AuditLogger(path)

    def thread_writer(writer: int) -> None:
        for seq in range(500):
            shared.write(make_event(writer, seq, pad=6000 if seq % 97 == 0 else 0))

    threads = [threading.Thread(target=thread_writer, args=(100 + t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    shared.close()
    join_all(procs)

    reader = AuditLogReader(path)
    events = list(reader.events())
    assert reader.torn_lines == 0
    assert len(events) == 4 * 2000 + 4 * 500
    assert_exactly_once(events, {**{w: 2000 for w in range(4)}, **{100 + t: 500 for t in range(4)}})


# ---- rotation ----

def test_rotation_under_concurrent_writers_loses_no_line(tmp_path, fork):
    path = str(tmp_path / "audit.ndjson")
    max_bytes = 4096
    procs = [fork(run_writer, path, w, 1200, w == 1, max_bytes=max_bytes, backups=400) for w in range(2)]
    join_all(procs)

    files = audit_log_files(path)
    assert len(files) > 20, "rotation did not happen"
    assert not os.path.exists(f"{path}.401")
    events, torn = read_all(path)
    assert torn == 0
    assert_exactly_once(events, {0: 1200, 1: 1200})
    def size(e):
        return len(audit.json_encoder.encode(e)) + 1

    # Writer 1 appends 50 lines a write, writer 0 one line a write.
    batches = [sum(size(make_event(1, s, pad=6000 if s % 97 == 0 else 0)) for s in range(start, min(start + 50, 1200)))
               for start in range(0, 1200, 50)]
    largest_append = max(max(batches), max(size(e) for e in events))
    for name in files:
        # Each writer checks the size, then appends: a file is over max_bytes
        # only by what the other writer appended between the two, or by a
        # single append bigger than the limit.
        assert os.path.getsize(name) <= max_bytes + largest_append, name


def test_rotation_drops_backups_beyond_the_limit(tmp_path):
    path = str(tmp_path / "audit.ndjson")
    with AuditLogger(path, max_bytes=2000, backups=3) as log:
        for seq in range(200):
            log.write(make_event(1, seq))
    assert audit_log_files(path) == [f"{path}.3", f"{path}.2", f"{path}.1", path]
    assert not os.path.exists(f"{path}.4")
    events, torn = read_all(path)
    assert torn == 0
    # What is left is the newest lines, contiguous, ending with the last one.
    seqs = [e.seq for e in events]
    assert seqs == list(range(200 - len(seqs), 200))
    assert all(os.path.getsize(p) <= 2000 for p in audit_log_files(path))


def test_rotation_without_backups_starts_over(tmp_path):
    path = str(tmp_path / "audit.ndjson")
    with AuditLogger(path, max_bytes=2000, backups=0) as log:
        for seq in range(50):
            log.write(make_event(1, seq))
    assert audit_log_files(path) == [path]
    seqs = [e.seq for e in read_audit_log(path)]
    assert seqs[-1] == 49 and seqs == list(range(seqs[0], 50))


def test_a_line_bigger_than_max_bytes_gets_a_file_of_its_own(tmp_path):
    path = str(tmp_path / "audit.ndjson")
    with AuditLogger(path, max_bytes=1000, backups=5) as log:
        log.write(make_event(1, 0))
        log.write(make_event(1, 1, pad=5000))
        log.write(make_event(1, 2))
    events, torn = read_all(path)
    assert [e.seq for e in events] == [0, 1, 2] and torn == 0
    assert len(audit_log_files(path)) == 3


# ---- SIGTERM and SIGKILL mid-stream ----

def _write_until_signalled(path: str, report_fd: int, install_helper: bool) -> None:
    log = AuditLogger(path, max_bytes=64 * 1024, backups=1000)
    accepted = 0

    def report() -> None:
        os.write(report_fd, f"{accepted} {int(log.closed)}\n".encode())

    if install_helper:
        install_sigterm_flush(log)
        try:
            while True:
                log.write(make_event(1, accepted))
                accepted += 1
        finally:
            report()
    else:
        def on_sigterm(signum, frame):
            log.close()
            report()
            os._exit(0)

        signal.signal(signal.SIGTERM, on_sigterm)
        while True:
            log.write(make_event(1, accepted))
            accepted += 1


def _wait_for_lines(path: str, size: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        total = 0
        for name in audit_log_files(path):
            try:
                total += os.path.getsize(name)
            except FileNotFoundError:
                pass  # rotated away between listing and stat
        if total > size:
            return
        time.sleep(0.01)
    raise AssertionError("the writer wrote too little")




@pytest.mark.parametrize("install_helper", [False, True], ids=["own-handler", "install_sigterm_flush"])
def test_sigterm_mid_stream_loses_nothing_accepted(tmp_path, install_helper, fork):
    path = str(tmp_path / "audit.ndjson")
    read_fd, write_fd = os.pipe()
    try:
        proc = fork(_write_until_signalled, path, write_fd, install_helper)
        _wait_for_lines(path, 200 * 1024)  # a few rotations in
        os.kill(proc.pid, signal.SIGTERM)
        proc.join(10)
        os.close(write_fd)
        write_fd = -1
        with os.fdopen(read_fd) as pipe:
            read_fd = -1
            accepted, closed = map(int, pipe.read().split())
    finally:
        for fd in (read_fd, write_fd):
            if fd >= 0:
                os.close(fd)
    assert proc.exitcode == (128 + signal.SIGTERM if install_helper else 0)
    if install_helper:
        # The handler found write() under way: the SystemExit came out of it
        # once it had finished and closed the logger.
        assert closed == 1
    # (A handler that interrupted write() itself only asked for the close; it
    # happens when that write() is done, or not at all if the handler exits
    # with os._exit: either way there is nothing left to flush.)
    events, torn = read_all(path)
    assert torn == 0
    # Every accepted write is there; at most one more, whose write() was
    # interrupted after its os.write.
    assert accepted <= len(events) <= accepted + 1
    assert [e.seq for e in events] == list(range(len(events)))


# A signal at every point of a call, deterministically: sys.settrace with
# per-opcode events raises the signal just before the n-th bytecode the audit
# module runs, and Python runs the handler right there (after the raise_signal
# call in the trace function); an exception from it is raised at that
# bytecode. every=True: before any bytecode at all, stricter than CPython,
# which looks for signals only at some; every=False: only where CPython 3.11+
# looks (a function's entry, after a call or during one, a backward jump).

def _check_points(code) -> frozenset:
    """The offsets in code before which CPython 3.11+ may run a signal handler."""
    points = set()
    ins = list(dis.get_instructions(code))
    for prev, cur in zip(ins, ins[1:]):
        if prev.opname == "RESUME" or prev.opname.startswith(("CALL", "PRECALL")):
            points.add(cur.offset)
        if cur.opname.startswith(("CALL", "PRECALL")):
            points.add(cur.offset)  # in the call: an EINTR retry, then the call raises
        if prev.opname.startswith("JUMP_BACKWARD"):
            points.add(prev.argval)
    return frozenset(points)


@contextlib.contextmanager
def _signal_at(n: int, every: bool, signum: int = signal.SIGTERM):
    """Raise signum at the n-th point of the audit module's code run in the
    block; yields a list that says where, once it has been raised."""
    fired: list[tuple[str, int]] = []
    left = n
    points: dict = {}

    def local(frame, event, arg):
        nonlocal left
        if event != "opcode" or fired:
            return local
        code = frame.f_code
        if not every:
            if code not in points:
                points[code] = _check_points(code)
            if frame.f_lasti not in points[code]:
                return local
        if left == 0:
            fired.append((code.co_name, frame.f_lineno))
            signal.raise_signal(signum)
        left -= 1
        return local

    def tracer(frame, event, arg):
        if fired or frame.f_code.co_filename != audit.__file__ or frame.f_code is AuditLogger.__del__.__code__:
            return None  # not a finalizer of an earlier logger that the collector happened to run
        frame.f_trace_opcodes = True
        return local

    previous = sys.gettrace()
    sys.settrace(tracer)
    try:
        yield fired
    finally:
        sys.settrace(previous)


def _fds_under(directory) -> list[str]:
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(directory)):
            found.append(target)
    return found


def _sigterm_at_every_point(tmp_path, logger_args: dict, before, call, check, every: bool = True,
                            handler=install_sigterm_flush, template=None) -> int:
    """For each point n of call(log) in turn, until one that the call does not
    reach: a new logger in its own directory (a copy of template, if any),
    before(log), then call(log) with SIGTERM at point n, caught; then
    check(log, path, where). The points."""
    for n in itertools.count():
        directory = tmp_path / str(n)
        if template is not None:
            shutil.copytree(template, directory)
        else:
            directory.mkdir()
        path = str(directory / "audit.ndjson")
        log = AuditLogger(path, **logger_args)
        previous = signal.getsignal(signal.SIGTERM)
        try:
            before(log)
            handler(log)
            try:
                with _signal_at(n, every) as fired:
                    call(log)
            except SystemExit as exc:
                assert fired and exc.code == 128 + signal.SIGTERM, fired
            else:
                assert not fired, f"SIGTERM at {fired[0]} did not end the call"
                log.close()
                return n
        finally:
            signal.signal(signal.SIGTERM, previous)
        assert log.closed, f"SIGTERM at {fired[0]} left the logger open"
        assert not _fds_under(directory), f"SIGTERM at {fired[0]} left descriptors open"
        check(log, path, fired[0])
        shutil.rmtree(directory)
    raise AssertionError("unreachable")


@pytest.mark.parametrize("rotate", [False, True], ids=["plain", "rotating-compressing"])
def test_sigterm_at_any_point_of_a_write_closes_the_logger_and_loses_nothing(tmp_path, rotate):
    # The handler of install_sigterm_flush at every bytecode of a write: the
    # logger ends closed, with every accepted line and at most the interrupted one.
    args = dict(max_bytes=2000, backups=10, compress=True) if rotate else {}
    accepted, pad = (4, 600) if rotate else (2, 0)
    template = tmp_path / "template"
    template.mkdir()
    with AuditLogger(template / "audit.ndjson", max_bytes=2000, backups=10) as log:
        for seq in range(accepted):  # rotating: PATH.1 and PATH full, so the next write rotates and compresses
            assert log.write(make_event(1, seq, pad=pad))

    def check(log, path, where):
        events, torn = read_all(path)
        assert torn == 0, where
        assert [e.seq for e in events] in (list(range(accepted)), list(range(accepted + 1))), where
        if rotate and len(events) > accepted:
            assert os.path.exists(path + ".2.gz"), where

    points = _sigterm_at_every_point(tmp_path, args, lambda log: None,
                                     lambda log: log.write(make_event(1, accepted, pad=pad)), check,
                                     template=template)
    assert points > (500 if rotate else 100)  # the sweep did run through the write


def test_sigterm_at_any_point_of_a_coalescing_write_keeps_every_count(tmp_path):
    # The write takes the count of earlier repeats out of the coalescer to write
    # it with its own event: a SIGTERM that cut it short lost that count.
    clock = FakeClock()
    repeats = 5

    def before(log):
        clock.now = 1000.0
        for seq in range(1 + repeats):
            assert log.write(decision(seq=seq))
        assert log.repeats_pending == repeats
        clock.now += 2.0  # the interval is over: the next write carries the count

    def check(log, path, where):
        events = list(read_audit_log(path))
        denied = [e for e in events if e.name == "connect_denied"]
        assert len(denied) + sum(e.repeated for e in denied) == 1 + repeats, where
        assert len(events) - len(denied) <= 1  # the interrupted write's own event, or not

    args = dict(coalesce_s=1.0, clock=clock, keep_first=10)
    points = _sigterm_at_every_point(tmp_path, args, before, lambda log: log.write(make_event(1, 3)), check)
    assert points > 100


def test_sigterm_at_any_point_of_close_lets_it_finish(tmp_path):
    # A SIGTERM in the middle of close() (here: while it writes the pending
    # counts) started a second close inside it, which closed the file under the
    # first one: the counts it had in hand were lost, or went to the file
    # reopened after the close, whose descriptor then leaked.
    clock = FakeClock()

    def before(log):
        for target in ("[::1]:1", "[::1]:2"):
            for seq in range(3):
                log.write(decision(target=target, seq=seq))

    def check(log, path, where):
        events = list(read_audit_log(path))
        assert [(e.target_context.formatted, e.seq, e.repeated) for e in events] == [
            ("[::1]:1", 0, 0), ("[::1]:2", 0, 0), ("[::1]:1", 2, 1), ("[::1]:2", 2, 1)], where

    args = dict(coalesce_s=1.0, clock=clock, keep_first=10)
    points = _sigterm_at_every_point(tmp_path, args, before, lambda log: log.close(), check)
    assert points > 50


def test_a_handler_that_raises_after_close_still_leaves_the_logger_closed(tmp_path):
    # The SIGTERM handler many programs have: close, then raise at once. Where
    # CPython runs it (on entering _finish, notably), the write it cuts short
    # must still close the logger on its way out.
    def close_and_exit(log):
        def on_sigterm(signum, frame):
            log.close()
            raise SystemExit(128 + signum)

        signal.signal(signal.SIGTERM, on_sigterm)

    def before(log):
        assert log.write(make_event(1, 0))

    def check(log, path, where):
        assert [e.seq for e in read_audit_log(path)] in ([0], [0, 1]), where

    points = _sigterm_at_every_point(tmp_path, {}, before, lambda log: log.write(make_event(1, 1)), check,
                                     every=False, handler=close_and_exit)
    assert points > 20


def _write_big_lines_forever(path: str) -> None:
    log = AuditLogger(path)
    seq = 0
    while True:
        log.write(make_event(1, seq, pad=20_000 + seq % 7000))
        seq += 1


def test_sigkill_mid_stream_tears_at_most_the_last_line(tmp_path, fork):
    path = str(tmp_path / "audit.ndjson")
    proc = fork(_write_big_lines_forever, path)
    _wait_for_lines(path, 2 * 1024 * 1024)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(10)
    assert proc.exitcode == -signal.SIGKILL
    reader = AuditLogReader(path)
    seqs = [e.seq for e in reader.events()]
    assert reader.torn_lines <= 1
    assert seqs == list(range(len(seqs))) and len(seqs) > 50


# ---- the reader ----

def test_reader_skips_a_torn_last_line_only(tmp_path):
    path = tmp_path / "audit.ndjson"
    with AuditLogger(path) as log:
        for seq in range(3):
            log.write(make_event(1, seq))
    whole = path.read_bytes()

    path.write_bytes(whole + b'{"timestamp":1,"id":5,"na')  # no newline
    reader = AuditLogReader(path)
    assert [e.seq for e in reader.events()] == [0, 1, 2] and reader.torn_lines == 1

    path.write_bytes(whole + b'{"timestamp":1,"id":5,"na\n')  # newline, not an event
    reader = AuditLogReader(path)
    assert [e.seq for e in reader.events()] == [0, 1, 2] and reader.torn_lines == 1
    with pytest.warns(RuntimeWarning, match="torn"):
        assert len(list(read_audit_log(path))) == 3

    lines = whole.splitlines(keepends=True)
    path.write_bytes(lines[0] + b"garbage\n" + b"".join(lines[1:]))
    with pytest.raises(AuditLogError, match="line 2"):
        list(AuditLogReader(path).events())

    path.write_bytes(b"")
    assert list(AuditLogReader(path).events()) == []


# ---- real filesystem faults ----

@pytest.mark.root
def test_disk_full_raises_naming_the_reason(tiny_tmpfs):
    path = tiny_tmpfs / "audit.ndjson"
    written = []
    with AuditLogger(path) as log:
        with pytest.raises(AuditLogError, match="No space left") as info:
            for seq in range(10_000):
                log.write(make_event(1, seq))
                written.append(seq)
        assert info.value.errno == errno.ENOSPC
        assert str(path) in str(info.value)
        assert log.errors == 1
    # The line that did not fit left no fragment behind (tmpfs writes what
    # fits of it first): the file is whole lines, all there.
    reader = AuditLogReader(path)
    assert [e.seq for e in reader.events()] == written
    assert reader.torn_lines == 0


@pytest.mark.root
def test_disk_full_counted_then_retried_once_space_frees(tiny_tmpfs):
    path = tiny_tmpfs / "audit.ndjson"
    filler = tiny_tmpfs / "filler"
    filler.write_bytes(b"\0" * 32 * 1024)
    with AuditLogger(path, on_error="count") as log:
        seq = 0
        while log.errors == 0:
            log.write(make_event(1, seq))
            seq += 1
        on_disk = log.lines_written
        for _ in range(20):  # more while full: queued behind, in order
            assert log.write(make_event(1, seq)) is False
            seq += 1
        assert log.write_many([make_event(1, seq), make_event(1, seq + 1)]) == 0
        seq += 2
        assert log.pending == seq - on_disk and log.errors > 1
        assert log.flush() is False

        # Earlier lines are intact and parse while the disk is full.
        reader = AuditLogReader(path)
        assert [e.seq for e in reader.events()] == list(range(on_disk))
        assert reader.torn_lines == 0

        filler.unlink()
        assert log.flush() is True
        assert log.pending == 0 and log.dropped == 0
        assert log.write(make_event(1, seq)) is True
        seq += 1
    assert [e.seq for e in read_audit_log(path)] == list(range(seq))


@pytest.mark.root
def test_retry_queue_is_bounded(tiny_tmpfs, monkeypatch):
    monkeypatch.setattr(audit, "RETRY_QUEUE_MAX", 5)
    path = tiny_tmpfs / "audit.ndjson"
    filler = tiny_tmpfs / "filler"
    fill_until_full(filler)
    log = AuditLogger(path, on_error="count")
    for seq in range(12):
        assert log.write(make_event(1, seq, pad=5000)) is False
    assert log.pending == 5 and log.dropped == 7 and log.lines_written == 0
    with pytest.warns(RuntimeWarning, match="5 events could not be written"):
        log.close()
    assert log.dropped == 12


@pytest.fixture
def ext4_remount_ro(tmp_path):
    """A small ext4 with errors=remount-ro, and a function that makes the kernel
    turn it read-only under open files (a tmpfs refuses `remount,ro` with EBUSY
    while the log is open for writing, so that cannot produce EROFS)."""
    if not shutil.which("mkfs.ext4"):
        pytest.skip("mkfs.ext4 is not installed")
    image = tmp_path / "ext4.img"
    with open(image, "wb") as f:
        f.truncate(4 * 1024 * 1024)
    made = subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], capture_output=True, text=True)
    if made.returncode:
        pytest.skip(f"mkfs.ext4 failed: {made.stderr.strip()}")
    mountpoint = tmp_path / "ext4"
    mountpoint.mkdir()
    done = mount("-o", "loop,errors=remount-ro", str(image), str(mountpoint))
    if done.returncode:
        pytest.skip(f"cannot mount an ext4 image here: {done.stderr.strip()}")
    try:
        device = subprocess.run(["findmnt", "-no", "SOURCE", str(mountpoint)], capture_output=True,
                                text=True).stdout.strip()
        trigger = f"/sys/fs/ext4/{os.path.basename(device)}/trigger_fs_error"
        if not os.path.exists(trigger):
            pytest.skip(f"{trigger} is missing: cannot make ext4 read-only under open files")

        def make_read_only() -> None:
            with open(trigger, "w") as f:
                f.write("runtimeguard test: remount read-only\n")

        yield mountpoint, make_read_only
    finally:
        unmount(mountpoint)


@pytest.mark.root
@pytest.mark.parametrize("on_error", ["raise", "count"])
def test_read_only_filesystem(ext4_remount_ro, on_error):
    mountpoint, make_read_only = ext4_remount_ro
    path = mountpoint / "audit.ndjson"
    with AuditLogger(path, on_error=on_error) as log:
        for seq in range(10):
            log.write(make_event(1, seq))
        make_read_only()
        if on_error == "raise":
            with pytest.raises(AuditLogError, match="Read-only file system") as info:
                log.write(make_event(1, 10))
            assert info.value.errno == errno.EROFS
        else:
            assert log.write(make_event(1, 10)) is False
            assert log.errors == 1 and log.pending == 1
            assert log.flush() is False
        # With "count", the event still queued is reported lost at close.
        with pytest.warns(RuntimeWarning) if on_error == "count" else contextlib.nullcontext():
            log.close()
    reader = AuditLogReader(path)
    assert [e.seq for e in reader.events()] == list(range(10))
    assert reader.torn_lines == 0


# ---- NotificationTracker ----

class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_tracker_notifies_once_per_window_and_reports_the_repeats():
    clock = FakeClock()
    tracker = NotificationTracker(window_s=60.0, clock=clock)
    assert tracker.should_notify("deny-loopback", "127.0.0.2:80")
    for _ in range(5):
        clock.now += 1
        notice = tracker.observe("deny-loopback", "127.0.0.2:80")
        assert not notice and notice.suppressed == 0
    assert tracker.should_notify("deny-loopback", "127.0.0.3:80")  # another target
    assert tracker.should_notify("other-rule", "127.0.0.2:80")  # another rule
    assert tracker.suppressed("deny-loopback", "127.0.0.2:80") == 5
    clock.now += 55  # 60 s after the first
    notice = tracker.observe("deny-loopback", "127.0.0.2:80")
    assert notice and notice.suppressed == 5
    assert tracker.suppressed("deny-loopback", "127.0.0.2:80") == 0


def test_tracker_summarizes_windows_that_closed_with_repeats():
    clock = FakeClock()
    tracker = NotificationTracker(window_s=10.0, clock=clock)
    for _ in range(4):
        tracker.observe("r", "t")
    tracker.observe("r", "quiet")
    clock.now += 10
    assert tracker.drain_suppressed() == [("r", "t", 3)]
    assert tracker.drain_suppressed() == []
    assert tracker.observe("r", "t") == audit.Notice(True, 0)  # already summarized


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([0.0, 0.001, 3.0, 9.999, 10.0, 25.0]),
                          st.integers(0, 2), st.integers(0, 3)), max_size=200))
def test_tracker_property(calls):
    window = 10.0
    clock = FakeClock()
    tracker = NotificationTracker(window_s=window, clock=clock)
    last_notice: dict[tuple[str, str], float] = {}
    since: dict[tuple[str, str], int] = {}
    notifications = reported = 0
    for dt, rule, target in calls:
        clock.now += dt
        key = (f"rule-{rule}", f"10.0.0.{target}:80")
        notice = tracker.observe(*key)
        expected = key not in last_notice or clock.now - last_notice[key] >= window
        assert notice.notify == expected
        if notice:
            notifications += 1
            # It carries the repeats since the previous notice.
            assert notice.suppressed == since.get(key, 0)
            last_notice[key], since[key] = clock.now, 0
        else:
            assert notice.suppressed == 0
            since[key] += 1
        reported += notice.suppressed
    assert len(tracker) <= len(last_notice)
    summarized = sum(n for _, _, n in tracker.drain_suppressed())
    outstanding = sum(tracker.suppressed(*key) for key in last_notice)
    # Every suppressed call is accounted for exactly once.
    assert reported + outstanding + summarized + tracker.lost_suppressed == len(calls) - notifications
    assert tracker.lost_suppressed == 0


def test_tracker_memory_is_bounded_under_a_storm_of_unique_targets():
    clock = FakeClock()
    tracker = NotificationTracker(window_s=60.0, clock=clock, max_entries=1000)
    for i in range(50_000):
        assert tracker.should_notify("deny-all", f"127.0.{i >> 8 & 255}.{i & 255}:{i}")
        tracker.should_notify("deny-all", f"127.0.{i >> 8 & 255}.{i & 255}:{i}")  # one repeat each
        assert len(tracker) <= 1000
    # Evicted repeats are counted, not silently forgotten.
    assert tracker.lost_suppressed == 49_000
    clock.now += 60
    tracker.should_notify("deny-all", "127.0.0.1:1")
    assert tracker.drain_suppressed() and len(tracker) == 1


def test_tracker_prunes_old_windows():
    clock = FakeClock()
    tracker = NotificationTracker(window_s=1.0, clock=clock)
    for i in range(10_000):
        tracker.should_notify("r", str(i))
        clock.now += 0.001
    assert len(tracker) <= 1001


# ---- coalescing, first records kept from rotation, lost records ----

def decision(rule: str = "deny-loopback", target: str = "[::1]:443", pid: int = 4321, action: str = "blocked",
             seq: int = 0) -> EventRecord:
    """One denied connect; rule, target, process and action vary what makes it the same decision."""
    return EventRecord(timestamp=1_700_000_000_000_000_000 + seq, id=10, name="connect_denied", pid=pid, seq=seq,
                 workload=WORKLOAD, action=action, policy=PolicyRef(rule=rule, mode="enforce"),
                 data=ConnectDeniedData(rule_index=0, blocked=action == "blocked", would_deny=action != "blocked",
                                        comm="curl", family="ipv6", protocol="tcp"),
                 target_context=TargetContext(type="ipv6", formatted=target, address="::1", port=443))


def ring_lost(by_kind: dict[str, int], seq: int = 0) -> EventRecord:
    return EventRecord(timestamp=seq, id=9, name="lost", seq=seq,
                       data=LostData(count=sum(by_kind.values()), by_kind=by_kind))


def key_of(ev: EventRecord) -> tuple:
    return (ev.policy.rule, ev.target_context.formatted, ev.pid, ev.action)


# One step: advance the clock by dt, then a decision (rule, target, pid, action
# picked from small sets, so keys repeat), a lost notice, or an event that is never folded.
STEP = st.tuples(
    st.sampled_from([0.0, 0.0, 0.001, 0.3, 0.999, 1.0, 2.5]),
    st.one_of(
        st.tuples(st.just("decision"), st.integers(0, 1), st.integers(0, 2), st.integers(0, 1), st.booleans()),
        st.tuples(st.just("lost"), st.sampled_from(["open_inode", "exfil_blocked"]), st.integers(1, 5)),
        st.tuples(st.just("other"),)),
)


@settings(max_examples=400, deadline=None)
@given(steps=st.lists(STEP, max_size=150), ticks=st.lists(st.booleans(), max_size=150),
       max_entries=st.sampled_from([2, 100_000]))
def test_coalescer_property(steps, ticks, max_entries):
    """Any sequence of decisions and clock ticks: per key, the first decision is
    written at once, lines are at least an interval apart (unless the key was
    evicted), and once flushed, lines + sum(repeated) == decisions; lost
    notices keep their counts; other events pass straight through."""
    interval = 1.0
    clock = FakeClock()
    co = audit.Coalescer(interval, clock=clock, max_entries=max_entries)
    made: dict[tuple, int] = {}
    lines: dict[tuple, list[tuple[float, EventRecord]]] = {}
    lost_in: dict[str, int] = {}
    lost_out: dict[str, int] = {}
    others_in = others_out = 0

    def take(out: list[EventRecord], flushed: bool = False) -> None:
        nonlocal others_out
        for ev in out:
            if ev.name == "lost":
                assert ev.repeated == 0 and ev.data.count == sum(ev.data.by_kind.values())
                for kind, n in ev.data.by_kind.items():
                    lost_out[kind] = lost_out.get(kind, 0) + n
            elif ev.name == "connect_denied":
                lines.setdefault(key_of(ev), []).append((None if flushed else clock.now, ev))
            else:
                others_out += 1

    for i, (dt, step) in enumerate(steps):
        clock.now += dt
        if step[0] == "decision":
            _, rule, target, pid, enforce = step
            ev = decision(f"rule-{rule}", f"10.0.0.{target}:80", pid=100 + pid,
                          action="blocked" if enforce else "would_block", seq=i)
            key = key_of(ev)
            out = co.add(ev)
            take(out)
            made[key] = made.get(key, 0) + 1
            if made[key] == 1:
                # The first decision of a key is written at once, as itself.
                assert any(e is ev for e in out)
        elif step[0] == "lost":
            _, kind, n = step
            lost_in[kind] = lost_in.get(kind, 0) + n
            take(co.add(ring_lost({kind: n}, seq=i)))
        else:
            others_in += 1
            ev = make_event(1, 3 + 4 * i)  # a process_exec: never folded
            out = co.add(ev)
            assert out[-1] is ev
            take(out)
        if i < len(ticks) and ticks[i]:
            take(co.due())
        if max_entries > 1000:
            # Memory: only keys with a line in the last interval or something pending.
            assert len(co) <= len(made) + 2
    take(co.flush(), flushed=True)
    assert co.pending == 0 and len(co) == 0
    assert others_out == others_in
    assert lost_out == lost_in
    repeated_total = 0
    for key, n in made.items():
        written = lines[key]
        # Every decision is accounted for exactly once.
        assert len(written) + sum(ev.repeated for _, ev in written) == n
        repeated_total += sum(ev.repeated for _, ev in written)
        if max_entries > 1000:
            # At most one line per interval, but for the flush at the end.
            times = [t for t, _ in written if t is not None]
            assert all(b - a >= interval for a, b in zip(times, times[1:])), times
    assert co.coalesced == repeated_total


def test_coalescer_first_at_once_then_one_line_per_interval():
    clock = FakeClock()
    co = audit.Coalescer(1.0, clock=clock)
    first = decision(seq=0)
    assert co.add(first) == [first]
    for seq in range(1, 1000):
        clock.now += 0.0005
        assert co.add(decision(seq=seq)) == []
    assert co.due() == [] and co.pending == 999
    clock.now += 1.0
    (line,) = co.due()
    assert line.repeated == 998 and line.seq == 999  # the latest, standing for 999 decisions
    assert co.pending == 0 and co.coalesced == 998
    other = decision(target="[::1]:80", seq=2000)
    assert co.add(other) == [other]  # another target: its own first line
    assert co.flush() == [] and len(co) == 0


def test_coalescer_never_folds_mode_changes_or_other_events():
    co = audit.Coalescer(1.0, clock=FakeClock())
    note = EventRecord(timestamp=1, id=15, name="mode_changed", data=ModeChangedData(previous="audit", mode="enforce"),
                 policy=PolicyRef(rule="mode", mode="enforce"))
    assert [co.add(note) for _ in range(3)] == [[note]] * 3
    assert audit.coalesce_key(note) is None and audit.coalesce_key(make_event(1, 3)) is None


def test_logger_coalesces_and_writes_pending_counts_at_close(tmp_path):
    path = tmp_path / "audit.ndjson"
    clock = FakeClock()
    with AuditLogger(path, coalesce_s=1.0, clock=clock) as log:
        assert log.write(decision(seq=0)) is True
        assert log.write_many(decision(seq=s) for s in range(1, 500)) == 0
        assert log.repeats_pending == 499 and log.tick() == 0
        clock.now += 1.0
        assert log.tick() == 1
        assert log.write_many(decision(seq=s) for s in range(500, 600)) == 0
        assert log.repeats_pending == 100
    events = list(read_audit_log(path))
    assert [(e.seq, e.repeated) for e in events] == [(0, 0), (499, 498), (599, 99)]
    assert len(events) + sum(e.repeated for e in events) == 600
    assert log.coalesced == 498 + 99


def test_flush_writes_every_pending_count(tmp_path):
    path = tmp_path / "audit.ndjson"
    with AuditLogger(path, coalesce_s=60.0, clock=FakeClock()) as log:
        log.write_many([decision(seq=0), decision(seq=1), decision(seq=2)])
        assert log.flush() is True and log.repeats_pending == 0
        assert [(e.seq, e.repeated) for e in read_audit_log(path)] == [(0, 0), (2, 1)]


def test_first_records_survive_rotation_in_the_kept_file(tmp_path):
    path = str(tmp_path / "audit.ndjson")
    shadow = make_event(1, 2)  # open_inode, rule "secrets"
    with AuditLogger(path, max_bytes=4000, backups=2, keep_first=5) as log:
        log.write(shadow)
        log.write(decision(seq=1))
        for seq in range(2, 400):  # a flood of new targets under one rule, and process events
            log.write(decision(target=f"10.0.{seq >> 8}.{seq & 255}:80", seq=seq) if seq % 2
                      else make_event(1, 100_000 + seq, pad=1))
        assert log.kept_lines > 0
        assert log.keep_skipped > 100  # beyond 5 targets of deny-loopback
    files = audit_log_files(path)
    assert files[0] == path + ".kept" and files[1:] == [f"{path}.2", f"{path}.1", path]
    events, torn = read_all(path)
    assert torn == 0
    seqs = [e.seq for e in events]
    assert len(seqs) == len(set(seqs)), "a record in two files"
    kept = list(read_audit_log(path + ".kept"))
    # The run's first record of each (rule, target), up to 5 targets a rule: the
    # open, the first five targets of deny-loopback, the first process_exec (no
    # rule: one per event name); nothing else.
    assert [(e.name, e.seq) for e in kept] == [
        ("open_inode", 2), ("connect_denied", 1), ("process_exec", 100_002), ("connect_denied", 3),
        ("connect_denied", 5), ("connect_denied", 7), ("connect_denied", 9)]
    assert seqs[:len(kept)] == [e.seq for e in kept]
    # The rest is the newest lines, contiguous (process_exec seqs are 100_000 + i).
    rest = [s % 100_000 for s in seqs[len(kept):]]
    assert rest == list(range(rest[0], 400))


def test_kept_file_grows_only_with_new_firsts(tmp_path):
    path = str(tmp_path / "audit.ndjson")
    with AuditLogger(path, max_bytes=3000, backups=0, keep_first=100) as log:
        for seq in range(300):
            log.write(decision(seq=seq))  # the same decision: one first record
    kept = list(read_audit_log(path + ".kept"))
    assert [e.seq for e in kept] == [0]


@pytest.mark.root
def test_dropped_events_are_reported_by_a_lost_record(tiny_tmpfs, monkeypatch):
    monkeypatch.setattr(audit, "RETRY_QUEUE_MAX", 5)
    path = tiny_tmpfs / "audit.ndjson"
    filler = tiny_tmpfs / "filler"
    with AuditLogger(path, on_error="count", keep_first=10) as log:
        assert log.write(make_event(1, 0)) is True
        fill_until_full(filler)
        # Lines longer than a page: none fits in what is left of the log's last page.
        for seq in range(1, 13):
            big = decision(target="x" * 5000, seq=seq) if seq % 2 else make_event(1, seq, pad=5000)
            assert log.write(big) is False
        assert log.pending == 5 and log.dropped == 7
        dropped = log.dropped_by_kind
        assert dropped == {"connect_denied": 3, "process_exec": 4}  # seqs 6-12 (5 wait in the queue)
        assert log.flush() is False
        filler.unlink()
        assert log.write(make_event(1, 13)) is True
        assert log.pending == 0 and log.lost_records == 1
    events = list(read_audit_log(path))
    assert [e.seq for e in events if e.name != "lost"] == [0, 1, 2, 3, 4, 5, 13]
    (lost,) = [e for e in events if e.name == "lost"]
    assert events.index(lost) == 6  # after the queued lines, before the next one
    assert lost.data.source == "audit_log" and lost.data.error == "ENOSPC"
    assert lost.data.count == 7 and lost.data.by_kind == dropped


def test_close_writes_pending_counts_even_for_a_raising_logger(tmp_path):
    path = tmp_path / "audit.ndjson"
    log = AuditLogger(path, coalesce_s=10.0, clock=FakeClock())
    for seq in range(5):
        log.write(decision(seq=seq))
    log.close()
    assert [(e.seq, e.repeated) for e in read_audit_log(path)] == [(0, 0), (4, 3)]
