"""Binary digests (runtimeguard.digests) of real files and real processes:
the SHA-256 is hashlib's of the same bytes, the build-id is what readelf
reads, and the cache reads each file version once."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import struct
import subprocess
import threading
import time

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtimeguard import digests
from runtimeguard.digests import BinaryDigest, DigestCache, build_id_of_bytes, build_id_of_fd, shared_cache

WORKER_NAME = "runtimeguard-digests"


# ---- helpers ----


def readelf_build_id(path) -> str | None:
    """The build-id binutils reads, to check ours against."""
    if shutil.which("readelf") is None:
        pytest.fail("readelf is needed to check build-ids: apt-get install -y binutils", pytrace=False)
    out = subprocess.run(["readelf", "-n", "--wide", str(path)], capture_output=True, text=True).stdout
    found = re.search(r"Build ID: ([0-9a-f]+)", out)
    return found.group(1) if found else None


def sha256_of(path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def copy_binary(tmp_path, source: str, name: str):
    target = tmp_path / name
    shutil.copyfile(source, target)
    os.chmod(target, 0o755)
    return target


def wait_for(condition, timeout: float = 10.0, what: str = "the condition"):
    deadline = time.monotonic() + timeout
    while True:
        found = condition()
        if found:
            return found
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


@contextlib.contextmanager
def running(argv: list, executable_inode: int):
    """A child running argv, yielded once its exec is done (its
    /proc/<pid>/exe is the file of that inode); killed and reaped after."""
    child = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
    try:
        def executed():
            try:
                return os.stat(f"/proc/{child.pid}/exe").st_ino == executable_inode
            except OSError:
                return False

        wait_for(executed, what=f"{argv[0]} to be executed")
        yield child
    finally:
        child.kill()
        child.wait()


def exited(argv: list) -> int:
    """The pid a child had that ran argv to its end and was reaped."""
    child = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
    assert child.wait() == 0
    return child.pid


@pytest.fixture
def cache():
    made = DigestCache()
    yield made
    made.stop()
    assert not made.running


@pytest.fixture(autouse=True)
def no_worker_left():
    yield
    # Idle workers end by themselves (the process table's shared cache's
    # too): one still there past that was left running.
    deadline = time.monotonic() + digests.WORKER_IDLE_S + 2
    while [t for t in threading.enumerate() if t.name == WORKER_NAME] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [t for t in threading.enumerate() if t.name == WORKER_NAME], "a digest worker thread was left running"


# Minimal ELF images laid out as the gABI says, so every class and byte order
# can be checked against readelf (the test machine has binaries of one only).

def _note(order: str, owner: bytes, note_type: int, desc: bytes, align: int) -> bytes:
    def pad(b: bytes) -> bytes:
        return b + b"\0" * (-len(b) % align)

    return pad(pad(struct.pack(order + "III", len(owner), len(desc), note_type) + owner) + desc)


def elf_image(bits: int, order: str, segments: list[tuple[int, bytes, int]]) -> bytes:
    """An executable with these (p_type, contents, p_align) segments and no sections."""
    header_size, entry_size = (52, 32) if bits == 32 else (64, 56)
    position = header_size + entry_size * len(segments)
    contents, offsets = b"", []
    for _, payload, _ in segments:
        padding = -position % 8
        contents += b"\0" * padding + payload
        offsets.append(position + padding)
        position += padding + len(payload)
    ident = b"\x7fELF" + bytes([1 if bits == 32 else 2, 1 if order == "<" else 2, 1, 0]) + b"\0" * 8
    if bits == 32:
        header = ident + struct.pack(order + "HHIIIIIHHHHHH", 2, 3, 1, 0, header_size, 0, 0, header_size,
                                     entry_size, len(segments), 40, 0, 0)
        table = b"".join(struct.pack(order + "IIIIIIII", kind, offset, 0, 0, len(payload), len(payload), 4, align)
                         for (kind, payload, align), offset in zip(segments, offsets))
    else:
        header = ident + struct.pack(order + "HHIQQQIHHHHHH", 2, 62, 1, 0, header_size, 0, 0, header_size,
                                     entry_size, len(segments), 64, 0, 0)
        table = b"".join(struct.pack(order + "IIQQQQQQ", kind, 4, offset, 0, 0, len(payload), len(payload), align)
                         for (kind, payload, align), offset in zip(segments, offsets))
    return header + table + contents


SYNTHETIC_BUILD_ID = bytes(range(0xA0, 0xB4))


def synthetic_elf(bits: int, order: str) -> bytes:
    # Notes that are not the build-id come first, in both alignments: an
    # 8-aligned segment (where padding differs from the 4-aligned rule) and
    # owners of other lengths, another owner's type 3 note among them.
    return elf_image(bits, order, [
        (1, b"\x90" * 16, 8),
        (4, _note(order, b"GNU\0", 5, b"\1" * 16, 8) + _note(order, b"ABCDE\0", 1, b"\2" * 4, 8), 8),
        (4, _note(order, b"GNU\0", 1, b"\0" * 16, 4) + _note(order, b"Go\0", 3, b"x" * 8, 4)
         + _note(order, b"GNU\0", 3, SYNTHETIC_BUILD_ID, 4) + _note(order, b"GNU\0", 3, b"\xff" * 20, 4), 4),
    ])


ELF_KINDS = [(32, "<"), (32, ">"), (64, "<"), (64, ">")]
TRUE_BYTES = open("/bin/true", "rb").read()
TRUE_BUILD_ID = build_id_of_bytes(TRUE_BYTES)


# ---- files ----


def test_a_binary_digest_is_its_sha256_and_the_build_id_readelf_reads(cache, tmp_path):
    binary = copy_binary(tmp_path, "/bin/true", "true")
    digest = cache.digest_of(str(binary))
    assert digest.sha256 == sha256_of(binary)
    assert digest.build_id is not None and digest.build_id == readelf_build_id(binary)
    assert digest.size == os.stat(binary).st_size
    assert digest.error is None


@pytest.mark.parametrize("bits,order", ELF_KINDS, ids=[f"{b}-{'lsb' if o == '<' else 'msb'}" for b, o in ELF_KINDS])
def test_the_build_id_of_each_elf_class_and_byte_order_is_readelfs(cache, tmp_path, bits, order):
    path = tmp_path / "image"
    path.write_bytes(synthetic_elf(bits, order))
    assert readelf_build_id(path) == SYNTHETIC_BUILD_ID.hex()
    assert build_id_of_bytes(path.read_bytes()) == SYNTHETIC_BUILD_ID.hex()
    assert cache.digest_of(path).build_id == SYNTHETIC_BUILD_ID.hex()


def test_a_script_has_a_sha256_and_no_build_id(cache, tmp_path):
    script = tmp_path / "hello.sh"
    script.write_text("#!/bin/sh\necho hello\n")
    script.chmod(0o755)
    digest = cache.digest_of(str(script))
    assert digest.sha256 == sha256_of(script)
    assert digest.build_id is None
    assert digest.size == len("#!/bin/sh\necho hello\n")


def test_a_running_script_is_its_interpreter(cache, tmp_path):
    # /proc/<pid>/exe of a script is the interpreter the kernel ran it with:
    # the process's digest is the interpreter's.
    script = tmp_path / "wait.sh"
    script.write_text("#!/bin/sh\nread line\n")
    script.chmod(0o755)
    shell = os.path.realpath("/bin/sh")
    child = subprocess.Popen([str(script)], stdin=subprocess.PIPE)
    try:
        wait_for(lambda: _exe_inode(child.pid) == os.stat(shell).st_ino, what="the script to run")
        digest = cache.digest_of(child.pid)
    finally:
        child.kill()
        child.wait()
        child.stdin.close()
    assert digest.sha256 == sha256_of(shell)
    assert digest.build_id == readelf_build_id(shell)


def _exe_inode(pid: int):
    try:
        return os.stat(f"/proc/{pid}/exe").st_ino
    except OSError:
        return None


def test_a_file_over_the_limit_has_an_error_and_still_its_build_id(tmp_path):
    binary = copy_binary(tmp_path, "/bin/true", "true")
    size = os.stat(binary).st_size
    with DigestCache(max_size=4096) as small:
        digest = small.digest_of(str(binary))
        assert digest.sha256 is None
        assert digest.error == f"too large ({size} bytes > limit 4096)"
        assert digest.size == size
        # The note lies in the first page of any linked binary.
        assert digest.build_id == readelf_build_id(binary)
        assert small.stats().hashed == 0
    with DigestCache(max_size=64) as tiny:
        # Nothing past the limit is read: not even the program headers.
        assert tiny.digest_of(str(binary)).build_id is None


def test_an_empty_file_has_the_empty_sha256(cache, tmp_path):
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    digest = cache.digest_of(str(empty))
    assert digest == BinaryDigest(sha256=hashlib.sha256(b"").hexdigest(), size=0)


def test_what_is_not_a_regular_file_has_no_digest(cache, tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    # Opened without blocking, though no writer is there.
    assert cache.digest_of(str(fifo)) == BinaryDigest(error="not a regular file")
    assert cache.digest_of(str(tmp_path / "absent")) == BinaryDigest(error="gone")


def test_a_path_that_is_no_longer_the_file_asked_for_is_gone(cache, tmp_path):
    binary = copy_binary(tmp_path, "/bin/true", "true")
    st = os.stat(binary)
    assert cache.digest_of(str(binary), device=st.st_dev, inode=st.st_ino).sha256 == sha256_of(binary)
    assert cache.digest_of(str(binary), device=st.st_dev, inode=st.st_ino + 1) == BinaryDigest(error="gone")


def test_a_digest_in_json_leaves_out_what_it_lacks():
    assert msgspec.json.encode(BinaryDigest(error="gone")) == b'{"error":"gone"}'
    whole = BinaryDigest(sha256="ab", build_id="cd", size=3)
    assert msgspec.json.decode(msgspec.json.encode(whole), type=BinaryDigest) == whole


# ---- processes ----


def test_a_binary_deleted_while_it_runs_is_read_through_proc(cache, tmp_path):
    binary = copy_binary(tmp_path, "/bin/sleep", "sleeper")
    expected_sha, expected_build_id = sha256_of(binary), readelf_build_id(binary)
    st = os.stat(binary)
    with running([str(binary), "30"], st.st_ino) as child:
        binary.unlink()
        assert os.readlink(f"/proc/{child.pid}/exe").endswith(" (deleted)")
        digest = cache.digest_of(child.pid, device=st.st_dev, inode=st.st_ino, path=str(binary))
        assert digest.sha256 == expected_sha
        assert digest.build_id == expected_build_id
        assert digest.size == st.st_size


def test_a_request_is_answered_by_the_worker_and_outlives_the_process(cache, tmp_path):
    binary = copy_binary(tmp_path, "/bin/sleep", "sleeper")
    st = os.stat(binary)
    with running([str(binary), "30"], st.st_ino) as child:
        assert cache.request(child.pid, st.st_dev, st.st_ino, str(binary))
        assert cache.running
        digest = wait_for(lambda: cache.lookup_process(child.pid, st.st_dev, st.st_ino), what="the digest")
        assert digest.sha256 == sha256_of(binary)
        # Asked without device and inode: the file /proc/<pid>/exe names now.
        assert cache.lookup_process(child.pid) is digest
        assert cache.get(st.st_dev, st.st_ino, st.st_ctime_ns, st.st_size) is digest
        pid = child.pid
    binary.unlink()
    # The exec's answer stays known after the process and its file are gone.
    assert cache.lookup_process(pid, st.st_dev, st.st_ino) is digest
    assert cache.lookup_process(pid, st.st_dev, st.st_ino + 1) is None


def test_a_request_by_pid_alone_is_found_by_the_file_it_ran(cache, tmp_path):
    binary = copy_binary(tmp_path, "/bin/sleep", "sleeper")
    st = os.stat(binary)
    with running([str(binary), "30"], st.st_ino) as child:
        assert cache.request(child.pid)
        digest = wait_for(lambda: cache.lookup_process(child.pid), what="the digest")
        assert digest.sha256 == sha256_of(binary)
        assert cache.lookup_process(child.pid, st.st_dev, st.st_ino) is digest


def test_an_exited_process_is_read_from_its_path_if_it_is_the_same_file(cache, tmp_path):
    binary = copy_binary(tmp_path, "/bin/true", "true")
    st = os.stat(binary)
    # The pid names no process now (or another one, running another file).
    pid = exited([str(binary)])
    found = cache.digest_of(pid, device=st.st_dev, inode=st.st_ino, path=str(binary))
    assert found.sha256 == sha256_of(binary)
    # Another file at that path now, or no path to try: gone.
    assert cache.digest_of(pid, device=st.st_dev, inode=st.st_ino + 1, path=str(binary)).error == "gone"
    assert cache.digest_of(pid, device=st.st_dev, inode=st.st_ino).error == "gone"


def test_a_request_for_a_process_gone_without_a_path_is_answered_gone(cache):
    pid = exited(["/bin/true"])
    true = os.stat("/bin/true")
    assert cache.request(pid, true.st_dev, true.st_ino)
    digest = wait_for(lambda: cache.lookup_process(pid, true.st_dev, true.st_ino), what="the answer")
    if digest.error is None:
        # The pid was reused at once by another /bin/true: then it is that file's.
        assert digest.sha256 == sha256_of("/bin/true")
    else:
        assert digest == BinaryDigest(error="gone")


# ---- the cache ----


def test_one_binary_is_hashed_once_for_many_processes(cache, tmp_path):
    binary = copy_binary(tmp_path, "/bin/sleep", "sleeper")
    st = os.stat(binary)
    with contextlib.ExitStack() as stack:
        children = [stack.enter_context(running([str(binary), "30"], st.st_ino)) for _ in range(4)]
        for child in children:
            assert cache.request(child.pid, st.st_dev, st.st_ino, str(binary))
        digests = [wait_for(lambda: cache.lookup_process(c.pid, st.st_dev, st.st_ino), what="a digest")
                   for c in children]
        for child in children:
            assert cache.digest_of(child.pid) is digests[0]
    assert all(d is digests[0] for d in digests)
    assert digests[0].sha256 == sha256_of(binary)
    stats = cache.stats()
    assert stats.hashed == 1
    assert stats.requests == 4
    assert stats.cached >= 3 + 4
    assert stats.entries == 1 and stats.pending == 0


def test_callers_asking_at_once_share_one_read(cache, tmp_path):
    large = tmp_path / "large"
    large.write_bytes(os.urandom(16 * 1024 * 1024))
    start = threading.Barrier(6)
    found = []

    def ask():
        start.wait()
        found.append(cache.digest_of(str(large)))

    threads = [threading.Thread(target=ask) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(found) == 6 and all(d is found[0] for d in found)
    assert found[0].sha256 == sha256_of(large)
    assert cache.stats().hashed == 1


def test_a_changed_file_is_hashed_again(cache, tmp_path):
    binary = copy_binary(tmp_path, "/bin/true", "true")
    first = cache.digest_of(str(binary))
    assert cache.digest_of(str(binary)) is first
    assert cache.stats().hashed == 1

    with open(binary, "ab") as f:
        f.write(b"appended")
    grown = cache.digest_of(str(binary))
    assert grown.sha256 == sha256_of(binary) != first.sha256
    assert grown.size == first.size + len(b"appended")
    assert cache.stats().hashed == 2

    # The same size, other bytes: only the ctime tells (it counts in ticks).
    before = os.stat(binary).st_ctime_ns
    data = bytearray(binary.read_bytes())
    data[-1] ^= 0xFF
    while True:
        binary.write_bytes(bytes(data))
        if os.stat(binary).st_ctime_ns != before:
            break
        time.sleep(0.01)
    rewritten = cache.digest_of(str(binary))
    assert rewritten.sha256 == sha256_of(binary) != grown.sha256
    assert rewritten.size == grown.size
    assert cache.stats().hashed == 3


def test_the_cache_is_bounded_least_recently_used_first(tmp_path):
    files = []
    for i in range(3):
        path = tmp_path / f"file{i}"
        path.write_bytes(b"x" * (i + 1))
        files.append(path)
    with DigestCache(max_entries=2) as bounded:
        for path in files[:2]:
            bounded.digest_of(str(path))
        bounded.digest_of(str(files[0]))  # used: file1 is now the oldest
        bounded.digest_of(str(files[2]))
        versions = [os.stat(p) for p in files]
        present = [bounded.get(s.st_dev, s.st_ino, s.st_ctime_ns, s.st_size) is not None for s in versions]
        assert present == [True, False, True]
        assert bounded.stats().entries == 2


def test_stop_ends_the_worker_and_a_request_starts_another(cache, tmp_path):
    binary = copy_binary(tmp_path, "/bin/sleep", "sleeper")
    st = os.stat(binary)
    with running([str(binary), "30"], st.st_ino) as child:
        assert cache.request(child.pid, st.st_dev, st.st_ino)
        wait_for(lambda: cache.lookup_process(child.pid, st.st_dev, st.st_ino), what="the digest")
        cache.stop()
        assert not cache.running
        # Digests stay known; a new request starts a new worker.
        assert cache.lookup_process(child.pid, st.st_dev, st.st_ino) is not None
        assert cache.request(child.pid)
        wait_for(lambda: cache.stats().pending == 0, what="the queue to drain")
        assert cache.stats().hashed == 1


def test_a_forked_child_has_a_working_cache(cache, tmp_path):
    binary = copy_binary(tmp_path, "/bin/sleep", "sleeper")
    st = os.stat(binary)
    with running([str(binary), "30"], st.st_ino) as child:
        assert cache.request(child.pid, st.st_dev, st.st_ino)
        wait_for(lambda: cache.lookup_process(child.pid, st.st_dev, st.st_ino), what="the digest")
        pid = os.fork()
        if pid == 0:
            # The parent's worker and locks are not here: a new worker must serve.
            code = 1
            try:
                cache.request(os.getppid())
                deadline = time.monotonic() + 10
                while cache.lookup_process(os.getppid()) is None and time.monotonic() < deadline:
                    time.sleep(0.01)
                code = 0 if cache.lookup_process(os.getppid()) is not None else 2
                cache.stop()
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0


def test_shared_cache_is_one_cache():
    assert shared_cache() is shared_cache()
    assert not shared_cache().running


def test_bad_limits_are_refused():
    with pytest.raises(ValueError, match="max_size"):
        DigestCache(max_size=-1)
    with pytest.raises(ValueError, match="max_entries"):
        DigestCache(max_entries=0)
    with pytest.raises(ValueError, match="chunk_size"):
        DigestCache(chunk_size=1)


# ---- the ELF note parser, on hostile input ----

HOSTILE = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SYNTHETIC = {kind: synthetic_elf(*kind) for kind in ELF_KINDS}


def _plausible(found) -> bool:
    return found is None or (isinstance(found, str) and 0 < len(found) <= 256 and len(found) % 2 == 0
                             and bytes.fromhex(found) is not None)


@HOSTILE
@given(st.binary(max_size=8192))
def test_random_bytes_never_raise(data):
    assert _plausible(build_id_of_bytes(data))


@HOSTILE
@given(st.sampled_from([1, 2, 3, 0]), st.sampled_from([1, 2, 0, 7]), st.binary(min_size=0, max_size=4096))
def test_random_elf_headers_never_raise(elf_class, byte_order, rest):
    assert _plausible(build_id_of_bytes(b"\x7fELF" + bytes([elf_class, byte_order]) + rest))


@HOSTILE
@given(st.integers(min_value=0, max_value=len(TRUE_BYTES)))
def test_a_truncated_binary_gives_its_build_id_or_none(length):
    assert build_id_of_bytes(TRUE_BYTES[:length]) in (None, TRUE_BUILD_ID)


@HOSTILE
@given(st.sampled_from(ELF_KINDS), st.data())
def test_a_truncated_image_of_any_kind_gives_its_build_id_or_none(kind, data):
    image = SYNTHETIC[kind]
    length = data.draw(st.integers(min_value=0, max_value=len(image)))
    assert build_id_of_bytes(image[:length]) in (None, SYNTHETIC_BUILD_ID.hex())
    assert build_id_of_bytes(image) == SYNTHETIC_BUILD_ID.hex()


@HOSTILE
@given(st.lists(st.tuples(st.integers(min_value=0, max_value=4095), st.integers(min_value=0, max_value=255)),
                min_size=1, max_size=8))
def test_a_corrupted_binary_never_raises(changes):
    # The headers and notes all lie in the first page: corrupt there.
    data = bytearray(TRUE_BYTES)
    for offset, value in changes:
        data[offset] = value
    assert _plausible(build_id_of_bytes(bytes(data)))


@HOSTILE
@given(st.integers(min_value=0, max_value=len(TRUE_BYTES) + 16))
def test_a_file_read_up_to_a_limit_is_the_bytes_up_to_it(limit):
    fd = os.open("/bin/true", os.O_RDONLY | os.O_CLOEXEC)
    try:
        assert build_id_of_fd(fd, limit) == build_id_of_bytes(TRUE_BYTES[:limit])
    finally:
        os.close(fd)
