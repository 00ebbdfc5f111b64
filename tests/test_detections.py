"""Detections (runtimeguard.detections): each default rule against the real
behaviour it is about, driven by real processes on the real kernel, and
against a benign look-alike that must not fire; the rule engine, the tuning
YAML and the path patterns as pure code (hypothesis where it is logic).

Real-kernel tests run their processes in a test cgroup under a Tracer built
from the detector's own ``tracer_options``; path lists point at temporary
directories, never at the real /etc or home. Expected values come from what
the test did (the pid it started, the file it wrote), never from the code
under test."""

from __future__ import annotations

import errno
import http.server
import io
import logging
import os
import secrets
import shutil
import socket
import sys
import tempfile
import textwrap
import threading
from typing import Iterator, Optional

import msgspec
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from runtimeguard import Tracer, schema
from runtimeguard.environment import cgroup2_mount
from runtimeguard.cli import WatchTable
from runtimeguard.detections import (
    DEFAULT_RULES,
    DEFAULT_TUNING,
    DetectionConfigError,
    Detector,
    Finding,
    PathPattern,
    Rule,
    load_tuning,
    parse_tuning,
)
from runtimeguard.detections.rules import _reads_script_from_stdin
from runtimeguard.detections.tuning import tuning_from_dict
from runtimeguard.schema import (
    EVENT_IDS,
    Container,
    Event,
    FileOpenData,
    NetConnectData,
    Process,
    ProcessExecData,
    ProcessMemoryData,
    ProcessRef,
    TargetContext,
    Workload,
)
from helpers import drain
from test_event_model import run_in

RULE_IDS = [r.id for r in DEFAULT_RULES]


# ---------------------------------------------------------------- helpers

def tuning_only(rule_id: str, **options):
    """A tuning with one rule enabled, its options as given."""
    rules = {r: {"enabled": False} for r in RULE_IDS if r != rule_id}
    rules[rule_id] = options
    return tuning_from_dict({"version": 1, "rules": rules}, source="<test>")


def detector_for(rule_id: str, **options) -> Detector:
    return Detector(tuning_only(rule_id, **options))


def detect(tracer: Tracer, detector: Detector, quiet: float = 0.4) -> list[Event]:
    """Every event until the ring has been quiet, with the detections, read
    as a consumer reads them: while the tracer runs."""
    out: list[Event] = []
    while True:
        got = tracer.poll(quiet)
        if not got:
            return out
        out += list(detector.run(got))


def detections(events, rule_id: Optional[str] = None) -> list[Event]:
    return [ev for ev in events if ev.name == "detection" and (rule_id is None or ev.data.rule == rule_id)]


def run_detected(cgroup: str, detector: Detector, *argvs: list[str], env=None) -> tuple[list[Event], list]:
    """Runs each command in the cgroup under a Tracer made for detector."""
    results = []
    with Tracer(**detector.tracer_options(cgroups=[cgroup])) as t:
        for argv in argvs:
            results.append(run_in(cgroup, argv, env=env))
        events = detect(t, detector)
    return events, results


def execs(events, marker: str, program: Optional[str] = None) -> list[Event]:
    """The done execs with marker among their arguments (of program, by argv[0]'s name)."""
    return [ev for ev in events if ev.name == "process_exec" and ev.data.return_code == 0
            and marker in ev.data.argv and (program is None or os.path.basename(ev.data.argv[0]) == program)]


@pytest.fixture(name="cgroup")
def test_cgroup():
    path = os.path.join(cgroup2_mount(), f"rg-test-{secrets.token_hex(4)}")
    os.mkdir(path)
    yield path
    os.rmdir(path)


@pytest.fixture
def workdir():
    path = os.path.realpath(tempfile.mkdtemp(prefix="rg-detect-"))
    yield path
    shutil.rmtree(path)


def check_detection(det: Event, trigger: Event, technique_id: str, tactic_id: str) -> None:
    """What every detection must carry, checked against its trigger."""
    assert det.threat is not None and det.threat.mitre_technique_id == technique_id
    assert det.threat.mitre_tactic_id == tactic_id and det.threat.mitre_tactic and det.threat.mitre_technique
    assert det.threat.description and det.data.summary
    assert det.triggered_by.timestamp == trigger.timestamp and det.triggered_by.pid == trigger.pid
    assert det.triggered_by.name == trigger.name and det.triggered_by.id == trigger.id
    assert det.data.events[-1] == det.triggered_by
    assert det.pid == trigger.pid and det.timestamp == trigger.timestamp
    assert det.workload is not None and det.workload.process.pid == trigger.pid
    rec = det.record()
    assert rec.name == "detection" and rec.threat == det.threat and rec.triggered_by == det.triggered_by
    assert rec.workload.process.pid == trigger.pid
    line = schema.json_encoder.encode(rec)
    assert schema.json_decoder.decode(line) == rec


# ---------------------------------------------------------------- synthetic events

_clock = iter(range(1_700_000_000_000_000_000, 1 << 62, 1_000_000))
# Above this machine's pid_max: never a real process, so nothing is looked up in /proc.
FAKE_PID = 4_000_000


def make(name: str, data, pid: int = FAKE_PID, *, process: Optional[Process] = None, ts: Optional[int] = None,
         target: Optional[TargetContext] = None, container: Optional[Container] = None) -> Event:
    ev = Event.make(id=EVENT_IDS[name], timestamp=next(_clock) if ts is None else ts, data=data, pid=pid, tid=pid,
                    entity_id=pid * 7, uid=0, euid=0, gid=0, comm="x")
    ev.workload_ = Workload(process=process or Process(pid=pid, entity_id=pid * 7, name="x",
                                                       executable="/usr/bin/x", uid=0),
                            container=container)
    if target is not None:
        ev.target_ = target
    return ev


def proc(pid: int = FAKE_PID, executable: str = "/usr/bin/x", parent: Optional[str] = None,
         identities: Optional[list[str]] = None, uid: int = 0) -> Process:
    ref = ProcessRef(pid=pid - 1, entity_id=(pid - 1) * 7, name=os.path.basename(parent),
                     executable=parent) if parent else None
    fields = dict(pid=pid, entity_id=pid * 7, name=os.path.basename(executable)[:15], executable=executable,
                  uid=uid, parent=ref, ancestors=[ref] if ref else [])
    if identities is not None:
        fields["identities"] = identities
    return Process(**fields)


def exec_data(argv, executable=None, resolved=None, stdin="pipe", stdout="pipe", cwd="/", fileless=False,
              ppid=FAKE_PID - 1, device=0, inode=0) -> ProcessExecData:
    executable = executable or argv[0]
    return ProcessExecData(executable=executable, argv=list(argv), comm=os.path.basename(executable)[:15], uid=0,
                           euid=0, gid=0, ppid=ppid, parent_entity_id=ppid * 7, start_time=0, return_code=0,
                           resolved_executable=resolved or executable, stdin=stdin, stdout=stdout, cwd=cwd,
                           fileless=fileless, executable_device=device, executable_inode=inode)


def open_data(path, flags=os.O_RDONLY, result=3, device=1, inode=2) -> FileOpenData:
    return FileOpenData(path=path, flags=flags, mode=0o644, result=result, device=device if result >= 0 else 0,
                        inode=inode if result >= 0 else 0, syscall="openat",
                        resolved_path=path if result >= 0 else None)


def connect_data(address, port, family="ipv4", result=0) -> NetConnectData:
    return NetConnectData(family=family, protocol="tcp", address=address, port=port, result=result, fd=3)


def found(detector: Detector, *events: Event) -> list[Event]:
    return [d for d in detector.run(events) if d.name == "detection"]


# ---------------------------------------------------------------- the schema of a detection

def test_a_made_event_carries_threat_and_triggered_by_through_msgpack():
    threat = schema.Threat(description="d", severity="high", mitre_tactic="Execution", mitre_technique="Unix Shell",
                           mitre_tactic_id="TA0002", mitre_technique_id="T1059.004")
    trig = schema.TriggeredBy(name="process_exec", id=1, timestamp=5, pid=7, entity_id=9)
    data = schema.DetectionData(rule="r", summary="s", events=[trig])
    ev = Event.make(id=EVENT_IDS["detection"], timestamp=5, data=data, pid=7, threat=threat, triggered_by=trig)
    (back,) = schema.batch_decoder.decode(schema.msgpack_encoder.encode([ev]))
    assert (back.threat, back.triggered_by, back.data) == (threat, trig, data)
    rec = back.record()
    assert (rec.threat, rec.triggered_by, rec.name) == (threat, trig, "detection")
    # Nothing the kernel reports carries them.
    plain = Event.make(id=EVENT_IDS["process_fork"], timestamp=1,
                       data=schema.ProcessForkData(child_pid=2, child_entity_id=3, child_start_time=4))
    assert plain.threat is None and plain.triggered_by is None and plain.record().threat is None


def test_detection_is_a_user_space_kind_no_tracer_delivers():
    from runtimeguard.tracer import ALL_EVENTS

    assert schema.EVENT_IDS["detection"] == 18
    assert "detection" not in ALL_EVENTS
    with pytest.raises(ValueError, match="unknown event"):
        Tracer(["detection"])


# ---------------------------------------------------------------- path patterns

NAME = st.text("abcXYZ._-", min_size=1, max_size=6).filter(lambda s: s not in (".", ".."))
SEGMENTS = st.lists(NAME, min_size=1, max_size=5)
WILD = st.text("ab*?", min_size=1, max_size=4).filter(lambda s: "**" not in s)  # "**" crosses names


@given(parts=SEGMENTS, extra=NAME)
def test_a_literal_pattern_matches_only_itself(parts, extra):
    path = "/" + "/".join(parts)
    p = PathPattern(path)
    assert p.matches(path)
    assert not p.matches(path + extra) and not p.matches(path + "/" + extra)
    assert not p.matches(path.rsplit("/", 1)[0] or "/")


@given(parts=SEGMENTS, below=SEGMENTS, extra=NAME)
def test_a_trailing_slash_covers_everything_beneath_and_nothing_beside(parts, below, extra):
    top = "/" + "/".join(parts)
    p = PathPattern(top + "/")
    assert p.matches(top + "/" + "/".join(below))
    assert not p.matches(top)
    assert not p.matches(top + extra + "/" + "/".join(below))


@settings(max_examples=300)
@given(pattern=st.lists(st.one_of(NAME, WILD), min_size=1, max_size=4), path=st.lists(
    st.text("ab", min_size=1, max_size=4), min_size=1, max_size=4))
def test_wildcards_match_as_fnmatch_does_name_by_name(pattern, path):
    import fnmatch

    expected = len(pattern) == len(path) and all(fnmatch.fnmatchcase(n, p) for n, p in zip(path, pattern))
    assert PathPattern("/" + "/".join(pattern)).matches("/" + "/".join(path)) == expected


@given(user=NAME, rest=SEGMENTS)
def test_a_home_pattern_covers_root_and_every_user_home(user, rest):
    p = PathPattern("~/" + "/".join(rest))
    tail = "/".join(rest)
    assert p.matches(f"/root/{tail}") and p.matches(f"/home/{user}/{tail}")
    assert not p.matches(f"/home/{user}/x/{tail}") and not p.matches(f"/srv/{user}/{tail}")


@given(parts=SEGMENTS, depth=SEGMENTS)
def test_double_star_crosses_directories(parts, depth):
    assert PathPattern("/a/**/z").matches("/a/" + "/".join(depth) + "/z")
    assert PathPattern("/a/**/z").matches("/a/z")
    assert PathPattern("**/*.pub").matches("/" + "/".join(parts) + ".pub")


@pytest.mark.parametrize("bad", ["", "relative/path", "./x", "x*", "\0/x"])
def test_patterns_must_be_absolute(bad):
    with pytest.raises(ValueError):
        PathPattern(bad)


def test_watch_roots_are_what_exists(workdir):
    os.makedirs(f"{workdir}/keys")
    open(f"{workdir}/keys/id_a", "w").close()
    open(f"{workdir}/secret", "w").close()
    assert PathPattern(f"{workdir}/keys/id_*").watch_roots() == [f"{workdir}/keys/id_a"]
    assert PathPattern(f"{workdir}/keys/none_*").watch_roots() == [f"{workdir}/keys"]
    assert PathPattern(f"{workdir}/secret").watch_roots() == [f"{workdir}/secret"]
    # A missing file: its directory, where it would be created; nothing when only reads matter.
    assert PathPattern(f"{workdir}/later").watch_roots() == [workdir]
    assert PathPattern(f"{workdir}/later").watch_roots(created=False) == []
    assert PathPattern(f"{workdir}/keys/").watch_roots() == [f"{workdir}/keys"]
    assert PathPattern(f"{workdir}/missing/dir/").watch_roots() == []
    # Never /etc itself: every dynamically linked program opens a file there.
    assert PathPattern("/etc/rg-no-such-file").watch_roots() == []
    assert PathPattern("/etc/rg-no-such-*").watch_roots() == []


# ---------------------------------------------------------------- the tuning YAML

def test_the_shipped_tuning_is_the_rules_defaults():
    tuning = load_tuning(DEFAULT_TUNING)
    assert sorted(tuning.rules) == sorted(RULE_IDS)  # it spells out every rule
    for rule in DEFAULT_RULES:
        shipped, coded = tuning.rules[rule.id], rule.Options()
        assert msgspec.structs.replace(shipped, severity=None) == coded, rule.id
        assert shipped.severity == rule.severity, rule.id
    assert tuning.max_errors is None and tuning.repeat_window_s == 60


def test_every_key_of_the_shipped_tuning_is_documented_in_it():
    with open(DEFAULT_TUNING) as f:
        text = f.read()
    for rule in DEFAULT_RULES:
        assert f"\n  {rule.id}:\n" in text
        for t in rule.techniques:
            assert t.technique_id in text, (rule.id, t.technique_id)


def test_the_readme_shows_the_shipped_tuning_as_it_is():
    readme = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
    with open(readme) as f:
        text = f.read()
    start = text.index("<summary><code>runtimeguard/detections/default.yaml</code></summary>")
    block = text[text.index("```yaml\n", start) + len("```yaml\n"):]
    with open(DEFAULT_TUNING) as f:
        assert block[:block.index("```\n")] == f.read()


def test_a_tuned_severity_is_the_detections():
    detector = detector_for("interpreter_shell", severity="critical")
    (rule,) = detector.rules
    assert rule.threat.severity == "critical" and rule.threat.mitre_technique_id == "T1059.004"
    shell = make("process_exec", exec_data(["/bin/sh", "-c", "id"], resolved="/usr/bin/dash"),
                 process=proc(executable="/usr/bin/dash", parent="/usr/bin/python3.11"))
    (det,) = found(detector, shell)
    assert det.threat.severity == "critical"


BAD_DOCS = [
    ("version: 1\nrules:\n  reverse_shell:\n    enabled: true\n    sevrity: high\n",
     "rules.reverse_shell.sevrity", 5, "unknown key"),
    ("version: 1\nrules:\n  reverse_shell:\n    severity: urgent\n",
     "rules.reverse_shell.severity", 4, "invalid value 'urgent'"),
    ("version: 1\nrules:\n  reverse_shel: {}\n", "rules.reverse_shel", 3, "unknown rule"),
    ("version: 1\nrules:\n  credential_read:\n    private_keys:\n      - /ok\n      - relative/key\n",
     "rules.credential_read.private_keys[1]", 6, "not absolute"),
    ("version: 1\nrules:\n  ptrace_attach:\n    exceptions:\n      - {}\n",
     "rules.ptrace_attach.exceptions[0]", 5, "at least one of"),
    ("version: 1\nrules:\n  ptrace_attach:\n    exceptions:\n      - executable: [/x]\n        pid: [1]\n",
     "rules.ptrace_attach.exceptions[0].pid", 6, "unknown key"),
    ("version: 1\nrules:\n  ptrace_attach:\n    requests: [PTRACE_ATACH]\n",
     "rules.ptrace_attach.requests[0]", 4, "unknown ptrace request"),
    ("version: 1\nrules:\n  cloud_metadata:\n    addresses: [169.254.169.254, not-an-ip]\n",
     "rules.cloud_metadata.addresses[1]", 4, "not an address"),
    ("version: 1\nrules:\n  download_execute:\n    window_s: 0\n", "rules.download_execute.window_s", 4,
     "more than 0"),
    ("version: 1\nrules:\n  unauthorized_connection:\n    allowed:\n      env:K:\n        - {cidr: 10.0.0.0/8, host: x}\n",
     "rules.unauthorized_connection.allowed.env:K[0]", 6, "exactly one of cidr or host"),
    ("version: 1\nrepeat_window: 3\n", "repeat_window", 2, "unknown key"),
    ("version: 2\n", "version", 1, "unsupported version"),
    ("version: 1\nmax_errors: 0\n", "max_errors", 2, "at least 1"),
    ("version: 1\nrules:\n  reverse_shell:\n    enabled: true\n    enabled: false\n", "", None, "duplicate key"),
]


@pytest.mark.parametrize("text,field,line,reason", BAD_DOCS)
def test_a_bad_tuning_names_the_key_and_its_line(text, field, line, reason):
    with pytest.raises(DetectionConfigError) as e:
        parse_tuning(text, source="t.yaml")
    assert e.value.field == field and e.value.line == line and reason in str(e.value), str(e.value)
    assert str(e.value).startswith("t.yaml")


# YAML 1.1 reads these unquoted as booleans and null, not as names.
OPTION_NAMES = st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12).filter(
    lambda s: s not in ("y", "n", "yes", "no", "on", "off", "true", "false", "null"))


@settings(max_examples=100)
@given(rule=st.sampled_from(DEFAULT_RULES), key=OPTION_NAMES, indent=st.integers(2, 6))
def test_an_unknown_option_is_refused_at_its_line(rule, key, indent):
    if key in rule.Options.__struct_fields__:
        return
    pad = " " * indent
    text = f"version: 1\nrules:\n{pad}{rule.id}:\n{pad}{pad}enabled: true\n{pad}{pad}{key}: 1\n"
    with pytest.raises(DetectionConfigError) as e:
        parse_tuning(text)
    assert e.value.field == f"rules.{rule.id}.{key}" and e.value.line == 5
    assert "expected one of" in e.value.reason and "enabled" in e.value.reason


@settings(max_examples=100)
@given(rule=st.sampled_from(DEFAULT_RULES), enabled=st.booleans(),
       severity=st.sampled_from([None, "info", "low", "medium", "high", "critical"]),
       uids=st.lists(st.integers(0, 65535), max_size=3))
def test_a_valid_tuning_overrides_only_what_it_says(rule, enabled, severity, uids):
    options = {"enabled": enabled}
    if severity is not None:
        options["severity"] = severity
    if uids:
        options["exceptions"] = [{"uid": uids}]
    tuning = parse_tuning(yaml.safe_dump({"version": 1, "rules": {rule.id: options}}))
    got = tuning.options_for(rule)
    assert got.enabled == enabled and got.severity == severity
    if uids:
        assert got.exceptions[0].uid == tuple(uids)
    else:
        assert got.exceptions == rule.Options().exceptions
    for other in DEFAULT_RULES:
        if other is not rule:
            assert tuning.options_for(other) == other.Options()
    detector = Detector(tuning)
    assert (rule.id in [r.id for r in detector.rules]) == enabled


def test_a_key_yaml_reads_as_a_boolean_is_named():
    with pytest.raises(DetectionConfigError, match="keys must be strings"):
        parse_tuning("version: 1\nrules:\n  reverse_shell:\n    no: 1\n")


@given(rule_id=OPTION_NAMES.filter(lambda s: s not in RULE_IDS))
def test_an_unknown_rule_is_refused(rule_id):
    with pytest.raises(DetectionConfigError, match="unknown rule"):
        tuning_from_dict({"version": 1, "rules": {rule_id: {}}})


def test_a_host_that_does_not_resolve_is_named(monkeypatch):
    def refuse(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    tuning = tuning_only("unauthorized_connection", allowed={"env:K": [{"host": "nowhere.invalid"}]})
    with pytest.raises(DetectionConfigError) as e:
        Detector(tuning)
    assert e.value.field == "rules.unauthorized_connection.allowed.env:K[0].host"


# ---------------------------------------------------------------- the engine

class Boom(Rule):
    id = "boom"
    techniques = DEFAULT_RULES[0].techniques
    events = frozenset({"process_exec"})

    def check(self, ev, ctx):
        raise RuntimeError("broken rule")


class Every(Rule):
    id = "every"
    techniques = DEFAULT_RULES[0].techniques
    events = frozenset({"process_exec"})

    def check(self, ev, ctx):
        yield Finding(summary="seen", description="seen", events=(ev,))


def some_execs(n: int) -> list[Event]:
    return [make("process_exec", exec_data(["/usr/bin/true"])) for _ in range(n)]


def test_a_rule_that_raises_is_logged_once_counted_and_the_others_go_on(caplog):
    detector = Detector(rules=[Boom(), Every()])
    with caplog.at_level(logging.ERROR, logger="runtimeguard.detections"):
        out = list(detector.run(some_execs(3)))
    assert [ev.name for ev in out] == ["process_exec", "detection"] * 3
    assert detector.stats().errors == {"boom": 3} and detector.stats().detections == {"every": 3}
    assert detector.stats().disabled == []
    logged = [r for r in caplog.records if r.name == "runtimeguard.detections"]
    assert len(logged) == 1 and "boom" in logged[0].getMessage() and logged[0].exc_info is not None


def test_max_errors_switches_a_failing_rule_off():
    tuning = tuning_from_dict({"version": 1, "max_errors": 2})
    detector = Detector(tuning, rules=[Boom(), Every()])
    list(detector.run(some_execs(5)))
    s = detector.stats()
    assert s.errors == {"boom": 2} and s.disabled == ["boom"] and s.detections == {"every": 5}


def test_exceptions_cover_by_executable_parent_uid_and_image():
    exceptions = [{"executable": ["/opt/ok/*"]}, {"parent_executable": ["/usr/bin/make"], "uid": [1000]},
                  {"container_image": ["docker.io/library/trusted:*"]}]
    detector = detector_for("interpreter_shell", exceptions=exceptions)
    shell = exec_data(["/bin/sh", "-c", "true"], resolved="/usr/bin/dash")

    def shell_of(executable="/usr/bin/dash", uid=0, image=None, parent="/usr/bin/python3.11"):
        p = proc(executable=executable, parent=parent, uid=uid)
        c = Container(id="a" * 64, image=image) if image else None
        return make("process_exec", shell, process=p, container=c)

    assert found(detector, shell_of())  # no exception covers it
    assert not found(detector, shell_of(executable="/opt/ok/sh"))
    assert not found(detector, shell_of(image="docker.io/library/trusted:1.0"))
    assert found(detector, shell_of(image="docker.io/library/other:1.0"))
    # Both keys of one entry must match.
    assert found(detector, shell_of(parent="/usr/bin/python3", uid=1000))
    assert detector.stats().excepted == {"interpreter_shell": 2}


def test_a_repeat_within_the_window_is_counted_not_reported():
    detector = detector_for("process_memory_access")
    target = TargetContext(type="pid", formatted="pid 4000500 (sshd)", pid=4_000_500)
    start = next(_clock)

    def read(at):
        return make("process_memory", ProcessMemoryData(method="process_vm_readv", target_pid=4_000_500, result=8),
                    ts=at, target=target)

    got = found(detector, read(start), read(start + 10**9), read(start + 61 * 10**9))
    assert [d.timestamp for d in got] == [start, start + 61 * 10**9]
    assert detector.stats().repeats == {"process_memory_access": 1}


@pytest.mark.root
def test_tracer_options_ask_for_the_rules_events_and_watch_files(cgroup, workdir):
    for name in ("secret", "other"):
        open(f"{workdir}/{name}", "w").close()
    detector = Detector(tuning_only("credential_read", credential_files=[f"{workdir}/secret"], private_keys=[]))
    real = detector.tracer_options(cgroups=[cgroup])
    assert real["events"] == ["file_open"] and real["cgroups"] == [cgroup]
    assert real["watch_files"] == [f"{workdir}/secret"]
    assert detector.watches(f"{workdir}/secret") and not detector.watches(f"{workdir}/other")
    # The Tracer those options make reports the watched file's opens alone.
    with Tracer(**real) as t:
        run_in(cgroup, ["cat", f"{workdir}/secret", f"{workdir}/other"])
        events = drain(t)
    assert [ev.data.resolved_path for ev in events if ev.name == "file_open"] == [f"{workdir}/secret"]


def test_the_default_detector_asks_for_every_kind_its_rules_need():
    detector = Detector()
    assert set(detector.events) == {"process_exec", "process_exit", "file_open", "net_connect", "net_sendmsg",
                                    "ptrace", "process_memory"}
    assert {r.id for r in detector.rules} == set(RULE_IDS)
    for rule in detector.rules:
        assert rule.techniques and all(t.technique_id.startswith("T") and t.tactic_id.startswith("TA")
                                       for t in rule.techniques)


def test_the_watch_table_marks_detections_and_escapes_what_processes_wrote():
    detector = detector_for("interpreter_shell")
    shell = make("process_exec", exec_data(["/bin/sh", "-c", "echo \x1b]0;owned\x07"], resolved="/usr/bin/dash"),
                 process=proc(executable="/usr/bin/dash", parent="/usr/bin/python3.11"))
    (det,) = found(detector, shell)
    out = io.StringIO()
    table = WatchTable(out, "host-a")
    table.width = 250
    table.row(shell)
    table.row(det)
    plain, marked = out.getvalue().splitlines()
    assert plain.startswith(" ") and marked.startswith("!")
    assert "T1059.004" in marked and "interpreter_shell" in marked and "host-a" in marked
    assert "\x1b" not in marked and "\\x1b]0;owned\\x07" in marked
    assert "python3.11" in marked  # the parent
    narrow = io.StringIO()
    table = WatchTable(narrow, "host-a")
    table.width = 80
    table.row(det)
    assert "T1059.004" in narrow.getvalue()  # whatever the terminal leaves of the rest


# ---------------------------------------------------------------- default lists, on synthetic events

@pytest.mark.parametrize("path,flags,technique", [
    ("/etc/cron.d/job", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, "T1053.003"),
    ("/var/spool/cron/crontabs/root", os.O_WRONLY | os.O_CREAT, "T1053.003"),
    ("/etc/crontab", os.O_RDWR, "T1053.003"),
    ("/etc/systemd/system/evil.service", os.O_WRONLY | os.O_CREAT, "T1543.002"),
    ("/home/alice/.config/systemd/user/evil.service", os.O_WRONLY | os.O_CREAT, "T1543.002"),
    ("/root/.bashrc", os.O_WRONLY | os.O_APPEND, "T1546.004"),
    ("/etc/profile.d/evil.sh", os.O_WRONLY | os.O_CREAT, "T1546.004"),
    ("/home/bob/.ssh/authorized_keys", os.O_WRONLY | os.O_APPEND, "T1098.004"),
    ("/etc/crontab", os.O_RDONLY, None),                       # a read
    ("/root/.bashrc", os.O_RDONLY, None),
    ("/etc/cron.dx/job", os.O_WRONLY | os.O_CREAT, None),      # beside, not beneath
    ("/home/bob/notes/.bashrc", os.O_WRONLY | os.O_CREAT, None),
])
def test_persistence_default_lists(path, flags, technique):
    got = found(Detector(tuning_only("persistence_write")), make("file_open", open_data(path, flags)))
    assert [d.threat.mitre_technique_id for d in got] == ([technique] if technique else [])


def test_persistence_writes_refused_for_permission_count_and_missing_directories_do_not():
    detector = Detector(tuning_only("persistence_write"))
    refused = make("file_open", open_data("/etc/cron.d/job", os.O_WRONLY | os.O_CREAT, result=-errno.EACCES))
    missing = make("file_open", open_data("/etc/cron.d/x/job", os.O_WRONLY | os.O_CREAT, result=-errno.ENOENT))
    got = found(detector, refused, missing)
    assert len(got) == 1 and "failed: EACCES" in got[0].data.summary


@pytest.mark.parametrize("path,flags,technique", [
    ("/etc/shadow", os.O_RDONLY, "T1552.001"),
    ("/root/.aws/credentials", os.O_RDONLY, "T1552.001"),
    ("/home/carol/.kube/config", os.O_RDONLY, "T1552.001"),
    ("/run/secrets/kubernetes.io/serviceaccount/token", os.O_RDONLY, "T1552.001"),
    ("/root/.ssh/id_ed25519", os.O_RDONLY, "T1552.004"),
    ("/home/carol/.ssh/deploy.pem", os.O_RDONLY, "T1552.004"),
    ("/etc/ssh/ssh_host_rsa_key", os.O_RDONLY, "T1552.004"),
    ("/etc/ssl/private/site.key", os.O_RDONLY, "T1552.004"),
    ("/etc/passwd", os.O_RDONLY, None),                       # public
    ("/root/.ssh/id_ed25519.pub", os.O_RDONLY, None),          # a public key
    ("/etc/ssh/ssh_host_rsa_key.pub", os.O_RDONLY, None),
    ("/etc/ssl/certs/ca-certificates.crt", os.O_RDONLY, None),
    ("/etc/shadow", os.O_WRONLY, None),                        # not a read
    ("/etc/shadow", os.O_PATH, None),
])
def test_credential_default_lists(path, flags, technique):
    got = found(Detector(tuning_only("credential_read")), make("file_open", open_data(path, flags)))
    assert [d.threat.mitre_technique_id for d in got] == ([technique] if technique else [])


def test_credential_default_exceptions_let_openssh_read_keys():
    detector = Detector(tuning_only("credential_read"))
    key = open_data("/root/.ssh/id_rsa")
    assert not found(detector, make("file_open", key, process=proc(executable="/usr/bin/ssh")))
    assert found(detector, make("file_open", key, process=proc(executable="/usr/bin/python3.11")))


def test_a_credential_opened_through_a_link_is_found_by_what_it_opened():
    detector = Detector(tuning_only("credential_read"))
    data = msgspec.structs.replace(open_data("/tmp/innocent.pub"), resolved_path="/root/.ssh/id_rsa")
    (got,) = found(detector, make("file_open", data))
    assert "/root/.ssh/id_rsa" in got.data.summary


@pytest.mark.parametrize("address,family,fires", [
    ("169.254.169.254", "ipv4", True), ("fd00:ec2::254", "ipv6", True), ("::ffff:169.254.169.254", "ipv6", True),
    ("169.254.170.2", "ipv4", True), ("100.100.100.200", "ipv4", True),
    ("169.254.169.253", "ipv4", False), ("10.0.0.1", "ipv4", False), ("fd00:ec2::253", "ipv6", False),
])
def test_cloud_metadata_default_addresses(address, family, fires):
    got = found(Detector(tuning_only("cloud_metadata")), make("net_connect", connect_data(address, 80, family)))
    assert bool(got) == fires
    if fires:
        assert got[0].threat.mitre_technique_id == "T1552.005" and got[0].target_context.port == 80


@pytest.mark.parametrize("argv,resolved,fileless,technique", [
    (["/tmp/x"], "/tmp/x", False, "T1204.002"),
    (["/dev/shm/.x"], "/dev/shm/.x", False, "T1204.002"),
    (["/var/tmp/a/b"], "/var/tmp/a/b", False, "T1204.002"),
    (["x"], "/memfd:payload", True, "T1620"),
    (["/usr/bin/true"], "/usr/bin/true", False, None),
    (["/tmpx/y"], "/tmpx/y", False, None),
])
def test_exec_from_temp_default_dirs(argv, resolved, fileless, technique):
    ev = make("process_exec", exec_data(argv, resolved=resolved, fileless=fileless))
    got = found(Detector(tuning_only("exec_from_temp")), ev)
    assert [d.threat.mitre_technique_id for d in got] == ([technique] if technique else [])


def test_exec_from_temp_default_exception_lets_runc_reexecute_itself():
    ev = make("process_exec", exec_data(["runc", "init"], resolved="/memfd:runc_cloned:/proc/self/exe",
                                        fileless=True),
              process=proc(executable="/memfd:runc_cloned:/proc/self/exe"))
    assert not found(Detector(tuning_only("exec_from_temp")), ev)


def test_a_script_in_a_temporary_directory_is_found_by_its_path():
    # A script runs as its interpreter: the file given to exec is the script.
    ev = make("process_exec", exec_data(["/bin/sh", "./run.sh"], executable="./run.sh", resolved="/usr/bin/dash",
                                        cwd="/tmp/build"))
    (got,) = found(Detector(tuning_only("exec_from_temp")), ev)
    assert "/tmp/build/run.sh" in got.data.summary


@pytest.mark.parametrize("argv,reads", [
    (["sh"], True), (["sh", "-s", "a", "b"], True), (["bash", "-"], True), (["sh", "-e"], True),
    (["bash", "-o", "pipefail"], True), (["sh", "--", ], True), (["bash", "--norc"], True),
    (["sh", "-c", "cat"], False), (["sh", "-ec", "cat"], False), (["sh", "script.sh"], False),
    (["bash", "-x", "script.sh"], False), (["sh", "-s", "--", "x"], True), (["bash", "--rcfile", "rc"], True),
    (["bash", "--rcfile", "rc", "script.sh"], False),
])
def test_which_shells_run_their_stdin(argv, reads):
    assert _reads_script_from_stdin(argv) == reads


def test_a_shell_started_by_an_interpreter_and_not_by_a_shell():
    detector = Detector(tuning_only("interpreter_shell"))
    sh = exec_data(["/bin/sh", "-c", "id"], resolved="/usr/bin/dash")
    assert found(detector, make("process_exec", sh, process=proc(parent="/usr/bin/python3.11")))
    assert found(detector, make("process_exec", sh, process=proc(parent="/usr/local/bin/node")))
    assert not found(detector, make("process_exec", sh, process=proc(parent="/usr/bin/bash")))
    assert not found(detector, make("process_exec", sh, process=proc(parent="/usr/sbin/sshd")))
    py = exec_data(["/usr/bin/python3", "-c", "pass"], resolved="/usr/bin/python3.11")
    assert not found(detector, make("process_exec", py, process=proc(parent="/usr/bin/bash")))


# ---------------------------------------------------------------- unauthorized connections, unit

def identity_process(identities: Optional[list[str]], pid: int = FAKE_PID) -> Process:
    return proc(pid=pid, identities=identities if identities is not None else [])


UNAUTHORIZED = dict(allowed={"env:OPENAI_API_KEY": [{"cidr": "162.159.140.0/24", "ports": [443]},
                                                    {"cidr": "2606:4700::/32"}],
                             "argv:deploy-token": [{"cidr": "10.20.0.0/16"}]},
                    always_allowed=[{"cidr": "127.0.0.0/8"}, {"cidr": "192.0.2.53", "ports": [53]}])


@pytest.mark.parametrize("identities,address,port,fires", [
    (["env:OPENAI_API_KEY"], "162.159.140.7", 443, False),
    (["env:OPENAI_API_KEY"], "162.159.140.7", 80, True),          # allowed host, other port
    (["env:OPENAI_API_KEY"], "203.0.113.9", 443, True),
    (["env:OPENAI_API_KEY"], "2606:4700::6810:1", 443, False),
    (["env:OPENAI_API_KEY"], "::ffff:162.159.140.7", 443, False),   # IPv4-mapped: its IPv4
    (["env:OPENAI_API_KEY"], "127.0.0.1", 8080, False),            # always allowed
    (["env:OPENAI_API_KEY"], "192.0.2.53", 53, False),
    (["env:OPENAI_API_KEY"], "192.0.2.53", 54, True),
    (["env:OPENAI_API_KEY", "argv:deploy-token"], "10.20.1.1", 22, False),   # any identity held allows
    (["argv:deploy-token"], "162.159.140.7", 443, True),
    (["env:UNLISTED"], "203.0.113.9", 443, False),                 # no identity the rule knows
    ([], "203.0.113.9", 443, False),
    (None, "203.0.113.9", 443, False),
])
def test_unauthorized_connection_by_identity(identities, address, port, fires):
    detector = Detector(tuning_only("unauthorized_connection", **UNAUTHORIZED))
    family = "ipv6" if ":" in address else "ipv4"
    ev = make("net_connect", connect_data(address, port, family), process=identity_process(identities))
    got = found(detector, ev)
    assert bool(got) == fires
    if fires:
        (d,) = got
        assert d.threat.mitre_technique_id == "T1071" and d.threat.mitre_tactic_id == "TA0011"
        assert all(i in d.data.summary for i in identities if i in UNAUTHORIZED["allowed"])


def test_unauthorized_connection_registers_its_identities_with_the_tracer():
    detector = Detector(tuning_only("unauthorized_connection", **UNAUTHORIZED))
    options = detector.tracer_options()
    assert options["identity_env"] == ["OPENAI_API_KEY"]
    assert options["identity_argv"] == ["deploy-token"]


# ---------------------------------------------------------------- download then execute, unit

def test_a_pipe_from_a_downloader_into_a_shell_under_one_parent():
    detector = Detector(tuning_only("download_execute"))
    start = next(_clock)
    parent = proc(pid=FAKE_PID - 1, executable="/usr/bin/bash")
    curl = make("process_exec", exec_data(["curl", "-s", "http://x/i.sh"], resolved="/usr/bin/curl", stdout="pipe"),
                pid=FAKE_PID + 1, ts=start, process=proc(pid=FAKE_PID + 1, parent=parent.executable))
    sh = make("process_exec", exec_data(["sh"], resolved="/usr/bin/dash", stdin="pipe"), pid=FAKE_PID + 2,
              ts=start + 1000, process=proc(pid=FAKE_PID + 2, parent=parent.executable))
    # Seen out of order (the shell's record first): the later in time completes the pair.
    (got,) = found(detector, sh, curl)
    assert got.threat.mitre_technique_id == "T1105" and got.triggered_by.pid == FAKE_PID + 2
    assert [e.pid for e in got.data.events] == [FAKE_PID + 1, FAKE_PID + 2]
    # Not paired again with the next one, and not past the window.
    late = make("process_exec", exec_data(["sh"], resolved="/usr/bin/dash", stdin="pipe"), pid=FAKE_PID + 3,
                ts=start + 11 * 10**9, process=proc(pid=FAKE_PID + 3, parent=parent.executable))
    assert not found(detector, late)


def test_a_downloader_that_exited_before_the_shell_started_was_another_command():
    detector = Detector(tuning_only("download_execute"))
    start = next(_clock)
    parent = "/usr/bin/bash"
    curl = make("process_exec", exec_data(["curl", "http://x"], resolved="/usr/bin/curl", stdout="pipe"),
                pid=FAKE_PID + 1, ts=start, process=proc(pid=FAKE_PID + 1, parent=parent))
    gone = make("process_exit", schema.ProcessExitData(exit_code=0, signal=None, duration_ns=10**6),
                pid=FAKE_PID + 1, ts=start + 10**6)
    sh = make("process_exec", exec_data(["sh"], resolved="/usr/bin/dash", stdin="pipe"), pid=FAKE_PID + 2,
              ts=start + 2 * 10**6, process=proc(pid=FAKE_PID + 2, parent=parent))
    assert not found(detector, curl, gone, sh)


# ---------------------------------------------------------------- real behaviour: shells

SPAWN_SHELL = "import subprocess, sys; subprocess.run(['/bin/sh', '-c', 'exit 0', sys.argv[1]], check=True)"


@pytest.mark.root
def test_interpreter_shell_real(cgroup):
    detector = detector_for("interpreter_shell")
    events, results = run_detected(
        cgroup, detector,
        [sys.executable, "-c", SPAWN_SHELL, "rg-by-python"],
        # Look-alikes: a shell started by a shell; a python started by a shell.
        ["/bin/bash", "-c", "/bin/sh -c 'exit 0' rg-by-shell; exit 0"],
        ["/bin/sh", "-c", f"{sys.executable} -c pass rg-python-by-shell; exit 0"])
    assert all(r.returncode == 0 for r in results), results
    (shell,) = execs(events, "rg-by-python", "sh")
    got = {d.triggered_by.pid: d for d in detections(events, "interpreter_shell")}
    check_detection(got[shell.pid], shell, "T1059.004", "TA0002")
    assert os.path.basename(got[shell.pid].workload.process.parent.executable).startswith("python")
    for marker in ("rg-by-shell", "rg-python-by-shell"):
        (benign,) = execs(events, marker)
        assert benign.pid not in got, marker


STDIN_OF = textwrap.dedent("""
    import os, socket, sys
    way, port = sys.argv[1], int(sys.argv[2])
    keep = []
    if way == "inet":
        s = socket.create_connection(("127.0.0.1", port))
        os.dup2(s.fileno(), 0)
        os.dup2(s.fileno(), 1)
    elif way == "unix":
        a, b = socket.socketpair(); keep.append(b)
        os.dup2(a.fileno(), 0)
    elif way == "pipe":
        r, w = os.pipe(); keep.append(w)
        os.dup2(r, 0)
    os.execv("/bin/sh", ["sh", "-c", "exit 0", "rg-stdin-" + way])
""")


@pytest.mark.root
def test_reverse_shell_real(cgroup):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    port = listener.getsockname()[1]
    try:
        detector = detector_for("reverse_shell")
        events, results = run_detected(cgroup, detector, *[[sys.executable, "-c", STDIN_OF, way, str(port)]
                                                            for way in ("inet", "unix", "pipe")])
    finally:
        listener.close()
    assert all(r.returncode == 0 for r in results), results
    (shell,) = execs(events, "rg-stdin-inet")
    assert shell.data.stdin == "inet_socket"
    (got,) = detections(events, "reverse_shell")
    check_detection(got, shell, "T1059.004", "TA0002")
    # The connect the shell's process made before it became the shell names the other end.
    assert [e.name for e in got.data.events] == ["net_connect", "process_exec"]
    assert f"127.0.0.1:{port}" in got.data.summary and "stdin and stdout" in got.data.summary
    for way in ("unix", "pipe"):  # sshd gives a session without a terminal a unix socket
        (benign,) = execs(events, f"rg-stdin-{way}")
        assert benign.data.stdin == f"{way}_socket" if way == "unix" else benign.data.stdin == "pipe"


# ---------------------------------------------------------------- real behaviour: other processes

READ_MEMORY = textwrap.dedent("""
    import ctypes, os, signal, sys, time
    libc = ctypes.CDLL(None, use_errno=True)
    secret = ctypes.create_string_buffer(b"rg-secret-bytes", 32)
    child = os.fork()
    if child == 0:
        time.sleep(30)
        os._exit(0)

    class IoVec(ctypes.Structure):
        _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]

    def vm_read(pid):
        got = ctypes.create_string_buffer(32)
        local, remote = IoVec(ctypes.addressof(got), 32), IoVec(ctypes.addressof(secret), 32)
        n = libc.process_vm_readv(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
        assert n == 32 and got.value == b"rg-secret-bytes", (n, ctypes.get_errno())

    try:
        with open(f"/proc/{child}/mem", "rb", buffering=0) as f:   # another process's
            f.seek(ctypes.addressof(secret))
            assert f.read(15) == b"rg-secret-bytes"
        vm_read(child)
        with open("/proc/self/mem", "rb", buffering=0) as f:       # its own: benign
            f.seek(ctypes.addressof(secret))
            assert f.read(15) == b"rg-secret-bytes"
        vm_read(os.getpid())
        print(child)
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
""")


@pytest.mark.root
def test_process_memory_access_real(cgroup):
    detector = detector_for("process_memory_access", methods=["proc_mem_open", "process_vm_readv"])
    events, (result,) = run_detected(cgroup, detector, [sys.executable, "-c", READ_MEMORY])
    assert result.returncode == 0, result.stderr
    child = int(result.stdout)
    memory = [ev for ev in events if ev.name == "process_memory"]
    reader = next(ev.pid for ev in memory if ev.data.target_pid == child)
    assert {(ev.data.method, ev.data.target_pid) for ev in memory if ev.pid == reader} >= {
        ("proc_mem_open", child), ("process_vm_readv", child), ("proc_mem_open", reader),
        ("process_vm_readv", reader)}
    got = detections(events, "process_memory_access")
    assert sorted(d.data.events[0].pid for d in got) == [reader, reader]
    for d in got:
        trigger = next(ev for ev in memory if ev.timestamp == d.triggered_by.timestamp)
        assert trigger.data.target_pid == child  # never its own memory
        check_detection(d, trigger, "T1003.007", "TA0006")
        assert d.target_context.pid == child


PTRACE = textwrap.dedent("""
    import ctypes, os, signal, time
    libc = ctypes.CDLL(None, use_errno=True)
    libc.ptrace.restype = ctypes.c_long
    libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
    target = os.fork()
    if target == 0:
        time.sleep(30)
        os._exit(0)
    # Look-alike: a child asking to be traced (what a debugger's child does).
    traced = os.fork()
    if traced == 0:
        libc.ptrace(0, 0, None, None)          # PTRACE_TRACEME
        os._exit(0)
    os.waitpid(traced, 0)
    # Look-alike: a request that is not an attach (fails: not traced).
    assert libc.ptrace(2, target, None, None) == -1   # PTRACE_PEEKDATA
    try:
        assert libc.ptrace(16, target, None, None) == 0, ctypes.get_errno()   # PTRACE_ATTACH
        os.waitpid(target, 0)
        assert libc.ptrace(17, target, None, None) == 0                        # PTRACE_DETACH
        print(target, traced)
    finally:
        os.kill(target, signal.SIGKILL)
        os.waitpid(target, 0)
""")


@pytest.mark.root
def test_ptrace_attach_real(cgroup):
    detector = detector_for("ptrace_attach")
    events, (result,) = run_detected(cgroup, detector, [sys.executable, "-c", PTRACE])
    assert result.returncode == 0, result.stderr
    target, traced = map(int, result.stdout.split())
    requests = {(ev.data.request_name, ev.data.target_pid if ev.data.request else 0) for ev in events
                if ev.name == "ptrace"}
    assert {("PTRACE_TRACEME", 0), ("PTRACE_PEEKDATA", target), ("PTRACE_ATTACH", target)} <= requests
    (got,) = detections(events, "ptrace_attach")
    attach = next(ev for ev in events if ev.name == "ptrace" and ev.data.request_name == "PTRACE_ATTACH")
    check_detection(got, attach, "T1055.008", "TA0004")
    assert got.target_context.pid == target and "PTRACE_ATTACH" in got.data.summary


# ---------------------------------------------------------------- real behaviour: files

@pytest.mark.root
def test_credential_read_real(cgroup, workdir):
    os.makedirs(f"{workdir}/home/.ssh")
    for name in ("id_test", "id_test.pub"):
        with open(f"{workdir}/home/.ssh/{name}", "w") as f:
            f.write("key\n")
    with open(f"{workdir}/tokens", "w") as f:
        f.write("token\n")
    # The default lists, and the test's own files beside them.
    defaults = DEFAULT_RULES[[r.id for r in DEFAULT_RULES].index("credential_read")].Options()
    detector = detector_for("credential_read", exceptions=[],
                            credential_files=[*defaults.credential_files, f"{workdir}/tokens"],
                            private_keys=[*defaults.private_keys, f"{workdir}/home/.ssh/id_*"])
    events, results = run_detected(
        cgroup, detector,
        ["/bin/cat", f"{workdir}/home/.ssh/id_test", f"{workdir}/tokens", "/etc/shadow"],
        # Look-alikes: a public key, and the world-readable account list.
        ["/bin/cat", f"{workdir}/home/.ssh/id_test.pub", "/etc/passwd"])
    assert all(r.returncode == 0 for r in results), results
    opens = {ev.data.resolved_path: ev for ev in events if ev.name == "file_open" and ev.data.result >= 0}
    got = {d.triggered_by.timestamp: d for d in detections(events, "credential_read")}
    for path, technique in ((f"{workdir}/home/.ssh/id_test", "T1552.004"), (f"{workdir}/tokens", "T1552.001"),
                            ("/etc/shadow", "T1552.001")):
        check_detection(got[opens[path].timestamp], opens[path], technique, "TA0006")
    # A Tracer that reports only the watched files never delivers /etc/passwd's open.
    assert f"{workdir}/home/.ssh/id_test.pub" in opens
    for path in (f"{workdir}/home/.ssh/id_test.pub", "/etc/passwd"):
        assert path not in opens or opens[path].timestamp not in got, path
    assert len(got) == 3


@pytest.mark.root
def test_persistence_write_real(cgroup, workdir):
    for d in ("cron.d", "systemd", "home/.ssh"):
        os.makedirs(f"{workdir}/{d}")
    for f in ("home/.bashrc", "home/.ssh/authorized_keys"):
        open(f"{workdir}/{f}", "w").close()
    detector = detector_for("persistence_write", cron=[f"{workdir}/cron.d/"], systemd=[f"{workdir}/systemd/"],
                            shell_profiles=[f"{workdir}/home/.bashrc"],
                            authorized_keys=[f"{workdir}/home/.ssh/authorized_keys"])
    writes = (f"echo '* * * * * root true' > {workdir}/cron.d/job; echo '[Unit]' > {workdir}/systemd/x.service; "
              f"echo 'true' >> {workdir}/home/.bashrc; echo 'ssh-ed25519 AAAA' >> {workdir}/home/.ssh/authorized_keys")
    reads = (f"cat {workdir}/cron.d/job {workdir}/systemd/x.service {workdir}/home/.bashrc "
             f"{workdir}/home/.ssh/authorized_keys > /dev/null")
    events, results = run_detected(cgroup, detector, ["/bin/sh", "-c", writes], ["/bin/sh", "-c", reads])
    assert all(r.returncode == 0 for r in results), results
    got = detections(events, "persistence_write")
    by_path = {}
    for d in got:
        trigger = next(ev for ev in events if ev.name == "file_open" and ev.timestamp == d.triggered_by.timestamp)
        by_path[trigger.data.resolved_path] = (d, trigger)
    expected = {f"{workdir}/cron.d/job": "T1053.003", f"{workdir}/systemd/x.service": "T1543.002",
                f"{workdir}/home/.bashrc": "T1546.004", f"{workdir}/home/.ssh/authorized_keys": "T1098.004"}
    assert set(by_path) == set(expected)
    for path, technique in expected.items():
        d, trigger = by_path[path]
        check_detection(d, trigger, technique, "TA0003")
        assert trigger.data.flags & os.O_ACCMODE == os.O_WRONLY  # the writes, not the reads
    assert len(got) == 4


# ---------------------------------------------------------------- real behaviour: downloads

class _Script(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"exit 0\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def script_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Script)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/install.sh"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.mark.root
def test_download_piped_into_a_shell_real(cgroup, script_server):
    curl = f"curl -s --noproxy '*' {script_server}"
    detector = detector_for("download_execute")
    events, results = run_detected(
        cgroup, detector,
        ["/bin/bash", "-c", f"{curl} | sh -s rg-piped; exit 0"],
        # Look-alikes: curl alone, curl into something that is not a shell, a shell reading another pipe.
        ["/bin/bash", "-c", f"{curl} > /dev/null; {curl} | cat > /dev/null; echo 'exit 0' | sh -s rg-echo; exit 0"])
    assert all(r.returncode == 0 for r in results), results
    (shell,) = execs(events, "rg-piped")
    downloader = next(ev for ev in events if ev.name == "process_exec" and ev.data.argv[:1] == ["curl"]
                      and ev.data.ppid == shell.data.ppid)
    (got,) = detections(events, "download_execute")
    trigger = max((shell, downloader), key=lambda ev: ev.timestamp)
    check_detection(got, trigger, "T1105", "TA0011")
    assert sorted(e.pid for e in got.data.events) == sorted((shell.pid, downloader.pid))


WRITE_THEN_RUN = textwrap.dedent("""
    import os, shutil, sys, time
    path, wait, kind = sys.argv[1], float(sys.argv[2]), sys.argv[3]
    if kind == "binary":
        shutil.copyfile("/bin/true", path)
    else:
        with open(path, "w") as f:
            f.write("#!/bin/sh\\nexit 0\\n")
    os.chmod(path, 0o755)
    time.sleep(wait)
    os.execv(path, [path, "rg-run-" + os.path.basename(path)])
""")


@pytest.mark.root
def test_a_file_written_then_run_at_once_real(cgroup, workdir):
    drop = f"{workdir}/drop"
    os.mkdir(drop)
    detector = detector_for("download_execute", window_s=1.0, write_dirs=[f"{drop}/"])
    events, results = run_detected(
        cgroup, detector,
        [sys.executable, "-c", WRITE_THEN_RUN, f"{drop}/fresh", "0", "binary"],
        [sys.executable, "-c", WRITE_THEN_RUN, f"{drop}/fresh.sh", "0", "script"],
        # Look-alike: written longer ago than the window.
        [sys.executable, "-c", WRITE_THEN_RUN, f"{drop}/old", "1.5", "binary"])
    assert all(r.returncode == 0 for r in results), results
    got = {d.triggered_by.pid: d for d in detections(events, "download_execute")}
    for name in ("fresh", "fresh.sh"):
        (run,) = execs(events, f"rg-run-{name}")
        check_detection(got[run.pid], run, "T1105", "TA0011")
        write = got[run.pid].data.events[0]
        assert write.name == "file_open" and write.pid == run.pid and write.timestamp < run.timestamp
    (old,) = execs(events, "rg-run-old")
    assert old.pid not in got and len(got) == 2


# ---------------------------------------------------------------- real behaviour: network

CONNECT = textwrap.dedent("""
    import socket, sys
    for target in sys.argv[1:]:
        if target == "--":
            break
        host, port = target.rsplit(":", 1)
        socket.create_connection((host, int(port)), timeout=5).close()
""")


def listening(address: str) -> socket.socket:
    s = socket.socket()
    s.bind((address, 0))
    s.listen(8)
    return s


@pytest.mark.root
def test_cloud_metadata_real(cgroup):
    # A loopback stand-in for the metadata address: nothing leaves the host.
    metadata, other = listening("127.0.0.254"), listening("127.0.0.253")
    try:
        detector = detector_for("cloud_metadata", addresses=["127.0.0.254"])
        events, (result,) = run_detected(cgroup, detector, [
            sys.executable, "-c", CONNECT, f"127.0.0.254:{metadata.getsockname()[1]}",
            f"127.0.0.253:{other.getsockname()[1]}"])
    finally:
        metadata.close()
        other.close()
    assert result.returncode == 0, result.stderr
    connects = {ev.data.address: ev for ev in events if ev.name == "net_connect"}
    (got,) = detections(events, "cloud_metadata")
    check_detection(got, connects["127.0.0.254"], "T1552.005", "TA0006")
    assert got.target_context.address == "127.0.0.254"


@pytest.mark.root
def test_unauthorized_connection_real(cgroup):
    allowed, elsewhere = listening("127.0.0.1"), listening("127.0.0.2")
    a, b = f"127.0.0.1:{allowed.getsockname()[1]}", f"127.0.0.2:{elsewhere.getsockname()[1]}"
    try:
        detector = detector_for("unauthorized_connection", always_allowed=[],
                                allowed={"env:RG_TEST_IDENTITY": [{"cidr": "127.0.0.1",
                                                                   "ports": [allowed.getsockname()[1]]}]})
        options = detector.tracer_options(cgroups=[cgroup])
        assert options.get("identity_env") == ["RG_TEST_IDENTITY"], options
        options["events"] = [*options["events"], "process_exec"]  # to find the test's processes
        with Tracer(**options) as t:
            held = run_in(cgroup, [sys.executable, "-c", CONNECT, a, b, "--", "rg-held"],
                          env={**os.environ, "RG_TEST_IDENTITY": "x"})
            # Look-alike: the same connects by a process without the identity.
            bare = run_in(cgroup, [sys.executable, "-c", CONNECT, a, b, "--", "rg-bare"],
                          env={k: v for k, v in os.environ.items() if k != "RG_TEST_IDENTITY"})
            events = detect(t, detector)
    finally:
        allowed.close()
        elsewhere.close()
    assert held.returncode == 0 and bare.returncode == 0, (held.stderr, bare.stderr)
    (held_exec,) = execs(events, "rg-held")
    assert "env:RG_TEST_IDENTITY" in (held_exec.workload.process.identities or [])
    (got,) = detections(events, "unauthorized_connection")
    connect = next(ev for ev in events if ev.name == "net_connect" and ev.pid == held_exec.pid
                   and ev.data.address == "127.0.0.2")
    check_detection(got, connect, "T1071", "TA0011")


# ---------------------------------------------------------------- real behaviour: exec from temporary places

MEMFD_EXEC = textwrap.dedent("""
    import os, sys
    fd = os.memfd_create("rg-payload")
    with open("/bin/true", "rb") as f:
        os.write(fd, f.read())
    os.execv(f"/proc/self/fd/{fd}", ["rg-payload", sys.argv[1]])
""")


@pytest.mark.root
def test_exec_from_temp_real(cgroup, workdir):
    dropped = f"{workdir}/tool"
    shutil.copyfile("/bin/true", dropped)
    os.chmod(dropped, 0o755)
    detector = detector_for("exec_from_temp", dirs=[f"{workdir}/"])
    events, results = run_detected(
        cgroup, detector,
        [dropped, "rg-dropped"],
        [sys.executable, "-c", MEMFD_EXEC, "rg-memfd"],
        ["/usr/bin/true", "rg-installed"])   # look-alike: an installed program
    assert all(r.returncode == 0 for r in results), results
    got = {d.triggered_by.pid: d for d in detections(events, "exec_from_temp")}
    (tool,) = execs(events, "rg-dropped")
    check_detection(got[tool.pid], tool, "T1204.002", "TA0002")
    (memfd,) = execs(events, "rg-memfd", "rg-payload")
    assert memfd.data.fileless and memfd.data.resolved_executable.startswith("/memfd:rg-payload")
    check_detection(got[memfd.pid], memfd, "T1620", "TA0005")
    (installed,) = execs(events, "rg-installed")
    assert installed.pid not in got and len(got) == 2
