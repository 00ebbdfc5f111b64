"""Property tests of the process table's per-batch pass (runtimeguard/processes.py):
every event gets the Workload of its own process and cgroup, shared by all
events of that pair. Pure logic: synthetic events, pids above any pid_max so
/proc never answers."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from runtimeguard.processes import ProcessTable
from runtimeguard.schema import EVENT_IDS, Event, FileOpenData, ProcessExecData

FIRST_PID = 5_000_000  # above PID_MAX_LIMIT (2**22): no /proc entry


def entity_of(pid: int) -> int:
    return pid * 7 + 1


def exec_event(pid: int, cgroup: int) -> Event:
    return Event(timestamp=0, id=EVENT_IDS["process_exec"], name="process_exec", pid=pid, tid=pid,
                 entity_id=entity_of(pid), cgroup_id=cgroup,
                 data=ProcessExecData(executable=f"/bin/p{pid}", argv=[f"p{pid}"], comm=f"p{pid}", uid=0, euid=0,
                                      gid=0, ppid=1, parent_entity_id=0, start_time=0, return_code=0))


def open_event(pid: int, cgroup: int, known: bool) -> Event:
    return Event(timestamp=0, id=EVENT_IDS["file_open"], name="file_open", pid=pid, tid=pid,
                 entity_id=entity_of(pid) if known else 0, cgroup_id=cgroup,
                 data=FileOpenData(path="/x", flags=0, mode=0, result=3, device=1, inode=2, syscall="openat"))


# (pid index, cgroup, entity known) per event; runs of one process are likely.
# Pids 0-3 have exec'd (an event without its entity is resolved by pid);
# 4-5 never did (socket hooks' events of processes the table cannot find).
EXECED = 4
steps = st.lists(st.tuples(st.integers(0, 5), st.integers(1, 2), st.booleans()), min_size=1, max_size=60)


@given(steps=steps, split=st.integers(0, 60))
def test_every_event_gets_its_own_process_and_cgroup(steps, split):
    table = ProcessTable(lambda pid, start: entity_of(pid), lambda: 0, None)
    table.enrich([exec_event(FIRST_PID + i, 1) for i in range(EXECED)])
    events = [open_event(FIRST_PID + i, cgroup, known and i < EXECED) for i, cgroup, known in steps]
    # Over two batches, as two polls would deliver them.
    table.enrich(events[:split])
    table.enrich(events[split:])
    by_pair = {}
    for (i, _, _), ev in zip(steps, events):
        process = ev.workload.process
        assert process.pid == ev.pid
        if i < EXECED:
            assert ev.entity_id == process.entity_id == entity_of(ev.pid)
            assert process.name == f"p{ev.pid}"
            assert by_pair.setdefault((ev.entity_id, ev.cgroup_id), ev.workload) is ev.workload
        else:
            assert ev.entity_id == process.entity_id == 0
