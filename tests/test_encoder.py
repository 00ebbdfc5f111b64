"""Property tests of the C batch encoder (csrc/encode.c) through rg_encode_records.

Records are built with the wire structs of bpf/events.h (through cffi, so the
layout is the very one the BPF programs write), framed as the ring-buffer
consumer sees them ([u32 little-endian length][record]...), encoded in C and
decoded with runtimeguard.schema.batch_decoder. A Python reference model
(`model`) says what every record must decode to: each event is flattened
(`flat`: header, details and target) for the comparison. No BPF is loaded.
"""

from __future__ import annotations

import codecs
import errno
import functools
import ipaddress
import json
import os
import re
import socket
import struct
import subprocess
import sys
from typing import Optional

import msgspec
import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from runtimeguard import schema
from runtimeguard._native import ffi, lib

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

U16 = st.integers(0, 2**16 - 1)
U32 = st.integers(0, 2**32 - 1)
U64 = st.integers(0, 2**64 - 1)
I32 = st.integers(-(2**31), 2**31 - 1)
I64 = st.integers(-(2**63), 2**63 - 1)
# Boot-time nanoseconds: they fit an int64 (the encoder adds the realtime offset as signed).
BOOT_NS = st.integers(0, 2**63 - 1)
# Real pids never exceed PID_MAX_LIMIT (2**22).
PID = st.integers(0, 2**22)

NS_PER_TICK = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
HEADER_SIZE = ffi.sizeof("struct rg_header")
KIND_OFFSET = ffi.offsetof("struct rg_header", "kind")

RECORD_TYPES = {
    lib.RG_KIND_PROCESS_EXEC: "struct rg_exec_record",
    lib.RG_KIND_PROCESS_FORK: "struct rg_fork_record",
    lib.RG_KIND_PROCESS_EXIT: "struct rg_exit_record",
    lib.RG_KIND_FILE_OPEN: "struct rg_file_record",
    lib.RG_KIND_NET_CONNECT: "struct rg_net_record",
    lib.RG_KIND_NET_SENDMSG: "struct rg_net_record",
    lib.RG_KIND_PTRACE: "struct rg_ptrace_record",
    lib.RG_KIND_PROCESS_MEMORY: "struct rg_memory_record",
}
RECORD_SIZES = {k: ffi.sizeof(t) for k, t in RECORD_TYPES.items()}

# One output buffer for the whole module: rg_encode_records wants
# RG_MAX_ENCODED_RECORD (16384) bytes free before each record.
MAX_ENCODED_RECORD = 16384
CAP = 16 * 1024 * 1024
_OUT = ffi.new("unsigned char[]", CAP)
_OUT_LEN = ffi.new("size_t *")
_MALFORMED = ffi.new("unsigned long long *")


# ---------------------------------------------------------------- helpers

class Flat(schema.EventRecord):
    """An event's record (no workload: no process table here) with the
    acting task's credentials and name, which the record keeps in its
    workload."""

    uid: Optional[int] = None
    euid: Optional[int] = None
    gid: Optional[int] = None
    comm: str = ""


@pytest.fixture(autouse=True)
def no_process_table(monkeypatch):
    """pid targets are named from the process table; not here."""
    monkeypatch.setattr(schema, "_resolver", None)


def flat(ev: schema.Event) -> Flat:
    return Flat(timestamp=ev.timestamp, id=ev.id, name=ev.name, data=ev.data, seq=ev.seq, cpu=ev.cpu, pid=ev.pid,
                tid=ev.tid, entity_id=ev.entity_id, cgroup_id=ev.cgroup_id, action=ev.action,
                target_context=ev.target_context, uid=ev.uid, euid=ev.euid, gid=ev.gid, comm=ev.comm)


def frame(records) -> bytes:
    return b"".join(struct.pack("<I", len(r)) + r for r in records)


def encode_raw(data: bytes, cap: int = CAP):
    """(return code, malformed count, events) for a framed byte string."""
    assert cap <= CAP
    rc = lib.rg_encode_records(data, len(data), _OUT, cap, _OUT_LEN, _MALFORMED)
    if rc < 0:
        return rc, _MALFORMED[0], None
    assert _OUT_LEN[0] <= cap
    events = schema.batch_decoder.decode(ffi.buffer(_OUT, _OUT_LEN[0]))
    with pytest.MonkeyPatch.context() as m:
        m.setattr(schema, "_resolver", None)
        return rc, _MALFORMED[0], [flat(ev) for ev in events]


def encode(records):
    rc, malformed, events = encode_raw(frame(records))
    assert rc == len(events)
    return malformed, events


def raw(rec) -> bytes:
    return bytes(ffi.buffer(rec))


def field_bytes(arr) -> bytes:
    return bytes(ffi.buffer(arr))


def cstr(arr) -> bytes:
    return field_bytes(arr).split(b"\0", 1)[0]


def _one_fffd_per_byte(exc: UnicodeDecodeError):
    # Resume right after the first offending byte: each invalid byte becomes
    # one U+FFFD, as the encoder documents (Python's "replace" would instead
    # replace a maximal ill-formed subsequence with a single U+FFFD).
    return "\ufffd", exc.start + 1


codecs.register_error("rg_test_fffd_per_byte", _one_fffd_per_byte)


def utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def kernel_text(b: bytes) -> str:
    """What the encoder must make of kernel bytes: valid UTF-8 kept, each invalid byte U+FFFD."""
    return b.decode("utf-8", "rg_test_fffd_per_byte")


# ---------------------------------------------------------------- entity ids, independently
#
# The entity id, as csrc/identity.c documents it: a 64-bit hash of the boot
# (each byte of /proc/sys/kernel/random/boot_id as read, its newline too,
# folded into 0x243f6a8885a308d3 with mix64), the pid (shifted up 40 bits)
# and the start time in clock ticks (as /proc/<pid>/stat reports it), halved
# to fit a signed 64-bit integer. mix64 is SplitMix64's output function.

MASK64 = 2**64 - 1


def mix64(x: int) -> int:
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & MASK64
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


@functools.lru_cache
def boot_hash(boot_id: bytes) -> int:
    h = 0x243F6A8885A308D3
    for byte in boot_id:
        h = mix64(h ^ byte)
    return h


def reference_entity_id(pid: int, start_boottime_ns: int, boot_id: bytes, ns_per_tick: int) -> int:
    ticks = start_boottime_ns // ns_per_tick
    return mix64(boot_hash(boot_id) ^ mix64(((pid << 40) & MASK64) ^ ticks)) >> 1


with open("/proc/sys/kernel/random/boot_id", "rb") as _f:
    BOOT_ID = _f.read()


def entity(pid: int, start: int) -> int:
    """The entity id this boot gives (pid, start); 0 when the start is unknown."""
    return reference_entity_id(pid, start, BOOT_ID, NS_PER_TICK) if start else 0


def user_dev(kdev: int) -> int:
    return os.makedev(kdev >> 20, kdev & 0xFFFFF)


def resolved_text(field, start: int) -> bytes:
    """A path the kernel wrote backward: from start (clamped to the last
    byte) to its NUL."""
    return field_bytes(field)[min(start, lib.RG_PATH_LEN - 1):].split(b"\0", 1)[0]


def exec_context(r, h) -> dict:
    """The exec's context fields, as events.h and the schema document them."""
    tty = cstr(r.tty)
    if re.fullmatch(rb"pts[0-9].*", tty, re.S):
        tty = b"pts/" + tty[3:]
    cwd = resolved_text(r.cwd_path, r.cwd_path_start)
    fields = dict(
        auid=None if r.auid == 0xFFFFFFFF else r.auid, suid=r.suid, fsuid=r.fsuid,
        cap_effective=r.cap_effective, cap_permitted=r.cap_permitted,
        stdin=schema.FD_KINDS.get(r.stdio[0], "other"), stdout=schema.FD_KINDS.get(r.stdio[1], "other"),
        stderr=schema.FD_KINDS.get(r.stdio[2], "other"),
        tty=kernel_text(tty) if tty else None,
    )
    if cwd:
        fields.update(cwd=kernel_text(cwd), cwd_truncated=bool(r.cwd_truncated),
                      cwd_bytes=None if utf8(cwd) else cwd)
    if r.retval == 0:
        fields.update(secureexec=bool(r.secureexec),
                      exec_id=f"{BOOT_ID.decode().strip()}:{h.pid}:{h.timestamp_ns}")
    return fields


PROTOCOLS = {0: None, 6: "tcp", 17: "udp", 1: "icmp", 58: "icmpv6", 132: "sctp", 255: "raw", 262: "mptcp"}


def model(rec_bytes: bytes) -> Flat:
    """The reference: the Event a well-formed record must decode to."""
    kind = struct.unpack_from("<I", rec_bytes, KIND_OFFSET)[0]
    buf = ffi.new("char[]", max(len(rec_bytes), RECORD_SIZES[kind]))
    ffi.memmove(buf, rec_bytes, len(rec_bytes))
    r = ffi.cast(RECORD_TYPES[kind] + " *", buf)
    h = r.hdr
    target = None
    if kind == lib.RG_KIND_PROCESS_EXEC:
        resolved = resolved_text(r.exe_path, r.exe_path_start) if r.retval == 0 else b""
        n = min(r.args_len, 512)
        args = field_bytes(r.args)[:n]
        parts = args.split(b"\0") if args else []
        tail = bool(args) and not args.endswith(b"\0")
        if args and not tail:
            parts = parts[:-1]
        exe, comm = cstr(r.filename), cstr(h.comm)
        data = schema.ProcessExecData(
            executable_bytes=None if utf8(exe) else exe,
            argv_bytes=None if all(utf8(p) for p in parts) else parts,
            comm_bytes=None if utf8(comm) else comm,
            executable=kernel_text(cstr(r.filename)),
            executable_truncated=bool(r.filename_truncated),
            argv=[kernel_text(p) for p in parts],
            argv_truncated=bool(r.args_truncated) or tail,
            comm=kernel_text(cstr(h.comm)),
            uid=h.uid, euid=h.euid, gid=h.gid, ppid=r.ppid,
            parent_entity_id=entity(r.ppid, r.parent_start_boottime),
            start_time=h.start_boottime,
            return_code=r.retval,
            ns_pid=r.ns_pid, pid_ns=r.pid_ns,
            **({} if not resolved else dict(
                resolved_executable=kernel_text(resolved),
                resolved_executable_bytes=None if utf8(resolved) else resolved,
                resolved_executable_truncated=bool(r.exe_path_truncated),
                executable_device=user_dev(r.exe_dev), executable_inode=r.exe_ino,
                fileless=bool(r.exe_unlinked))),
            **exec_context(r, h),
        )
    elif kind == lib.RG_KIND_PROCESS_FORK:
        data = schema.ProcessForkData(
            child_pid=r.child_pid,
            child_entity_id=reference_entity_id(r.child_pid, r.child_start_boottime, BOOT_ID, NS_PER_TICK),
            child_start_time=r.child_start_boottime,
            child_ns_pid=r.child_ns_pid, child_pid_ns=r.child_pid_ns,
        )
    elif kind == lib.RG_KIND_PROCESS_EXIT:
        status = r.exit_code
        signal = status & 0x7F
        data = schema.ProcessExitData(
            exit_code=None if signal else (status >> 8) & 0xFF,
            signal=signal or None,
            core_dumped=bool(status & 0x80),
            duration_ns=max(0, h.timestamp_ns - h.start_boottime),
        )
    elif kind == lib.RG_KIND_FILE_OPEN:
        text = field_bytes(r.text)
        path_b, resolved = text[:r.path_len], text[r.path_len:r.path_len + r.resolved_len]
        path = kernel_text(path_b)
        major, minor = r.dev >> 20, r.dev & 0xFFFFF
        data = schema.FileOpenData(
            path_bytes=None if utf8(path_b) else path_b,
            path=path, path_truncated=bool(r.path_truncated), flags=r.flags, mode=r.mode,
            result=r.retval, device=os.makedev(major, minor), inode=r.ino,
            syscall={1: "open", 3: "openat2", 4: "creat"}.get(r.syscall, "openat"),
            **({} if not resolved else dict(
                resolved_path=kernel_text(resolved),
                resolved_path_bytes=None if utf8(resolved) else resolved,
                resolved_path_truncated=bool(r.resolved_truncated))),
        )
        if r.retval >= 0 and r.ino:
            where = f"inode {r.ino} on {major}:{minor}"
            target = schema.TargetContext(
                type="inode", device=os.makedev(major, minor), inode=r.ino, path=path or None,
                # A path cut at its limit is marked so in the text.
                formatted=f"{path}{'[…]' if r.path_truncated else ''} ({where})" if path else where)
    elif kind in (lib.RG_KIND_NET_CONNECT, lib.RG_KIND_NET_SENDMSG):
        v6 = r.family == socket.AF_INET6
        addr_bytes = field_bytes(r.addr)
        if v6:
            address = socket.inet_ntop(socket.AF_INET6, addr_bytes)  # libc's text, like the encoder
            formatted = f"[{address}]:{r.port}"
        else:
            address = str(ipaddress.IPv4Address(addr_bytes[:4]))
            formatted = f"{address}:{r.port}"
        family = "ipv6" if v6 else "ipv4"
        common = dict(family=family, protocol=PROTOCOLS.get(r.protocol, f"proto-{r.protocol}"),
                      address=address, port=r.port, result=r.retval, fd=r.fd)
        if r.local_family in (socket.AF_INET, socket.AF_INET6):
            local = field_bytes(r.local_addr)
            common.update(local_port=r.local_port, local_address=socket.inet_ntop(
                r.local_family, local if r.local_family == socket.AF_INET6 else local[:4]))
        if kind == lib.RG_KIND_NET_CONNECT:
            data = schema.NetConnectData(**common)
        else:
            data = schema.NetSendmsgData(**common, syscall="sendmsg" if r.syscall == 2 else "sendto")
        target = schema.TargetContext(type=family, address=address, port=r.port, formatted=formatted)
    elif kind == lib.RG_KIND_PTRACE:
        data = schema.PtraceData(request=r.request, target_pid=r.target_pid, result=r.retval)
        target = schema.TargetContext(type="pid", pid=r.target_pid, formatted=f"pid {r.target_pid}")
    elif kind == lib.RG_KIND_PROCESS_MEMORY:
        data = schema.ProcessMemoryData(
            method={1: "process_vm_readv", 2: "process_vm_writev", 5: "proc_environ_open"}.get(r.method,
                                                                                              "proc_mem_open"),
            target_pid=r.target_pid, flags=r.flags, result=r.retval)
        target = schema.TargetContext(type="pid", pid=r.target_pid, formatted=f"pid {r.target_pid}")
    else:  # pragma: no cover
        raise AssertionError(kind)
    known = lambda v: None if v == lib.RG_ID_UNKNOWN else v  # noqa: E731
    return Flat(
        timestamp=h.timestamp_ns, id=kind, name=schema.EVENT_NAMES[kind], data=data,
        seq=h.seq, cpu=h.cpu, pid=h.pid, tid=h.tid, entity_id=entity(h.pid, h.start_boottime),
        cgroup_id=h.cgroup_id, target_context=target, uid=known(h.uid), euid=known(h.euid), gid=known(h.gid),
        comm=kernel_text(cstr(h.comm)),
    )


# ---------------------------------------------------------------- record strategies

def fill_header(draw, rec, kind: int) -> None:
    h = rec.hdr
    h.kind = kind
    h.timestamp_ns = draw(BOOT_NS)
    h.seq = draw(U64)
    h.cgroup_id = draw(U64)
    h.start_boottime = draw(st.one_of(st.just(0), BOOT_NS))
    h.cpu = draw(st.integers(0, 7))
    h.pid = draw(st.one_of(PID, U32))
    h.tid = draw(st.one_of(PID, U32))
    h.uid, h.euid, h.gid = (draw(st.one_of(st.just(lib.RG_ID_UNKNOWN), U32)) for _ in range(3))
    put(h.comm, draw(cstring_field(16)))


def kernel_bytes(max_size: int):
    """Bytes a kernel string field may hold: valid UTF-8, arbitrary bytes, or odd mixes."""
    return st.one_of(
        st.text(max_size=max_size).map(lambda s: s.encode("utf-8")[:max_size]),
        st.binary(max_size=max_size),
        st.lists(st.sampled_from([b"a", b"/", b"\xc3\xa9", b"\xe2\x82\xac", b"\xf0\x9f\x98\x80", b"\xff",
                                  b"\xc0\xaf", b"\xed\xa0\x80", b"\xe2\x82", b"\x80", b"\xf4\x90\x80\x80"]),
                 max_size=max_size // 4).map(lambda parts: b"".join(parts)[:max_size]),
    )


@st.composite
def cstring_field(draw, size: int):
    """A NUL-terminated (or, at full size, unterminated) string plus junk after the NUL."""
    text = draw(kernel_bytes(size)).replace(b"\0", b"")[:size]
    if len(text) < size:
        text += b"\0" + draw(st.binary(max_size=size - len(text) - 1))
    return text


def put(arr, data: bytes) -> None:
    ffi.memmove(arr, data, len(data))


def put_file_text(rec, path: bytes, resolved: bytes = b"") -> None:
    """A file record's text, as the kernel packs it: the path as passed, then
    the resolved one, each only as long as it is."""
    assert len(path) < 256 and len(resolved) < 256
    rec.path_len, rec.resolved_len = len(path), len(resolved)
    put(rec.text, path + resolved)


def file_record_sent(rec) -> bytes:
    """The bytes the kernel sends of a file record: up to its text's end."""
    return raw(rec)[: ffi.offsetof("struct rg_file_record", "text") + rec.path_len + rec.resolved_len]


def put_resolved(draw, field, start_name: str, rec) -> None:
    """A path written backward, as the kernel's dentry walk does: its text
    ends at the field's last byte; or anything at all, any start."""
    if draw(st.booleans()):
        text = draw(kernel_bytes(255)).replace(b"\0", b"")[:255]
        put(field, draw(st.binary(min_size=255 - len(text), max_size=255 - len(text))) + text + b"\0")
        setattr(rec, start_name, 255 - len(text))
    else:
        put(field, draw(st.binary(max_size=256)))
        setattr(rec, start_name, draw(st.one_of(st.integers(0, 300), U16)))


@st.composite
def exec_records(draw):
    rec = ffi.new("struct rg_exec_record *")
    fill_header(draw, rec, lib.RG_KIND_PROCESS_EXEC)
    rec.parent_start_boottime = draw(st.one_of(st.just(0), BOOT_NS))
    rec.retval = draw(st.one_of(st.just(0), I32))
    rec.ppid = draw(st.one_of(PID, U32))
    rec.ns_pid, rec.pid_ns = draw(st.one_of(PID, U32)), draw(U32)
    rec.args_truncated = draw(st.sampled_from([0, 1, 255]))
    rec.filename_truncated = draw(st.sampled_from([0, 1, 255]))
    put(rec.filename, draw(cstring_field(256)))
    put_resolved(draw, rec.exe_path, "exe_path_start", rec)
    rec.exe_path_truncated, rec.exe_unlinked = draw(st.sampled_from([0, 1])), draw(st.sampled_from([0, 1]))
    rec.exe_dev = draw(st.integers(0, 4095)) << 20 | draw(st.integers(0, 2**20 - 1))
    rec.exe_ino = draw(U64)
    rec.auid, rec.suid, rec.fsuid = draw(st.one_of(st.just(0xFFFFFFFF), U32)), draw(U32), draw(U32)
    rec.cap_effective, rec.cap_permitted = draw(U64), draw(U64)
    rec.secureexec, rec.cwd_truncated = draw(st.sampled_from([0, 1])), draw(st.sampled_from([0, 1]))
    for i in range(3):
        rec.stdio[i] = draw(st.integers(0, 255))
    put(rec.tty, draw(st.one_of(st.just(b"pts" + str(draw(st.integers(0, 4095))).encode() + b"\0"),
                                cstring_field(lib.RG_TTY_LEN))))
    put_resolved(draw, rec.cwd_path, "cwd_path_start", rec)
    if draw(st.booleans()):
        # Structured argv: NUL-separated arguments, the last one maybe cut short.
        argv = draw(st.lists(kernel_bytes(40).map(lambda b: b.replace(b"\0", b"")), max_size=12))
        args = b"".join(a + b"\0" for a in argv)
        if argv and draw(st.booleans()):
            args = args[:-1]
        args = args[:512]
        put(rec.args, args + draw(st.binary(max_size=512 - len(args))))
        rec.args_len = len(args)
    else:
        # Anything at all, args_len possibly past the buffer.
        put(rec.args, draw(st.binary(max_size=512)))
        rec.args_len = draw(st.one_of(st.integers(0, 600), U32))
    return rec


@st.composite
def fork_records(draw):
    rec = ffi.new("struct rg_fork_record *")
    fill_header(draw, rec, lib.RG_KIND_PROCESS_FORK)
    rec.child_pid = draw(st.one_of(PID, U32))
    rec.child_start_boottime = draw(BOOT_NS)
    rec.child_ns_pid, rec.child_pid_ns = draw(st.one_of(PID, U32)), draw(U32)
    return rec


@st.composite
def exit_statuses(draw):
    return draw(st.one_of(
        st.builds(lambda code, sig, core: code << 8 | core | sig,
                  st.integers(0, 255), st.integers(0, 127), st.sampled_from([0, 0x80])),
        U32,
    ))


@st.composite
def exit_records(draw):
    rec = ffi.new("struct rg_exit_record *")
    fill_header(draw, rec, lib.RG_KIND_PROCESS_EXIT)
    rec.exit_code = draw(exit_statuses())
    return rec


@st.composite
def file_records(draw):
    rec = ffi.new("struct rg_file_record *")
    fill_header(draw, rec, lib.RG_KIND_FILE_OPEN)
    rec.retval = draw(st.one_of(st.integers(-4095, 1 << 20), I64))
    major, minor = draw(st.integers(0, 4095)), draw(st.integers(0, 2**20 - 1))
    rec.dev = major << 20 | minor
    rec.ino = draw(st.one_of(st.just(0), U64))
    rec.flags, rec.mode = draw(U32), draw(U32)
    rec.syscall = draw(st.one_of(st.integers(1, 4), U32))
    rec.path_truncated = draw(st.sampled_from([0, 1]))
    path = draw(kernel_bytes(255))
    resolved = draw(st.one_of(st.just(b""), kernel_bytes(255)))
    put_file_text(rec, path, resolved)
    # Beyond the text it uses, anything: the record is sent without it.
    put(rec.text[len(path) + len(resolved):512], draw(st.binary(max_size=512 - len(path) - len(resolved))))
    rec.resolved_truncated = draw(st.sampled_from([0, 1]))
    return rec


@st.composite
def net_records(draw, kind=None, family=None):
    rec = ffi.new("struct rg_net_record *")
    kind = kind if kind is not None else draw(st.sampled_from([lib.RG_KIND_NET_CONNECT, lib.RG_KIND_NET_SENDMSG]))
    fill_header(draw, rec, kind)
    rec.family = family if family is not None else draw(st.sampled_from([socket.AF_INET, socket.AF_INET6]))
    put(rec.addr, draw(st.binary(min_size=16, max_size=16)))
    rec.port = draw(U16)
    rec.protocol = draw(st.one_of(st.sampled_from(sorted(PROTOCOLS)), U16))
    rec.sock_type = draw(U16)
    rec.fd = draw(U32)
    rec.retval = draw(I64)
    rec.syscall = draw(st.one_of(st.sampled_from([0, 1, 2]), U32))
    rec.local_family = draw(st.one_of(st.sampled_from([0, socket.AF_INET, socket.AF_INET6]), U16))
    put(rec.local_addr, draw(st.binary(min_size=16, max_size=16)))
    rec.local_port = draw(U16)
    return rec


@st.composite
def ptrace_records(draw):
    rec = ffi.new("struct rg_ptrace_record *")
    fill_header(draw, rec, lib.RG_KIND_PTRACE)
    rec.request = draw(st.one_of(st.sampled_from(sorted(schema.PTRACE_REQUESTS)), I64))
    rec.retval = draw(I64)
    rec.target_pid = draw(st.one_of(PID, U32))
    return rec


@st.composite
def memory_records(draw):
    rec = ffi.new("struct rg_memory_record *")
    fill_header(draw, rec, lib.RG_KIND_PROCESS_MEMORY)
    rec.retval = draw(I64)
    rec.target_pid = draw(st.one_of(PID, U32))
    rec.method = draw(st.one_of(st.integers(1, 5), U32))
    rec.flags = draw(U32)
    return rec


RECORD_STRATEGIES = {
    "process_exec": exec_records(),
    "process_fork": fork_records(),
    "process_exit": exit_records(),
    "file_open": file_records(),
    "net_connect": net_records(kind=lib.RG_KIND_NET_CONNECT),
    "net_sendmsg": net_records(kind=lib.RG_KIND_NET_SENDMSG),
    "ptrace": ptrace_records(),
    "process_memory": memory_records(),
}
any_record = st.one_of(*RECORD_STRATEGIES.values())


def encode_one(rec_bytes: bytes) -> Flat:
    malformed, events = encode([rec_bytes])
    assert malformed == 0
    assert len(events) == 1
    return events[0]


# ---------------------------------------------------------------- addresses

def net_record(address, port, kind=lib.RG_KIND_NET_CONNECT):
    rec = ffi.new("struct rg_net_record *")
    rec.hdr.kind = kind
    rec.hdr.pid = 1234
    rec.family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    put(rec.addr, address.packed)  # network byte order, as in the sockaddr
    rec.port = port
    return raw(rec)


@settings(max_examples=200)
@given(address=st.ip_addresses(v=4), port=U16, kind=st.sampled_from([lib.RG_KIND_NET_CONNECT,
                                                                       lib.RG_KIND_NET_SENDMSG]))
@example(address=ipaddress.IPv4Address("127.1.2.3"), port=8080, kind=lib.RG_KIND_NET_CONNECT)
@example(address=ipaddress.IPv4Address("192.168.1.100"), port=443, kind=lib.RG_KIND_NET_CONNECT)
@example(address=ipaddress.IPv4Address("192.168.1.100"), port=53, kind=lib.RG_KIND_NET_SENDMSG)
@example(address=ipaddress.IPv4Address("0.0.0.0"), port=0, kind=lib.RG_KIND_NET_CONNECT)
@example(address=ipaddress.IPv4Address("255.255.255.255"), port=65535, kind=lib.RG_KIND_NET_CONNECT)
def test_ipv4_address_and_port_round_trip(address, port, kind):
    ev = encode_one(net_record(address, port, kind))
    tc = ev.target_context
    assert tc.type == "ipv4"
    assert ipaddress.ip_address(tc.address) == address
    assert tc.address == str(address)  # dotted quad, never reversed
    assert tc.port == port
    assert tc.formatted == f"{address}:{port}"
    assert ev.data.family == "ipv4"
    assert ev.data.address == tc.address
    assert ev.data.port == port


@pytest.mark.parametrize("text", ["127.1.2.3", "192.168.1.100"])
def test_ipv4_byte_order_never_reversed(text):
    ev = encode_one(net_record(ipaddress.IPv4Address(text), 8080))
    reversed_text = ".".join(reversed(text.split(".")))
    assert ev.target_context.address == text != reversed_text
    assert ev.target_context.formatted == f"{text}:8080"
    assert ev.data.address == text


def ipv4_embedded(a: ipaddress.IPv6Address):
    """libc's inet_ntop writes ::ffff:a.b.c.d (mapped) and ::a.b.c.d (compatible) in dotted form."""
    words = struct.unpack("!8H", a.packed)
    if words[:5] == (0,) * 5 and words[5] == 0xFFFF:
        return f"::ffff:{ipaddress.IPv4Address(a.packed[12:])}"
    if words[:6] == (0,) * 6 and words[6] != 0:
        return f"::{ipaddress.IPv4Address(a.packed[12:])}"
    return None


@settings(max_examples=200)
@given(
    address=st.one_of(
        st.ip_addresses(v=6),
        # Addresses with zero runs, to exercise "::" placement.
        st.lists(st.sampled_from([0, 0, 0, 1, 0xFFFF, 0x0DB8, 0x2001, 0xFE80, 0x0A00]), min_size=8, max_size=8)
        .map(lambda w: ipaddress.IPv6Address(struct.pack("!8H", *w))),
        st.ip_addresses(v=4).map(lambda a: ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + a.packed)),
    ),
    port=U16,
)
@example(address=ipaddress.IPv6Address("::1"), port=443)
@example(address=ipaddress.IPv6Address("::"), port=0)
@example(address=ipaddress.IPv6Address("2001:db8::1"), port=80)
@example(address=ipaddress.IPv6Address("2001:db8:0:0:1:0:0:1"), port=80)
@example(address=ipaddress.IPv6Address("fe80::1:0:0:0"), port=22)
@example(address=ipaddress.IPv6Address("::ffff:192.168.1.100"), port=8080)
@example(address=ipaddress.IPv6Address("::ffff:127.1.2.3"), port=8080)
def test_ipv6_address_and_port_round_trip(address, port):
    ev = encode_one(net_record(address, port))
    tc = ev.target_context
    assert tc.type == "ipv6"
    assert ipaddress.ip_address(tc.address) == address
    assert tc.port == port
    assert tc.formatted == f"[{tc.address}]:{port}"
    assert ev.data.family == "ipv6"
    assert ev.data.address == tc.address
    assert ev.data.port == port
    # Compressed (RFC 5952): lower case, no leading zeros, the longest zero run as "::".
    # An embedded IPv4 address is written dotted, as libc's inet_ntop does.
    embedded = ipv4_embedded(address)
    assert tc.address == (address.compressed if embedded is None else embedded)
    assert ipaddress.ip_address(ipaddress.ip_address(tc.address).compressed) == address


@given(address=st.ip_addresses(v=4), port=U16)
@example(address=ipaddress.IPv4Address("192.168.1.100"), port=443)
def test_ipv4_mapped_ipv6_round_trips(address, port):
    mapped = ipaddress.IPv6Address(f"::ffff:{address}")
    ev = encode_one(net_record(mapped, port))
    assert ev.target_context.address == ev.data.address == f"::ffff:{address}"
    assert ev.target_context.formatted == f"[::ffff:{address}]:{port}"


# ---------------------------------------------------------------- every record kind

@pytest.mark.parametrize("name", sorted(RECORD_STRATEGIES))
@settings(max_examples=60)
@given(data=st.data())
def test_every_kind_decodes_to_its_model(name, data):
    rec = data.draw(RECORD_STRATEGIES[name])
    rec_bytes = raw(rec)
    ev = encode_one(rec_bytes)
    assert ev.name == name
    assert ev.id == schema.EVENT_IDS[name]
    assert ev.data.__struct_config__.tag == name
    assert ev == model(rec_bytes)


@settings(max_examples=100)
@given(rec=any_record, extra=st.binary(max_size=64))
def test_trailing_bytes_after_a_record_are_ignored(rec, extra):
    rec_bytes = raw(rec)
    assert encode_one(rec_bytes + extra) == model(rec_bytes)


@given(rec=any_record, start=BOOT_NS.filter(bool))
def test_header_entity_id_and_timestamp(rec, start):
    rec.hdr.start_boottime = start
    ev = encode_one(raw(rec))
    assert ev.entity_id == entity(rec.hdr.pid, start)
    assert ev.timestamp == rec.hdr.timestamp_ns  # realtime offset is 0 in rg_encode_records
    rec.hdr.start_boottime = 0
    assert encode_one(raw(rec)).entity_id == 0


@given(code=st.integers(0, 255), signal=st.integers(0, 127), core=st.booleans())
def test_exit_status_word(code, signal, core):
    rec = ffi.new("struct rg_exit_record *")
    rec.hdr.kind = lib.RG_KIND_PROCESS_EXIT
    rec.exit_code = code << 8 | (0x80 if core else 0) | signal
    d = encode_one(raw(rec)).data
    if signal:
        assert (d.exit_code, d.signal) == (None, signal)
    else:
        assert (d.exit_code, d.signal) == (code, None)
    assert d.core_dumped is core


@given(major=st.integers(0, 4095), minor=st.integers(0, 2**20 - 1), ino=U64.filter(bool),
       retval=st.integers(0, 2**31 - 1))
@example(major=8, minor=1, ino=1234, retval=3)
@example(major=259, minor=0x12345, ino=2, retval=0)
def test_file_device_is_user_space_dev_t(major, minor, ino, retval):
    rec = ffi.new("struct rg_file_record *")
    rec.hdr.kind = lib.RG_KIND_FILE_OPEN
    rec.dev = major << 20 | minor  # the kernel's dev_t (MKDEV)
    rec.ino = ino
    rec.retval = retval
    put_file_text(rec, b"/etc/shadow")
    ev = encode_one(file_record_sent(rec))
    assert ev.data.device == os.makedev(major, minor)
    assert os.major(ev.data.device) == major and os.minor(ev.data.device) == minor
    assert ev.data.inode == ino
    tc = ev.target_context
    assert (tc.type, tc.device, tc.inode, tc.path) == ("inode", ev.data.device, ino, "/etc/shadow")
    assert tc.formatted == f"/etc/shadow (inode {ino} on {major}:{minor})"


@given(rec=file_records(), retval=st.one_of(st.integers(-4095, -1), I64), ino=U64)
def test_file_target_context_only_for_an_opened_inode(rec, retval, ino):
    rec.retval = retval
    rec.ino = ino
    ev = encode_one(raw(rec))
    assert (ev.target_context is not None) == (retval >= 0 and ino != 0)


def test_real_stat_device_matches():
    st_ = os.stat("/")
    rec = ffi.new("struct rg_file_record *")
    rec.hdr.kind = lib.RG_KIND_FILE_OPEN
    rec.dev = os.major(st_.st_dev) << 20 | os.minor(st_.st_dev)
    rec.ino = st_.st_ino
    put_file_text(rec, b"/")
    ev = encode_one(file_record_sent(rec))
    assert (ev.data.device, ev.data.inode) == (st_.st_dev, st_.st_ino)


@given(argv=st.lists(st.text(max_size=20).map(lambda s: s.replace("\0", "")), min_size=1, max_size=10),
       cut=st.booleans())
def test_exec_argv(argv, cut):
    rec = ffi.new("struct rg_exec_record *")
    rec.hdr.kind = lib.RG_KIND_PROCESS_EXEC
    args = b"".join(a.encode() + b"\0" for a in argv)
    assume(len(args) <= 512)
    assume(not cut or argv[-1] != "")
    if cut:
        args = args[:-1]  # the last argument lost its NUL: truncated
    put(rec.args, args)
    rec.args_len = len(args)
    d = encode_one(raw(rec)).data
    assert d.argv == argv
    assert d.argv_truncated is cut


def test_exec_empty_and_full_args():
    rec = ffi.new("struct rg_exec_record *")
    rec.hdr.kind = lib.RG_KIND_PROCESS_EXEC
    d = encode_one(raw(rec)).data
    assert (d.argv, d.argv_truncated) == ([], False)
    put(rec.args, b"x" * 512)
    rec.args_len = 10_000  # past the buffer: clamped to it
    d = encode_one(raw(rec)).data
    assert (d.argv, d.argv_truncated) == (["x" * 512], True)


# ---------------------------------------------------------------- batches

@settings(max_examples=100)
@given(recs=st.lists(any_record, max_size=60), bases=st.lists(U32, min_size=8, max_size=8),
       steps=st.lists(st.integers(1, 5), min_size=60, max_size=60))
def test_batch_keeps_every_record_in_order(recs, bases, steps):
    seq = list(bases)
    for i, rec in enumerate(recs):
        cpu = rec.hdr.cpu
        seq[cpu] += steps[i]
        rec.hdr.seq = seq[cpu]
    blobs = [raw(r) for r in recs]
    malformed, events = encode(blobs)
    assert malformed == 0
    assert len(events) == len(blobs)
    assert events == [model(b) for b in blobs]
    last = {}
    for ev in events:
        assert ev.seq > last.get(ev.cpu, -1)
        last[ev.cpu] = ev.seq


# ---------------------------------------------------------------- malformed input

@st.composite
def malformed_records(draw):
    how = draw(st.sampled_from(["short", "truncated", "unknown_kind"]))
    if how == "short":
        return draw(st.binary(max_size=HEADER_SIZE - 1))
    if how == "truncated":
        full = raw(draw(any_record))
        kind = struct.unpack_from("<I", full, KIND_OFFSET)[0]
        end = RECORD_SIZES[kind]
        if kind == lib.RG_KIND_FILE_OPEN:
            # Packed: whole as far as its text goes, cut short of that.
            path_len, resolved_len = struct.unpack_from("<HH", full, ffi.offsetof("struct rg_file_record", "path_len"))
            end = min(end, ffi.offsetof("struct rg_file_record", "text") + path_len + resolved_len)
        return full[: draw(st.integers(HEADER_SIZE, end - 1))]
    # No kernel record has these kinds: none, made in user space, unused.
    kind = draw(st.one_of(st.sampled_from([k for k in range(lib.RG_KIND_SLOTS) if not lib.rg_kinds[k].record_size]),
                          st.integers(lib.RG_KIND_SLOTS, 2**32 - 1)))
    body = bytearray(draw(st.binary(min_size=HEADER_SIZE, max_size=1000)))
    struct.pack_into("<I", body, KIND_OFFSET, kind)
    return bytes(body)


@settings(max_examples=150)
@given(items=st.lists(st.one_of(any_record.map(lambda r: ("ok", raw(r))),
                                malformed_records().map(lambda b: ("bad", b))), max_size=30))
def test_malformed_records_are_counted_and_skipped(items):
    malformed, events = encode([b for _, b in items])
    good = [b for tag, b in items if tag == "ok"]
    assert malformed == len(items) - len(good)
    assert events == [model(b) for b in good]


@given(path_len=st.integers(0, 2**16 - 1), resolved_len=st.integers(0, 2**16 - 1), cut=st.integers(0, 600))
def test_file_text_lengths_past_the_record_are_malformed(path_len, resolved_len, cut):
    # The text holds only what its lengths say: lengths past the bytes
    # received, or past their limits, make the record malformed, never a read
    # beyond it.
    rec = ffi.new("struct rg_file_record *")
    rec.hdr.kind = lib.RG_KIND_FILE_OPEN
    rec.path_len, rec.resolved_len = path_len, resolved_len
    head = ffi.offsetof("struct rg_file_record", "text")
    sent = raw(rec)[: head + cut]
    fits = path_len < 256 and resolved_len < 256 and head + path_len + resolved_len <= len(sent)
    malformed, events = encode([sent])
    assert (len(events), malformed) == ((1, 0) if fits else (0, 1))


def test_lost_kind_from_the_ring_is_malformed():
    # "lost" notices are made by the consumer, never read from the ring.
    rec = ffi.new("struct rg_exit_record *")
    rec.hdr.kind = lib.RG_KIND_LOST
    assert encode([raw(rec)]) == (1, [])


def frames_of(data: bytes) -> list[bytes]:
    """The framing rg_encode_records applies: a length past the end is cut to what is left."""
    out, pos = [], 0
    while pos + 4 <= len(data):
        (n,) = struct.unpack_from("<I", data, pos)
        pos += 4
        n = min(n, len(data) - pos)
        out.append(data[pos: pos + n])
        pos += n
    return out


def well_formed(rec: bytes) -> bool:
    if len(rec) < HEADER_SIZE:
        return False
    kind = struct.unpack_from("<I", rec, KIND_OFFSET)[0]
    if kind == lib.RG_KIND_FILE_OPEN:
        # Only as long as its text: the lengths say how long.
        head = ffi.offsetof("struct rg_file_record", "text")
        if len(rec) < head:
            return False
        path_len, resolved_len = struct.unpack_from("<HH", rec, ffi.offsetof("struct rg_file_record", "path_len"))
        return path_len < 256 and resolved_len < 256 and head + path_len + resolved_len <= len(rec)
    return kind in RECORD_SIZES and len(rec) >= RECORD_SIZES[kind]


def check_arbitrary(data: bytes):
    rc, malformed, events = encode_raw(data)
    assert rc >= 0
    frames = frames_of(data)
    assert rc == len(events)
    assert rc + malformed == len(frames)
    assert rc == sum(map(well_formed, frames))
    for ev in events:
        assert ev.id == schema.EVENT_IDS[ev.name]
    return events


@settings(max_examples=200)
@given(data=st.binary(max_size=4096))
def test_arbitrary_bytes_never_crash(data):
    check_arbitrary(data)


@st.composite
def random_frames(draw):
    """Frames with random bytes but plausible kinds and lengths, so most reach a per-kind encoder."""
    kind = draw(st.one_of(st.sampled_from(sorted(RECORD_SIZES)), st.integers(0, 40)))
    size = RECORD_SIZES.get(kind, 64)
    n = draw(st.one_of(st.just(size), st.integers(0, size + 32)))
    body = bytearray(draw(st.binary(min_size=n, max_size=n)))
    if n >= KIND_OFFSET + 4:
        struct.pack_into("<I", body, KIND_OFFSET, kind)
    return bytes(body)


@settings(max_examples=200)
@given(frames=st.lists(random_frames(), max_size=20), tail=st.binary(max_size=8))
def test_random_records_never_crash(frames, tail):
    events = check_arbitrary(frame(frames) + tail)
    wellformed = [f for f in frames if well_formed(f)]
    assert len(events) >= len(wellformed)


@given(rec=any_record, claim=st.integers(1, 2**32 - 1))
def test_length_past_the_end_is_cut_to_what_is_left(rec, claim):
    rec_bytes = raw(rec)
    data = struct.pack("<I", max(claim, len(rec_bytes))) + rec_bytes
    rc, malformed, events = encode_raw(data)
    assert (rc, malformed) == (1, 0)
    assert events == [model(rec_bytes)]


def encode_into_marked_buffer(data: bytes, cap: int):
    """(return code, out_len, the first 32 output bytes), the output pre-filled with 0xaa."""
    ffi.memmove(_OUT, b"\xaa" * 32, 32)
    _OUT_LEN[0] = 12345
    rc = lib.rg_encode_records(data, len(data), _OUT, cap, _OUT_LEN, _MALFORMED)
    return rc, _OUT_LEN[0], bytes(ffi.buffer(_OUT, 32))


def test_the_largest_exec_fits_the_room_one_record_may_take():
    # Every text byte invalid UTF-8 (each escaped to three bytes, and sent
    # again as bytes), every argument one byte long, every number at its
    # widest: the encoder's worst case.
    rec = ffi.new("struct rg_exec_record *")
    rec.hdr.kind = lib.RG_KIND_PROCESS_EXEC
    rec.hdr.timestamp_ns = rec.hdr.seq = rec.hdr.cgroup_id = rec.hdr.start_boottime = 2**64 - 1
    rec.hdr.pid = rec.hdr.uid = rec.hdr.euid = rec.hdr.gid = rec.ppid = rec.ns_pid = rec.pid_ns = 2**32 - 1
    rec.retval, rec.parent_start_boottime, rec.exe_dev, rec.exe_ino = 0, 2**64 - 1, 2**64 - 1, 2**64 - 1
    rec.suid = rec.fsuid = rec.auid = 2**32 - 2
    rec.cap_effective = rec.cap_permitted = 2**64 - 1
    ffi.memmove(rec.hdr.comm, b"\xff" * 15 + b"\0", 16)
    ffi.memmove(rec.filename, b"\xff" * 255 + b"\0", 256)
    ffi.memmove(rec.exe_path, b"\xff" * 255 + b"\0", 256)
    ffi.memmove(rec.cwd_path, b"\xff" * 255 + b"\0", 256)
    ffi.memmove(rec.tty, b"\xff" * (lib.RG_TTY_LEN - 1) + b"\0", lib.RG_TTY_LEN)
    rec.exe_path_start = rec.cwd_path_start = 0
    ffi.memmove(rec.args, b"\xff\0" * 256, 512)
    rec.args_len = 512
    # Every identity slot held, each by a pattern as long as allowed, and
    # every one found.
    rec.identity_mask = 2**64 - 1
    held = [lib.rg_identity_hold_env(f"{i:03d}".encode() + b"N" * (lib.RG_IDENTITY_NAME_MAX - 3))
            for i in range(lib.RG_IDENTITY_MAX)]
    try:
        assert sorted(held) == list(range(lib.RG_IDENTITY_MAX))
        rc, malformed, events = encode_raw(frame([raw(rec)]))
    finally:
        lib.rg_identity_release(2**64 - 1, 0)
    assert (rc, malformed) == (1, 0)
    assert _OUT_LEN[0] - 5 <= MAX_ENCODED_RECORD
    assert len(events[0].data.argv) == 256 and events[0].data.cwd_bytes == b"\xff" * 255
    assert len(events[0].data.identities) == lib.RG_IDENTITY_MAX


def test_output_too_small_is_enobufs():
    # Room for the batch's array header (5 bytes) and one largest record is needed before each record.
    rec = ffi.new("struct rg_ptrace_record *")
    rec.hdr.kind = lib.RG_KIND_PTRACE
    data = frame([raw(rec)])
    assert encode_into_marked_buffer(data, MAX_ENCODED_RECORD + 4) == (-errno.ENOBUFS, 0, b"\xaa" * 32)
    rc, out_len, head = encode_into_marked_buffer(data, MAX_ENCODED_RECORD + 5)
    assert (rc, head[:5]) == (1, b"\xdd\x00\x00\x00\x01")  # array32 of one event
    assert len(schema.batch_decoder.decode(ffi.buffer(_OUT, out_len))) == 1


def test_tiny_output_buffer_is_refused():
    # Below the 5 bytes of the array header nothing is written, whatever the input.
    rec = ffi.new("struct rg_ptrace_record *")
    rec.hdr.kind = lib.RG_KIND_PTRACE
    for data in (frame([raw(rec)]), b""):
        for cap in range(5):
            assert encode_into_marked_buffer(data, cap) == (-errno.ENOBUFS, 0, b"\xaa" * 32), (cap, len(data))
    # Five bytes hold an empty batch.
    assert encode_into_marked_buffer(b"", 5) == (0, 5, b"\xdd\x00\x00\x00\x00" + b"\xaa" * 27)


# ---------------------------------------------------------------- text

@settings(max_examples=200)
@given(path=kernel_bytes(255).map(lambda b: b.replace(b"\0", b"")))
@example(path=b"/tmp/\xff\xfe")
@example(path=b"/tmp/\xe2\x82")  # a cut multi-byte sequence: two U+FFFD
@example(path=b"\xed\xa0\x80")  # an encoded surrogate: invalid, three U+FFFD
@example(path=b"\xc0\xaf")  # overlong "/"
@example(path=b"\xf4\x90\x80\x80")  # past U+10FFFF
def test_path_bytes_always_decode(path):
    rec = ffi.new("struct rg_file_record *")
    rec.hdr.kind = lib.RG_KIND_FILE_OPEN
    rec.ino, rec.retval = 7, 3
    put_file_text(rec, path)
    ev = encode_one(file_record_sent(rec))
    expected = kernel_text(path)
    assert ev.data.path == expected
    assert ev.target_context.path == (expected or None)
    try:
        assert ev.data.path == path.decode("utf-8")  # valid UTF-8 is kept exactly
    except UnicodeDecodeError:
        assert "\ufffd" in ev.data.path


@settings(max_examples=200)
@given(comm=st.text(max_size=5), exe=st.text(max_size=60), argv=st.lists(st.text(max_size=20), max_size=8))
def test_valid_utf8_text_is_preserved(comm, exe, argv):
    comm, exe = comm.replace("\0", ""), exe.replace("\0", "")
    argv = [a.replace("\0", "") for a in argv]
    comm_b, exe_b = comm.encode(), exe.encode()
    args = b"".join(a.encode() + b"\0" for a in argv)
    assume(len(comm_b) <= 16 and len(exe_b) <= 256 and len(args) <= 512)
    rec = ffi.new("struct rg_exec_record *")
    rec.hdr.kind = lib.RG_KIND_PROCESS_EXEC
    put(rec.hdr.comm, comm_b)
    put(rec.filename, exe_b)
    put(rec.args, args)
    rec.args_len = len(args)
    d = encode_one(raw(rec)).data
    assert (d.comm, d.executable, d.argv, d.argv_truncated) == (comm, exe, argv, False)


@settings(max_examples=200)
@given(comm=st.binary(min_size=16, max_size=16), exe=st.binary(max_size=256), args=st.binary(max_size=512))
def test_arbitrary_exec_text_always_decodes(comm, exe, args):
    rec = ffi.new("struct rg_exec_record *")
    rec.hdr.kind = lib.RG_KIND_PROCESS_EXEC
    put(rec.hdr.comm, comm)  # 16 bytes, possibly without a NUL
    put(rec.filename, exe)
    put(rec.args, args)
    rec.args_len = len(args)
    rec_bytes = raw(rec)
    ev = encode_one(rec_bytes)
    assert ev == model(rec_bytes)
    assert ev.data.comm == kernel_text(comm.split(b"\0", 1)[0])


# ---------------------------------------------------------------- entity ids

@given(pid=PID, tick=st.integers(0, 2**38), a=st.integers(0, NS_PER_TICK - 1), b=st.integers(0, NS_PER_TICK - 1))
def test_entity_id_stable_within_a_clock_tick(pid, tick, a, b):
    x = lib.rg_entity_id(pid, tick * NS_PER_TICK + a)
    assert x == lib.rg_entity_id(pid, tick * NS_PER_TICK + b)
    # /proc/<pid>/stat reports the start in ticks: a process found there gets the same id.
    assert x == lib.rg_entity_id(pid, tick * NS_PER_TICK)
    assert 0 <= x < 2**63


@settings(max_examples=100)
@given(keys=st.lists(st.tuples(PID, st.integers(0, 2**38)), unique=True, min_size=2, max_size=300))
def test_entity_ids_differ_across_pids_and_ticks(keys):
    ids = {lib.rg_entity_id(pid, tick * NS_PER_TICK + NS_PER_TICK // 2) for pid, tick in keys}
    assert len(ids) == len(keys)


def test_entity_ids_of_neighbours_differ():
    ids = {lib.rg_entity_id(pid, tick * NS_PER_TICK) for pid in range(1, 200) for tick in range(50)}
    assert len(ids) == 199 * 50


def test_mix64_is_splitmix64():
    # SplitMix64's published sequences: seeded with 1234567, and the first output seeded with 0.
    state, out = 1234567, []
    for _ in range(5):
        state = (state + 0x9E3779B97F4A7C15) & MASK64
        out.append(mix64(state))
    assert out == [6457827717110365317, 3203168211198807973, 9817491932198370423, 4593380528125082431,
                   16408922859458223821]
    assert mix64(0x9E3779B97F4A7C15) == 0xE220A8397B1DCDAF


FIXED_BOOT_ID = b"5f0c9a1e-3b7d-4c2a-9e61-0d8f2b4a7c13\n"
# (pid, start_boottime_ns) -> entity id under FIXED_BOOT_ID, with 100 clock ticks a second.
ENTITY_ID_VECTORS = {
    (1, 0): 9191718951334027245,
    (1, 10_000_000): 7606479865818154933,
    (1, 19_999_999): 7606479865818154933,  # the same clock tick
    (4242, 123_456_789_000): 5858065819309566414,
    (2**22, 2**63 - 1): 2371047803660781785,
    (2**32 - 1, 5): 2497991891894064997,  # pid bits past 24 fall off the 64-bit key
}


def test_entity_id_reference_known_answers():
    for (pid, start), expected in ENTITY_ID_VECTORS.items():
        assert reference_entity_id(pid, start, FIXED_BOOT_ID, 10_000_000) == expected, (pid, start)


@pytest.mark.root
def test_entity_id_known_answers_under_a_fixed_boot_id(tmp_path):
    # The native function, in a mount namespace where boot_id reads FIXED_BOOT_ID.
    assert os.sysconf("SC_CLK_TCK") == 100  # USER_HZ, which the vectors assume
    fake = tmp_path / "boot_id"
    fake.write_bytes(FIXED_BOOT_ID)
    code = ("from runtimeguard._native import lib\n"
            f"for pid, start in {sorted(ENTITY_ID_VECTORS)!r}:\n"
            "    print(pid, start, lib.rg_entity_id(pid, start))")
    script = f'mount --bind "$1" /proc/sys/kernel/random/boot_id && exec "$2" -c "$3"'
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", str(fake),
                          sys.executable, code], capture_output=True, text=True, cwd=root, timeout=30)
    assert out.returncode == 0, out.stderr
    got = {(int(p), int(s)): int(x) for p, s, x in (line.split() for line in out.stdout.splitlines())}
    assert got == ENTITY_ID_VECTORS


@settings(max_examples=300)
@given(pid=st.one_of(PID, U32), start=BOOT_NS)
def test_entity_id_matches_the_reference(pid, start):
    assert lib.rg_entity_id(pid, start) == reference_entity_id(pid, start, BOOT_ID, NS_PER_TICK)


# ---------------------------------------------------------------- the JSON Schema

@pytest.fixture(scope="module")
def validator():
    """A validator of the JSON Schema as `runtimeguard schema` prints it."""
    jsonschema = pytest.importorskip("jsonschema")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    printed = subprocess.run([sys.executable, "-m", "runtimeguard", "schema"], capture_output=True, text=True,
                             cwd=root, check=True, timeout=30).stdout
    return jsonschema.Draft202012Validator(json.loads(printed))


@settings(max_examples=100)
@given(rec=any_record.map(raw))
def test_encoded_events_validate_against_the_json_schema(validator, rec):
    validator.validate(json.loads(schema.json_encoder.encode(as_line(encode_one(rec)))))
    # The data as the encoder wrote it, before any schema default fills a missing key.
    validator.validate({**json.loads(schema.json_encoder.encode(as_line(encode_one(rec)))),
                        "data": json.loads(msgspec.json.encode(encode_untyped(rec)["data"]))})


# ---------------------------------------------------------------- key order

def block_record(kind, rule_index=0, family=0, flags=0, path=b"/etc/shadow", action=lib.RG_ACTION_BLOCKED,
                 operation=0):
    rec = ffi.new("struct rg_block_record *")
    rec.operation = operation
    rec.hdr.kind = kind
    rec.hdr.pid = rec.hdr.tid = 4242
    rec.action = action
    rec.rule_index = rule_index
    rec.target_pid = 77
    rec.family = family
    rec.port = 443
    rec.protocol = 6
    rec.flags = flags
    rec.dev, rec.ino = (8 << 20) | 1, 1234
    ffi.memmove(rec.hdr.comm, b"cat", 3)
    ffi.memmove(rec.path, path, len(path))
    return raw(rec)


BLOCK_RECORDS = [
    block_record(lib.RG_KIND_CONNECT_DENIED, family=socket.AF_INET),
    block_record(lib.RG_KIND_EXFIL_BLOCKED, rule_index=lib.RG_RULE_TAINT, family=socket.AF_INET6),
    block_record(lib.RG_KIND_EXFIL_BLOCKED, rule_index=lib.RG_RULE_RAW_SOCKET, family=socket.AF_PACKET),
    block_record(lib.RG_KIND_OPEN_INODE),
    block_record(lib.RG_KIND_MIRAGE_TRAP, path=b""),
    block_record(lib.RG_KIND_PTRACE_DENIED, rule_index=lib.RG_RULE_PTRACE_DENY, flags=lib.RG_MEM_VM_READV),
    block_record(lib.RG_KIND_PROTECTED_FILE_CHANGED, flags=lib.RG_CHANGE_MOVE),
    block_record(lib.RG_KIND_NAMESPACE_DENIED, rule_index=lib.RG_RULE_NAMESPACES, flags=0x10020000,
                 operation=lib.RG_NS_UNSHARE),
    block_record(lib.RG_KIND_NAMESPACE_DENIED, rule_index=lib.RG_RULE_NAMESPACES, operation=lib.RG_NS_MOUNT),
]
DATA_TYPES = {t.__struct_config__.tag: t for t in schema.EventData.__args__}


def assert_keys_in_field_order(obj: dict, struct_type) -> None:
    keys = list(obj)
    tag_field = struct_type.__struct_config__.tag_field
    if tag_field:
        assert keys[0] == tag_field
        keys = keys[1:]
    assert keys == [f for f in struct_type.__struct_fields__ if f in obj], struct_type.__name__


@settings(max_examples=200)
@given(rec=st.one_of(any_record.map(raw), st.sampled_from(BLOCK_RECORDS)))
def test_keys_come_in_the_structs_field_order(rec):
    # msgspec matches a key against the next expected field first: keys out of
    # order cost a search per key on the consumer's hot path.
    event = encode_untyped(rec)
    assert_keys_in_field_order(event["data"], DATA_TYPES[event["data"]["type"]])
    assert schema.EVENT_NAMES[event["id"]] == event["data"]["type"]


def encode_untyped(rec: bytes) -> dict:
    """The one event encoded from rec, as plain msgpack (no schema defaults
    fill in missing keys): the header's fields by name, and the details'."""
    assert lib.rg_encode_records(frame([rec]), len(rec) + 4, _OUT, CAP, _OUT_LEN, _MALFORMED) == 1
    (event,) = msgspec.msgpack.decode(ffi.buffer(_OUT, _OUT_LEN[0]))
    header = dict(zip(("id", "timestamp", "pid", "tid"), event[:4]))
    details = msgspec.msgpack.decode(event[4])
    names = ("seq", "cpu", "entity_id", "cgroup_id", "uid", "euid", "gid", "comm", "action", "data", "target")
    return {**header, **dict(zip(names, details))}


def as_line(ev: Flat) -> schema.EventRecord:
    """The event's NDJSON line (without the credentials Flat adds)."""
    fields = {f: getattr(ev, f) for f in schema.EventRecord.__struct_fields__}
    return schema.EventRecord(**fields)


@pytest.mark.parametrize("method,name", [
    (0, "ptrace"), (lib.RG_MEM_VM_READV, "process_vm_readv"), (lib.RG_MEM_VM_WRITEV, "process_vm_writev"),
    (lib.RG_MEM_PROC_MEM_OPEN, "proc_mem_open"), (lib.RG_MEM_PIDFD_GETFD, "pidfd_getfd"),
    (lib.RG_MEM_PROC_ENVIRON_OPEN, "proc_environ_open"), (lib.RG_MEM_CLONE_FILES, "clone_files"),
])
def test_every_ptrace_denied_method_has_its_name_in_the_schema(method, name):
    rec = block_record(lib.RG_KIND_PTRACE_DENIED, rule_index=lib.RG_RULE_PTRACE_DENY, flags=method)
    assert encode_untyped(rec)["data"]["method"] == name
    rc = lib.rg_encode_records(frame([rec]), len(rec) + 4, _OUT, CAP, _OUT_LEN, _MALFORMED)
    assert rc == 1 and schema.batch_decoder.decode(ffi.buffer(_OUT, _OUT_LEN[0]))[0].data.method == name


@pytest.mark.parametrize("action,name,blocked,would_deny", [
    (lib.RG_ACTION_BLOCKED, "blocked", True, False),
    (lib.RG_ACTION_WOULD_BLOCK, "would_block", False, True),
    (lib.RG_ACTION_KILLED, "killed", True, False),
    (lib.RG_ACTION_REPORTED, "observed", False, False),
])
def test_protected_file_changed_from_the_kernel_is_prevented_not_detected(action, name, blocked, would_deny):
    # The LSM hooks judge a change before it happens: never "detected, not
    # prevented" (that is the fanotify backend's, made in Python), and the key
    # is always written, so no schema default can stand in for it.
    rec = block_record(lib.RG_KIND_PROTECTED_FILE_CHANGED, flags=lib.RG_CHANGE_DELETE, action=action)
    event = encode_untyped(rec)
    assert event["action"] == name
    assert event["data"] == {"type": "protected_file_changed", "rule_index": 0, "blocked": blocked,
                             "would_deny": would_deny, "comm": "cat", "operation": "delete", "device": 2049,
                             "inode": 1234, "detected_not_prevented": False}
    assert encode_one(rec).data.detected_not_prevented is False


@pytest.mark.parametrize("rec", [r for r in BLOCK_RECORDS
                                 if struct.unpack_from("<I", r, KIND_OFFSET)[0]
                                 != lib.RG_KIND_PROTECTED_FILE_CHANGED])
def test_other_decisions_carry_no_detected_not_prevented(rec):
    assert "detected_not_prevented" not in encode_untyped(rec)["data"]


@pytest.mark.parametrize("rec", BLOCK_RECORDS)
def test_encoded_decisions_validate_against_the_json_schema(validator, rec):
    line = json.loads(schema.json_encoder.encode(as_line(encode_one(rec))))
    validator.validate({**line, "data": encode_untyped(rec)["data"]})



CLONE_NEW = {"time": 0x80, "mnt": 0x20000, "cgroup": 0x02000000, "uts": 0x04000000, "ipc": 0x08000000,
             "user": 0x10000000, "pid": 0x20000000, "net": 0x40000000}
NS_OPERATIONS = ["unshare", "clone", "clone3", "setns", "mount", "move_mount", "fsmount", "open_tree",
                 "mount_setattr", "pivot_root"]


@given(operation=st.sampled_from(NS_OPERATIONS), kinds=st.sets(st.sampled_from(sorted(CLONE_NEW))),
       other_bits=st.integers(0, 2**32 - 1))
def test_namespace_decisions_name_the_operation_and_every_kind(operation, kinds, other_bits):
    """Each RG_NS_* operation and CLONE_NEW* bit has its name; bits that name
    no kind are not reported; the target says both."""
    flags = sum(CLONE_NEW[k] for k in kinds) | (other_bits & ~sum(CLONE_NEW.values()))
    rec = block_record(lib.RG_KIND_NAMESPACE_DENIED, rule_index=lib.RG_RULE_NAMESPACES, flags=flags,
                       operation=getattr(lib, f"RG_NS_{operation.upper()}"))
    event = encode_untyped(rec)
    names = [k for k in sorted(CLONE_NEW, key=CLONE_NEW.get) if k in kinds]
    assert event["data"] == {"type": "namespace_denied", "rule_index": -5, "blocked": True, "would_deny": False,
                             "comm": "cat", "operation": operation, "namespaces": names}
    formatted = operation + (f" ({', '.join(names)})" if names else "")
    assert event["target"] == ["namespace"]
    ev = encode_one(rec)
    assert ev.target_context == schema.TargetContext(type="namespace", formatted=formatted)
    assert ev.data.namespaces == tuple(names)
