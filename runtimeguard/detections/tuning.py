"""The detection tuning: one YAML document, validated into msgspec Structs.

```yaml
version: 1
repeat_window_s: 60        # the same finding of one process, reported once per this many seconds
max_errors: null           # errors after which a rule that raises is switched off (null: never)
rules:
  reverse_shell:
    enabled: true
    severity: critical
    exceptions:
      - executable: [/usr/bin/socat]
  credential_read:
    private_keys: ["~/.ssh/id_*"]
```

A rule left out, and any key of a rule left out, keeps its default (the
shipped ``default.yaml`` spells every default out). A list given replaces
the default list. Unknown keys and unknown rule ids are errors, as is any
value a rule cannot use; the error names the key and its line
(``DetectionConfigError``), and nothing of a bad document is used.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterable, Iterator, Mapping, Optional, Union

import msgspec

from .. import configfile
from .engine import Rule, RuleOptions

__all__ = ["DEFAULT_TUNING", "DetectionConfigError", "TUNING_VERSION", "Tuning", "load_tuning", "parse_tuning"]

TUNING_VERSION = 1
DEFAULT_TUNING = os.path.join(os.path.dirname(os.path.abspath(__file__)), "default.yaml")
_TOP_KEYS = ("version", "repeat_window_s", "max_errors", "rules")


class DetectionConfigError(configfile.ConfigError):
    """A tuning that cannot be used: names the key (``rules.reverse_shell.severity``),
    its line in the file where known, and why."""


class Tuning(msgspec.Struct, frozen=True):
    """A validated tuning: the detector's settings and each rule's options
    (only the rules the document names; the others keep their defaults)."""

    version: int = TUNING_VERSION
    repeat_window_s: float = 60.0
    """A finding a rule repeats for the same process and the same thing
    (target, path, address) within this many seconds is counted, not reported
    again. 0: every one is reported."""
    max_errors: Optional[int] = None
    """A rule that raised this many times is switched off; None: never (a
    rule an attacker can make raise must not be one they can switch off)."""
    rules: dict[str, RuleOptions] = {}
    source: str = "<defaults>"

    def options_for(self, rule: type[Rule]) -> RuleOptions:
        found = self.rules.get(rule.id)
        return found if found is not None else rule.Options()


@contextlib.contextmanager
def _tuning_errors() -> Iterator[None]:
    """A document's errors (runtimeguard.configfile) as DetectionConfigError."""
    try:
        yield
    except configfile.ConfigError as e:
        raise DetectionConfigError(e.field, e.reason, e.source, e.line) from None


def load_tuning(path: Union[str, os.PathLike], catalog: Optional[Iterable[type[Rule]]] = None) -> Tuning:
    """Reads and validates a tuning file (YAML; JSON is YAML too)."""
    with _tuning_errors():
        data = configfile.read(path, "tuning")
    return parse_tuning(data, source=os.fspath(path), catalog=catalog)


def parse_tuning(text: Union[str, bytes], source: str = "<text>",
                 catalog: Optional[Iterable[type[Rule]]] = None) -> Tuning:
    with _tuning_errors():
        text = configfile.text_of(text, source, "tuning")
        data = configfile.decode(text, "yaml", source, "tuning")
    try:
        return tuning_from_dict(data, source=source, catalog=catalog)
    except DetectionConfigError as e:
        if e.line is None and e.field:
            e.line = configfile.line_of(text, e.field)
        raise


def tuning_from_dict(data: Any, source: str = "<text>", catalog: Optional[Iterable[type[Rule]]] = None) -> Tuning:
    """Validates already-decoded data (what a YAML parser returns)."""
    if catalog is None:
        from .rules import DEFAULT_RULES as catalog
    known = {rule.id: rule for rule in catalog}
    with _tuning_errors():
        data = configfile.mapping(data, source, "tuning")
    for key in data:
        if key not in _TOP_KEYS:
            raise DetectionConfigError(str(key), f"unknown key (expected one of: {', '.join(_TOP_KEYS)})", source)
    if "version" not in data:
        raise DetectionConfigError("version", f"required (this runtimeguard reads version {TUNING_VERSION})", source)
    version = data["version"]
    if type(version) is not int or version != TUNING_VERSION:
        raise DetectionConfigError("version", f"unsupported version {version!r} (this runtimeguard reads version "
                                              f"{TUNING_VERSION})", source)
    window = data.get("repeat_window_s", 60.0)
    if type(window) not in (int, float) or not 0 <= window <= 86400:
        raise DetectionConfigError("repeat_window_s", f"expected seconds between 0 and 86400, got {window!r}", source)
    max_errors = data.get("max_errors")
    if max_errors is not None and (type(max_errors) is not int or max_errors < 1):
        raise DetectionConfigError("max_errors", f"expected null or a count of at least 1, got {max_errors!r}",
                                   source)
    rules = data.get("rules") or {}
    if not isinstance(rules, Mapping):
        raise DetectionConfigError("rules", f"expected a mapping of rule ids, got a {type(rules).__name__}", source)
    options: dict[str, RuleOptions] = {}
    for rule_id, value in rules.items():
        rule = known.get(rule_id)
        if rule is None:
            raise DetectionConfigError(f"rules.{rule_id}", f"unknown rule (known: {', '.join(sorted(known))})",
                                       source)
        options[rule_id] = _rule_options(rule, {} if value is None else value, source)
    return Tuning(version=version, repeat_window_s=float(window), max_errors=max_errors, rules=options,
                  source=source)


def _rule_options(rule: type[Rule], value: Any, source: str) -> RuleOptions:
    at = f"rules.{rule.id}"
    if not isinstance(value, Mapping):
        raise DetectionConfigError(at, f"expected a mapping of the rule's options, got a {type(value).__name__}",
                                   source)
    for key in value:
        if not isinstance(key, str):
            raise DetectionConfigError(f"{at}.{key!r}", "keys must be strings (YAML reads yes, no, on, off, true, "
                                                        "false and null unquoted as other values: quote them)", source)
    try:
        options = configfile.convert(value, rule.Options, source, noun="key")
    except configfile.ConfigError as e:
        raise DetectionConfigError(f"{at}.{e.field}" if e.field else at, e.reason, source) from None
    for field, reason in options.problems():
        raise DetectionConfigError(f"{at}.{field}", reason, source)
    return options
