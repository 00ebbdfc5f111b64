"""Running a workload under a policy: the guard.

The guard is a Tracer with the guard sensor loaded: the policy is compiled
into BPF maps (filled after load, before attach, so no empty map ever
decides), the socket hooks attach to the workload's cgroup, and every decision
comes back as a block event that is logged, deduplicated for the operator and
returned to the caller.

What each mechanism guarantees (see README, "Security"):
- egress (connect_denied, exfil_blocked): cgroup connect4/6 and sendmsg4/6
  hooks refuse the operation; the caller gets EPERM and nothing is sent.
  A tainted process's sends on a socket it connected before the taint: EPERM
  (LSM backend), or dropped at egress and the socket destroyed, its queued
  data discarded, before the guard detaches (tracepoint backend, enforce mode).
- files, decoys, ptrace, process memory, packet sockets, changes to protected
  files: where BPF LSM runs (the "lsm" backend), LSM hooks refuse the
  operation before it happens and the caller gets EPERM. Elsewhere the
  "fanotify" backend refuses opens of protected files and decoys with EPERM
  before the open (fanotify permission events, answered in C by
  csrc/filejudge.c), and the rest is detected at the syscall tracepoints,
  where in enforce mode the caller is sent SIGKILL: the syscall itself may
  complete, but the process never returns to user space to use the result.
  The "tracepoint" backend (where fanotify permission events are missing too)
  does the same for files. Changes by path are detected through fanotify
  after the fact.
"""

from __future__ import annotations

import base64
import os
import pwd
import secrets
import signal
import subprocess
import threading
import time
from typing import Callable, Optional, Sequence

import msgspec

from . import environment, hostnames
from ._native import ffi, lib
from .audit import DEFAULT_COALESCE_S, DEFAULT_KEEP_FIRST, DEFAULT_MAX_BYTES, AuditLogger
from .capabilities import fanotify_permission, guard_mechanisms, lsm_enforcement
from .errors import BPFError, RuntimeGuardError
from .policy import Policy, guess_template
from .mutations import MutationWatch
from .schema import (
    BLOCK_EVENTS,
    EVENT_IDS,
    EventRecord,
    LostData,
    ModeChangedData,
    PolicyRef,
    ProtectedFileChangedData,
    TargetContext,
    Workload,
)
from .reverse_dns import ReverseLookup, ReverseName
from .tracer import DEFAULT_RING_BUFFER_SIZE, Tracer, TracerStats

_RULE_NET_DEFAULT = -1
_RULE_TAINT = -2
_RULE_PTRACE_DENY = -3
_RULE_RAW_SOCKET = -4
_RULE_NAMESPACES = -5
_RULE_DNS_UNTRUSTED = -6
# The CLONE_NEW* bit of each namespace kind (policy: namespaces.allow).
_NAMESPACE_FLAGS = {"time": 0x80, "mnt": 0x20000, "cgroup": 0x02000000, "uts": 0x04000000, "ipc": 0x08000000,
                    "user": 0x10000000, "pid": 0x20000000, "net": 0x40000000}

_PROTOCOLS = {"tcp": lib.RG_GUARD_PROTO_TCP, "udp": lib.RG_GUARD_PROTO_UDP, "any": lib.RG_GUARD_PROTO_ANY}
_ACTIONS = {"allow": lib.RG_NET_ALLOW, "deny": lib.RG_NET_DENY}
BACKENDS = ("auto", "lsm", "fanotify", "tracepoint")
_TAINT_SOURCES = {"files": lib.RG_PROTECT_FILE, "mirage": lib.RG_PROTECT_MIRAGE}


class GuardStats(TracerStats, frozen=True):
    """The tracer's counters (``lost``: decisions and other records the ring
    buffer could not take, per kind, each reported in the audit log by a
    ``lost`` record), and the audit log's."""

    audit_lost: dict[str, int] = {}
    """Events the audit log could not write (disk full, read-only, I/O errors
    for longer than its retry queue holds them), per event name. Each is
    reported by a ``lost`` record (source "audit_log") as soon as the log can
    be written again."""
    audit_lost_total: int = 0
    audit_errors: int = 0
    """Failed attempts to write the audit log."""
    audit_pending: int = 0
    """Events waiting in the audit log's retry queue."""
    audit_coalesced: int = 0
    """Decisions in the audit log only as part of a line's ``repeated`` count."""
    file_judge_asked: int = 0
    """The fanotify backend: permission events answered (opens and reads of
    marked files, by any process: those out of scope are allowed)."""
    file_judge_denied: int = 0
    """Of them, refused with EPERM."""
    file_judge_marks: int = 0
    """Files and directories marked."""
    file_judge_marks_refusing_truncate: int = 0
    """Of them, those whose filesystem takes fanotify pre-content events
    (Linux 6.14+; ext4 here, measured; not tmpfs): ``truncate(2)`` by path is
    refused there too."""
    dns_answers: dict[str, int] = {}
    """DNS answers to guarded processes, per status (``counted``,
    ``no_query``, ``untrusted_server``, ``malformed``)."""
    reverse_lookups_skipped: int = 0
    """Refused destinations given no reverse name: too many lookups were waiting."""
    sink_errors: int = 0
    """Exceptions a sink raised (each event still went to the others)."""


class GuardResult(msgspec.Struct):
    exit_status: int
    """The command's exit status; 128 + N when signal N ended it."""
    events: list[EventRecord]
    """Every guard decision, in order."""


def _decoy_content(template: str) -> bytes:
    token = secrets.token_hex
    if template == "aws":
        key_id = "AKIA" + base64.b32encode(secrets.token_bytes(10)).decode()[:16]
        secret = base64.b64encode(secrets.token_bytes(30)).decode()
        return f"[default]\naws_access_key_id = {key_id}\naws_secret_access_key = {secret}\n".encode()
    if template == "env":
        return (f"DATABASE_URL=postgres://app:{token(12)}@db.internal:5432/app\n"
                f"OPENAI_API_KEY=sk-{token(24)}\nSTRIPE_SECRET_KEY=sk_live_{token(12)}\n").encode()
    if template == "ssh_key":
        body = base64.encodebytes(secrets.token_bytes(300)).decode()
        return f"-----BEGIN OPENSSH PRIVATE KEY-----\n{body}-----END OPENSSH PRIVATE KEY-----\n".encode()
    return f"token={token(20)}\n".encode()


class Guard:
    """Enforces a policy on a scope: a command's cgroup, a cgroup, or the host.

    ``with Guard(policy, cgroup=path) as g: ... g.poll()``; most callers use
    :func:`guard` or :meth:`run`, which create the command's cgroup.
    """

    def __init__(self, policy: Policy, *, cgroup: Optional[str] = None, audit_log: Optional[str] = None,
                 on_event: Optional[Callable[[EventRecord], None]] = None,
                 ring_buffer_size: int = DEFAULT_RING_BUFFER_SIZE, backend: str = "auto",
                 audit_coalesce_s: float = DEFAULT_COALESCE_S, audit_max_bytes: int = DEFAULT_MAX_BYTES,
                 audit_backups: int = 5, audit_keep_first: int = DEFAULT_KEEP_FIRST,
                 audit_rotate_every_s: Optional[float] = None, audit_compress: bool = False, sinks: Sequence = (),
                 observe: Sequence[str] = ()):
        """audit_coalesce_s, audit_max_bytes, audit_backups, audit_keep_first,
        audit_rotate_every_s, audit_compress: the audit log's ``coalesce_s``,
        ``max_bytes``, ``backups``, ``keep_first``, ``rotate_every_s`` and
        ``compress`` (see AuditLogger). The log counts write failures
        (``on_error="count"``): the guard keeps guarding when its log fails.

        sinks: exporters (``runtimeguard.export``) handed every event the
        guard receives as an EventRecord: its decisions, the DNS answers it
        reads, the scope's process events and loss notices. The guard does
        not close them.

        observe: more event kinds for the sinks, from the scope only
        ("net_connect", "net_sendmsg", "file_open", ...); an observed connect
        or send carries the name last answered with its peer."""
        if backend not in BACKENDS:
            raise ValueError(f"backend {backend!r} must be one of {', '.join(BACKENDS)}")
        self.policy = policy
        self._backend = backend
        self.backend: Optional[str] = None
        """After start(): "lsm" (BPF LSM hooks refuse with EPERM), "fanotify"
        (fanotify permission events refuse opens of protected files and decoys
        with EPERM; syscall tracepoints kill on ptrace and process memory) or
        "tracepoint" (syscall tracepoints kill on all of them). See mechanisms."""
        self._mechanisms: Optional[dict[str, str]] = None
        self.mode = policy.mode
        self._cgroup = cgroup
        self._audit_path = audit_log
        self._audit_options = dict(coalesce_s=audit_coalesce_s, max_bytes=audit_max_bytes, backups=audit_backups,
                                   keep_first=audit_keep_first, rotate_every_s=audit_rotate_every_s,
                                   compress=audit_compress)
        self._sinks = list(sinks)
        self._observe = tuple(observe)
        self._sink_errors = 0
        self._names: dict[int, str] = {}
        """Name hash -> name, from the DNS answers read (the kernel keeps a table of its own)."""
        self._dns_answers: dict[str, int] = {}
        self._peers: dict[str, str] = {}
        """Address -> the name last answered with it, for observed connects."""
        self._net_rules: list = []
        """The policy's network rules, compiled once at start."""
        self._host_patterns: tuple[str, ...] = ()
        """Each gets the bit of its index in the kernel's marks."""
        self._allowed_hosts: frozenset[str] = frozenset()
        self._dns_servers: tuple[str, ...] = ()
        self._reverse: Optional[ReverseLookup] = None
        self._held: list[tuple[EventRecord, object, float]] = []
        """Decisions waiting (briefly) for their destination's reverse name."""
        self._ring_lost_logged: dict[str, int] = {}
        """Ring buffer losses, per kind, already written to the audit log."""
        self._polled = 0
        self._final_stats: Optional[GuardStats] = None
        self._on_event = on_event
        self._ring_buffer_size = ring_buffer_size
        self._rules: list[str] = []
        self._rule_paths: dict[int, tuple[str, int, int]] = {}  # rule index -> (path, dev, ino)
        self._decoys_created: list[str] = []
        self._tracer: Optional[Tracer] = None
        self._mutations: Optional[MutationWatch] = None
        self._scope_path: Optional[str] = None  # cgroup path relative to the hierarchy; None: the host
        self._audit: Optional[AuditLogger] = None
        self._cgroup_fd = -1
        self.events: list[EventRecord] = []
        self._requested_mode: Optional[str] = None
        self.tainted_sockets_destroyed = 0
        """After close() (tracepoint backend, enforce mode): TCP sockets of
        tainted processes destroyed before detaching, their queued data
        discarded (see README, "Sockets connected before the taint")."""
        self.socket_destroy_error: Optional[str] = None
        """Why those sockets could not be destroyed (no bpf_sock_destroy
        kfunc before Linux 6.5): data they still held may then be sent after
        the guard detached."""

    @property
    def mechanisms(self) -> dict[str, str]:
        """After start(): per area (network, files, ptrace, process_memory,
        file_changes, tainted_sends, namespaces), the mechanism that holds it
        and what it guarantees. Probed on first use, not at start."""
        if self.backend is None:
            return {}
        if self._mechanisms is None:
            self._mechanisms = guard_mechanisms(self.backend)
        return dict(self._mechanisms)

    # ---- compiling the policy into map entries ----

    def _rule(self, rule_id: str) -> int:
        self._rules.append(rule_id)
        return len(self._rules) - 1

    def rule_id(self, index: int) -> str:
        if index == _RULE_NET_DEFAULT:
            return "network.default"
        if index == _RULE_TAINT:
            return "taint.block_egress"
        if index == _RULE_PTRACE_DENY:
            return "ptrace.deny"
        if index == _RULE_RAW_SOCKET:
            return "network.raw_sockets"
        if index == _RULE_NAMESPACES:
            return "namespaces.deny"
        if index == _RULE_DNS_UNTRUSTED:
            return "network.dns.refuse_unobserved"
        return self._rules[index] if 0 <= index < len(self._rules) else f"rule #{index}"

    def _config(self, scope_id: int, scope_level: int):
        p = self.policy
        cfg = ffi.new("struct rg_guard_config *")
        cfg.mode = lib.RG_MODE_ENFORCE if self.mode == "enforce" else lib.RG_MODE_AUDIT
        cfg.net_default_deny = p.network.default == "deny"
        cfg.file_kill = p.files.action == "kill"
        cfg.mirage_kill = p.mirage.kill
        cfg.ptrace_deny = p.ptrace.deny
        cfg.taint_from = sum(1 << _TAINT_SOURCES[s] for s in p.taint.sources)
        cfg.taint_blocks_egress = p.taint.block_egress
        cfg.raw_socket_deny = p.network.raw_sockets == "deny"
        cfg.scope_cgroup_id = scope_id
        cfg.scope_cgroup_level = scope_level
        cfg.guard_tgid = os.getpid()
        cfg.files_by_fanotify = self.backend == "fanotify"
        allowed, deny = p.namespaces.allow, p.namespaces_denied()
        cfg.ns_deny_flags = sum(bit for kind, bit in _NAMESPACE_FLAGS.items() if kind not in allowed) if deny else 0
        cfg.mount_deny = deny and "mount" not in allowed
        dns = p.network.dns
        cfg.dns_observe = True
        cfg.dns_refuse_untrusted = dns.refuse_unobserved
        cfg.dns_min_ttl_ns = int(dns.min_ttl * 1e9)
        cfg.dns_max_ttl_ns = int(dns.max_ttl * 1e9)
        return cfg

    def _fill_maps(self, tracer: Tracer, scope_id: int, scope_level: int) -> None:
        slots = sum(len(compiled.port_ranges) for compiled in self._net_rules)
        if slots > lib.RG_MAX_NET_RULES:
            raise RuntimeGuardError(f"the policy compiles to {slots} network rules; at most "
                                    f"{lib.RG_MAX_NET_RULES} are supported")
        # Patterns first: the host rules name them.
        for bit, host in enumerate(self._host_patterns):
            tracer.guard_host_pattern(host, bit)
        slot = 0
        indexes: dict[str, int] = {}
        for compiled in self._net_rules:
            index = indexes.get(compiled.rule_id)
            if index is None:  # a rule the policy implies may compile to several
                index = indexes[compiled.rule_id] = self._rule(compiled.rule_id)
            protocol, action = _PROTOCOLS[compiled.protocol], _ACTIONS[compiled.action]
            for ports in compiled.port_ranges:
                if compiled.host is not None:
                    tracer.guard_host_rule(slot, compiled.host, ports, protocol, action, index)
                else:
                    net = compiled.network
                    tracer.guard_address_rule(slot, str(net.network_address), net.prefixlen, ports, protocol,
                                              action, index)
                slot += 1
        for server in self._dns_servers:
            tracer.guard_trust_dns_server(server)

        def protect(path: str, rule_id: str, kind: int) -> None:
            st = os.stat(path)
            index = self._rule(rule_id)
            self._rule_paths[index] = (path, st.st_dev, st.st_ino)
            if self.backend == "fanotify":
                tracer.protect_path(path, kind, index)
                return
            tracer.guard_protect_inode(st.st_dev, st.st_ino, kind, index, os.path.isdir(path))

        for p in self.policy.protected_paths():
            protect(p.path, p.rule_id, lib.RG_PROTECT_FILE)
        for i, decoy in enumerate(self.policy.mirage.decoys):
            protect(os.path.expanduser(decoy.path), f"mirage.decoys[{i}]", lib.RG_PROTECT_MIRAGE)
        # The guard itself is always protected from ptrace and memory access.
        tracer.guard_protect_pid(os.getpid(), self._rule("guard"))
        for i, pid in enumerate(self.policy.ptrace.protect_pids):
            tracer.guard_protect_pid(pid, self._rule(f"ptrace.protect_pids[{i}]"))

        cfg = self._config(scope_id, scope_level)
        cfg.net_rule_count = slot
        self._cfg = cfg
        # The configuration goes last: it is what switches the guard on.
        tracer.guard_configure(cfg)

    def _create_decoys(self) -> None:
        for decoy in self.policy.mirage.decoys:
            path = os.path.expanduser(decoy.path)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            except FileExistsError:
                continue  # an existing file serves as the decoy as it is
            with os.fdopen(fd, "wb") as f:
                f.write(_decoy_content(decoy.template or guess_template(path)))
            self._decoys_created.append(path)

    def _remove_decoys(self) -> None:
        for path in self._decoys_created:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        self._decoys_created = []

    # ---- lifecycle ----

    def start(self) -> "Guard":
        environment.prepare()
        if self._cgroup is None:
            scope = self.policy.scope
            if scope.type == "command":
                raise RuntimeGuardError("this policy's scope is a command: use run(argv) or guard(), "
                                        "or give the Guard a cgroup")
            self._cgroup = scope.cgroup  # None for the whole host
        root = environment.cgroup2_mount()
        if self._cgroup is not None:
            path = os.path.realpath(self._cgroup if os.path.isabs(self._cgroup) else os.path.join(root, self._cgroup))
            if os.path.commonpath([path, root]) != root or not os.path.isfile(os.path.join(path, "cgroup.procs")):
                raise RuntimeGuardError(f"scope: {self._cgroup!r} is not a cgroup v2 directory (under {root}, "
                                        "or a path relative to it)")
        if self._cgroup is not None and path != root:
            scope_id, scope_level = os.stat(path).st_ino, os.path.relpath(path, root).count("/") + 1
            self._scope_path = "/" + os.path.relpath(path, root)
        else:  # the whole host, the hierarchy's root included
            path, scope_id, scope_level = root, 0, 0
        self.backend = choose_backend(self._backend)
        self._net_rules = rules = self.policy.network_rules()
        self._host_patterns = tuple(dict.fromkeys(r.host for r in rules if r.host))
        self._allowed_hosts = frozenset(r.host for r in rules if r.host and r.action == "allow")
        self._dns_servers = self.policy.dns_servers()
        if self._host_patterns and not self._dns_servers:
            raise RuntimeGuardError("network: host rules need DNS servers whose answers count: set "
                                    "network.dns.servers (/etc/resolv.conf names none)")
        try:
            if self.policy.reverse_lookups() and self._dns_servers:
                dns = self.policy.network.dns
                self._reverse = ReverseLookup(self._dns_servers, min_ttl=dns.min_ttl, max_ttl=dns.max_ttl)
            self._create_decoys()
            self._cgroup_fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            if self._audit_path:
                self._audit = AuditLogger(self._audit_path, on_error="count", **self._audit_options)
            self._tracer = Tracer(
                events=["process_exec", "process_fork", "process_exit", *self._observe],
                cgroups=[scope_id] if scope_id else (),
                ring_buffer_size=self._ring_buffer_size,
                guard_cgroup_fd=self._cgroup_fd,
                guard_lsm=self.backend == "lsm",
                guard_fanotify=self.backend == "fanotify",
                before_attach=lambda t: self._fill_maps(t, scope_id, scope_level),
                identity_env=self.policy.identity.env,
                identity_argv=self.policy.identity.argv,
            ).start()
            # The LSM backend refuses changes by path in the kernel; without
            # it they can only be seen after the fact.
            protected = self.policy.protected_paths()
            if protected and self.backend != "lsm":
                try:
                    self._mutations = MutationWatch((p.path, p) for p in protected)
                except OSError as e:
                    raise RuntimeGuardError(
                        f"files.protect: changes by path cannot be watched ({e.strerror}); without BPF LSM "
                        "the guard needs fanotify marks on the protected files' filesystem") from None
        except BaseException:
            self.close()
            raise
        return self

    _CLOSE_DRAIN_S = 1.0

    def close(self) -> None:
        """Logs the decisions still in the ring buffer (for up to a second) and
        the losses no notice reported yet, then detaches and releases all."""
        tracer, audit = self._tracer, self._audit
        try:
            if tracer is not None and tracer.running:
                self._destroy_tainted_sockets()
                self._drain(self._CLOSE_DRAIN_S)
                self._flush_held()
                self._log_unreported_loss()
        finally:
            if self._mutations is not None:
                self._mutations.close()
                self._mutations = None
            if tracer is not None:
                judge = tracer.file_judge_stats() if tracer.running else (0, 0, 0, 0)
                extra = self._extra_stats()
                tracer.close()
                self._tracer = None
            if self._cgroup_fd >= 0:
                os.close(self._cgroup_fd)
                self._cgroup_fd = -1
            if self._reverse is not None:
                self._reverse.close()
                self._reverse = None
            if audit is not None:
                audit.close()
                self._audit = None
            self._remove_decoys()
            if tracer is not None and not tracer.running:
                try:
                    self._final_stats = self._make_stats(tracer.stats(), audit, judge, extra)
                except RuntimeGuardError:
                    pass

    def _destroy_tainted_sockets(self) -> None:
        """Tracepoint backend, enforce mode: the egress filter drops a tainted
        process's packets on sockets it connected before the taint, but the
        data stays queued and TCP would retransmit it once the filter is
        detached. Those sockets are destroyed first (the kfunc
        bpf_sock_destroy: tcp_abort, the queue discarded, a bare reset sent),
        the orphaned ones of exited processes too. The LSM backend refuses
        such sends before anything is queued."""
        if self.backend == "lsm" or self.mode != "enforce" or not self.policy.taint.block_egress:
            return
        try:
            self.tainted_sockets_destroyed += self._tracer.destroy_tainted_sockets()
        except BPFError as e:
            self.socket_destroy_error = str(e)

    def __enter__(self) -> "Guard":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def set_mode(self, mode: str) -> None:
        """Switches audit/enforce on the running guard: one map update."""
        if mode not in ("audit", "enforce"):
            raise ValueError(f"mode {mode!r} must be 'audit' or 'enforce'")
        self.poll(0)  # decisions made under the old mode are logged before the switch
        if self._audit is not None:
            self._audit.flush()  # and their repeat counts
        previous, self.mode = self.mode, mode
        self._cfg.mode = lib.RG_MODE_ENFORCE if mode == "enforce" else lib.RG_MODE_AUDIT
        self._tracer.guard_configure(self._cfg)
        note = EventRecord(timestamp=time.time_ns(), id=EVENT_IDS["mode_changed"], name="mode_changed",
                           data=ModeChangedData(previous=previous, mode=mode), pid=os.getpid(),
                           tid=threading.get_native_id(),
                           policy=PolicyRef(rule="mode", mode=mode, name=self.policy.name))
        self.events.append(note)
        if self._audit is not None:
            self._audit.write(note)

    def final_stats(self) -> Optional[GuardStats]:
        """The counters after close(); None when the guard never started."""
        return self._final_stats

    def program_stats(self) -> dict[str, tuple[int, int]]:
        """BPF run time per program of the running guard's sensors (see Tracer.program_stats)."""
        if self._tracer is None:
            raise RuntimeGuardError("this guard is not running")
        return self._tracer.program_stats()

    def stats(self) -> GuardStats:
        """Counters so far; after close(), the final ones."""
        if self._tracer is None:
            if self._final_stats is not None:
                return self._final_stats
            raise RuntimeGuardError("this guard has not been started")
        return self._make_stats(self._tracer.stats(), self._audit, self._tracer.file_judge_stats(), self._extra_stats())

    def _extra_stats(self) -> dict:
        return {"dns_answers": dict(self._dns_answers), "sink_errors": self._sink_errors,
                "reverse_lookups_skipped": self._reverse.skipped if self._reverse is not None else 0}

    @staticmethod
    def _make_stats(ts: TracerStats, audit: Optional[AuditLogger], judge: tuple[int, int, int, int],
                    extra: dict) -> GuardStats:
        fields = msgspec.structs.asdict(ts)
        fields.update(extra)
        fields.update(zip(("file_judge_asked", "file_judge_denied", "file_judge_marks",
                           "file_judge_marks_refusing_truncate"), judge))
        if audit is None:
            return GuardStats(**fields)
        return GuardStats(**fields, audit_lost=dict(audit.dropped_by_kind), audit_lost_total=audit.dropped,
                          audit_errors=audit.errors, audit_pending=audit.pending,
                          audit_coalesced=audit.coalesced)

    def request_mode(self, mode: str) -> None:
        """Asks run() to switch mode at its next poll: safe from a signal handler."""
        if mode not in ("audit", "enforce"):
            raise ValueError(f"mode {mode!r} must be 'audit' or 'enforce'")
        self._requested_mode = mode

    # ---- decisions ----

    def poll(self, timeout: Optional[float] = None) -> list[EventRecord]:
        """The guard decisions since the last poll, logged and named.

        The ring buffer's ``lost`` notices (records it could not take, per
        kind: decisions among them) are not returned, but written to the
        audit log, so a decision the kernel made but could not report is
        still accounted for there."""
        decisions = []
        to_log = []
        received = self._tracer.poll(timeout)
        sinks = self._sinks
        for ev in received:
            name = ev.name
            if name == "lost":
                logged = self._ring_lost_logged
                for kind, n in ev.data.by_kind.items():
                    logged[kind] = logged.get(kind, 0) + n
                rec = ev.record()
                to_log.append(rec)
                if sinks:
                    self._to_sinks(rec)
                continue
            if name == "dns_answer":
                rec = self._read_answer(ev)
                if sinks:
                    self._to_sinks(rec)
                continue
            if name not in BLOCK_EVENTS:
                if sinks:
                    rec = ev.record()
                    if name in ("net_connect", "net_sendmsg"):
                        self._name_peer(rec)
                    self._to_sinks(rec)
                continue
            # Resolved now, while the process table still knows the process.
            rec = ev.record()
            mode = "audit" if rec.action == "would_block" else self.mode
            rec.policy = PolicyRef(rule=self.rule_id(rec.data.rule_index), mode=mode, name=self.policy.name)
            if name in ("open_inode", "mirage_trap", "protected_file_changed"):
                self._name_file(rec)
            elif name in ("connect_denied", "exfil_blocked") and self._name_destination(ev, rec):
                continue  # held until its reverse name is known
            decisions.append(rec)
            to_log.append(rec)
        released = self._release_held()
        decisions += released
        to_log += released
        self._polled = len(received)
        if self._mutations is not None:
            changed = self._judge_mutations()
            self._polled += len(changed)
            decisions += changed
            to_log += changed
        if self._audit is not None:
            if to_log:
                self._audit.write_many(to_log)
            self._audit.tick()
        if decisions:
            self.events += decisions
            if sinks:
                for rec in decisions:
                    self._to_sinks(rec)
            if self._on_event is not None:
                for ev in decisions:
                    self._on_event(ev)
        return decisions

    def _to_sinks(self, rec: EventRecord) -> None:
        for sink in self._sinks:
            try:
                sink.write(rec)
            except Exception:
                self._sink_errors += 1

    # ---- host names ----

    def _read_answer(self, ev) -> EventRecord:
        """A DNS answer: its name learnt for the decisions that follow (the
        ring delivers it before any connect it answered), and the policy's
        patterns it matched."""
        rec = ev.record()
        data = rec.data
        self._dns_answers[data.status] = self._dns_answers.get(data.status, 0) + 1
        if data.status == "counted" and data.name:
            if len(self._names) >= 8192:
                self._names.clear()
            self._names[hostnames.name_hash(data.name)] = data.name
            if len(self._peers) >= 16384:
                self._peers.clear()
            for address in data.addresses:
                self._peers[address] = data.name
            matched = hostnames.matched(self._host_patterns, data.name)
            if matched:
                rec.data = msgspec.structs.replace(data, matched=list(matched))
        return rec

    def _name_peer(self, rec: EventRecord) -> None:
        """An observed connect or send: the name last answered with its peer."""
        tc = rec.target_context
        name = self._peers.get(tc.address) if tc is not None and tc.address else None
        if name:
            rec.target_context = msgspec.structs.replace(tc, hostname=name)

    def _name_destination(self, ev, rec: EventRecord) -> bool:
        """Names a refused destination: the name the process resolved for it,
        else (reverse_lookup) its PTR name, for which the decision is held
        (True) until the lookup ends or times out."""
        tc = rec.target_context
        if tc is None or tc.type not in ("ipv4", "ipv6"):
            return False
        target = ev._details().target
        name_hash = target.name_hash if target is not None else None
        if name_hash:
            name = self._names.get(name_hash) or self._kernel_name(name_hash)
            if name:
                rec.target_context = msgspec.structs.replace(tc, hostname=name)
                return False
        if self._reverse is None:
            return False
        future = self._reverse.lookup(tc.address)
        if future is None:
            return False
        self._held.append((rec, future, time.monotonic() + self._reverse.timeout * 2 + 0.5))
        return True

    def _kernel_name(self, name_hash: int) -> Optional[str]:
        """The name from the kernel's own table, when its dns_answer record was lost."""
        try:
            return self._tracer.guard_answered_name(name_hash)
        except RuntimeGuardError:
            return None

    def _release_held(self, wait: bool = False) -> list[EventRecord]:
        """The held decisions whose reverse name is known or overdue, in order."""
        out: list[EventRecord] = []
        keep = []
        now = time.monotonic()
        for rec, future, deadline in self._held:
            if wait and not future.done():
                try:
                    future.result(timeout=max(0.0, deadline - time.monotonic()))
                except Exception:
                    pass
            if not future.done() and now < deadline and not wait:
                keep.append((rec, future, deadline))
                continue
            reverse = None
            if future.done() and not future.cancelled() and future.exception() is None:
                reverse = future.result()
            if reverse is not None and reverse.name:
                rec.target_context = msgspec.structs.replace(rec.target_context, reverse_name=reverse.name,
                                                             reverse_confirmed=reverse.confirmed)
                self._late_allow(rec.target_context.address, reverse)
            out.append(rec)
        self._held = keep
        return out

    def _flush_held(self) -> None:
        """At close: the held decisions, their lookups waited for (bounded)."""
        if not self._held:
            return
        released = self._release_held(wait=True)
        if self._audit is not None:
            self._audit.write_many(released)
        self.events += released
        for rec in released:
            if self._sinks:
                self._to_sinks(rec)
            if self._on_event is not None:
                self._on_event(rec)

    def _late_allow(self, address: str, reverse: ReverseName) -> None:
        """network.dns.allow_confirmed_ptr: a confirmed PTR name an allow rule
        names opens the address to that rule for the name's TTL, as an
        observed answer would have."""
        if not reverse.confirmed or not self.policy.network.dns.allow_confirmed_ptr:
            return
        bits = sum(1 << i for i, host in enumerate(self._host_patterns)
                   if host in self._allowed_hosts and hostnames.host_matches(host, reverse.name))
        if not bits:
            return
        try:
            self._tracer.guard_allow_resolved(address, bits, reverse.name, reverse.ttl)
        except RuntimeGuardError:
            # A name the kernel's table cannot hold (a PTR answer is the
            # remote side's to choose): the address stays refused, and the
            # poll that read the decision goes on.
            pass

    def _in_scope(self, pid: int) -> Optional[bool]:
        """Whether pid is guarded; None when it is gone and nobody can tell."""
        if pid == os.getpid():
            return False
        if self._scope_path is None:
            return True
        try:
            with open(f"/proc/{pid}/cgroup") as f:
                path = next((line.split(":", 2)[2].strip() for line in f if line.startswith("0::")), "")
        except OSError:
            return None
        return path == self._scope_path or path.startswith(self._scope_path + "/")

    def _judge_mutations(self) -> list[EventRecord]:
        decisions = []
        for m in self._mutations.read():
            if m.pid <= 0:
                continue  # a changer outside the guard's pid namespace: nobody to name or kill
            scoped = self._in_scope(m.pid)
            if scoped is False:
                continue
            kill = self.mode == "enforce" and self.policy.files.action == "kill" and scoped
            if kill:
                try:
                    os.kill(m.pid, signal.SIGKILL)
                except ProcessLookupError:
                    kill = False
            p = m.key
            if p is None:
                continue
            action = "killed" if kill else ("would_block" if self.mode == "audit" else "observed")
            index = self._rules.index(p.rule_id) if p.rule_id in self._rules else -1
            process = self._tracer.process(m.pid)
            decisions.append(EventRecord(
                timestamp=time.time_ns(), id=EVENT_IDS["protected_file_changed"], name="protected_file_changed",
                pid=m.pid, tid=m.pid, entity_id=process.entity_id if process else 0, action=action,
                workload=Workload(process=process) if process else None,
                data=ProtectedFileChangedData(rule_index=index, blocked=False, would_deny=self.mode == "audit",
                                              comm=process.name if process else "", operation=m.operation,
                                              device=p.device, inode=p.inode),
                target_context=TargetContext(
                    type="inode", device=p.device, inode=p.inode, path=p.path,
                    formatted=f"{p.path} (inode {p.inode} on {os.major(p.device)}:{os.minor(p.device)})"),
                policy=PolicyRef(rule=p.rule_id, mode=self.mode, name=self.policy.name)))
        return decisions

    def _name_file(self, ev: EventRecord) -> None:
        """The kernel reports the opened dentry's name; the rule knows the path."""
        rule = self._rule_paths.get(ev.data.rule_index)
        tc = ev.target_context
        if rule is None or tc is None:
            return
        path, dev, ino = rule
        if (tc.device, tc.inode) != (dev, ino):
            path = f"{path}/.../{tc.path}"  # somewhere beneath a protected directory
        ev.target_context = msgspec.structs.replace(
            tc, path=path, formatted=f"{path} (inode {tc.inode} on {os.major(tc.device)}:{os.minor(tc.device)})")

    def run(self, argv: Sequence[str], *, poll_interval: float = 0.1, user: Optional[str] = None) -> GuardResult:
        """Runs argv in a fresh cgroup under this guard; returns its exit status
        and the decisions. Every descendant stays in scope (double forks and
        setsid() do not leave a cgroup); leftovers are killed at the end.

        The guard covers the command's cgroup, or what the policy's scope names:
        a cgroup (the command's cgroup is made inside it) or the whole host.

        user: run the command as this user (name or uid), with its primary
        group, no supplementary groups and no_new_privs, so it cannot undo the
        guard (leave its cgroup, kill the guard, detach programs) nor regain
        privileges through a set-uid program."""
        identity = _identity(user) if user is not None else None
        # Before the cgroup is made: without privileges that would fail first,
        # with a PermissionError that does not say what is missing.
        environment.check_privileges()
        root = environment.cgroup2_mount()
        scope = self.policy.scope
        parent = root
        if scope.type == "cgroup":
            parent = scope.cgroup if os.path.isabs(scope.cgroup) else os.path.join(root, scope.cgroup)
        cgroup = environment.make_cgroup(parent, "runtimeguard")
        if scope.type == "command":
            self._cgroup = cgroup
        proc = None
        try:
            self.start()

            def enter_cgroup() -> None:
                # In the child, before exec: the guard is attached before the
                # command's first instruction runs. Privileges are dropped
                # after, since only root may move a process into the cgroup.
                environment.join_cgroup(cgroup)
                if identity is not None:
                    _drop_privileges(*identity)

            try:
                proc = subprocess.Popen(list(argv), preexec_fn=enter_cgroup)
            except OSError as e:
                raise RuntimeGuardError(f"cannot run {argv[0]!r}: {e.strerror}") from None
            while proc.poll() is None:
                requested, self._requested_mode = self._requested_mode, None
                if requested is not None and requested != self.mode:
                    self.set_mode(requested)
                try:
                    self.poll(poll_interval)
                except KeyboardInterrupt:
                    # The command got the same SIGINT from the terminal; let it finish.
                    proc.send_signal(signal.SIGINT)
            self._drain()
            status = proc.returncode
            return GuardResult(exit_status=128 - status if status < 0 else status, events=self.events)
        finally:
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
            environment.kill_cgroup(cgroup)
            if self._tracer is not None:
                self._drain()
            self.close()
            os.rmdir(cgroup)

    def _drain(self, budget_s: Optional[float] = None) -> None:
        """Polls until the ring buffer has nothing more (or budget_s has passed).
        Ends on a poll that returned nothing at all, not on one that returned
        no decision: a batch of process events only is no sign the ring is empty."""
        if self._tracer is None:
            return
        deadline = None if budget_s is None else time.monotonic() + budget_s
        wait = self._tracer.max_latency_ms / 1000 * 2
        while True:
            self.poll(wait)
            if not self._polled or (deadline is not None and time.monotonic() >= deadline):
                return

    def _log_unreported_loss(self) -> None:
        """A lost record for what the kernel counts lost and no notice in the stream said yet."""
        if self._audit is None or self._tracer is None:
            return
        logged = self._ring_lost_logged
        unseen = {kind: n - logged.get(kind, 0) for kind, n in self._tracer.stats().lost.items()
                  if n > logged.get(kind, 0)}
        if not unseen:
            return
        for kind, n in unseen.items():
            logged[kind] = logged.get(kind, 0) + n
        self._audit.write(EventRecord(timestamp=time.time_ns(), id=EVENT_IDS["lost"], name="lost",
                                      pid=os.getpid(), tid=threading.get_native_id(),
                                      data=LostData(count=sum(unseen.values()), by_kind=unseen)))


def choose_backend(requested: str = "auto") -> str:
    """The backend a guard asked for ``requested`` runs: the strongest this
    kernel runs for "auto" (BPF LSM, else fanotify permission events for
    files with tracepoints for the rest, else tracepoints alone), or the one
    named, RuntimeGuardError saying why when it cannot run here."""
    if requested not in BACKENDS:
        raise ValueError(f"backend {requested!r} must be one of {', '.join(BACKENDS)}")
    if requested == "tracepoint":
        return "tracepoint"
    if requested in ("auto", "lsm"):
        works, why = lsm_enforcement()
        if works:
            return "lsm"
        if requested == "lsm":
            raise RuntimeGuardError(f"the BPF LSM backend is not available here: {why}")
    works, why = fanotify_permission()
    if works:
        return "fanotify"
    if requested == "fanotify":
        raise RuntimeGuardError(f"the fanotify backend is not available here: {why}")
    return "tracepoint"


def describe_backend(backend: str) -> str:
    """What holds files, ptrace, process memory, namespaces and mounts under
    a backend, in words (the first line of ``runtimeguard run``)."""
    if backend == "lsm":
        return ("BPF LSM hooks: files, ptrace, process memory, clones and mounts refused with EPERM before the "
                "operation; unshare and setns killed at syscall entry")
    _, why = lsm_enforcement()
    if backend == "fanotify":
        return ("fanotify: files and decoys refused with EPERM before the open; syscall tracepoints: ptrace, "
                f"process memory, namespaces and mounts killed at the syscall (no BPF LSM: {why})")
    return f"syscall tracepoints: files, ptrace, process memory, namespaces and mounts killed at the syscall ({why})"


def _identity(user: str) -> tuple[int, int]:
    """(uid, gid) of a user name or numeric uid; a clear error when unknown."""
    try:
        entry = pwd.getpwuid(int(user)) if str(user).isdigit() else pwd.getpwnam(str(user))
    except KeyError:
        raise RuntimeGuardError(f"run: no such user {user!r}") from None
    return entry.pw_uid, entry.pw_gid


def _drop_privileges(uid: int, gid: int) -> None:
    if lib.prctl(lib.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ffi.errno, "prctl(PR_SET_NO_NEW_PRIVS)")
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)


def format_decision(ev: EventRecord) -> str:
    """One readable line for the operator's terminal."""
    what = {"would_block": "WOULD BLOCK", "blocked": "BLOCKED", "killed": "KILLED"}.get(ev.action, "REPORTED")
    process = ev.workload.process if ev.workload is not None else None
    who = f"{process.name or '?'}[{ev.pid}]" if process else f"pid {ev.pid}"
    target = ev.target_context.formatted if ev.target_context is not None else ""
    rule = ev.policy.rule if ev.policy is not None else "?"
    return f"{what} {ev.name} {who} -> {target} (rule {rule})"


def guard(policy: Policy, argv: Sequence[str], *, mode: Optional[str] = None, audit_log: Optional[str] = None,
          on_event: Optional[Callable[[EventRecord], None]] = None, backend: str = "auto",
          user: Optional[str] = None, **options) -> GuardResult:
    """Runs argv under policy; returns its exit status and the guard's decisions.
    backend: "auto" (the strongest this kernel runs), "lsm", "fanotify" or "tracepoint".
    user: run argv as this user, unprivileged (see Guard.run).
    options: more Guard options (ring_buffer_size, audit_max_bytes, audit_backups,
    audit_coalesce_s, audit_keep_first)."""
    if mode is not None:
        policy = policy.with_mode(mode)
    return Guard(policy, audit_log=audit_log, on_event=on_event, backend=backend, **options).run(argv, user=user)
