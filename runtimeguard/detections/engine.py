"""What a detection rule is: a typed callable over the event stream.

A rule sees each Event of the kinds it declares (``Rule.events``), may keep
state between them (a sequence within a process tree, a time window:
``Recent``), and yields ``Finding``s. The Detector (detector.py) turns each
finding into a ``detection`` event carrying a ``Threat`` with the rule's
MITRE ATT&CK tactic and technique, unless one of the rule's tuned
exceptions covers the process, or the same finding was reported moments
before.

Rules are configured by their ``Options`` (a msgspec Struct, validated from
the tuning YAML; tuning.py): the common ``enabled``, ``severity`` and
``exceptions``, and the rule's own lists.
"""

from __future__ import annotations

import collections
import fnmatch
import ipaddress
import os
import re
from typing import Any, ClassVar, Iterable, Iterator, Literal, Optional, Union

import msgspec

from ..schema import Event, Process, ProcessRef, Threat

__all__ = [
    "Finding", "Names", "Recent", "Rule", "RuleConfigError", "RuleContext", "RuleException", "RuleOptions", "Severity", "Technique",
    "basename", "glob_any", "parse_network", "threat_of",
]

Severity = Literal["info", "low", "medium", "high", "critical"]
SEVERITIES: tuple[str, ...] = ("info", "low", "medium", "high", "critical")


class Technique(msgspec.Struct, frozen=True):
    """A MITRE ATT&CK tactic and technique, ids and names as ATT&CK publishes them."""

    tactic_id: str
    tactic: str
    technique_id: str
    technique: str


class Finding(msgspec.Struct, frozen=True):
    """What a rule found.

    ``events``: every event involved, oldest first; the last, the latest,
    completed the rule (it becomes ``triggered_by``, and its process the
    detection's workload). ``technique`` overrides the rule's first one (a rule that
    tells cron from systemd says which). ``key`` says what makes two
    findings of one process the same (a target, a path): the Detector
    reports such a repeat once per its repeat window; None: never folded."""

    summary: str
    description: str
    events: tuple[Event, ...]
    technique: Optional[Technique] = None
    key: Any = None


class RuleException(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A process a rule does not report: every key given must match (any of
    its values); keys left out match anything. Paths and images are
    shell-style patterns (``*``, ``?``, ``[...]``; ``*`` crosses ``/``)."""

    executable: tuple[str, ...] = ()
    """The process's executable (its own path, as ``workload.process.executable``)."""
    parent_executable: tuple[str, ...] = ()
    """Its parent's executable."""
    uid: tuple[int, ...] = ()
    """Its real uid when the event happened."""
    container_image: tuple[str, ...] = ()
    """Its container's image, as the runtime recorded it."""

    def covers(self, process: Optional[Process], image: Optional[str], uid: Optional[int]) -> bool:
        if self.executable and not glob_any(process.executable if process else None, self.executable):
            return False
        if self.parent_executable:
            parent: Optional[ProcessRef] = process.parent if process else None
            if not glob_any(parent.executable if parent else None, self.parent_executable):
                return False
        if self.uid and uid not in self.uid:
            return False
        if self.container_image and not glob_any(image, self.container_image):
            return False
        return True


class RuleOptions(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What every rule takes; a rule's own Options add its lists."""

    enabled: bool = True
    severity: Optional[Severity] = None
    """None: the rule's own default."""
    exceptions: tuple[RuleException, ...] = ()

    def problems(self) -> Iterator[tuple[str, str]]:
        """(field, reason) for each value that cannot be used; the field is a
        path below the rule ("paths[2]"). Rules extend this."""
        for i, e in enumerate(self.exceptions):
            if not (e.executable or e.parent_executable or e.uid or e.container_image):
                yield f"exceptions[{i}]", ("an exception must name at least one of executable, "
                                           "parent_executable, uid, container_image (an empty one would "
                                           "cover every process)")


class RuleConfigError(ValueError):
    """An option a rule cannot use: ``field`` is its path below the rule."""

    def __init__(self, field: str, reason: str):
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}")


class RuleContext:
    """What a rule may ask besides the event: the host's name, and the
    process table (a process by pid, now)."""

    def __init__(self, hostname: str):
        self.hostname = hostname

    def process(self, pid: int) -> Optional[Process]:
        from .. import schema

        resolver = schema._resolver
        by_pid = getattr(resolver, "by_pid", None)
        return by_pid(pid) if by_pid is not None and pid > 0 else None


class Rule:
    """A detection rule. Subclasses set the class attributes and ``check``.

    ``id`` names it in the tuning YAML and in ``DetectionData.rule``;
    ``techniques`` are the ATT&CK techniques it reports (the first unless a
    finding says otherwise); ``severity`` is its default (tuning overrides);
    ``events`` the event kinds ``check`` needs (a Tracer is asked for these);
    ``Options`` the Struct its tuning is validated into."""

    id: ClassVar[str] = ""
    title: ClassVar[str] = ""
    techniques: ClassVar[tuple[Technique, ...]] = ()
    severity: ClassVar[Severity] = "medium"
    events: ClassVar[frozenset[str]] = frozenset()
    Options: ClassVar[type[RuleOptions]] = RuleOptions

    def __init__(self, options: Optional[RuleOptions] = None):
        self.options = options if options is not None else self.Options()
        for field, reason in self.options.problems():
            raise RuleConfigError(field, reason)

    @property
    def technique(self) -> Technique:
        return self.techniques[0]

    @property
    def threat(self) -> Threat:
        """The rule's Threat as tuned: its title, severity and first
        technique; each detection's says what happened instead, and its
        finding's technique where that differs."""
        return threat_of(self.title or self.id, self.effective_severity, self.technique)

    @property
    def enabled(self) -> bool:
        return self.options.enabled

    @property
    def effective_severity(self) -> Severity:
        return self.options.severity or self.severity

    @property
    def watch_paths(self) -> tuple[str, ...]:
        """Existing files and directories (a directory: the entries directly
        in it) whose opens this rule needs to see; () for rules that watch
        no files."""
        return ()

    def identity_patterns(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(environment variable patterns, argv patterns) the Tracer must
        register for this rule to see processes' identities."""
        return (), ()

    def check(self, ev: Event, ctx: RuleContext) -> Iterable[Finding]:
        raise NotImplementedError

    def exempt(self, process: Optional[Process], image: Optional[str], uid: Optional[int]) -> bool:
        return any(e.covers(process, image, uid) for e in self.options.exceptions)


class Recent:
    """Values seen lately, per key: what a rule remembers for a sequence
    within a time window. Bounded: the oldest keys go first past max_keys,
    the oldest values of a key past max_per_key; values older than the
    window are dropped as they are met. Times are event timestamps (ns)."""

    def __init__(self, window_s: float, max_keys: int = 8192, max_per_key: int = 8):
        self.window_ns = int(window_s * 1e9)
        self.max_keys = max_keys
        self.max_per_key = max_per_key
        self._items: "collections.OrderedDict[Any, collections.deque]" = collections.OrderedDict()

    def add(self, key: Any, timestamp: int, value: Any) -> None:
        items = self._items
        found = items.get(key)
        if found is None:
            found = items[key] = collections.deque(maxlen=self.max_per_key)
            if len(items) > self.max_keys:
                items.popitem(last=False)
        else:
            items.move_to_end(key)
        found.append((timestamp, value))

    def within(self, key: Any, timestamp: int) -> list[tuple[int, Any]]:
        """(time, value) of key within the window of timestamp (before or after it)."""
        found = self._items.get(key)
        if not found:
            return []
        while found and found[0][0] < timestamp - self.window_ns:
            found.popleft()
        if not found:
            del self._items[key]
            return []
        return [(t, v) for t, v in found if abs(timestamp - t) <= self.window_ns]

    def __len__(self) -> int:
        return len(self._items)


def threat_of(description: str, severity: Severity, technique: Technique) -> Threat:
    return Threat(description=description, severity=severity, mitre_tactic=technique.tactic,
                  mitre_technique=technique.technique, mitre_tactic_id=technique.tactic_id,
                  mitre_technique_id=technique.technique_id)


def basename(path: Optional[str]) -> str:
    return os.path.basename(path.rstrip("/")) if path else ""


def glob_any(text: Optional[str], patterns: Iterable[str]) -> bool:
    return text is not None and any(fnmatch.fnmatchcase(text, p) for p in patterns)


class Names:
    """Shell-style patterns of names, compiled into one expression: rules
    test every exec's names against their lists."""

    __slots__ = ("_regex",)

    def __init__(self, patterns: Iterable[str]):
        patterns = tuple(patterns)
        self._regex = re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns)) if patterns else None

    def first(self, names: Iterable[Optional[str]]) -> Optional[str]:
        """The first of names a pattern matches."""
        if self._regex is None:
            return None
        match = self._regex.match
        return next((n for n in names if n and match(n)), None)


Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


def parse_network(text: str) -> Network:
    """An address or CIDR; an IPv4-mapped IPv6 one as the IPv4 it carries."""
    net = ipaddress.ip_network(text, strict=False)
    if isinstance(net, ipaddress.IPv6Network) and net.network_address.ipv4_mapped is not None \
            and net.prefixlen >= 96:
        net = ipaddress.ip_network(f"{net.network_address.ipv4_mapped}/{net.prefixlen - 96}")
    return net


def parse_address(text: str) -> Optional[Union[ipaddress.IPv4Address, ipaddress.IPv6Address]]:
    """An event's address; an IPv4-mapped IPv6 one as its IPv4 (the kernel
    sends those to the IPv4 address)."""
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address

