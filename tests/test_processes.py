"""Property tests of the process table (runtimeguard/processes.py): every
event gets its own process as it was at the event's time, in its own cgroup,
the same Workload for every event of that process version and cgroup. Pure
logic: synthetic events, pids above any pid_max so /proc never answers."""

from __future__ import annotations

from typing import Optional

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runtimeguard import schema
from runtimeguard.processes import MAX_VERSIONS, ProcessTable
from runtimeguard.schema import EVENT_IDS, Event, FileOpenData, ProcessExecData, ProcessForkData

FIRST_PID = 5_000_000  # above PID_MAX_LIMIT (2**22): no /proc entry


@pytest.fixture(autouse=True)
def table():
    """A fresh table as the resolver of Event.workload, for this test only."""
    t = ProcessTable(lambda pid, start: entity_of(pid), lambda: 0, None)
    saved = schema._resolver
    schema.set_resolver(t)
    yield t
    schema.set_resolver(saved)


def entity_of(pid: int) -> int:
    return pid * 7 + 1


def exec_event(pid: int, cgroup: int, timestamp: int = 0, image: str = "", uid: int = 0) -> Event:
    name = f"p{pid}{image}"
    return Event.make(id=EVENT_IDS["process_exec"], timestamp=timestamp, pid=pid, tid=pid,
                      entity_id=entity_of(pid), cgroup_id=cgroup, uid=uid, euid=uid, gid=0, comm=name[:15],
                      data=ProcessExecData(executable=f"/bin/{name}", argv=[name], comm=name[:15], uid=uid, euid=uid,
                                           gid=0, ppid=1, parent_entity_id=0, start_time=0, return_code=0))


def open_event(pid: int, cgroup: int, known: bool, timestamp: int = 1, uid: Optional[int] = 0,
               comm: Optional[str] = None) -> Event:
    return Event.make(id=EVENT_IDS["file_open"], timestamp=timestamp, pid=pid, tid=pid,
                      entity_id=entity_of(pid) if known else 0, cgroup_id=cgroup, uid=uid, euid=uid, gid=0,
                      comm=f"p{pid}" if comm is None else comm,
                      data=FileOpenData(path="/x", flags=0, mode=0, result=3, device=1, inode=2, syscall="openat"))


# (pid index, cgroup, entity known) per event; runs of one process are likely.
# Pids 0-3 have exec'd (an event without its entity is resolved by pid);
# 4-5 never did (socket hooks' events of processes the table cannot find).
EXECED = 4
steps = st.lists(st.tuples(st.integers(0, 5), st.integers(1, 2), st.booleans()), min_size=1, max_size=60)


@given(steps=steps)
def test_every_event_gets_its_own_process_and_cgroup(steps):
    table = ProcessTable(lambda pid, start: entity_of(pid), lambda: 0, None)
    schema.set_resolver(table)
    for i in range(EXECED):
        table.learn([exec_event(FIRST_PID + i, 1)])
    events = [open_event(FIRST_PID + i, cgroup, known and i < EXECED) for i, cgroup, known in steps]
    by_pair = {}
    for (i, _, _), ev in zip(steps, events):
        process = ev.workload.process
        assert process.pid == ev.pid
        if i < EXECED:
            assert process.entity_id == entity_of(ev.pid)
            assert process.name == f"p{ev.pid}"
            wl = by_pair.setdefault((process.entity_id, ev.cgroup_id), ev.workload)
            assert wl is ev.workload
            assert ev.record().entity_id == entity_of(ev.pid)
        else:
            assert process.entity_id == ev.entity_id == 0


@given(before=st.integers(0, 99), between=st.integers(100, 199), after=st.integers(200, 10**6),
       read_order=st.permutations(range(3)))
def test_an_event_gets_the_image_it_ran_under_whenever_it_is_read(before, between, after, read_order):
    # exec at 100 (image a), exec at 200 (image b); events read in any order, late.
    table = ProcessTable(lambda pid, start: entity_of(pid), lambda: 0, None)
    schema.set_resolver(table)
    pid = FIRST_PID + 10
    table.learn([exec_event(pid, 1, timestamp=0)])
    table.learn([exec_event(pid, 1, timestamp=100, image="a")])
    table.learn([exec_event(pid, 1, timestamp=200, image="b")])
    events = [open_event(pid, 1, True, timestamp=t, comm="") for t in (before, between, after)]
    expected = [f"/bin/p{pid}", f"/bin/p{pid}a", f"/bin/p{pid}b"]
    for i in read_order:
        assert events[i].workload.process.executable == expected[i]


@given(gap=st.integers(1, 10**9))
def test_an_answer_read_before_an_exec_is_not_kept_past_it(gap):
    # The last version's answer holds "until further notice": an exec learned
    # after it was read must end it.
    table = ProcessTable(lambda pid, start: entity_of(pid), lambda: 0, None)
    schema.set_resolver(table)
    pid = FIRST_PID + 30
    table.learn([exec_event(pid, 1, timestamp=0, image="a")])
    assert open_event(pid, 1, True, timestamp=10, comm="").workload.process.executable == f"/bin/p{pid}a"
    table.learn([exec_event(pid, 1, timestamp=20, image="b")])
    assert open_event(pid, 1, True, timestamp=20 + gap, comm="").workload.process.executable == f"/bin/p{pid}b"
    assert open_event(pid, 1, True, timestamp=15, comm="").workload.process.executable == f"/bin/p{pid}a"


def test_credentials_and_name_follow_the_events(table):
    # After setuid(65534) and prctl(PR_SET_NAME) the events say so, and the
    # process record from then on; an earlier event read later does not.
    pid = FIRST_PID + 20
    table.learn([exec_event(pid, 1, timestamp=10)])
    early = open_event(pid, 1, True, timestamp=20)
    late = open_event(pid, 1, True, timestamp=30, uid=65534, comm="renamed")
    later = open_event(pid, 1, True, timestamp=40, uid=None, comm="")  # a socket hook: nothing known
    assert (late.workload.process.uid, late.workload.process.euid, late.workload.process.name) == (
        65534, 65534, "renamed")
    assert (early.workload.process.uid, early.workload.process.name) == (0, f"p{pid}")
    assert (later.workload.process.uid, later.workload.process.name) == (65534, "renamed")
    assert table.get(entity_of(pid)).uid == 65534


def test_a_fork_child_starts_as_its_parent(table):
    parent, child = FIRST_PID + 30, FIRST_PID + 31
    table.learn([exec_event(parent, 1, timestamp=5)])
    table.learn([Event.make(id=EVENT_IDS["process_fork"], timestamp=6, pid=parent, tid=parent,
                            entity_id=entity_of(parent), cgroup_id=1,
                            data=ProcessForkData(child_pid=child, child_entity_id=entity_of(child),
                                                 child_start_time=6))])
    process = open_event(child, 1, True, timestamp=7, comm=f"p{parent}").workload.process
    assert (process.pid, process.ppid, process.executable) == (child, parent, f"/bin/p{parent}")
    assert process.parent.pid == parent


def test_learning_an_exec_twice_keeps_one_version(table):
    # Two tracers feed one table: the same exec arrives twice.
    pid = FIRST_PID + 40
    table.learn([exec_event(pid, 1, timestamp=5, image="a")])
    # Were each a version of its own, these would push the first one out.
    for _ in range(MAX_VERSIONS + 1):
        table.learn([exec_event(pid, 1, timestamp=10, image="b")])
    assert open_event(pid, 1, True, timestamp=7).workload.process.executable == f"/bin/p{pid}a"
    assert open_event(pid, 1, True, timestamp=12).workload.process.executable == f"/bin/p{pid}b"
