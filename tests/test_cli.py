"""The runtimeguard command, run as a real subprocess against the real kernel."""

import json
import os
import signal
import subprocess
import sys
import time
import uuid

import jsonschema
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLI = [sys.executable, "-m", "runtimeguard"]


def cli(*args, timeout=20):
    return subprocess.run(CLI + list(args), cwd=REPO, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def schema():
    result = cli("schema")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_schema_is_a_json_schema(schema):
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"].endswith("2020-12/schema")


@pytest.mark.root
def test_trace_json_sees_an_exec_and_matches_the_schema(schema, tmp_path):
    token = uuid.uuid4().hex
    # A file, not a pipe: a full pipe would stall the tracer while the test is busy exec'ing.
    out_file = tmp_path / "trace.ndjson"
    with open(out_file, "w") as out_fh:
        trace = subprocess.Popen(CLI + ["trace", "--format", "json", "--duration", "2", "--events", "process_exec"],
                                 cwd=REPO, stdout=out_fh, stderr=subprocess.PIPE, text=True)
    try:
        # The tracer attaches some time after start: keep exec'ing until it is done.
        deadline = time.monotonic() + 9
        while trace.poll() is None and time.monotonic() < deadline:
            subprocess.run(["/bin/echo", token], stdout=subprocess.DEVNULL, check=True)
            time.sleep(0.05)
        _, err = trace.communicate(timeout=5)
    finally:
        if trace.poll() is None:
            trace.kill()
            trace.communicate()
    assert trace.returncode == 0, err
    assert "Traceback" not in err
    out = out_file.read_text()
    validator = jsonschema.Draft202012Validator(schema)
    events = [json.loads(line) for line in out.splitlines()]
    assert events
    for ev in events:
        validator.validate(ev)
        assert ev["name"] == "process_exec"
    assert any(ev["data"]["argv"] == ["/bin/echo", token] for ev in events)


@pytest.mark.root
def test_trace_ctrl_c_exits_130_without_a_traceback():
    trace = subprocess.Popen(CLI + ["trace", "--format", "table", "--events", "process_exec"], cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.5)
        trace.send_signal(signal.SIGINT)
        out, err = trace.communicate(timeout=5)
    finally:
        if trace.poll() is None:
            trace.kill()
            trace.communicate()
    assert trace.returncode == 130, err
    assert "Traceback" not in err
    assert out.startswith("TIME ")
    assert "events delivered" in err


def test_errors_are_one_line():
    result = cli("trace", "--cgroup", "/no/such/cgroup", "--duration", "1")
    assert result.returncode == 1
    assert result.stderr.startswith("runtimeguard: ") and "Traceback" not in result.stderr


@pytest.mark.root
def test_doctor_json():
    result = cli("doctor", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    features = {f["name"]: f for f in report["features"]}
    assert features["tracepoint"]["available"] is True
    assert features["ring_buffer"]["available"] is True
    lsm = features["bpf_lsm"]
    if not lsm["available"]:  # BPF LSM loads fail with EPERM on this project's kernel (lockdown)
        assert lsm["detail"]
    assert report["enforcement"]["files"].startswith("BPF LSM") == features["bpf_lsm"]["available"]
    assert report["kernel"] == os.uname().release


@pytest.mark.root
def test_doctor_report():
    result = cli("doctor")
    assert result.returncode == 0, result.stderr
    assert "enforcement:" in result.stdout
    assert any(line.split()[:2] == ["ok", "tracepoint"] for line in result.stdout.splitlines())


@pytest.mark.root
def test_demo_shows_the_workload():
    result = cli("demo", "--seconds", "1")
    assert result.returncode == 0, result.stderr
    kinds = {line.split()[1] for line in result.stdout.splitlines() if line[:2].isdigit() and ":" in line[:3]}
    assert {"process_exec", "net_connect", "net_sendmsg", "ptrace", "process_memory"} <= kinds, result.stdout
    assert "runtimeguard-demo" in result.stdout
    assert "events from the workload" in result.stdout


# ---- watch: events with detections ----

SPAWN_SHELL = "import subprocess, sys; subprocess.run(['/bin/sh', '-c', 'exit 0', sys.argv[1]], check=True)"


@pytest.fixture
def watched_cgroup():
    from runtimeguard.environment import cgroup2_mount

    name = f"rg-test-watch-{uuid.uuid4().hex[:8]}"
    path = os.path.join(cgroup2_mount(), name)
    os.mkdir(path)
    yield name, path
    os.rmdir(path)


def watch_while_shells_start(args, cgroup_path, token, out_file):
    """runtimeguard watch ARGS, while a Python in the cgroup keeps starting
    a shell (argv ending in token) until watch is done."""
    def enter():
        with open(os.path.join(cgroup_path, "cgroup.procs"), "w") as f:
            f.write("0")

    with open(out_file, "w") as out_fh:
        watch = subprocess.Popen(CLI + ["watch", "--duration", "3", *args], cwd=REPO, stdout=out_fh,
                                 stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 12
        while watch.poll() is None and time.monotonic() < deadline:
            subprocess.run([sys.executable, "-c", SPAWN_SHELL, token], preexec_fn=enter, check=True, timeout=10)
            time.sleep(0.1)
        _, err = watch.communicate(timeout=10)
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.communicate()
    return watch.returncode, err


@pytest.mark.root
def test_watch_json_reports_a_detection_with_its_attack_ids(schema, tmp_path, watched_cgroup):
    name, path = watched_cgroup
    token = uuid.uuid4().hex
    code, err = watch_while_shells_start(["--json", "--cgroup", name], path, token, tmp_path / "watch.ndjson")
    assert code == 0, err
    assert "Traceback" not in err
    validator = jsonschema.Draft202012Validator(schema)
    lines = [json.loads(line) for line in (tmp_path / "watch.ndjson").read_text().splitlines()]
    for line in lines:
        validator.validate(line)
    shells = {ev["pid"] for ev in lines if ev["name"] == "process_exec" and ev["data"]["argv"][-1:] == [token]
              and os.path.basename(ev["data"]["argv"][0]) == "sh"}
    found = [ev for ev in lines if ev["name"] == "detection" and ev["data"]["rule"] == "interpreter_shell"
             and ev["triggered_by"]["pid"] in shells]
    assert shells and found, lines[-5:]
    for ev in found:
        assert ev["threat"]["mitre_technique_id"] == "T1059.004" and ev["threat"]["mitre_tactic_id"] == "TA0002"
        assert ev["threat"]["mitre_technique"] == "Unix Shell" and ev["threat"]["mitre_tactic"] == "Execution"
        assert ev["workload"]["process"]["pid"] == ev["pid"] == ev["triggered_by"]["pid"]
        assert ev["data"]["events"][-1] == ev["triggered_by"]


@pytest.mark.root
def test_watch_table_marks_detections(tmp_path, watched_cgroup):
    name, path = watched_cgroup
    token = uuid.uuid4().hex
    code, err = watch_while_shells_start(["--cgroup", name], path, token, tmp_path / "watch.txt")
    assert code == 0, err
    assert "Traceback" not in err and "detections" in err
    rows = (tmp_path / "watch.txt").read_text().splitlines()
    assert rows[0].split()[:3] == ["TIME", "CATEGORY", "HOST"]
    marked = [row for row in rows if row.startswith("!")]
    assert marked and all("T1059.004" in row and "interpreter_shell" in row for row in marked)
    assert all(row.startswith(" ") for row in rows[1:] if not row.startswith("!"))


def test_watch_refuses_a_bad_tuning_in_one_line(tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text("version: 1\nrules:\n  reverse_shell:\n    severity: urgent\n")
    result = cli("watch", "--rules", str(rules), "--duration", "1")
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert f"{rules}, line 4: rules.reverse_shell.severity: invalid value 'urgent'" in result.stderr
