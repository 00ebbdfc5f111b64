"""The process table: an event's process, at the event's time.

Process identity travels once, in process_exec and process_fork events; every
later event carries only pid, entity id, cgroup id and the acting task's
credentials and name. The table keeps each process's versions in time order
(an exec replaces the image; a setuid() or a new name seen in an event adds a
version from then on), so an event read late still gets the process as it
was when the event happened. Processes that started before the tracer are
read from /proc the first time they are seen, and kept only if /proc still
shows the same process (same start time).

One table serves every Tracer of the Python process (entity ids are the
host's); ``Event.workload`` reads it through ``schema.set_resolver``.
"""

from __future__ import annotations

import os
import re
import time
import threading
from typing import Callable, Iterable, Optional

import msgspec

from . import schema
from .schema import Container, Event, Process, ProcessRef, Workload

MAX_ANCESTORS = 8
MAX_PROCESSES = 32768
KEEP_EXITED = 2048
MAX_VERSIONS = 8  # per process: an exec or a change of credentials or name adds one
CGROUP_RESCAN_INTERVAL_S = 1.0
_EXEC, _FORK, _EXIT = (schema.EVENT_IDS[n] for n in ("process_exec", "process_fork", "process_exit"))

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
    """cgroup v2 id (the directory's inode number) to path, relative to the
    hierarchy's root. resolve(id) answers a miss in O(1) where it can (the
    native open_by_handle_at lookup); otherwise, or when it cannot say, the
    hierarchy is walked, at most once a second. Paths are kept once known
    (ids are never reused), so an event read after its cgroup was removed
    still names it, if it was seen before."""

    MAX_KNOWN = 65536

    def __init__(self, mount_point: Optional[str], resolve: Optional[Callable[[int], Optional[str]]] = None):
        self._mount = mount_point
        self._resolve = resolve
        self._paths: dict[int, str] = {}
        self.known = self._paths.keys()
        self._scanned_at = 0.0

    def path(self, cgroup_id: int) -> Optional[str]:
        if not cgroup_id or not self._mount:
            return None
        found = self._paths.get(cgroup_id)
        if found is None and self._resolve is not None:
            found = self._resolve(cgroup_id)
            if found is not None:
                self._keep({cgroup_id: found})
        if found is None and time.monotonic() - self._scanned_at > CGROUP_RESCAN_INTERVAL_S:
            self._rescan()
            found = self._paths.get(cgroup_id)
        return found

    def _keep(self, paths: dict[int, str]) -> None:
        self._paths.update(paths)
        if len(self._paths) > self.MAX_KNOWN:
            for key in list(self._paths)[: len(self._paths) - self.MAX_KNOWN]:
                del self._paths[key]

    def _rescan(self) -> None:
        self._scanned_at = time.monotonic()
        paths = {}
        for root, dirs, _ in os.walk(self._mount):
            try:
                paths[os.stat(root).st_ino] = "/" + os.path.relpath(root, self._mount).lstrip(".")
            except OSError:
                continue
        self._keep(paths)


class ProcessTable:
    """Processes by entity id, each a list of (since, Process) versions in
    time order; since is the epoch ns from which the version holds."""

    def __init__(self, entity_id: Callable[[int, int], int], realtime_offset_ns: Callable[[], int],
                 cgroup_mount: Optional[str], cgroup_path: Optional[Callable[[int], Optional[str]]] = None):
        self._entity_id = entity_id
        self._realtime_offset_ns = realtime_offset_ns
        self._ns_per_tick = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
        self._versions: dict[int, list[tuple[int, Process]]] = {}
        self._by_pid: dict[int, int] = {}
        # entity id -> (version since, cgroup id) -> Workload.
        self._workloads: dict[int, dict[tuple[int, int], Workload]] = {}
        # The last answer per process and cgroup: entity id -> cgroup id ->
        # (from, until, the credentials and name it was for, Workload). An
        # event in that window with the same credentials gets it at once.
        self._resolved: dict[int, dict[int, tuple]] = {}
        self._exited: dict[int, None] = {}
        self._cgroups = CgroupPaths(cgroup_mount, cgroup_path)
        # Tracers poll from their own threads; events are read from any.
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._versions)

    def get(self, entity_id: int) -> Optional[Process]:
        """The latest version of a process."""
        versions = self._versions.get(entity_id)
        return self._materialized(entity_id, len(versions) - 1) if versions else None

    def by_pid(self, pid: int) -> Optional[Process]:
        """The process now holding pid, from the table or /proc."""
        with self._lock:
            entity = self._by_pid.get(pid)
            return self.get(entity) if entity else self._from_proc(pid, 0)

    # ---- learning: exec, fork and exit events, in stream order ----
    #
    # Learning only files each event under its process (a version pending
    # until read); the Process is built when a version is first read. An
    # exec costs the consumer a few list and dict operations, and a process
    # nobody asks about costs nothing more.

    def learn(self, events: list[Event]) -> None:
        """Learns from exec, fork and exit events, in stream order (others are
        ignored), decoding them to find their processes. A Tracer hands the
        native consumer's entries to learn_entries instead."""
        entries = []
        for i, ev in enumerate(events):
            kind = ev.id
            if kind != _EXEC and kind != _FORK and kind != _EXIT:
                continue
            d = ev._details()
            if kind == _FORK:
                f = d.data
                entries.append((i, kind, f.child_pid, f.child_ns_pid or 0, f.child_pid_ns or 0, ev.pid,
                                f.child_entity_id, f.child_start_time, d.cgroup_id, d.entity_id, ev.timestamp))
            elif kind == _EXIT or d.data.return_code == 0:  # a failed exec changes nothing
                entries.append((i, kind, ev.pid, 0, 0, 0, d.entity_id, ev.timestamp, d.cgroup_id, 0, ev.timestamp))
        self.learn_entries(entries, events)

    def learn_entries(self, entries: Iterable[tuple], events) -> None:
        """entries: (event index, kind, pid, ns pid, pid namespace, parent
        pid, entity id, since, cgroup id, parent entity id, event time), as
        the native consumer's rg_table_entry lays them out (csrc/api.h);
        events[index] is an exec's event. A fork's entry is its whole story:
        it is kept as it is until read."""
        with self._lock:
            all_versions, by_pid, exited, cgroups = self._versions, self._by_pid, self._exited, self._cgroups
            for entry in entries:
                kind, pid, entity, since, cgroup = entry[1], entry[2], entry[6], entry[7], entry[8]
                if kind == _EXIT:
                    if entity in all_versions:
                        exited[entity] = None
                        if len(exited) > KEEP_EXITED + KEEP_EXITED // 4:  # forget in chunks, not one per exit
                            self._forget(list(exited)[: len(exited) - KEEP_EXITED])
                    continue
                # The cgroup's path now, while it exists: workloads are resolved
                # when read, possibly after the cgroup is gone (ids are never reused).
                if cgroup not in cgroups.known:
                    cgroups.path(cgroup)
                item = events[entry[0]] if kind == _EXEC else entry
                versions = all_versions.get(entity)
                if versions is None:
                    if len(all_versions) >= MAX_PROCESSES:
                        self._forget(list(all_versions)[: MAX_PROCESSES // 4])
                    all_versions[entity] = [(since, item)]
                else:
                    self._resolved.pop(entity, None)
                    if versions[-1][0] < since:
                        versions.append((since, item))
                        if len(versions) > MAX_VERSIONS:
                            del versions[0]
                    else:
                        self._insert(versions, since, item)
                by_pid[pid] = entity

    # ---- building a version when it is first read ----
    #
    # A version still unread is the exec's Event, or the fork's table entry.

    def _materialized(self, entity: int, i: int) -> Process:
        """Version i of a process, built now if it is still unread; its
        ancestors that are still unread first (no recursion: a chain of
        processes can be as long as the table)."""
        chain, seen = [], set()
        versions = self._versions[entity]
        while True:
            item = versions[i][1]
            if type(item) is Process:
                break
            chain.append((versions, i))
            seen.add(entity)
            if type(item) is tuple:
                entity, at = item[9], item[10]
            else:
                entity, at = item._details().data.parent_entity_id, item.timestamp
            parent_versions = self._versions.get(entity) if entity else None
            if not parent_versions or entity in seen:  # (a loop only from records that lie)
                break
            versions, i = parent_versions, self._pick(parent_versions, at)
        built = None
        for versions, i in reversed(chain):
            since, item = versions[i]
            built = self._build(item)
            versions[i] = (since, built)
        return built if chain else item

    # Processes are built positionally, in Process's field order: pid,
    # entity_id, name, executable, argv, argv_truncated, uid, euid, gid, ppid,
    # start_time, parent, ancestors, ns_pid, pid_ns.

    def _build(self, item) -> Process:
        if type(item) is tuple:
            # A fork: the child starts as a copy of its parent then.
            _, _, pid, ns_pid, pid_ns, parent_pid, entity, since, _, parent_entity, at = item
            parent = self._version_at(parent_entity, at) or self._from_proc(parent_pid, parent_entity)
            if parent is None:
                # Neither seen nor in /proc any more: what the fork itself says.
                return Process(pid, entity, "", None, None, False, None, None, None, parent_pid, since, None, [],
                               ns_pid, pid_ns)
            ref = _ref(parent)
            return Process(pid, entity, parent.name, parent.executable, parent.argv, parent.argv_truncated,
                           parent.uid, parent.euid, parent.gid, parent.pid, since, ref,
                           [ref, *parent.ancestors[: MAX_ANCESTORS - 1]], ns_pid, pid_ns)
        ev = item
        details = ev._details()
        d = details.data
        parent = self._version_at(d.parent_entity_id, ev.timestamp) or self._from_proc(d.ppid, d.parent_entity_id)
        ref = _ref(parent) if parent is not None else None
        ancestors = [ref, *parent.ancestors[: MAX_ANCESTORS - 1]] if parent is not None else []
        return Process(ev.pid, details.entity_id, d.comm, d.resolved_executable or d.executable, d.argv,
                       d.argv_truncated, d.uid, d.euid, d.gid, d.ppid, d.start_time, ref, ancestors, d.ns_pid,
                       d.pid_ns)

    def _add(self, since: int, process: Process) -> None:
        """A new version of a process from since on (one read from /proc)."""
        entity = process.entity_id
        self._resolved.pop(entity, None)
        versions = self._versions.get(entity)
        if versions is None:
            if len(self._versions) >= MAX_PROCESSES:
                self._forget(list(self._versions)[: MAX_PROCESSES // 4])
            versions = self._versions[entity] = []
        self._insert(versions, since, process)
        self._by_pid[process.pid] = entity

    @staticmethod
    def _insert(versions: list, since: int, item) -> None:
        at = len(versions)
        while at and versions[at - 1][0] > since:  # nearly always at the end
            at -= 1
        if at and versions[at - 1][0] == since:
            return  # learned twice (two tracers): one version
        versions.insert(at, (since, item))
        if len(versions) > MAX_VERSIONS:
            del versions[0]

    def _forget(self, entities: list[int]) -> None:
        for entity in entities:
            versions = self._versions.pop(entity, None)
            self._exited.pop(entity, None)
            self._workloads.pop(entity, None)
            self._resolved.pop(entity, None)
            if versions:
                last = versions[-1][1]
                pid = last[2] if type(last) is tuple else last.pid
                if self._by_pid.get(pid) == entity:
                    del self._by_pid[pid]

    # ---- resolving, when an event's workload is read ----

    def _version_at(self, entity: int, timestamp: int) -> Optional[Process]:
        versions = self._versions.get(entity)
        if not versions:
            return None
        return self._materialized(entity, self._pick(versions, timestamp))

    @staticmethod
    def _pick(versions: list, timestamp: int) -> int:
        """The index of the version in effect at timestamp."""
        for i in range(len(versions) - 1, -1, -1):
            if versions[i][0] <= timestamp:
                return i
        return 0  # before the first version known: the earliest

    def workload(self, ev: Event) -> Workload:
        """ev's process as it was at ev's time, in ev's cgroup; a version is
        added when the event shows credentials or a name the table did not
        have (a setuid() or prctl(PR_SET_NAME) since the exec or fork)."""
        d = ev._details()
        seen = (d.uid, d.euid, d.gid, d.comm)
        entity, cgroup, ts = d.entity_id, d.cgroup_id, ev.timestamp
        if entity:
            by_cgroup = self._resolved.get(entity)
            hit = by_cgroup.get(cgroup) if by_cgroup is not None else None
            if hit is not None and hit[0] <= ts < hit[1] and hit[2] == seen:
                return hit[3]
        with self._lock:
            return self._resolve(ev, seen)

    def _resolve(self, ev: Event, seen: tuple) -> Workload:
        entity, cgroup, ts = ev.entity_id, ev.cgroup_id, ev.timestamp
        if not entity and ev.pid:
            # Socket hooks cannot read the task: find the process by pid.
            entity = self._by_pid.get(ev.pid) or 0
            if not entity:
                found = self._from_proc(ev.pid, 0)
                entity = found.entity_id if found else 0
        versions = self._versions.get(entity) if entity else None
        if versions is None and entity and self._from_proc(ev.pid, entity) is not None:
            versions = self._versions.get(entity)
        if not versions:
            uid, euid, gid, comm = seen
            wl = Workload(process=Process(pid=ev.pid, entity_id=entity, name=comm, uid=uid, euid=euid, gid=gid),
                          cgroup=self._cgroups.path(cgroup), container=self._container(cgroup))
            if entity and ev.entity_id:
                self._remember(entity, cgroup, (-1 << 63, 1 << 63, seen, wl))
            return wl
        i = self._pick(versions, ts)
        process = self._materialized(entity, i)
        since = versions[i][0]
        changed = self._as_seen(process, seen)
        if changed is not None:
            since, process = ts, changed
            self._insert(versions, since, process)
            self._resolved.pop(entity, None)
            i = next(j for j, v in enumerate(versions) if v[0] == since)
        until = versions[i + 1][0] if i + 1 < len(versions) else 1 << 63
        by_key = self._workloads.setdefault(entity, {})
        wl = by_key.get((since, cgroup))
        if wl is None or wl.process is not process:
            path = self._cgroups.path(cgroup)
            wl = by_key[(since, cgroup)] = Workload(
                process=process, cgroup=path, container=container_from_cgroup(path) if path else None)
        if ev.entity_id:
            self._remember(entity, cgroup, (since, until, seen, wl))
        return wl

    def _remember(self, entity: int, cgroup: int, answer: tuple) -> None:
        if len(self._resolved) > MAX_PROCESSES:
            self._resolved.clear()
        self._resolved.setdefault(entity, {})[cgroup] = answer

    @staticmethod
    def _as_seen(process: Process, seen: tuple) -> Optional[Process]:
        """process with the credentials and name an event saw, where they
        differ (and are known); else None."""
        uid, euid, gid, comm = seen
        changes = {}
        if uid is not None and uid != process.uid:
            changes["uid"] = uid
        if euid is not None and euid != process.euid:
            changes["euid"] = euid
        if gid is not None and gid != process.gid:
            changes["gid"] = gid
        if comm and comm != process.name:
            changes["name"] = comm
        return msgspec.structs.replace(process, **changes) if changes else None

    def _container(self, cgroup_id: int) -> Optional[Container]:
        cgroup = self._cgroups.path(cgroup_id)
        return container_from_cgroup(cgroup) if cgroup else None

    def name_of(self, pid: int, timestamp: int) -> Optional[str]:
        """The name of the process holding pid (a ptrace target)."""
        with self._lock:
            entity = self._by_pid.get(pid)
            process = self._version_at(entity, timestamp) if entity else self._from_proc(pid, 0)
            return process.name if process is not None and process.name else None

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
        executable = _executable(base)
        try:
            with open(f"{base}/cmdline", "rb") as f:
                argv = [a.decode(errors="replace") for a in f.read().split(b"\0")[:-1]]
        except OSError:
            argv = None
        uids = gids = ns_pid = pid_ns = None
        try:
            with open(f"{base}/status") as f:
                for line in f:
                    if line.startswith("Uid:"):
                        uids = [int(x) for x in line.split()[1:3]]
                    elif line.startswith("Gid:"):
                        gids = [int(x) for x in line.split()[1:2]]
                    elif line.startswith("NSpid:"):
                        ns_pid = int(line.split()[-1])  # the innermost namespace's number
        except OSError:
            pass
        try:
            pid_ns = int(os.readlink(f"{base}/ns/pid").partition("[")[2].rstrip("]"))  # "pid:[4026531836]"
        except (OSError, ValueError):
            pass
        parent = None
        if depth < MAX_ANCESTORS and ppid > 0:
            parent_entity = self._by_pid.get(ppid)
            parent = self.get(parent_entity) if parent_entity else None
            if parent is None:
                parent = self._from_proc(ppid, 0, depth + 1)
        ancestors = [_ref(parent), *parent.ancestors[: MAX_ANCESTORS - 1]] if parent else []
        process = Process(
            pid=pid, entity_id=entity_id, name=name, executable=executable, argv=argv,
            uid=uids[0] if uids else None, euid=uids[1] if uids else None, gid=gids[0] if gids else None,
            ppid=ppid, start_time=start_boot_ns + self._realtime_offset_ns(),
            parent=ancestors[0] if ancestors else None, ancestors=ancestors, ns_pid=ns_pid, pid_ns=pid_ns,
        )
        self._add(0, process)  # since 0: it is all we know of its past
        return process


def _executable(base: str) -> Optional[str]:
    """A running process's executable as the exec event names it (its own
    path): /proc marks a file gone since with " (deleted)", a memfd too."""
    try:
        executable = os.readlink(f"{base}/exe")
    except OSError:
        return None
    if executable.endswith(_DELETED):
        try:
            if os.path.samefile(f"{base}/exe", executable):
                return executable  # a file really named so
        except OSError:
            pass
        return executable[: -len(_DELETED)]
    return executable


_DELETED = " (deleted)"
_shared: Optional[ProcessTable] = None
_shared_lock = threading.Lock()


def shared_table(entity_id: Callable[[int, int], int], realtime_offset_ns: Callable[[], int],
                 cgroup_mount: Optional[str],
                 cgroup_path: Callable[[], Optional[Callable[[int], Optional[str]]]] = lambda: None
                 ) -> ProcessTable:
    """The table every Tracer of this Python process feeds and reads, made
    by the first one (cgroup_path() gives its O(1) cgroup lookup, if any)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = ProcessTable(entity_id, realtime_offset_ns, cgroup_mount, cgroup_path())
            schema.set_resolver(_shared)
        return _shared
