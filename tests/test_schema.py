"""Property tests of the event schema (runtimeguard/schema.py): codecs, JSON
Schema, the event registry, and container ids from cgroup paths.

EventRecord strategies are derived from the Structs' own type information
(msgspec.inspect), so a field added to the schema is covered without touching
this file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import typing

import msgspec
import msgspec.inspect as mi
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import runtimeguard
from runtimeguard import schema
from runtimeguard.processes import container_from_cgroup

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

INT = st.integers(-(2**63), 2**64 - 1)  # what msgpack and msgspec's JSON carry losslessly
TEXT = st.text(max_size=12)


def strategy_for(t: mi.Type) -> st.SearchStrategy:
    """A hypothesis strategy for any msgspec type the schema uses."""
    if isinstance(t, mi.IntType):
        lo = t.ge if t.ge is not None else -(2**63)
        hi = t.le if t.le is not None else 2**64 - 1
        return st.integers(lo, hi)
    if isinstance(t, mi.StrType):
        return TEXT
    if isinstance(t, mi.BoolType):
        return st.booleans()
    if isinstance(t, mi.BytesType):
        return st.binary(max_size=12)
    if isinstance(t, mi.NoneType):
        return st.none()
    if isinstance(t, mi.LiteralType):
        return st.sampled_from(list(t.values))
    if isinstance(t, mi.UnionType):
        return st.one_of(*(strategy_for(x) for x in t.types))
    if isinstance(t, mi.ListType):
        return st.lists(strategy_for(t.item_type), max_size=3)
    if isinstance(t, mi.VarTupleType):
        return st.lists(strategy_for(t.item_type), max_size=3).map(tuple)
    if isinstance(t, mi.DictType):
        return st.dictionaries(strategy_for(t.key_type), strategy_for(t.value_type), max_size=3)
    if isinstance(t, mi.StructType):
        return struct_strategy(t)
    raise NotImplementedError(f"no strategy for {t!r}: extend strategy_for")


def struct_strategy(t: mi.StructType, **overrides) -> st.SearchStrategy:
    fields = {}
    for f in t.fields:
        if f.name in overrides:
            fields[f.name] = overrides[f.name]
        elif f.required:
            fields[f.name] = strategy_for(f.type)
        else:
            # Sometimes leave a defaulted field at its default (exercises omit_defaults).
            fields[f.name] = st.one_of(st.just(f.default if f.default is not mi.NODEFAULT
                                               else f.default_factory()), strategy_for(f.type))
    return st.builds(t.cls, **fields)


EVENT_INFO: mi.StructType = mi.type_info(schema.EventRecord)
DATA_TYPES = {cls.__struct_config__.tag: cls for cls in typing.get_args(schema.EventData)}


def data_strategy(name: str):
    return struct_strategy(mi.type_info(DATA_TYPES[name]))


@st.composite
def events(draw, name=None):
    """A consistent EventRecord: name, id and data tag agree; everything else arbitrary."""
    name = name or draw(st.sampled_from(sorted(schema.EVENT_IDS)))
    return draw(struct_strategy(EVENT_INFO, name=st.just(name), id=st.just(schema.EVENT_IDS[name]),
                                data=data_strategy(name)))


# ---------------------------------------------------------------- round trips

@pytest.mark.parametrize("name", sorted(schema.EVENT_IDS))
@settings(max_examples=30)
@given(data=st.data())
def test_json_and_msgpack_round_trip_every_kind(name, data):
    ev = data.draw(events(name))
    assert schema.json_decoder.decode(schema.json_encoder.encode(ev)) == ev
    assert schema.msgpack_decoder.decode(schema.msgpack_encoder.encode(ev)) == ev


@settings(max_examples=100)
@given(ev=events())
def test_round_trip_with_everything(ev):
    line = schema.json_encoder.encode(ev)
    assert b"\n" not in line  # NDJSON: one event per line
    assert schema.json_decoder.decode(line) == ev
    packed = schema.msgpack_encoder.encode(ev)
    assert schema.msgpack_decoder.decode(packed) == ev
    # The live event made of the same parts gives the same data, action and header.
    live = schema.Event.make(id=ev.id, timestamp=ev.timestamp, data=ev.data, pid=ev.pid, tid=ev.tid, seq=ev.seq,
                             cpu=ev.cpu, entity_id=ev.entity_id, cgroup_id=ev.cgroup_id, action=ev.action)
    (decoded,) = schema.batch_decoder.decode(schema.msgpack_encoder.encode([live]))
    assert (decoded.name, decoded.data, decoded.action) == (ev.name, ev.data, ev.action)
    assert (decoded.timestamp, decoded.pid, decoded.tid, decoded.seq, decoded.cpu, decoded.cgroup_id) == (
        ev.timestamp, ev.pid, ev.tid, ev.seq, ev.cpu, ev.cgroup_id)


@given(ev=events(), workload=strategy_for(mi.type_info(schema.Workload)),
       target=strategy_for(mi.type_info(schema.TargetContext)),
       policy=strategy_for(mi.type_info(schema.PolicyRef)), threat=strategy_for(mi.type_info(schema.Threat)),
       triggered=strategy_for(mi.type_info(schema.TriggeredBy)))
def test_round_trip_with_all_optional_parts_present(ev, workload, target, policy, threat, triggered):
    ev = msgspec.structs.replace(ev, workload=workload, target_context=target, policy=policy, threat=threat,
                                 triggered_by=triggered)
    assert schema.json_decoder.decode(schema.json_encoder.encode(ev)) == ev
    assert schema.msgpack_decoder.decode(schema.msgpack_encoder.encode(ev)) == ev


def test_strategies_reach_every_part():
    # The derived strategies must produce every optional section at least sometimes.
    seen = set()

    @settings(max_examples=300, database=None, derandomize=True)
    @given(ev=events())
    def collect(ev):
        for part in ("workload", "target_context", "policy", "threat", "triggered_by"):
            if getattr(ev, part) is not None:
                seen.add(part)
        if ev.workload is not None and ev.workload.process.ancestors:
            seen.add("ancestors")
    collect()
    # Every kind has its own round-trip test below; this one is about the optional parts.
    assert {"workload", "target_context", "policy", "threat", "triggered_by", "ancestors"} <= seen



# ---------------------------------------------------------------- JSON Schema

@pytest.fixture(scope="module")
def validator():
    """A validator of the JSON Schema as `runtimeguard schema` prints it."""
    jsonschema = pytest.importorskip("jsonschema")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-m", "runtimeguard", "schema"], capture_output=True, text=True,
                         cwd=root, check=True, timeout=30).stdout
    doc = json.loads(out)
    jsonschema.Draft202012Validator.check_schema(doc)
    return jsonschema.Draft202012Validator(doc)


@settings(max_examples=100)
@given(ev=events())
def test_every_json_event_validates(validator, ev):
    validator.validate(json.loads(schema.json_encoder.encode(ev)))


@given(ev=events(), bad_name=TEXT.filter(lambda s: s not in schema.EVENT_IDS))
def test_schema_rejects_unknown_names_and_data(validator, ev, bad_name):
    doc = json.loads(schema.json_encoder.encode(ev))
    assert not validator.is_valid({**doc, "name": bad_name})
    assert not validator.is_valid({**doc, "data": {**doc["data"], "type": bad_name}})
    missing = {k: v for k, v in doc.items() if k != "timestamp"}
    assert not validator.is_valid(missing)


def test_schema_document(validator):
    doc = schema.json_schema()
    assert validator.schema == doc  # what `runtimeguard schema` prints
    assert doc["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema.SCHEMA_VERSION in doc["title"]
    json.dumps(doc)  # plain JSON


# ---------------------------------------------------------------- literal events

# Events and the NDJSON line each must be, written out by hand: keys in the
# Structs' field order, fields at their default left out.
LITERAL_EVENTS = {
    "exec": (
        schema.EventRecord(timestamp=1_700_000_000_123_456_789, id=1, name="process_exec", pid=4321, tid=4321,
                     entity_id=99, data=schema.ProcessExecData(
                         executable="/bin/echo", argv=["/bin/echo", "hi"], comm="echo", uid=0, euid=0, gid=0,
                         ppid=4000, parent_entity_id=98, start_time=1_700_000_000_000_000_000, return_code=0)),
        '{"timestamp":1700000000123456789,"id":1,"name":"process_exec","data":{"type":"process_exec",'
        '"executable":"/bin/echo","argv":["/bin/echo","hi"],"comm":"echo","uid":0,"euid":0,"gid":0,"ppid":4000,'
        '"parent_entity_id":98,"start_time":1700000000000000000,"return_code":0},"pid":4321,"tid":4321,'
        '"entity_id":99}',
    ),
    "cut exec": (
        schema.EventRecord(timestamp=5, id=1, name="process_exec", data=schema.ProcessExecData(
            executable="/x", argv=["a"], comm="x", uid=1, euid=1, gid=1, ppid=1, parent_entity_id=0, start_time=0,
            return_code=-2, executable_truncated=True, argv_truncated=True)),
        '{"timestamp":5,"id":1,"name":"process_exec","data":{"type":"process_exec","executable":"/x",'
        '"argv":["a"],"comm":"x","uid":1,"euid":1,"gid":1,"ppid":1,"parent_entity_id":0,"start_time":0,'
        '"return_code":-2,"executable_truncated":true,"argv_truncated":true}}',
    ),
    "killed by a signal": (
        schema.EventRecord(timestamp=7, id=3, name="process_exit", seq=12, cpu=1, pid=50, tid=50,
                     data=schema.ProcessExitData(exit_code=None, signal=9, duration_ns=1000)),
        '{"timestamp":7,"id":3,"name":"process_exit","data":{"type":"process_exit","exit_code":null,"signal":9,'
        '"duration_ns":1000},"seq":12,"cpu":1,"pid":50,"tid":50}',
    ),
    "open, path cut": (
        schema.EventRecord(timestamp=9, id=4, name="file_open", pid=60, tid=61, cgroup_id=8, data=schema.FileOpenData(
            path="/etc/hosts", flags=0, mode=0, result=3, device=2049, inode=1234, syscall="openat",
            path_truncated=True),
            target_context=schema.TargetContext(type="inode", formatted="/etc/hosts (inode 1234 on 8:1)",
                                                device=2049, inode=1234, path="/etc/hosts")),
        '{"timestamp":9,"id":4,"name":"file_open","data":{"type":"file_open","path":"/etc/hosts","flags":0,'
        '"mode":0,"result":3,"device":2049,"inode":1234,"syscall":"openat","path_truncated":true},"pid":60,'
        '"tid":61,"cgroup_id":8,"target_context":{"type":"inode","formatted":"/etc/hosts (inode 1234 on 8:1)",'
        '"device":2049,"inode":1234,"path":"/etc/hosts"}}',
    ),
    # As the fanotify backend makes it (runtimeguard/guard.py): detected_not_prevented left at its default, true.
    "changed, seen by fanotify": (
        schema.EventRecord(timestamp=11, id=16, name="protected_file_changed", pid=70, tid=70, action="killed",
                     data=schema.ProtectedFileChangedData(rule_index=0, blocked=False, would_deny=False,
                                                          comm="rm", operation="delete", device=2049, inode=5),
                     policy=schema.PolicyRef(rule="secrets", mode="enforce")),
        '{"timestamp":11,"id":16,"name":"protected_file_changed","data":{"type":"protected_file_changed",'
        '"rule_index":0,"blocked":false,"would_deny":false,"comm":"rm","operation":"delete","device":2049,'
        '"inode":5},"pid":70,"tid":70,"action":"killed","policy":{"rule":"secrets","mode":"enforce"}}',
    ),
    # As the LSM hooks' record is encoded: refused before it happened.
    "changed, refused by LSM": (
        schema.EventRecord(timestamp=13, id=16, name="protected_file_changed", pid=71, tid=71, action="blocked",
                     data=schema.ProtectedFileChangedData(rule_index=1, blocked=True, would_deny=False,
                                                          comm="mv", operation="move", device=2049, inode=5,
                                                          detected_not_prevented=False)),
        '{"timestamp":13,"id":16,"name":"protected_file_changed","data":{"type":"protected_file_changed",'
        '"rule_index":1,"blocked":true,"would_deny":false,"comm":"mv","operation":"move","device":2049,'
        '"inode":5,"detected_not_prevented":false},"pid":71,"tid":71,"action":"blocked"}',
    ),
}


@pytest.mark.parametrize("label", sorted(LITERAL_EVENTS))
def test_literal_events_encode_to_their_written_line(validator, label):
    ev, line = LITERAL_EVENTS[label]
    assert schema.json_encoder.encode(ev).decode() == line
    assert schema.json_decoder.decode(line) == ev
    assert schema.msgpack_decoder.decode(schema.msgpack_encoder.encode(ev)) == ev
    validator.validate(json.loads(line))


def test_detected_not_prevented_defaults_to_true():
    # What the fanotify backend relies on: it never sets the field.
    data = schema.ProtectedFileChangedData(rule_index=0, blocked=False, would_deny=True, comm="sh",
                                           operation="modify", device=1, inode=2)
    assert data.detected_not_prevented is True
    line = ('{"timestamp":1,"id":16,"name":"protected_file_changed","data":{"type":"protected_file_changed",'
            '"rule_index":0,"blocked":false,"would_deny":true,"comm":"sh","operation":"modify","device":1,'
            '"inode":2}}')
    assert schema.json_decoder.decode(line).data.detected_not_prevented is True
    assert schema.json_decoder.decode(line.replace('"inode":2}', '"inode":2,"detected_not_prevented":false}')
                                      ).data.detected_not_prevented is False


def test_schema_documents_detected_not_prevented_default_true(validator):
    doc = validator.schema
    data = doc["$defs"]["ProtectedFileChangedData"]
    assert data["properties"]["detected_not_prevented"] == {"type": "boolean", "default": True}
    assert "detected_not_prevented" not in data["required"]


# ---------------------------------------------------------------- the registry

# The ids published so far: the registry may grow, never renumber.
PUBLISHED_IDS = {
    "process_exec": 1, "process_fork": 2, "process_exit": 3, "file_open": 4, "net_connect": 5,
    "net_sendmsg": 6, "ptrace": 7, "process_memory": 8, "lost": 9, "connect_denied": 10, "exfil_blocked": 11,
    "open_inode": 12, "mirage_trap": 13, "ptrace_denied": 14, "mode_changed": 15, "protected_file_changed": 16,
    "namespace_denied": 17, "detection": 18, "function_call": 19,
}
# Made in user space: no BPF program writes a record of them.
USER_SPACE_EVENTS = {"lost", "mode_changed", "detection"}
RECORD_TYPES = {"dns_answer": "struct rg_dns_record", "process_exec": "struct rg_exec_record", "process_fork": "struct rg_fork_record",
                "process_exit": "struct rg_exit_record", "file_open": "struct rg_file_record",
                "net_connect": "struct rg_net_record", "net_sendmsg": "struct rg_net_record",
                "ptrace": "struct rg_ptrace_record", "process_memory": "struct rg_memory_record",
                "function_call": "struct rg_call_record"}


def test_event_ids_are_unique_and_positive():
    ids = list(schema.EVENT_IDS.values())
    assert len(ids) == len(set(ids))
    assert all(isinstance(i, int) and i > 0 for i in ids)
    assert schema.EVENT_NAMES == {v: k for k, v in schema.EVENT_IDS.items()}


def test_the_registry_only_grows():
    for name, event_id in PUBLISHED_IDS.items():
        assert schema.EVENT_IDS.get(name) == event_id, name


def test_the_kinds_table_says_what_each_kind_is():
    lib = pytest.importorskip("runtimeguard._native").lib
    ffi = pytest.importorskip("runtimeguard._native").ffi
    assert max(schema.EVENT_IDS.values()) < lib.RG_KIND_SLOTS
    for name, k in schema.EVENT_IDS.items():
        info = lib.rg_kinds[k]
        assert getattr(lib, f"RG_KIND_{name.upper()}") == k
        decision = name in schema.BLOCK_EVENTS
        assert bool(info.decision) == decision == issubclass(DATA_TYPES[name], schema._Decision), name
        if name in USER_SPACE_EVENTS:
            assert info.record_size == 0, name
        else:
            record = "struct rg_block_record" if decision else RECORD_TYPES[name]
            assert info.record_size == ffi.sizeof(record), name


def test_names_literal_and_data_union_cover_the_registry():
    assert set(typing.get_args(schema.EventName)) == set(schema.EVENT_IDS)
    assert len(typing.get_args(schema.EventName)) == len(schema.EVENT_IDS)
    assert set(DATA_TYPES) == set(schema.EVENT_IDS)
    assert len(DATA_TYPES) == len(typing.get_args(schema.EventData))


def test_schema_version_is_exported():
    assert runtimeguard.SCHEMA_VERSION == schema.SCHEMA_VERSION
    assert isinstance(runtimeguard.SCHEMA_VERSION, str) and runtimeguard.SCHEMA_VERSION
    assert "SCHEMA_VERSION" in runtimeguard.__all__
    assert runtimeguard.EVENT_IDS is schema.EVENT_IDS


# ---------------------------------------------------------------- container ids

HEX64 = st.text("0123456789abcdef", min_size=64, max_size=64)
POD_UID = st.uuids().map(str)
QOS = st.sampled_from(["", "besteffort", "burstable"])


def _kubepods_systemd(qos: str, uid: str) -> str:
    if not qos:
        return f"/kubepods.slice/kubepods-pod{uid.replace('-', '_')}.slice"
    return f"/kubepods.slice/kubepods-{qos}.slice/kubepods-{qos}-pod{uid.replace('-', '_')}.slice"


@st.composite
def container_paths(draw):
    cid = draw(HEX64)
    kind = draw(st.sampled_from(["docker-systemd", "docker-cgroupfs", "containerd", "crio", "podman",
                                 "podman-rootless", "kubepods-cgroupfs"]))
    qos, uid = draw(QOS), draw(POD_UID)
    if kind == "docker-systemd":
        path, runtime = f"/system.slice/docker-{cid}.scope", "docker"
    elif kind == "docker-cgroupfs":
        path, runtime = f"/docker/{cid}", "docker"
    elif kind == "containerd":
        path, runtime = f"{_kubepods_systemd(qos, uid)}/cri-containerd-{cid}.scope", "containerd"
    elif kind == "crio":
        path, runtime = f"{_kubepods_systemd(qos, uid)}/crio-{cid}.scope", "cri-o"
    elif kind == "podman":
        path, runtime = f"/machine.slice/libpod-{cid}.scope", "podman"
    elif kind == "podman-rootless":
        path, runtime = (f"/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{cid}.scope",
                         "podman")
    else:
        parent = f"/kubepods/{qos}" if qos else "/kubepods"
        path, runtime = f"{parent}/pod{uid}/{cid}", "kubernetes"
    # Processes may sit in a child cgroup of the container's.
    suffix = draw(st.sampled_from(["", "/init.scope", "/container", "/app/worker"]))
    return path + suffix, cid, runtime


@settings(max_examples=200)
@given(case=container_paths())
@example(case=("/system.slice/docker-" + "a" * 64 + ".scope", "a" * 64, "docker"))
@example(case=("/kubepods/besteffort/pod12345678-1234-1234-1234-123456789abc/" + "0" * 64, "0" * 64,
               "kubernetes"))
def test_container_id_from_cgroup(case):
    path, cid, runtime = case
    c = container_from_cgroup(path)
    assert c is not None, path
    assert c.id == cid
    assert c.runtime == runtime


SEGMENT = st.text("abcdefghijklmnopqrstuvwxyz0123456789.-_@", min_size=1, max_size=40)


@settings(max_examples=200)
@given(segments=st.lists(SEGMENT, max_size=6))
@example(segments=[])
@example(segments=["system.slice", "docker.service"])
@example(segments=["user.slice", "user-1000.slice", "session-3.scope"])
@example(segments=["kubepods", "besteffort", "pod12345678-1234-1234-1234-123456789abc"])
def test_no_container_without_a_64_hex_id(segments):
    # No segment can hold 64 hex digits in a row.
    assert container_from_cgroup("/" + "/".join(segments)) is None


@given(cid=HEX64, cut=st.sampled_from([1, -1]), extra=st.sampled_from("0123456789abcdef"))
def test_near_miss_ids_give_none(cid, cut, extra):
    short = cid[:63]
    long_ = cid + extra
    for bad in (short, long_, cid.upper() if any(ch.isalpha() for ch in cid) else None):
        if bad is None:
            continue
        for path in (f"/system.slice/docker-{bad}.scope", f"/docker/{bad}", f"/machine.slice/libpod-{bad}.scope",
                     f"/kubepods/pod0a-1b/{bad}", f"/kubepods.slice/crio-{bad}.scope"):
            assert container_from_cgroup(path) is None, path


def test_conmon_scope_is_not_the_container():
    # CRI-O's conmon runs next to the container, in crio-conmon-<id>.scope.
    assert container_from_cgroup(f"/kubepods.slice/crio-conmon-{'ab' * 32}.scope") is None
