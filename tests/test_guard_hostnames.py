"""Hostname rules against real DNS: a server the test runs on 127.0.0.153
(nothing leaves the machine), workloads pointed at it through a
resolv.conf bind-mounted in their own mount namespace, the guard reading
the answers in the kernel.

Each workload runs tests/dns_client.py, which resolves with glibc
(getaddrinfo) or dnspython and connects, printing one JSON line per step.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import textwrap
import time

import pytest

from dns_server import DnsServer, forged_answer
from runtimeguard import hostnames
from runtimeguard.guard import Guard
from runtimeguard.policy import Policy
from runtimeguard.schema import json_decoder

pytestmark = pytest.mark.root

SERVER = "127.0.0.153"
CLIENT = os.path.join(os.path.dirname(__file__), "dns_client.py")
PORT = 8443
ADDRESSES = {  # name -> address the zone gives it; a listener on each
    "allowed.test": "127.0.10.1",
    "denied.test": "127.0.10.2",
    "other.test": "127.0.10.3",
    "a.svc.test": "127.0.10.4",
    "b.c.svc.test": "127.0.10.5",
    "svc.test": "127.0.10.6",
    "edge.cdn.test": "127.0.10.7",
    "short.test": "127.0.10.8",
    "evil.test": "127.0.10.9",
    "tcp.test": "127.0.10.10",
    "never.test": "127.0.10.11",
    "ptr-ok.test": "127.0.10.12",
}


@pytest.fixture(scope="module")
def zone():
    server = DnsServer(SERVER)
    for name, address in ADDRESSES.items():
        server.add(name, "A", address, ttl=30)
    server.add("alias.test", "CNAME", "edge.cdn.test.", ttl=30)
    server.add("short.test", "A", ADDRESSES["short.test"], ttl=1)
    for name in ("never.test", "ptr-ok.test"):
        reverse = ".".join(reversed(ADDRESSES[name].split("."))) + ".in-addr.arpa"
        server.add(reverse, "PTR", name + ".", ttl=30)
    listeners = []
    for address in ADDRESSES.values():
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((address, PORT))
        s.listen(64)
        listeners.append(s)
    yield server
    for s in listeners:
        s.close()
    server.close()


@pytest.fixture
def resolv(tmp_path):
    path = tmp_path / "resolv.conf"
    path.write_text(f"nameserver {SERVER}\noptions attempts:1 timeout:1\n")
    return str(path)


def policy(rules: str, mode: str = "enforce", dns: str = "", default: str = "deny", min_ttl: float = 1) -> Policy:
    block = textwrap.indent(textwrap.dedent(rules).strip(), "  ")
    return Policy.from_text(
        f"version: 1\nname: hostnames\nmode: {mode}\nnetwork:\n  default: {default}\n{block}\n"
        f"  dns: {{servers: [{SERVER}], min_ttl: {min_ttl}, max_ttl: 60{dns}}}\n"
        "namespaces: {allow: [mnt, mount]}\n")


def run(pol: Policy, resolv: str, *steps: str, audit_log=None, sinks=()):
    """Runs the client's steps under pol in its own mount namespace with
    resolv.conf; returns (the steps' results, the guard's decisions, the
    guard's stats, every DNS answer the guard read)."""
    answers = []

    class Answers:
        def write(self, rec):
            if rec.name == "dns_answer":
                answers.append(rec)

        def close(self):
            pass

    out = os.path.join(os.path.dirname(resolv), "steps.jsonl")
    argv = ["unshare", "-m", "--propagation", "private", "sh", "-c",
            'mount --bind "$0" /etc/resolv.conf && exec "$@"', resolv,
            sys.executable, CLIENT, out, *steps]
    g = Guard(pol, audit_log=audit_log, sinks=[Answers(), *sinks])
    result = g.run(argv)
    assert result.exit_status == 0
    with open(out) as f:
        results = [json.loads(line) for line in f]
    return results, result.events, g.stats(), answers


def test_allowed_name_connects_first_time_and_others_are_refused(zone, resolv, tmp_path):
    log = tmp_path / "audit.ndjson"
    pol = policy("""
        allow: [{host: allowed.test, ports: [8443]}]
        deny: [{host: denied.test}]
    """)
    results, decisions, stats, answers = run(pol, resolv, "connect allowed.test", "connect denied.test",
                                             "connect other.test", audit_log=str(log))
    assert [r["result"] for r in results] == ["ok", "EPERM", "EPERM"]
    assert [(d.policy.rule, d.target_context.address, d.target_context.hostname) for d in decisions] == [
        ("network.deny[0]", ADDRESSES["denied.test"], "denied.test"),
        ("network.default", ADDRESSES["other.test"], "other.test"),
    ]
    assert all(d.action == "blocked" for d in decisions)
    counted = {a.data.name: a for a in answers if a.data.status == "counted"}
    assert counted["allowed.test"].data.addresses == [ADDRESSES["allowed.test"]]
    assert counted["allowed.test"].data.matched == ["allowed.test"]
    assert counted["allowed.test"].data.server == SERVER and counted["allowed.test"].pid > 0
    assert stats.dns_answers["counted"] >= 3
    # The audit log's lines carry the hostname too.
    logged = [json_decoder.decode(line) for line in log.read_bytes().splitlines()]
    assert {(e.target_context.address, e.target_context.hostname) for e in logged if e.name == "connect_denied"} == {
        (ADDRESSES["denied.test"], "denied.test"), (ADDRESSES["other.test"], "other.test")}


def test_audit_mode_reports_what_would_be_refused(zone, resolv):
    pol = policy("allow: [{host: allowed.test}]", mode="audit")
    results, decisions, _, _ = run(pol, resolv, "connect allowed.test", "connect other.test")
    assert [r["result"] for r in results] == ["ok", "ok"]
    assert [(d.action, d.policy.rule, d.target_context.hostname) for d in decisions] == [
        ("would_block", "network.default", "other.test")]


def test_a_glob_matches_names_below_it_not_itself(zone, resolv):
    pol = policy('allow: [{host: "*.svc.test"}]')
    results, _, _, _ = run(pol, resolv, "connect a.svc.test", "connect b.c.svc.test", "connect svc.test")
    assert [r["result"] for r in results] == ["ok", "ok", "EPERM"]


def test_a_cname_chain_carries_the_name_asked_for(zone, resolv):
    pol = policy("allow: [{host: alias.test}]")
    results, _, _, answers = run(pol, resolv, "connect alias.test", "connect edge.cdn.test")
    # edge.cdn.test's own answer matches no rule: its address stays open
    # only by the earlier answer for alias.test.
    assert [r["result"] for r in results] == ["ok", "ok"]
    alias = next(a for a in answers if a.data.name == "alias.test")
    assert alias.data.addresses == [ADDRESSES["edge.cdn.test"]] and alias.data.matched == ["alias.test"]


def test_addresses_expire_with_their_ttl(zone, resolv):
    pol = policy("allow: [{host: short.test}]")
    address = ADDRESSES["short.test"]
    results, decisions, _, answers = run(pol, resolv, "connect short.test", f"connect_address {address}",
                                         "sleep 1.6", f"connect_address {address}", "connect short.test")
    assert [r["result"] for r in results if r["step"] != "sleep"] == ["ok", "ok", "EPERM", "ok"]
    assert next(a for a in answers if a.data.name == "short.test").data.ttl == 1
    assert [d.policy.rule for d in decisions] == ["network.default"]


def test_the_ttl_is_held_at_least_min_ttl(zone, resolv):
    pol = policy("allow: [{host: short.test}]", min_ttl=3)
    address = ADDRESSES["short.test"]
    results, _, _, answers = run(pol, resolv, "connect short.test", "sleep 1.6", f"connect_address {address}")
    assert [r["result"] for r in results if r["step"] != "sleep"] == ["ok", "ok"]
    assert next(a for a in answers if a.data.name == "short.test").data.ttl == 3


def test_an_answer_from_an_untrusted_server_opens_nothing(zone, resolv):
    """The workload asks a server of its own (allowed on port 53, but not
    one of network.dns.servers), which says allowed.test is at evil.test's
    address."""
    evil = ADDRESSES["evil.test"]
    rogue = DnsServer("127.0.0.154")
    rogue.add("allowed.test", "A", evil)
    try:
        pol = policy("""
            allow: [{host: allowed.test}, {cidr: 127.0.0.154/32, ports: [53]}]
        """)
        results, _, _, answers = run(pol, resolv, "ask 127.0.0.154 allowed.test", f"connect_address {evil}")
    finally:
        rogue.close()
    assert results[0]["address"] == evil
    assert results[1]["result"] == "EPERM"
    assert [a.data.status for a in answers if a.data.name == "allowed.test"] == ["untrusted_server"]


def test_an_answer_for_another_name_opens_nothing(zone, resolv):
    """The trusted server itself answers a query for other.test with a
    message whose question is allowed.test: it matches no query."""
    evil = ADDRESSES["evil.test"]

    def swap(query, client, send):
        if query.question[0].name.to_text() == "other.test.":
            send(forged_answer(query, "allowed.test.", evil))
            return False

    zone.on_query = swap
    try:
        pol = policy("allow: [{host: allowed.test}]")
        results, _, _, answers = run(pol, resolv, "resolve other.test", f"connect_address {evil}")
    finally:
        zone.on_query = None
    assert results[1]["result"] == "EPERM"
    assert [a.data.status for a in answers if a.data.name == "allowed.test"] == ["no_query"]


def test_an_answer_the_workload_sends_itself_opens_nothing(zone, resolv):
    """A process in scope sends its own socket an answer from port 53 of
    another loopback address: no query was sent there."""
    evil = ADDRESSES["evil.test"]
    pol = policy("allow: [{host: allowed.test}, {cidr: 127.0.0.1/32}]")
    results, _, _, answers = run(pol, resolv, f"self_forge allowed.test {evil}", f"connect_address {evil}")
    assert results[0]["result"] == "ok"
    assert results[1]["result"] == "EPERM"
    assert [a.data.status for a in answers if a.data.name == "allowed.test"] == ["no_query"]


def test_dns_over_tcp_is_read_too(zone, resolv):
    pol = policy("allow: [{host: tcp.test}]")
    results, _, _, answers = run(pol, resolv, "tcp_connect tcp.test")
    assert results[0]["result"] == "ok"
    assert [(a.data.protocol, a.data.status) for a in answers if a.data.name == "tcp.test"] == [("tcp", "counted")]


def test_an_address_never_resolved_follows_the_default_with_its_reverse_name(zone, resolv):
    pol = policy("allow: [{host: ptr-ok.test}]")
    never = ADDRESSES["never.test"]
    results, decisions, _, _ = run(pol, resolv, f"connect_address {never}")
    assert results[0]["result"] == "EPERM"
    (d,) = decisions
    assert d.policy.rule == "network.default" and d.target_context.hostname is None
    assert d.target_context.reverse_name == "never.test" and d.target_context.reverse_confirmed is True


def test_late_allow_on_a_confirmed_ptr_opens_later_connects(zone, resolv):
    address = ADDRESSES["ptr-ok.test"]
    pol = policy("allow: [{host: ptr-ok.test}]", dns=", allow_confirmed_ptr: true")
    results, decisions, _, _ = run(pol, resolv, f"connect_address {address}", "sleep 1.5",
                                   f"connect_address {address}")
    assert [r["result"] for r in results if r["step"] != "sleep"] == ["EPERM", "ok"]
    assert decisions[0].target_context.reverse_name == "ptr-ok.test"
    # Without the option the address stays closed.
    pol = policy("allow: [{host: ptr-ok.test}]")
    results, _, _, _ = run(pol, resolv, f"connect_address {address}", "sleep 1.5", f"connect_address {address}")
    assert [r["result"] for r in results if r["step"] != "sleep"] == ["EPERM", "EPERM"]


def test_refuse_unobserved_dns(zone, resolv):
    pol = policy("allow: [{cidr: 0.0.0.0/0}]", dns=", refuse_unobserved: true")
    results, decisions, _, _ = run(pol, resolv, "connect_address 127.0.0.154 853", "connect_address 1.1.1.1 443",
                                   "udp_send 127.0.0.154 53", "connect allowed.test")
    assert [r["result"] for r in results] == ["EPERM", "EPERM", "EPERM", "ok"]
    assert {d.policy.rule for d in decisions} == {"network.dns.refuse_unobserved"}


def test_host_rules_without_dns_servers_are_refused(tmp_path, monkeypatch):
    empty = tmp_path / "resolv.conf"
    empty.write_text("")
    monkeypatch.setattr(hostnames, "nameservers", lambda path="/etc/resolv.conf": ())
    pol = Policy.from_text("version: 1\nnetwork: {default: deny, allow: [{host: a.test}]}\n")
    with pytest.raises(Exception) as info:
        Guard(pol).run(["true"])
    assert "network.dns.servers" in str(info.value)


def test_queries_record_their_sender(zone, resolv):
    pol = policy("allow: [{host: allowed.test}]")
    results, _, _, answers = run(pol, resolv, "connect allowed.test")
    answer = next(a for a in answers if a.data.name == "allowed.test")
    assert answer.pid == results[0]["pid"]
