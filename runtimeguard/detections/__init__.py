"""Detections: whether what happened matters, with MITRE ATT&CK metadata.

A ``Detector`` runs rules over the Events a Tracer hands out and adds a
``detection`` Event after each event that completed a rule: its ``data``
names the rule, says what happened in one line and lists every event
involved; its ``threat`` says why it matters (description, severity, ATT&CK
tactic and technique, ids and names); ``triggered_by`` is the event that
completed the rule, whose process is the detection's workload.

    from runtimeguard import Tracer
    from runtimeguard.detections import Detector

    detector = Detector()                       # the default rules, as default.yaml tunes them
    with Tracer(**detector.tracer_options(cgroups=["/ci/job-42"])) as tracer:
        for ev in detector.run(tracer):
            if ev.name == "detection":
                print(ev.threat.mitre_technique_id, ev.data.summary)

Rules are ``Rule`` subclasses (engine.py); the defaults are in rules.py; the
tuning YAML (tuning.py, default.yaml) switches them on and off, sets their
severity and exceptions, and their own lists.
"""

from .detector import Detector, DetectorStats
from .engine import Finding, Recent, Rule, RuleConfigError, RuleContext, RuleException, RuleOptions, Technique
from .paths import PathPattern, PathSet
from .rules import DEFAULT_RULES
from .tuning import DEFAULT_TUNING, DetectionConfigError, Tuning, load_tuning, parse_tuning

__all__ = [
    "DEFAULT_RULES", "DEFAULT_TUNING", "DetectionConfigError", "Detector", "DetectorStats", "Finding",
    "PathPattern", "PathSet", "Recent", "Rule", "RuleConfigError", "RuleContext", "RuleException", "RuleOptions",
    "Technique", "Tuning", "load_tuning", "parse_tuning",
]
