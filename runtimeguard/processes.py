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
import struct
import time
import threading
import weakref
from typing import Callable, Iterable, Optional

import msgspec

from . import digests, schema
from ._native import ffi, lib
from . import containers
from .containers import ContainerCatalog, Described
from .digests import DigestCache
from .schema import BinaryDigest, Container, Event, Pod, Process, ProcessRef, Workload

MAX_ANCESTORS = 8
MAX_PROCESSES = 32768
KEEP_EXITED = 2048
MAX_VERSIONS = 8  # per process: an exec or a change of credentials or name adds one
CGROUP_RESCAN_INTERVAL_S = 1.0
_EXEC, _FORK, _EXIT = (schema.EVENT_IDS[n] for n in ("process_exec", "process_fork", "process_exit"))
_LATEST = (1 << 63) - 1
# struct rg_proc_version (csrc/api.h), and room for it and any details after it.
_VERSION = struct.Struct("=qqIIIIIIQqQ")
assert _VERSION.size == ffi.sizeof("struct rg_proc_version")
_FOUND_SIZE = _VERSION.size + lib.RG_MAX_ENCODED_RECORD
_process_encoder = msgspec.msgpack.Encoder()
_process_decoder = msgspec.msgpack.Decoder(Process)
container_from_cgroup = containers.container_from_cgroup  # where callers found it before containers.py

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
    """Processes by entity id, each with its versions in time order (since:
    the epoch ns from which a version holds).

    The versions live in the native store (csrc/proctable.c), which every
    Tracer's polls teach as they drain the ring: an exec, fork or exit costs
    no Python when it happens. A Process is built from a version the first
    time it is read (an exec's from its event, a fork's from its parent's
    version then) and kept. Versions made here (a process read from /proc,
    credentials or a name an event showed) go to the store as msgpack.

    container_root is where container runtimes' files are read
    (runtimeguard/containers.py): "/", or the host's root mounted elsewhere."""

    def __init__(self, entity_id: Callable[[int, int], int], realtime_offset_ns: Callable[[], int],
                 cgroup_mount: Optional[str], cgroup_path: Optional[Callable[[int], Optional[str]]] = None,
                 container_root: str = "/", digests: Optional[DigestCache] = None):
        self._entity_id = entity_id
        self._realtime_offset_ns = realtime_offset_ns
        self._ns_per_tick = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
        store = lib.rg_proc_table_new(MAX_PROCESSES, KEEP_EXITED, MAX_VERSIONS)
        if store == ffi.NULL:
            raise MemoryError("allocating the process table")
        self.native = ffi.gc(store, lib.rg_proc_table_free)
        # (entity id, since) -> the Process built from that version.
        self._built: dict[tuple[int, int], Process] = {}
        # (entity id, since, cgroup id) -> (the credentials and name it was
        # for, Workload): an event of that version, seeing the same, gets it at once.
        self._workloads: dict[tuple[int, int, int], tuple] = {}
        # (entity id, cgroup id) -> (generation, from, until, credentials and
        # name, Workload): the last answer, good for any event in [from,
        # until) seeing the same while the store has learned no new version.
        self._recent: dict[tuple[int, int], tuple] = {}
        self._generation = lib.rg_proc_table_generation(self.native)
        self._cgroups = CgroupPaths(cgroup_mount, cgroup_path)
        # cgroup path -> its container and pod, read once (again after
        # retry_at while the runtime's files are not there yet).
        self._catalog = ContainerCatalog(container_root)
        self._containers: dict[str, Described] = {}
        self._buffers = threading.local()
        # Versions are made here from any thread that reads events.
        self._lock = threading.RLock()
        # Executables' digests, computed by the cache's worker: a version
        # built before its digest was ready waits here, (entity id, since) ->
        # the request (pid, device, inode), and gets it when next read.
        self._digests = digests
        self._digest_pending: dict[tuple[int, int], tuple[int, int, int]] = {}
        if digests is not None:
            table = weakref.ref(self)

            def digest_ready() -> None:
                # Cached workloads were made without it: make them again.
                alive = table()
                if alive is not None and alive._digest_pending:
                    lib.rg_proc_table_touch(alive.native)

            digests.add_listener(digest_ready)

    def __len__(self) -> int:
        return lib.rg_proc_table_count(self.native)

    def get(self, entity_id: int) -> Optional[Process]:
        """The latest version of a process."""
        found = self._version_at(entity_id, _LATEST)
        return found[2] if found else None

    def by_pid(self, pid: int) -> Optional[Process]:
        """The process now holding pid, from the table or /proc."""
        with self._lock:
            entity = lib.rg_proc_table_by_pid(self.native, pid)
            return self.get(entity) if entity else self._from_proc(pid, 0)

    def meet(self, batch) -> None:
        """What a poll's batch (rg_batch) showed the table first, looked up
        while it exists, since workloads are resolved when read, possibly
        after: the paths of new cgroups (ids are never reused), and the
        parents that predate the tracer, from /proc."""
        self.name_cgroups(ffi.unpack(batch.fresh_cgroups, batch.fresh_cgroup_count))
        if batch.stranger_count:
            with self._lock:
                for i in range(batch.stranger_count):
                    entity = batch.stranger_entities[i]
                    if not lib.rg_proc_table_since(self.native, entity, _LATEST, self._found().since):
                        self._from_proc(batch.stranger_pids[i], entity)

    def name_cgroups(self, cgroup_ids: Iterable[int]) -> None:
        for cgroup in cgroup_ids:
            self._cgroups.path(cgroup)

    # ---- learning, for events that did not come through a Tracer's poll ----

    def learn(self, events: list[Event]) -> None:
        """Learns from exec, fork and exit events, in stream order (others are
        ignored), as a Tracer's poll does from the native consumer's entries."""
        entries = ffi.new("struct rg_table_entry[]", max(1, len(events)))
        blob, n, cgroups = bytearray(), 0, set()
        for ev in events:
            kind = ev.id
            if kind != _EXEC and kind != _FORK and kind != _EXIT:
                continue
            d = ev._details()
            e = entries[n]
            e.kind, e.entity_id, e.cgroup_id, e.at, e.pid, e.since = kind, d.entity_id, d.cgroup_id, \
                ev.timestamp, ev.pid, ev.timestamp
            if kind == _FORK:
                f = d.data
                e.pid, e.entity_id, e.since = f.child_pid, f.child_entity_id, f.child_start_time
                e.ns_pid, e.pid_ns = f.child_ns_pid or 0, f.child_pid_ns or 0
                e.parent_pid, e.parent_entity_id = ev.pid, d.entity_id
            elif kind == _EXEC:
                if d.data.return_code != 0:
                    continue  # a failed exec changes nothing
                details = ev.details if ev.encoded else schema._encode_details(ev.details, ev.timestamp)
                e.parent_pid, e.parent_entity_id = d.data.ppid, d.data.parent_entity_id
                e.details_offset, e.details_len = len(blob), len(details)
                blob += details
            cgroups.add(d.cgroup_id)
            n += 1
        lib.rg_proc_table_learn(self.native, entries, n, ffi.from_buffer(bytes(blob) or b"\0"), 0)
        self.name_cgroups(cgroups)

    # ---- building a Process from a version, when first read ----

    def _found(self):
        """This thread's buffers for the native store's answers."""
        b = self._buffers
        if not hasattr(b, "out"):
            b.out = ffi.new("unsigned char[]", _FOUND_SIZE)
            b.view = memoryview(ffi.buffer(b.out))
            b.since = ffi.new("long long *")
        return b

    def _find(self, entity: int, timestamp: int, b) -> Optional[tuple]:
        """The version of entity at timestamp, as struct rg_proc_version's
        fields (since, until, kind, pid, ns pid, pid namespace, parent pid,
        details length, parent entity id, event time); its details follow
        it in b.view."""
        if lib.rg_proc_table_find(self.native, entity, timestamp, b.out, _FOUND_SIZE) < 0:
            return None
        return _VERSION.unpack_from(b.view)

    def _version_at(self, entity: int, timestamp: int) -> Optional[tuple[int, int, Process]]:
        """(since, until, Process) of the version of entity in effect at
        timestamp (the earliest, before them all); None if unknown."""
        if not entity:
            return None
        b = self._found()
        v = self._find(entity, timestamp, b)
        if v is None:
            return None
        process = self._built.get((entity, v[0]))
        if process is None:
            process = self._build_chain(entity, v, b)
        if self._digest_pending and (entity, v[0]) in self._digest_pending:
            process = self._with_digest((entity, v[0]), process)
        return v[0], v[1], process

    def _digest_of(self, key: tuple[int, int], pid: int, device: Optional[int], inode: Optional[int],
                   path: Optional[str]) -> Optional[BinaryDigest]:
        """The digest of the file a version runs, if ready; else asked for
        (the version then waits for it in _digest_pending)."""
        if self._digests is None or device is None or inode is None:
            return None
        found = self._digests.answer(pid, device, inode)
        if found is None:
            self._digests.request(pid, device, inode, path)
            self._digest_pending[key] = (pid, device, inode)
        return found

    def _with_digest(self, key: tuple[int, int], process: Process) -> Process:
        found = self._digests.answer(*self._digest_pending[key])
        if found is None:
            return process
        del self._digest_pending[key]
        process = msgspec.structs.replace(process, executable_digest=found)
        self._built[key] = process
        return process

    def _build_chain(self, entity: int, v: tuple, b) -> Process:
        """Builds the version v (just found), after those of its ancestors it
        stands on that are unread too (no recursion: a chain of processes can
        be as long as the table)."""
        pending, seen = [], set()
        while True:
            key = (entity, v[0])
            if key in self._built:
                break
            pending.append((key, v, b.view[_VERSION.size:_VERSION.size + v[7]].tobytes()))
            seen.add(entity)
            entity = v[8]
            if v[2] == lib.RG_VERSION_MADE or not entity or entity in seen:  # (a loop: records that lie)
                break
            v = self._find(entity, v[9], b)
            if v is None:
                break
        built = self._built.get(key)
        for key, v, details in reversed(pending):
            built = self._build(key, v, details)
            self._keep(key, built)
        return built

    def _keep(self, key: tuple[int, int], process: Process) -> None:
        built = self._built
        if len(built) >= MAX_PROCESSES:  # rebuilt from the store if read again
            for old in list(built)[: MAX_PROCESSES // 4]:
                del built[old]
        built[key] = process

    # Processes are built positionally, in Process's field order: pid,
    # entity_id, name, executable, argv, argv_truncated, uid, euid, gid, ppid,
    # start_time, parent, ancestors, ns_pid, pid_ns, exec_id, auid, tty, cwd,
    # identities, executable_digest.

    def _build(self, key: tuple[int, int], v: tuple, details: bytes) -> Process:
        entity, since = key
        _, _, kind, pid, ns_pid, pid_ns, parent_pid, _, parent_entity, at, boot_ns = v
        if kind == lib.RG_VERSION_MADE:
            return _process_decoder.decode(details)
        found = self._version_at(parent_entity, at)
        parent = found[2] if found else self._from_proc(parent_pid, parent_entity)
        ref = _ref(parent) if parent is not None else None
        ancestors = [ref, *parent.ancestors[: MAX_ANCESTORS - 1]] if parent is not None else []
        if kind == _FORK:
            # The child starts as a copy of its parent then.
            exec_id = exec_id_of(pid, boot_ns) if boot_ns else None
            if parent is not None and found and parent.executable_digest is None \
                    and (parent_entity, found[0]) in self._digest_pending:
                self._digest_pending[key] = self._digest_pending[(parent_entity, found[0])]
            if parent is None:
                # Neither seen nor in /proc any more: what the fork itself says.
                return Process(pid, entity, "", None, None, False, None, None, None, parent_pid, since, None, [],
                               ns_pid, pid_ns, exec_id)
            return Process(pid, entity, parent.name, parent.executable, parent.argv, parent.argv_truncated,
                           parent.uid, parent.euid, parent.gid, parent.pid, since, ref, ancestors, ns_pid, pid_ns,
                           exec_id, parent.auid, parent.tty, parent.cwd, parent.identities,
                           parent.executable_digest)
        d = schema._details_decoder.decode(details).data
        digest = self._digest_of(key, pid, d.executable_device, d.executable_inode, d.resolved_executable)
        return Process(pid, entity, d.comm, d.resolved_executable or d.executable, d.argv, d.argv_truncated,
                       d.uid, d.euid, d.gid, d.ppid, d.start_time, ref, ancestors, d.ns_pid, d.pid_ns,
                       d.exec_id, d.auid, d.tty, d.cwd, d.identities, digest)

    def _add(self, since: int, process: Process) -> None:
        """A version made here: a process read from /proc, or one as an event saw it."""
        encoded = _process_encoder.encode(process)
        if lib.rg_proc_table_add(self.native, process.entity_id, process.pid, since, encoded, len(encoded)) == 0:
            self._keep((process.entity_id, since), process)

    # ---- resolving, when an event's workload is read ----

    def workload(self, ev: Event) -> Workload:
        """ev's process as it was at ev's time, in ev's cgroup; a version is
        added when the event shows credentials or a name the table did not
        have (a setuid() or prctl(PR_SET_NAME) since the exec or fork)."""
        d = ev._details()
        seen = (d.uid, d.euid, d.gid, d.comm)
        entity, cgroup, ts = d.entity_id, d.cgroup_id, ev.timestamp
        if entity:
            hit = self._recent.get((entity, cgroup))
            if hit is not None and hit[0] == self._generation[0] and hit[1] <= ts < hit[2] and hit[3] == seen:
                return hit[4]
        with self._lock:
            generation = self._generation[0]
            since, until, wl = self._resolve(ev, seen)
            if entity:
                recent = self._recent
                if len(recent) >= MAX_PROCESSES:
                    recent.clear()
                recent[(entity, cgroup)] = (generation, since, until, seen, wl)
            return wl

    def _resolve(self, ev: Event, seen: tuple) -> tuple[int, int, Workload]:
        """(since, until, Workload): the window of time it holds for."""
        entity, cgroup, ts = ev.entity_id, ev.cgroup_id, ev.timestamp
        if not entity and ev.pid:
            # Socket hooks cannot read the task: find the process by pid.
            entity = lib.rg_proc_table_by_pid(self.native, ev.pid)
            if not entity:
                found = self._from_proc(ev.pid, 0)
                entity = found.entity_id if found else 0
        found = self._version_at(entity, ts)
        if found is None and entity and self._from_proc(ev.pid, entity) is not None:
            found = self._version_at(entity, ts)
        if found is None:
            # Neither learned nor in /proc: the event says what it can (kept
            # until the store learns something new, not read from /proc again).
            uid, euid, gid, comm = seen
            container, pod = self._container(cgroup)
            return -_LATEST - 1, _LATEST, Workload(
                process=Process(pid=ev.pid, entity_id=entity, name=comm, uid=uid, euid=euid, gid=gid),
                cgroup=self._cgroups.path(cgroup), container=container, pod=pod)
        since, until, process = found
        changed = self._as_seen(process, seen)
        if changed is not None:
            self._add(ts, changed)
            since, until, process = self._version_at(entity, ts) or (ts, until, changed)
        key = (entity, since, cgroup)
        hit = self._workloads.get(key)
        if hit is not None and hit[1].process is process:
            wl = hit[1]
        else:
            path = self._cgroups.path(cgroup)
            container, pod = self._container_of(path) if path else (None, None)
            wl = Workload(process=process, cgroup=path, container=container, pod=pod)
        if len(self._workloads) >= MAX_PROCESSES:
            for old in list(self._workloads)[: MAX_PROCESSES // 4]:
                del self._workloads[old]
        self._workloads[key] = (seen, wl)
        return since, until, wl

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

    def container(self, cgroup_id: int) -> Optional[Container]:
        """The container a cgroup belongs to, or None."""
        with self._lock:
            return self._container(cgroup_id)[0]

    def _container(self, cgroup_id: int) -> tuple[Optional[Container], Optional[Pod]]:
        cgroup = self._cgroups.path(cgroup_id)
        return self._container_of(cgroup) if cgroup else (None, None)

    def _container_of(self, path: str) -> tuple[Optional[Container], Optional[Pod]]:
        found = self._containers.get(path)
        if found is None or (found.retry_at is not None and time.monotonic() >= found.retry_at):
            if len(self._containers) >= CgroupPaths.MAX_KNOWN:
                self._containers.clear()
            found = self._containers[path] = self._catalog.describe(path)
        return found.container, found.pod

    def set_container_root(self, root: str) -> None:
        """Reads container runtimes' files under root from now on; what was
        resolved under the old root is forgotten, not mixed with the new."""
        with self._lock:
            self._catalog = ContainerCatalog(root)
            self._containers.clear()
            self._workloads.clear()
            self._recent.clear()

    def name_of(self, pid: int, timestamp: int) -> Optional[str]:
        """The name of the process holding pid (a ptrace target)."""
        with self._lock:
            entity = lib.rg_proc_table_by_pid(self.native, pid)
            found = self._version_at(entity, timestamp) if entity else None
            process = found[2] if found else self._from_proc(pid, 0)
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
        ppid, tty_nr, start_ticks = int(fields[1]), int(fields[4]), int(fields[19])
        start_boot_ns = start_ticks * self._ns_per_tick
        if self._entity_id(pid, start_boot_ns) != entity_id and entity_id:
            return None
        entity_id = entity_id or self._entity_id(pid, start_boot_ns)
        executable = _executable(base)
        try:
            exe = os.stat(f"{base}/exe")
            exe_file = (exe.st_dev, exe.st_ino)
        except OSError:
            exe_file = (None, None)
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
        auid = cwd = None
        try:
            with open(f"{base}/loginuid") as f:
                auid = int(f.read())
        except (OSError, ValueError):
            pass
        try:
            cwd = os.readlink(f"{base}/cwd")
        except OSError:
            pass
        parent = None
        if depth < MAX_ANCESTORS and ppid > 0:
            parent_entity = lib.rg_proc_table_by_pid(self.native, ppid)
            parent = self.get(parent_entity) if parent_entity else None
            if parent is None:
                parent = self._from_proc(ppid, 0, depth + 1)
        ancestors = [_ref(parent), *parent.ancestors[: MAX_ANCESTORS - 1]] if parent else []
        process = Process(
            pid=pid, entity_id=entity_id, name=name, executable=executable, argv=argv,
            uid=uids[0] if uids else None, euid=uids[1] if uids else None, gid=gids[0] if gids else None,
            ppid=ppid, start_time=start_boot_ns + self._realtime_offset_ns(),
            parent=ancestors[0] if ancestors else None, ancestors=ancestors, ns_pid=ns_pid, pid_ns=pid_ns,
            exec_id=exec_id_of(pid, start_boot_ns), auid=None if auid == _AUID_UNSET else auid,
            tty=_tty_name(tty_nr), cwd=cwd,
        )
        digest = self._digest_of((entity_id, 0), pid, *exe_file, executable)
        if digest is not None:
            process = msgspec.structs.replace(process, executable_digest=digest)
        self._add(0, process)  # since 0: it is all we know of its past
        return process


def exec_id_of(pid: int, boot_ns: int) -> str:
    """An image's exec_id: this boot's id, the pid, and the boot-clock time
    the image started (as the native encoder makes an exec's)."""
    return f"{_BOOT_ID}:{pid}:{boot_ns}"


_BOOT_ID = ffi.string(lib.rg_boot_id()).decode()
_AUID_UNSET = 0xFFFFFFFF


def _tty_name(tty_nr: int) -> Optional[str]:
    """/proc/<pid>/stat's tty_nr as the exec event names a terminal: pty
    slaves (majors 136-143) pts/N, virtual consoles ttyN, serial lines ttySN."""
    major, minor = (tty_nr >> 8) & 0xFFF, (tty_nr & 0xFF) | ((tty_nr >> 12) & 0xFFF00)
    if 136 <= major <= 143:
        return f"pts/{(major - 136) * 256 + minor}"
    if major == 4:
        return f"tty{minor}" if minor < 64 else f"ttyS{minor - 64}"
    if major == 5 and minor == 1:
        return "console"
    return None


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
_container_root = "/"


def set_container_root(root: str) -> None:
    """Where the shared table (every Tracer's) reads container runtimes'
    files: "/" unless the host's root is mounted elsewhere (runtimeguard in
    a container, the host's / at /host), or a test lays out its own. Holds
    for the table now, and for the one the first Tracer makes."""
    global _container_root
    with _shared_lock:
        _container_root = root
        if _shared is not None:
            _shared.set_container_root(root)


def shared_table(entity_id: Callable[[int, int], int], realtime_offset_ns: Callable[[], int],
                 cgroup_mount: Optional[str],
                 cgroup_path: Callable[[], Optional[Callable[[int], Optional[str]]]] = lambda: None
                 ) -> ProcessTable:
    """The table every Tracer of this Python process feeds and reads, made
    by the first one (cgroup_path() gives its O(1) cgroup lookup, if any)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = ProcessTable(entity_id, realtime_offset_ns, cgroup_mount, cgroup_path(), _container_root,
                                   digests.shared_cache())
            schema.set_resolver(_shared)
        return _shared
