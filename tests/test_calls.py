"""Function probes on the real kernel: uprobes by symbol, kernel-counted call
paths with build-id stacks symbolized after the process exited, stable
hashes, the token bucket, USDT, and TLS plaintext with secrets redacted."""

from __future__ import annotations

import hashlib
import os
import socket
import ssl
import subprocess
import sys
import threading

import pytest

from helpers import compiled
from runtimeguard.calls import CallTracer, parse, usdt_notes
from runtimeguard.errors import ProbeError

PYTHON_WITH_USDT = "/usr/bin/python3.11"


@pytest.fixture(scope="module")
def chains(tmp_path_factory):
    """The test program, built with frame pointers and no inlining."""
    return compiled(tmp_path_factory.mktemp("calls"), "call_chains.c", "-O0", "-g", "-fno-omit-frame-pointer",
                    "-fno-inline")


def _run(tracer: CallTracer, argv) -> list:
    calls = []
    assert tracer.run(argv, on_call=calls.append) == 0
    return calls


@pytest.mark.root
def test_known_chains_give_exactly_their_paths_and_counts(chains):
    tracer = CallTracer([f"{chains}:target"])
    calls = _run(tracer, [chains, "3", "2"])
    # Read after the process exited (run() waits for it and closes the tracer).
    paths = tracer.call_paths()
    assert sorted((p.symbols, p.count) for p in paths) == [
        (["main", "a", "b", "target"], 3),
        (["main", "c", "target"], 2),
    ]
    assert len(calls) == 5
    for p in paths:
        assert p.frames[-1].binary == chains and p.frames[-1].function_offset == 0
        assert p.binary_digests[chains] == hashlib.sha256(open(chains, "rb").read()).hexdigest()
        assert p.first_seen <= p.last_seen
        assert len(p.node_hashes) == len(p.symbols) and p.path_hash.startswith("sha256:")
    stats = tracer.statistics()
    assert stats.unique_call_paths == 2 and stats.dropped_events == 0
    (summary,) = tracer.summaries()
    assert summary.container_id is None and summary.total_events == 5 and summary.call_paths == 2
    assert summary.observed_symbols == ["a", "b", "c", "main", "target"]
    assert summary.detected_runtimes == ["native"]
    assert summary.observed_path_hashes == sorted(p.path_hash for p in paths)
    assert summary.combined_hash == "sha256:" + hashlib.sha256(
        "\n".join(["runtimeguard-summary-v1", *summary.observed_path_hashes]).encode()).hexdigest()
    assert summary.started <= min(p.first_seen for p in paths) <= max(p.last_seen for p in paths) <= summary.stopped


@pytest.mark.root
def test_run_scopes_the_probes_to_the_command(chains):
    # Calls the same function all through the traced run, from outside its cgroup.
    outside = subprocess.Popen(["sh", "-c", f"for i in $(seq 60); do {chains} 1 1 >/dev/null; sleep 0.05; done"])
    try:
        tracer = CallTracer([f"{chains}:target"], records=False)
        _run(tracer, ["sh", "-c", f"sleep 1; {chains} 2 0"])
    finally:
        outside.wait()
    assert [(p.symbols, p.count) for p in tracer.call_paths()] == [(["main", "a", "b", "target"], 2)]


@pytest.mark.root
def test_doctor_measures_the_stacks_a_uprobe_gets():
    from runtimeguard.calls.tracer import user_stack_mode

    mode, why = user_stack_mode()
    assert mode in ("build_id", "address"), why  # this kernel gives stacks in uprobes


@pytest.mark.root
def test_hashes_are_stable_across_runs_and_follow_their_documented_form(chains):
    runs = []
    for _ in range(2):
        tracer = CallTracer([f"{chains}:target"], records=False)
        _run(tracer, [chains, "2", "1"])
        runs.append({tuple(p.symbols): p for p in tracer.call_paths()})
    assert runs[0].keys() == runs[1].keys()
    for symbols, first in runs[0].items():
        second = runs[1][symbols]
        assert (first.node_hashes, first.path_hash, first.callstack_hash) == \
            (second.node_hashes, second.path_hash, second.callstack_hash)
    sha = hashlib.sha256(open(chains, "rb").read()).hexdigest()
    purl = f"pkg:generic/{os.path.basename(chains)}?checksum=sha256:{sha}"
    by_hand = "sha256:" + hashlib.sha256(f"runtimeguard-node-v1\n{purl}\ntarget".encode()).hexdigest()
    path = runs[0][("main", "c", "target")]
    assert path.node_hashes[-1] == by_hand
    assert path.path_hash == "sha256:" + hashlib.sha256(
        "\n".join(["runtimeguard-path-v1", *path.node_hashes]).encode()).hexdigest()


@pytest.mark.root
def test_call_records_carry_the_symbolized_stack(chains):
    tracer = CallTracer([f"{chains}:target"], returns=True)
    calls = _run(tracer, [chains, "1", "0"])
    entry = [c for c in calls if c.phase == "entry"]
    ret = [c for c in calls if c.phase == "return"]
    assert len(entry) == 1 and len(ret) == 1
    e = entry[0]
    assert [f.function for f in e.user_stack][:4] == ["target", "b", "a", "main"]
    assert e.symbol == "target" and e.library == chains and e.runtime == "native"
    assert e.arguments[0] == 0  # target(0)
    assert ret[0].result == 1  # target(0) returns 1
    assert e.function_address & 0xfff == e.binary_offset & 0xfff  # same page offset: the function's own address
    # The record's stack hashes as its call path does.
    path = next(p for p in tracer.call_paths() if p.phase == "entry")
    assert e.callstack_hash == path.callstack_hash


@pytest.mark.root
def test_the_token_bucket_limits_records_while_the_kernel_counts_every_call(chains):
    tracer = CallTracer([f"{chains}:target"], rate=50, burst=5)
    calls = _run(tracer, [chains, "0", "0", "20000"])
    paths = tracer.call_paths()
    assert sum(p.count for p in paths) == 20000
    stats = tracer.statistics()
    assert 5 <= len(calls) < 200
    assert stats.limited == 20000 - len(calls)
    assert stats.events_per_second > 0 and stats.kernel_memory_bytes > 0
    assert stats.probe_runs >= 20000 and stats.probe_run_time_ns > 0 and stats.cpu_overhead_percent > 0


@pytest.mark.root
@pytest.mark.skipif(not os.path.exists(PYTHON_WITH_USDT), reason="Debian's python3.11 (with USDT notes) is absent")
def test_python_function_names_through_usdt():
    assert any(n.provider == "python" and n.name == "function__entry" for n in usdt_notes(PYTHON_WITH_USDT))
    tracer = CallTracer([f"usdt:{PYTHON_WITH_USDT}:python:function__entry"])
    # CPython 3.11 fires function__entry only while a profile or trace hook
    # is set (its eval loop checks the probe's semaphore under use_tracing).
    code = ("import sys\nsys.setprofile(lambda *a: None)\n"
            "def runtimeguard_probe_marker():\n    return 1\nruntimeguard_probe_marker()\n")
    calls = _run(tracer, [PYTHON_WITH_USDT, "-S", "-c", code])
    names = {tuple(c.usdt_strings) for c in calls}
    assert ("<string>", "runtimeguard_probe_marker") in names
    assert all(c.runtime == "python" for c in calls)


def _self_signed(tmp_path):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=localhost"], check=True, capture_output=True)
    return str(cert), str(key)


@pytest.mark.root
def test_tls_plaintext_is_seen_before_encryption_with_the_secret_redacted(tmp_path):
    cert, key = _self_signed(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    received = []

    def serve():
        conn, _ = listener.accept()
        with context.wrap_socket(conn, server_side=True) as tls:
            received.append(tls.recv(4096))
            tls.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 12\r\n\r\nserver-reply")

    server = threading.Thread(target=serve)
    server.start()
    secret = "sk-test-" + os.urandom(12).hex()
    client = (
        "import os, socket, ssl\n"
        f"ctx = ssl.create_default_context(cafile={cert!r})\n"
        f"s = ctx.wrap_socket(socket.create_connection(('127.0.0.1', {port})), server_hostname='localhost')\n"
        "s.sendall(b'POST /v1/known-marker HTTP/1.1\\r\\nAuthorization: Bearer ' + "
        "os.environ['OPENAI_API_KEY'].encode() + b'\\r\\n\\r\\n')\n"
        "print(s.recv(4096))\n")
    os.environ["OPENAI_API_KEY"] = secret
    try:
        tracer = CallTracer(tls=True, plaintext=512, redact_env=["OPENAI_API_KEY"])
        calls = _run(tracer, [sys.executable, "-c", client])
    finally:
        del os.environ["OPENAI_API_KEY"]
        server.join(5)
        listener.close()
    assert secret.encode() in received[0]  # it really went over the wire
    written = [c for c in calls if c.symbol.startswith("SSL_write") and c.plaintext]
    read = [c for c in calls if c.symbol.startswith("SSL_read") and c.phase == "return" and c.plaintext]
    assert any(b"POST /v1/known-marker" in c.plaintext for c in written)
    assert any(b"[REDACTED:OPENAI_API_KEY]" in c.plaintext and c.redactions == 1 for c in written)
    assert not any(secret.encode() in (c.plaintext or b"") for c in calls)
    assert any(b"server-reply" in c.plaintext for c in read)


def test_a_secret_cut_by_the_capture_is_redacted_too(tmp_path):
    from runtimeguard.calls.redact import Redactor

    r = Redactor(["*_TOKEN"], [r"Bearer [A-Za-z0-9]+"], environ={"GH_TOKEN": "ghp_abcdefghij", "HOME": "/root"})
    assert r.redact(b"x=ghp_abcdefghij;") == (b"x=[REDACTED:GH_TOKEN];", 1)
    assert r.redact(b"token ghp_abcd", truncated=True) == (b"token [REDACTED:GH_TOKEN]", 1)
    assert r.redact(b"Authorization: Bearer abc123") == (b"Authorization: [REDACTED]", 1)
    assert r.redact(b"/root is home") == (b"/root is home", 0)


def test_bad_probes_are_refused_before_anything_loads(chains):
    with pytest.raises(ProbeError, match="no such file"):
        parse("/nonexistent/app:main")
    with pytest.raises(ProbeError, match="targett.*target|target.*targett"):
        parse(f"{chains}:targett")
    with pytest.raises(ProbeError, match="no USDT notes"):
        parse(f"usdt:{chains}:python:function__entry")
    with pytest.raises(ProbeError, match="expected BINARY:SYMBOL"):
        parse("justaname")
    with pytest.raises(ProbeError, match="not found"):
        parse("libdoesnotexist.so.9:f")
    if os.path.exists(PYTHON_WITH_USDT):
        with pytest.raises(ProbeError, match="function__entry"):
            parse(f"usdt:{PYTHON_WITH_USDT}:python:function__entri")


def test_a_library_probe_resolves_by_soname():
    probe = parse("libssl.so.3:SSL_write")
    assert probe.path.endswith("libssl.so.3") and probe.offset > 0
    out = subprocess.run(["readelf", "-sW", "--dyn-syms", probe.path], capture_output=True, text=True).stdout
    assert any(line.split()[-1].startswith("SSL_write@@") for line in out.splitlines() if line.strip())


@pytest.mark.root
def test_the_calls_command_runs_a_command_and_reports_its_paths(chains):
    import json

    out = subprocess.run([sys.executable, "-m", "runtimeguard", "calls", "--probe", f"{chains}:target", "--json",
                          "--", chains, "2", "1"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    kinds = [line["type"] for line in lines]
    assert kinds.count("call") == 3 and kinds.count("summary") == 1 and kinds[-1] == "statistics"
    paths = sorted((p["symbols"], p["count"]) for p in lines if p["type"] == "call_path")
    assert paths == [(["main", "a", "b", "target"], 2), (["main", "c", "target"], 1)]
    table = subprocess.run([sys.executable, "-m", "runtimeguard", "calls", "--probe", f"{chains}:target", "--",
                            chains, "1", "0"], capture_output=True, text=True, timeout=120)
    assert table.returncode == 0 and "main -> a -> b -> target" in table.stderr
    bad = subprocess.run([sys.executable, "-m", "runtimeguard", "calls", "--probe", f"{chains}:targt", "--", chains],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and bad.stderr.startswith("runtimeguard: ") and "target" in bad.stderr


from hypothesis import given, settings, strategies as st  # noqa: E402


@settings(max_examples=300, deadline=None)
@given(before=st.binary(max_size=64), after=st.binary(max_size=64),
       secret=st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=6, max_size=40),
       cut=st.integers(min_value=0, max_value=200))
def test_redaction_never_lets_a_secret_or_its_cut_start_through(before, after, secret, cut):
    from runtimeguard.calls.redact import Redactor

    r = Redactor(["API_KEY"], environ={"API_KEY": secret})
    whole = before + secret.encode() + after
    captured = whole[:cut]
    out, _ = r.redact(captured, truncated=len(captured) < len(whole))
    assert secret.encode() not in out
    visible = min(len(secret), max(0, cut - len(before)))
    if 4 <= visible < len(secret):
        # The capture ended inside the secret: its start is gone too.
        assert not out.endswith(secret.encode()[:visible])
