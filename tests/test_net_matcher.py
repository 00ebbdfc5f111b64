"""The kernel's egress decision against its Python reference, decide_network.

Hypothesis writes policies (CIDR rules of both families, ports and ranges,
protocols, allow and deny, either default) and destinations near their
edges. Each policy is compiled into a real guard on a test cgroup; a worker
process in that cgroup, in a network namespace of its own whose only
interface is down (nothing can leave the machine), connects and sends to the
destinations through the real cgroup hooks. Whether the caller got EPERM,
and the rule each decision names, must be what decide_network says.
"""

from __future__ import annotations

import errno
import ipaddress
import time

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
import pytest

from helpers import SOCKET_WORKER, socket_errnos, worker_in_a_cgroup
from runtimeguard.guard import Guard
from runtimeguard.policy import Policy, PolicyError, decide_network

pytestmark = pytest.mark.root

def ask(proc, queries) -> list[int]:
    """Each query's errno (0: it went through) as the worker saw it."""
    return socket_errnos(proc, [(op, str(ip), port, proto) for op, ip, port, proto in queries])


# ---- what hypothesis writes ----

V4_BASES = ["10.0.0.0", "10.1.2.3", "192.168.1.100", "127.0.0.2", "0.0.0.0", "255.255.255.255", "1.2.3.4"]
V6_BASES = ["2001:db8::1", "2001:db8:1::", "fe80::1", "::1", "::", "ffff::ffff"]
EDGE_PORTS = [1, 22, 53, 80, 443, 1023, 1024, 8000, 8080, 8100, 65534, 65535]
ports = st.one_of(st.sampled_from(EDGE_PORTS), st.integers(1, 65535))


@st.composite
def port_specs(draw):
    if draw(st.booleans()):
        return None
    specs = []
    for _ in range(draw(st.integers(1, 3))):
        lo = draw(ports)
        if draw(st.booleans()):
            specs.append(lo)
        else:
            specs.append(f"{lo}-{draw(st.integers(lo, min(65535, lo + draw(st.sampled_from([0, 1, 10, 1000])))))}")
    return specs


@st.composite
def cidr_rules(draw):
    v6 = draw(st.booleans())
    base = draw(st.sampled_from(V6_BASES if v6 else V4_BASES))
    prefix = draw(st.one_of(st.sampled_from([0, 8, 16, 24, 31, 32] + ([48, 64, 96, 127, 128] if v6 else [])),
                            st.integers(0, 128 if v6 else 32)))
    rule = {"cidr": str(ipaddress.ip_network(f"{base}/{prefix}", strict=False))}
    spec = draw(port_specs())
    if spec is not None:
        rule["ports"] = spec
    protocol = draw(st.sampled_from(["tcp", "udp", "any", None]))
    if protocol is not None:
        rule["protocol"] = protocol
    return rule


policies = st.fixed_dictionaries({
    "default": st.sampled_from(["allow", "deny"]),
    "allow": st.lists(cidr_rules(), max_size=4),
    "deny": st.lists(cidr_rules(), max_size=4),
})


def near(ip_class, network, draw):
    """An address at, just inside, just outside or anywhere in a network."""
    first, last = int(network.network_address), int(network.broadcast_address)
    top = 2 ** network.max_prefixlen - 1
    value = draw(st.sampled_from([first, last, max(first - 1, 0), min(last + 1, top),
                                  draw(st.integers(first, last))]))
    return ip_class(value)


@st.composite
def destinations(draw, compiled):
    """A destination: often a rule's edge, sometimes anything at all."""
    if compiled and draw(st.integers(0, 3)):
        rule = draw(st.sampled_from(compiled))
        ip = near(type(rule.network.network_address), rule.network, draw)
        lo, hi = draw(st.sampled_from(rule.port_ranges))
        # Port 0 is no destination: the kernel refuses a send to it before any hook.
        port = draw(st.sampled_from([max(lo, 1), hi, max(lo - 1, 1), min(hi + 1, 65535)]))
    else:
        ip = draw(st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)))
        port = draw(ports)
    if ip.version == 4 and draw(st.integers(0, 3)) == 0:
        ip = ipaddress.IPv6Address(f"::ffff:{ip}")  # matched as the IPv4 address it carries
    protocol = draw(st.sampled_from(["tcp", "udp"]))
    op = "sendto" if protocol == "udp" and draw(st.booleans()) else "connect"
    return op, ip, port, protocol


def unmapped(ip):
    return ip.ipv4_mapped if ip.version == 6 and ip.ipv4_mapped is not None else ip


def test_kernel_egress_decisions_match_decide_network():
    # One worker for every example: a fresh guard per policy judges it.
    # In a network namespace of its own, whose only interface is down.
    with worker_in_a_cgroup(SOCKET_WORKER, ["unshare", "--net"]) as (cgroup, proc):
        check_policies_against_the_reference(cgroup, proc)


def check_policies_against_the_reference(cgroup, proc):
    @settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(network=policies, data=st.data())
    def check(network, data):
        try:
            policy = Policy.from_dict({"version": 1, "mode": "enforce", "network": network,
                                       "taint": {"block_egress": False}})
        except PolicyError as e:
            # Two equal or contradictory rules: the policy is refused, rightly.
            assume("duplicate of" not in e.reason and "contradicts" not in e.reason)
            raise
        compiled = policy.network_rules()
        queries = data.draw(st.lists(destinations(compiled), min_size=1, max_size=40))
        expected = [decide_network(compiled, network["default"], ip, port, proto) for _, ip, port, proto in queries]

        with Guard(policy, cgroup=cgroup) as g:
            got = ask(proc, queries)
            denials = [(q, rule) for q, (verdict, rule) in zip(queries, expected) if verdict == "deny"]
            decisions = []
            deadline = time.monotonic() + 5
            while len(decisions) < len(denials) and time.monotonic() < deadline:
                decisions += g.poll(0.05)
            decisions += g.poll(0.05)  # anything past what was expected

        for (op, ip, port, proto), result, (verdict, rule) in zip(queries, got, expected):
            refused = result == errno.EPERM
            assert refused == (verdict == "deny"), (
                f"{op} {proto} [{ip}]:{port}: kernel {'refused' if refused else f'let it through ({result})'}, "
                f"decide_network says {verdict} by {rule}")
        reported = [(ev.name, ipaddress.ip_address(ev.target_context.address), ev.target_context.port,
                     ev.data.protocol, ev.policy.rule) for ev in decisions]
        assert reported == [("connect_denied" if op == "connect" else "exfil_blocked", unmapped(ip), port, proto,
                             rule) for (op, ip, port, proto), rule in denials]
        assert all(ev.action == "blocked" for ev in decisions)

    check()
