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

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="loads BPF programs: needs root")


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


@needs_root
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


@needs_root
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
    result = cli("trace", "--ring-buffer-size", "5000", "--duration", "1")
    assert result.returncode == 1
    assert result.stderr.startswith("runtimeguard: ") and "Traceback" not in result.stderr


@needs_root
def test_doctor_json():
    result = cli("doctor", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    features = {f["name"]: f for f in report["features"]}
    assert features["tracepoint"]["available"] is True
    assert features["ring_buffer"]["available"] is True
    fentry = features["fentry"]
    if not fentry["available"]:  # fentry loads fail with EPERM on this project's kernel (lockdown)
        assert fentry["detail"]
    assert report["enforcement"]["files"].startswith("BPF LSM") == features["bpf_lsm"]["available"]
    assert report["kernel"] == os.uname().release


@needs_root
def test_doctor_report():
    result = cli("doctor")
    assert result.returncode == 0, result.stderr
    assert "enforcement:" in result.stdout
    assert any(line.split()[:2] == ["ok", "tracepoint"] for line in result.stdout.splitlines())


@needs_root
def test_demo_shows_the_workload():
    result = cli("demo", "--seconds", "1")
    assert result.returncode == 0, result.stderr
    kinds = {line.split()[1] for line in result.stdout.splitlines() if line[:2].isdigit() and ":" in line[:3]}
    assert {"process_exec", "net_connect", "net_sendmsg", "ptrace", "process_memory"} <= kinds, result.stdout
    assert "runtimeguard-demo" in result.stdout
    assert "events from the workload" in result.stdout
