"""Prometheus metrics against a real tracer, a real guard and a real HTTP
scrape: what is counted, what is read at each scrape, and what close() stops."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import urllib.request

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from helpers import drain
from runtimeguard import Tracer, TracerStateError
from runtimeguard.errors import RuntimeGuardError
from runtimeguard.export.metrics import Metrics
from runtimeguard.guard import Guard, guard
from runtimeguard.policy import Policy
from runtimeguard.schema import BLOCK_EVENTS, EVENT_IDS, ConnectDeniedData, EventRecord, PolicyRef


@pytest.fixture
def new_metrics():
    """Makes Metrics; every one made is closed at the end (server stopped,
    statistics descriptor closed) whatever the test did."""
    made: list[Metrics] = []

    def make(*args, **kwargs) -> Metrics:
        m = Metrics(*args, **kwargs)
        made.append(m)
        return m

    yield make
    for m in made:
        m.close()


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """Every sample the endpoint serves: (sample name, sorted labels) -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples, name: str, **labels):
    return samples.get((name, tuple(sorted(labels.items()))))


def labelled(samples, name: str, label: str) -> dict[str, float]:
    """The samples of one metric by the value of its one label."""
    return {dict(labels)[label]: v for (n, labels), v in samples.items() if n == name}


def run_true(times: int) -> None:
    for _ in range(times):
        subprocess.run(["/bin/true"], check=True)


def stats_fds() -> int:
    """Descriptors this process holds that keep BPF run-time statistics on."""
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            n += os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:bpf-stats"
        except OSError:
            pass
    return n


def decision(rule: str = "network.deny[0]", action: str = "blocked", repeated: int = 0,
             name: str = "connect_denied") -> EventRecord:
    """A decision as an audit-log line carries it, built by hand."""
    return EventRecord(timestamp=1, id=EVENT_IDS[name], name=name, action=action, repeated=repeated,
                       data=ConnectDeniedData(rule_index=0, blocked=action == "blocked",
                                              would_deny=action == "would_block", comm="python3", family="ipv4",
                                              protocol="tcp"),
                       policy=PolicyRef(rule=rule, mode="enforce"))


@pytest.mark.root
def test_a_scrape_counts_the_execs_and_reads_the_tracer(new_metrics):
    execs = 5
    metrics = new_metrics()
    with Tracer(events=["process_exec"], ring_buffer_size=1 << 16) as tracer:
        metrics.watch(tracer)
        port = metrics.serve(0)
        assert port > 0 and metrics.port == port
        run_true(execs)
        records = [ev.record() for ev in drain(tracer)]
        for rec in records:
            metrics.write(rec)
        samples = scrape(port)
        stats = tracer.stats()
    ours = [r for r in records if r.name == "process_exec" and r.data.argv == ["/bin/true"]]
    assert len(ours) >= execs
    # The tracer is host-wide: other execs count too, each exactly once.
    assert value(samples, "runtimeguard_events_total", event="process_exec") == sum(
        r.name == "process_exec" for r in records)
    assert value(samples, "runtimeguard_delivered_total", event="process_exec") >= execs
    assert value(samples, "runtimeguard_ring_buffer_size_bytes") == stats.ring_buffer_size == 1 << 16
    assert 0 <= value(samples, "runtimeguard_ring_buffer_fill_ratio") <= 1
    assert 0 <= value(samples, "runtimeguard_ring_buffer_used_bytes") <= 1 << 16
    assert value(samples, "runtimeguard_malformed_total") <= stats.malformed
    lost = labelled(samples, "runtimeguard_lost_total", "event")
    # Present for each event the tracer delivers, lost or not; the table's own kinds as well.
    assert {"process_exec", "process_fork", "process_exit"} <= set(lost)
    # Read after the scrape: counters only grow.
    assert all(n <= stats.lost.get(name, 0) for name, n in lost.items())
    # Every known event name is there from the start, at 0 if never written.
    assert set(labelled(samples, "runtimeguard_events_total", "event")) == set(EVENT_IDS)
    # No run-time statistics unless asked for: they cost every BPF program on the host.
    assert not labelled(samples, "runtimeguard_bpf_program_runs_total", "program")


@pytest.mark.root
def test_a_guarded_run_counts_its_decisions_by_rule_and_action(new_metrics):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    policy = Policy.from_text(textwrap.dedent(f"""
        version: 1
        mode: enforce
        network:
          default: allow
          deny:
            - cidr: 127.0.0.1/32
              ports: [{port}]
    """), "yaml")
    code = textwrap.dedent(f"""
        import socket, sys
        refused = 0
        for _ in range(3):
            try:
                socket.create_connection(("127.0.0.1", {port}), timeout=2).close()
            except PermissionError:
                refused += 1
        sys.exit(3 if refused == 3 else 1)
    """)
    metrics = new_metrics()
    served = metrics.serve(0)
    try:
        result = guard(policy, [sys.executable, "-c", code], on_event=metrics.write)
    finally:
        listener.close()
    assert result.exit_status == 3
    denied = [e for e in result.events if e.name == "connect_denied"]
    assert len(denied) == 3
    assert {(e.policy.rule, e.action) for e in denied} == {("network.deny[0]", "blocked")}
    samples = scrape(served)
    assert value(samples, "runtimeguard_decisions_total", event="connect_denied", rule="network.deny[0]",
                 action="blocked") == len(denied)
    decided = {labels: v for (n, labels), v in samples.items() if n == "runtimeguard_decisions_total"}
    assert sum(decided.values()) == sum(1 + e.repeated for e in result.events if e.name in BLOCK_EVENTS)
    assert value(samples, "runtimeguard_events_total", event="connect_denied") == len(denied)


@pytest.mark.root
def test_a_guard_bound_by_its_stats_serves_its_counters(new_metrics):
    policy = Policy.from_text("version: 1\nmode: enforce\nnetwork:\n  default: allow\n", "yaml")
    metrics = new_metrics()
    port = metrics.serve(0)
    g = Guard(policy, on_event=metrics.write)
    metrics.bind(g.stats)
    # Not started: Guard.stats() raises, the scrape still answers, without the tracer's metrics.
    assert value(scrape(port), "runtimeguard_ring_buffer_size_bytes") is None
    result = g.run(["/bin/true"])
    assert result.exit_status == 0
    samples = scrape(port)  # the guard has closed: its final counters
    assert value(samples, "runtimeguard_ring_buffer_size_bytes") == g.stats().ring_buffer_size
    assert value(samples, "runtimeguard_delivered_total", event="process_exec") >= 1
    assert set(labelled(samples, "runtimeguard_lost_total", "event")) >= set(BLOCK_EVENTS)


@pytest.mark.root
def test_bpf_run_time_per_program_while_asked_for(new_metrics):
    held = stats_fds()
    metrics = new_metrics(bpf_run_time=True)
    assert stats_fds() == held  # nothing turned on before there is a tracer to read
    with Tracer(events=["process_exec"]) as tracer:
        metrics.watch(tracer)
        assert stats_fds() == held + 1
        port = metrics.serve(0)
        run_true(3)
        drain(tracer)
        samples = scrape(port)
        programs = tracer.program_stats()
    runs = labelled(samples, "runtimeguard_bpf_program_runs_total", "program")
    seconds = labelled(samples, "runtimeguard_bpf_program_run_seconds_total", "program")
    # rg_exec: the process sensor's sched_process_exec program (bpf/process.bpf.c).
    assert runs["rg_exec"] >= 3
    assert seconds["rg_exec"] > 0
    assert set(runs) == set(seconds) == set(programs) >= {"rg_exec", "rg_fork", "rg_exit"}
    assert all(programs[name][1] >= runs[name] for name in runs)  # counters only grow
    metrics.close()
    assert stats_fds() == held


@pytest.mark.root
def test_program_stats_never_starts_a_tracer():
    tracer = Tracer(events=["process_exec"])
    with pytest.raises(TracerStateError):
        tracer.program_stats()
    assert not tracer.running
    with tracer:
        assert "rg_exec" in tracer.program_stats()
    with pytest.raises(TracerStateError):
        tracer.program_stats()


@pytest.mark.root
def test_a_scrape_after_the_tracer_closed_serves_what_it_last_read(new_metrics):
    metrics = new_metrics(bpf_run_time=True)
    with Tracer(events=["process_exec"], ring_buffer_size=1 << 15) as tracer:
        metrics.watch(tracer)
        port = metrics.serve(0)
        run_true(2)
        drain(tracer)
        before = scrape(port)
    final_delivered = tracer.stats().delivered["process_exec"]
    after = scrape(port)
    assert value(after, "runtimeguard_ring_buffer_size_bytes") == 1 << 15
    assert value(after, "runtimeguard_delivered_total", event="process_exec") == final_delivered
    # The programs are gone with the tracer: their last counts stay.
    assert labelled(after, "runtimeguard_bpf_program_runs_total", "program") == labelled(
        before, "runtimeguard_bpf_program_runs_total", "program")


def test_a_scrape_does_not_start_a_tracer_not_yet_started(new_metrics):
    metrics = new_metrics()
    tracer = Tracer(events=["process_exec"])
    metrics.watch(tracer)
    samples = scrape(metrics.serve(0))
    assert not tracer.running
    assert value(samples, "runtimeguard_ring_buffer_size_bytes") is None
    assert value(samples, "runtimeguard_events_total", event="process_exec") == 0
    tracer.close()


def test_a_line_with_repeated_counts_each_decision_it_stands_for(new_metrics):
    metrics = new_metrics()
    metrics.write(decision(repeated=4))
    metrics.write(decision(action="would_block"))
    reg = metrics.registry
    assert reg.get_sample_value("runtimeguard_decisions_total", {
        "event": "connect_denied", "rule": "network.deny[0]", "action": "blocked"}) == 5
    assert reg.get_sample_value("runtimeguard_decisions_total", {
        "event": "connect_denied", "rule": "network.deny[0]", "action": "would_block"}) == 1
    assert reg.get_sample_value("runtimeguard_events_total", {"event": "connect_denied"}) == 6


def test_a_decision_without_a_policy_has_an_empty_rule(new_metrics):
    metrics = new_metrics()
    rec = decision()
    rec.policy = None
    metrics.write(rec)
    assert metrics.registry.get_sample_value("runtimeguard_decisions_total", {
        "event": "connect_denied", "rule": "", "action": "blocked"}) == 1


_records = st.lists(st.tuples(st.sampled_from(sorted(EVENT_IDS)), st.sampled_from(["r0", "r1", "network.default"]),
                              st.sampled_from(["observed", "blocked", "would_block", "killed"]),
                              st.integers(0, 1000)), max_size=40)


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(_records)
def test_totals_are_the_sums_of_what_the_records_stand_for(new_metrics, records):
    metrics = new_metrics()
    for name, rule, action, repeated in records:
        rec = decision(rule=rule, action=action, repeated=repeated)
        rec.name, rec.id = name, EVENT_IDS[name]
        metrics.write(rec)
    reg = metrics.registry
    for name in EVENT_IDS:
        assert reg.get_sample_value("runtimeguard_events_total", {"event": name}) == sum(
            1 + r for n, _, _, r in records if n == name)
    expected: dict[tuple, int] = {}
    for name, rule, action, repeated in records:
        if name in BLOCK_EVENTS:
            key = (name, rule, action)
            expected[key] = expected.get(key, 0) + 1 + repeated
    got = {(s.labels["event"], s.labels["rule"], s.labels["action"]): s.value
           for family in reg.collect() if family.name == "runtimeguard_decisions" for s in family.samples}
    assert got == expected
    metrics.close()


def test_close_stops_the_server_and_is_idempotent(new_metrics):
    metrics = new_metrics()
    port = metrics.serve(0)
    thread = metrics._thread
    assert value(scrape(port), "runtimeguard_events_total", event="process_exec") == 0
    metrics.close()
    assert not thread.is_alive()
    assert metrics.port is None
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    metrics.close()
    metrics.write(decision())  # a closed sink takes nothing, and says nothing
    with pytest.raises(RuntimeGuardError, match="closed"):
        metrics.serve(0)
    # Unregistered: the registry it was given can take another.
    assert list(metrics.registry.collect()) == []


def test_serve_twice_or_on_a_taken_port_says_why(new_metrics):
    a = new_metrics()
    port = a.serve(0)
    with pytest.raises(RuntimeGuardError, match=f"already serving metrics on port {port}"):
        a.serve(0)
    b = new_metrics()
    with pytest.raises(RuntimeGuardError, match=f"cannot serve metrics on 127.0.0.1 port {port}"):
        b.serve(port)


def test_two_instances_on_two_ports_do_not_collide(new_metrics):
    a, b = new_metrics(), new_metrics()
    port_a, port_b = a.serve(0), b.serve(0)
    assert port_a != port_b
    a.write(decision(repeated=1))
    b.write(decision(rule="network.default"))
    sa, sb = scrape(port_a), scrape(port_b)
    assert labelled(sa, "runtimeguard_decisions_total", "rule") == {"network.deny[0]": 2}
    assert labelled(sb, "runtimeguard_decisions_total", "rule") == {"network.default": 1}
    # Never the process-wide registry.
    assert REGISTRY.get_sample_value("runtimeguard_events_total", {"event": "connect_denied"}) is None


def test_one_given_registry_takes_one_instance(new_metrics):
    registry = CollectorRegistry()
    first = new_metrics(registry)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        Metrics(registry)
    first.close()
    second = new_metrics(registry)
    second.write(decision())
    assert registry.get_sample_value("runtimeguard_events_total", {"event": "connect_denied"}) == 1


def test_without_prometheus_client_it_says_which_extra():
    code = textwrap.dedent("""
        import sys
        sys.modules["prometheus_client"] = None  # what an environment without it looks like to import
        from runtimeguard.errors import RuntimeGuardError
        from runtimeguard.export.metrics import Metrics
        try:
            Metrics()
        except RuntimeGuardError as e:
            print(e)
    """)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root,
                         env={**os.environ, "PYTHONPATH": root}).stdout
    assert out.strip() == "metrics need the metrics extra: pip install 'runtimeguard[metrics]'"
