"""OpenTelemetry logs export against a real OTLP/HTTP endpoint: an HTTP server
in this process that decodes what the SDK's exporter sends with the OTLP
protobuf definitions, as a Collector's receiver does."""

from __future__ import annotations

import gc
import gzip
import inspect
import os
import secrets
import socket
import subprocess
import sys
import textwrap
import threading
import time
import typing
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("opentelemetry.sdk._logs", reason="the otlp extra is not installed")
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.common.v1 import common_pb2

from helpers import wait_for
from runtimeguard import Tracer, __version__, schema
from runtimeguard.errors import RuntimeGuardError
from runtimeguard.export import otlp
from runtimeguard.export.otlp import OtlpLogs, attributes, logs_url
from runtimeguard.guard import guard
from runtimeguard.policy import Policy
from runtimeguard.schema import (
    EVENT_IDS,
    BinaryDigest,
    Container,
    EventRecord,
    FunctionCallData,
    LostData,
    NetConnectData,
    Pod,
    PolicyRef,
    Process,
    ProcessRef,
    TargetContext,
    Threat,
    Workload,
)

INT64 = (-(1 << 63), (1 << 63) - 1)
# The SDK's batch thread and the sink's worker.
SDK_THREADS = ("OtelBatchLogRecordProcessor", "runtimeguard-otlp")


# ---- the endpoint ----

def any_value(v: common_pb2.AnyValue):
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in v.kvlist_value.values}
    return getattr(v, kind)


def key_values(kvs) -> dict:
    return {kv.key: any_value(kv.value) for kv in kvs}


class Collector:
    """What the endpoint received: every LogRecord with its resource and scope."""

    def __init__(self):
        self.lock = threading.Lock()
        self.logs: list[tuple[dict, str, object]] = []
        self.requests = 0
        self.url = ""

    def receive(self, request: ExportLogsServiceRequest) -> None:
        with self.lock:
            self.requests += 1
            for resource_logs in request.resource_logs:
                resource = key_values(resource_logs.resource.attributes)
                for scope_logs in resource_logs.scope_logs:
                    for log in scope_logs.log_records:
                        self.logs.append((resource, scope_logs.scope.name, log))

    def records(self, event_name: str) -> list:
        with self.lock:
            return [log for _, _, log in self.logs if log.event_name == event_name]


@pytest.fixture
def collector():
    received = Collector()

    class Receiver(BaseHTTPRequestHandler):
        # One request per connection: every handler thread ends with its request.
        protocol_version = "HTTP/1.0"

        def do_POST(self):
            data = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.path != "/v1/logs":
                self.send_error(404)
                return
            if self.headers.get("Content-Encoding") == "gzip":
                data = gzip.decompress(data)
            received.receive(ExportLogsServiceRequest.FromString(data))
            reply = ExportLogsServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, format, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    server.daemon_threads = False  # so server_close() joins the handlers
    serving = threading.Thread(target=server.serve_forever, args=(0.05,), name="otlp-test-endpoint")
    serving.start()
    received.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield received
    finally:
        server.shutdown()
        server.server_close()
        serving.join(5)
        assert not serving.is_alive()


@pytest.fixture
def silent_endpoint():
    """Takes connections (the kernel's backlog does) and never reads or answers."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(64)
    try:
        yield f"http://127.0.0.1:{s.getsockname()[1]}/v1/logs"
    finally:
        s.close()


@pytest.fixture
def refused_endpoint():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # bound, never listening: connections to it are refused
    return f"http://127.0.0.1:{port}/v1/logs"


@pytest.fixture
def make_sink():
    made: list[OtlpLogs] = []

    def make(endpoint: str, **options) -> OtlpLogs:
        made.append(OtlpLogs(endpoint, **options))
        return made[-1]

    yield make
    for sink in made:
        sink.close()


@pytest.fixture(autouse=True)
def no_exporter_threads_left():
    yield
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        left = [t.name for t in threading.enumerate() if t.name.startswith(SDK_THREADS)]
        if not left:
            return
        time.sleep(0.05)
    pytest.fail(f"exporter threads still running: {left}")


def settle(sink: OtlpLogs, offered: int, timeout: float = 10) -> None:
    """Waits for an export close() left under way to end: then every record
    offered is counted exactly once."""
    deadline = time.monotonic() + timeout
    while sink.exported + sink.failed_records + sink.dropped != offered and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sink.exported + sink.failed_records + sink.dropped == offered


def sample(n: int = 0, **fields) -> EventRecord:
    data = NetConnectData(family="ipv4", protocol="tcp", address="10.1.2.3", port=443 + n, result=0, fd=3)
    return EventRecord(timestamp=time.time_ns(), id=EVENT_IDS["net_connect"], name="net_connect", data=data,
                       pid=4242, tid=4243, **fields)


# ---- real events ----

@pytest.mark.root
def test_process_exec_from_a_real_tracer(collector, make_sink):
    token = secrets.token_hex(6)
    with Tracer(events=["process_exec"]) as t:
        subprocess.run(["/bin/echo", token], capture_output=True, check=True)
        ev = wait_for(t, lambda e: e.name == "process_exec" and e.data.argv == ["/bin/echo", token])
        record = ev.record()

    sink = make_sink(collector.url, service_name="rg-test", resource={"deployment.environment.name": "test"},
                     schedule_delay_s=0.05, export_timeout_s=5)
    sink.write(record)
    sink.close()
    sink_counts = (sink.written, sink.exported, sink.dropped, sink.failed_batches)
    assert sink_counts == (1, 1, 0, 0)

    ((resource, scope, log),) = collector.logs
    assert resource["service.name"] == "rg-test"
    assert resource["host.name"] == socket.gethostname()
    assert resource["service.version"] == __version__
    assert resource["deployment.environment.name"] == "test"
    assert scope == "runtimeguard"

    assert log.event_name == "runtimeguard.process_exec"
    assert log.time_unix_nano == record.timestamp
    assert record.timestamp <= log.observed_time_unix_nano <= time.time_ns()
    assert (log.severity_number, log.severity_text) == (9, "INFO")
    assert msgspec.json.decode(any_value(log.body)) == msgspec.json.decode(schema.json_encoder.encode(record))
    assert schema.json_decoder.decode(any_value(log.body)) == record

    a = key_values(log.attributes)
    assert a["event.name"] == "runtimeguard.process_exec"
    assert a["runtimeguard.event.id"] == EVENT_IDS["process_exec"]
    assert a["runtimeguard.schema_version"] == schema.SCHEMA_VERSION
    assert a["runtimeguard.action"] == "observed"
    assert a["process.pid"] == record.pid == ev.pid
    assert a["process.parent_pid"] == os.getpid()
    assert a["process.command_args"] == ["/bin/echo", token]
    assert a["process.command"] == "/bin/echo"
    assert a["process.executable.path"] == record.workload.process.executable
    assert a["process.executable.name"] == "echo"
    assert a["process.real_user.id"] == os.getuid() and a["process.user.id"] == os.geteuid()
    assert a["runtimeguard.process.gid"] == os.getgid()
    assert a["process.vpid"] == record.data.ns_pid
    assert a["runtimeguard.entity_id"] == record.entity_id
    assert a["runtimeguard.cgroup"] == record.workload.cgroup
    assert a["runtimeguard.exec_id"] == record.data.exec_id
    assert "network.peer.address" not in a and "runtimeguard.policy.rule" not in a


CONNECT = """
    import socket, sys
    try:
        socket.create_connection(("127.0.0.1", {port}), timeout=2).close()
    except PermissionError:
        sys.exit(3)
"""


@pytest.mark.root
def test_guard_decision_is_a_warning_with_peer_and_rule(collector, make_sink):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    policy = Policy.from_text(textwrap.dedent(f"""
        version: 1
        name: otlp-test
        mode: enforce
        network:
          default: allow
          deny:
            - cidr: 127.0.0.1/32
              ports: [{port}]
    """), "yaml")
    try:
        result = guard(policy, [sys.executable, "-c", textwrap.dedent(CONNECT.format(port=port))])
    finally:
        listener.close()
    assert result.exit_status == 3
    (decision,) = [e for e in result.events if e.name == "connect_denied"]

    sink = make_sink(collector.url, schedule_delay_s=0.05, export_timeout_s=5)
    for record in result.events:
        sink.write(record)
    sink.close()
    assert (sink.exported, sink.dropped, sink.failed_batches) == (len(result.events), 0, 0)

    (log,) = collector.records("runtimeguard.connect_denied")
    assert (log.severity_number, log.severity_text) == (13, "WARN")
    assert log.time_unix_nano == decision.timestamp
    a = key_values(log.attributes)
    assert a["network.peer.address"] == "127.0.0.1"
    assert a["network.peer.port"] == port
    assert a["network.type"] == "ipv4"
    assert a["network.transport"] == decision.data.protocol == "tcp"
    assert a["runtimeguard.action"] == "blocked"
    assert a["runtimeguard.policy.rule"] == "network.deny[0]" == decision.policy.rule
    assert a["runtimeguard.policy.mode"] == "enforce"
    assert a["runtimeguard.policy.name"] == "otlp-test"
    assert a["runtimeguard.target"] == f"127.0.0.1:{port}"
    assert a["process.pid"] == decision.pid
    assert a["process.executable.path"] == decision.workload.process.executable
    body = msgspec.json.decode(any_value(log.body))
    assert body["policy"] == {"rule": "network.deny[0]", "mode": "enforce", "name": "otlp-test"}
    assert body["data"]["type"] == "connect_denied"


def test_integers_beyond_int64_do_not_sink_the_batch(collector, make_sink):
    """A raw register value (2**64 - 1) cannot be an OTLP int: it goes as text,
    and the records batched with it still arrive."""
    data = FunctionCallData(probe=1, phase="entry", address=0x401000, stack_id=-2, arguments=[2**64 - 1, 7])
    record = EventRecord(timestamp=time.time_ns(), id=EVENT_IDS["function_call"], name="function_call", data=data,
                         pid=10, tid=10, entity_id=2**63 + 5)
    sink = make_sink(collector.url, max_batch=4, schedule_delay_s=0.05, export_timeout_s=5)
    for r in (sample(), record, sample(1)):
        sink.write(r)
    sink.close()
    assert (sink.exported, sink.failed_batches, sink.dropped) == (3, 0, 0)
    (log,) = collector.records("runtimeguard.function_call")
    assert msgspec.json.decode(any_value(log.body))["data"]["arguments"] == [2**64 - 1, 7]
    assert key_values(log.attributes)["runtimeguard.entity_id"] == str(2**63 + 5)


def test_endpoint_without_a_path_gets_v1_logs():
    assert logs_url("http://collector:4318") == "http://collector:4318/v1/logs"
    assert logs_url("http://collector:4318/") == "http://collector:4318/v1/logs"
    assert logs_url("https://otel.example/custom/logs?x=1") == "https://otel.example/custom/logs?x=1"
    with pytest.raises(ValueError):
        logs_url("collector:4318")


# ---- never blocking, counting exactly ----

def test_write_never_waits_on_an_endpoint_that_does_not_answer(silent_endpoint, make_sink):
    queue, batch, offered, timeout = 256, 64, 5000, 1.5
    # Only a full batch starts an export (the delay is long): every request
    # then carries exactly `batch` records.
    sink = make_sink(silent_endpoint, max_queue=queue, max_batch=batch, schedule_delay_s=30, export_timeout_s=timeout)
    record = sample()
    worst = 0.0
    started = time.monotonic()
    for _ in range(offered):
        t0 = time.perf_counter()
        sink.write(record)
        worst = max(worst, time.perf_counter() - t0)
    took = time.monotonic() - started
    assert worst < 0.05, f"a write() took {worst * 1000:.1f} ms"
    # The first batch's request hangs for the whole timeout: until it ends,
    # exactly max_queue records are accepted and every later one is dropped.
    assert took < timeout, f"the writes took {took:.2f}s, past the export timeout"
    assert (sink.written, sink.dropped) == (queue, offered - queue)
    assert sink.exported == 0

    started = time.monotonic()
    sink.close()
    assert time.monotonic() - started < timeout + 0.5
    started = time.monotonic()
    sink.close()  # idempotent, and at once
    assert time.monotonic() - started < 0.05
    sink.write(record)  # after close: dropped, counted, no error
    settle(sink, offered + 1)
    assert sink.exported == 0
    assert sink.failed_batches >= 1 and sink.failed_records == batch * sink.failed_batches
    assert sink.dropped == offered + 1 - sink.failed_records


def test_endpoint_down_raises_nothing_and_counts_failures(refused_endpoint, make_sink):
    sink = make_sink(refused_endpoint, max_batch=8, schedule_delay_s=0.05, export_timeout_s=0.5)
    for n in range(20):
        sink.write(sample(n))
    started = time.monotonic()
    sink.close()
    assert time.monotonic() - started < 1.0
    settle(sink, 20)
    assert (sink.written, sink.exported, sink.dropped, sink.failed_records) == (20, 0, 0, 20)
    assert sink.failed_batches >= 3  # 20 records in batches of at most 8


class Stalled:
    """Stands in for otlp.body: holds the sink's worker inside it until
    released, as a slow conversion would."""

    def __init__(self):
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, record):
        self.entered.set()
        self.release.wait(10)
        return {"stalled": True}


def test_records_waiting_for_the_worker_count_against_max_queue(collector, make_sink, monkeypatch):
    """One budget: records not yet converted are held like those the SDK
    holds, and a record refused for it is counted in dropped at once."""
    stalled = Stalled()
    monkeypatch.setattr(otlp, "body", stalled)
    queue, offered = 32, 100
    sink = make_sink(collector.url, max_queue=queue, max_batch=8, schedule_delay_s=0.05, export_timeout_s=5)
    try:
        sink.write(sample(0))
        assert stalled.entered.wait(5)
        worst = 0.0
        for n in range(1, offered):
            t0 = time.perf_counter()
            sink.write(sample(n))
            worst = max(worst, time.perf_counter() - t0)
        assert worst < 0.05, f"a write() took {worst * 1000:.1f} ms"
        # The worker converted none of them, and the counts are already exact.
        assert (sink.written, sink.dropped, sink.exported) == (queue, offered - queue, 0)
    finally:
        stalled.release.set()
    sink.close()
    settle(sink, offered)
    assert (sink.written, sink.exported, sink.dropped, sink.failed_records) == (queue, queue, offered - queue, 0)
    assert len(collector.logs) == queue


def test_close_is_bounded_when_the_worker_is_stuck(collector, make_sink, monkeypatch):
    stalled = Stalled()
    monkeypatch.setattr(otlp, "body", stalled)
    sink = make_sink(collector.url, max_batch=4, schedule_delay_s=0.05, export_timeout_s=0.5)
    try:
        for n in range(10):
            sink.write(sample(n))
        assert stalled.entered.wait(5)
        started = time.monotonic()
        sink.close()
        assert time.monotonic() - started < 1.0
        # Nothing reached the exporter: all ten are dropped, counted by close().
        assert (sink.written, sink.dropped, sink.exported) == (10, 10, 0)
        sink.write(sample(10))
        assert sink.dropped == 11
    finally:
        stalled.release.set()
    # The worker, let go, exports nothing more (and its thread ends: the
    # autouse fixture checks).
    settle(sink, 11)
    time.sleep(0.2)
    assert (sink.exported, sink.failed_records, sink.dropped) == (0, 0, 11)
    assert collector.logs == []


def test_records_are_exported_in_write_order(collector, make_sink):
    # Several requests (max_batch), every record written before close().
    sink = make_sink(collector.url, max_batch=7, schedule_delay_s=0.05, export_timeout_s=5)
    offered = 100
    for n in range(offered):
        sink.write(sample(n))
    sink.close()
    assert (sink.written, sink.exported, sink.dropped, sink.failed_batches) == (offered, offered, 0, 0)
    assert collector.requests >= offered // 7
    ports = [key_values(log.attributes)["network.peer.port"] for _, _, log in collector.logs]
    assert ports == [443 + n for n in range(offered)]


def test_a_record_that_cannot_be_converted_is_dropped_and_counted(collector, make_sink, monkeypatch):
    real = otlp.attributes

    def failing(record):
        if record.data.port == 443 + 2:
            raise ValueError("cannot be an attribute")
        return real(record)

    monkeypatch.setattr(otlp, "attributes", failing)
    sink = make_sink(collector.url, schedule_delay_s=0.05, export_timeout_s=5)
    for n in range(5):
        sink.write(sample(n))  # raises nothing: the failure is the worker's
    sink.close()
    assert (sink.written, sink.dropped, sink.exported, sink.failed_records) == (4, 1, 4, 0)
    ports = [key_values(log.attributes)["network.peer.port"] for _, _, log in collector.logs]
    assert ports == [443, 444, 446, 447]


def test_a_sink_never_closed_exports_when_collected(collector):
    # The worker must not keep the sink alive: collecting it closes it.
    sink = OtlpLogs(collector.url, schedule_delay_s=30, export_timeout_s=5)
    for n in range(3):
        sink.write(sample(n))
    del sink
    gc.collect()
    assert len(collector.logs) == 3


def test_missing_sdk_names_the_extra(monkeypatch):
    # A None entry in sys.modules makes the import fail as if not installed.
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http._log_exporter", None)
    with pytest.raises(RuntimeGuardError, match=r"pip install 'runtimeguard\[otlp\]'"):
        OtlpLogs("http://127.0.0.1:4318")


def test_arguments_are_checked():
    for bad in (dict(max_queue=0), dict(max_batch=0), dict(max_queue=8, max_batch=9),
                dict(schedule_delay_s=0), dict(export_timeout_s=-1)):
        with pytest.raises(ValueError):
            OtlpLogs("http://127.0.0.1:4318", **bad)


# ---- severity ----

@pytest.mark.parametrize("threat, expected", [
    ("info", "INFO"), ("low", "INFO"), ("medium", "WARN"), ("high", "ERROR"), ("critical", "FATAL")])
def test_detection_severity_follows_the_threat(threat, expected):
    data = schema.DetectionData(rule="reverse_shell", summary="sh with a socket on stdin")
    record = EventRecord(timestamp=1, id=EVENT_IDS["detection"], name="detection", data=data,
                         threat=Threat(description="d", severity=threat, mitre_technique_id="T1059.004"))
    assert otlp.severity(record)[1] == expected
    a = attributes(record)
    assert a["runtimeguard.threat.severity"] == threat
    assert a["runtimeguard.threat.mitre.technique_id"] == "T1059.004"
    assert a["runtimeguard.detection.rule"] == "reverse_shell"


def test_lost_and_plain_events_severity():
    lost = EventRecord(timestamp=1, id=EVENT_IDS["lost"], name="lost", data=LostData(count=3, by_kind={"file_open": 3}))
    assert otlp.severity(lost) == (13, "WARN")
    assert attributes(lost)["runtimeguard.lost.count"] == 3
    assert otlp.severity(sample()) == (9, "INFO")


# ---- attributes of any record ----

def _uint64_or_more():
    return st.integers(min_value=-(2**64), max_value=2**64 + 10)


_text = st.text(max_size=12)
_opt = st.none().__or__

_processes = st.builds(
    Process, pid=_uint64_or_more(), entity_id=_uint64_or_more(), name=_text, executable=_opt(_text),
    argv=_opt(st.lists(_text, max_size=4)), uid=_opt(_uint64_or_more()), euid=_opt(_uint64_or_more()),
    gid=_opt(_uint64_or_more()), ppid=_opt(_uint64_or_more()), start_time=_opt(_uint64_or_more()),
    parent=_opt(st.builds(ProcessRef, pid=_uint64_or_more(), entity_id=_uint64_or_more())),
    cwd=_opt(_text), exec_id=_opt(_text), ns_pid=_opt(_uint64_or_more()),
    executable_digest=_opt(st.builds(BinaryDigest, build_id=_opt(_text), sha256=_opt(_text))))
_workloads = st.builds(
    Workload, process=_processes, cgroup=_opt(_text),
    container=_opt(st.builds(Container, id=_text, runtime=_opt(_text), name=_opt(_text), image=_opt(_text))),
    pod=_opt(st.builds(Pod, name=_opt(_text), namespace=_opt(_text), uid=_opt(_text))))
_targets = st.builds(
    TargetContext, type=st.sampled_from(["ipv4", "ipv6", "inode", "pid", "socket", "namespace"]), formatted=_text,
    address=_opt(_text), port=_opt(_uint64_or_more()), path=_opt(_text), hostname=_opt(_text))


def _without_factory_sentinels(data):
    """from_type may pass a parameter's signature default, and msgspec shows
    a default_factory there as a Factory object, which no real record holds:
    such a field gets what the factory makes instead."""
    params = inspect.signature(type(data)).parameters
    made = {f.name: f.default_factory() for f in msgspec.structs.fields(data)
            if f.default_factory is not msgspec.NODEFAULT and getattr(data, f.name) is params[f.name].default}
    return msgspec.structs.replace(data, **made) if made else data


_datas = st.one_of([st.from_type(cls) for cls in typing.get_args(schema.EventData)]).map(_without_factory_sentinels)


@st.composite
def records(draw):
    data = draw(_datas)
    name = type(data).__struct_config__.tag
    return EventRecord(
        timestamp=draw(st.integers(0, INT64[1])), id=EVENT_IDS[name], name=name, data=data,
        pid=draw(_uint64_or_more()), tid=draw(_uint64_or_more()), entity_id=draw(_uint64_or_more()),
        workload=draw(_opt(_workloads)), action=draw(st.sampled_from(["observed", "blocked", "would_block", "killed"])),
        target_context=draw(_opt(_targets)),
        policy=draw(_opt(st.builds(PolicyRef, rule=_text, mode=st.sampled_from(["audit", "enforce"]),
                                   name=_opt(_text)))),
        threat=draw(_opt(st.builds(Threat, description=_text,
                                   severity=st.sampled_from(["info", "low", "medium", "high", "critical"]),
                                   mitre_tactic=_opt(_text), mitre_technique_id=_opt(_text)))),
        repeated=draw(st.integers(0, 2**64)))


def _scalar_ok(v) -> bool:
    if isinstance(v, bool) or isinstance(v, (str, float)):
        return True
    return isinstance(v, int) and INT64[0] <= v <= INT64[1]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records())
def test_attributes_are_valid_otel_attributes(record):
    a = attributes(record)
    assert a["event.name"] == "runtimeguard." + record.name
    for key, value in a.items():
        assert isinstance(key, str) and key, key
        assert value is not None, key
        if isinstance(value, (list, tuple)):
            assert len({type(v) for v in value}) <= 1, (key, value)
            assert all(_scalar_ok(v) for v in value), (key, value)
        else:
            assert _scalar_ok(value), (key, value)
    # And OTLP's protobuf takes each of them (an int64 field rejects a larger int).
    for key, value in a.items():
        common_pb2.KeyValue(key=key, value=_to_any_value(value)).SerializeToString()
    common_pb2.KeyValue(key="body", value=_to_any_value(otlp.body(record))).SerializeToString()


def _to_any_value(v) -> common_pb2.AnyValue:
    if isinstance(v, bool):
        return common_pb2.AnyValue(bool_value=v)
    if isinstance(v, str):
        return common_pb2.AnyValue(string_value=v)
    if isinstance(v, int):
        return common_pb2.AnyValue(int_value=v)
    if isinstance(v, float):
        return common_pb2.AnyValue(double_value=v)
    if v is None:
        return common_pb2.AnyValue()
    if isinstance(v, dict):
        return common_pb2.AnyValue(kvlist_value=common_pb2.KeyValueList(
            values=[common_pb2.KeyValue(key=k, value=_to_any_value(x)) for k, x in v.items()]))
    return common_pb2.AnyValue(array_value=common_pb2.ArrayValue(values=[_to_any_value(x) for x in v]))


def test_container_and_pod_attributes():
    workload = Workload(
        process=Process(pid=7, entity_id=9, name="nginx", executable="/usr/sbin/nginx", argv=["nginx", "-g"],
                        uid=101, euid=101, gid=101, ppid=1, start_time=1_700_000_000_123_456_789),
        cgroup="/kubepods.slice/x", container=Container(id="c" * 64, runtime="containerd", name="web",
                                                        image="registry.local:5000/team/nginx:1.27@sha256:abc"),
        pod=Pod(name="web-0", namespace="shop", uid="1234-5678"))
    target = TargetContext("inode", "/etc/shadow (inode 5 on 8:1)", device=2049, inode=5, path="/etc/shadow")
    a = attributes(sample(workload=workload, target_context=target))
    assert a["container.id"] == "c" * 64
    assert a["container.name"] == a["k8s.container.name"] == "web"
    assert a["container.runtime.name"] == "containerd"
    assert a["container.image.name"] == "registry.local:5000/team/nginx"
    assert a["container.image.tags"] == ["1.27"]
    assert (a["k8s.pod.name"], a["k8s.pod.uid"], a["k8s.namespace.name"]) == ("web-0", "1234-5678", "shop")
    assert a["process.creation.time"] == "2023-11-14T22:13:20.123456789Z"
    assert a["file.path"] == "/etc/shadow"
    assert a["runtimeguard.target.type"] == "inode"
