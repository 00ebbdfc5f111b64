"""Call paths, their hashes, and the records a run of probes reports.

The hashes join runtime evidence to static analysis, so their input is
written down here and never depends on where a binary was loaded (ASLR),
on the process, or on the run:

- **node hash** = ``sha256("runtimeguard-node-v1\\n" + purl + "\\n" + signature)``:
  one function of one component. ``purl`` is the component's Package URL
  (``pkg:deb/debian/libssl3@3.0.19-1~deb12u1?arch=amd64``,
  ``pkg:pypi/requests@2.32.3``), or for a file no package owns,
  ``pkg:generic/<file name>?checksum=sha256:<hex of the file>``.
  ``signature`` is the demangled function (C++: with its parameter types;
  C: its name), or ``?+0x<offset>`` for a frame no symbol covers.
- **path hash** = ``sha256("runtimeguard-path-v1\\n" + "\\n".join(node hashes))``,
  the nodes ordered from the outermost frame to the probed function.
- **callstack hash** = ``sha256("runtimeguard-callstack-v1\\n" + "\\n".join(frames))``,
  each frame ``purl + "\\t" + signature + "\\t+0x" + hex(offset within the function)``,
  outermost first: two call sites of one path differ here, not in the path hash.
- **combined hash** (a summary's) = ``sha256("runtimeguard-summary-v1\\n" +
  "\\n".join(sorted path hashes))``.

Every hash is written ``sha256:<64 hex digits>``.

A call path starts at ``main`` when ``main`` is on the stack: what runs
before it (``_start``, ``__libc_start_main``) is the C runtime's, the same
for every path. Otherwise it starts at the outermost frame.
"""

from __future__ import annotations

import hashlib
from typing import Iterable, Optional, Sequence

import msgspec


def _sha256(*parts: str) -> str:
    return "sha256:" + hashlib.sha256("\n".join(parts).encode()).hexdigest()


def node_hash(purl: str, signature: str) -> str:
    return _sha256("runtimeguard-node-v1", purl, signature)


def path_hash(node_hashes: Sequence[str]) -> str:
    return _sha256("runtimeguard-path-v1", *node_hashes)


def callstack_hash(frame_keys: Sequence[str]) -> str:
    return _sha256("runtimeguard-callstack-v1", *frame_keys)


def combined_hash(path_hashes: Iterable[str]) -> str:
    return _sha256("runtimeguard-summary-v1", *sorted(set(path_hashes)))


class CallFrame(msgspec.Struct, frozen=True, omit_defaults=True):
    """One frame of a call path, symbolized."""

    function: str
    """The demangled function (``SSL_write``, ``ns::f(int)``), or ``?`` where no symbol covers it."""
    signature: str
    """What the node hash is made of: ``function``, or ``?+0x<offset>``."""
    offset: int
    """The file offset of the frame's address in its binary."""
    function_offset: int = 0
    """The address's offset within the function."""
    binary: Optional[str] = None
    """The binary's path where known."""
    build_id: Optional[str] = None
    purl: Optional[str] = None
    sha256: Optional[str] = None
    """The binary's sha256 (hex) where its file could be read."""
    symbol: Optional[str] = None
    """The ELF symbol as written in the file (mangled)."""
    named_by: str = "build_id"
    """How the kernel gave the frame: "build_id" (the file's build id and
    offset: it outlives the process), or "address" (named through the
    process's mappings, read while it ran)."""

    @property
    def node_hash(self) -> str:
        return node_hash(self.purl or "", self.signature)

    @property
    def key(self) -> str:
        """The frame as the callstack hash reads it."""
        return f"{self.purl or ''}\t{self.signature}\t+{self.function_offset:#x}"


def trim_to_entry(frames: Sequence[CallFrame]) -> list[CallFrame]:
    """Outermost first, from ``main`` on where it is on the stack (frames
    arrive innermost first, as the kernel stores them)."""
    outer_first = list(reversed(frames))
    for i, frame in enumerate(outer_first):
        if frame.function == "main":
            return outer_first[i:]
    return outer_first


class ObservedCallPath(msgspec.Struct, frozen=True, omit_defaults=True):
    """One call path that really ran: the probed function reached through
    these frames, ``count`` times (counted in the kernel)."""

    probe: str
    """The probe as written (``./app:target``)."""
    symbols: list[str]
    """The functions, outermost first, ending with the probed one."""
    count: int
    first_seen: int
    """Nanoseconds since the Unix epoch."""
    last_seen: int
    node_hashes: list[str]
    path_hash: str
    callstack_hash: str
    function_signatures: list[str]
    frames: list[CallFrame]
    """Outermost first: binary, offset, build id, purl and digest of each."""
    binary_digests: dict[str, str] = {}
    """sha256 (hex) of each binary on the path, by path."""
    container_ids: list[str] = []
    pids: list[int] = []
    phase: str = "entry"


class RuntimeSignalSummary(msgspec.Struct, frozen=True, omit_defaults=True):
    """What one container (or the host, ``container_id`` None) ran, over a run."""

    started: int
    stopped: int
    """Nanoseconds since the Unix epoch."""
    total_events: int
    """Calls counted in the kernel (every call in scope, sent as a record or not)."""
    call_paths: int
    observed_symbols: list[str]
    """Sorted."""
    dropped_events: int
    """Records the token bucket held back, the ring lost, or the path map
    could not count, over the whole run: the kernel does not count them by
    container, so the host's summary (or the only one) carries them."""
    detected_runtimes: list[str]
    observed_node_hashes: list[str]
    """Sorted."""
    observed_path_hashes: list[str]
    """Sorted."""
    combined_hash: str
    container_id: Optional[str] = None


class SignalStatistics(msgspec.Struct, frozen=True):
    """How the probes run: rates, losses and what they cost."""

    events_per_second: float
    """Calls counted per second of the run."""
    records_per_second: float
    """Call records sent per second."""
    unique_call_paths: int
    ring_buffer_utilization: float
    """Unread bytes over the ring's size, now (0..1)."""
    dropped_events: int
    cpu_overhead_percent: Optional[float]
    """The probes' run time in the kernel over the run's wall time, in
    percent of one CPU; None where the kernel's statistics could not be turned on."""
    kernel_memory_bytes: int
    """What the kernel charges for the probes' maps (stacks, counts, configuration)."""
    consumer_rss_bytes: int
    """This process's resident memory (the consumer, its symbol caches included)."""
    probe_run_time_ns: int = 0
    probe_runs: int = 0
    limited: int = 0
    """Records the token buckets held back."""
    lost: int = 0
    """Records the ring buffer could not take."""
    paths_not_counted: int = 0
    stack_errors: int = 0


class RuntimeCallEvent(msgspec.Struct, frozen=True, omit_defaults=True):
    """One call of a probed function, as a record (the probe sends records)."""

    event_id: str
    timestamp: int
    """Nanoseconds since the Unix epoch."""
    pid: int
    tid: int
    probe: str
    phase: str
    """"entry" or "return"."""
    symbol: str
    """The probed function (``SSL_write``, ``python:function__entry``)."""
    function_address: int
    """Entry: the function's address in the process; return: where it returned to."""
    binary_offset: int
    """The function's file offset in its binary."""
    library: str
    """The probed binary's path."""
    runtime: str
    """native, python, jvm, node, go, dotnet, ruby or unknown."""
    function_signature: str
    node_hash: str
    container_id: Optional[str] = None
    comm: str = ""
    user_stack: list[CallFrame] = []
    """Innermost first, as captured."""
    callstack_hash: Optional[str] = None
    purl: Optional[str] = None
    binary_sha256: Optional[str] = None
    arguments: list[int] = []
    result: Optional[int] = None
    usdt_strings: list[str] = []
    """USDT: the probe's string arguments (CPython's function__entry: file, function)."""
    plaintext: Optional[bytes] = None
    """The buffer the call wrote or read (TLS: before encryption, after
    decryption), secrets redacted."""
    plaintext_size: Optional[int] = None
    plaintext_truncated: bool = False
    redactions: int = 0
