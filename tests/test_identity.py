"""Machine identity: which configured environment variable names a process
holds (found by the kernel at exec; values never leave it) and which argv
patterns its arguments hold. Real execs, checked against the environment
and arguments the test gave them."""

from __future__ import annotations

import fnmatch
import random
import secrets
import socket
import sys
import textwrap
import threading

import msgspec
import pytest

from runtimeguard import Tracer
from runtimeguard.schema import json_encoder
from helpers import drain
from test_event_model import cgroup, run_in  # noqa: F401,F811 (a fixture, and the way into it)

BASE_ENV = {"PATH": "/usr/bin:/bin"}


@pytest.fixture
def listener():
    """A loopback HTTP stand-in: answers every request with 200."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)

    def serve():
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn:
                conn.recv(4096)
                conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield srv.getsockname()[1]
    srv.shutdown(socket.SHUT_RDWR)  # wakes the accept() (a close alone does not)
    srv.close()
    thread.join(timeout=5)
    assert not thread.is_alive()


def curl_events(events, marker: str):
    """(the exec, its connects) of the curl whose URL ends in marker."""
    execs = [ev for ev in events if ev.name == "process_exec" and ev.data.return_code == 0
             and ev.data.argv and ev.data.argv[-1].endswith(marker)]
    assert len(execs) == 1, [ev.data.argv for ev in execs]
    connects = [ev for ev in events if ev.name == "net_connect" and ev.pid == execs[0].pid]
    return execs[0], connects


@pytest.mark.root
def test_the_documented_example(cgroup, listener):
    url = f"http://127.0.0.1:{listener}"
    with Tracer(events=["process_exec", "net_connect"], cgroups=[cgroup],
                identity_env=["OPENAI_API_KEY"], identity_argv=["openai"]) as t:
        run_in(cgroup, ["curl", "-s", f"{url}/with-key"], env=dict(BASE_ENV, OPENAI_API_KEY="x"))
        run_in(cgroup, ["curl", "-s", f"{url}/look-alike"], env=dict(BASE_ENV, CLOSEDAI_API_KEY="x"))
        run_in(cgroup, ["curl", "-s", f"{url}/openai"], env=BASE_ENV)
        events = drain(t)
    with_key, connects = curl_events(events, "/with-key")
    assert with_key.data.identities == ["env:OPENAI_API_KEY"]
    # Every event of the process shows them.
    assert connects and all(ev.workload.process.identities == ["env:OPENAI_API_KEY"] for ev in connects)
    look_alike, connects = curl_events(events, "/look-alike")
    assert look_alike.data.identities == []
    assert connects and all(ev.workload.process.identities == [] for ev in connects)
    by_argv, connects = curl_events(events, "/openai")
    assert by_argv.data.identities == ["argv:openai"]
    assert connects and all(ev.workload.process.identities == ["argv:openai"] for ev in connects)


PATTERNS = ["OPENAI_API_KEY", "AWS_*", "*_TOKEN"]


@pytest.mark.root
@pytest.mark.parametrize("name, expected", [
    ("OPENAI_API_KEY", ["env:OPENAI_API_KEY"]),
    ("OPENAI_API_KEY_2", []),
    ("OPENAI_API_KE", []),
    ("XOPENAI_API_KEY", []),
    ("AWS_SECRET_ACCESS_KEY", ["env:AWS_*"]),
    ("AWS_", ["env:AWS_*"]),
    ("MY_AWS_KEY", []),
    ("AWS", []),
    ("GH_TOKEN", ["env:*_TOKEN"]),
    ("_TOKEN", ["env:*_TOKEN"]),
    ("GH_TOKENS", []),
    ("TOKEN", []),
    ("AWS_SESSION_TOKEN", ["env:AWS_*", "env:*_TOKEN"]),
])
def test_names_prefixes_and_suffixes(cgroup, name, expected):
    with Tracer(events=["process_exec"], cgroups=[cgroup], identity_env=PATTERNS) as t:
        run_in(cgroup, ["/bin/true", "rg-identity"], env=dict(BASE_ENV, **{name: "v"}))
        events = drain(t)
    (ev,) = [e for e in events if e.name == "process_exec" and e.data.argv == ["/bin/true", "rg-identity"]]
    assert ev.data.identities == expected
    assert not ev.data.environment_scan_truncated


@pytest.mark.root
def test_a_name_after_long_values_is_found_and_no_value_leaves_the_kernel(cgroup):
    secret = "sk-" + secrets.token_hex(16)
    env = dict(BASE_ENV, A_LONG="a" * 3000, B_EXACT_CHUNK="b" * 500, OPENAI_API_KEY=secret, Z="z" * 1500)
    with Tracer(events=["process_exec"], cgroups=[cgroup], identity_env=["OPENAI_API_KEY"]) as t:
        run_in(cgroup, ["/bin/true", "rg-long-values"], env=env)
        events = drain(t)
    (ev,) = [e for e in events if e.name == "process_exec" and e.data.argv[-1:] == ["rg-long-values"]]
    assert ev.data.identities == ["env:OPENAI_API_KEY"]
    line = json_encoder.encode(ev.record())
    assert secret.encode() not in line and secret.encode() not in msgspec.msgpack.encode(ev.record())


@pytest.mark.root
def test_an_environment_past_the_scan_says_so(cgroup):
    filler = {f"F{i:04d}": "f" * 100 for i in range(400)}  # about 42 KiB
    with Tracer(events=["process_exec"], cgroups=[cgroup], identity_env=["OPENAI_API_KEY"]) as t:
        # Environment order is the dict's: the key first, then after the filler.
        run_in(cgroup, ["/bin/true", "rg-key-first"], env={"OPENAI_API_KEY": "x", **filler, **BASE_ENV})
        run_in(cgroup, ["/bin/true", "rg-key-last"], env={**BASE_ENV, **filler, "OPENAI_API_KEY": "x"})
        events = drain(t)
    execs = {e.data.argv[-1]: e for e in events if e.name == "process_exec" and e.data.argv[0] == "/bin/true"}
    assert execs["rg-key-first"].data.identities == ["env:OPENAI_API_KEY"]
    assert execs["rg-key-first"].data.environment_scan_truncated
    assert execs["rg-key-last"].data.identities == []
    assert execs["rg-key-last"].data.environment_scan_truncated


FORK_AND_CONNECT = textwrap.dedent("""
    import os, socket, sys
    pid = os.fork()
    if pid == 0:
        s = socket.socket()
        try:
            s.connect(("127.0.0.1", int(sys.argv[1])))
        finally:
            s.close()
        os._exit(0)
    os.waitpid(pid, 0)
    print(pid)
""")


@pytest.mark.root
def test_a_forked_child_holds_its_parents_identities(cgroup, listener):
    with Tracer(events=["process_exec", "net_connect"], cgroups=[cgroup], identity_env=["*_API_KEY"]) as t:
        out = run_in(cgroup, [sys.executable, "-c", FORK_AND_CONNECT, str(listener)], text=True,
                     env=dict(BASE_ENV, ANTHROPIC_API_KEY="x"))
        events = drain(t)
    child = int(out.stdout.split()[0])
    (connect,) = [e for e in events if e.name == "net_connect" and e.pid == child]
    assert connect.workload.process.identities == ["env:*_API_KEY"]
    assert connect.workload.process.pid == child


@pytest.mark.parametrize("option, pattern, why", [
    ("identity_env", "A*B", "one '*'"),
    ("identity_env", "*", "one '*'"),
    ("identity_env", "A=B", "no '='"),
    ("identity_env", "", "non-empty"),
    ("identity_env", "X" * 33 + "*", "longer than 32 bytes"),
    ("identity_env", "X" * 129, "longer than 128 bytes"),
    ("identity_argv", "", "non-empty"),
    ("identity_argv", "y" * 129, "longer than 128 bytes"),
])
def test_bad_patterns_are_refused_before_anything_loads(option, pattern, why):
    with pytest.raises(ValueError, match=why) as caught:
        Tracer(events=["process_exec"], **{option: [pattern]})
    assert option in str(caught.value)


# ---- the kernel's matching against a reference, on random names ----

# A small alphabet, so random names often share prefixes and suffixes with
# the patterns (and often just miss them).
NAME_CHARS = "ABK_1"


def reference(patterns: list[str], env: dict[str, str]) -> list[str]:
    """The patterns any name of env matches."""
    return [f"env:{p}" for p in patterns if any(fnmatch.fnmatchcase(name, p) for name in env)]


@pytest.mark.root
def test_the_kernel_matches_as_the_patterns_say(cgroup):
    rng = random.Random(20261201)

    def word(low, high):
        return "".join(rng.choice(NAME_CHARS) for _ in range(rng.randint(low, high)))

    patterns = list(dict.fromkeys([word(1, 6) for _ in range(8)] + [word(1, 4) + "*" for _ in range(8)]
                                  + ["*" + word(1, 4) for _ in range(8)]))
    cases = []
    for i in range(60):
        # Names near the patterns: a pattern's text, cut, extended or mutated.
        names = set()
        for _ in range(rng.randint(1, 12)):
            base = rng.choice(patterns).strip("*")
            names.add(rng.choice([base, base[:-1], base + word(1, 3), word(1, 3) + base, word(1, 8)]) or "A")
        cases.append((f"rg-match-{i}", {n: "v" * rng.randint(0, 700) for n in names}))
    with Tracer(events=["process_exec"], cgroups=[cgroup], identity_env=patterns) as t:
        for marker, env in cases:
            run_in(cgroup, ["/bin/true", marker], env=dict(BASE_ENV, **env))
        events = drain(t)
    found = {e.data.argv[-1]: e.data.identities for e in events
             if e.name == "process_exec" and e.data.argv[0] == "/bin/true"}
    assert len(found) == len(cases)
    for marker, env in cases:
        assert set(found[marker]) == set(reference(patterns, dict(BASE_ENV, **env))), (marker, sorted(env))
    # Not all misses, nor all hits: (case, pattern) pairs of both kinds.
    hits, pairs = sum(len(identities) for identities in found.values()), len(cases) * len(patterns)
    assert pairs // 20 < hits < pairs - pairs // 20
