"""The event schema: every Struct an event is made of, and the event registry.

Two shapes of one event. ``Event`` is what a Tracer hands out: its header
decoded with the batch, the rest when read. ``EventRecord`` is the whole
event, the NDJSON line, modeled on Tracee's event structure v2 (names close
to ECS/OpenTelemetry): ``timestamp``, ``name``, a stable integer ``id``,
``workload.process`` with its parent, ``workload.container``, ``action``,
``target_context``, per-event ``data`` as a tagged union, and
``policy``/``threat``/``triggered_by`` where they apply.

``Process``, ``Container`` and ``Workload`` values are shared by the events
of one process version (an exec, a change of credentials or name starts
another): the process table resolves them, never rebuilding one per event.
The acting thread is ``Event.tid``.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Annotated, Literal, Optional, Union

import msgspec

from ._native import ffi, lib

# The minor number counts additive changes: nothing is removed or renamed.
# 1.1: the proc_environ_open and pidfd_getfd methods; protected_file_changed
# also made by the kernel (refused, detected_not_prevented false).
# 1.2: Event.repeated (identical decisions the audit log folded into a line);
# LostData.source and LostData.error (records the audit log could not write,
# reported as "lost" with source "audit_log"); the clone_files method of
# ptrace_denied (a process sharing the caller's descriptor table, refused).
# 1.3: namespace_denied (a namespace made or joined, or a mount), and the
# "namespace" target.
# 1.4: workload.process is the process as it was at the event's time: its
# uid, euid, gid and name are the acting task's then (a setuid() or
# prctl(PR_SET_NAME) after the exec shows), no longer those of the exec;
# net_connect and net_sendmsg carry local_address and local_port; the pid
# in the process's own pid namespace and that namespace's inode
# (process_exec ns_pid/pid_ns, process_fork child_ns_pid/child_pid_ns,
# Process ns_pid/pid_ns); executable_bytes, argv_bytes, comm_bytes and
# path_bytes where the kernel's text is not valid UTF-8.
# 1.5: the file an exec really ran (process_exec resolved_executable,
# executable_device, executable_inode, fileless) and the file an open really
# opened (file_open resolved_path), both resolved in the kernel;
# workload.process.executable is the executed file's own path.
# 1.6: the context an exec starts in (process_exec auid, suid, fsuid,
# cap_effective, cap_permitted, stdin/stdout/stderr, tty, cwd, secureexec,
# exec_id; Process exec_id, auid, tty, cwd); containers and pods named from
# the runtime's files on disk; executables' digests (BinaryDigest);
# detection events, Threat MITRE ids, TriggeredBy pid/entity_id.
# 1.7: function_call (a uprobe's or USDT probe's hit, runtimeguard.calls).
# 1.8: dns_answer (a DNS answer a guarded process received); TargetContext
# hostname (the name the process resolved for the destination), reverse_name
# and reverse_confirmed (its PTR name, when no answer was seen).
SCHEMA_VERSION = "1.8"

# The event registry: name -> stable id, from the one table of kinds
# (RG_EVENT_KINDS in bpf/events.h, which the kernel records use too).
# Add-only; an id is never reused or renumbered.
EVENT_IDS: dict[str, int] = {
    ffi.string(lib.rg_kinds[k].name).decode(): k for k in range(lib.RG_KIND_SLOTS) if lib.rg_kinds[k].name
}
EVENT_NAMES: dict[int, str] = {v: k for k, v in EVENT_IDS.items()}
if TYPE_CHECKING:
    # The names come from the compiled table, which a type checker cannot
    # read: to it an event name is a str; msgspec checks the real Literal.
    EventName = str
else:
    EventName = Literal[tuple(EVENT_IDS)]
# The guard's decisions: they carry an action and a target.
BLOCK_EVENTS = tuple(name for name, k in EVENT_IDS.items() if lib.rg_kinds[k].decision)

Action = Literal["observed", "blocked", "would_block", "killed"]

# What a descriptor is (process_exec's stdin, stdout, stderr), from the
# kernel's table of kinds (RG_FD_KINDS in bpf/events.h): RG_FD_INET_SOCKET
# is "inet_socket".
FD_KINDS: dict[int, str] = {getattr(lib, n): n[len("RG_FD_"):].lower() for n in dir(lib)
                            if n.startswith("RG_FD_") and isinstance(getattr(lib, n), int)}
if TYPE_CHECKING:
    FdKind = str  # from the compiled table, like EventName
else:
    FdKind = Literal[tuple(FD_KINDS[k] for k in sorted(FD_KINDS))]

# Linux capability numbers (linux/capability.h), for the exec's bit masks.
CAPABILITIES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL", "CAP_SETGID",
    "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)


def capability_names(mask: int) -> list[str]:
    """The capabilities a bit mask holds, by name; a bit past the known ones
    as ``CAP_<n>``."""
    return [CAPABILITIES[n] if n < len(CAPABILITIES) else f"CAP_{n}" for n in range(64) if mask >> n & 1]


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
    """The executed file's own path (``resolved_executable`` of its exec, or
    ``/proc/<pid>/exe``), whichever name the exec was given."""
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
    ns_pid: Optional[int] = None
    """The pid as the process sees it, in its own pid namespace."""
    pid_ns: Optional[int] = None
    """That pid namespace's inode number."""
    exec_id: Optional[str] = None
    """This process image's id, unique across hosts and reboots:
    ``<boot_id>:<pid>:<ns>``, where ns is the boot-clock time the image
    started: its exec (the exec event's ``exec_id``), or, for a forked child
    that has not exec'd, its start. A process that predates the tracer
    gets its start at clock-tick resolution, as /proc gives it."""
    auid: Optional[int] = None
    """The login uid (None: never set), as its exec saw it."""
    tty: Optional[str] = None
    """The controlling terminal (``pts/3``), as its exec saw it."""
    cwd: Optional[str] = None
    """The working directory at its exec."""
    identities: list[str] = []
    """The machine identities it holds (``env:OPENAI_API_KEY``,
    ``argv:openai``), as its exec showed them; a forked child has its
    parent's. Empty when none was found, or none looked for: no pattern was
    registered at its exec, or it predates the tracer (whose environment is
    never read from user space)."""
    executable_digest: Optional[BinaryDigest] = None
    """The executable's content digest (sha256, ELF build-id), computed off
    the event path the first time the process is read; None until it is
    ready (a later read of the process has it)."""


class Container(msgspec.Struct, frozen=True, gc=False, omit_defaults=True):
    """The container an event's process runs in: what its cgroup path says,
    and what the runtime's files on disk add (runtimeguard/containers.py)."""

    id: str
    """The runtime's 64-hex container id."""
    runtime: Optional[str] = None
    """docker, containerd, cri-o or podman; where the path's shape does not
    say, the runtime whose files name the id, else "kubernetes" (kubelet's
    cgroupfs layout) or "github-actions" (a job container)."""
    name: Optional[str] = None
    """The container's name: Kubernetes' container name in a pod, else the
    runtime's (docker's without the leading "/")."""
    image: Optional[str] = None
    """The image as the container was created from it (e.g.
    "docker.io/library/nginx:1.27"), as the runtime recorded it."""


class Pod(msgspec.Struct, frozen=True, gc=False, omit_defaults=True):
    """The Kubernetes pod a container belongs to."""

    name: Optional[str] = None
    namespace: Optional[str] = None
    uid: Optional[str] = None
    """With dashes, as the API server shows it (cgroup paths under the
    systemd driver write it with underscores); a static pod's is the 32-hex
    hash kubelet gives it."""
    qos_class: Optional[Literal["guaranteed", "burstable", "besteffort"]] = None
    """From the pod's place in the kubepods cgroup tree."""


class BinaryDigest(msgspec.Struct, frozen=True, gc=False, omit_defaults=True):
    """An executable identified by its content (``runtimeguard.digests``
    computes it): one value per file version, shared by every process that
    runs it."""

    sha256: Optional[str] = None
    """The whole file's SHA-256, lowercase hex; None when ``error`` says why."""
    build_id: Optional[str] = None
    """The ELF GNU build-id (the first ``NT_GNU_BUILD_ID`` note of a
    ``PT_NOTE`` segment), lowercase hex, as ``readelf -n`` prints it; None
    for a script or an ELF file without one."""
    size: int = 0
    """The file's size in bytes; 0 when it could not be looked at."""
    error: Optional[str] = None
    """Why there is no ``sha256``: ``gone`` (the process exited and its file
    cannot be found any more), ``permission denied``, ``too large (N bytes >
    limit L)``, ``changed while being read``, ``not a regular file``, or the
    system's error text."""


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
    hostname: Optional[str] = None
    """A network target: the name the process asked DNS for when it was
    answered with this address (a guard's observed answer), lower case."""
    reverse_name: Optional[str] = None
    """A network target no observed answer named: its PTR name, when the
    guard looked it up."""
    reverse_confirmed: Optional[bool] = None
    """Whether reverse_name resolves forward to this address again (a PTR
    record alone proves nothing: whoever owns the address writes it)."""


class PolicyRef(msgspec.Struct, frozen=True, gc=False, omit_defaults=True):
    rule: str
    mode: Literal["audit", "enforce"]
    name: Optional[str] = None


class Threat(msgspec.Struct, frozen=True, gc=False, omit_defaults=True):
    """Why an event matters: what happened in plain words, how bad, and
    where it sits in MITRE ATT&CK (ids and names as ATT&CK publishes them)."""

    description: str
    severity: Literal["info", "low", "medium", "high", "critical"]
    mitre_tactic: Optional[str] = None
    """The tactic's name ("Execution")."""
    mitre_technique: Optional[str] = None
    """The technique's name ("Unix Shell"; a sub-technique's own name)."""
    mitre_tactic_id: Optional[str] = None
    """The tactic's id ("TA0002")."""
    mitre_technique_id: Optional[str] = None
    """The technique's id ("T1059.004")."""


class TriggeredBy(msgspec.Struct, frozen=True, gc=False, omit_defaults=True):
    """An event a detection stands on, named well enough to find its line."""

    name: str
    id: int
    timestamp: int
    pid: Optional[int] = None
    entity_id: Optional[int] = None


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
    ns_pid: Optional[int] = None
    """The pid as the process sees it, in its own pid namespace."""
    pid_ns: Optional[int] = None
    """That pid namespace's inode number (as ``/proc/<pid>/ns/pid`` names it)."""
    resolved_executable: Optional[str] = None
    """The executed file's own path as the process names it (from its root
    directory, a chroot's own), found from the file itself at exec (``./x``,
    ``/dev/fd/3``, a symlink all resolve); a memfd shows as
    ``/memfd:<name>``. For a script, the interpreter the kernel ran it with
    (as ``/proc/<pid>/exe`` says; the script is in ``argv``). None for a
    failed exec."""
    resolved_executable_truncated: bool = False
    """The path was longer than the limit: its start is cut, its end (the
    file's name) kept."""
    executable_device: Optional[int] = None
    """The executed file's device (``st_dev``) and inode (``st_ino``)."""
    executable_inode: Optional[int] = None
    fileless: bool = False
    """The executed file has no name on any filesystem: a memfd, or a file
    deleted before the exec (``resolved_executable`` is the name it had)."""
    executable_bytes: Optional[bytes] = None
    """Only when ``executable`` is not valid UTF-8 (each byte that is not
    stands as U+FFFD there): its exact bytes (base64 in JSON)."""
    argv_bytes: Optional[list[bytes]] = None
    """Only when an argument is not valid UTF-8: every argument's exact bytes."""
    comm_bytes: Optional[bytes] = None
    """Only when ``comm`` is not valid UTF-8: its exact bytes."""
    resolved_executable_bytes: Optional[bytes] = None
    """Only when ``resolved_executable`` is not valid UTF-8: its exact bytes."""
    # The context the new program starts in (for a failed exec, the caller's).
    auid: Optional[int] = None
    """The login uid (the audit subsystem's): who logged in, whatever su or
    sudo did since. None when never set (a daemon started at boot)."""
    suid: Optional[int] = None
    """The saved set-user-id."""
    fsuid: Optional[int] = None
    """The uid file access is checked against."""
    cap_effective: Optional[int] = None
    """The effective capability set, a bit mask (bit ``n`` is capability
    ``n``, as in ``/proc/<pid>/status``' CapEff); ``capability_names()``
    names them."""
    cap_permitted: Optional[int] = None
    """The permitted capability set (CapPrm)."""
    stdin: Optional[FdKind] = None
    """What descriptor 0 was: ``inet_socket`` for a shell is a reverse shell;
    sshd gives a session without a terminal a ``unix_socket``."""
    stdout: Optional[FdKind] = None
    stderr: Optional[FdKind] = None
    tty: Optional[str] = None
    """The controlling terminal, named as its device under /dev (``pts/3``,
    ``tty1``); None without one."""
    cwd: Optional[str] = None
    """The working directory, resolved as ``resolved_executable`` is."""
    cwd_truncated: bool = False
    """``cwd`` was longer than the limit: its start is cut, its end kept."""
    cwd_bytes: Optional[bytes] = None
    """Only when ``cwd`` is not valid UTF-8: its exact bytes."""
    identities: list[str] = []
    """The machine identities the exec showed, of the patterns registered
    (``Tracer(identity_env=..., identity_argv=...)``): ``env:<pattern>`` for
    an environment variable name the kernel found in the new program's
    environment (its value never leaves the kernel), ``argv:<pattern>`` for a
    pattern found in its arguments."""
    environment_scan_truncated: bool = False
    """The environment was larger than the scan reaches (32 KiB, 512
    variables): names past that were not looked at."""
    secureexec: bool = False
    """The exec raised privilege: a set-user-id or set-group-id file, or
    file capabilities (the kernel's AT_SECURE)."""
    exec_id: Optional[str] = None
    """This exec's id, unique across hosts and reboots: the boot's id, the
    pid and the exec's boot-clock time, ``<boot_id>:<pid>:<ns>``. None for a
    failed exec."""

    def capability_names(self, which: Literal["effective", "permitted"] = "effective") -> list[str]:
        """The capabilities a set holds, by name (``CAP_SYS_ADMIN``)."""
        mask = self.cap_effective if which == "effective" else self.cap_permitted
        return capability_names(mask or 0)


class ProcessForkData(_Data, tag="process_fork"):
    child_pid: int
    child_entity_id: int
    child_start_time: int
    child_ns_pid: Optional[int] = None
    """The child's pid in its own pid namespace (a new one with CLONE_NEWPID)."""
    child_pid_ns: Optional[int] = None


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
    """A successful open's file, by its own path as the process names it
    (from its root directory), whatever the caller passed (relative to a
    directory fd, through symlinks, ``/proc/self/fd/N``). None for a failed
    open."""
    resolved_path_truncated: bool = False
    """The path was longer than the limit: its start is cut, its end kept."""
    path_bytes: Optional[bytes] = None
    """Only when ``path`` is not valid UTF-8 (each byte that is not stands
    as U+FFFD there): its exact bytes (base64 in JSON)."""
    resolved_path_bytes: Optional[bytes] = None
    """Only when ``resolved_path`` is not valid UTF-8: its exact bytes."""

    @property
    def os_path(self) -> bytes:
        """The path exactly as the caller passed it, as bytes (``os.fsencode`` form)."""
        return self.path_bytes if self.path_bytes is not None else self.path.encode()


class NetConnectData(_Data, tag="net_connect"):
    family: Literal["ipv4", "ipv6"]
    protocol: Optional[str]
    address: str
    port: int
    result: int
    """0, -errno, or -EINPROGRESS (-115) for a non-blocking connect under way."""
    fd: int
    local_address: Optional[str] = None
    """The socket's own address after the call (None: the descriptor could
    not be read as a socket); "0.0.0.0" or "::" when bound to any."""
    local_port: Optional[int] = None
    """The socket's own port after the call; 0 when none is bound (a refused
    connect releases the one it took)."""


class NetSendmsgData(_Data, tag="net_sendmsg"):
    family: Literal["ipv4", "ipv6"]
    protocol: Optional[str]
    address: str
    port: int
    result: int
    """Bytes sent, or -errno."""
    fd: int
    syscall: Literal["sendto", "sendmsg"]
    local_address: Optional[str] = None
    """As net_connect's: the socket's own end after the send (an autobind sets it)."""
    local_port: Optional[int] = None


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


class DnsAnswerData(_Data, tag="dns_answer"):
    """A DNS answer to a guarded process, read by the guard before the
    process could read it. Only a ``counted`` answer (one that matches a
    query the process's cgroup sent: the same id, name, server and port, from
    a trusted server) opens anything to hostname rules."""

    name: str
    """The question's name, lower case, without the final dot."""
    query_type: str
    """"A", "AAAA", or "TYPE<n>"."""
    server: str
    server_port: int
    protocol: Literal["udp", "tcp"]
    rcode: int
    """0: NOERROR, 3: NXDOMAIN, ..."""
    status: Literal["counted", "no_query", "untrusted_server", "malformed"]
    addresses: list[str] = []
    """The A and AAAA addresses of the answer section (the first 16)."""
    addresses_total: int = 0
    """A and AAAA records in the answer section."""
    ttl: int = 0
    """Seconds its addresses are held: the lowest TTL, within the policy's bounds."""
    matched: list[str] = []
    """The policy's host patterns the name matched."""


class _Decision(_Data):
    """A guard decision. ``rule_index`` points into the policy's compiled
    rules (-1: the network default, -2: taint, -3: the blanket ptrace deny,
    -4: raw sockets, -5: namespaces, -6: DNS to a server the policy does not
    trust); the event's ``policy`` names the rule."""

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


class DetectionData(_Data, tag="detection"):
    """A detection rule (runtimeguard.detections) found something: made in
    user space from the events it saw. The event's ``threat`` says why it
    matters, ``triggered_by`` names the event that completed the rule, and
    the workload is that event's process."""

    rule: str
    """The rule's id ("reverse_shell")."""
    summary: str
    """One line, for people."""
    events: list[TriggeredBy] = []
    """Every event involved, oldest first (a sequence's steps); the last is
    ``triggered_by``."""


class FunctionCallData(_Data, tag="function_call"):
    """A probed function's entry or return, as the kernel saw it. The probe is
    named by its index (the ``runtimeguard.calls`` probe that attached it
    knows its symbol, file and offset): ``CallTracer`` turns these into
    ``RuntimeCallEvent``s with symbols, stacks and hashes."""

    probe: int
    phase: Literal["entry", "return"]
    address: int
    """Entry: the function's address in the process; return: where it returned to."""
    stack_id: int
    """The user stack's id in the kernel's stack map; negative (-errno): none."""
    arguments: list[int] = []
    """Entry: the first five arguments as raw register values (USDT: the note's arguments)."""
    result: Optional[int] = None
    """Return: the return value (the register's raw value, as a signed integer)."""
    data: Optional[bytes] = None
    """The buffer the probe was set to copy (at most its capture size), or a
    USDT probe's string arguments, each NUL-ended."""
    data_size: Optional[int] = None
    """The buffer's length as the call gave it."""
    data_truncated: bool = False


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
    DetectionData,
    FunctionCallData,
    DnsAnswerData,
]



class EventRecord(msgspec.Struct, omit_defaults=True, gc=False):
    """One event as a whole: the NDJSON line of ``trace --json`` and of the
    audit log, which ``json_schema()`` describes. ``Event.record()`` makes
    one from a live event; ``json_decoder`` reads one back from a line."""

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

# ---- the live event: what a Tracer hands out ----

class _Target(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """A guard decision's target as the kernel reported it (its fields; its
    text is made when it is read, as every target's is)."""

    type: Literal["ipv4", "ipv6", "inode", "pid", "socket", "namespace"]
    address: Optional[str] = None
    port: Optional[int] = None
    device: Optional[int] = None
    inode: Optional[int] = None
    path: Optional[str] = None
    pid: Optional[int] = None
    socket: Optional[str] = None
    """socket targets: "raw", "ping" or "packet"."""
    protocol: Optional[int] = None
    """socket targets: the protocol number the socket was asked for."""
    name_hash: Optional[int] = None
    """Network targets: the hash of the name the destination was answered
    for (the guard's rg_names), when one was."""


class _Details(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """An event's fields past its header, decoded when first read."""

    seq: int
    cpu: int
    entity_id: int
    cgroup_id: int
    uid: Optional[int]
    euid: Optional[int]
    gid: Optional[int]
    comm: str
    action: Action
    data: EventData
    target: Optional[_Target] = None
    # Only events made in Python (detections) carry these: the native
    # encoder stops at target, so they stay last.
    threat: Optional[Threat] = None
    triggered_by: Optional[TriggeredBy] = None


_details_decoder = msgspec.msgpack.Decoder(_Details)
_details_encoder = msgspec.msgpack.Encoder()
_NOT_RESOLVED = None  # sentinel default of the caches below


class Event(msgspec.Struct, array_like=True, gc=False, repr_omit_defaults=True):
    """One event, as a ``Tracer`` hands it out.

    ``id`` (``name``), ``timestamp``, ``pid`` and ``tid`` are decoded with
    the event; the rest (``data``, ``action``, ``seq``, ``cpu``,
    ``entity_id``, ``cgroup_id``, the acting task's credentials and name)
    on first read of any of them, ``workload`` and ``target_context`` when
    read, so an event nobody looks into costs little more than its header. ``record()`` gives the whole event as the
    NDJSON line's ``EventRecord``.

    ``workload`` is the process table's view of the event's process at the
    event's time: read it while the tracer runs (the table forgets exited
    processes after a while)."""

    id: int
    timestamp: int
    """Nanoseconds since the Unix epoch."""
    pid: int
    tid: int
    details: bytes
    """The encoded rest (not ``encoded``: the kernel's record itself, as the
    batch API keeps it): read it through the properties."""
    encoded: bool = True
    decoded_: Optional[_Details] = _NOT_RESOLVED
    workload_: Optional[Workload] = _NOT_RESOLVED
    target_: Optional[TargetContext] = _NOT_RESOLVED

    @property
    def name(self) -> EventName:
        return EVENT_NAMES[self.id]

    def _details(self) -> _Details:
        d = self.decoded_
        if d is None:
            if self.encoded:
                d = _details_decoder.decode(self.details)
            else:
                d = _details_decoder.decode(_encode_details(self.details, self.timestamp))
            self.decoded_ = d
        return d

    @property
    def data(self) -> EventData:
        return self._details().data

    @property
    def seq(self) -> int:
        """Per-CPU sequence number: a gap means records were lost on that CPU."""
        return self._details().seq

    @property
    def cpu(self) -> int:
        return self._details().cpu

    @property
    def entity_id(self) -> int:
        """0 where the program could not read the task (cgroup socket hooks):
        ``workload`` then finds the process by pid, and ``record()`` says it."""
        return self._details().entity_id

    @property
    def cgroup_id(self) -> int:
        return self._details().cgroup_id

    @property
    def action(self) -> Action:
        return self._details().action

    @property
    def uid(self) -> Optional[int]:
        """The acting task's real uid when the event happened (None: unknown)."""
        return self._details().uid

    @property
    def euid(self) -> Optional[int]:
        return self._details().euid

    @property
    def gid(self) -> Optional[int]:
        return self._details().gid

    @property
    def comm(self) -> str:
        """The acting task's name (the kernel's comm) when the event happened."""
        return self._details().comm

    @property
    def workload(self) -> Optional[Workload]:
        wl = self.workload_
        if wl is None and _resolver is not None:
            wl = self.workload_ = _resolver.workload(self)
        return wl

    @property
    def target_context(self) -> Optional[TargetContext]:
        tc = self.target_
        if tc is None:
            tc = self.target_ = make_target(self)
        return tc

    @property
    def policy(self) -> Optional[PolicyRef]:
        return None

    @property
    def threat(self) -> Optional[Threat]:
        """Why it matters (a detection's); None for what the kernel reported."""
        # A kernel record kept by the batch API never carries one: no decoding for that.
        return self._details().threat if self.encoded else None

    @property
    def triggered_by(self) -> Optional[TriggeredBy]:
        """The event that completed a detection's rule."""
        return self._details().triggered_by if self.encoded else None

    def record(self) -> EventRecord:
        """The whole event, workload and target resolved: the NDJSON line."""
        d = self._details()
        wl = self.workload
        entity = d.entity_id or (wl.process.entity_id if wl is not None else 0)
        # Positional, in EventRecord's field order: the fastest way to build it.
        return EventRecord(self.timestamp, self.id, EVENT_NAMES[self.id], d.data, d.seq, d.cpu, self.pid,
                           self.tid, entity, d.cgroup_id, wl, d.action, self.target_context, None, d.threat,
                           d.triggered_by)

    @classmethod
    def make(cls, *, id: int, timestamp: int, data: EventData, pid: int = 0, tid: int = 0, seq: int = 0,
             cpu: int = 0, entity_id: int = 0, cgroup_id: int = 0, uid: Optional[int] = None,
             euid: Optional[int] = None, gid: Optional[int] = None, comm: str = "",
             action: Action = "observed", target: Optional[_Target] = None, threat: Optional[Threat] = None,
             triggered_by: Optional[TriggeredBy] = None) -> "Event":
        """An event made in Python, encoded as the native consumer would."""
        details = _Details(seq=seq, cpu=cpu, entity_id=entity_id, cgroup_id=cgroup_id, uid=uid, euid=euid, gid=gid,
                           comm=comm, action=action, data=data, target=target, threat=threat,
                           triggered_by=triggered_by)
        return cls(id=id, timestamp=timestamp, pid=pid, tid=tid, details=_details_encoder.encode(details))


_local = threading.local()


def _encode_details(record: bytes, timestamp: int):
    """The details of a kernel record the batch API kept, encoded by the
    native encoder (a buffer valid until this thread's next call)."""
    scratch = getattr(_local, "scratch", None)
    if scratch is None:
        scratch = _local.scratch = ffi.new("unsigned char[]", lib.RG_MAX_ENCODED_RECORD)
    n = lib.rg_encode_details(record, len(record), timestamp, scratch, lib.RG_MAX_ENCODED_RECORD)
    if n < 0:
        raise ValueError(f"not an event record ({len(record)} bytes)")
    return ffi.buffer(scratch, n)


# The process table that resolves Event.workload and names pid targets
# (runtimeguard.processes sets it): anything with workload(event) and
# name_of(pid, timestamp).
_resolver = None


def set_resolver(resolver) -> None:
    global _resolver
    _resolver = resolver


_device_texts: dict[int, str] = {}


def _device_text(device: int) -> str:
    """ "major:minor", kept: few devices, many events."""
    text = _device_texts.get(device)
    if text is None:
        if len(_device_texts) > 4096:
            _device_texts.clear()
        text = _device_texts[device] = f"{os.major(device)}:{os.minor(device)}"
    return text


# Marks text the kernel cut at its limit, wherever it is shown.
TRUNCATED = "[\u2026]"


# Targets made lately, by what they are made from: most events touch what
# others touched just before (the same files, the same peers), and a
# TargetContext is frozen, so one serves them all.
_targets: dict[tuple, TargetContext] = {}


def _made_target(key: tuple, target: TargetContext) -> TargetContext:
    if len(_targets) >= 4096:
        _targets.clear()
    _targets[key] = target
    return target


def _inode_target(path: Optional[str], device: int, inode: int, cut: bool = False) -> TargetContext:
    key = (path, device, inode, cut)
    target = _targets.get(key)
    if target is not None:
        return target
    where = f"inode {inode} on {_device_text(device)}"
    shown = f"{path}{TRUNCATED}" if cut else path
    return _made_target(key, TargetContext("inode", f"{shown} ({where})" if path else where, None, None, device,
                                           inode, path or None))


def _pid_target(pid: int, timestamp: int) -> TargetContext:
    name = _resolver.name_of(pid, timestamp) if _resolver is not None else None
    if name:
        return TargetContext("pid", f"pid {pid} ({name})", pid=pid, comm=name)
    return TargetContext("pid", f"pid {pid}", pid=pid)


def _net_target(family: str, address: str, port: int) -> TargetContext:
    key = (family, address, port)
    target = _targets.get(key)
    if target is not None:
        return target
    return _made_target(key, TargetContext(
        family, f"[{address}]:{port}" if family == "ipv6" else f"{address}:{port}", address, port))  # type: ignore


def _decision_target(ev: "Event", data, t: _Target) -> Optional[TargetContext]:
    kind = t.type
    if kind == "inode":
        return _inode_target(t.path, t.device or 0, t.inode or 0)
    if kind == "ipv4" or kind == "ipv6":
        return _net_target(kind, t.address or "", t.port or 0)
    if kind == "pid":
        return _pid_target(t.pid or 0, ev.timestamp)
    if kind == "socket":
        return TargetContext("socket", f"{t.socket} socket ({data.family}, protocol {t.protocol})")
    if kind == "namespace":
        kinds = f" ({', '.join(data.namespaces)})" if data.namespaces else ""
        return TargetContext("namespace", f"{data.operation}{kinds}")
    return None


def _file_target(ev: "Event", data) -> Optional[TargetContext]:
    if data.result < 0 or not data.inode:
        return None
    return _inode_target(data.path, data.device, data.inode, data.path_truncated)


def _net_data_target(ev: "Event", data) -> TargetContext:
    return _net_target(data.family, data.address, data.port)


def _pid_data_target(ev: "Event", data) -> TargetContext:
    return _pid_target(data.target_pid, ev.timestamp)


_TARGET_OF_DATA = {
    EVENT_IDS["file_open"]: _file_target,
    EVENT_IDS["net_connect"]: _net_data_target,
    EVENT_IDS["net_sendmsg"]: _net_data_target,
    EVENT_IDS["ptrace"]: _pid_data_target,
    EVENT_IDS["process_memory"]: _pid_data_target,
}


def make_target(ev: "Event") -> Optional[TargetContext]:
    """What an event touched, as ``target_context`` says it: the one place
    targets are formatted (a guard decision's from the fields the kernel
    reported, an observation's from its data; a pid target is named from the
    process table)."""
    d = ev._details()
    if d.target is not None:
        return _decision_target(ev, d.data, d.target)
    of_data = _TARGET_OF_DATA.get(ev.id)
    return of_data(ev, d.data) if of_data is not None else None


def as_record(event: Union[Event, EventRecord]) -> EventRecord:
    """An EventRecord as it is, a live Event resolved into one."""
    if isinstance(event, EventRecord):
        return event
    if isinstance(event, Event):
        return event.record()
    raise TypeError(f"not an event: {type(event).__name__}")


# Created once, reused: the ring decoder and the NDJSON/msgpack codecs.
batch_decoder = msgspec.msgpack.Decoder(list[Event])
json_encoder = msgspec.json.Encoder()
json_decoder = msgspec.json.Decoder(EventRecord)
msgpack_encoder = msgspec.msgpack.Encoder()
msgpack_decoder = msgspec.msgpack.Decoder(EventRecord)


def json_schema() -> dict:
    """The JSON Schema of one NDJSON event line."""
    schema = msgspec.json.schema(EventRecord)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = f"runtimeguard event, schema {SCHEMA_VERSION}"
    return schema
