"""The guard's typed map calls (csrc/guardmaps.c): policy-level values in,
the kernel's keys and values made in C.

The host-name hash C computes (bpf/namehash.h, the DNS programs' own) is
compared with Python's reference. Bad values are refused with errors that
say what and why, before anything is attached. Rules written through the
calls are judged by the real socket hooks: a worker in a cgroup of its own,
in a network namespace whose only interface is down, connects to
destinations chosen on either side of each rule's edge.
"""

from __future__ import annotations

import errno
import os
from contextlib import contextmanager

import pytest
from hypothesis import given
from hypothesis import strategies as st

from helpers import SOCKET_WORKER, socket_errnos, worker_in_a_cgroup
from runtimeguard import environment, hostnames
from runtimeguard._native import ffi, lib
from runtimeguard.errors import BPFError, TracerStateError
from runtimeguard.tracer import Tracer

TCP, UDP, ANY = lib.RG_GUARD_PROTO_TCP, lib.RG_GUARD_PROTO_UDP, lib.RG_GUARD_PROTO_ANY
DENY, ALLOW = lib.RG_NET_DENY, lib.RG_NET_ALLOW
ALL_PORTS = (0, 65535)


class Checked(Exception):
    """Raised by a before_attach check that passed: nothing gets attached."""


# ---- the host-name hash: one definition, C and Python agree ----

def c_name_hash(text: bytes) -> int:
    return lib.rg_host_name_hash(text, len(text))


host_label = st.text("abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=63)
host_names = st.lists(host_label, min_size=1, max_size=6).map(".".join)


@given(st.one_of(st.text(max_size=300), host_names, host_names.map("*.{}".format)))
def test_c_and_python_name_hashes_agree(text):
    # Any text (NULs included: C hashes the length it is given), host names and globs.
    assert c_name_hash(text.encode()) == hostnames.name_hash(text)


def test_calls_need_a_loaded_tracer():
    with pytest.raises(TracerStateError, match="not loaded"):
        Tracer(events=["process_exec"]).guard_trust_dns_server("192.0.2.53")


# ---- refusals, before anything is attached ----

@contextmanager
def guard_cgroup():
    """A fresh, empty cgroup and a descriptor of it for the guard's hooks."""
    path = os.path.join(environment.cgroup2_mount(), f"rg-maps-{os.getpid()}")
    os.mkdir(path)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield path, fd
    finally:
        os.close(fd)
        os.rmdir(path)


def refused(call, *args, errno_: int, says: str) -> None:
    with pytest.raises(BPFError, match=says) as e:
        call(*args)
    assert e.value.errno == errno_, str(e.value)


@pytest.mark.root
def test_bad_values_are_refused_with_what_and_why():
    def check(t: Tracer) -> None:
        refused(t.guard_address_rule, 0, "10.0.0.300", 8, ALL_PORTS, TCP, DENY, 0,
                errno_=errno.EINVAL, says=r"network rule 0: 10\.0\.0\.300 is not an IPv4 or IPv6 address")
        refused(t.guard_address_rule, 1, "10.0.0.0", 33, ALL_PORTS, TCP, DENY, 0,
                errno_=errno.EINVAL, says=r"prefix /33 is longer than an IPv4 address's 32 bits")
        refused(t.guard_address_rule, 1, "2001:db8::", 129, ALL_PORTS, TCP, DENY, 0,
                errno_=errno.EINVAL, says=r"prefix /129 is longer than an IPv6 address's 128 bits")
        refused(t.guard_address_rule, 2, "10.0.0.0", 8, (80, 79), TCP, DENY, 0,
                errno_=errno.EINVAL, says=r"ports 80-79 are not a range")
        refused(t.guard_address_rule, 2, "10.0.0.0", 8, (0, 65536), TCP, DENY, 0,
                errno_=errno.EINVAL, says=r"ports 0-65536 are not a range within 0-65535")
        refused(t.guard_address_rule, 2, "10.0.0.0", 8, ALL_PORTS, 7, DENY, 0,
                errno_=errno.EINVAL, says=r"protocol 7 is not one of RG_GUARD_PROTO_ANY")
        refused(t.guard_address_rule, 2, "10.0.0.0", 8, ALL_PORTS, TCP, 0, 0,
                errno_=errno.EINVAL, says=r"action 0 is neither RG_NET_ALLOW nor RG_NET_DENY")
        refused(t.guard_address_rule, lib.RG_MAX_NET_RULES, "10.0.0.0", 8, ALL_PORTS, TCP, DENY, 0,
                errno_=errno.E2BIG, says=rf"network rule {lib.RG_MAX_NET_RULES}: the guard holds at most")
        refused(t.guard_host_rule, 3, "never.added.test", ALL_PORTS, TCP, DENY, 0,
                errno_=errno.ENOENT, says=r"host pattern never\.added\.test was not added first")
        for pattern, why in [("API.example.com", "upper case"), ("a..b", "an empty label"),
                             ("example.com.", "an empty label"), ("", "empty"), ("*", "a '\\*' that is not"),
                             ("a.*.b", "a '\\*' that is not"), ("exa mple.com", "a byte other than"),
                             ("x" * 64 + ".com", "a label longer than 63 bytes"),
                             (".".join(["abcdefg"] * 32), "longer than 253 bytes")]:
            refused(t.guard_host_pattern, pattern, 0, errno_=errno.EINVAL, says=f"host pattern .*: {why}")
        refused(t.guard_host_pattern, "ok.test", lib.RG_HOST_PATTERNS, errno_=errno.E2BIG,
                says=rf"bit {lib.RG_HOST_PATTERNS}; the guard holds at most {lib.RG_HOST_PATTERNS} patterns")
        refused(t.guard_trust_dns_server, "dns.example", errno_=errno.EINVAL,
                says=r"DNS server dns\.example is not an IPv4 or IPv6 address")
        refused(t.guard_allow_resolved, "192.0.2.1", 1, "", 60, errno_=errno.EINVAL,
                says=r"the name must be 1 to 255 bytes, not 0")
        refused(t.guard_allow_resolved, "192.0.2.1", 0, "a.test", 60, errno_=errno.EINVAL,
                says=r"no host pattern to open it to")
        refused(t.guard_allow_resolved, "fe80::1%eth0", 1, "a.test", 60, errno_=errno.EINVAL,
                says=r"resolved address fe80::1%eth0 is not an IPv4 or IPv6 address")
        refused(t.guard_protect_inode, os.makedev(8, 1), 12, 9, 0, False, errno_=errno.EINVAL,
                says=r"inode 12 on 8:1: kind 9 is neither RG_PROTECT_FILE nor RG_PROTECT_MIRAGE")
        refused(t.guard_protect_pid, 0, 0, errno_=errno.EINVAL, says=r"protected pid 0 is no process")
        cfg = ffi.new("struct rg_guard_config *", {"mode": 5})
        refused(t.guard_configure, cfg, errno_=errno.EINVAL, says=r"guard mode 5 is neither")
        cfg = ffi.new("struct rg_guard_config *", {"net_rule_count": lib.RG_MAX_NET_RULES + 1})
        refused(t.guard_configure, cfg, errno_=errno.E2BIG,
                says=rf"{lib.RG_MAX_NET_RULES + 1} network rules; the guard holds at most")
        raise Checked

    with guard_cgroup() as (_, fd), pytest.raises(Checked):
        Tracer(events=["process_exec"], guard_cgroup_fd=fd, before_attach=check).start()


@pytest.mark.root
def test_calls_refuse_a_tracer_without_the_guard():
    def check(t: Tracer) -> None:
        refused(t.guard_trust_dns_server, "192.0.2.53", errno_=errno.EOPNOTSUPP, says=r"the guard is not loaded")
        assert_no_name = pytest.raises(BPFError, match="the guard is not loaded")
        with assert_no_name:
            t.guard_answered_name(hostnames.name_hash("a.test"))
        raise Checked

    with pytest.raises(Checked):
        Tracer(events=["process_exec"], before_attach=check).start()


@pytest.mark.root
def test_an_opened_address_keeps_its_name_under_the_name_hash():
    def check(t: Tracer) -> None:
        assert t.guard_answered_name(hostnames.name_hash("ptr.example.test")) is None
        t.guard_allow_resolved("::ffff:192.0.2.7", 1, "ptr.example.test", 60)
        assert t.guard_answered_name(hostnames.name_hash("ptr.example.test")) == "ptr.example.test"
        raise Checked

    with guard_cgroup() as (_, fd), pytest.raises(Checked):
        Tracer(events=["process_exec"], guard_cgroup_fd=fd, before_attach=check).start()


# ---- rules as the socket hooks judge them ----

def refused_connects(proc, queries: list[tuple[str, str, int]]) -> list[bool]:
    """Whether the hooks refused each (protocol, address, port) connect (EPERM)."""
    answers = socket_errnos(proc, [("connect", address, port, protocol) for protocol, address, port in queries])
    return [answer == errno.EPERM for answer in answers]


@contextmanager
def guard_with(cgroup: str, write_rules):
    """A guard on cgroup in enforce mode, allowing what no rule denies and
    reading DNS answers, its rules written by write_rules(tracer), which
    returns how many."""
    root = environment.cgroup2_mount()

    def fill(t: Tracer) -> None:
        count = write_rules(t)
        t.guard_configure(ffi.new("struct rg_guard_config *", {
            "mode": lib.RG_MODE_ENFORCE, "net_rule_count": count, "scope_cgroup_id": os.stat(cgroup).st_ino,
            "scope_cgroup_level": os.path.relpath(cgroup, root).count("/") + 1, "guard_tgid": os.getpid(),
            "dns_observe": 1}))

    fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        with Tracer(events=["process_exec"], cgroups=[cgroup], guard_cgroup_fd=fd, before_attach=fill) as t:
            yield t
    finally:
        os.close(fd)


@pytest.mark.root
def test_rules_written_in_policy_terms_are_judged_as_meant():
    def write_rules(t: Tracer) -> int:
        # An IPv4-mapped network is the IPv4 one it carries: the hooks see
        # ::ffff:a.b.c.d as a.b.c.d.
        t.guard_address_rule(0, "::ffff:127.0.1.0", 120, ALL_PORTS, TCP, DENY, 0)
        # Not within the mapped range: an IPv6 network (::/80), which
        # mapped destinations, seen as IPv4, never meet.
        t.guard_address_rule(1, "::ffff:0.0.0.0", 80, (9, 9), UDP, DENY, 1)
        # Bits past the prefix are ignored.
        t.guard_address_rule(2, "127.0.3.255", 24, (1000, 2000), ANY, DENY, 2)
        t.guard_host_pattern("*.blocked.test", 0)
        t.guard_host_rule(3, "*.blocked.test", ALL_PORTS, TCP, DENY, 3)
        return 4

    with worker_in_a_cgroup(SOCKET_WORKER, ["unshare", "--net"]) as (cgroup, proc), guard_with(cgroup, write_rules) as t:
        expected = {
            ("tcp", "127.0.1.5", 80): True,
            ("tcp", "::ffff:127.0.1.5", 80): True,
            ("udp", "127.0.1.5", 80): False,   # TCP only
            ("tcp", "127.0.2.5", 80): False,   # outside the /24
            ("udp", "127.0.2.5", 9): False,    # the IPv6 rule
            ("udp", "::ffff:127.0.2.5", 9): False,
            ("udp", "::1", 9): True,
            ("udp", "::1", 10): False,
            ("udp", "127.0.3.9", 1000): True,
            ("tcp", "127.0.3.9", 2000): True,
            ("tcp", "127.0.3.9", 2001): False,
            ("tcp", "127.0.5.7", 443): False,  # not answered for a blocked name yet
        }
        assert dict(zip(expected, refused_connects(proc, list(expected)))) == expected
        t.guard_allow_resolved("::ffff:127.0.5.7", 1, "api.blocked.test", 60)
        assert refused_connects(proc, [("tcp", "127.0.5.7", 443), ("tcp", "127.0.5.8", 443)]) == [True, False]
