"""Symbols, against real files: small C and C++ programs compiled here, and
the machine's own libc and libssl. Expected values come from binutils
(readelf, nm, c++filt), dpkg-query and importlib.metadata, not from the
code under test."""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import time

import cffi
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtimeguard.calls.symbols import (
    BuildIdIndex, ElfCache, ElfFile, ElfFileNotFoundError, Frame, MapsSnapshot, NoSymbolsError, NotElfError,
    PackageIndex, SymbolError, SymbolNotFoundError, Symbolizer, demangle, detect_runtime, function_signature,
)
from runtimeguard.errors import RuntimeGuardError

LIBSSL = "/usr/lib/x86_64-linux-gnu/libssl.so.3"
LIBC = "/usr/lib/x86_64-linux-gnu/libc.so.6"

needs_tools = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("gcc", "g++", "strip", "readelf", "nm", "objcopy")),
    reason="needs gcc, g++ and binutils")

PROGRAM = r"""
#include <stdio.h>
#include <unistd.h>

__attribute__((noinline)) static int helper(int x) { return x * 3 + (int)(getpid() % 2); }
__attribute__((noinline)) int work(int x) { return helper(x) + 1; }
int work_alias(int x) __attribute__((alias("work")));
int weak_work(int x) __attribute__((weak, alias("work")));
__attribute__((noinline, noreturn)) void die(int code) { _exit(code); }
__attribute__((noinline)) void ends_with_call(int code) { die(code); }

/* A function without .size: it covers up to the next symbol. */
__asm__(".text\n.globl nosize_fn\n.type nosize_fn,@function\nnosize_fn:\n\tnop\n\tnop\n\tret\n");

static int impl_a(int x) { return x; }
static void *pick_impl(void) { return (void *)impl_a; }
int picked(int) __attribute__((ifunc("pick_impl")));

int main(int argc, char **argv) {
    if (argc > 5) ends_with_call(3);
    if (argc > 1) { char c; fputs("ready\n", stdout); fflush(stdout); return (int)read(0, &c, 1); }
    printf("%d %d\n", work(argc), picked(argc));
    return 0;
}
"""

VERSIONED_LIB = r"""
int old_impl(int x) { return x; }
int new_impl(int x) { return x + 1; }
__asm__(".symver old_impl,vfn@VER_1");
__asm__(".symver new_impl,vfn@@VER_2");
int plain_fn(int x) { return x * 2; }
"""
VERSION_SCRIPT = "VER_1 { global: vfn; plain_fn; local: *; };\nVER_2 { global: vfn; } VER_1;\n"

CXX = r"""
#include <string>
#include <vector>
namespace foo {
struct Widget { int size(const std::string &s) const; static Widget *make(std::vector<int> v, double d); };
int Widget::size(const std::string &s) const { return (int)s.size(); }
Widget *Widget::make(std::vector<int> v, double d) { return v.empty() || d > 1 ? nullptr : new Widget; }
template <typename T> T twice(T t) { return t + t; }
template int twice<int>(int);
int bar(int x) { return x; }
}
"""


def run(*argv: str, **kwargs) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, **kwargs).stdout


def load_segments(path: str) -> list[tuple[int, int, int]]:
    """(file offset, vaddr, filesz) of each LOAD line of readelf -lW."""
    found = []
    for line in run("readelf", "-lW", path).splitlines():
        fields = line.split()
        if fields and fields[0] == "LOAD":
            found.append((int(fields[1], 16), int(fields[2], 16), int(fields[4], 16)))
    return found


def readelf_functions(path: str) -> list[tuple[str, int, int]]:
    """(name with its @version, value, size) of the defined FUNC and IFUNC
    symbols readelf -sW --dyn-syms lists."""
    found = []
    for line in run("readelf", "-sW", "--dyn-syms", path).splitlines():
        fields = line.split()
        if len(fields) >= 8 and fields[0].endswith(":") and fields[3] in ("FUNC", "IFUNC") and fields[6] != "UND":
            value = int(fields[1], 16)
            size = int(fields[2], 16) if fields[2].startswith("0x") else int(fields[2])
            if value:
                found.append((fields[7], value, size))
    return found


def offset_from_readelf(path: str, vaddr: int) -> int:
    for offset, start, filesz in load_segments(path):
        if start <= vaddr < start + filesz:
            return vaddr - start + offset
    raise AssertionError(f"{vaddr:#x} in no LOAD segment of {path}")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Programs compiled for these tests: PIE, non-PIE, stripped, without a
    build-id, a shared library with symbol versions, and a debug file."""
    if not all(shutil.which(t) for t in ("gcc", "strip", "objcopy")):
        pytest.skip("needs gcc and binutils")
    d = tmp_path_factory.mktemp("elves")
    (d / "prog.c").write_text(PROGRAM)
    (d / "v.c").write_text(VERSIONED_LIB)
    (d / "v.map").write_text(VERSION_SCRIPT)
    out = {name: str(d / name) for name in ("pie", "nopie", "stripped", "noid", "libv.so")}
    run("gcc", "-O1", "-g", "-fPIE", "-pie", "-Wl,--build-id", "-o", out["pie"], str(d / "prog.c"))
    run("gcc", "-O1", "-fno-pie", "-no-pie", "-Wl,--build-id", "-o", out["nopie"], str(d / "prog.c"))
    run("gcc", "-O1", "-fPIE", "-pie", "-Wl,--build-id=none", "-o", out["noid"], str(d / "prog.c"))
    run("strip", "-o", out["stripped"], out["pie"])
    run("gcc", "-O1", "-shared", "-fPIC", f"-Wl,--version-script={d / 'v.map'}", "-o", out["libv.so"], str(d / "v.c"))
    build_id = ElfFile.open(out["pie"]).build_id
    debug_dir = d / "debug"
    target = debug_dir / ".build-id" / build_id[:2] / (build_id[2:] + ".debug")
    target.parent.mkdir(parents=True)
    run("objcopy", "--only-keep-debug", out["pie"], str(target))
    out["debug_dir"] = str(debug_dir)
    out["debug_file"] = str(target)
    out["dir"] = str(d)
    return out


# ---- ElfFile ----

@needs_tools
@pytest.mark.parametrize("kind", ["pie", "nopie", "noid"])
def test_resolve_matches_readelf_and_segment_math(built, kind):
    path = built[kind]
    elf = ElfFile.open(path)
    functions = readelf_functions(path)
    addresses: dict[str, set[int]] = {}
    for name, value, _size in functions:
        addresses.setdefault(name.split("@")[0], set()).add(value)
    checked = 0
    for name, values in addresses.items():
        if len(values) != 1:
            continue
        (value,) = values
        symbol = elf.resolve(name)
        assert symbol.address == value, name
        assert symbol.file_offset == offset_from_readelf(path, value), name
        checked += 1
    assert checked >= 8
    work = elf.resolve("work")
    nm = {f[2]: int(f[0], 16) for f in map(str.split, run("nm", "--defined-only", path).splitlines()) if f[1] == "T"}
    assert work.address == nm["work"]
    if kind == "nopie":
        # Non-PIE code is linked at 0x400000 and up: the offset is not the address.
        assert work.address - work.file_offset >= 0x400000
    assert elf.vaddr_of(work.file_offset) == work.address
    assert elf.file_offset_of(work.address) == work.file_offset


@needs_tools
def test_file_facts(built):
    pie, noid = ElfFile.open(built["pie"]), ElfFile.open(built["noid"])
    expected = re.search(r"Build ID: ([0-9a-f]+)", run("readelf", "-n", built["pie"])).group(1)
    assert pie.build_id == expected
    assert noid.build_id is None
    assert [(s.offset, s.vaddr, s.filesz) for s in pie.segments] == load_segments(built["pie"])
    assert not pie.is_go and pie.has_symtab and not pie.is_debug_file
    assert pie.resolve("picked").size > 0  # an IFUNC resolver counts as a function
    # Aliases share an address; the table of addresses shows one name for
    # it: a GLOBAL over a WEAK one, then the shorter.
    at_work = [s for s in pie.symbols if s.address == pie.resolve("work").address]
    assert [s.name for s in at_work] == ["work"]
    assert pie.resolve("work_alias").address == pie.resolve("weak_work").address == at_work[0].address
    assert pie.resolve("weak_work").binding == "WEAK"
    assert pie.resolve("helper").binding == "LOCAL"
    addresses = [s.address for s in pie.symbols]
    assert addresses == sorted(set(addresses))


@needs_tools
def test_symbol_at_offset_round_trips(built):
    for kind in ("pie", "nopie"):
        elf = ElfFile.open(built[kind])
        for symbol in elf.symbols:
            assert elf.symbol_at_offset(symbol.file_offset) == (symbol, 0)
            if symbol.size:
                last = symbol.file_offset + symbol.size - 1
                assert elf.symbol_at_offset(last) == (symbol, symbol.size - 1)
                # A call that is a function's last instruction returns to the
                # byte after it: still that function, for a return address.
                end = symbol.file_offset + symbol.size
                assert elf.symbol_at_offset(end, is_return_address=True) == (symbol, symbol.size)
                found = elf.symbol_at_offset(end)
                assert found is None or found[0] is not symbol
        nosize = elf.resolve("nosize_fn")
        assert nosize.size == 0
        following = min(s.address for s in elf.symbols if s.address > nosize.address)
        inside = nosize.file_offset + (following - nosize.address) - 1
        assert elf.symbol_at_offset(inside) == (nosize, following - nosize.address - 1)
        assert elf.symbol_at_offset(10**12) is None


@needs_tools
def test_symbol_versions_of_own_library(built):
    path = built["libv.so"]
    elf = ElfFile.open(path)
    listed = {name: value for name, value, _ in readelf_functions(path)}
    default, hidden = elf.resolve("vfn"), elf.resolve("vfn@VER_1")
    assert (default.version, default.default_version, default.address) == ("VER_2", True, listed["vfn@@VER_2"])
    assert (hidden.version, hidden.default_version, hidden.address) == ("VER_1", False, listed["vfn@VER_1"])
    assert elf.resolve("vfn@@VER_2") == default
    assert elf.resolve("vfn@VER_2") == default
    assert elf.resolve("plain_fn").versioned_name == "plain_fn@@VER_1"
    with pytest.raises(SymbolNotFoundError) as e:
        elf.resolve("vfn@@VER_1")  # VER_1 is not vfn's default version
    assert "vfn@VER_1" in e.value.suggestions


def test_libssl_versioned_symbols():
    if not os.path.exists(LIBSSL) or not shutil.which("readelf"):
        pytest.skip("needs libssl3 and readelf")
    elf = ElfFile.open(LIBSSL)
    listed = {name: value for name, value, _ in readelf_functions(LIBSSL)}
    value = listed["SSL_write@@OPENSSL_3.0.0"]
    for name in ("SSL_write", "SSL_write@@OPENSSL_3.0.0", "SSL_write@OPENSSL_3.0.0"):
        symbol = elf.resolve(name)
        assert (symbol.name, symbol.version, symbol.default_version) == ("SSL_write", "OPENSSL_3.0.0", True)
        assert symbol.address == value
        assert symbol.file_offset == offset_from_readelf(LIBSSL, value)
    assert elf.build_id is not None and re.fullmatch(r"[0-9a-f]{40}", elf.build_id)


def test_libc_prefers_the_default_version():
    if not shutil.which("readelf"):
        pytest.skip("needs readelf")
    elf = ElfFile.open(LIBC)
    listed = {name: value for name, value, _ in readelf_functions(LIBC)}
    defaults = [n for n in listed if n.startswith("memcpy@@")]
    hidden = [n for n in listed if n.startswith("memcpy@") and not n.startswith("memcpy@@")]
    assert len(defaults) == 1 and hidden
    assert elf.resolve("memcpy").address == listed[defaults[0]]
    assert elf.resolve(hidden[0]).address == listed[hidden[0]]


def test_misspelt_symbol_suggests_the_right_one():
    elf = ElfFile.open(LIBSSL)
    with pytest.raises(SymbolNotFoundError) as e:
        elf.resolve("SSL_wrte")
    assert e.value.suggestions[0] == "SSL_write"
    assert "SSL_wrte" in str(e.value) and LIBSSL in str(e.value) and "did you mean SSL_write" in str(e.value)
    assert len(e.value.suggestions) <= 5
    assert isinstance(e.value, SymbolError) and isinstance(e.value, RuntimeGuardError)


@needs_tools
def test_stripped_binary_has_no_symbols(built):
    elf = ElfFile.open(built["stripped"])
    assert elf.symbols == () and not elf.has_symtab
    assert elf.build_id == ElfFile.open(built["pie"]).build_id
    with pytest.raises(NoSymbolsError, match="stripped"):
        elf.resolve("work")


def test_missing_file_and_not_elf(tmp_path):
    missing = str(tmp_path / "no-such-binary")
    with pytest.raises(FileNotFoundError) as e:
        ElfFile.open(missing)
    assert isinstance(e.value, ElfFileNotFoundError) and missing in str(e.value)
    with pytest.raises(FileNotFoundError):
        ElfCache().open(missing)
    text = tmp_path / "script.sh"
    text.write_text("#!/bin/sh\necho hi\n")
    with pytest.raises(NotElfError, match="not an ELF file"):
        ElfFile.open(str(text))
    truncated = tmp_path / "truncated"
    truncated.write_bytes(open(LIBC, "rb").read(100))
    with pytest.raises(NotElfError, match=str(truncated)):
        ElfFile.open(str(truncated))
    with pytest.raises(IsADirectoryError):
        ElfFile.open(str(tmp_path))


def brute_force(elf: ElfFile, segments: list[tuple[int, int, int]], file_offset: int):
    """symbol_at_offset by a linear scan over the symbol list, with the
    segments readelf printed."""
    vaddr = next((file_offset - off + start for off, start, size in segments
                  if off <= file_offset < off + size), None)
    if vaddr is None:
        return None
    below = [s for s in elf.symbols if s.address <= vaddr]
    if not below:
        return None
    symbol = max(below, key=lambda s: s.address)
    if symbol.size:
        end = symbol.address + symbol.size
    else:
        above = [s.address for s in elf.symbols if s.address > symbol.address]
        end = min(above) if above else next(
            seg.vaddr + seg.memsz for seg in elf.segments if seg.vaddr <= symbol.address < seg.vaddr + seg.memsz)
    return (symbol, vaddr - symbol.address) if vaddr < end else None


_ELVES: dict[str, tuple[ElfFile, list]] = {}


def _elf_and_segments(path: str):
    if path not in _ELVES:
        _ELVES[path] = (ElfFile.open(path), load_segments(path))
    return _ELVES[path]


@pytest.mark.skipif(not shutil.which("readelf"), reason="needs readelf")
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_symbol_at_offset_matches_brute_force(data):
    path = data.draw(st.sampled_from([LIBC, LIBSSL]))
    elf, segments = _elf_and_segments(path)
    text = next(s for s in elf.segments if s.executable)
    near_symbol = st.sampled_from(elf.symbols).flatmap(
        lambda s: st.integers(s.file_offset - 4, s.file_offset + s.size + 4))
    anywhere = st.integers(text.offset - 64, text.offset + text.filesz + 64)
    offset = data.draw(st.one_of(near_symbol, anywhere))
    assert elf.symbol_at_offset(offset) == brute_force(elf, segments, offset)


# ---- names ----

def test_demangle_known_names():
    assert demangle("_ZN3foo3barEi") == "foo::bar(int)"
    assert demangle("_ZN4core3fmt5write17h0123456789abcdefE") == "core::fmt::write"
    assert demangle("printf") == "printf"
    assert demangle("_Znot_really_mangled") == "_Znot_really_mangled"
    assert demangle("_ZN3foo3barEi.cold") == "foo::bar(int) [clone .cold]"
    # rustc's legacy escapes, in an impl path: <Vec<T> as Deref>::deref
    component = "_$LT$alloc..vec..Vec$LT$T$GT$$u20$as$u20$core..ops..deref..Deref$GT$"
    legacy = f"_ZN{len(component)}{component}5deref17h0123456789abcdefE"
    assert demangle(legacy) == "<alloc::vec::Vec<T> as core::ops::deref::Deref>::deref"


@pytest.mark.skipif(not shutil.which("g++"), reason="needs g++")
def test_demangle_matches_cxxfilt_on_compiled_cxx(tmp_path):
    (tmp_path / "w.cc").write_text(CXX)
    run("g++", "-O1", "-c", "-o", str(tmp_path / "w.o"), str(tmp_path / "w.cc"))
    mangled = [line.split()[-1] for line in run("nm", "--defined-only", str(tmp_path / "w.o")).splitlines()
               if line.split()[-1].startswith("_Z")]
    assert len(mangled) >= 4
    expected = run("c++filt", input="\n".join(mangled) + "\n").splitlines()
    assert [demangle(name) for name in mangled] == expected
    assert any(name.startswith("foo::Widget::size(std::__cxx11::basic_string<char") and name.endswith(" const")
               for name in expected)
    assert function_signature("_ZN3foo3barEi") == "foo::bar(int)"


@pytest.mark.skipif(not shutil.which("c++filt"), reason="needs c++filt")
def test_demangle_rust_v0_through_cxxfilt():
    name = "_RNvNtCs1234_7mycrate3net4send"
    assert demangle(name) == run("c++filt", name).strip()
    assert demangle(name).endswith("::net::send")


def test_function_signature():
    assert function_signature("SSL_write@@OPENSSL_3.0.0") == "SSL_write"
    assert function_signature("memcpy@GLIBC_2.2.5") == "memcpy"
    assert function_signature("_ZN4core3fmt5write17h0123456789abcdefE") == "core::fmt::write"
    assert function_signature("_ZN3foo3barEi") == "foo::bar(int)"


# ---- processes ----

def _getpid_address() -> int:
    ffi = cffi.FFI()
    ffi.cdef("int getpid(void);")
    libc = ffi.dlopen(None)
    return int(ffi.cast("uintptr_t", libc.getpid))


def test_maps_snapshot_finds_libc_with_its_build_id():
    cache = ElfCache()
    snapshot = MapsSnapshot.read(os.getpid(), cache)
    libc = [m for m in snapshot.mappings if m.is_file and os.path.basename(m.path).startswith("libc.so")]
    assert libc, "libc is not mapped"
    assert libc[0].build_id == ElfFile.open(libc[0].path).build_id is not None
    assert libc[0].path_reachable
    assert any(m.is_special and m.path == "[stack]" for m in snapshot.mappings)
    assert any(m.is_anonymous for m in snapshot.mappings)
    assert all(m.build_id is None for m in snapshot.mappings if not m.is_file)
    assert cache.index.path_of(libc[0].build_id) == libc[0].path
    mapping, offset = snapshot.mapping_for(libc[0].start + 0x10)
    assert mapping == libc[0] and offset == libc[0].offset + 0x10
    assert snapshot.mapping_for(0) is None
    assert libc[0].path in snapshot.paths


def test_gone_process():
    with pytest.raises(ProcessLookupError, match="4194305"):
        MapsSnapshot.read(4194305)  # above the largest pid_max


def test_frame_from_ip_and_build_id_with_cache_counters():
    cache = ElfCache()
    symbolizer = Symbolizer(cache)
    snapshot = MapsSnapshot.read(os.getpid(), cache)
    ip = _getpid_address()
    frame = symbolizer.frame_from_ip(snapshot, ip)
    assert frame.symbol in ("getpid", "__getpid")
    assert frame.function == frame.symbol and frame.symbol_offset == 0
    assert os.path.basename(frame.module).startswith("libc.so")
    assert frame.describe() == f"{frame.symbol}+0x0 ({os.path.basename(frame.module)})"
    assert (symbolizer.cache_hits, symbolizer.cache_misses) == (0, 1)
    assert symbolizer.frame_from_build_id(frame.build_id, frame.offset) == frame
    assert (symbolizer.cache_hits, symbolizer.cache_misses) == (1, 1)
    assert symbolizer.frame_from_build_id(frame.build_id.upper(), frame.offset) == frame
    assert symbolizer.cache_hits == 2
    # As a return address, ip + 4 is still getpid: 4 bytes past its start.
    after = symbolizer.frame_from_ip(snapshot, ip + 4, is_return_address=True)
    assert (after.symbol, after.symbol_offset) == (frame.symbol, 4)
    assert symbolizer.cache_misses == 2

    # Another symbolizer that never saw a maps snapshot: the build-id leads
    # to the path the index learned.
    index = BuildIdIndex(debug_dirs=())
    index.add(frame.build_id, frame.module)
    cold = Symbolizer(ElfCache(index=index)).frame_from_build_id(frame.build_id, frame.offset)
    assert cold == frame

    unknown = symbolizer.frame_from_build_id("00" * 20, 0x1234)
    assert (unknown.module, unknown.symbol, unknown.offset) == (None, None, 0x1234)
    assert unknown.describe() == "0x1234 (?)"
    stack = [s for s in snapshot.mappings if s.path == "[stack]"][0]
    raw = symbolizer.frame_from_ip(snapshot, stack.start + 8)
    assert raw == Frame(None, None, stack.start + 8)
    assert raw.describe() == f"{stack.start + 8:#x} (?)"
    assert msgspec.json.decode(msgspec.json.encode(frame), type=Frame) == frame


def _start(path: str) -> subprocess.Popen:
    """The test program, waiting on its stdin."""
    child = subprocess.Popen([path, "wait"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert child.stdout.readline() == b"ready\n"
    return child


def _stop(child: subprocess.Popen) -> None:
    child.stdin.close()
    child.wait(timeout=5)
    child.stdout.close()


@pytest.mark.root
@needs_tools
def test_symbolize_after_the_process_exited_and_its_file_was_deleted(built, tmp_path):
    copy = str(tmp_path / "doomed")
    shutil.copy(built["pie"], copy)
    work = ElfFile.open(built["pie"]).resolve("work")
    child = _start(copy)
    try:
        os.unlink(copy)
        cache = ElfCache()
        snapshot = MapsSnapshot.read(child.pid, cache)
    finally:
        _stop(child)
    mapping = next(m for m in snapshot.mappings
                   if m.path == copy and m.offset <= work.file_offset < m.offset + (m.end - m.start))
    assert mapping.deleted and not mapping.path_reachable
    assert mapping.build_id == ElfFile.open(built["pie"]).build_id
    ip = mapping.start + work.file_offset - mapping.offset
    symbolizer = Symbolizer(cache)
    frame = symbolizer.frame_from_ip(snapshot, ip + 3)
    assert (frame.module, frame.symbol, frame.symbol_offset) == (copy, "work", 3)
    assert frame.describe() == "work+0x3 (doomed)"
    assert symbolizer.frame_from_build_id(mapping.build_id, work.file_offset + 3) == frame


@needs_tools
def test_symbolize_a_file_without_build_id(built):
    elf = ElfFile.open(built["noid"])
    helper = elf.resolve("helper")
    child = _start(built["noid"])
    try:
        snapshot = MapsSnapshot.read(child.pid)
    finally:
        _stop(child)
    mapping = next(m for m in snapshot.mappings
                   if m.path == built["noid"] and m.offset <= helper.file_offset < m.offset + m.end - m.start)
    assert mapping.build_id is None
    symbolizer = Symbolizer()
    ip = mapping.start + helper.file_offset - mapping.offset
    frame = symbolizer.frame_from_ip(snapshot, ip)
    assert (frame.module, frame.build_id, frame.symbol, frame.offset) == (built["noid"], None, "helper",
                                                                          helper.file_offset)
    assert symbolizer.frame_from_ip(snapshot, ip) == frame
    assert symbolizer.cache_hits == 1


@needs_tools
def test_debug_file_names_what_the_stripped_binary_does_not(built):
    pie = ElfFile.open(built["pie"])
    work = pie.resolve("work")
    index = BuildIdIndex(debug_dirs=[built["debug_dir"]])
    assert index.debug_path_of(pie.build_id) == built["debug_file"]
    cache = ElfCache(index=index)
    stripped = cache.open(built["stripped"])
    assert stripped.build_id == pie.build_id
    frame = Symbolizer(cache).frame_from_build_id(pie.build_id, work.file_offset + 1)
    assert (frame.module, frame.symbol, frame.symbol_offset) == (built["stripped"], "work", 1)

    # Only the debug file is known: its program headers lost the file
    # offsets, which are rebuilt from the layout rule linkers follow.
    debug = ElfFile.open(built["debug_file"])
    assert debug.is_debug_file and debug.build_id == pie.build_id
    assert [(s.vaddr, s.offset) for s in debug.segments] == [(s.vaddr, s.offset) for s in pie.segments]
    with pytest.raises(SymbolError, match="debug file"):
        debug.resolve("work")
    alone = Symbolizer(ElfCache(index=BuildIdIndex(debug_dirs=[built["debug_dir"]])))
    frame = alone.frame_from_build_id(pie.build_id, work.file_offset)
    assert (frame.module, frame.symbol) == (built["debug_file"], "work")


@needs_tools
def test_elf_cache_reads_each_file_once_and_rereads_a_rebuilt_one(built, tmp_path):
    cache = ElfCache(max_files=2)
    prog = tmp_path / "prog"
    shutil.copy(built["pie"], prog)
    first = cache.open(str(prog))
    assert cache.open(str(prog)) is first
    os.link(prog, tmp_path / "hardlink")
    assert cache.open(str(tmp_path / "hardlink")) is first  # same file, one read
    assert cache.index.paths_of(first.build_id) == [str(tmp_path / "hardlink"), str(prog)]
    # Rebuilt as a linker does (a new file renamed over the old one)...
    shutil.copy(built["noid"], tmp_path / "prog.new")
    os.replace(tmp_path / "prog.new", prog)
    rebuilt = cache.open(str(prog))
    assert rebuilt is not first and rebuilt.build_id is None
    # ... or rewritten in place: same inode, another size and mtime.
    shutil.copy(built["nopie"], prog)
    assert cache.open(str(prog)).build_id == ElfFile.open(built["nopie"]).build_id
    cache.open(built["libv.so"])
    assert len(cache) == 2
    assert cache.cached(first.build_id) is None  # evicted, least recently used first
    assert cache.find(first.build_id).build_id == first.build_id  # through the hard link
    cache.open(built["libv.so"]), cache.open(built["noid"])
    os.unlink(tmp_path / "hardlink")
    assert cache.find(first.build_id) is None
    assert cache.index.paths_of(first.build_id) == []  # paths that no longer have it are forgotten


# ---- runtimes ----

@needs_tools
def test_detect_runtime(built, tmp_path):
    if os.path.exists("/usr/bin/python3.11"):
        assert detect_runtime("/usr/bin/python3.11", []) == "python"
    assert detect_runtime("/opt/app/bin/server", ["/opt/py/lib/libpython3.12.so.1.0"]) == "python"
    assert detect_runtime(built["pie"], [LIBC]) == "native"
    assert detect_runtime(None, ["/usr/lib/jvm/java-17-openjdk-amd64/lib/server/libjvm.so", LIBC]) == "jvm"
    assert detect_runtime("/usr/bin/node", []) == "node"
    assert detect_runtime("/usr/share/dotnet/dotnet", ["/usr/share/dotnet/shared/libcoreclr.so"]) == "dotnet"
    assert detect_runtime("/usr/bin/ruby3.1", []) == "ruby"
    assert detect_runtime(None, [LIBC]) == "unknown"
    assert detect_runtime(str(tmp_path / "gone"), []) == "unknown"
    # A Go program is known by its ELF contents, not by its name.
    (tmp_path / "buildinfo").write_bytes(b"\xff Go buildinf:" + bytes(16))
    fake_go = str(tmp_path / "server")
    run("objcopy", "--add-section", f".go.buildinfo={tmp_path / 'buildinfo'}", built["nopie"], fake_go)
    cache = ElfCache()
    assert cache.open(fake_go).is_go
    assert detect_runtime(fake_go, [], elf_cache=cache) == "go"


# ---- packages ----

@pytest.fixture(scope="module")
def packages():
    return PackageIndex()


@pytest.mark.skipif(not shutil.which("dpkg-query") or not os.path.exists(LIBSSL), reason="needs dpkg and libssl3")
def test_deb_purl_of_libssl(packages):
    version = run("dpkg-query", "-W", "-f=${Version}", "libssl3")
    arch = run("dpkg-query", "-W", "-f=${Architecture}", "libssl3")
    started = time.perf_counter()
    purl = packages.purl_of(LIBSSL)
    print(f"\nfirst purl_of (reads dpkg's lists): {time.perf_counter() - started:.3f} s")
    distro = "debian"
    with open("/etc/os-release") as f:
        for line in f:
            if line.startswith("ID="):
                distro = line.strip()[3:].strip('"')
    assert purl == f"pkg:deb/{distro}/libssl3@{version.replace('+', '%2B')}?arch={arch}"
    assert "~" in version and "~" in purl  # ~ is left as it is
    # /lib is /usr/lib on a merged-/usr system, whichever spelling dpkg listed.
    assert packages.purl_of("/lib/x86_64-linux-gnu/libssl.so.3") == purl
    libc6 = packages.purl_of(LIBC)
    assert libc6 is not None and libc6.startswith(f"pkg:deb/{distro}/libc6@")
    started = time.perf_counter()
    assert packages.purl_of(LIBSSL) == purl
    print(f"cached purl_of: {(time.perf_counter() - started) * 1e6:.1f} us")


def test_pypi_purl_of_an_installed_distribution(packages):
    msgspec_init = os.path.join(os.path.dirname(msgspec.__file__), "__init__.py")
    started = time.perf_counter()
    purl = packages.purl_of(msgspec_init)
    print(f"\nfirst pypi purl_of: {time.perf_counter() - started:.3f} s")
    assert purl == f"pkg:pypi/msgspec@{importlib.metadata.version('msgspec')}"


def test_unknown_file_has_no_purl(packages, tmp_path):
    assert packages.purl_of("/tmp/whatever") is None
    assert packages.purl_of("/tmp") is None  # base-files owns the directory; a directory is no component
    (tmp_path / "mine.so").write_bytes(b"")
    assert packages.purl_of(str(tmp_path / "mine.so")) is None


def test_purl_rules_on_a_made_up_system(tmp_path):
    dpkg = tmp_path / "dpkg"
    (dpkg / "info").mkdir(parents=True)
    (dpkg / "info" / "libfoo1:arm64.list").write_text("/.\n/usr/lib/aarch64-linux-gnu/libfoo.so.1\n")
    (dpkg / "info" / "tool.list").write_text("/usr/bin/tool\n")
    (dpkg / "info" / "gone.list").write_text("/usr/bin/gone\n")
    (dpkg / "status").write_text(
        "Package: libfoo1\nStatus: install ok installed\nArchitecture: arm64\nVersion: 1:2.3+dfsg-1~bpo1\n"
        "Description: foo\n a library\n\n"
        "Package: tool\nStatus: install ok installed\nArchitecture: all\nVersion: 7\n\n"
        "Package: gone\nStatus: deinstall ok config-files\nArchitecture: all\nVersion: 1\n")
    (tmp_path / "os-release").write_text('NAME="Ubuntu"\nID=ubuntu\n')
    site = tmp_path / "site-packages"
    (site / "Foo_Bar-1.0.dist-info").mkdir(parents=True)
    (site / "foo_bar").mkdir()
    (site / "foo_bar" / "__init__.py").write_text("")
    (site / "Foo_Bar-1.0.dist-info" / "RECORD").write_text(
        "foo_bar/__init__.py,sha256=abc,0\nFoo_Bar-1.0.dist-info/RECORD,,\n")
    index = PackageIndex(dpkg_dir=str(dpkg), os_release=str(tmp_path / "os-release"), root=str(tmp_path))
    # ':' stays (the spec never encodes it), '+' is encoded, '~' is not.
    assert index.purl_of("/usr/lib/aarch64-linux-gnu/libfoo.so.1") == \
        "pkg:deb/ubuntu/libfoo1@1:2.3%2Bdfsg-1~bpo1?arch=arm64"
    assert index.purl_of("/usr/bin/tool") == "pkg:deb/ubuntu/tool@7?arch=all"
    assert index.purl_of("/usr/bin/gone") == "pkg:deb/ubuntu/gone"
    assert index.purl_of(str(site / "foo_bar" / "__init__.py")) == "pkg:pypi/foo-bar@1.0"
    assert index.purl_of(str(site / "foo_bar" / "other.py")) is None
