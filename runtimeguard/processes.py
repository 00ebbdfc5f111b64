"""The process table: resolves an event's entity id to a shared Workload.

Process identity travels once, in process_exec and process_fork events; every
later event carries only pid, entity id and cgroup id, and gets the same
``Workload`` object as every other event of that process. Processes that
started before the tracer are read from /proc the first time they are seen,
and kept only if /proc still shows the same process (same start time).
"""

from __future__ import annotations

import os
import re
import time
from typing import Callable, Optional

from .schema import (
    Container,
    Event,
    Process,
    ProcessExecData,
    ProcessForkData,
    ProcessRef,
    TargetContext,
    Workload,
)

MAX_ANCESTORS = 8
MAX_PROCESSES = 32768
KEEP_EXITED = 2048
CGROUP_RESCAN_INTERVAL_S = 1.0
# Events that change the table (or, "lost", belong to no process).
_TABLE_CHANGES = frozenset(("process_exec", "process_fork", "process_exit", "lost"))
# Events whose target is a process: named from the table.
_PID_TARGETS = frozenset(("ptrace", "process_memory", "ptrace_denied"))

_CONTAINER_PATTERNS = [
    (re.compile(r"docker-([0-9a-f]{64})\.scope"), "docker"),
    (re.compile(r"cri-containerd-([0-9a-f]{64})\.scope"), "containerd"),
    (re.compile(r"crio-([0-9a-f]{64})\.scope"), "cri-o"),
    (re.compile(r"libpod-([0-9a-f]{64})\.scope"), "podman"),
    (re.compile(r"/docker/([0-9a-f]{64})(?:/|$)"), "docker"),
    (re.compile(r"/kubepods[^ ]*/pod[0-9a-f_-]+/([0-9a-f]{64})(?:/|$)"), "kubernetes"),
]


def container_from_cgroup(path: str) -> Optional[Container]:
    """The container a cgroup path names, if it carries a runtime's id."""
    for pattern, runtime in _CONTAINER_PATTERNS:
        m = pattern.search(path)
        if m:
            return Container(id=m.group(1), runtime=runtime)
    return None


def _ref(p: Process) -> ProcessRef:
    return ProcessRef(pid=p.pid, entity_id=p.entity_id, name=p.name, executable=p.executable)


class CgroupPaths:
    """cgroup v2 id (the directory's inode number) to path, by walking the hierarchy."""

    def __init__(self, mount_point: Optional[str]):
        self._mount = mount_point
        self._paths: dict[int, str] = {}
        self._scanned_at = 0.0

    def path(self, cgroup_id: int) -> Optional[str]:
        if not cgroup_id or not self._mount:
            return None
        found = self._paths.get(cgroup_id)
        if found is None and time.monotonic() - self._scanned_at > CGROUP_RESCAN_INTERVAL_S:
            self._rescan()
            found = self._paths.get(cgroup_id)
        return found

    def _rescan(self) -> None:
        self._scanned_at = time.monotonic()
        paths = {}
        for root, dirs, _ in os.walk(self._mount):
            try:
                paths[os.stat(root).st_ino] = "/" + os.path.relpath(root, self._mount).lstrip(".")
            except OSError:
                continue
        self._paths = paths


class ProcessTable:
    def __init__(self, entity_id: Callable[[int, int], int], realtime_offset_ns: Callable[[], int],
                 cgroup_mount: Optional[str]):
        self._entity_id = entity_id
        self._realtime_offset_ns = realtime_offset_ns
        self._ns_per_tick = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
        self._processes: dict[int, Process] = {}
        self._by_pid: dict[int, int] = {}
        # entity id -> cgroup id -> Workload: a process moved to another
        # cgroup gets a second Workload; a re-exec drops them all.
        self._workloads: dict[int, dict[int, Workload]] = {}
        self._exited: dict[int, None] = {}
        self._cgroups = CgroupPaths(cgroup_mount)

    def __len__(self) -> int:
        return len(self._processes)

    def get(self, entity_id: int) -> Optional[Process]:
        return self._processes.get(entity_id)

    def by_pid(self, pid: int) -> Optional[Process]:
        """The process now holding pid, from the table or /proc."""
        entity = self._by_pid.get(pid)
        return self._processes.get(entity) if entity else self._from_proc(pid, 0)

    # ---- the per-batch pass ----

    def enrich(self, events: list[Event]) -> None:
        """Fills every event's workload, and learns from process events."""
        workloads = self._workloads
        exited = []
        # Consecutive events mostly come from one process: its Workload is
        # looked up once per run of them. Events are not frozen, so a plain
        # attribute store sets the workload.
        last_entity = last_cgroup = -1
        wl = None
        for ev in events:
            name = ev.name
            if name in _TABLE_CHANGES:
                if name == "process_exec":
                    self._on_exec(ev)
                elif name == "process_fork":
                    self._on_fork(ev)
                elif name == "process_exit":
                    exited.append(ev.entity_id)
                else:  # lost: no process
                    continue
                last_entity = -1
            elif not ev.entity_id and ev.pid:
                # Socket hooks cannot read the task: find the process by pid.
                entity = self._by_pid.get(ev.pid)
                process = self._processes.get(entity) if entity else self._from_proc(ev.pid, 0)
                if process is not None:
                    ev.entity_id = process.entity_id
            entity, cgroup = ev.entity_id, ev.cgroup_id
            # Entity 0 (a process not found) names no one process: never reused.
            if not entity or entity != last_entity or cgroup != last_cgroup:
                by_cgroup = workloads.get(entity)
                wl = by_cgroup.get(cgroup) if by_cgroup else None
                if wl is None:
                    wl = self._workload(ev)
                last_entity, last_cgroup = entity, cgroup
            ev.workload = wl
            if name in _PID_TARGETS:
                self._name_target(ev)
        for entity in exited:
            self._exited[entity] = None
        if len(self._exited) > KEEP_EXITED:
            self._forget(list(self._exited)[: len(self._exited) - KEEP_EXITED])

    # ---- learning ----

    def _on_exec(self, ev: Event) -> None:
        d: ProcessExecData = ev.data  # type: ignore[assignment]
        if d.return_code < 0:
            return  # a failed exec leaves the process as it was
        parent = self._processes.get(d.parent_entity_id) or self._from_proc(d.ppid, d.parent_entity_id)
        ancestors = [_ref(parent)] + list(parent.ancestors[: MAX_ANCESTORS - 1]) if parent else []
        self._put(Process(
            pid=ev.pid, entity_id=ev.entity_id, name=d.comm, executable=d.executable, argv=d.argv,
            argv_truncated=d.argv_truncated, uid=d.uid, euid=d.euid, gid=d.gid, ppid=d.ppid,
            start_time=d.start_time, parent=ancestors[0] if ancestors else None, ancestors=ancestors,
        ))

    def _on_fork(self, ev: Event) -> None:
        d: ProcessForkData = ev.data  # type: ignore[assignment]
        parent = self._processes.get(ev.entity_id) or self._from_proc(ev.pid, ev.entity_id)
        if parent is None:
            return
        ancestors = [_ref(parent)] + list(parent.ancestors[: MAX_ANCESTORS - 1])
        self._put(Process(
            pid=d.child_pid, entity_id=d.child_entity_id, name=parent.name, executable=parent.executable,
            argv=parent.argv, argv_truncated=parent.argv_truncated, uid=parent.uid, euid=parent.euid,
            gid=parent.gid, ppid=parent.pid, start_time=d.child_start_time, parent=ancestors[0],
            ancestors=ancestors,
        ))

    def _put(self, process: Process) -> None:
        entity = process.entity_id
        # Workloads built before (the old image, or a placeholder) are stale now.
        self._workloads.pop(entity, None)
        if entity not in self._processes and len(self._processes) >= MAX_PROCESSES:
            self._forget(list(self._processes)[: MAX_PROCESSES // 4])
        self._processes[entity] = process
        self._by_pid[process.pid] = entity

    def _forget(self, entities: list[int]) -> None:
        for entity in entities:
            p = self._processes.pop(entity, None)
            self._exited.pop(entity, None)
            self._workloads.pop(entity, None)
            if p is not None and self._by_pid.get(p.pid) == entity:
                del self._by_pid[p.pid]

    # ---- resolving ----

    def _workload(self, ev: Event) -> Workload:
        process = self._processes.get(ev.entity_id) or self._from_proc(ev.pid, ev.entity_id)
        if process is None:
            process = Process(pid=ev.pid, entity_id=ev.entity_id, name="")
        cgroup = self._cgroups.path(ev.cgroup_id)
        wl = Workload(process=process, cgroup=cgroup,
                      container=container_from_cgroup(cgroup) if cgroup else None)
        if ev.entity_id:
            self._workloads.setdefault(ev.entity_id, {})[ev.cgroup_id] = wl
        return wl

    def _from_proc(self, pid: int, entity_id: int, depth: int = 0) -> Optional[Process]:
        """A process that predates the tracer, if /proc still shows the same one."""
        if pid <= 0:
            return None
        base = f"/proc/{pid}"
        try:
            with open(f"{base}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
        except OSError:
            return None
        name = stat[stat.index("(") + 1: stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        ppid, start_ticks = int(fields[1]), int(fields[19])
        start_boot_ns = start_ticks * self._ns_per_tick
        if self._entity_id(pid, start_boot_ns) != entity_id and entity_id:
            return None
        entity_id = entity_id or self._entity_id(pid, start_boot_ns)
        try:
            executable = os.readlink(f"{base}/exe")
        except OSError:
            executable = None
        try:
            with open(f"{base}/cmdline", "rb") as f:
                argv = [a.decode(errors="replace") for a in f.read().split(b"\0")[:-1]]
        except OSError:
            argv = None
        uids = gids = None
        try:
            with open(f"{base}/status") as f:
                for line in f:
                    if line.startswith("Uid:"):
                        uids = [int(x) for x in line.split()[1:3]]
                    elif line.startswith("Gid:"):
                        gids = [int(x) for x in line.split()[1:2]]
        except OSError:
            pass
        parent = None
        if depth < MAX_ANCESTORS and ppid > 0:
            parent_entity = self._by_pid.get(ppid)
            parent = self._processes.get(parent_entity) if parent_entity else None
            if parent is None:
                parent = self._from_proc(ppid, 0, depth + 1)
        ancestors = ([_ref(parent)] + list(parent.ancestors[: MAX_ANCESTORS - 1])) if parent else []
        process = Process(
            pid=pid, entity_id=entity_id, name=name, executable=executable, argv=argv,
            uid=uids[0] if uids else None, euid=uids[1] if uids else None, gid=gids[0] if gids else None,
            ppid=ppid, start_time=start_boot_ns + self._realtime_offset_ns(),
            parent=ancestors[0] if ancestors else None, ancestors=ancestors,
        )
        self._put(process)
        return process

    def _name_target(self, ev: Event) -> None:
        tc = ev.target_context
        if tc is None or tc.type != "pid":
            return
        entity = self._by_pid.get(tc.pid)
        target = self._processes.get(entity) if entity else None
        if target is None:
            target = self._from_proc(tc.pid, 0)
        if target is not None and target.name:
            ev.target_context = TargetContext(
                type="pid", pid=tc.pid, comm=target.name, formatted=f"pid {tc.pid} ({target.name})")
