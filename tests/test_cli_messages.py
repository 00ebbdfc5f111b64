"""Every message of the runtimeguard command says "runtimeguard:" once, then
what went wrong and why: usage mistakes, bad input, missing files and
privileges, interruptions. The command runs as a real subprocess."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import ROOT, unprivileged_env
from runtimeguard.cli import EXIT_INTERRUPTED, EXIT_TERMINATED, _LogFormatter

CLI = [sys.executable, "-m", "runtimeguard"]
PREFIX = "runtimeguard:"


def cli(*args: str, prefix=(), timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([*prefix, *CLI, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env=unprivileged_env() if prefix else None)


def said_once(stderr: str) -> list[str]:
    """stderr's lines, each checked to carry the prefix exactly once, at its start."""
    assert "Traceback" not in stderr, stderr
    lines = stderr.splitlines()
    assert lines, "nothing on stderr"
    for line in lines:
        assert line.startswith(PREFIX + " ") and line.count(PREFIX) == 1, stderr
        # Not "runtimeguard: runtimeguard needs ...": the text after the prefix is the message itself.
        assert not line.removeprefix(PREFIX).lstrip().lower().startswith("runtimeguard"), stderr
    return lines


def one_line(result: subprocess.CompletedProcess, status: int) -> str:
    assert result.returncode == status, (result.returncode, result.stderr)
    (line,) = said_once(result.stderr)
    return line.removeprefix(PREFIX + " ")


# ---- usage: argparse's mistakes, in the command's own form ----

USAGE = [
    ((), "the following arguments are required: COMMAND (see runtimeguard --help)"),
    (("bogus",), "COMMAND: invalid choice: 'bogus'"),
    (("trace", "--events", "bogus"), "trace --events: unknown event(s) bogus; known: process_exec"),
    (("trace", "--events", ","), "trace --events: unknown event(s) (none given)"),
    (("trace", "--pid", "-5"), "trace --pid: not a process id: '-5' (1 to 4194304)"),
    (("watch", "--pid", "abc"), "watch --pid: not a process id: 'abc'"),
    (("calls", "--pid", "99999999", "--tls"), "calls --pid: not a process id: '99999999'"),
    (("trace", "--metrics-port", "70000"), "trace --metrics-port: not a port: '70000' (0 to 65535"),
    (("trace", "--ring-buffer-size", "5Q"), "trace --ring-buffer-size: not a size: '5Q'"),
    (("trace", "--ring-buffer-size", "0"), "trace --ring-buffer-size: not a size: '0'"),
    (("trace", "--ring-buffer-size", "5000"), "trace --ring-buffer-size: not a power of two of at least 4096: '5000'"),
    (("watch", "--ring-buffer-size", "1k"), "watch --ring-buffer-size: not a power of two of at least 4096: '1k'"),
    (("trace", "--max-latency-ms", "-1"), "trace --max-latency-ms: not a latency: '-1' (1 to 10000 ms)"),
    (("trace", "--max-latency-ms", "soon"), "trace --max-latency-ms: not a latency: 'soon'"),
    (("trace", "--otlp-endpoint", "notaurl"), "trace --otlp-endpoint: not an http:// or https:// URL: 'notaurl'"),
    (("trace", "--duration", "-1"), "trace --duration: not a duration: '-1' (seconds, more than 0)"),
    (("trace", "--duration", "nan"), "trace --duration: not a duration: 'nan'"),
    (("trace", "--otlp-header", "nope"), "trace --otlp-header: not a header: 'nope' (NAME=VALUE)"),
    (("calls", "--rate", "-1", "--tls"), "calls --rate: not a count: '-1' (0 or more)"),
    (("run", "--", "true"), "run: the following arguments are required: --policy (see runtimeguard run --help)"),
    (("run", "--policy", "p.yaml", "--audit-backups", "-2", "--", "true"), "run --audit-backups: not a count: '-2'"),
    (("run", "--policy", "p.yaml", "--audit-max-bytes", "0", "--", "true"), "run --audit-max-bytes: not a size: '0'"),
    (("run", "--policy", "p.yaml", "--audit-rotate-every", "0", "--", "true"), "run --audit-rotate-every: not a "
                                                                                "duration: '0'"),
    (("run", "--policy", "p.yaml", "--backend", "magic", "--", "true"), "run --backend: invalid choice: 'magic'"),
    (("demo", "--seconds", "-1"), "demo --seconds: not a duration: '-1'"),
    (("check-policy",), "check-policy: the following arguments are required: FILE"),
    (("doctor", "--jsn"), "unrecognized arguments: --jsn"),
]


@pytest.mark.parametrize("args, expected", USAGE, ids=[" ".join(a) or "(none)" for a, _ in USAGE])
def test_a_usage_mistake_is_one_line_naming_the_command_and_option(args, expected):
    line = one_line(cli(*args), 2)
    assert expected in line
    assert "error:" not in line and "usage:" not in line


# ---- bad input found before anything is loaded (no root needed) ----

@pytest.fixture
def policies(tmp_path):
    files = {
        "broken.yaml": "version: 1\nnetwork:\n  allow:\n    - host: [unclosed\n",
        "badmode.yaml": "version: 1\nmode: sometimes\n",
        "good.yaml": "version: 1\nmode: enforce\nnetwork:\n  deny: [{cidr: 127.0.0.2/32, ports: [9]}]\n",
        "rules.yaml": "version: 1\nrules:\n  reverse_shell:\n    severity: urgent\n",
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    return tmp_path


BAD_INPUT = [
    (("check-policy", "{dir}/broken.yaml"), "{dir}/broken.yaml: YAML syntax error at line "),
    (("check-policy", "{dir}/badmode.yaml"), "{dir}/badmode.yaml: mode: invalid value 'sometimes'"),
    (("check-policy", "{dir}/missing.yaml"), "{dir}/missing.yaml: cannot read the policy: No such file"),
    (("run", "--policy", "{dir}/broken.yaml", "--", "true"), "{dir}/broken.yaml: YAML syntax error"),
    (("run", "--policy", "{dir}/missing.yaml", "--", "true"), "cannot read the policy: No such file or directory"),
    (("run", "--policy", "{dir}/good.yaml"), "run: no command given"),
    (("run", "--policy", "{dir}/good.yaml", "--", "{dir}/no-such-binary"), "cannot run '{dir}/no-such-binary': "
                                                                           "no such file"),
    (("run", "--policy", "{dir}/good.yaml", "--", "no-such-command-rg"), "cannot run 'no-such-command-rg': not "
                                                                         "found in PATH"),
    (("run", "--policy", "{dir}/good.yaml", "--", "{dir}/good.yaml"), "cannot run '{dir}/good.yaml': not "
                                                                      "executable"),
    (("run", "--policy", "{dir}/good.yaml", "--", "{dir}"), "cannot run '{dir}': a directory"),
    (("watch", "--rules", "{dir}/rules.yaml"), "{dir}/rules.yaml, line 4: rules.reverse_shell.severity: "
                                                "invalid value 'urgent'"),
    (("watch", "--rules", "{dir}/missing.yaml"), "{dir}/missing.yaml: cannot read the tuning: No such file"),
    (("calls",), "calls: give at least one --probe BINARY:SYMBOL, or --tls"),
    (("calls", "--probe", "foo"), "probe 'foo': expected BINARY:SYMBOL"),
    (("calls", "--probe", "usdt:/bin/true:x"), "probe 'usdt:/bin/true:x': expected usdt:BINARY:PROVIDER:NAME"),
    (("calls", "--probe", "{dir}/no-such-binary:main"), "{dir}/no-such-binary: no such file"),
    (("calls", "--plaintext", "10", "--probe", "/bin/true:main"), "calls: --plaintext copies TLS buffers"),
    (("calls", "--tls", "--", "{dir}/no-such-binary"), "cannot run '{dir}/no-such-binary': no such file"),
    (("trace", "--cgroup", "/no/such/cgroup"), "cgroup '/no/such/cgroup': No such file or directory"),
]


@pytest.mark.parametrize("args, expected", BAD_INPUT, ids=[" ".join(a) for a, _ in BAD_INPUT])
def test_bad_input_is_one_line_saying_what_and_why(policies, args, expected):
    line = one_line(cli(*(a.format(dir=policies) for a in args)), 1)
    assert expected.format(dir=policies) in line


# ---- without root ----

# Readable by nobody, as the tree is (pytest's tmp_path is not).
EXAMPLE_POLICY = os.path.join(ROOT, "examples", "ci-job-policy.yaml")


@pytest.mark.parametrize("args", [
    ("trace", "--duration", "1"),
    ("watch", "--duration", "1"),
    ("demo", "--seconds", "1"),
    ("calls", "--tls", "--duration", "1"),
    ("run", "--policy", EXAMPLE_POLICY, "--", "true"),
], ids=lambda a: a[0])
def test_without_root_the_missing_privileges_are_named_once(unprivileged, args):
    line = one_line(cli(*args, prefix=unprivileged), 1)
    assert line.startswith("loading BPF programs needs ") and "CAP_SYS_ADMIN (run as root)" in line
    assert "effective capabilities are 0x" in line


# ---- library log lines ----

@pytest.mark.parametrize("logger, expected", [
    ("runtimeguard.detections", "runtimeguard: rule x raised"),
    ("opentelemetry.sdk._logs._internal.export", "runtimeguard: opentelemetry: rule x raised"),
    ("root", "runtimeguard: rule x raised"),
])
def test_library_log_lines_carry_the_prefix_once(logger, expected):
    record = logging.LogRecord(logger, logging.ERROR, __file__, 1, "rule %s raised", ("x",), None)
    assert _LogFormatter().format(record) == expected


# ---- with root: what happens once the programs are loaded ----

def policy_denying_port_9(tmp_path) -> str:
    path = tmp_path / "deny.yaml"
    path.write_text("version: 1\nmode: enforce\nnetwork:\n  deny: [{cidr: 127.0.0.2/32, ports: [9]}]\n")
    return str(path)


CONNECT_TO_PORT_9 = textwrap.dedent("""
    import socket
    for _ in range(2):
        try:
            socket.create_connection(("127.0.0.2", 9), timeout=2)
        except OSError:
            pass
""")


@pytest.mark.root
def test_a_decision_line_says_runtimeguard_once(tmp_path):
    result = cli("run", "--policy", policy_denying_port_9(tmp_path), "--", sys.executable, "-c", CONNECT_TO_PORT_9)
    assert result.returncode == 0, result.stderr
    lines = said_once(result.stderr)
    blocked = [line for line in lines if "BLOCKED connect_denied" in line]
    # Once per rule and target a minute: the second attempt is in the audit log only.
    assert len(blocked) == 1 and "127.0.0.2:9 (rule network.deny[0])" in blocked[0], result.stderr


@pytest.mark.root
def test_a_missing_audit_directory_is_one_line(tmp_path):
    missing = tmp_path / "no-such-dir" / "audit.ndjson"
    result = cli("run", "--policy", policy_denying_port_9(tmp_path), "--audit-log", str(missing), "--", "true")
    assert result.returncode == 1
    assert f"audit log {missing}: open failed: No such file or directory" in said_once(result.stderr)[-1]


@pytest.mark.root
def test_an_unknown_user_is_one_line(tmp_path):
    result = cli("run", "--policy", policy_denying_port_9(tmp_path), "--user", "no-such-user-rg", "--", "true")
    assert result.returncode == 1
    assert said_once(result.stderr)[-1] == "runtimeguard: run: no such user 'no-such-user-rg'"


@pytest.mark.root
def test_an_unreachable_otlp_collector_is_reported_with_the_prefix(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    result = cli("run", "--policy", policy_denying_port_9(tmp_path), "--otlp-endpoint", f"http://127.0.0.1:{closed}",
                 "--", sys.executable, "-c", CONNECT_TO_PORT_9, timeout=120)
    assert result.returncode == 0, result.stderr
    # The exporter's own log lines (the SDK's retries), named as such.
    assert any(line.startswith("runtimeguard: opentelemetry: ") for line in said_once(result.stderr)), result.stderr


def started(args, tmp_path, ready: str):
    """The command, started in a session of its own (a terminal's foreground
    group), once it has said `ready` on stderr and had a second more to start
    what it runs."""
    err = open(tmp_path / "stderr", "w+")
    proc = subprocess.Popen([*CLI, *args], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err, text=True,
                            start_new_session=True)
    deadline = time.monotonic() + 30
    while ready not in (tmp_path / "stderr").read_text() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1)
    return proc, err


def stopped(proc, err, sig: int, group: bool) -> str:
    try:
        (os.killpg if group else os.kill)(proc.pid, sig)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    err.seek(0)
    text = err.read()
    err.close()
    return text


RUN_SLEEP = ("run", "--policy", "{policy}", "--", "sleep", "30")
INTERRUPTIONS = [
    # Ctrl-C reaches the whole foreground group; SIGTERM comes to the process alone.
    (RUN_SLEEP, "mode;", signal.SIGINT, True, EXIT_INTERRUPTED),
    (RUN_SLEEP, "mode;", signal.SIGTERM, False, EXIT_TERMINATED),
    (("calls", "--tls", "--", "sleep", "30"), "probing", signal.SIGTERM, False, EXIT_TERMINATED),
    (("demo", "--seconds", "20"), "tracing the host", signal.SIGINT, True, EXIT_INTERRUPTED),
    (("trace", "--format", "table", "--events", "process_exec"), "Ctrl-C to stop", signal.SIGINT, True,
     EXIT_INTERRUPTED),
    (("trace", "--format", "table", "--events", "process_exec"), "Ctrl-C to stop", signal.SIGTERM, False, 0),
]


@pytest.mark.root
@pytest.mark.parametrize("args, ready, sig, group, status", INTERRUPTIONS,
                         ids=[f"{a[0]}-{s.name}" for a, _, s, _, _ in INTERRUPTIONS])
def test_an_interruption_ends_quietly_with_its_status(tmp_path, args, ready, sig, group, status):
    args = [a.format(policy=policy_denying_port_9(tmp_path)) for a in args]
    proc, err = started(args, tmp_path, ready)
    stderr = stopped(proc, err, sig, group)
    assert proc.returncode == status, stderr
    said_once(stderr)
