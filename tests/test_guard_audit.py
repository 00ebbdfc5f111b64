"""The guard's audit log under attack, against the real kernel: a workload that
floods denied operations cannot flush its protected open out of the log, every
decision is accounted for (a line, a line's `repeated` count, or a `lost`
record), and a log that cannot be written loses nothing silently."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import textwrap
import time

import pytest

from helpers import fill_until_full
from runtimeguard import audit, environment
from runtimeguard.audit import AuditLogReader, audit_log_files
from runtimeguard.guard import Guard
from runtimeguard.policy import Policy
from runtimeguard.schema import SCHEMA_VERSION, EventRecord, json_schema

DENIED_V4 = "127.0.0.2"


def make_policy(root, mode: str) -> Policy:
    return Policy.from_dict({
        "version": 1, "name": "flood", "mode": mode,
        "network": {"deny": [{"cidr": f"{DENIED_V4}/32"}]},
        "files": {"protect": [str(root / "token")]},
    })


@pytest.fixture
def token_dir(tmp_path):
    (tmp_path / "token").write_text("s3cr3t\n")
    return tmp_path


# The workload: a child opens the protected file (refused, killed or, in audit
# mode, allowed: the parent goes on either way), then the parent sends to the
# denied address for SECONDS (at most LIMIT sends), to one port or to ever new
# ones, counting the sends the guard refused and those that went out; the
# counts go to OUT. With "open-last", the open comes after the sends.
FLOOD = textwrap.dedent("""
    import os, socket, sys, time
    token, out, seconds, ports, limit = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4], int(sys.argv[5])

    def open_protected():
        pid = os.fork()
        if pid == 0:
            try:
                open(token).read()
            except OSError:
                pass
            os._exit(0)
        os.waitpid(pid, 0)

    if sys.argv[6] != "open-last":
        open_protected()
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    refused = sent = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end and refused + sent < limit:
        port = 1 + (refused + sent) % 60000 if ports == "new" else 9
        try:
            s.sendto(b"x", ({denied!r}, port))
            sent += 1
        except PermissionError:
            refused += 1
    if sys.argv[6] == "open-last":
        open_protected()
    with open(out, "w") as f:
        f.write(f"{{refused}} {{sent}}")
""").format(denied=DENIED_V4)


def flood_argv(token_dir, seconds: float, ports: str = "same", limit: int = 10**9, order: str = "open-first"):
    return [sys.executable, "-c", FLOOD, str(token_dir / "token"), str(token_dir / "counts"), str(seconds), ports,
            str(limit), order]


def read_counts(token_dir) -> tuple[int, int]:
    refused, sent = (int(x) for x in (token_dir / "counts").read_text().split())
    return refused, sent


def read_log(path) -> list[EventRecord]:
    events = []
    for name in audit_log_files(path):
        reader = AuditLogReader(name)
        events += reader.events()
        assert reader.torn_lines == 0, name
    return events


def accounted(events: list[EventRecord], name: str) -> int:
    """Decisions of a kind the log accounts for: lines, their repeats, and lost records."""
    lines = sum(1 + e.repeated for e in events if e.name == name)
    lost = sum(e.data.by_kind.get(name, 0) for e in events if e.name == "lost")
    return lines + lost


def protected_open_reported(events: list[EventRecord]) -> bool:
    return any(e.name == "open_inode" for e in events) or any(
        e.name == "lost" and e.data.by_kind.get("open_inode") for e in events)


# ---------------------------------------------------------------- floods

@pytest.mark.root
@pytest.mark.parametrize("mode", ["enforce", "audit"])
def test_flood_of_one_denied_send_cannot_flush_the_open(token_dir, mode):
    """The attack as found: open a protected file, then loop on a denied sendto.
    Coalesced, the flood is a few lines; the open stays; every send is counted."""
    log = token_dir / "audit.ndjson"
    g = Guard(make_policy(token_dir, mode), audit_log=str(log), audit_max_bytes=16 * 1024, audit_backups=5)
    result = g.run(flood_argv(token_dir, 3.0))
    assert result.exit_status == 0
    refused, sent = read_counts(token_dir)
    made = refused + sent
    assert made > 10_000, "the workload did not flood"
    assert (refused, sent) == ((made, 0) if mode == "enforce" else (0, made))

    events = read_log(log)
    opens = [e for e in events if e.name == "open_inode"]
    assert len(opens) == 1 and opens[0].policy.rule == "files.protect[0]"
    # Enforce: refused (BPF LSM) or the opener killed (tracepoints); audit: reported only.
    assert opens[0].action in ({"would_block"} if mode == "audit" else {"blocked", "killed"})
    # Every denied send is in the log: as a line, in a line's `repeated`, or in a lost record.
    assert accounted(events, "exfil_blocked") == made
    sends = [e for e in events if e.name == "exfil_blocked"]
    assert sends[0].repeated == 0  # the first, written at once
    # One line a second at most, after the first (3 s of flood; the last count at close).
    assert len(sends) <= 6, [e.repeated for e in sends]
    assert sum(os.path.getsize(f) for f in audit_log_files(log)) < 16 * 1024, "the flood rotated the log"
    stats = g.stats()
    assert stats.audit_lost_total == 0 and stats.audit_errors == 0 and stats.audit_pending == 0
    assert stats.audit_coalesced == sum(e.repeated for e in sends)
    # What the kernel could not report is in the log too.
    ring_lost = {}
    for e in events:
        if e.name == "lost" and e.data.source == "ring_buffer":
            for kind, n in e.data.by_kind.items():
                ring_lost[kind] = ring_lost.get(kind, 0) + n
    assert ring_lost == stats.lost


@pytest.mark.root
@pytest.mark.parametrize("mode", ["enforce", "audit"])
def test_flood_of_new_targets_rotates_but_keeps_the_first_records(token_dir, mode):
    """The same with a new port each send: nothing to coalesce, the log rotates
    hundreds of times through 3 small files, and the open's record, like the
    first of each (rule, target) up to the cap, is still there, once."""
    log = token_dir / "audit.ndjson"
    g = Guard(make_policy(token_dir, mode), audit_log=str(log), audit_max_bytes=32 * 1024, audit_backups=2,
              audit_keep_first=50)
    result = g.run(flood_argv(token_dir, 3.0, ports="new", limit=20_000))
    assert result.exit_status == 0
    refused, sent = read_counts(token_dir)
    assert refused + sent > 2_000

    files = audit_log_files(log)
    assert files == [f"{log}.kept", f"{log}.2", f"{log}.1", str(log)]
    events = read_log(log)
    written = sum(1 for e in result.events if e.name == "exfil_blocked")
    assert len([e for e in events if e.name == "exfil_blocked"]) < written // 4, "the log did not rotate lines away"
    opens = [e for e in events if e.name == "open_inode"]
    assert len(opens) == 1
    kept = list(AuditLogReader(f"{log}.kept").events())
    assert opens[0] in kept
    # The first send's record, and no more than 50 targets of its rule.
    first_sends = [e for e in kept if e.name == "exfil_blocked"]
    assert first_sends[0].target_context.formatted == f"{DENIED_V4}:1"
    assert len(first_sends) == 50
    assert len({e.target_context.formatted for e in first_sends}) == 50
    # No record is in two files.
    ids = [(e.name, e.cpu, e.seq, e.timestamp) for e in events if e.name != "lost"]
    assert len(ids) == len(set(ids))


# ---------------------------------------------------------------- the ring buffer

@pytest.fixture
def scope_cgroup():
    """A cgroup to guard, a way to run commands in it, and cleanup of both."""
    root = environment.cgroup2_mount()
    cgroup = os.path.join(root, f"rg-audit-{secrets.token_hex(3)}")
    os.mkdir(cgroup)

    def enter():
        with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
            f.write("0")

    def run(argv, timeout=60):
        return subprocess.run(argv, preexec_fn=enter, capture_output=True, timeout=timeout)

    try:
        yield cgroup, run
    finally:
        with open(os.path.join(cgroup, "cgroup.procs")) as f:
            assert not f.read().strip(), "a process was left in the test cgroup"
        os.rmdir(cgroup)


@pytest.mark.root
@pytest.mark.parametrize("backend", ["tracepoint", "fanotify"])
@pytest.mark.parametrize("mode", ["enforce", "audit"])
def test_undrained_tiny_ring_the_open_is_logged_or_counted_lost(token_dir, scope_cgroup, mode, backend):
    """Nobody drains a 4 KiB ring while the workload floods decisions and then
    opens the protected file: a tracepoint judge's decision cannot enter the
    ring, and the log must say so: a lost record counting open_inode (before
    the fix, the ring's lost notices were dropped by the guard, and nothing
    said it). The fanotify judge's decisions wait in a queue of their own:
    logged, none lost."""
    cgroup, run = scope_cgroup
    log = token_dir / "audit.ndjson"
    with Guard(make_policy(token_dir, mode), cgroup=cgroup, audit_log=str(log), ring_buffer_size=4096,
               backend=backend) as g:
        done = run(flood_argv(token_dir, 5.0, limit=2_000, order="open-last"))
        assert done.returncode == 0, done.stderr
        stats = g.stats()
        assert stats.lost.get("exfil_blocked", 0) > 0, "the ring did not overflow"
        # Now the guard reads what there is: the ring's notices say what it
        # lost, in the log while the guard runs, not only at close.
        while g.poll(0.1):
            pass
        live = [e for e in read_log(log) if e.name == "lost"]
        in_ring = backend == "tracepoint"
        assert sum(e.data.by_kind.get("open_inode", 0) for e in live) == in_ring, live
    events = read_log(log)
    assert protected_open_reported(events)
    final = g.stats()
    # The ring was full when the file was opened.
    assert final.lost.get("open_inode", 0) == in_ring
    if not in_ring:
        assert [e.name for e in events].count("open_inode") == 1
    logged_lost: dict[str, int] = {}
    for e in events:
        if e.name == "lost":
            assert e.data.source == "ring_buffer"
            for kind, n in e.data.by_kind.items():
                logged_lost[kind] = logged_lost.get(kind, 0) + n
    assert logged_lost == final.lost  # every loss the kernel counted is in the log
    refused, sent = read_counts(token_dir)
    assert accounted(events, "exfil_blocked") == refused + sent == 2_000


FORKS_THEN_SEND = textwrap.dedent("""
    import os, socket
    for _ in range(2500):
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
    try:
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", ({denied!r}, 7))
    except PermissionError:
        pass
""").format(denied=DENIED_V4)


@pytest.mark.root
def test_decisions_behind_a_batch_of_process_events_are_logged_at_close(token_dir, scope_cgroup):
    """5000 process records (more than one batch) sit in the ring ahead of a
    decision when the guard closes. Draining must go on past a batch with no
    decision in it (it used to stop there, and the decision was never read)."""
    cgroup, run = scope_cgroup
    log = token_dir / "audit.ndjson"
    with Guard(make_policy(token_dir, "enforce"), cgroup=cgroup, audit_log=str(log)) as g:
        assert run([sys.executable, "-c", FORKS_THEN_SEND]).returncode == 0
    assert [e.target_context.formatted for e in read_log(log)] == [f"{DENIED_V4}:7"]
    assert [e.name for e in g.events] == ["exfil_blocked"]
    assert g.stats().delivered["process_fork"] >= 2500 and g.stats().lost_total == 0


# ---------------------------------------------------------------- a log that cannot be written

SEND_TO_PORTS = textwrap.dedent("""
    import socket, sys
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for port in range(int(sys.argv[1]), int(sys.argv[2])):
        try:
            s.sendto(b"x", ({denied!r}, port))
        except PermissionError:
            pass
""").format(denied=DENIED_V4)


@pytest.mark.root
def test_log_full_mid_run_loses_are_counted_and_reported_later(token_dir, scope_cgroup, tiny_tmpfs, monkeypatch):
    """The log's filesystem fills while the guard runs: decisions wait in the
    retry queue (5 here), those beyond are counted (Guard.stats) and, once the
    disk has room again, reported by a lost record after the queued ones."""
    monkeypatch.setattr(audit, "RETRY_QUEUE_MAX", 5)
    cgroup, run = scope_cgroup
    log = tiny_tmpfs / "audit.ndjson"
    filler = tiny_tmpfs / "filler"

    def sends(lo: int, hi: int) -> None:
        assert run([sys.executable, "-c", SEND_TO_PORTS, str(lo), str(hi)]).returncode == 0
        deadline = time.monotonic() + 10
        want = {f"{DENIED_V4}:{p}" for p in range(lo, hi)}
        while want and time.monotonic() < deadline:
            for e in g.poll(0.2):
                want.discard(e.target_context.formatted)
        assert not want, f"decisions not seen: {sorted(want)}"

    with Guard(make_policy(token_dir, "enforce"), cgroup=cgroup, audit_log=str(log)) as g:
        sends(1, 2)
        assert len(log.read_bytes().splitlines()) == 1
        fill_until_full(filler)
        # Each a new target: nothing to coalesce. Lines are bigger than a page,
        # so none fits in the slack of the log's last page.
        sends(100, 120)
        stats = g.stats()
        assert stats.audit_errors > 0
        assert stats.audit_pending == 5
        assert stats.audit_lost == {"exfil_blocked": 15} and stats.audit_lost_total == 15
        filler.unlink()
        sends(200, 201)
        assert g.stats().audit_pending == 0
    events = read_log(log)
    ports = [e.target_context.port for e in events if e.name == "exfil_blocked"]
    assert ports == [1, 100, 101, 102, 103, 104, 200]
    (lost,) = [e for e in events if e.name == "lost"]
    assert [e.name for e in events].index("lost") == 6  # after the queued five, before the next decision
    assert lost.data.source == "audit_log" and lost.data.error == "ENOSPC"
    assert lost.data.count == 15 and lost.data.by_kind == {"exfil_blocked": 15}
    assert accounted(events, "exfil_blocked") == 1 + 20 + 1
    final = g.stats()
    assert final.audit_lost_total == 15 and final.audit_pending == 0


# ---------------------------------------------------------------- schema

def test_schema_1_2_documents_repeated_and_lost_sources():
    out = subprocess.run([sys.executable, "-m", "runtimeguard", "schema"], capture_output=True, text=True,
                         check=True, timeout=30, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import json

    doc = json.loads(out.stdout)
    assert doc == json_schema()
    assert f"schema {SCHEMA_VERSION}" in doc["title"] and tuple(map(int, SCHEMA_VERSION.split("."))) >= (1, 2)
    repeated = doc["$defs"]["EventRecord"]["properties"]["repeated"]
    assert repeated["type"] == "integer" and repeated["minimum"] == 0 and repeated["default"] == 0
    assert "repeated" not in doc["$defs"]["EventRecord"]["required"]
    lost = doc["$defs"]["LostData"]["properties"]
    assert sorted(lost["source"]["enum"]) == ["audit_log", "ring_buffer"] and lost["source"]["default"] == "ring_buffer"
    assert "error" in lost and "source" not in doc["$defs"]["LostData"]["required"]
