"""A Markdown report of a guarded run, such as a CI step summary.

``RunSummary`` is a sink: hand it every event (``Guard(on_event=s.write)``,
a Tracer's ``ev.record()``, the lines of an audit log) and ask it for
``markdown()`` at the end::

    summary = RunSummary()
    result = guard(policy, argv, on_event=summary.write)
    summary.append_github_step_summary(argv=argv, exit_status=result.exit_status, policy_name=policy.name)

What it keeps is bounded whatever the workload does (a port scan, a fork
bomb, a flood of DNS answers): past each limit it keeps counting but stops
remembering, and the report says how much it did not itemise. Everything the
workload or the policy controls is escaped (``escape_cell``), and the report
fits ``max_bytes`` by dropping whole table rows.
"""

from __future__ import annotations

import datetime
import os
import shlex
import tempfile
import threading
import unicodedata
from typing import Any, Iterable, Optional, Sequence, Union

from ..schema import BLOCK_EVENTS, EventRecord, Process, as_record

__all__ = ["RunSummary", "escape_cell", "table_row", "DEFAULT_MAX_BYTES", "MIN_MAX_BYTES"]

DEFAULT_MAX_BYTES = 64 * 1024
"""GitHub takes at most 1 MiB of step summary per step, all writers together:
the default leaves room for other steps' reports and stays readable."""
MIN_MAX_BYTES = 4096
"""Room for the parts never cut: the title and every section's heading."""

# Stored text is clipped on intake so that one huge path or argv cannot
# dominate memory; the report clips further for readability.
_STORED_CHARS = 512
_CELL_CHARS = 160
_TITLE_COMMAND_CHARS = 120
_TITLE_NAME_CHARS = 60

_ESCAPED = {c: "\\" + c for c in "\\`*_[]()#|~$@!"}
# Entities, not backslashes: then no raw "<" reaches the file at all, and
# nothing that reads it as HTML (GitHub passes some tags through) sees a tag.
_ESCAPED.update({"<": "&lt;", ">": "&gt;", "&": "&amp;"})
# What starts a block only at a line's start; escaped cells can end up there
# (a list item's text, a line of their own).
_LEADING = "-+="
_RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}
_NET_TARGETS = ("ipv4", "ipv6")
_BLOCKING = ("blocked", "killed")


def _visible(ch: str) -> str:
    """A character that would break a line, hide itself or reorder the text
    around it (bidi overrides, zero-width marks), as a visible escape; lone
    surrogates too, which would not even encode."""
    cat = unicodedata.category(ch)
    if cat in ("Cc", "Cf", "Cs", "Zl", "Zp"):
        code = ord(ch)
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
    return ch


def escape_cell(text: Any, max_chars: Optional[int] = _CELL_CHARS) -> str:
    """Text made safe for one Markdown table cell, or any place inline on a
    line: no line break, no ``|`` that is not backslash-escaped (GitHub's
    tables split on every pipe not preceded by a backslash), no raw ``<`` or
    ``>`` (HTML), no emphasis, code span, link, autolink, heading, quote,
    list, math or mention. Control and invisible formatting characters show
    as ``\\xNN`` / ``\\uNNNN``. Longer than max_chars: cut, marked with "…"."""
    s = "" if text is None else str(text)
    if max_chars is not None and len(s) > max_chars:
        s = s[:max(max_chars - 1, 0)] + "\u2026"
    digits = len(s) - len(s.lstrip("0123456789"))
    out = []
    for i, ch in enumerate(s):
        esc = _ESCAPED.get(ch)
        if esc is not None:
            out.append(esc)
        elif i == 0 and ch in _LEADING:
            out.append("\\" + ch)
        elif ch == "." and ((digits and i == digits and s[i + 1:i + 2] in ("", " ")) or s[i - 3:i].lower() == "www"):
            # "1." at a line's start is an ordered list; "www." an autolink.
            out.append("\\.")
        elif ch == ":" and s[i + 1:i + 3] == "//":
            out.append("\\:")  # "https://" would be made a link
        elif ch.isascii() and ch.isprintable():
            out.append(ch)
        else:
            out.append(_visible(ch))
    return "".join(out)


def table_row(cells: Iterable[str]) -> str:
    """A table row of already-escaped cells. Spaces around every separator
    keep a cell's trailing backslash from escaping the pipe after it."""
    return "| " + " | ".join(cells) + " |"


def _clip(text: Optional[str], limit: int = _STORED_CHARS) -> Optional[str]:
    if text is None or len(text) <= limit:
        return text
    return text[:limit - 1] + "\u2026"


def _iso(ns: Optional[int]) -> str:
    if ns is None:
        return ""
    try:
        t = datetime.datetime.fromtimestamp(ns / 1e9, datetime.timezone.utc)
    except (OverflowError, OSError, ValueError):
        return str(ns)
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _seconds(t: Union[None, float, int, datetime.datetime]) -> Optional[float]:
    if t is None:
        return None
    if isinstance(t, datetime.datetime):
        if t.tzinfo is None:
            t = t.replace(tzinfo=datetime.timezone.utc)
        return t.timestamp()
    return float(t)


def _duration(seconds: float) -> str:
    if seconds < 0:
        return f"{seconds:.3f} s"
    if seconds < 60:
        return f"{seconds:.2f} s"
    minutes, s = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min {s:02d} s" if hours else f"{minutes} min {s:02d} s"


def _plural(n: int, word: str, words: Optional[str] = None) -> str:
    return f"{n} {word if n == 1 else (words or word + 's')}"


class _ProcessSeen:
    __slots__ = ("name", "pid", "executable")

    def __init__(self, name: str, pid: int, executable: Optional[str]):
        self.name, self.pid, self.executable = name, pid, executable

    def label(self) -> str:
        text = f"{escape_cell(self.name, 32)}[{self.pid}]"
        if self.executable:
            text += f" ({escape_cell(self.executable, 96)})"
        return text


class _Decision:
    __slots__ = ("count", "actions", "first_ts", "first_process")

    def __init__(self, ts: int, process: Optional[_ProcessSeen]):
        self.count = 0
        self.actions: dict[str, int] = {}
        self.first_ts = ts
        self.first_process = process


class _Overflow:
    """Decisions of a rule past its kept targets: counted, not itemised."""

    __slots__ = ("count", "records", "actions")

    def __init__(self):
        self.count = 0
        self.records = 0
        self.actions: dict[str, int] = {}


class _Destination:
    __slots__ = ("address", "formatted", "first_ts", "hostnames", "more_hostnames", "reverse", "protocols", "connects", "failed",
                 "sends", "decisions")

    def __init__(self, address: str, formatted: str, first_ts: int):
        self.address = address
        self.formatted = formatted
        self.first_ts = first_ts
        self.hostnames: list[str] = []
        self.more_hostnames = 0
        self.reverse: Optional[tuple[str, Optional[bool]]] = None
        self.protocols: set[str] = set()
        self.connects = 0
        self.failed = 0
        self.sends = 0
        self.decisions: dict[str, int] = {}


class _Answer:
    __slots__ = ("count", "addresses", "more_addresses", "query_types", "rcodes", "servers", "matched")

    def __init__(self):
        self.count = 0
        self.addresses: list[str] = []
        self.more_addresses = 0
        self.query_types: set[str] = set()
        self.rcodes: set[int] = set()
        self.servers: list[str] = []
        self.matched = False


class _Identity:
    __slots__ = ("holders", "processes", "uncounted")

    def __init__(self):
        self.holders: list[_ProcessSeen] = []
        self.processes = 0
        self.uncounted = 0
        """Events of processes that could not be told apart any more."""


class _Table:
    """A section's table: rows are cut from the end, whole, when the report
    is too big; ``more`` makes the row that says what was cut."""

    def __init__(self, header: Sequence[str], rows: list[str], more=None):
        self.header = [table_row(header), table_row(["---"] * len(header))]
        self.rows = rows
        self.more = more
        self.keep = len(rows)

    def size(self, n: Optional[int] = None) -> int:
        return sum(len(r.encode()) + 1 for r in self.rows[:self.keep if n is None else n])


class RunSummary:
    """A sink that sums a guarded run up as Markdown.

    The limits bound its memory whatever the workload does; what falls past
    them is still counted, and reported as such:

    - ``max_targets_per_rule``: distinct targets itemised per rule;
    - ``max_decisions``: distinct (rule, event, target) rows in all;
    - ``max_rules``: distinct rules (the policy's own: rarely reached);
    - ``max_destinations``: distinct address:port pairs;
    - ``max_hostnames``: distinct (name, status) DNS answers;
    - ``max_identities`` and ``max_identity_pairs``: distinct identities,
      and (identity, process) pairs told apart to count each identity's
      holders.
    """

    def __init__(self, *, max_targets_per_rule: int = 500, max_decisions: int = 5000, max_rules: int = 500,
                 max_destinations: int = 2000, max_hostnames: int = 2000, max_identities: int = 256,
                 max_identity_pairs: int = 10_000, holders_listed: int = 10):
        self.max_targets_per_rule = max_targets_per_rule
        self.max_decisions = max_decisions
        self.max_rules = max_rules
        self.max_destinations = max_destinations
        self.max_hostnames = max_hostnames
        self.max_identities = max_identities
        self.max_identity_pairs = max_identity_pairs
        self.holders_listed = holders_listed
        self._lock = threading.Lock()
        self._closed = False
        self.records = 0
        """Records taken."""
        self.unreadable = 0
        """Records that could not be summed up (malformed by hand, say):
        counted, never raised to the caller that hands events out."""
        self._first_ts: Optional[int] = None
        self._last_ts: Optional[int] = None
        self._policy_mode: Optional[str] = None
        self._policy_name: Optional[str] = None
        self._mode_changes = 0
        # Decisions: rule -> (event, target) -> _Decision; cut ones by rule.
        self._decisions: dict[str, dict[tuple[str, str], _Decision]] = {}
        self._decision_rows = 0
        self._overflow: dict[str, _Overflow] = {}
        self._other_rules = _Overflow()
        self._decision_total = 0
        self._decisions_by_action: dict[str, int] = {}
        # Destinations: (address, port) -> _Destination.
        self._destinations: dict[tuple[str, int], _Destination] = {}
        self._destinations_cut = 0
        # DNS: (name, status) -> _Answer; addresses a counted answer named.
        self._answers: dict[tuple[str, str], _Answer] = {}
        self._answers_cut = 0
        self._answered: dict[str, str] = {}
        # Identities: identity -> _Identity; the pairs already counted.
        self._identities: dict[str, _Identity] = {}
        self._identities_cut = 0
        self._identity_pairs: set[tuple[str, int]] = set()
        # Loss notices in the stream: (source, kind) -> records.
        self._lost: dict[tuple[str, str], int] = {}
        self._lost_errors: set[str] = set()

    # ---- intake ----

    def write(self, record: EventRecord) -> None:
        """Takes one event (an ``EventRecord``, or a live ``Event``); never raises."""
        if self._closed:
            return
        try:
            rec = as_record(record)
            with self._lock:
                self._take(rec)
        except Exception:
            # A sink must not break the loop that feeds it: the report says how many.
            self.unreadable += 1

    def close(self) -> None:
        """Nothing to release: the report stays readable after close."""
        self._closed = True

    def _take(self, rec: EventRecord) -> None:
        n = 1 + (rec.repeated or 0)
        ts = rec.timestamp
        if self._first_ts is None or ts < self._first_ts:
            self._first_ts = ts
        if self._last_ts is None or ts > self._last_ts:
            self._last_ts = ts
        process = rec.workload.process if rec.workload is not None else None
        if process is not None and process.identities:
            self._take_identities(process)
        name = rec.name
        if rec.policy is not None and name != "mode_changed":
            self._policy_mode = rec.policy.mode
            if rec.policy.name:
                self._policy_name = _clip(rec.policy.name)
        if name in BLOCK_EVENTS:
            self._take_decision(rec, process, n)
        elif name == "net_connect" or name == "net_sendmsg":
            self._take_traffic(rec, n)
        elif name == "dns_answer":
            self._take_answer(rec.data, n)
        elif name == "lost":
            d = rec.data
            source = d.source or "ring_buffer"
            for kind, lost in d.by_kind.items():
                key = (source, _clip(str(kind), 64))
                if key in self._lost or len(self._lost) < 256:
                    self._lost[key] = self._lost.get(key, 0) + lost
            if d.error and len(self._lost_errors) < 8:
                self._lost_errors.add(_clip(d.error, 64))
        elif name == "mode_changed":
            self._mode_changes += 1
            self._policy_mode = rec.data.mode
        self.records += 1

    @staticmethod
    def _seen(rec: EventRecord, process: Optional[Process]) -> _ProcessSeen:
        if process is not None:
            return _ProcessSeen(_clip(process.name, 64), process.pid, _clip(process.executable))
        return _ProcessSeen(_clip(getattr(rec.data, "comm", "") or "?", 64), rec.pid, None)

    def _take_decision(self, rec: EventRecord, process: Optional[Process], n: int) -> None:
        action = rec.action
        rule = _clip(rec.policy.rule if rec.policy is not None else "?", 256)
        tc = rec.target_context
        target = _clip(tc.formatted if tc is not None else "")
        self._decision_total += n
        self._decisions_by_action[action] = self._decisions_by_action.get(action, 0) + n
        targets = self._decisions.get(rule)
        if targets is None:
            if len(self._decisions) >= self.max_rules:
                self._count_overflow(self._other_rules, action, n)
            else:
                targets = self._decisions[rule] = {}
        if targets is not None:
            key = (rec.name, target)
            entry = targets.get(key)
            if entry is None:
                if len(targets) >= self.max_targets_per_rule or self._decision_rows >= self.max_decisions:
                    overflow = self._overflow.get(rule)
                    if overflow is None:
                        overflow = self._overflow[rule] = _Overflow()
                    self._count_overflow(overflow, action, n)
                else:
                    entry = targets[key] = _Decision(rec.timestamp, self._seen(rec, process))
                    self._decision_rows += 1
            if entry is not None:
                if rec.timestamp < entry.first_ts:
                    entry.first_ts, entry.first_process = rec.timestamp, self._seen(rec, process)
                entry.count += n
                entry.actions[action] = entry.actions.get(action, 0) + n
        if tc is not None and tc.type in _NET_TARGETS and tc.address is not None:
            dest = self._destination(tc.address, tc.port or 0, tc.formatted, n, rec.timestamp)
            if dest is not None:
                self._name_destination(dest, tc)
                protocol = getattr(rec.data, "protocol", None)
                if protocol:
                    dest.protocols.add(_clip(protocol, 8))
                dest.decisions[action] = dest.decisions.get(action, 0) + n

    @staticmethod
    def _count_overflow(overflow: _Overflow, action: str, n: int) -> None:
        overflow.count += n
        overflow.records += 1
        overflow.actions[action] = overflow.actions.get(action, 0) + n

    def _destination(self, address: str, port: int, formatted: Optional[str], n: int,
                     ts: int) -> Optional[_Destination]:
        key = (_clip(address, 64), port)
        dest = self._destinations.get(key)
        if dest is None:
            if len(self._destinations) >= self.max_destinations:
                self._destinations_cut += n
                return None
            if not formatted:
                formatted = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
            dest = self._destinations[key] = _Destination(key[0], _clip(formatted, 80), ts)
        return dest

    @staticmethod
    def _name_destination(dest: _Destination, tc) -> None:
        hostname = getattr(tc, "hostname", None)
        if hostname:
            hostname = _clip(hostname, 256)
            if hostname not in dest.hostnames:
                if len(dest.hostnames) < 3:
                    dest.hostnames.append(hostname)
                else:
                    dest.more_hostnames += 1
        reverse = getattr(tc, "reverse_name", None)
        if reverse:
            dest.reverse = (_clip(reverse, 256), getattr(tc, "reverse_confirmed", None))

    def _take_traffic(self, rec: EventRecord, n: int) -> None:
        d = rec.data
        tc = rec.target_context
        if tc is not None and tc.type in _NET_TARGETS and tc.address is not None:
            address, port, formatted = tc.address, tc.port or 0, tc.formatted
        else:
            address, port = d.address, d.port
            formatted = f"[{address}]:{port}" if d.family == "ipv6" else f"{address}:{port}"
        dest = self._destination(address, port, formatted, n, rec.timestamp)
        if dest is None:
            return
        if tc is not None:
            self._name_destination(dest, tc)
        if d.protocol:
            dest.protocols.add(_clip(d.protocol, 8))
        if rec.name == "net_connect":
            dest.connects += n
            # A non-blocking connect under way (-EINPROGRESS) has not failed.
            if d.result < 0 and d.result != -115:
                dest.failed += n
        else:
            dest.sends += n

    def _take_answer(self, d, n: int) -> None:
        name = _clip(d.name, 256)
        key = (name, d.status)
        entry = self._answers.get(key)
        if entry is None:
            if len(self._answers) >= self.max_hostnames:
                self._answers_cut += n
                return
            entry = self._answers[key] = _Answer()
        entry.count += n
        if len(entry.query_types) < 4:
            entry.query_types.add(_clip(d.query_type, 12))
        if len(entry.rcodes) < 4:
            entry.rcodes.add(d.rcode)
        server = f"[{d.server}]:{d.server_port}" if ":" in d.server else f"{d.server}:{d.server_port}"
        if server not in entry.servers and len(entry.servers) < 3:
            entry.servers.append(_clip(server, 64))
        entry.matched = entry.matched or bool(d.matched)
        listed = 0
        for address in d.addresses:
            address = _clip(address, 64)
            if address not in entry.addresses and len(entry.addresses) < 32:
                entry.addresses.append(address)
            if address in entry.addresses:
                listed += 1
            # Only an answer to a query the workload sent names anything: the
            # others are exactly what a spoofer would send.
            if d.status == "counted" and address not in self._answered and len(self._answered) < 4096:
                self._answered[address] = name
        # Distinct unlisted addresses are not remembered: this answer's are a
        # lower bound of them.
        entry.more_addresses = max(entry.more_addresses, max(d.addresses_total, len(d.addresses)) - listed)

    def _take_identities(self, process: Process) -> None:
        for identity in process.identities:
            identity = _clip(identity, 128)
            entry = self._identities.get(identity)
            if entry is None:
                if len(self._identities) >= self.max_identities:
                    self._identities_cut += 1
                    continue
                entry = self._identities[identity] = _Identity()
            pair = (identity, process.entity_id or process.pid)
            if pair in self._identity_pairs:
                continue
            if len(self._identity_pairs) >= self.max_identity_pairs:
                entry.uncounted += 1
                continue
            self._identity_pairs.add(pair)
            entry.processes += 1
            if len(entry.holders) < self.holders_listed:
                entry.holders.append(_ProcessSeen(_clip(process.name, 64), process.pid, _clip(process.executable)))

    # ---- the report ----

    def markdown(self, *, argv: Optional[Sequence[str]] = None, policy_name: Optional[str] = None,
                 mode: Optional[str] = None, exit_status: Optional[int] = None,
                 started: Union[None, float, datetime.datetime] = None,
                 ended: Union[None, float, datetime.datetime] = None, stats: Any = None,
                 max_bytes: int = DEFAULT_MAX_BYTES) -> str:
        """The report, at most max_bytes of UTF-8 (whole table rows are cut,
        with a "... and N more" row saying so).

        argv: the command; exit_status: its status (``GuardResult.exit_status``);
        policy_name and mode: default to what the decisions' policy said;
        started, ended: the run's start and end, as ``time.time()`` gives
        them or as datetimes; stats: the guard's ``GuardStats`` (or a
        ``TracerStats``), whose loss counters are reported."""
        if max_bytes < MIN_MAX_BYTES:
            raise ValueError(f"max_bytes {max_bytes} must be at least {MIN_MAX_BYTES}")
        with self._lock:
            return self._render(argv, policy_name, mode, exit_status, _seconds(started), _seconds(ended), stats,
                                max_bytes)

    def _render(self, argv, policy_name, mode, exit_status, started, ended, stats, max_bytes) -> str:
        head = self._title(argv, policy_name, mode, exit_status, started, ended)
        # (heading, table or None, notes, the line that stands for an empty table)
        sections = [
            ("Decisions", *self._decision_table(), "No decisions: the policy stopped nothing."),
            ("Destinations", *self._destination_table(), "No network destinations seen."),
            ("Hostnames", *self._hostname_table(), "No DNS answers seen."),
            ("Identities", *self._identity_table(), "No machine identities seen."),
            ("Lost", *self._lost_section(stats), "Nothing lost."),
        ]
        tables = [t for _, t, _, _ in sections if t is not None]
        fixed = len("\n".join(head).encode()) + 1
        for heading, table, notes, empty in sections:
            fixed += len(f"\n### {heading}\n\n".encode()) + sum(len(n.encode()) + 2 for n in notes)
            if table is None:
                fixed += len(empty.encode()) + 1
            else:
                fixed += sum(len(h.encode()) + 1 for h in table.header)
                fixed += len(table.more(0, len(table.rows)).encode()) + 1
        self._fit(tables, max_bytes - fixed)
        out = list(head)
        for heading, table, notes, empty in sections:
            out += ["", f"### {heading}", ""]
            if table is None:
                out.append(empty)
            else:
                out += table.header
                out += table.rows[:table.keep]
                if table.keep < len(table.rows):
                    out.append(table.more(table.keep, len(table.rows) - table.keep))
            for note in notes:
                out += ["", note]
        return "\n".join(out) + "\n"

    @staticmethod
    def _fit(tables: list[_Table], budget: int) -> None:
        """Shares the room between tables: a small one is never cut for a
        big one's sake; the big ones split what is left evenly."""
        remaining = len(tables)
        for table in sorted(tables, key=lambda t: t.size()):
            share = max(budget, 0) // remaining
            remaining -= 1
            used = 0
            keep = 0
            for row in table.rows:
                cost = len(row.encode()) + 1
                if used + cost > share:
                    break
                used += cost
                keep += 1
            table.keep = keep
            budget -= used

    def _title(self, argv, policy_name, mode, exit_status, started, ended) -> list[str]:
        if argv:
            command = escape_cell(shlex.join([str(a) for a in argv]), _TITLE_COMMAND_CHARS)
        else:
            command = "guarded run"
        if exit_status is None:
            status = "exit status unknown"
        elif exit_status == 0:
            status = "exit status 0"
        else:
            status = f"**exit status {int(exit_status)}**"
        mode = mode or self._policy_mode
        parts = [f"mode {escape_cell(mode, 16)}" if mode else "mode unknown"]
        if self._mode_changes:
            parts[0] += f" (switched {_plural(self._mode_changes, 'time')})"
        name = policy_name or self._policy_name
        parts.append(f"policy {escape_cell(name, _TITLE_NAME_CHARS)}" if name else "unnamed policy")
        if started is not None and ended is not None:
            parts.append(_duration(ended - started))
        elif self._first_ts is not None and self._last_ts is not None:
            parts.append(f"events within {_duration((self._last_ts - self._first_ts) / 1e9)}")
        title = " · ".join([f"## runtimeguard: {command}", status, *parts])
        acts = self._decisions_by_action
        line = [f"{_plural(self._decision_total, 'decision')}"]
        detail = [f"**{n} {a}**" if a in _BLOCKING else f"{n} {escape_cell(a.replace('_', ' '), 16)}"
                  for a, n in sorted(acts.items())]
        if detail:
            line[0] += f" ({', '.join(detail)})"
        line.append(_plural(len(self._destinations), "destination"))
        line.append(_plural(len(self._answers), "DNS name", "DNS names"))
        suspicious = sum(1 for (_, status) in self._answers if status != "counted")
        if suspicious:
            line.append(f"**{suspicious} suspicious**")
        line.append(_plural(self.records, "event"))
        if started is not None:
            line.append(f"started {_iso(int(started * 1e9))}")
        out = [title, "", " · ".join(line)]
        if self.unreadable:
            out += ["", f"{_plural(self.unreadable, 'record')} could not be summed up."]
        return out

    def _decision_table(self) -> tuple[Optional[_Table], list[str]]:
        if not self._decision_total:
            return None, []
        rows = []
        rules = sorted(set(self._decisions) | set(self._overflow))
        for rule in rules:
            entries = sorted(self._decisions.get(rule, {}).items(), key=lambda kv: (-kv[1].count, kv[1].first_ts))
            for (event, target), d in entries:
                rows.append((d.count, table_row([
                    escape_cell(rule), escape_cell(event), escape_cell(target), str(d.count),
                    _actions(d.actions), _iso(d.first_ts), d.first_process.label() if d.first_process else ""])))
            overflow = self._overflow.get(rule)
            if overflow is not None:
                rows.append((overflow.count, table_row([
                    escape_cell(rule), "", f"other targets: not itemised past {self.max_targets_per_rule} per "
                    f"rule, {self.max_decisions} in all", str(overflow.count), _actions(overflow.actions), "", ""])))
        if self._other_rules.count:
            rows.append((self._other_rules.count, table_row([
                f"other rules (past {self.max_rules})", "", "", str(self._other_rules.count),
                _actions(self._other_rules.actions), "", ""])))
        counts = [c for c, _ in rows]

        def more(keep: int, n: int) -> str:
            return table_row([f"... and {n} more", "", "", str(sum(counts[keep:])), "", "", ""])

        return _Table(["Rule", "Event", "Target", "Count", "Action", "First seen (UTC)", "First process"],
                      [r for _, r in rows], more), []

    def _destination_table(self) -> tuple[Optional[_Table], list[str]]:
        if not self._destinations and not self._destinations_cut:
            return None, []
        items = sorted(self._destinations.values(), key=lambda d: (
            -sum(d.decisions.get(a, 0) for a in _BLOCKING), -sum(d.decisions.values()),
            -(d.connects + d.sends), d.first_ts))
        rows = []
        for d in items:
            decided = ", ".join(f"**{a}** {n}" if a in _BLOCKING else f"{escape_cell(a.replace('_', ' '), 16)} {n}"
                                for a, n in sorted(d.decisions.items()))
            connects = str(d.connects) + (f" ({d.failed} failed)" if d.failed else "")
            rows.append(table_row([escape_cell(d.formatted), self._host_cell(d),
                                   escape_cell(", ".join(sorted(d.protocols))), connects, str(d.sends),
                                   decided or "none"]))
        notes = []
        if self._destinations_cut:
            notes.append(f"{_plural(self._destinations_cut, 'event')} to destinations past the first "
                         f"{self.max_destinations} counted, not itemised.")

        def more(keep: int, n: int) -> str:
            return table_row([f"... and {n} more", "", "", "", "", ""])

        return _Table(["Destination", "Host", "Protocol", "Connects", "Sends", "Decisions"], rows, more), notes

    def _host_cell(self, d: _Destination) -> str:
        if d.hostnames:
            text = ", ".join(escape_cell(h, 96) for h in d.hostnames)
            return text + (f" and {d.more_hostnames} more" if d.more_hostnames else "")
        if d.reverse is not None:
            name, confirmed = d.reverse
            return f"{escape_cell(name, 96)} (PTR, {'confirmed' if confirmed else 'unconfirmed'})"
        answered = self._answered.get(d.address)
        if answered is not None:
            return f"{escape_cell(answered, 96)} (a DNS answer named it)"
        return ""

    def _hostname_table(self) -> tuple[Optional[_Table], list[str]]:
        if not self._answers and not self._answers_cut:
            return None, []
        items = sorted(self._answers.items(), key=lambda kv: (kv[0][1] == "counted", -kv[1].count, kv[0]))
        rows = []
        for (name, status), a in items:
            shown = a.addresses[:8]
            addresses = ", ".join(escape_cell(x, 64) for x in shown)
            if len(a.addresses) > len(shown) or a.more_addresses:
                addresses += f" and at least {len(a.addresses) - len(shown) + a.more_addresses} more"
            status_cell = escape_cell(status) if status == "counted" else f"**suspicious**: {escape_cell(status)}"
            rcodes = [_RCODES.get(r, f"rcode {r}") for r in sorted(a.rcodes) if r]
            if rcodes:
                status_cell += f" ({', '.join(rcodes)})"
            if a.matched:
                status_cell += ", matched a host rule"
            rows.append(table_row([escape_cell(name, 96), escape_cell(", ".join(sorted(a.query_types))),
                                   status_cell, addresses or "none", str(a.count),
                                   escape_cell(", ".join(a.servers))]))
        notes = []
        if self._answers_cut:
            notes.append(f"{_plural(self._answers_cut, 'answer')} for names past the first {self.max_hostnames} "
                         "counted, not itemised.")

        def more(keep: int, n: int) -> str:
            return table_row([f"... and {n} more", "", "", "", "", ""])

        return _Table(["Name", "Type", "Status", "Addresses", "Answers", "Server"], rows, more), notes

    def _identity_table(self) -> tuple[Optional[_Table], list[str]]:
        if not self._identities and not self._identities_cut:
            return None, []
        rows = []
        for identity, e in sorted(self._identities.items(), key=lambda kv: (-kv[1].processes, kv[0])):
            holders = ", ".join(h.label() for h in e.holders)
            if e.processes > len(e.holders):
                holders += f" and {e.processes - len(e.holders)} more"
            count = str(e.processes)
            if e.uncounted:
                count += f" (and {e.uncounted} events of processes not told apart)"
            rows.append(table_row([escape_cell(identity, 96), count, holders]))
        notes = []
        if self._identities_cut:
            notes.append(f"{_plural(self._identities_cut, 'sighting')} of identities past the first "
                         f"{self.max_identities} counted, not itemised.")

        def more(keep: int, n: int) -> str:
            return table_row([f"... and {n} more", "", ""])

        return _Table(["Identity", "Processes", "Held by (first seen)"], rows, more), notes

    def _lost_section(self, stats) -> tuple[Optional[_Table], list[str]]:
        # Notices and counters report the same losses (the counters are
        # running totals, the notices their increments): the larger wins.
        lost = dict(self._lost)
        if stats is not None:
            for source, counters in (("ring_buffer", getattr(stats, "lost", None)),
                                     ("audit_log", getattr(stats, "audit_lost", None))):
                for kind, n in (counters or {}).items():
                    key = (source, _clip(str(kind), 64))
                    lost[key] = max(lost.get(key, 0), n)
        lost = {k: n for k, n in lost.items() if n}
        notes = []
        decisions_lost = sum(n for (_, kind), n in lost.items() if kind in BLOCK_EVENTS)
        if decisions_lost:
            notes.append(f"**{_plural(decisions_lost, 'decision')} lost**: the Decisions table undercounts.")
        if self._lost_errors:
            notes.append(f"The audit log's last write errors: {escape_cell(', '.join(sorted(self._lost_errors)))}.")
        if stats is not None:
            malformed = getattr(stats, "malformed", 0)
            if malformed:
                notes.append(f"{_plural(malformed, 'record')} skipped as malformed.")
            pending = getattr(stats, "audit_pending", 0)
            if pending:
                notes.append(f"{_plural(pending, 'event')} still waiting to be written to the audit log.")
        elif not lost:
            notes.append("(No counters were given: only loss notices among the events were looked at.)")
        if not lost:
            return None, notes
        rows = [table_row([escape_cell(source), escape_cell(kind), str(n)])
                for (source, kind), n in sorted(lost.items(), key=lambda kv: (kv[0][0], -kv[1], kv[0][1]))]

        def more(keep: int, n: int) -> str:
            return table_row([f"... and {n} more", "", ""])

        return _Table(["Source", "Kind", "Lost"], rows, more), notes

    # ---- where it goes ----

    def write_file(self, path: Union[str, os.PathLike], **kwargs) -> str:
        """Writes the report to path (mode 0644), replacing what was there at
        once: a reader sees the old report or the new, never half of one.
        kwargs: those of ``markdown()``. Returns the path."""
        text = self.markdown(**kwargs).encode()
        path = os.fspath(path)
        directory = os.path.dirname(os.path.abspath(path))
        fd, tmp = tempfile.mkstemp(prefix=".runtimeguard-summary-", dir=directory)
        try:
            os.fchmod(fd, 0o644)
            _write_all(fd, text)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            os.unlink(tmp)
            raise
        os.close(fd)
        try:
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
        return path

    def append_github_step_summary(self, **kwargs) -> Optional[str]:
        """Appends the report to the file $GITHUB_STEP_SUMMARY names, as
        GitHub documents (other steps' and this step's earlier writes stay);
        returns its path, or None when the variable is not set. kwargs:
        those of ``markdown()``."""
        path = os.environ.get("GITHUB_STEP_SUMMARY")
        if not path:
            return None
        text = self.markdown(**kwargs)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            size = os.fstat(fd).st_size
            if size:
                # A blank line first: a table or paragraph already there would
                # otherwise run on into the report's heading.
                text = ("\n" if _ends_with_newline(path, size) else "\n\n") + text
            _write_all(fd, text.encode())
        finally:
            os.close(fd)
        return path


def _actions(actions: dict[str, int]) -> str:
    if len(actions) == 1:
        return escape_cell(next(iter(actions)))
    return ", ".join(f"{escape_cell(a)} {n}" for a, n in sorted(actions.items()))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _ends_with_newline(path: str, size: int) -> bool:
    try:
        with open(path, "rb") as f:
            f.seek(size - 1)
            return f.read(1) == b"\n"
    except OSError:
        return False
