"""OpenTelemetry logs over OTLP/HTTP: one LogRecord per event.

``OtlpLogs(endpoint)`` is a sink (see :mod:`runtimeguard.export`) that sends
every event it is given to an OTLP/HTTP logs endpoint (an OpenTelemetry
Collector's ``otlp`` receiver, ``http://host:4318/v1/logs``) through the
OpenTelemetry SDK's batch processor and OTLP/HTTP exporter (extra
``runtimeguard[otlp]``). It keeps a LoggerProvider of its own: the
application's global one is neither used nor replaced.

Each LogRecord carries:

- ``Timestamp``: the event's time (``EventRecord.timestamp``);
  ``ObservedTimestamp``: when the sink was given it.
- ``EventName``: ``runtimeguard.<event name>`` (``runtimeguard.connect_denied``).
- ``SeverityNumber``/``SeverityText``: WARN for a guard decision (the
  events of ``schema.BLOCK_EVENTS``, blocked or not) and for ``lost``; an
  event with a threat by its severity (info and low: INFO, medium: WARN,
  high: ERROR, critical: FATAL); INFO for the rest.
- ``Body``: the whole event, the NDJSON line's object (``json_encoder``) as a
  map; an integer beyond 64 bits signed (a raw register value of a
  ``function_call``) as its decimal text, which OTLP cannot carry as an int.
- ``Resource``: ``service.name`` (``runtimeguard`` unless given),
  ``service.version`` (runtimeguard's), ``host.name``
  (``socket.gethostname()``), then the extras given, which win.
- Attributes, only those that have a value:

| Attribute | From |
|---|---|
| `event.name` | `runtimeguard.` + `name` (the LogRecord's `EventName` too) |
| `process.pid` | `pid` (absent when 0) |
| `thread.id` | `tid` (absent when 0) |
| `process.parent_pid` | `workload.process.ppid`, else its `parent.pid`, else exec `ppid` |
| `process.executable.path` | `workload.process.executable`, else exec `resolved_executable` or `executable` |
| `process.executable.name` | the base name of that path, else `workload.process.name` (comm) |
| `process.command` | `argv[0]` |
| `process.command_args` | `workload.process.argv`, else exec `argv` (list of str) |
| `process.user.id` | `workload.process.euid`, else exec `euid` (the effective uid) |
| `process.real_user.id` | `workload.process.uid`, else exec `uid` |
| `process.saved_user.id` | `process_exec`: `suid` |
| `process.vpid` | `workload.process.ns_pid`, else exec `ns_pid` (the pid in its own pid namespace) |
| `process.executable.build_id.gnu` | `workload.process.executable_digest.build_id` |
| `process.creation.time` | `workload.process.start_time`, ISO 8601 UTC |
| `process.working_directory` | `workload.process.cwd`, else exec `cwd` |
| `process.exit.code` | `process_exit`: `exit_code` (absent when a signal ended it) |
| `container.id` | `workload.container.id` |
| `container.name` | `workload.container.name` |
| `container.runtime.name` | `workload.container.runtime` |
| `container.image.name` | `workload.container.image` without its tag or digest |
| `container.image.tags` | its tag, as a one-element list |
| `k8s.pod.name` | `workload.pod.name` |
| `k8s.pod.uid` | `workload.pod.uid` |
| `k8s.namespace.name` | `workload.pod.namespace` |
| `k8s.container.name` | `workload.container.name`, when there is a pod |
| `network.type` | `ipv4`/`ipv6`: the target's type, else the data's `family` |
| `network.transport` | the data's `protocol`, when `tcp` or `udp` |
| `network.peer.address` | `target_context.address`, else the data's `address`; `dns_answer`: `server` |
| `network.peer.port` | `target_context.port`, else the data's `port`; `dns_answer`: `server_port` |
| `network.local.address` | `net_connect`/`net_sendmsg`: `local_address` |
| `network.local.port` | `net_connect`/`net_sendmsg`: `local_port` (absent when 0) |
| `server.address` | `target_context.hostname` (the name the process resolved) |
| `dns.question.name` | `dns_answer`: `name` |
| `dns.answers` | `dns_answer`: `addresses` |
| `file.path` | `file_open`: `resolved_path`, else `path`; an inode target's `path` otherwise |
| `runtimeguard.event.id` | `id` (the event registry's stable id) |
| `runtimeguard.schema_version` | `schema.SCHEMA_VERSION` |
| `runtimeguard.action` | `action`: observed, blocked, would_block, killed |
| `runtimeguard.entity_id` | `entity_id` (absent when 0) |
| `runtimeguard.process.gid` | `workload.process.gid`, else exec `gid` (the real gid) |
| `runtimeguard.exec_id` | `workload.process.exec_id`, else exec `exec_id` |
| `runtimeguard.cgroup` | `workload.cgroup` |
| `runtimeguard.target` | `target_context.formatted` |
| `runtimeguard.target.type` | `target_context.type` |
| `runtimeguard.policy.rule` | `policy.rule` |
| `runtimeguard.policy.mode` | `policy.mode` |
| `runtimeguard.policy.name` | `policy.name` |
| `runtimeguard.threat.severity` | `threat.severity` |
| `runtimeguard.threat.description` | `threat.description` |
| `runtimeguard.threat.mitre.tactic` | `threat.mitre_tactic` |
| `runtimeguard.threat.mitre.tactic_id` | `threat.mitre_tactic_id` |
| `runtimeguard.threat.mitre.technique` | `threat.mitre_technique` |
| `runtimeguard.threat.mitre.technique_id` | `threat.mitre_technique_id` |
| `runtimeguard.detection.rule` | `detection`: `rule` |
| `runtimeguard.lost.count` | `lost`: `count` |
| `runtimeguard.repeated` | `repeated` (absent when 0) |

An integer attribute beyond 64 bits signed is sent as its decimal text.

``write()`` only counts the record and appends it to a queue: a worker
thread of the sink's own builds the LogRecord and hands it to the SDK, so
the caller (the thread that drains the ring buffer) does not pay for either.

What is counted: ``written`` (records ``write()`` took, less those that
could not be made into a LogRecord), ``dropped`` (records that never reached
the exporter: refused because ``max_queue`` records were already held,
given after ``close()``, that could not be made into a LogRecord, or still
held when ``close()`` gave up), ``exported`` (records in batches the
endpoint accepted), ``failed_records`` and ``failed_batches`` (batches the
exporter was given that failed: endpoint down, an error status, a timeout).
``written + dropped`` is the number of ``write()`` calls at every moment.
Once ``close()`` has returned and an export it left under way has ended,
every record given to ``write()`` is in exactly one of ``exported``,
``failed_records`` and ``dropped``.
"""

from __future__ import annotations

import datetime
import os
import queue
import socket
import threading
import time
import urllib.parse
import weakref
from typing import Any, Optional


from .. import __version__
from ..errors import RuntimeGuardError
from ..schema import (
    BLOCK_EVENTS,
    SCHEMA_VERSION,
    DnsAnswerData,
    EventRecord,
    FileOpenData,
    ProcessExecData,
    ProcessExitData,
    as_record,
    json_encoder,
)

__all__ = ["OtlpLogs", "attributes", "body", "logs_url", "severity"]

_EXTRA_HINT = "OTLP export needs the otlp extra: pip install 'runtimeguard[otlp]'"

_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1

# The SDK's SeverityNumber values (the OTel log data model's), by name: kept
# here so attributes() and severity() work without the SDK installed.
_SEVERITY_NUMBERS = {"INFO": 9, "WARN": 13, "ERROR": 17, "FATAL": 21}
_THREAT_SEVERITY = {"info": "INFO", "low": "INFO", "medium": "WARN", "high": "ERROR", "critical": "FATAL"}
_BLOCK_EVENTS = frozenset(BLOCK_EVENTS)
_TRANSPORTS = frozenset(("tcp", "udp"))


def _int(value: int) -> Any:
    # OTLP ints are int64: a larger one would fail the whole batch's encoding.
    return value if _INT64_MIN <= value <= _INT64_MAX else str(value)


def _iso(ns: int) -> str:
    seconds, rest = divmod(ns, 1_000_000_000)
    try:
        when = datetime.datetime.fromtimestamp(seconds, tz=datetime.timezone.utc)
    except (OverflowError, OSError, ValueError):
        return str(ns)
    return when.strftime("%Y-%m-%dT%H:%M:%S") + f".{rest:09d}Z"


def _split_image(reference: str) -> tuple[str, Optional[str]]:
    """("docker.io/library/nginx", "1.27") from "docker.io/library/nginx:1.27";
    a registry's port ("localhost:5000/app") is not a tag, a digest is dropped."""
    name = reference.split("@", 1)[0]
    colon = name.rfind(":")
    if colon > name.rfind("/"):
        return name[:colon], name[colon + 1:] or None
    return name, None


def attributes(record: EventRecord) -> dict:
    """The LogRecord attributes of one event (the module's table): only
    those that have a value, each a str, bool, int or list of str."""
    a: dict = {"event.name": "runtimeguard." + record.name, "runtimeguard.event.id": _int(record.id),
               "runtimeguard.schema_version": SCHEMA_VERSION, "runtimeguard.action": record.action}
    data = record.data
    if record.pid:
        a["process.pid"] = _int(record.pid)
    if record.tid:
        a["thread.id"] = _int(record.tid)
    if record.entity_id:
        a["runtimeguard.entity_id"] = _int(record.entity_id)
    if record.repeated:
        a["runtimeguard.repeated"] = _int(record.repeated)

    exec_data = data if isinstance(data, ProcessExecData) else None
    workload = record.workload
    process = workload.process if workload is not None else None
    path = argv = uid = euid = gid = ppid = cwd = exec_id = name = vpid = None
    if process is not None:
        path, argv, uid, euid, gid = process.executable, process.argv, process.uid, process.euid, process.gid
        cwd, exec_id, name, vpid = process.cwd, process.exec_id, process.name, process.ns_pid
        ppid = process.ppid
        if ppid is None and process.parent is not None:
            ppid = process.parent.pid
        if process.start_time:
            a["process.creation.time"] = _iso(process.start_time)
        digest = process.executable_digest
        if digest is not None and digest.build_id:
            a["process.executable.build_id.gnu"] = digest.build_id
    if exec_data is not None:
        path = path or exec_data.resolved_executable or exec_data.executable
        argv = argv or exec_data.argv
        uid = exec_data.uid if uid is None else uid
        euid = exec_data.euid if euid is None else euid
        gid = exec_data.gid if gid is None else gid
        ppid = exec_data.ppid if ppid is None else ppid
        cwd = cwd or exec_data.cwd
        exec_id = exec_id or exec_data.exec_id
        name = name or exec_data.comm
        vpid = exec_data.ns_pid if vpid is None else vpid
        if exec_data.suid is not None:
            a["process.saved_user.id"] = _int(exec_data.suid)
    if ppid is not None:
        a["process.parent_pid"] = _int(ppid)
    if vpid is not None:
        a["process.vpid"] = _int(vpid)
    if path:
        a["process.executable.path"] = path
        a["process.executable.name"] = os.path.basename(path) or path
    elif name:
        a["process.executable.name"] = name
    if argv:
        a["process.command"] = argv[0]
        a["process.command_args"] = [str(arg) for arg in argv]
    if euid is not None:
        a["process.user.id"] = _int(euid)
    if uid is not None:
        a["process.real_user.id"] = _int(uid)
    if gid is not None:
        a["runtimeguard.process.gid"] = _int(gid)
    if cwd:
        a["process.working_directory"] = cwd
    if exec_id:
        a["runtimeguard.exec_id"] = exec_id
    if isinstance(data, ProcessExitData) and data.exit_code is not None:
        a["process.exit.code"] = _int(data.exit_code)

    if workload is not None:
        if workload.cgroup:
            a["runtimeguard.cgroup"] = workload.cgroup
        container, pod = workload.container, workload.pod
        if container is not None:
            a["container.id"] = container.id
            if container.name:
                a["container.name"] = container.name
                if pod is not None:
                    a["k8s.container.name"] = container.name
            if container.runtime:
                a["container.runtime.name"] = container.runtime
            if container.image:
                image, tag = _split_image(container.image)
                a["container.image.name"] = image
                if tag:
                    a["container.image.tags"] = [tag]
        if pod is not None:
            if pod.name:
                a["k8s.pod.name"] = pod.name
            if pod.uid:
                a["k8s.pod.uid"] = pod.uid
            if pod.namespace:
                a["k8s.namespace.name"] = pod.namespace

    target = record.target_context
    family = getattr(data, "family", None)
    if target is not None:
        a["runtimeguard.target"] = target.formatted
        a["runtimeguard.target.type"] = target.type
        if target.type in ("ipv4", "ipv6"):
            family = target.type
            if target.address:
                a["network.peer.address"] = target.address
            if target.port is not None:
                a["network.peer.port"] = _int(target.port)
            if target.hostname:
                a["server.address"] = target.hostname
        elif target.type == "inode" and target.path:
            a["file.path"] = target.path
    if "network.peer.address" not in a and family in ("ipv4", "ipv6"):
        address, port = getattr(data, "address", None), getattr(data, "port", None)
        if isinstance(address, str) and address:
            a["network.peer.address"] = address
        if isinstance(port, int):
            a["network.peer.port"] = _int(port)
    protocol = getattr(data, "protocol", None)
    if protocol in _TRANSPORTS:
        a["network.transport"] = protocol
    local_address = getattr(data, "local_address", None)
    if local_address:
        a["network.local.address"] = local_address
        local_port = getattr(data, "local_port", None)
        if local_port:
            a["network.local.port"] = _int(local_port)

    if isinstance(data, FileOpenData):
        path = data.resolved_path or data.path
        if path:
            a["file.path"] = path
    elif isinstance(data, DnsAnswerData):
        a["dns.question.name"] = data.name
        if data.addresses:
            a["dns.answers"] = [str(x) for x in data.addresses]
        a["network.peer.address"] = data.server
        a["network.peer.port"] = _int(data.server_port)
        family = "ipv6" if ":" in data.server else "ipv4"
    if family in ("ipv4", "ipv6"):
        a["network.type"] = family

    policy = record.policy
    if policy is not None:
        a["runtimeguard.policy.rule"] = policy.rule
        a["runtimeguard.policy.mode"] = policy.mode
        if policy.name:
            a["runtimeguard.policy.name"] = policy.name
    threat = record.threat
    if threat is not None:
        a["runtimeguard.threat.severity"] = threat.severity
        a["runtimeguard.threat.description"] = threat.description
        for key, value in (("mitre.tactic", threat.mitre_tactic), ("mitre.tactic_id", threat.mitre_tactic_id),
                           ("mitre.technique", threat.mitre_technique),
                           ("mitre.technique_id", threat.mitre_technique_id)):
            if value:
                a["runtimeguard.threat." + key] = value
    rule = getattr(data, "rule", None) if record.name == "detection" else None
    if rule:
        a["runtimeguard.detection.rule"] = rule
    if record.name == "lost":
        a["runtimeguard.lost.count"] = _int(data.count)  # type: ignore[union-attr]
    return a


def severity(record: EventRecord) -> tuple[int, str]:
    """The LogRecord's SeverityNumber and SeverityText for an event."""
    if record.name in _BLOCK_EVENTS or record.name == "lost":
        text = "WARN"
    elif record.threat is not None:
        text = _THREAT_SEVERITY.get(record.threat.severity, "INFO")
    else:
        text = "INFO"
    return _SEVERITY_NUMBERS[text], text


# Every digit as "0", everything else as " ": runs of digits are then found
# with bytes.find, far faster than a regular expression over the line.
_DIGIT_RUNS = bytes(48 if 48 <= i <= 57 else 32 for i in range(256))


def body(record: EventRecord) -> str:
    """The LogRecord body: the event's NDJSON line, as text. A string, not
    a map: the SDK's encoder takes about 480 µs for a process_exec as a
    nested map, which capped export near 2,000 events a second; the
    attributes carry the fields a backend indexes, and the line parses
    back to the same EventRecord (schema.json_decoder)."""
    return json_encoder.encode(record).decode()


def logs_url(endpoint: str) -> str:
    """The OTLP/HTTP logs URL: endpoint as given, with ``/v1/logs`` when it has no path."""
    parts = urllib.parse.urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"endpoint {endpoint!r} must be an http:// or https:// URL (http://host:4318/v1/logs)")
    if parts.path in ("", "/"):
        parts = parts._replace(path="/v1/logs")
    return urllib.parse.urlunsplit(parts)


class _State:
    """What the sink, its worker, its exporter wrapper and its finalizer
    share (none of them may hold the sink itself, or the sink would never be
    collected)."""

    def __init__(self, max_queue: int, export_timeout_s: float):
        self.lock = threading.Lock()
        self.max_queue = max_queue
        self.export_timeout_s = export_timeout_s
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        """(record, observed time) from write(), in order, for the worker;
        then _STOP from close()."""
        self.pending = 0
        """Accepted and not yet through export(), wherever it is (the inbox,
        the worker, the SDK's queue, a request): never above max_queue, so
        the SDK's queue (as long as max_queue) never evicts a record."""
        self.written = 0
        self.dropped = 0
        self.handed = 0
        self.exported = 0
        self.failed_records = 0
        self.failed_batches = 0
        self.closed = False
        self.abandoned = False
        """close() has counted what the exporter was not given as dropped:
        nothing more is given to it."""
        self.provider: Any = None
        self.logger: Any = None
        self.exporter: Any = None
        self.worker: Optional[threading.Thread] = None


_STOP = object()


def _load_sdk():
    try:
        from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
        from opentelemetry.sdk._logs import LoggerProvider
        from opentelemetry.sdk._logs.export import (
            BatchLogRecordProcessor,
            LogRecordExporter,
            LogRecordExportResult,
        )
        from opentelemetry.sdk.resources import Resource
        from opentelemetry._logs import SeverityNumber
    except ImportError as e:
        raise RuntimeGuardError(f"{_EXTRA_HINT} ({e})") from None
    return OTLPLogExporter, LoggerProvider, BatchLogRecordProcessor, LogRecordExporter, LogRecordExportResult, \
        Resource, SeverityNumber


def _counting_exporter(base, result_type, inner, state: _State):
    """An exporter that counts what it is given and how each batch ends."""

    class CountingExporter(base):
        def __init__(self):
            self._stopped = False
            self._stop_lock = threading.Lock()

        def export(self, batch):
            n = len(batch)
            with state.lock:
                if state.abandoned:
                    # close() already counted these as dropped.
                    return result_type.FAILURE
                state.handed += n
            ok = False
            try:
                ok = inner.export(batch) == result_type.SUCCESS
            except Exception:  # the SDK would only log it: counted below instead
                ok = False
            finally:
                with state.lock:
                    state.pending -= n
                    if ok:
                        state.exported += n
                    else:
                        state.failed_records += n
                        state.failed_batches += 1
            return result_type.SUCCESS if ok else result_type.FAILURE

        def shutdown(self):
            # Called by close() to cut an export's retries short, then again by
            # the SDK's shutdown: the OTLP exporter warns on a second call.
            with self._stop_lock:
                if self._stopped:
                    return
                self._stopped = True
            inner.shutdown()

        def force_flush(self, timeout_millis: int = 30000) -> bool:
            return True

    return CountingExporter()


def _shutdown_provider(state: _State) -> None:
    try:
        state.provider.shutdown()
    except Exception:  # a failing shutdown must not escape the worker or close()
        pass


def _work(state: _State, severities: dict) -> None:
    """The worker: makes each record write() accepted into a LogRecord and
    gives it to the SDK, in write() order; at _STOP, shuts the provider down
    (the SDK then exports what it holds)."""
    get, emit = state.inbox.get, state.logger.emit
    while True:
        item = get()
        if item is _STOP:
            break
        if state.abandoned:
            # close() has counted it as dropped: the inbox is only emptied.
            continue
        record, observed = item
        try:
            number, text = severity(record)
            emit(timestamp=record.timestamp, observed_timestamp=observed, severity_number=severities[number],
                 severity_text=text, body=body(record), attributes=attributes(record),
                 event_name="runtimeguard." + record.name)
        except Exception:
            # A record that cannot be made into a LogRecord is a record not
            # exported, and must not end the worker.
            with state.lock:
                if not state.abandoned:  # else close() has counted it already
                    state.pending -= 1
                    state.written -= 1
                    state.dropped += 1
    _shutdown_provider(state)


def _close(state: _State) -> None:
    with state.lock:
        if state.closed:
            return
        state.closed = True
        # Under the lock that write() takes: every accepted record is ahead of it.
        state.inbox.put(_STOP)
    deadline = time.monotonic() + state.export_timeout_s
    # The worker converts what is left, then the SDK's shutdown exports what
    # is queued but waits up to 30 s for its own thread whatever it is told:
    # close() waits for the worker only until the deadline.
    worker = state.worker
    if worker is not threading.current_thread():  # a gc pass on the worker may run the finalizer there
        worker.join(max(0.0, deadline - time.monotonic()))
    with state.lock:
        state.abandoned = True
        state.dropped += state.written - state.handed
    state.exporter.shutdown()


class OtlpLogs:
    """A sink that exports events as OpenTelemetry LogRecords over OTLP/HTTP.

    ``endpoint``: the OTLP/HTTP logs URL (``http://collector:4318/v1/logs``;
    without a path, ``/v1/logs`` is added). ``headers``: sent with every
    request (authentication). ``service_name`` and ``resource``: the
    Resource's ``service.name`` and further attributes. ``max_queue``: at
    most this many records are held (waiting for the worker, waiting for a
    batch, or being sent); more are dropped and counted. ``max_batch``:
    records per request. ``schedule_delay_s``: how long a partial batch
    waits. ``export_timeout_s``: one request's time, retries included, and
    what ``close()`` waits at most.
    """

    def __init__(self, endpoint: str, *, headers: Optional[dict] = None, service_name: str = "runtimeguard",
                 resource: Optional[dict] = None, max_queue: int = 2048, max_batch: int = 512,
                 schedule_delay_s: float = 1.0, export_timeout_s: float = 10.0):
        if max_queue < 1:
            raise ValueError(f"max_queue {max_queue} must be at least 1")
        if not 1 <= max_batch <= max_queue:
            raise ValueError(f"max_batch {max_batch} must be from 1 to max_queue ({max_queue})")
        if not schedule_delay_s > 0:
            raise ValueError(f"schedule_delay_s {schedule_delay_s} must be positive")
        if not export_timeout_s > 0:
            raise ValueError(f"export_timeout_s {export_timeout_s} must be positive")
        self.endpoint = logs_url(endpoint)
        (OTLPLogExporter, LoggerProvider, BatchLogRecordProcessor, LogRecordExporter, LogRecordExportResult,
         Resource, SeverityNumber) = _load_sdk()

        # The package's own version: installed metadata is absent in a source tree.
        version = __version__
        base = {"service.name": service_name, "host.name": socket.gethostname(), "service.version": version}
        base.update(resource or {})

        state = self._state = _State(max_queue, export_timeout_s)
        inner = OTLPLogExporter(endpoint=self.endpoint, headers=dict(headers) if headers else None,
                                timeout=export_timeout_s)
        state.exporter = _counting_exporter(LogRecordExporter, LogRecordExportResult, inner, state)
        # Our own provider, not the global one; its atexit hook would wait
        # 30 s on a dead endpoint: the finalizer below closes within the timeout.
        state.provider = LoggerProvider(resource=Resource.create(base), shutdown_on_exit=False)
        state.provider.add_log_record_processor(BatchLogRecordProcessor(
            state.exporter, schedule_delay_millis=schedule_delay_s * 1000, max_export_batch_size=max_batch,
            export_timeout_millis=export_timeout_s * 1000, max_queue_size=max_queue))
        state.logger = state.provider.get_logger("runtimeguard", version)
        severities = {number: SeverityNumber(number) for number in _SEVERITY_NUMBERS.values()}
        state.worker = threading.Thread(target=_work, args=(state, severities), name="runtimeguard-otlp",
                                        daemon=True)
        try:
            state.worker.start()
        except BaseException:
            _shutdown_provider(state)
            raise
        self._finalizer = weakref.finalize(self, _close, state)

    # ---- counters ----

    @property
    def written(self) -> int:
        """Records write() accepted, less those that could not be made into
        a LogRecord (counted in dropped instead): written + dropped is the
        number of write() calls."""
        return self._state.written

    @property
    def dropped(self) -> int:
        """Records never given to the exporter: refused (queue full, or after
        close()), not convertible to a LogRecord, or still held when close()
        gave up."""
        return self._state.dropped

    @property
    def exported(self) -> int:
        """Records in batches the endpoint accepted."""
        return self._state.exported

    @property
    def failed_records(self) -> int:
        """Records in batches whose export failed."""
        return self._state.failed_records

    @property
    def failed_batches(self) -> int:
        """Exports that failed: endpoint unreachable, an error status, a timeout."""
        return self._state.failed_batches

    # ---- the sink ----

    def write(self, record: EventRecord) -> None:
        """Queues one event for export and returns: the LogRecord is built
        and emitted on the sink's worker thread. Dropped (and counted at
        once) when max_queue records are already held."""
        if not isinstance(record, EventRecord):
            record = as_record(record)
        # Taken here: ObservedTimestamp is when the sink was given the event.
        observed = time.time_ns()
        state = self._state
        with state.lock:
            if state.closed or state.pending >= state.max_queue:
                state.dropped += 1
                return
            state.pending += 1
            state.written += 1
            # Under the lock, so the inbox's order is the counters' order and
            # nothing lands behind close()'s _STOP.
            state.inbox.put((record, observed))

    def close(self) -> None:
        """Converts and exports what is held, for at most export_timeout_s,
        and shuts the provider down; what is still held then is counted as
        dropped. Idempotent."""
        self._finalizer()

    def __enter__(self) -> "OtlpLogs":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
