"""The policy: one YAML, TOML or JSON document, validated into frozen Structs.

A policy is refused whole: decoding (:mod:`runtimeguard.configfile`: msgspec,
``forbid_unknown_fields``) and then the semantic checks run before anything
is returned, and the first problem raises :class:`PolicyError` naming the
field (``network.allow[1].ports[0]``) and the reason. Nothing is half-applied
because nothing is applied here at all: this module is pure (no BPF). The
guard compiles a validated policy with :meth:`Policy.network_rules` and
:meth:`Policy.protected_paths`, and :func:`decide_network` is the reference
the kernel's network decision is tested against.

Values are normalized on load, so equal policies compare equal whatever their
format: CIDRs are rewritten as their network (``10.1.2.3/8`` -> ``10.0.0.0/8``),
paths are expanded (``~``) and absolute, and a decoy's template is filled in.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import stat
import weakref
from typing import Any, Iterable, Iterator, Literal, Mapping, Optional, Union

import msgspec

from . import configfile, hostnames
from .configfile import Format
from .errors import RuntimeGuardError

__all__ = [
    "CompiledNetRule", "Decoy", "Files", "Mirage", "NetRule", "Network", "Policy", "PolicyError",
    "ProtectedPath", "Ptrace", "Scope", "Taint", "check_policy", "decide_network", "guess_template",
]

POLICY_VERSION = 1

# "No ports" means every port, 0 included: a SYN to port 0 still reaches the
# destination, so a rule for "all ports" must not leave that one out.
ALL_PORTS = (0, 65535)

# Paths that may not be protected: protecting one would kill every process in
# scope on its first open (every path is beneath "/").
_REFUSED_PROTECT = ("/",)

# The kernel's largest pid_max (PID_MAX_LIMIT on 64-bit).
_PID_MAX_LIMIT = 4194304

Template = Literal["aws", "env", "ssh_key", "generic"]


class PolicyError(RuntimeGuardError, ValueError):
    """A policy that cannot be used: names the field and why.

    ``field`` is a path such as ``network.allow[1].ports[0]``, or ``""`` when
    the problem is the document as a whole (a syntax error, not a mapping).
    """

    def __init__(self, field: str, reason: str, source: str = "<text>"):
        self.field = field
        self.reason = reason
        self.source = source
        # args carry everything so the error pickles (multiprocessing, logging).
        super().__init__(field, reason, source)

    def __str__(self) -> str:
        if self.field:
            return f"{self.source}: {self.field}: {self.reason}"
        return f"{self.source}: {self.reason}"


@contextlib.contextmanager
def _policy_errors() -> Iterator[None]:
    """A document's errors (runtimeguard.configfile) as PolicyError."""
    try:
        yield
    except configfile.ConfigError as e:
        raise PolicyError(e.field, e.reason, e.source) from None


# ---- the document ----

class _Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    pass


class Scope(_Section):
    """What is guarded: a command and its descendants (in a cgroup of their
    own), an existing cgroup, or the whole host."""

    type: Literal["command", "cgroup", "host"] = "command"
    cgroup: Optional[str] = None
    """The cgroup's path relative to the cgroup2 mount, or absolute; only with type cgroup."""


class NetRule(_Section):
    """One destination rule: exactly one of ``cidr`` or ``host``."""

    cidr: Optional[str] = None
    host: Optional[str] = None
    """A host name (``api.example.com``) or a glob (``*.example.com``: any
    name under example.com, not example.com itself). Matched against the
    names the guarded processes ask DNS for: the addresses of an answer the
    guard saw (see ``network.dns``) carry the rule until their TTL runs out.
    Nothing is resolved in advance."""
    ports: Optional[tuple[Union[int, str], ...]] = None
    """Ports (443) and inclusive ranges ("8000-8100"); absent: every port."""
    protocol: Literal["tcp", "udp", "any"] = "any"

    def port_ranges(self) -> tuple[tuple[int, int], ...]:
        """The ports as sorted, merged, inclusive ranges."""
        if self.ports is None:
            return (ALL_PORTS,)
        return _merge([_port_range(p) for p in self.ports])


class Dns(_Section):
    """How the guard reads the DNS answers host rules depend on."""

    servers: Optional[tuple[str, ...]] = None
    """The servers whose answers count. Absent: the nameservers of
    /etc/resolv.conf as the guard sees it when it starts. With a default of
    deny and host rules, port 53 of these servers is allowed
    (``network.dns.servers``)."""
    min_ttl: float = 5.0
    """Seconds an answer's addresses are held at least (a TTL of 0 must
    still let the connect that follows through)."""
    max_ttl: float = 3600.0
    """Seconds they are held at most, whatever the answer's TTL."""
    reverse_lookup: Optional[bool] = None
    """A refused connect to an address no answer named carries its PTR name
    (``target_context.reverse_name``), checked forward (``reverse_confirmed``),
    asked of ``servers``; the decision is logged once the lookup ends (at
    most about 2.5 s later). Absent: on when the policy has host rules."""
    allow_confirmed_ptr: bool = False
    """Late allow: when such an address's PTR name resolves back to it and an
    allow rule names it, later connects to it are allowed (the first was
    already refused, or reported in audit mode)."""
    refuse_unobserved: bool = False
    """Refuse DNS the guard cannot read or does not trust: port 853 (DNS
    over TLS and QUIC) everywhere, HTTPS to well-known DNS-over-HTTPS
    resolvers (by address and by name), and port 53 of any server but
    ``servers`` (rule ``network.dns.refuse_unobserved``)."""


class Network(_Section):
    default: Literal["allow", "deny"] = "allow"
    allow: tuple[NetRule, ...] = ()
    deny: tuple[NetRule, ...] = ()
    dns: Dns = msgspec.field(default_factory=Dns)
    # Raw and packet sockets write their own headers, past every address
    # rule: refused unless the policy allows them.
    raw_sockets: Literal["allow", "deny"] = "deny"


class Files(_Section):
    protect: tuple[str, ...] = ()
    """Resolved to device + inode when compiled; a directory covers everything beneath it."""
    action: Literal["kill", "report"] = "kill"
    """What enforce mode does to a process that opens a protected file."""


class Decoy(_Section):
    path: str
    """Created with fake content when absent (and removed on exit), else used as is."""
    template: Optional[Template] = None
    """Filled in on load: guessed from the path when not given."""


class Mirage(_Section):
    decoys: tuple[Decoy, ...] = ()
    kill: bool = False
    """Enforce mode kills a process that opens a decoy; otherwise taint + report."""


class Ptrace(_Section):
    deny: bool = True
    """Guarded processes may not ptrace or read/write another process's memory."""
    protect_pids: tuple[int, ...] = ()
    """Processes outside the scope that no guarded process may ptrace or read."""


class Namespaces(_Section):
    deny: Optional[bool] = None
    """Guarded processes may not make or join namespaces (unshare, clone and
    clone3 with CLONE_NEW*, setns) nor mount (mount, move_mount, fsmount,
    open_tree clones, mount_setattr, pivot_root): an agent has no business
    doing either, and each is a way around the other rules (an overlay over
    a protected file, a private view of the filesystem). Absent: on for the
    command and cgroup scopes, off for the whole host, whose own services
    (init, container runtimes) mount and make namespaces all the time."""
    allow: tuple[Literal["time", "mnt", "cgroup", "uts", "ipc", "user", "pid", "net", "mount"], ...] = ()
    """Exceptions: namespace kinds a guarded process may still make or join,
    and "mount" for the mount calls."""


class Taint(_Section):
    # "from" is a Python keyword: the attribute is ``sources``.
    sources: tuple[Literal["files", "mirage"], ...] = msgspec.field(default=("files", "mirage"), name="from")
    """Which opens taint a process (and its later children)."""
    block_egress: bool = True
    """A tainted process's egress is blocked (exfil_blocked)."""


class Identity(_Section):
    """Machine identity: what marks a guarded process as holding a secret."""

    env: tuple[str, ...] = ()
    """Environment variable names the kernel looks for at each exec (a
    name, NAME* or *NAME); their values never leave the kernel."""
    argv: tuple[str, ...] = ()
    """Substrings of an exec's arguments."""


class Policy(_Section, weakref=True):
    """A validated policy. Build one with :meth:`load`, :meth:`from_text` or
    :meth:`from_dict`; constructing it directly skips validation."""

    version: int
    name: Optional[str] = None
    mode: Literal["audit", "enforce"] = "audit"
    scope: Scope = msgspec.field(default_factory=Scope)
    network: Network = msgspec.field(default_factory=Network)
    files: Files = msgspec.field(default_factory=Files)
    mirage: Mirage = msgspec.field(default_factory=Mirage)
    ptrace: Ptrace = msgspec.field(default_factory=Ptrace)
    taint: Taint = msgspec.field(default_factory=Taint)
    namespaces: Namespaces = msgspec.field(default_factory=Namespaces)
    identity: Identity = msgspec.field(default_factory=Identity)

    def namespaces_denied(self) -> bool:
        """Whether namespaces and mounts are judged: namespaces.deny, or when
        absent, every scope but the whole host."""
        deny = self.namespaces.deny
        return deny if deny is not None else self.scope.type != "host"

    # ---- building ----

    @classmethod
    def load(cls, path: Union[str, os.PathLike], format: Optional[Format] = None) -> "Policy":
        """Reads, decodes and validates a policy file. The format comes from
        the extension (.yaml, .yml, .toml, .json) unless given."""
        source = os.fspath(path)
        with _policy_errors():
            if format is None:
                format = configfile.format_from_name(source)
            data = configfile.read(path, "policy")
        return cls.from_text(data, format, source=source)

    @classmethod
    def from_text(cls, text: Union[str, bytes], format: Format = "yaml", source: str = "<text>") -> "Policy":
        with _policy_errors():
            data = configfile.decode(text, format, source, "policy")
        return cls.from_dict(data, source=source)

    @classmethod
    def from_dict(cls, data: Any, source: str = "<text>") -> "Policy":
        """Validates already-decoded data (what a YAML/TOML/JSON parser returns)."""
        with _policy_errors():
            data = configfile.mapping(data, source, "policy")
            _check_version(data, source)
            policy = configfile.convert(data, cls, source)
        policy = _Validator(policy, source).run()
        _remember_source(policy, source)
        return policy

    def with_mode(self, mode: str) -> "Policy":
        if mode not in ("audit", "enforce"):
            raise PolicyError("mode", f"invalid mode {mode!r} (expected one of: audit, enforce)", self.source)
        policy = msgspec.structs.replace(self, mode=mode)
        _remember_source(policy, self.source)
        return policy

    @property
    def source(self) -> str:
        """The file (or "<text>") the policy came from, for error messages."""
        return _SOURCES.get(id(self), "<policy>")

    # ---- compiling (pure: no BPF) ----

    def network_rules(self) -> list["CompiledNetRule"]:
        """The network rules, deny rules first (each list in document order),
        then those ``network.dns`` implies.

        IPv4-mapped IPv6 networks become the IPv4 network they carry, so one
        family matches them (see :func:`decide_network`). A host rule stays a
        pattern: the kernel matches it by the DNS answers it reads.
        """
        compiled = []
        dns = self.network.dns
        if dns.refuse_unobserved:
            refused = "network.dns.refuse_unobserved"
            compiled.append(CompiledNetRule(refused, "deny", ipaddress.ip_network("0.0.0.0/0"), ((853, 853),), "any"))
            compiled.append(CompiledNetRule(refused, "deny", ipaddress.ip_network("::/0"), ((853, 853),), "any"))
            for cidr in hostnames.DOH_ADDRESSES:
                compiled.append(CompiledNetRule(refused, "deny", ipaddress.ip_network(cidr), ((443, 443),), "any"))
            for host in hostnames.DOH_HOSTS:
                compiled.append(CompiledNetRule(refused, "deny", None, ((443, 443),), "any", host=host))
        for action in ("deny", "allow"):
            for i, rule in enumerate(getattr(self.network, action)):
                rule_id = f"network.{action}[{i}]"
                ranges = rule.port_ranges()
                if rule.cidr is not None:
                    net = _unmap_network(ipaddress.ip_network(rule.cidr, strict=False))
                    compiled.append(CompiledNetRule(rule_id, action, net, ranges, rule.protocol))
                else:
                    compiled.append(CompiledNetRule(rule_id, action, None, ranges, rule.protocol, host=rule.host))
        if self.network.default == "deny" and any(r.host for r in compiled):
            for address in self.dns_servers():
                compiled.append(CompiledNetRule("network.dns.servers", "allow", ipaddress.ip_network(address),
                                                ((53, 53),), "any"))
        return compiled

    def host_patterns(self) -> tuple[str, ...]:
        """The distinct host patterns of the rules (each gets one bit in the kernel)."""
        return tuple(dict.fromkeys(r.host for r in self.network_rules() if r.host))

    def reverse_lookups(self) -> bool:
        """Whether refused destinations get their PTR names (network.dns.reverse_lookup)."""
        wanted = self.network.dns.reverse_lookup
        return wanted if wanted is not None else bool(self.host_patterns())

    def dns_servers(self) -> tuple[str, ...]:
        """The DNS servers whose answers count: network.dns.servers, else
        the nameservers of /etc/resolv.conf now."""
        servers = self.network.dns.servers
        return servers if servers is not None else hostnames.nameservers()

    def protected_paths(self) -> list["ProtectedPath"]:
        """``files.protect`` resolved to device + inode, following symlinks:
        the target is what is protected."""
        out = []
        for i, path in enumerate(self.files.protect):
            field = f"files.protect[{i}]"
            st = _stat(path, field, self.source)
            out.append(ProtectedPath(field, path, st.st_dev, st.st_ino, stat.S_ISDIR(st.st_mode)))
        return out


class CompiledNetRule(msgspec.Struct, frozen=True):
    rule_id: str
    """The rule in the document: ``network.deny[1]``."""
    action: Literal["allow", "deny"]
    network: Optional[Union[ipaddress.IPv4Network, ipaddress.IPv6Network]]
    """None for a host rule."""
    port_ranges: tuple[tuple[int, int], ...]
    """Inclusive, sorted, merged; ``((0, 65535),)`` for a rule without ports."""
    protocol: Literal["tcp", "udp", "any"]
    host: Optional[str] = None
    """A host rule's pattern (``api.example.com``, ``*.example.com``)."""


class ProtectedPath(msgspec.Struct, frozen=True):
    rule_id: str
    path: str
    """Expanded and absolute, as written (a symlink is not replaced by its target)."""
    device: int
    """As ``os.stat().st_dev`` reports it."""
    inode: int
    is_dir: bool


def check_policy(path: Union[str, os.PathLike], format: Optional[Format] = None) -> Policy:
    """Everything ``runtimeguard check-policy`` checks: load, validate,
    compile the network rules, resolve the protected paths. Loads nothing
    into the kernel."""
    policy = Policy.load(path, format)
    policy.network_rules()
    policy.protected_paths()
    return policy


def decide_network(rules: Iterable[CompiledNetRule], default: str, address: Any, port: int,
                   protocol: str, names: Iterable[str] = ()) -> tuple[str, str]:
    """The policy's verdict on a destination: ``(action, rule_id)``.

    Any matching deny rule denies (the first one names the rule); otherwise
    any matching allow rule allows; otherwise the default decides, with rule
    id ``network.default``. An IPv4-mapped IPv6 address (``::ffff:1.2.3.4``)
    is matched as the IPv4 address it carries. A rule with protocol ``any``
    matches every protocol. A host rule matches when one of ``names`` (the
    names DNS answered with this address, whose answers are still held)
    falls under its pattern.
    """
    ip = ipaddress.ip_address(address)
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    names = tuple(names)
    allowed_by = None
    for r in rules:
        if r.host is not None:
            if not any(hostnames.host_matches(r.host, n) for n in names):
                continue
        elif r.network.version != ip.version or ip not in r.network:
            continue
        if r.protocol != "any" and r.protocol != protocol:
            continue
        if not any(lo <= port <= hi for lo, hi in r.port_ranges):
            continue
        if r.action == "deny":
            return "deny", r.rule_id
        if allowed_by is None:
            allowed_by = r.rule_id
    if allowed_by is not None:
        return "allow", allowed_by
    return default, "network.default"


def guess_template(path: str) -> Template:
    """The decoy content that fits a file name: ``~/.aws/credentials`` -> aws."""
    name = os.path.basename(path).lower()
    parts = path.lower().split("/")
    if ".aws" in parts or "aws" in name or name in (".boto", ".s3cfg"):
        return "aws"
    if name == ".env" or name.startswith(".env.") or name.endswith(".env"):
        return "env"
    if name.startswith(("id_rsa", "id_dsa", "id_ecdsa", "id_ed25519")) or name.endswith((".pem", ".key")):
        return "ssh_key"
    return "generic"


# ---- where a policy came from ----

# Policies are frozen Structs whose every field is part of the document, so
# the source (for error messages raised after loading) is kept beside them,
# dropped when the policy is collected.
_SOURCES: dict[int, str] = {}


def _remember_source(policy: Policy, source: str) -> None:
    _SOURCES[id(policy)] = source
    weakref.finalize(policy, _SOURCES.pop, id(policy), None)


# ---- the version ----

def _check_version(data: Mapping, source: str) -> None:
    # Checked before decoding so that a newer document is refused for its
    # version, not for the first field this version does not know.
    if "version" not in data:
        raise PolicyError("version", "required field missing (this runtimeguard reads version 1)", source)
    v = data["version"]
    if type(v) is not int:
        raise PolicyError("version", f"expected an integer, got {type(v).__name__}", source)
    if v != POLICY_VERSION:
        raise PolicyError("version", f"unsupported policy version {v} (this runtimeguard reads version "
                                     f"{POLICY_VERSION})", source)


# ---- semantic validation ----

# Limits the kernel sets (bpf/events.h RG_HOST_PATTERNS; rg_dns_servers' size).
HOST_PATTERNS_MAX = 64
_DNS_SERVERS_MAX = 64
_TTL_MAX = 7 * 86400

def _port(value: int) -> int:
    if not 1 <= value <= 65535:
        raise ValueError(f"port {value} out of range 1-65535")
    return value


_RANGE = re.compile(r"\s*([0-9]{1,6})\s*(?:-\s*([0-9]{1,6})\s*)?", re.ASCII)


def _port_range(p: Union[int, str]) -> tuple[int, int]:
    """A validated port or range as (lo, hi); ValueError says what is wrong."""
    if isinstance(p, int):
        return _port(p), p
    m = _RANGE.fullmatch(p)
    if m is None:
        raise ValueError(f"malformed port range {p!r} (expected a port or LOW-HIGH, like \"8000-8100\")")
    lo = _port(int(m.group(1)))
    hi = _port(int(m.group(2))) if m.group(2) is not None else lo
    if lo > hi:
        raise ValueError(f"port range {p!r} is reversed (low {lo} > high {hi})")
    return lo, hi


def _merge(ranges: list[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    out: list[list[int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return tuple((lo, hi) for lo, hi in out)


def _unmap_network(net):
    """``::ffff:10.0.0.0/104`` -> ``10.0.0.0/8``: matching sees one family."""
    if net.version == 6 and net.prefixlen >= 96 and net.network_address.ipv4_mapped is not None:
        return ipaddress.IPv4Network((int(net.network_address) & 0xFFFFFFFF, net.prefixlen - 96))
    return net


def _stat(path: str, field: str, source: str) -> os.stat_result:
    try:
        return os.stat(path)
    except FileNotFoundError:
        raise PolicyError(field, "file not found", source) from None
    except OSError as e:
        raise PolicyError(field, f"cannot stat {path}: {e.strerror or e}", source) from None
    except ValueError as e:  # an embedded NUL
        raise PolicyError(field, f"invalid path: {e}", source) from None


class _Validator:
    """The checks msgspec's types cannot express. Each raises PolicyError
    naming the field; :meth:`run` returns the normalized policy."""

    def __init__(self, policy: Policy, source: str):
        self.policy = policy
        self.source = source

    def fail(self, field: str, reason: str):
        raise PolicyError(field, reason, self.source)

    def run(self) -> Policy:
        p = self.policy
        replace = msgspec.structs.replace
        self.scope(p.scope)
        network = replace(p.network, allow=self.rules(p.network.allow, "allow"),
                          deny=self.rules(p.network.deny, "deny"), dns=self.dns(p.network.dns))
        self.contradictions(network)
        self.host_limit(network)
        files = replace(p.files, protect=self.protect(p.files.protect))
        mirage = replace(p.mirage, decoys=self.decoys(p.mirage.decoys, files.protect))
        self.ptrace(p.ptrace)
        self.taint(p.taint)
        self.namespaces(p.namespaces, p.scope)
        self.identity(p.identity)
        return replace(p, network=network, files=files, mirage=mirage)

    def dns(self, dns: Dns) -> Dns:
        servers = None
        if dns.servers is not None:
            servers = []
            for i, raw in enumerate(dns.servers):
                try:
                    ip = ipaddress.ip_address(raw.strip())
                except ValueError:
                    self.fail(f"network.dns.servers[{i}]", f"{raw!r} is not an IP address")
                if ip.version == 6 and ip.ipv4_mapped is not None:
                    ip = ip.ipv4_mapped
                if str(ip) in servers:
                    self.fail(f"network.dns.servers[{i}]", f"duplicate of network.dns.servers[{servers.index(str(ip))}]")
                servers.append(str(ip))
            if len(servers) > _DNS_SERVERS_MAX:
                self.fail("network.dns.servers", f"{len(servers)} servers; at most {_DNS_SERVERS_MAX}")
            servers = tuple(servers)
        if not 0 < dns.min_ttl <= _TTL_MAX:
            self.fail("network.dns.min_ttl", f"must be above 0 and at most {_TTL_MAX} seconds")
        if not dns.min_ttl <= dns.max_ttl <= _TTL_MAX:
            self.fail("network.dns.max_ttl", f"must be at least min_ttl ({dns.min_ttl}) and at most {_TTL_MAX} "
                                             "seconds")
        return msgspec.structs.replace(dns, servers=servers)

    def host_limit(self, network: Network) -> None:
        hosts = {r.host for r in network.allow + network.deny if r.host}
        if network.dns.refuse_unobserved:
            hosts.update(hostnames.DOH_HOSTS)
        if len(hosts) > HOST_PATTERNS_MAX:
            self.fail("network", f"{len(hosts)} distinct host names and globs; at most {HOST_PATTERNS_MAX} "
                                 "(network.dns.refuse_unobserved adds its own)")
        keys: dict[int, str] = {}
        for host in sorted(hosts):
            other = keys.setdefault(hostnames.name_hash(host), host)
            if other != host:  # 64-bit: never seen, but the kernel keys patterns by it
                self.fail("network", f"host patterns {other!r} and {host!r} share a hash; rename one")

    def identity(self, ident: Identity) -> None:
        from . import identity

        for kind, patterns in (("env", ident.env), ("argv", ident.argv)):
            for i, pattern in enumerate(patterns):
                problem = identity.pattern_problem(pattern, env=kind == "env")
                if problem:
                    self.fail(f"identity.{kind}[{i}]", problem)
                if pattern in patterns[:i]:
                    self.fail(f"identity.{kind}[{i}]", f"{pattern!r} is listed twice")
            if len(patterns) > identity.PATTERNS_MAX:
                self.fail(f"identity.{kind}", f"{len(patterns)} patterns; at most {identity.PATTERNS_MAX}")

    def scope(self, scope: Scope) -> None:
        if scope.type == "cgroup":
            if scope.cgroup is None:
                self.fail("scope.cgroup", "required when scope.type is cgroup")
            if not scope.cgroup.strip() or "\0" in scope.cgroup:
                self.fail("scope.cgroup", "empty or invalid cgroup path")
            if ".." in scope.cgroup.split("/"):
                self.fail("scope.cgroup", "must not contain '..' (it would leave the cgroup hierarchy)")
        elif scope.cgroup is not None:
            self.fail("scope.cgroup", f"only allowed when scope.type is cgroup (it is {scope.type})")

    def rules(self, rules: tuple[NetRule, ...], action: str) -> tuple[NetRule, ...]:
        out = []
        seen: dict[tuple, int] = {}
        for i, rule in enumerate(rules):
            field = f"network.{action}[{i}]"
            if (rule.cidr is None) == (rule.host is None):
                self.fail(field, "a rule needs exactly one of cidr or host")
            if rule.cidr is not None:
                try:
                    net = ipaddress.ip_network(rule.cidr.strip(), strict=False)
                except ValueError as e:
                    self.fail(f"{field}.cidr", f"invalid CIDR: {e}")
                rule = msgspec.structs.replace(rule, cidr=str(net))
            else:
                host, why = hostnames.normalize_host(rule.host)
                if host is None:
                    self.fail(f"{field}.host", f"invalid host name {rule.host!r}: {why}")
                rule = msgspec.structs.replace(rule, host=host)
            if rule.ports is not None:
                if not rule.ports:
                    self.fail(f"{field}.ports", "empty: leave ports out to match every port")
                for j, p in enumerate(rule.ports):
                    try:
                        _port_range(p)
                    except ValueError as e:
                        self.fail(f"{field}.ports[{j}]", str(e))
            key = _rule_key(rule)
            if key in seen:
                self.fail(field, f"duplicate of network.{action}[{seen[key]}] (same destination, ports "
                                 "and protocol)")
            seen[key] = i
            out.append(rule)
        return tuple(out)

    def contradictions(self, network: Network) -> None:
        allowed = {}
        for i, rule in enumerate(network.allow):
            allowed.setdefault(_rule_key(rule), i)
        for j, rule in enumerate(network.deny):
            i = allowed.get(_rule_key(rule))
            if i is not None:
                self.fail(f"network.deny[{j}]", f"contradicts network.allow[{i}]: the same destination, ports "
                                               "and protocol are both allowed and denied")

    def path(self, raw: str, field: str) -> str:
        if "\0" in raw:
            self.fail(field, "invalid path (NUL byte)")
        path = os.path.expanduser(raw.strip())
        if not path:
            self.fail(field, "empty path")
        if not os.path.isabs(path):
            # A relative path would mean something else in every directory
            # the guard is started from.
            self.fail(field, f"{raw!r} is not absolute (use an absolute path or ~)")
        return os.path.normpath(path)

    def protect(self, paths: tuple[str, ...]) -> tuple[str, ...]:
        out: list[str] = []
        for i, raw in enumerate(paths):
            field = f"files.protect[{i}]"
            path = self.path(raw, field)
            if os.path.realpath(path) in _REFUSED_PROTECT:
                self.fail(field, "refusing to protect / (it would protect everything)")
            _stat(path, field, self.source)
            if path in out:
                self.fail(field, f"duplicate of files.protect[{out.index(path)}]")
            out.append(path)
        return tuple(out)

    def decoys(self, decoys: tuple[Decoy, ...], protected: tuple[str, ...]) -> tuple[Decoy, ...]:
        out: list[Decoy] = []
        protected_real = [os.path.realpath(p) for p in protected]
        for i, decoy in enumerate(decoys):
            field = f"mirage.decoys[{i}].path"
            path = self.path(decoy.path, field)
            parent = os.path.dirname(path)
            if not os.path.isdir(parent):
                # The guard creates the decoy file, never directories above it.
                self.fail(field, f"parent directory {parent} does not exist")
            if os.path.isdir(path):
                self.fail(field, "is a directory (a decoy is a file)")
            real = os.path.realpath(path)
            if real in protected_real:
                self.fail(field, f"is also files.protect[{protected_real.index(real)}] (a path is either "
                                 "protected or a decoy)")
            for j, other in enumerate(out):
                if os.path.realpath(other.path) == real:
                    self.fail(field, f"duplicate of mirage.decoys[{j}].path")
            template = decoy.template if decoy.template is not None else guess_template(path)
            out.append(msgspec.structs.replace(decoy, path=path, template=template))
        return tuple(out)

    def ptrace(self, ptrace: Ptrace) -> None:
        seen: list[int] = []
        for i, pid in enumerate(ptrace.protect_pids):
            field = f"ptrace.protect_pids[{i}]"
            if pid <= 0:
                self.fail(field, f"invalid pid {pid} (must be positive)")
            if pid == 1:
                self.fail(field, "pid 1 (init) cannot be a protected pid")
            if pid > _PID_MAX_LIMIT:
                self.fail(field, f"pid {pid} is above the kernel's limit ({_PID_MAX_LIMIT})")
            if pid == os.getpid():
                self.fail(field, f"pid {pid} is this process: protecting the guard itself (it always is)")
            if pid in seen:
                self.fail(field, f"duplicate of ptrace.protect_pids[{seen.index(pid)}]")
            seen.append(pid)

    def taint(self, taint: Taint) -> None:
        for i, s in enumerate(taint.sources):
            if s in taint.sources[:i]:
                self.fail(f"taint.from[{i}]", f"duplicate {s!r}")

    def namespaces(self, namespaces: Namespaces, scope: Scope) -> None:
        for i, kind in enumerate(namespaces.allow):
            if kind in namespaces.allow[:i]:
                self.fail(f"namespaces.allow[{i}]", f"duplicate {kind!r}")
        if namespaces.allow and namespaces.deny is False:
            self.fail("namespaces.allow", "exceptions to a deny that is off (namespaces.deny: false)")
        if namespaces.allow and namespaces.deny is None and scope.type == "host":
            self.fail("namespaces.allow", "exceptions to a deny that is off for the whole host unless "
                      "namespaces.deny is set")


def _rule_key(rule: NetRule) -> tuple:
    """Two rules with the same key match exactly the same traffic."""
    if rule.cidr is not None:
        dest: Any = _unmap_network(ipaddress.ip_network(rule.cidr))
    else:
        dest = ("host", rule.host)
    return dest, rule.port_ranges(), rule.protocol
