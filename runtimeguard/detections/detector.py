"""The Detector: runs the enabled rules over a stream of Events and adds a
``detection`` Event after each event that completed a rule."""

from __future__ import annotations

import collections
import logging
import os
import socket
import sys
from typing import Iterable, Iterator, Optional, Union

import msgspec

from ..schema import (
    EVENT_IDS,
    DetectionData,
    Event,
    TargetContext,
    TriggeredBy,
    _Target,
)
from .engine import Finding, Rule, RuleConfigError, RuleContext, threat_of
from .tuning import DEFAULT_TUNING, DetectionConfigError, Tuning, load_tuning

__all__ = ["Detector", "DetectorStats"]

log = logging.getLogger("runtimeguard.detections")
DETECTION_ID = EVENT_IDS["detection"]
_MAX_REMEMBERED = 16384
# Targets a detection can carry over from its trigger: those made from the
# target's own fields (a socket or namespace target is made from the data).
_CARRIED_TARGETS = ("ipv4", "ipv6", "inode", "pid")


class DetectorStats(msgspec.Struct, frozen=True):
    events: int
    """Events looked at."""
    detections: dict[str, int]
    """Detections made, per rule."""
    excepted: dict[str, int]
    """Findings a rule's exceptions covered, per rule."""
    repeats: dict[str, int]
    """Findings folded into one reported within the repeat window, per rule."""
    errors: dict[str, int]
    """Times a rule raised, per rule."""
    disabled: list[str]
    """Rules switched off after max_errors errors."""


class Detector:
    """Runs detection rules over Events.

    ``Detector()`` runs the default rules as the shipped ``default.yaml``
    tunes them; ``Detector("tuning.yaml")`` (or a ``Tuning``) with the
    defaults overridden; ``Detector(rules=[...])`` exactly the rule
    instances given (the tuning then sets only the detector's own settings).
    ``catalog`` lists the Rule classes a tuning may name (the defaults, plus
    your own).

    ``run(events)`` yields every event, each followed by the detections it
    completed; ``process(ev)`` returns one event's detections. A rule that
    raises is logged (once per rule, to the ``runtimeguard.detections``
    logger) and counted in ``stats().errors``; the other rules go on, and so
    does it, unless the tuning's ``max_errors`` says to switch it off after
    that many errors.

    Read detections while the tracer runs: a detection's workload is its
    triggering event's, resolved when the detection is made."""

    def __init__(self, tuning: Union[Tuning, str, os.PathLike, None] = None, *,
                 rules: Optional[Iterable[Rule]] = None, catalog: Optional[Iterable[type[Rule]]] = None,
                 hostname: Optional[str] = None):
        if catalog is None:
            from .rules import DEFAULT_RULES as catalog
        catalog = tuple(catalog)
        if tuning is None:
            tuning = load_tuning(DEFAULT_TUNING, catalog)
        elif not isinstance(tuning, Tuning):
            tuning = load_tuning(tuning, catalog)
        self.tuning = tuning
        if rules is None:
            built = []
            for cls in catalog:
                options = tuning.options_for(cls)
                if not options.enabled:
                    continue  # nor its hosts resolved
                try:
                    built.append(cls(options))
                except RuleConfigError as e:
                    raise DetectionConfigError(f"rules.{cls.id}.{e.field}", e.reason, tuning.source) from None
            rules = built
        self.rules: tuple[Rule, ...] = tuple(r for r in rules if r.enabled)
        ids = [r.id for r in self.rules]
        duplicated = sorted({i for i in ids if ids.count(i) > 1})
        if duplicated:
            raise ValueError(f"rule ids must be unique: {', '.join(duplicated)}")
        self._by_kind: dict[int, list[Rule]] = collections.defaultdict(list)
        for rule in self.rules:
            unknown = sorted(set(rule.events) - set(EVENT_IDS))
            if unknown:
                raise ValueError(f"rule {rule.id}: unknown event kind(s) {', '.join(unknown)}")
            for kind in rule.events:
                self._by_kind[EVENT_IDS[kind]].append(rule)
        self._ctx = RuleContext(hostname or socket.gethostname())
        self._repeat_ns = int(tuning.repeat_window_s * 1e9)
        self._last: "collections.OrderedDict[tuple, int]" = collections.OrderedDict()
        self._events = 0
        self._detections: collections.Counter = collections.Counter()
        self._excepted: collections.Counter = collections.Counter()
        self._repeats: collections.Counter = collections.Counter()
        self._errors: collections.Counter = collections.Counter()
        self._disabled: set[str] = set()
        self._roots: Optional[frozenset[str]] = None

    # ---- what a Tracer must deliver ----

    @property
    def events(self) -> tuple[str, ...]:
        """The event kinds the enabled rules need."""
        return tuple(sorted({kind for rule in self.rules for kind in rule.events}))

    @property
    def watch_paths(self) -> tuple[str, ...]:
        """The files and directories (a directory: the entries directly in
        it) whose opens the enabled rules need, existing ones only."""
        return tuple(dict.fromkeys(p for rule in self.rules for p in rule.watch_paths))

    def watches(self, path: Optional[str]) -> bool:
        """Whether an open of path is one a Tracer given ``watch_files`` would
        report: a watched file, or an entry directly in a watched directory."""
        if not path:
            return False
        roots = self._roots
        if roots is None:
            roots = self._roots = frozenset(p for root in self.watch_paths
                                            for p in (root, os.path.realpath(root)))
        return path in roots or os.path.dirname(path) in roots

    def tracer_options(self, **filters) -> dict:
        """The keyword arguments of a Tracer that delivers what the rules
        need, with filters (pids, comms, cgroups, ...) added: the events,
        the watched files (``watch_files``: only their opens are reported),
        and the identity patterns the rules name."""
        options: dict = {"events": list(self.events)}
        if "file_open" in self.events and self.watch_paths:
            options["watch_files"] = list(self.watch_paths)
        env = tuple(dict.fromkeys(p for rule in self.rules for p in rule.identity_patterns()[0]))
        argv = tuple(dict.fromkeys(p for rule in self.rules for p in rule.identity_patterns()[1]))
        if env:
            options["identity_env"] = list(env)
        if argv:
            options["identity_argv"] = list(argv)
        options.update(filters)
        return options

    # ---- running ----

    def run(self, events: Iterable[Event]) -> Iterator[Event]:
        """Every event, each followed by the detections it completed."""
        for ev in events:
            yield ev
            yield from self.process(ev)

    def process(self, ev: Event) -> list[Event]:
        """The detections ev completed (none for a detection itself)."""
        self._events += 1
        rules = self._by_kind.get(ev.id)
        if not rules:
            return []
        out = []
        for rule in rules:
            if rule.id in self._disabled:
                continue
            try:
                for finding in rule.check(ev, self._ctx):
                    detection = self._detection(rule, finding)
                    if detection is not None:
                        out.append(detection)
            except Exception:  # noqa: BLE001 - one rule's failure must not stop the others
                self._failed(rule, ev)
        return out

    def _failed(self, rule: Rule, ev: Event) -> None:
        self._errors[rule.id] += 1
        n = self._errors[rule.id]
        if n == 1:
            log.error("detection rule %s raised on a %s event (pid %d); it keeps running, errors are counted in "
                      "Detector.stats().errors", rule.id, ev.name, ev.pid, exc_info=sys.exc_info())
        limit = self.tuning.max_errors
        if limit is not None and n >= limit:
            self._disabled.add(rule.id)
            log.error("detection rule %s switched off after %d errors (max_errors)", rule.id, n)

    def _detection(self, rule: Rule, finding: Finding) -> Optional[Event]:
        trigger = finding.events[-1]
        wl = trigger.workload
        process = wl.process if wl is not None else None
        image = wl.container.image if wl is not None and wl.container is not None else None
        uid = process.uid if process is not None and process.uid is not None else trigger.uid
        if rule.exempt(process, image, uid):
            self._excepted[rule.id] += 1
            return None
        entity = trigger.entity_id or (process.entity_id if process is not None else 0)
        if finding.key is not None and self._repeat_ns:
            key = (rule.id, entity, finding.key)
            last = self._last.get(key)
            if last is not None and 0 <= trigger.timestamp - last < self._repeat_ns:
                self._repeats[rule.id] += 1
                return None
            self._last[key] = trigger.timestamp
            self._last.move_to_end(key)
            if len(self._last) > _MAX_REMEMBERED:
                self._last.popitem(last=False)
        threat = threat_of(finding.description, rule.effective_severity, finding.technique or rule.technique)
        involved = [_ref(e) for e in finding.events]
        target = trigger.target_context
        detection = Event.make(
            id=DETECTION_ID, timestamp=trigger.timestamp,
            data=DetectionData(rule=rule.id, summary=finding.summary, events=involved),
            pid=trigger.pid, tid=trigger.tid, entity_id=entity, cgroup_id=trigger.cgroup_id, uid=trigger.uid,
            euid=trigger.euid, gid=trigger.gid, comm=trigger.comm, target=_carried(target), threat=threat,
            triggered_by=involved[-1])
        # The trigger's process and target as they were, not looked up again later.
        detection.workload_ = wl
        detection.target_ = target
        self._detections[rule.id] += 1
        return detection

    def stats(self) -> DetectorStats:
        return DetectorStats(events=self._events, detections=dict(self._detections), excepted=dict(self._excepted),
                             repeats=dict(self._repeats), errors=dict(self._errors),
                             disabled=sorted(self._disabled))


def _ref(ev: Event) -> TriggeredBy:
    entity = ev.entity_id
    if not entity:
        wl = ev.workload
        entity = wl.process.entity_id if wl is not None else 0
    return TriggeredBy(name=ev.name, id=ev.id, timestamp=ev.timestamp, pid=ev.pid, entity_id=entity or None)


def _carried(target: Optional[TargetContext]) -> Optional[_Target]:
    if target is None or target.type not in _CARRIED_TARGETS:
        return None
    return _Target(target.type, target.address, target.port, target.device, target.inode, target.path, target.pid)
