"""The kernel's host rules against their Python reference, decide_network
with the names answered.

Hypothesis writes host patterns (exact names and globs), rules naming them
(allow and deny, ports, protocols, either default) and names near them (the
name itself, names below it, its parent, other case, a near miss). A DNS
server on 127.0.0.153 answers every name with an address of its own; a
worker in the guard's cgroup resolves each name there (dnspython) and
connects a UDP socket to the answer (the connect hook judges it; nothing is
sent). Whether the worker got EPERM must be what decide_network says for the
names answered with that address.
"""

from __future__ import annotations

import errno
import textwrap
import zlib
from contextlib import contextmanager

import dns.message
import dns.rrset
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
import pytest

from dns_server import DnsServer
from helpers import worker_in_a_cgroup
from runtimeguard import hostnames
from runtimeguard.guard import Guard
from runtimeguard.policy import Policy, PolicyError, decide_network

pytestmark = pytest.mark.root

SERVER = "127.0.0.153"

WORKER = textwrap.dedent(f"""
    import errno, socket, sys
    import dns.resolver
    r = dns.resolver.Resolver(configure=False)
    r.nameservers = ["{SERVER}"]
    for line in sys.stdin:
        name, port = line.split()
        address = r.resolve(name, "A")[0].address
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.connect((address, int(port)))
            result = 0
        except OSError as e:
            result = e.errno
        s.close()
        print(address, result, flush=True)
""")


def address_of(name: str) -> str:
    """The address the test server gives a name (lower case: one name, one address)."""
    h = zlib.crc32(name.lower().rstrip(".").encode())
    return f"127.77.{h >> 8 & 0xFF}.{h & 0xFF or 1}"


def answer_anything(query, client, send):
    q = query.question[0]
    response = dns.message.make_response(query)
    if q.rdtype == 1:
        response.answer.append(dns.rrset.from_text(q.name, 60, "IN", "A", address_of(q.name.to_text())))
    send(response.to_wire())
    return False


@contextmanager
def answering_worker():
    server = DnsServer(SERVER)
    server.on_query = answer_anything
    try:
        with worker_in_a_cgroup(WORKER) as (cgroup, proc):
            yield cgroup, proc
    finally:
        server.close()


label = st.text("abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=12)
base_names = st.lists(label, min_size=1, max_size=4).map(".".join)


@st.composite
def patterns(draw):
    name = draw(base_names)
    return f"*.{name}" if draw(st.booleans()) else name


@st.composite
def rules(draw, pool):
    rule = {"host": draw(st.sampled_from(pool))}
    if draw(st.booleans()):
        rule["ports"] = [draw(st.sampled_from([53, 443, 8080]))]
    protocol = draw(st.sampled_from(["udp", "tcp", "any", None]))
    if protocol is not None:
        rule["protocol"] = protocol
    return rule


@st.composite
def names_near(draw, pool):
    """A name a pattern matches, almost matches, or anything."""
    if not draw(st.integers(0, 4)):
        return draw(base_names)
    pattern = draw(st.sampled_from(pool))
    suffix = pattern[2:] if pattern.startswith("*.") else pattern
    kind = draw(st.sampled_from(["itself", "below", "deeper", "parent", "near", "upper"]))
    if kind == "below":
        name = f"{draw(label)}.{suffix}"
    elif kind == "deeper":
        name = f"{draw(label)}.{draw(label)}.{suffix}"
    elif kind == "parent":
        name = suffix.split(".", 1)[-1]
    elif kind == "near":
        name = "x" + suffix  # no label boundary: matches no glob of suffix
    else:
        name = suffix
    return name.upper() if kind == "upper" else name


def test_kernel_host_decisions_match_decide_network():
    with answering_worker() as (cgroup, proc):
        check(cgroup, proc)


def check(cgroup, proc):
    @settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(data=st.data())
    def one(data):
        pool = data.draw(st.lists(patterns(), min_size=1, max_size=4, unique=True))
        network = {
            "default": data.draw(st.sampled_from(["allow", "deny"])),
            "allow": data.draw(st.lists(rules(pool), max_size=3)),
            "deny": data.draw(st.lists(rules(pool), max_size=3)),
            # The test server is trusted and reachable whatever the rules say.
            "dns": {"servers": [SERVER], "reverse_lookup": False},
        }
        network["allow"] = network["allow"] + [{"cidr": f"{SERVER}/32", "ports": [53]}]
        try:
            policy = Policy.from_dict({"version": 1, "mode": "enforce", "network": network,
                                       "taint": {"block_egress": False}})
        except PolicyError as e:
            assume("duplicate of" not in e.reason and "contradicts" not in e.reason)
            raise
        compiled = policy.network_rules()
        queries = data.draw(st.lists(st.tuples(names_near(pool), st.sampled_from([53, 443, 8080])),
                                     min_size=1, max_size=12))
        answered: dict[str, set] = {}
        with Guard(policy, cgroup=cgroup):
            proc.stdin.write("".join(f"{name} {port}\n" for name, port in queries))
            proc.stdin.flush()
            for name, port in queries:
                address, result = proc.stdout.readline().split()
                assert address == address_of(name)
                names = answered.setdefault(address, set())
                normal, _ = hostnames.normalize_host(name)
                names.add(normal)
                verdict, rule = decide_network(compiled, network["default"], address, port, "udp", names)
                refused = int(result) == errno.EPERM
                assert refused == (verdict == "deny"), (
                    f"{name} ({address}):{port}: kernel {'refused' if refused else 'let it through'}, "
                    f"decide_network says {verdict} by {rule} (patterns {pool})")

    one()
