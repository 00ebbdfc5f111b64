"""The event schema: every Struct an event is made of, and the event registry.

Modeled on Tracee's event structure v2 (names close to ECS/OpenTelemetry):
``timestamp``, ``name``, a stable integer ``id``, ``workload.process`` with
its parent, ``workload.container``, ``action``, ``target_context``, per-event
``data`` as a tagged union, and ``policy``/``threat``/``triggered_by`` where
they apply.

``Process``, ``Container`` and ``Workload`` values are shared by every event
of the same process: they are resolved once from the process table, never
rebuilt per event. The acting thread is ``Event.tid``.
"""

from __future__ import annotations

from typing import Annotated, Literal, Optional, Union

import msgspec

# The minor number counts additive changes: nothing is removed or renamed.
# 1.1: the proc_environ_open and pidfd_getfd methods; protected_file_changed
# also made by the kernel (refused, detected_not_prevented false).
# 1.2: Event.repeated (identical decisions the audit log folded into a line);
# LostData.source and LostData.error (records the audit log could not write,
# reported as "lost" with source "audit_log"); the clone_files method of
# ptrace_denied (a process sharing the caller's descriptor table, refused).
# 1.3: namespace_denied (a namespace made or joined, or a mount), and the
# "namespace" target.
SCHEMA_VERSION = "1.3"

# The event registry: name -> stable id. Add-only; an id is never reused or
# renumbered. The kernel record kinds in bpf/events.h use the same numbers.
EVENT_IDS: dict[str, int] = {
    "process_exec": 1,
    "process_fork": 2,
    "process_exit": 3,
    "file_open": 4,
    "net_connect": 5,
    "net_sendmsg": 6,
    "ptrace": 7,
    "process_memory": 8,
    "lost": 9,
    "connect_denied": 10,
    "exfil_blocked": 11,
    "open_inode": 12,
    "mirage_trap": 13,
    "ptrace_denied": 14,
    "mode_changed": 15,
    "protected_file_changed": 16,
    "namespace_denied": 17,
}
EVENT_NAMES: dict[int, str] = {v: k for k, v in EVENT_IDS.items()}

EventName = Literal[
    "process_exec",
    "process_fork",
    "process_exit",
    "file_open",
    "net_connect",
    "net_sendmsg",
    "ptrace",
    "process_memory",
    "lost",
    "connect_denied",
    "exfil_blocked",
    "open_inode",
    "mirage_trap",
    "ptrace_denied",
    "mode_changed",
    "protected_file_changed",
    "namespace_denied",
]

Action = Literal["observed", "blocked", "would_block", "killed"]


class ProcessRef(msgspec.Struct, frozen=True, gc=False, omit_defaults=True):
    """Another process, named from an event's process (its parent, an ancestor)."""

    pid: int
    entity_id: int
    name: Optional[str] = None
    executable: Optional[str] = None


class Process(msgspec.Struct, frozen=True, omit_defaults=True):
    """A process, shared by all of its events (resolved by entity id)."""

    pid: int
    entity_id: int
    name: str
    """The kernel's comm: at most 15 bytes."""
    executable: Optional[str] = None
    argv: Optional[list[str]] = None
    argv_truncated: bool = False
    uid: Optional[int] = None
    euid: Optional[int] = None
    gid: Optional[int] = None
    ppid: Optional[int] = None
    start_time: Optional[int] = None
    """Nanoseconds since the Unix epoch."""
    parent: Optional[ProcessRef] = None
    ancestors: list[ProcessRef] = []
    """Parent first, then its parent, as far as known."""


class Container(msgspec.Struct, frozen=True, gc=False, omit_defaults=True):
    id: str
    runtime: Optional[str] = None


class Pod(msgspec.Struct, frozen=True, gc=False, omit_defaults=True):
    name: Optional[str] = None
    namespace: Optional[str] = None
    uid: Optional[str] = None


class Workload(msgspec.Struct, frozen=True, omit_defaults=True):
    process: Process
    cgroup: Optional[str] = None
    """The cgroup v2 path, relative to the hierarchy's root."""
    container: Optional[Container] = None
    pod: Optional[Pod] = None


class TargetContext(msgspec.Struct, frozen=True, gc=False, omit_defaults=True):
    """What an event touched or was stopped from touching.

    ``formatted`` is always set: ``127.1.2.3:8080``, ``[::1]:443``,
    ``/etc/shadow (inode 1234 on 8:1)``, ``pid 4321 (bash)``, for a refused
    raw socket ``raw socket (ipv4, protocol 1)``, and for a refused namespace
    or mount ``unshare (mnt, user)`` or ``mount``.
    """

    type: Literal["ipv4", "ipv6", "inode", "pid", "socket", "namespace"]
    formatted: str
    address: Optional[str] = None
    port: Optional[int] = None
    device: Optional[int] = None
    """As ``os.stat().st_dev`` reports it."""
    inode: Optional[int] = None
    path: Optional[str] = None
    pid: Optional[int] = None
    comm: Optional[str] = None


class PolicyRef(msgspec.Struct, frozen=True, gc=False, omit_defaults=True):
    rule: str
    mode: Literal["audit", "enforce"]
    name: Optional[str] = None


class Threat(msgspec.Struct, frozen=True, gc=False, omit_defaults=True):
    description: str
    severity: Literal["info", "low", "medium", "high", "critical"]
    mitre_tactic: Optional[str] = None
    mitre_technique: Optional[str] = None


class TriggeredBy(msgspec.Struct, frozen=True, gc=False, omit_defaults=True):
    name: str
    id: int
    timestamp: int


# ---- per-event data: a tagged union on "type" (the event name) ----

class _Data(msgspec.Struct, frozen=True, gc=False, tag_field="type", omit_defaults=True):
    pass


class ProcessExecData(_Data, tag="process_exec"):
    executable: str
    argv: list[str]
    comm: str
    uid: int
    euid: int
    gid: int
    ppid: int
    parent_entity_id: int
    start_time: int
    return_code: int
    """0 for an exec that happened; -errno for one that failed."""
    executable_truncated: bool = False
    argv_truncated: bool = False


class ProcessForkData(_Data, tag="process_fork"):
    child_pid: int
    child_entity_id: int
    child_start_time: int


class ProcessExitData(_Data, tag="process_exit"):
    exit_code: Optional[int]
    """None when a signal ended the process."""
    signal: Optional[int]
    duration_ns: int
    core_dumped: bool = False


class FileOpenData(_Data, tag="file_open"):
    path: str
    """As the caller passed it (possibly relative)."""
    flags: int
    mode: int
    result: int
    """The new descriptor, or -errno."""
    device: int
    inode: int
    syscall: Literal["open", "openat", "openat2", "creat"]
    path_truncated: bool = False
    resolved_path: Optional[str] = None


class NetConnectData(_Data, tag="net_connect"):
    family: Literal["ipv4", "ipv6"]
    protocol: Optional[str]
    address: str
    port: int
    result: int
    """0, -errno, or -EINPROGRESS (-115) for a non-blocking connect under way."""
    fd: int


class NetSendmsgData(_Data, tag="net_sendmsg"):
    family: Literal["ipv4", "ipv6"]
    protocol: Optional[str]
    address: str
    port: int
    result: int
    """Bytes sent, or -errno."""
    fd: int
    syscall: Literal["sendto", "sendmsg"]


class PtraceData(_Data, tag="ptrace"):
    request: int
    target_pid: int
    result: int

    @property
    def request_name(self) -> str:
        return PTRACE_REQUESTS.get(self.request, f"PTRACE_{self.request}")


class ProcessMemoryData(_Data, tag="process_memory"):
    method: Literal["process_vm_readv", "process_vm_writev", "proc_mem_open", "proc_environ_open"]
    target_pid: int
    result: int
    flags: int = 0


class LostData(_Data, tag="lost"):
    """Records lost since the previous notice of the same source: those the
    ring buffer could not take (``source`` "ring_buffer", the default), or, in
    an audit log, events the log could not write (``source`` "audit_log":
    the disk was full, read-only or failing for longer than the retry queue
    could hold them). ``by_kind`` counts them per event name."""

    count: int
    by_kind: dict[str, int]
    source: Literal["ring_buffer", "audit_log"] = "ring_buffer"
    error: Optional[str] = None
    """source "audit_log": the last write error, an errno name such as "ENOSPC"."""


class _Decision(_Data):
    """A guard decision. ``rule_index`` points into the policy's compiled
    rules (-1: the network default, -2: taint, -3: the blanket ptrace deny,
    -4: raw sockets);
    the event's ``policy`` names the rule."""

    rule_index: int
    blocked: bool
    """Enforce mode: the operation was refused or the caller killed."""
    would_deny: bool
    """Audit mode: it would have been."""
    comm: str


class _EgressDecision(_Decision):
    family: Literal["ipv4", "ipv6", "packet"]
    protocol: Optional[str]
    tainted: bool = False
    """The process had touched a protected file or a decoy (taint.block_egress)."""


class ConnectDeniedData(_EgressDecision, tag="connect_denied"):
    """A connect to a denied destination."""


class ExfilBlockedData(_EgressDecision, tag="exfil_blocked"):
    """A send or connect to a denied destination, any egress of a tainted
    process, or a raw/packet socket (which would bypass the address hooks);
    "packet" family only for the last."""


class OpenInodeData(_Decision, tag="open_inode"):
    device: int
    inode: int


class MirageTrapData(_Decision, tag="mirage_trap"):
    device: int
    inode: int


class PtraceDeniedData(_Decision, tag="ptrace_denied"):
    method: Literal["ptrace", "process_vm_readv", "process_vm_writev", "proc_mem_open", "proc_environ_open",
                    "pidfd_getfd", "clone_files"]


class ProtectedFileChangedData(_Decision, tag="protected_file_changed"):
    """A protected file (or an entry of a protected directory) changed by path:
    unlink, rename, truncate, chmod/chown, a new entry. Where BPF LSM runs, the
    change is refused before it happens (``blocked``, EPERM to the caller;
    ``detected_not_prevented`` false). Elsewhere it is seen through fanotify
    after the fact (fanotify's permission events cover opens, so a change
    that needs one, a write or ``O_TRUNC``, is an ``open_inode`` refusal
    instead), and in enforce mode with ``files.action: kill`` the process
    that did it is killed then."""

    operation: Literal["delete", "move", "create", "modify", "attributes"]
    device: int
    inode: int
    detected_not_prevented: bool = True


NamespaceKind = Literal["time", "mnt", "cgroup", "uts", "ipc", "user", "pid", "net"]


class NamespaceDeniedData(_Decision, tag="namespace_denied"):
    """A guarded process made or joined namespaces, or mounted (policy
    section ``namespaces``). ``namespaces``: the kinds asked for (empty for
    a mount; every kind for a ``setns`` that does not say)."""

    operation: Literal["unshare", "clone", "clone3", "setns", "mount", "move_mount", "fsmount", "open_tree",
                       "mount_setattr", "pivot_root"]
    namespaces: tuple[NamespaceKind, ...]


class ModeChangedData(_Data, tag="mode_changed"):
    """A running guard switched between audit and enforce."""

    previous: Literal["audit", "enforce"]
    mode: Literal["audit", "enforce"]


EventData = Union[
    ProcessExecData,
    ProcessForkData,
    ProcessExitData,
    FileOpenData,
    NetConnectData,
    NetSendmsgData,
    PtraceData,
    ProcessMemoryData,
    LostData,
    ConnectDeniedData,
    ExfilBlockedData,
    OpenInodeData,
    MirageTrapData,
    PtraceDeniedData,
    ModeChangedData,
    ProtectedFileChangedData,
    NamespaceDeniedData,
]

BLOCK_EVENTS = ("connect_denied", "exfil_blocked", "open_inode", "mirage_trap", "ptrace_denied",
                "protected_file_changed", "namespace_denied")


class Event(msgspec.Struct, omit_defaults=True, gc=False):
    """One event. ``workload`` is filled in from the process table."""

    timestamp: int
    """Nanoseconds since the Unix epoch."""
    id: int
    name: EventName
    data: EventData
    seq: int = 0
    """Per-CPU sequence number: a gap means records were lost on that CPU."""
    cpu: int = 0
    pid: int = 0
    tid: int = 0
    entity_id: int = 0
    cgroup_id: int = 0
    workload: Optional[Workload] = None
    action: Action = "observed"
    target_context: Optional[TargetContext] = None
    policy: Optional[PolicyRef] = None
    threat: Optional[Threat] = None
    triggered_by: Optional[TriggeredBy] = None
    repeated: Annotated[int, msgspec.Meta(ge=0)] = 0
    """Audit log lines only: identical decisions (same event, rule, process,
    target, action and data) folded into this line since the previous line
    for them, besides the one it shows (the latest). A line stands for
    ``1 + repeated`` decisions; absent (0) on most lines."""


PTRACE_REQUESTS = {
    0: "PTRACE_TRACEME", 1: "PTRACE_PEEKTEXT", 2: "PTRACE_PEEKDATA", 3: "PTRACE_PEEKUSER",
    4: "PTRACE_POKETEXT", 5: "PTRACE_POKEDATA", 6: "PTRACE_POKEUSER", 7: "PTRACE_CONT",
    8: "PTRACE_KILL", 9: "PTRACE_SINGLESTEP", 12: "PTRACE_GETREGS", 13: "PTRACE_SETREGS",
    16: "PTRACE_ATTACH", 17: "PTRACE_DETACH", 24: "PTRACE_SYSCALL",
    0x4200: "PTRACE_SETOPTIONS", 0x4201: "PTRACE_GETEVENTMSG", 0x4202: "PTRACE_GETSIGINFO",
    0x4204: "PTRACE_GETREGSET", 0x4205: "PTRACE_SETREGSET", 0x4206: "PTRACE_SEIZE",
    0x4207: "PTRACE_INTERRUPT", 0x4208: "PTRACE_LISTEN",
}

# Created once, reused: the ring decoder and the NDJSON/msgpack codecs.
batch_decoder = msgspec.msgpack.Decoder(list[Event])
json_encoder = msgspec.json.Encoder()
json_decoder = msgspec.json.Decoder(Event)
msgpack_encoder = msgspec.msgpack.Encoder()
msgpack_decoder = msgspec.msgpack.Decoder(Event)


def json_schema() -> dict:
    """The JSON Schema of one NDJSON event line."""
    schema = msgspec.json.schema(Event)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = f"runtimeguard event, schema {SCHEMA_VERSION}"
    return schema
