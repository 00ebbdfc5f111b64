"""The process table's native store (csrc/proctable.c) against a model of
what it keeps: any sequence of execs, forks and exits, with a table small
enough that forgetting (the oldest quarter when full, exited processes past
what is kept) and the hash tables' deletions happen all the time. Pure
logic: no kernel, entries made here."""

from __future__ import annotations

import collections
import random
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from runtimeguard._native import ffi, lib

# 32 processes in 64 slots: half full, so probe chains are common.
MAX_PROCESSES, KEEP_EXITED, MAX_VERSIONS = 32, 6, 3
LATEST = (1 << 63) - 1
VERSION = struct.Struct("=qqIIIIIIQqQ")  # struct rg_proc_version
FOUND_SIZE = VERSION.size + lib.RG_MAX_ENCODED_RECORD
EXEC, FORK, EXIT = lib.RG_KIND_PROCESS_EXEC, lib.RG_KIND_PROCESS_FORK, lib.RG_KIND_PROCESS_EXIT


class Model:
    """What the store documents: versions in time order (the same time kept
    once, the oldest dropped past MAX_VERSIONS), pid -> the process last
    learned under it; exited processes forgotten past KEEP_EXITED in chunks,
    except those a process in the table names as its parent (parked until
    it names them no more); when full, a quarter forgotten: exited first,
    then live, parked last, the oldest first within each."""

    def __init__(self):
        self.procs: dict[int, dict] = {}
        self.pids: dict[int, int] = {}
        self.order = 0
        self.exited = collections.deque()
        self.exited_capacity = KEEP_EXITED + KEEP_EXITED // 4 + 2

    def unlink_parent(self, p):
        parent = self.procs.get(p["parent"]) if p["parent"] else None
        p["parent"] = 0
        if parent is None or not parent["children"]:
            return
        parent["children"] -= 1
        if not parent["children"] and parent["parked"]:
            parent["parked"] = False
            self.exited_push(parent["entity"])

    def forget(self, entity):
        p = self.procs.get(entity)
        if p is None:
            return
        self.unlink_parent(p)
        del self.procs[entity]
        if self.pids.get(p["pid"]) == entity:
            del self.pids[p["pid"]]

    def exited_push(self, entity):
        self.exited.append(entity)
        if len(self.exited) <= KEEP_EXITED + KEEP_EXITED // 4 and len(self.exited) < self.exited_capacity:
            return
        while len(self.exited) > KEEP_EXITED:
            oldest = self.exited.popleft()
            p = self.procs.get(oldest)
            if p is not None and p["children"]:
                p["parked"] = True
            else:
                self.forget(oldest)

    def learn(self, kind, entity, pid, since, parent=0):
        if kind == EXIT:
            p = self.procs.get(entity)
            if p is None or p["exited"]:
                return
            p["exited"] = True
            self.exited_push(entity)
            return
        p = self.procs.get(entity)
        if p is None:
            if len(self.procs) >= MAX_PROCESSES:
                def rank(e):
                    q = self.procs[e]
                    return (2 if q["parked"] else 0 if q["exited"] else 1, q["order"])
                oldest = sorted(self.procs, key=rank)
                for e in oldest[: len(oldest) // 4 + 1]:
                    self.forget(e)
            self.order += 1
            p = self.procs[entity] = {"entity": entity, "order": self.order, "pid": pid, "versions": [],
                                      "exited": False, "parked": False, "parent": 0, "children": 0}
        versions = p["versions"]
        at = len(versions)
        while at and versions[at - 1] > since:
            at -= 1
        if not (at and versions[at - 1] == since):
            if len(versions) == MAX_VERSIONS:
                if at:
                    del versions[0]
                    versions.insert(at - 1, since)
            else:
                versions.insert(at, since)
        p["pid"] = pid
        self.pids[pid] = entity
        if parent != p["parent"] and parent != entity:
            self.unlink_parent(p)
            q = self.procs.get(parent)
            if q is not None:
                q["children"] += 1
                p["parent"] = parent

    def version_at(self, entity, ts):
        versions = self.procs[entity]["versions"]
        for i in range(len(versions) - 1, -1, -1):
            if versions[i] <= ts:
                return versions[i], (versions[i + 1] if i + 1 < len(versions) else LATEST)
        return versions[0], (versions[1] if len(versions) > 1 else LATEST)


ENTITIES, PIDS = 120, 40
steps = st.lists(st.tuples(st.sampled_from([EXEC, FORK, EXIT, EXEC]), st.integers(1, ENTITIES),
                           st.integers(1, PIDS), st.integers(0, 50), st.integers(0, ENTITIES)),
                 min_size=50, max_size=400)


@settings(max_examples=300)
@given(steps=steps, probes=st.lists(st.integers(0, 60), min_size=1, max_size=5))
def test_the_store_keeps_what_the_model_keeps(steps, probes):
    check(steps, probes)


def test_a_long_run_keeps_what_the_model_keeps():
    # Thousands of steps: the table fills and forgets many times over.
    rng = random.Random(7)
    steps = [(rng.choice([EXEC, FORK, EXIT, EXEC]), rng.randint(1, ENTITIES), rng.randint(1, PIDS),
              rng.randint(0, 50), rng.randint(0, ENTITIES)) for _ in range(5000)]
    for end in range(250, len(steps) + 1, 250):
        check(steps[:end], [0, 25, 60])


def check(steps, probes):
    table = ffi.gc(lib.rg_proc_table_new(MAX_PROCESSES, KEEP_EXITED, MAX_VERSIONS), lib.rg_proc_table_free)
    model = Model()
    entries = ffi.new("struct rg_table_entry[1]")
    details = ffi.new("unsigned char[]", b"exec")
    for kind, entity, pid, since, parent in steps:
        e = entries[0]
        e.kind, e.entity_id, e.pid, e.since, e.at = kind, entity, pid, since, since
        e.parent_entity_id = parent
        e.details_offset, e.details_len = 0, 4 if kind == EXEC else 0
        lib.rg_proc_table_learn(table, entries, 1, details, 0)
        model.learn(kind, entity, pid, since, parent)
    assert lib.rg_proc_table_count(table) == len(model.procs)
    out = ffi.new("unsigned char[]", FOUND_SIZE)
    for entity in range(1, ENTITIES + 1):
        n = lib.rg_proc_table_find(table, entity, LATEST, out, FOUND_SIZE)
        if entity not in model.procs:
            assert n == -2  # -ENOENT
            continue
        for ts in [LATEST, *probes]:
            n = lib.rg_proc_table_find(table, entity, ts, out, FOUND_SIZE)
            since, until = VERSION.unpack_from(ffi.buffer(out))[:2]
            assert (since, until) == model.version_at(entity, ts), (entity, ts)
    for pid in range(1, PIDS + 1):
        assert lib.rg_proc_table_by_pid(table, pid) == model.pids.get(pid, 0), pid


def test_exited_ancestors_stay_while_a_descendant_does():
    table = ffi.gc(lib.rg_proc_table_new(MAX_PROCESSES, KEEP_EXITED, MAX_VERSIONS), lib.rg_proc_table_free)
    entries = ffi.new("struct rg_table_entry[1]")
    details = ffi.new("unsigned char[]", b"exec")
    clock = iter(range(1, 10**6))

    def learn(kind, entity, parent=0):
        e = entries[0]
        e.kind, e.entity_id, e.pid, e.parent_entity_id = kind, entity, entity % 30000 + 1, parent
        e.since = e.at = next(clock)
        e.details_offset, e.details_len = 0, 4 if kind == EXEC else 0
        lib.rg_proc_table_learn(table, entries, 1, details, 0)

    out = ffi.new("unsigned char[]", FOUND_SIZE)

    def known(entity):
        return lib.rg_proc_table_find(table, entity, LATEST, out, FOUND_SIZE) >= 0

    grandparent, parent, child = 1001, 1002, 1003
    learn(EXEC, grandparent)
    learn(FORK, parent, grandparent)
    learn(FORK, child, parent)
    learn(EXIT, parent)
    learn(EXIT, grandparent)
    # Many more processes come and go than the table keeps exited.
    for other in range(2000, 2000 + 5 * KEEP_EXITED):
        learn(FORK, other, child)
        learn(EXIT, other)
    assert known(grandparent) and known(parent) and known(child)
    # The child goes: its ancestors are free to go in turn.
    learn(EXIT, child)
    for other in range(3000, 3000 + 5 * KEEP_EXITED):
        learn(EXEC, other)
        learn(EXIT, other)
    assert not known(child) and not known(parent) and not known(grandparent)
