"""The command's export options, run as real subprocesses: a guarded job
with hostname rules writing its summary (and a GitHub step summary),
Prometheus metrics scraped while `run` and `trace` run, OTLP logs to a
collector in the test, the audit log rotated and compressed."""

from __future__ import annotations

import gzip
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from prometheus_client.parser import text_string_to_metric_families

from dns_server import DnsServer

pytestmark = pytest.mark.root

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLI = [sys.executable, "-m", "runtimeguard"]
SERVER = "127.0.0.153"
CLIENT = os.path.join(os.path.dirname(__file__), "dns_client.py")


@pytest.fixture(scope="module")
def zone():
    server = DnsServer(SERVER)
    server.add("allowed.test", "A", "127.0.11.1")
    server.add("other.test", "A", "127.0.11.2")
    listeners = []
    for address in ("127.0.11.1", "127.0.11.2"):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((address, 8443))
        s.listen(8)
        listeners.append(s)
    yield server
    for s in listeners:
        s.close()
    server.close()


def guarded(tmp_path, *options, steps=("connect allowed.test", "connect other.test"), env=None, wait=None):
    policy = tmp_path / "policy.yaml"
    policy.write_text(textwrap.dedent(f"""
        version: 1
        name: ci-job
        mode: enforce
        network:
          default: deny
          allow: [{{host: allowed.test, ports: [8443]}}]
          dns: {{servers: [{SERVER}]}}
        namespaces: {{allow: [mnt, mount]}}
    """))
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(f"nameserver {SERVER}\n")
    out = tmp_path / "steps.jsonl"
    argv = [*CLI, "run", "--policy", str(policy), *options, "--", "unshare", "-m", "--propagation", "private",
            "sh", "-c", 'mount --bind "$0" /etc/resolv.conf && exec "$@"', str(resolv),
            sys.executable, CLIENT, str(out), *steps]
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})
    if wait is not None:
        wait(proc)
    stdout, stderr = proc.communicate(timeout=60)
    return proc.returncode, stderr


def test_run_writes_its_summary_and_the_step_summary(zone, tmp_path):
    summary, step = tmp_path / "summary.md", tmp_path / "step.md"
    step.write_text("# earlier step\n")
    status, stderr = guarded(tmp_path, "--summary", str(summary), env={"GITHUB_STEP_SUMMARY": str(step)})
    assert status == 0, stderr
    report = summary.read_text()
    assert "| network.default | connect\\_denied | 127.0.11.2:8443 | 1 | blocked |" in report
    assert "| 127.0.11.1:8443 | allowed.test |" in report  # a destination contacted, named
    assert "| allowed.test | A | counted, matched a host rule | 127.0.11.1 |" in report
    assert step.read_text().startswith("# earlier step\n") and report in step.read_text()
    # --no-step-summary leaves it alone.
    before = step.read_text()
    status, stderr = guarded(tmp_path, "--no-step-summary", env={"GITHUB_STEP_SUMMARY": str(step)})
    assert status == 0, stderr and step.read_text() == before


def _metrics(url: str) -> dict:
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_run_serves_metrics_while_the_job_runs(zone, tmp_path):
    seen = {}

    def scrape(proc):
        url = None
        deadline = time.monotonic() + 20
        while url is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if "metrics on " in line:
                url = line.split("metrics on ", 1)[1].strip()
        assert url, "no metrics address printed"
        while proc.poll() is None:
            try:
                seen.update(_metrics(url))
            except OSError:
                break
            if ("runtimeguard_decisions_total", (("action", "blocked"), ("event", "connect_denied"),
                                                 ("rule", "network.default"))) in seen:
                break
            time.sleep(0.1)

    status, _ = guarded(tmp_path, "--metrics-port", "0", steps=("connect allowed.test", "connect other.test",
                                                                "sleep 3"), wait=scrape)
    assert status == 0
    assert seen[("runtimeguard_decisions_total", (("action", "blocked"), ("event", "connect_denied"),
                                                  ("rule", "network.default")))] == 1
    assert seen[("runtimeguard_events_total", (("event", "dns_answer"),))] >= 2
    assert seen[("runtimeguard_ring_buffer_size_bytes", ())] > 0
    assert any(name == "runtimeguard_bpf_program_runs_total" and dict(labels).get("program") == "rg_guard_connect4"
               and value >= 2 for (name, labels), value in seen.items())


class _Collector(BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):
        from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
            ExportLogsServiceRequest,
            ExportLogsServiceResponse,
        )

        body = self.rfile.read(int(self.headers["Content-Length"]))
        request = ExportLogsServiceRequest()
        request.ParseFromString(body)
        for resource_logs in request.resource_logs:
            for scope_logs in resource_logs.scope_logs:
                for record in scope_logs.log_records:
                    attrs = {a.key: a.value for a in record.attributes}
                    self.received.append((self.headers.get("authorization"), attrs))
        reply = ExportLogsServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass


def test_run_sends_otlp_logs(zone, tmp_path):
    _Collector.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        endpoint = f"http://127.0.0.1:{server.server_address[1]}"
        status, stderr = guarded(tmp_path, "--otlp-endpoint", endpoint, "--otlp-header", "authorization=Bearer t0k")
        assert status == 0, stderr
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    denied = [attrs for auth, attrs in _Collector.received
              if attrs["event.name"].string_value == "runtimeguard.connect_denied"]
    assert len(denied) == 1
    assert denied[0]["network.peer.address"].string_value == "127.0.11.2"
    assert denied[0]["server.address"].string_value == "other.test"
    assert denied[0]["runtimeguard.policy.rule"].string_value == "network.default"
    assert {auth for auth, _ in _Collector.received} == {"Bearer t0k"}
    names = {attrs["dns.question.name"].string_value for _, attrs in _Collector.received if "dns.question.name" in attrs}
    assert names >= {"allowed.test", "other.test"}


def test_run_rotates_and_compresses_the_audit_log(zone, tmp_path):
    log = tmp_path / "audit.ndjson"
    steps = tuple(f"connect other.test {8000 + i}" for i in range(40))
    status, stderr = guarded(tmp_path, "--audit-log", str(log), "--audit-max-bytes", "4096", "--audit-backups", "20",
                             "--audit-compress", steps=steps)
    assert status == 0, stderr
    files = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("audit.ndjson"))
    assert any(name.endswith(".gz") for name in files), files
    for p in tmp_path.iterdir():
        if p.name.startswith("audit.ndjson"):
            assert p.stat().st_mode & 0o777 == 0o600, p
    from runtimeguard.audit import audit_log_files, read_audit_log

    denied = [e for name in audit_log_files(str(log)) for e in read_audit_log(name) if e.name == "connect_denied"]
    assert sorted(e.target_context.port for e in denied) == list(range(8000, 8040))
    assert gzip.open(next(p for p in tmp_path.iterdir() if p.name.endswith(".gz"))).read()


def test_trace_serves_metrics(tmp_path):
    proc = subprocess.Popen([*CLI, "trace", "--format", "json", "--duration", "4", "--metrics-port", "0",
                             "--no-bpf-run-time"], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    try:
        line = ""
        while "metrics on " not in line:
            line = proc.stderr.readline()
            assert line, "no metrics address printed"
        url = line.split("metrics on ", 1)[1].strip()
        subprocess.run(["/bin/true"])
        time.sleep(1)
        seen = _metrics(url)
    finally:
        proc.wait(30)
    assert seen[("runtimeguard_events_total", (("event", "process_exec"),))] >= 1
    assert not any(name.startswith("runtimeguard_bpf_program") for name, _ in seen)
