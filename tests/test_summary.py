"""The run summary: a Markdown report that nothing the workload names can
break, that adds up, that fits, and that lands where GitHub looks for it."""

from __future__ import annotations

import html
import os
import re
import socket
import stat
import string
import sys
import textwrap
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtimeguard.export.summary import DEFAULT_MAX_BYTES, RunSummary, escape_cell, table_row
from runtimeguard.schema import (
    EVENT_IDS,
    ConnectDeniedData,
    DnsAnswerData,
    EventRecord,
    ExfilBlockedData,
    LostData,
    NetConnectData,
    NetSendmsgData,
    OpenInodeData,
    PolicyRef,
    Process,
    TargetContext,
    Workload,
)

T0 = 1_700_000_000_000_000_000
SEPARATOR = re.compile(r"(?<!\\)\|")
LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
# What Markdown (or GitHub on top of it) would read as syntax if it stood bare.
SPECIAL = set("`*_[]#~$|@<>")
PUNCTUATION = set(string.punctuation)


# ---- building records by hand ----

def process(name="python3", pid=100, entity_id=None, executable="/usr/bin/python3", identities=()):
    return Process(pid=pid, entity_id=entity_id if entity_id is not None else pid, name=name,
                   executable=executable, identities=list(identities))


def net_target(address, port, **names):
    formatted = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
    return TargetContext(type="ipv6" if ":" in address else "ipv4", formatted=formatted, address=address,
                         port=port, **names)


def denied(rule="network.deny[0]", address="127.0.0.1", port=9, action="blocked", repeated=0, ts=T0,
           proc=None, target=None, name="connect_denied"):
    proc = proc or process()
    cls = ConnectDeniedData if name == "connect_denied" else ExfilBlockedData
    data = cls(rule_index=0, blocked=action == "blocked", would_deny=action == "would_block", comm=proc.name,
               family="ipv4", protocol="tcp")
    return EventRecord(timestamp=ts, id=EVENT_IDS[name], name=name, data=data, pid=proc.pid, tid=proc.pid,
                       entity_id=proc.entity_id, workload=Workload(process=proc), action=action,
                       target_context=target or net_target(address, port),
                       policy=PolicyRef(rule=rule, mode="enforce", name="ci"), repeated=repeated)


def file_denied(rule, path, action="blocked", repeated=0, ts=T0, proc=None):
    proc = proc or process()
    return EventRecord(timestamp=ts, id=EVENT_IDS["open_inode"], name="open_inode",
                       data=OpenInodeData(rule_index=0, blocked=True, would_deny=False, comm=proc.name, device=2049,
                                          inode=77),
                       pid=proc.pid, workload=Workload(process=proc), action=action,
                       target_context=TargetContext(type="inode", formatted=f"{path} (inode 77 on 8:1)",
                                                    path=path, device=2049, inode=77),
                       policy=PolicyRef(rule=rule, mode="enforce"), repeated=repeated)


def connect(address, port, result=0, ts=T0, proc=None, **names):
    proc = proc or process()
    return EventRecord(timestamp=ts, id=EVENT_IDS["net_connect"], name="net_connect",
                       data=NetConnectData(family="ipv4", protocol="tcp", address=address, port=port, result=result,
                                           fd=3),
                       pid=proc.pid, workload=Workload(process=proc), target_context=net_target(address, port, **names))


def sendmsg(address, port, ts=T0, proc=None):
    proc = proc or process()
    return EventRecord(timestamp=ts, id=EVENT_IDS["net_sendmsg"], name="net_sendmsg",
                       data=NetSendmsgData(family="ipv4", protocol="udp", address=address, port=port, result=40,
                                           fd=4, syscall="sendto"),
                       pid=proc.pid, workload=Workload(process=proc))


def answer(name, status="counted", addresses=("192.0.2.1",), rcode=0, ts=T0):
    return EventRecord(timestamp=ts, id=EVENT_IDS["dns_answer"], name="dns_answer",
                       data=DnsAnswerData(name=name, query_type="A", server="127.0.0.53", server_port=53,
                                          protocol="udp", rcode=rcode, status=status, addresses=tuple(addresses),
                                          addresses_total=len(addresses)),
                       pid=100, workload=Workload(process=process()))


def lost(by_kind, source="ring_buffer"):
    return EventRecord(timestamp=T0, id=EVENT_IDS["lost"], name="lost",
                       data=LostData(count=sum(by_kind.values()), by_kind=by_kind, source=source))


# ---- reading the report back ----

def section(report: str, heading: str) -> list[str]:
    lines = report.split("\n")
    start = lines.index(f"### {heading}") + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("### ")), len(lines))
    return [line for line in lines[start:end] if line]


def cells(row: str) -> list[str]:
    return [c.strip() for c in SEPARATOR.split(row)[1:-1]]


def table(report: str, heading: str) -> list[list[str]]:
    """A section's table rows (header and rule dropped), cut into cells."""
    rows = [line for line in section(report, heading) if line.startswith("|")]
    assert rows, f"no table under {heading}"
    assert set(cells(rows[1])) == {"---"}
    return [cells(r) for r in rows[2:]]


def unescape(text: str) -> str:
    """What a Markdown renderer shows for escaped text: backslash escapes
    (a backslash before ASCII punctuation) and entities resolved."""
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and text[i + 1:i + 2] in PUNCTUATION:
            out.append(text[i + 1])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return html.unescape("".join(out))


def bare_specials(text: str) -> list[str]:
    """Syntax characters that stand unescaped."""
    found, i = [], 0
    while i < len(text):
        if text[i] == "\\" and text[i + 1:i + 2] in PUNCTUATION:
            i += 2
            continue
        if text[i] in SPECIAL:
            found.append(text[i])
        i += 1
    return found


# ---- escaping ----

@settings(max_examples=500)
@given(st.lists(st.text(), min_size=1, max_size=8))
def test_a_row_of_escaped_text_has_its_separators_and_nothing_else(texts):
    row = table_row(escape_cell(t, max_chars=None) for t in texts)
    assert len(SEPARATOR.findall(row)) == len(texts) + 1
    assert not any(c in row for c in LINE_BREAKS)
    assert len(row.splitlines()) == 1
    assert "<" not in row and ">" not in row
    assert cells(row) == [escape_cell(t, max_chars=None).strip() for t in texts]
    row.encode("utf-8")  # lone surrogates would not even write


@given(st.text())
def test_escaped_text_has_no_bare_syntax(text):
    escaped = escape_cell(text, max_chars=None)
    assert bare_specials(escaped) == []
    # Nothing that starts a block where a line starts, nor an autolink.
    assert not re.match(r"[-+=>#]|\d+[.)](\s|$)", escaped)
    assert "://" not in escaped and "www." not in escaped.lower()


_shown = st.characters(blacklist_categories=("Cc", "Cf", "Cs", "Zl", "Zp"))


@given(st.text(_shown))
def test_escaping_shows_the_text_as_it_was(text):
    assert unescape(escape_cell(text, max_chars=None)) == text


@given(st.text(), st.integers(1, 50))
def test_long_text_is_cut_and_marked(text, limit):
    shown = unescape(escape_cell(text, max_chars=limit))
    if len(text) <= limit:
        assert "\u2026" not in shown or "\u2026" in text
    else:
        assert shown.endswith("\u2026")


def test_escaping_examples():
    assert escape_cell("a|b") == "a\\|b"
    assert escape_cell("line\nbreak") == "line\\x0abreak"
    assert escape_cell("<img src=x onerror=alert(1)>") == "&lt;img src=x onerror=alert\\(1\\)&gt;"
    assert escape_cell("# title") == "\\# title"
    assert escape_cell("> quote") == "&gt; quote"
    assert escape_cell("`code`") == "\\`code\\`"
    assert escape_cell("\u202eevil") == "\\u202eevil"  # a right-to-left override shown, not obeyed
    assert escape_cell("1. item") == "1\\. item"
    assert escape_cell("10.0.0.1:443") == "10.0.0.1:443"  # an address stays readable
    assert escape_cell("https://evil.example") == "https\\://evil.example"
    assert escape_cell(None) == ""


# ---- counting ----

_weird = st.text(min_size=0, max_size=20)
_decision = st.tuples(
    st.sampled_from(["network.deny[0]", "files.protect[1]", "a|b\n<rule>", "`x`"]),  # rule
    st.one_of(st.sampled_from(["127.0.0.1:9", "/etc/shadow"]), _weird),  # target
    st.sampled_from(["blocked", "would_block", "killed", "observed"]),
    st.integers(0, 10_000),  # repeated
    st.sampled_from(["python3", "cu|rl", "x\ny", ""]),  # process name
)


def decision_record(rule, target, action, repeated, name, i):
    proc = process(name=name, pid=1000 + i % 7)
    tc = TargetContext(type="inode", formatted=target, path=target)
    return denied(rule=rule, action=action, repeated=repeated, ts=T0 + i, proc=proc, target=tc)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_decision, max_size=60), st.integers(1, 6), st.integers(1, 20), st.integers(1, 3),
       st.sampled_from([4096, 8192, DEFAULT_MAX_BYTES]))
def test_decision_counts_add_up(decisions, per_rule, rows, rules, max_bytes):
    summary = RunSummary(max_targets_per_rule=per_rule, max_decisions=rows, max_rules=rules)
    for i, d in enumerate(decisions):
        summary.write(decision_record(*d, i))
    assert summary.unreadable == 0
    report = summary.markdown(argv=["x|y", "\n# z"], exit_status=1, max_bytes=max_bytes)
    assert len(report.encode()) <= max_bytes
    if not decisions:
        assert section(report, "Decisions") == ["No decisions: the policy stopped nothing."]
        return
    shown = table(report, "Decisions")
    assert all(len(r) == 7 for r in shown)
    # Kept, cut on intake or cut for size: every decision is in some row's count.
    assert sum(int(r[3]) for r in shown) == sum(1 + d[3] for d in decisions)


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.text(max_size=300), st.text(max_size=300), st.integers(0, 65535)), max_size=40),
       st.text(max_size=2000))
def test_a_small_report_fits_whatever_the_names(items, argv):
    summary = RunSummary()
    for i, (name, host, port) in enumerate(items):
        proc = process(name=name, pid=i, executable=host, identities=[f"env:{name}"])
        summary.write(denied(rule=name, ts=T0 + i, proc=proc,
                             target=net_target("10.0.0.1", port, hostname=host, reverse_name=name)))
        summary.write(answer(host, status="untrusted_server", addresses=[name]))
        summary.write(lost({name: 1}))
    report = summary.markdown(argv=[argv, argv], policy_name=argv, mode=argv, max_bytes=4096)
    assert len(report.encode()) <= 4096
    for heading in ("Decisions", "Destinations", "Hostnames", "Identities", "Lost"):
        assert section(report, heading)
    assert "<" not in report


# ---- the sections ----

def test_an_empty_run_says_so_in_every_section():
    report = RunSummary().markdown(argv=["true"], exit_status=0, mode="enforce", policy_name="ci",
                                   started=1_700_000_000.0, ended=1_700_000_001.5)
    title = report.split("\n")[0]
    assert title.startswith("## runtimeguard: true")
    assert "exit status 0" in title and "mode enforce" in title and "policy ci" in title and "1.50 s" in title
    assert section(report, "Decisions") == ["No decisions: the policy stopped nothing."]
    assert section(report, "Destinations") == ["No network destinations seen."]
    assert section(report, "Hostnames") == ["No DNS answers seen."]
    assert section(report, "Identities") == ["No machine identities seen."]
    assert section(report, "Lost")[0] == "Nothing lost."


def test_decisions_keep_the_first_process_and_every_action():
    summary = RunSummary()
    late = process(name="late", pid=2)
    early = process(name="early", pid=1, executable="/opt/early")
    summary.write(denied(action="would_block", ts=T0 + 5, proc=late))
    summary.write(denied(action="blocked", ts=T0, proc=early, repeated=2))
    report = summary.markdown()
    (row,) = table(report, "Decisions")
    assert row[:4] == [escape_cell("network.deny[0]"), escape_cell("connect_denied"), "127.0.0.1:9", "4"]
    assert row[4] == "blocked 3, would\\_block 1"
    assert row[5] == "2023-11-14T22:13:20.000Z"
    assert row[6] == "early[1] (/opt/early)"
    # Without the caller saying, the policy is what the decisions named.
    assert "mode enforce" in report.split("\n")[0] and "policy ci" in report.split("\n")[0]


def test_a_hostile_path_stays_in_its_cell():
    summary = RunSummary()
    path = "/tmp/x | y\n### pwned\n<script>alert(1)</script>`rm -rf`"
    summary.write(file_denied("files.protect[0]", path, proc=process(name="a|b\n#c", executable=path)))
    report = summary.markdown(argv=["sh", "-c", path], exit_status=137)
    assert report.count("\n### ") == 5 and "<" not in report
    (row,) = table(report, "Decisions")
    assert len(row) == 7
    assert unescape(row[2]).startswith("/tmp/x | y\\x0a### pwned\\x0a<script>alert(1)</script>`rm -rf`")
    assert row[6].startswith("a\\|b\\x0a\\#c[100]")


def test_destinations_name_hosts_and_mark_blocked_ones():
    summary = RunSummary()
    summary.write(connect("192.0.2.10", 443, hostname="api.example.com"))
    summary.write(connect("192.0.2.10", 443, result=-111, hostname="api.example.com"))
    summary.write(connect("192.0.2.20", 80, reverse_name="host.ptr.example", reverse_confirmed=True))
    summary.write(connect("192.0.2.30", 80, reverse_name="liar.example", reverse_confirmed=False))
    summary.write(sendmsg("192.0.2.40", 53))
    summary.write(answer("named.example", addresses=["192.0.2.40"]))
    summary.write(denied(address="203.0.113.9", port=22, repeated=4,
                         target=net_target("203.0.113.9", 22, hostname="evil.example")))
    rows = {r[0]: r for r in table(summary.markdown(), "Destinations")}
    assert rows["203.0.113.9:22"][1] == "evil.example" and rows["203.0.113.9:22"][5] == "**blocked** 5"
    assert list(rows)[0] == "203.0.113.9:22"  # blocked ones first
    assert rows["192.0.2.10:443"][1:5] == ["api.example.com", "tcp", "2 (1 failed)", "0"]
    assert rows["192.0.2.20:80"][1] == "host.ptr.example (PTR, confirmed)"
    assert rows["192.0.2.30:80"][1] == "liar.example (PTR, unconfirmed)"
    assert rows["192.0.2.40:53"][1] == "named.example (a DNS answer named it)"
    assert rows["192.0.2.40:53"][4] == "1" and rows["192.0.2.40:53"][5] == "none"


def test_hostnames_flag_answers_nobody_asked_for():
    summary = RunSummary()
    summary.write(answer("good.example", addresses=["192.0.2.1", "192.0.2.2"]))
    summary.write(answer("good.example", addresses=["192.0.2.1"]))
    summary.write(answer("gone.example", addresses=[], rcode=3))
    for status in ("no_query", "untrusted_server", "malformed"):
        summary.write(answer("spoofed.example", status=status, addresses=["198.51.100.66"]))
    report = summary.markdown()
    rows = table(report, "Hostnames")
    suspicious = [r for r in rows if r[2].startswith("**suspicious**")]
    assert sorted(r[2] for r in suspicious) == ["**suspicious**: malformed", "**suspicious**: no\\_query",
                                                "**suspicious**: untrusted\\_server"]
    assert rows[:3] == suspicious  # first, where nobody misses them
    good = next(r for r in rows if r[0] == "good.example")
    assert good[2:5] == ["counted", "192.0.2.1, 192.0.2.2", "2"]
    gone = next(r for r in rows if r[0] == "gone.example")
    assert gone[2] == "counted (NXDOMAIN)" and gone[3] == "none"
    assert "**3 suspicious**" in report
    many = RunSummary()
    addresses = [f"192.0.2.{i}" for i in range(16)]
    many.write(EventRecord(timestamp=T0, id=EVENT_IDS["dns_answer"], name="dns_answer",
                           data=DnsAnswerData(name="cdn.example", query_type="A", server="127.0.0.53",
                                              server_port=53, protocol="udp", rcode=0, status="counted",
                                              addresses=tuple(addresses), addresses_total=40)))
    (row,) = table(many.markdown(), "Hostnames")
    assert row[3] == ", ".join(addresses[:8]) + " and at least 32 more"
    # A spoofed answer names no destination.
    summary.write(connect("198.51.100.66", 443))
    dest = next(r for r in table(summary.markdown(), "Destinations") if r[0] == "198.51.100.66:443")
    assert dest[1] == ""


def test_identities_list_their_holders_once_each():
    summary = RunSummary(holders_listed=2)
    for pid in (1, 2, 3):
        holder = process(name=f"agent{pid}", pid=pid, identities=["env:OPENAI_API_KEY", "argv:openai"])
        for _ in range(3):
            summary.write(connect("192.0.2.1", 443, proc=holder))
    summary.write(connect("192.0.2.1", 443, proc=process(name="other", pid=9)))
    rows = {r[0]: r for r in table(summary.markdown(), "Identities")}
    assert set(rows) == {"env:OPENAI\\_API\\_KEY", "argv:openai"}
    key = rows["env:OPENAI\\_API\\_KEY"]
    assert key[1] == "3"
    assert key[2] == "agent1[1] (/usr/bin/python3), agent2[2] (/usr/bin/python3) and 1 more"


def test_lost_takes_notices_and_counters_without_counting_twice():
    class Stats:  # a GuardStats's loss counters, nothing else
        lost = {"connect_denied": 5, "file_open": 2}
        audit_lost = {"open_inode": 1}
        malformed = 0
        audit_pending = 3

    summary = RunSummary()
    summary.write(lost({"connect_denied": 3}))
    summary.write(lost({"connect_denied": 2, "process_exec": 7}))
    report = summary.markdown(stats=Stats())
    rows = {(r[0], r[1]): r[2] for r in table(report, "Lost")}
    assert rows == {("ring\\_buffer", "connect\\_denied"): "5", ("ring\\_buffer", "process\\_exec"): "7",
                    ("ring\\_buffer", "file\\_open"): "2", ("audit\\_log", "open\\_inode"): "1"}
    notes = section(report, "Lost")
    assert "**6 decisions lost**: the Decisions table undercounts." in notes
    assert "3 events still waiting to be written to the audit log." in notes

    class Quiet:
        lost: dict = {}

    assert section(RunSummary().markdown(stats=Quiet()), "Lost") == ["Nothing lost."]


def test_write_never_raises():
    summary = RunSummary()
    summary.write("not an event")  # type: ignore[arg-type]
    summary.write(EventRecord(timestamp=T0, id=5, name="net_connect", data=None))  # type: ignore[arg-type]
    assert summary.unreadable == 2
    assert "2 records could not be summed up." in summary.markdown()
    summary.close()
    summary.write(denied())
    assert summary.records == 0  # the sink takes nothing after close


# ---- size ----

def test_ten_thousand_targets_stay_bounded_and_fit():
    summary = RunSummary()
    for i in range(10_000):
        summary.write(denied(address=f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", port=1 + i % 60000,
                             ts=T0 + i))
    # Memory: what is itemised is capped; the rest is counted.
    assert summary._decision_rows <= summary.max_targets_per_rule
    assert len(summary._destinations) <= summary.max_destinations
    for max_bytes in (DEFAULT_MAX_BYTES, 8192):
        report = summary.markdown(argv=["nmap", "10.0.0.0/8"], exit_status=0, max_bytes=max_bytes)
        assert len(report.encode()) <= max_bytes
        more = re.findall(r"\| \.\.\. and (\d+) more \|", report)
        assert more, report[-2000:]
        rows = table(report, "Decisions")
        assert sum(int(r[3]) for r in rows) == 10_000
        assert any(r[2].startswith("other targets") for r in rows) or int(more[0]) > 0
        # Cut between rows, never inside one.
        for line in report.split("\n"):
            if line.startswith("|"):
                assert line.endswith(" |")
        for heading in ("Destinations", "Hostnames", "Identities", "Lost"):
            assert section(report, heading)


def test_max_bytes_has_a_floor():
    with pytest.raises(ValueError):
        RunSummary().markdown(max_bytes=100)


# ---- files ----

def test_write_file_creates_and_replaces(tmp_path):
    path = tmp_path / "summary.md"
    path.write_text("old report that is longer than the new one\n" * 100)
    summary = RunSummary()
    summary.write(denied())
    assert summary.write_file(path, argv=["x"], exit_status=0) == str(path)
    assert path.read_text() == summary.markdown(argv=["x"], exit_status=0)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["summary.md"]


def test_github_step_summary_is_appended_to(tmp_path, monkeypatch):
    path = tmp_path / "step_summary"
    path.write_text("an earlier step wrote this\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(path))
    summary = RunSummary()
    summary.write(denied())
    report = summary.markdown(argv=["make", "test"], exit_status=2)
    assert summary.append_github_step_summary(argv=["make", "test"], exit_status=2) == str(path)
    assert path.read_text() == "an earlier step wrote this\n\n" + report
    summary.append_github_step_summary(argv=["make", "test"], exit_status=2)
    assert path.read_text() == "an earlier step wrote this\n\n" + report + "\n" + report


def test_github_step_summary_unset(monkeypatch, tmp_path):
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    assert RunSummary().append_github_step_summary() is None
    assert list(tmp_path.iterdir()) == []


# ---- a real run ----

def _listener():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    return s


TRY_TWICE = """
    import socket, sys
    refused = 0
    for _ in range(2):
        try:
            socket.create_connection(("127.0.0.1", {denied}), timeout=2).close()
        except PermissionError:
            refused += 1
    socket.create_connection(("127.0.0.1", {allowed}), timeout=2).close()
    sys.exit(3 if refused == 2 else 1)
"""


@pytest.mark.root
def test_a_guarded_run(monkeypatch):
    import secrets

    from helpers import drain
    from runtimeguard import Tracer
    from runtimeguard.environment import cgroup2_mount
    from runtimeguard.guard import guard
    from runtimeguard.policy import Policy

    parent = os.path.join(cgroup2_mount(), f"rg-test-{secrets.token_hex(4)}")
    os.mkdir(parent)
    denied_listener, allowed_listener = _listener(), _listener()
    port, allowed = denied_listener.getsockname()[1], allowed_listener.getsockname()[1]
    policy = Policy.from_text(textwrap.dedent(f"""
        version: 1
        name: summary-test
        mode: enforce
        scope: {{type: cgroup, cgroup: "{parent}"}}
        network:
          default: allow
          raw_sockets: allow
          deny:
            - cidr: 127.0.0.1/32
              ports: [{port}]
        ptrace: {{deny: false}}
        namespaces: {{deny: false}}
        identity: {{env: [RG_SUMMARY_TOKEN]}}
    """), "yaml")
    monkeypatch.setenv("RG_SUMMARY_TOKEN", "not a secret")
    argv = [sys.executable, "-c", textwrap.dedent(TRY_TWICE.format(denied=port, allowed=allowed))]
    summary = RunSummary()
    try:
        # A tracer beside the guard sees the connects the guard does not report.
        with Tracer(events=["net_connect"], cgroups=[parent]) as tracer:
            started = time.time()
            result = guard(policy, argv, on_event=summary.write)
            ended = time.time()
            for ev in drain(tracer):
                summary.write(ev.record())
            stats = tracer.stats()
    finally:
        denied_listener.close()
        allowed_listener.close()
        os.rmdir(parent)
    assert result.exit_status == 3
    report = summary.markdown(argv=argv, exit_status=result.exit_status, stats=stats, started=started,
                              ended=ended)
    print(report)
    assert summary.unreadable == 0
    comm = result.events[0].workload.process.name
    assert comm.startswith("python")
    title = report.split("\n")[0]
    assert "**exit status 3**" in title and "mode enforce" in title and "policy summary-test" in title
    assert re.search(r" · \d+\.\d\d s$", title), title

    (row,) = table(report, "Decisions")
    assert row[0] == escape_cell("network.deny[0]")
    assert row[2] == f"127.0.0.1:{port}"
    assert row[3] == "2"
    assert row[4] == "blocked"
    assert row[6].startswith(f"{escape_cell(comm)}[")

    destinations = {r[0]: r for r in table(report, "Destinations")}
    refused = destinations[f"127.0.0.1:{port}"]
    assert refused[5] == "**blocked** 2"
    assert refused[3] == "2 (2 failed)"  # the tracer saw the refused connects too
    assert destinations[f"127.0.0.1:{allowed}"][3:] == ["1", "0", "none"]

    (identity,) = table(report, "Identities")
    assert identity[0] == escape_cell("env:RG_SUMMARY_TOKEN") and identity[1] == "1"
    assert section(report, "Lost") == ["Nothing lost."]
    assert len(report.encode()) <= DEFAULT_MAX_BYTES
