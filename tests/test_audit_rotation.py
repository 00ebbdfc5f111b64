"""The audit log as log shippers see it: rotation by time (on writes, and on
tick() when idle), gzip compression of rotated files that loses no line even
with another process appending during rotations, mode 0600 whatever the
umask, and reading a mix of compressed and plain files in order."""

from __future__ import annotations

import gzip
import os
import stat
import time
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from test_guard_audit import read_log as read_all

from runtimeguard import audit
from runtimeguard.audit import AuditLogError, AuditLogger, AuditLogReader, audit_log_files, read_audit_log
from runtimeguard.schema import (
    ConnectDeniedData,
    EventRecord,
    PolicyRef,
    ProcessExecData,
    TargetContext,
)



def event(writer: int, seq: int, pad: int = 0) -> EventRecord:
    """pid says who wrote it, seq its order; pad makes it long."""
    return EventRecord(timestamp=time.time_ns(), id=1, name="process_exec", pid=writer, seq=seq,
                       data=ProcessExecData(executable="/bin/sh", argv=["sh", "-c", "x" * pad], comm="sh", uid=0,
                                            euid=0, gid=0, ppid=1, parent_entity_id=1, start_time=seq,
                                            return_code=0))


def denied(target: str, seq: int) -> EventRecord:
    return EventRecord(timestamp=time.time_ns(), id=10, name="connect_denied", pid=1, seq=seq, action="blocked",
                       policy=PolicyRef(rule="deny-loopback", mode="enforce"),
                       data=ConnectDeniedData(rule_index=0, blocked=True, would_deny=False, comm="curl",
                                              family="ipv4", protocol="tcp"),
                       target_context=TargetContext(type="ipv4", formatted=target, address="127.0.0.2", port=80))




def assert_exactly_once(events: list[EventRecord], counts: dict[int, int]) -> None:
    by_writer: dict[int, list[int]] = {}
    for e in events:
        by_writer.setdefault(e.pid, []).append(e.seq)
    assert {w: len(s) for w, s in by_writer.items()} == counts
    for writer, seqs in by_writer.items():
        assert seqs == list(range(counts[writer])), f"writer {writer}: lines lost, doubled or out of order"


def names(path) -> list[str]:
    return [os.path.basename(p) for p in audit_log_files(path)]


def test_options_are_checked():
    for bad in (0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="rotate_every_s"):
            AuditLogger("/nonexistent/x", rotate_every_s=bad)


# ---- rotation by time ----

def test_a_write_rotates_a_file_older_than_rotate_every_s(tmp_path):
    path = str(tmp_path / "audit.ndjson")
    with AuditLogger(path, rotate_every_s=0.3) as log:
        for seq in range(3):
            log.write(event(1, seq))
        assert names(path) == ["audit.ndjson"]
        time.sleep(0.35)
        log.write(event(1, 3))
        assert log.rotations == 1
        log.write(event(1, 4))  # the new file is young
        assert log.rotations == 1
    assert names(path) == ["audit.ndjson.1", "audit.ndjson"]
    assert [e.seq for e in read_audit_log(path + ".1")] == [0, 1, 2]
    assert [e.seq for e in read_audit_log(path)] == [3, 4]


def test_tick_rotates_an_idle_log_and_never_an_empty_file(tmp_path):
    path = str(tmp_path / "audit.ndjson")
    with AuditLogger(path, rotate_every_s=0.2) as log:
        time.sleep(0.25)
        assert log.tick() == 0
        assert names(path) == ["audit.ndjson"] and log.rotations == 0  # empty: not rotated
        log.write(event(1, 0))
        log.tick()
        assert log.rotations == 0  # young
        time.sleep(0.25)
        log.tick()
        assert log.rotations == 1 and names(path) == ["audit.ndjson.1", "audit.ndjson"]
        assert os.path.getsize(path) == 0
        time.sleep(0.25)
        log.tick()
        log.write_many([])
        assert log.rotations == 1  # the new file is empty however old
        log.write(event(1, 1))
    assert [e.seq for e in read_all(path)] == [0, 1]
    assert not os.path.exists(path + ".2")


def test_the_birth_survives_a_restart_and_binds_to_the_file(tmp_path):
    path = str(tmp_path / "audit.ndjson")
    with AuditLogger(path, rotate_every_s=0.5) as log:
        log.write(event(1, 0))
    record = audit._parse_birth(open(path + ".lock", "rb").read())
    st = os.stat(path)
    with open(path, "rb") as f:
        first = f.readline()
    assert record[:3] == (st.st_dev, st.st_ino, zlib.crc32(first))
    assert 0 <= time.time_ns() - record[3] < 5e9
    time.sleep(0.25)
    with AuditLogger(path, rotate_every_s=0.5) as log:
        log.write(event(1, 1))
        assert log.rotations == 0  # 0.25 s old, counted from the first line, not from this logger
        time.sleep(0.3)
        log.write(event(1, 2))
        assert log.rotations == 1  # 0.55 s old
    assert [e.seq for e in read_audit_log(path + ".1")] == [0, 1]

    # The same inode with other content (rewritten in place): the record is not its birth.
    time.sleep(0.2)
    with open(path, "wb") as f:
        f.write(audit.json_encoder.encode(event(2, 0)) + b"\n")
    with AuditLogger(path, rotate_every_s=0.15) as log:
        log.write(event(2, 1))
        assert log.rotations == 0
    # A file no time-rotating logger dated (written by one without the option)
    # counts from when one first sees it: late, never early.
    other = str(tmp_path / "other.ndjson")
    with AuditLogger(other) as log:
        log.write(event(3, 0))
    time.sleep(0.2)
    with AuditLogger(other, rotate_every_s=0.15) as log:
        log.write(event(3, 1))
        assert log.rotations == 0
        time.sleep(0.2)
        log.write(event(3, 2))
        assert log.rotations == 1


def _write_for(path: str, writer: int, seconds: float, **options) -> None:
    with AuditLogger(path, **options) as log:
        end = time.monotonic() + seconds
        seq = 0
        while time.monotonic() < end:
            log.write(event(writer, seq, pad=300 if seq % 13 == 0 else 0))
            seq += 1
            if seq % 5 == 0:
                time.sleep(0.001)
    with open(f"{path}.count-{writer}", "w") as f:
        f.write(f"{seq} {log.rotations} {log.files_compressed} {log.compress_errors}")


def test_concurrent_processes_agree_on_time_rotation_and_compression_loses_nothing(tmp_path, fork):
    """Two processes append for 0.7 s with rotation every 0.1 s, compression
    on: every line once, in order, across .gz and plain files; one rotation per
    due file, not one per writer."""
    path = str(tmp_path / "audit.ndjson")
    options = dict(rotate_every_s=0.1, backups=1000, compress=True)
    child = fork(_write_for, path, 2, 0.7, **options)
    _write_for(path, 1, 0.7, **options)
    child.join(30)
    assert child.exitcode == 0
    counts, rotations, compressed, errors = {}, 0, 0, 0
    for writer in (1, 2):
        n, r, c, e = map(int, open(f"{path}.count-{writer}").read().split())
        os.unlink(f"{path}.count-{writer}")
        counts[writer], rotations, compressed, errors = n, rotations + r, compressed + c, errors + e
    events = read_all(path)
    assert_exactly_once(events, counts)
    files = audit_log_files(path)
    assert len(files) == rotations + 1
    # About one rotation per 0.1 s: each file rotated once, by whichever writer came first.
    assert 4 <= rotations <= 10
    assert errors == 0 and compressed > 0
    gz = [f for f in files if f.endswith(".gz")]
    assert len(gz) == compressed
    assert not any(f.endswith(".1.gz") for f in files), "PATH.1 stays plain"
    assert all(stat.S_IMODE(os.stat(f).st_mode) == 0o600 for f in files + [path + ".lock"])
    assert not [n for n in os.listdir(tmp_path) if audit._TMP_MARK in n]


def _write_seqs(path: str, writer: int, count: int, **options) -> None:
    with AuditLogger(path, **options) as log:
        for start in range(0, count, 7):
            if start % 2:
                log.write_many(event(writer, s) for s in range(start, min(start + 7, count)))
            else:
                for s in range(start, min(start + 7, count)):
                    log.write(event(writer, s, pad=3000 if s % 50 == 0 else 0))


def _write_slowly(path: str, writer: int, count: int) -> None:
    """A writer whose file is never full by its own measure: it stays on the file
    it opened while others rotate it away (and it becomes due for compression),
    then, in its second half, a tick now and then moves it on."""
    with AuditLogger(path, backups=5000) as log:
        for seq in range(count):
            log.write(event(writer, seq))
            time.sleep(0.002)
            if seq >= count // 2 and seq % 10 == 9:
                log.tick()


def test_another_process_appending_during_compressed_rotations_loses_no_line(tmp_path, fork):
    path = str(tmp_path / "audit.ndjson")
    options = dict(max_bytes=4096, backups=5000, compress=True)
    with open(path, "wb"):
        pass  # so the slow writer's first file is the first file
    procs = [fork(_write_slowly, path, 4, 150)] + [fork(_write_seqs, path, w, 1500, **options) for w in (1, 2)]
    _write_seqs(path, 3, 1500, **options)
    for proc in procs:
        proc.join(30)
        assert proc.exitcode == 0
    events = read_all(path)
    assert_exactly_once(events, {1: 1500, 2: 1500, 3: 1500, 4: 150})
    files = audit_log_files(path)
    assert sum(f.endswith(".gz") for f in files) > len(files) // 2


# ---- compression ----

def test_rotated_files_are_gzipped_from_the_second_on_and_hold_exactly_the_lines(tmp_path):
    path = str(tmp_path / "audit.ndjson")
    with AuditLogger(path, max_bytes=2000, backups=50, compress=True) as log:
        for seq in range(300):
            log.write(event(1, seq))
        written = log.bytes_written
    files = audit_log_files(path)
    assert log.files_compressed == len(files) - 2 > 5 and log.compress_errors == 0
    assert files[-2:] == [path + ".1", path]
    assert all(f == f"{path}.{len(files) - 1 - i}.gz" for i, f in enumerate(files[:-2]))
    assert [e.seq for e in read_all(path)] == list(range(300))
    raw = b""
    for name in files:
        with open(name, "rb") as f:
            data = f.read()
        raw += gzip.decompress(data) if name.endswith(".gz") else data
        assert raw.endswith(b"\n")
    assert len(raw) == written and raw.count(b"\n") == 300
    assert not [n for n in os.listdir(tmp_path) if audit._TMP_MARK in n]


def test_backups_limit_holds_with_compression(tmp_path):
    path = str(tmp_path / "audit.ndjson")
    with AuditLogger(path, max_bytes=2000, backups=3, compress=True) as log:
        for seq in range(200):
            log.write(event(1, seq))
    assert names(path) == ["audit.ndjson.3.gz", "audit.ndjson.2.gz", "audit.ndjson.1", "audit.ndjson"]
    assert sorted(os.listdir(tmp_path)) == sorted(names(path) + ["audit.ndjson.lock"])
    seqs = [e.seq for e in read_all(path)]
    assert seqs == list(range(200 - len(seqs), 200))


def test_a_file_a_writer_still_holds_stays_plain_until_let_go(tmp_path):
    """The writer in another process that still holds the renamed file: its
    lines there are never lost; the file is compressed once it moved on."""
    path = str(tmp_path / "audit.ndjson")
    rotator = AuditLogger(path, max_bytes=1500, backups=20, compress=True)
    straggler = AuditLogger(path)  # its own descriptor, as another process would have
    straggler.write(event(2, 0))
    held = os.stat(path).st_ino
    for seq in range(30):
        rotator.write(event(1, seq))
    rotator._wait_compressor()
    position = [f for f in audit_log_files(path) if os.stat(f).st_ino == held]
    assert position and not position[0].endswith((".1", ".gz")), "held, yet compressed"
    straggler.write(event(2, 1))  # into the renamed file (its own size limit is far)
    assert [e.seq for e in read_audit_log(position[0]) if e.pid == 2] == [0, 1]
    straggler.tick()  # notices the rotation: moves to the new PATH, lets the old file go
    straggler.write(event(2, 2))
    straggler.close()  # else the file it holds now stays plain in its turn
    for seq in range(30, 40):
        rotator.write(event(1, seq))
    rotator.close()
    files = audit_log_files(path)
    (home,) = [f for f in files if any(e.pid == 2 and e.seq == 0 for e in read_audit_log(f))]
    assert home.endswith(".gz"), "let go, yet not compressed"
    assert [f for f in files if not f.endswith(".gz")] == [path + ".1", path]
    assert_exactly_once(read_all(path), {1: 40, 2: 3})
    assert rotator.compress_errors == 0


def test_first_records_kept_across_compression(tmp_path):
    path = str(tmp_path / "audit.ndjson")
    with AuditLogger(path, max_bytes=3000, backups=3, keep_first=3, compress=True) as log:
        for seq in range(300):
            log.write(denied(f"127.0.0.2:{seq}", seq) if seq % 3 == 0 else event(1, seq))
        assert log.keep_lost == 0
    kept = list(read_audit_log(path + ".kept"))
    # The first three targets of the rule and the first exec, once each.
    assert [(e.name, e.seq) for e in kept] == [("connect_denied", 0), ("process_exec", 1), ("connect_denied", 3),
                                               ("connect_denied", 6)]
    seqs = [e.seq for e in read_all(path)]
    assert len(seqs) == len(set(seqs))
    assert names(path)[0] == "audit.ndjson.kept" and names(path)[1].endswith(".gz")


def test_compression_is_not_done_under_the_rotation_lock_and_close_waits_for_it(tmp_path, monkeypatch):
    path = str(tmp_path / "audit.ndjson")
    real = audit._gzip_copy
    entered = []

    def slow_copy(src, dst, mtime):
        entered.append(time.monotonic())
        time.sleep(0.2)
        return real(src, dst, mtime)

    monkeypatch.setattr(audit, "_gzip_copy", slow_copy)
    log = AuditLogger(path, max_bytes=1000, backups=3, compress=True)
    for seq in range(12):
        log.write(event(1, seq))
    while not entered:
        time.sleep(0.01)
    # A compression is under way: writes and rotations go on meanwhile.
    started = time.monotonic()
    rotations = log.rotations
    for seq in range(12, 20):
        log.write(event(1, seq))
    assert log.rotations > rotations and time.monotonic() - started < 0.15
    log.close()
    assert not [n for n in os.listdir(tmp_path) if audit._TMP_MARK in n]
    seqs = [e.seq for e in read_all(path)]
    assert seqs == list(range(20 - len(seqs), 20))
    assert log.files_compressed > 0


# ---- reading ----

def test_reading_a_mix_of_gz_and_plain_files_in_order(tmp_path):
    path = str(tmp_path / "audit.ndjson")
    with AuditLogger(path, max_bytes=1500, backups=40, compress=True) as log:
        for seq in range(60):
            log.write(event(1, seq))
    files = audit_log_files(path)
    assert len(files) >= 5
    # One compressed file back to plain, and PATH.1 compressed by hand: any mix reads the same.
    plain = files[1][:-len(".gz")]
    with open(files[1], "rb") as f, open(plain, "wb") as out:
        out.write(gzip.decompress(f.read()))
    os.unlink(files[1])
    with open(path + ".1", "rb") as f, gzip.open(path + ".1.gz", "wb") as out:
        out.write(f.read())
    os.unlink(path + ".1")
    assert [e.seq for e in read_all(path)] == list(range(60))
    # Both forms of one file (a compression cut short): read once, from the plain one.
    with open(plain, "rb") as f, gzip.open(plain + ".gz", "wb") as out:
        out.write(f.read())
    assert plain in audit_log_files(path) and plain + ".gz" not in audit_log_files(path)
    assert [e.seq for e in read_all(path)] == list(range(60))
    # A compressed file read on its own; a torn last line in it is skipped like in a plain one.
    first = list(read_audit_log(path + ".1.gz"))
    assert first and all(e.name == "process_exec" for e in first)
    with gzip.open(path + ".1.gz", "rb") as f:
        whole = f.read()
    with gzip.open(path + ".1.gz", "wb") as out:
        out.write(whole + b'{"timestamp":1,"id":5,"na')
    reader = AuditLogReader(path + ".1.gz")
    assert [e.seq for e in reader.events()] == [e.seq for e in first] and reader.torn_lines == 1
    # A cut-off .gz is corruption, said with its name.
    data = open(path + ".1.gz", "rb").read()
    with open(path + ".1.gz", "wb") as out:
        out.write(data[:len(data) // 2])
    with pytest.raises(AuditLogError, match="gzip"):
        list(AuditLogReader(path + ".1.gz").events())


BASE = "audit.ndjson"
NOISE = [BASE + ".lock", BASE + ".gz-tmp-0123abcd", BASE + ".0", BASE + ".01", BASE + ".1.gz.tmp", BASE + ".x",
         BASE + ".²", BASE + ".1.bz2", "other.ndjson.1", "audit.ndjson1", BASE + ".kept.gz", BASE + "..1"]


@settings(max_examples=150, deadline=None)
@given(backups=st.dictionaries(st.integers(1, 200), st.sampled_from(["plain", "gz", "both"]), max_size=30),
       kept=st.booleans(), current=st.booleans(), noise=st.lists(st.sampled_from(NOISE), unique=True),
       seed=st.randoms(use_true_random=False))
def test_log_file_order_property(backups, kept, current, noise, seed):
    listing = list(noise)
    for n, form in backups.items():
        if form in ("plain", "both"):
            listing.append(f"{BASE}.{n}")
        if form in ("gz", "both"):
            listing.append(f"{BASE}.{n}.gz")
    if kept:
        listing.append(BASE + ".kept")
    if current:
        listing.append(BASE)
    seed.shuffle(listing)
    expected = ([BASE + ".kept"] if kept else []) + [
        f"{BASE}.{n}" + (".gz" if backups[n] == "gz" else "") for n in sorted(backups, reverse=True)
    ] + ([BASE] if current else [])
    assert audit._log_file_order(BASE, listing) == expected


@settings(max_examples=200, deadline=None)
@given(dev=st.integers(0, 2**64 - 1), ino=st.integers(0, 2**64 - 1), crc=st.integers(0, 2**32 - 1),
       born=st.integers(0, 2**63 - 1), junk=st.binary(max_size=200))
def test_birth_record_round_trip(dev, ino, crc, born, junk):
    record = audit._birth_record(dev, ino, crc, born)
    assert len(record) == audit._BIRTH_SIZE and record.endswith(b"\n")
    assert audit._parse_birth(record) == (dev, ino, crc, born)
    parsed = audit._parse_birth(junk)
    assert parsed is None or junk.split()[0] == audit._BIRTH_TAG


# ---- permissions ----

@pytest.mark.parametrize("umask", [0o000, 0o277], ids=["umask-0", "umask-277"])
def test_every_file_of_the_log_is_0600_whatever_the_umask(tmp_path, umask):
    path = str(tmp_path / "audit.ndjson")
    previous = os.umask(umask)
    try:
        with AuditLogger(path, max_bytes=2000, backups=3, keep_first=2, compress=True, rotate_every_s=60) as log:
            for seq in range(100):
                log.write(denied(f"127.0.0.2:{seq}", seq) if seq % 5 == 0 else event(1, seq))
        present = sorted(os.listdir(tmp_path))
        assert present == sorted(["audit.ndjson", "audit.ndjson.1", "audit.ndjson.2.gz", "audit.ndjson.3.gz",
                                  "audit.ndjson.kept", "audit.ndjson.lock"])
        for name in present:
            assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o600, name
    finally:
        os.umask(previous)


def test_an_existing_log_with_other_modes_is_set_to_0600(tmp_path):
    path = tmp_path / "audit.ndjson"
    for name, mode in (("audit.ndjson", 0o644), ("audit.ndjson.lock", 0o666), ("audit.ndjson.kept", 0o640)):
        (tmp_path / name).write_bytes(b"")
        os.chmod(tmp_path / name, mode)
    with AuditLogger(path, max_bytes=500, backups=1, keep_first=1) as log:
        for seq in range(10):
            log.write(event(1, seq))
    for name in ("audit.ndjson", "audit.ndjson.1", "audit.ndjson.lock", "audit.ndjson.kept"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o600, name
