"""Symbols: from a function name to the file offset a uprobe attaches at, and
from a captured stack frame back to a function name.

Uprobes attach by (file, file offset), and the kernel reports user stacks as
(ELF build-id, file offset) pairs per frame, or as raw instruction pointers
when it could not read a build-id. Both directions go through the ELF file's
``PT_LOAD`` segments: a symbol's value is a virtual address, and the segment
that holds it says which file offset that address is loaded from. That one
rule is right for PIE, non-PIE and prelinked files alike, so nothing here
guesses a load bias.

Everything runs off the event path. Files are read once, by content
(:class:`ElfCache`), frames are remembered (:class:`Symbolizer`), and frames
can still be named after their process exited: a build-id leads back to the
file (:class:`BuildIdIndex`), or to its separate debug file under
``/usr/lib/debug/.build-id``.

Also here, because they answer "what is this file": :func:`detect_runtime`
(which language runtime a process runs, from its executable and mapped
files) and :class:`PackageIndex` (the Debian or PyPI package a file came
from, as a Package URL).
"""

from __future__ import annotations

import bisect
import collections
import csv
import difflib
import errno
import functools
import glob
import os
import re
import shutil
import stat
import struct
import subprocess
import threading
import urllib.parse
from typing import BinaryIO, Iterable, Optional

import msgspec
from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from ..errors import RuntimeGuardError

__all__ = [
    "SymbolError", "SymbolNotFoundError", "NoSymbolsError", "NotElfError", "ElfFileNotFoundError",
    "Segment", "Symbol", "ElfFile", "demangle", "function_signature",
    "BuildIdIndex", "ElfCache", "Mapping", "MapsSnapshot", "Frame", "Symbolizer",
    "detect_runtime", "RUNTIMES", "PackageIndex",
    "DEFAULT_MAX_FILES", "DEFAULT_MAX_FRAMES", "DEBUG_DIRS",
]

DEFAULT_MAX_FILES = 256
DEFAULT_MAX_FRAMES = 65536
DEBUG_DIRS = ("/usr/lib/debug",)
# A build-id is known under a few paths at most (the file, a hard link, the
# path a container sees); keeping more only slows a miss down.
_MAX_PATHS_PER_BUILD_ID = 4
_MAX_SUGGESTIONS = 5

_ELF_MAGIC = b"\x7fELF"
_PF_X, _PF_W, _PF_R = 1, 2, 4
_STT_FUNC, _STT_GNU_IFUNC = 2, 10
_SHN_UNDEF = 0
_BINDINGS = {0: "LOCAL", 1: "GLOBAL", 2: "WEAK", 10: "UNIQUE"}
# Which of several names at one address to show: the exported name is the
# one people know (getpid over a LOCAL helper), a strong one over a weak alias.
_BINDING_RANK = {"GLOBAL": 0, "UNIQUE": 0, "WEAK": 1, "LOCAL": 2}
# Version indexes 0 and 1 of .gnu.version mean "local" and "global, no
# version"; the top bit marks a hidden (non-default, name@VERSION) version.
_VERSYM_HIDDEN = 0x8000
_VER_NDX_GLOBAL = 1
# (st_name, st_info, st_other, st_shndx, st_value, st_size) in file order.
_ELF64_SYM = "IBBHQQ"
_ELF32_SYM = "IIIBBH"


# ---- errors ----

class SymbolError(RuntimeGuardError):
    """A file's symbols could not be read, or do not hold what was asked for."""


class SymbolNotFoundError(SymbolError, LookupError):
    """The file has symbols, but not the one asked for. ``suggestions`` holds
    up to five close names, the likely intended ones."""

    def __init__(self, message: str, suggestions: list[str]):
        self.suggestions = suggestions
        super().__init__(message)


class NoSymbolsError(SymbolError, LookupError):
    """The file defines no function symbols at all: it was stripped (or is a
    PIE executable whose .dynsym only lists what it imports)."""


class NotElfError(SymbolError):
    """The file is not an ELF file (or is too damaged to read as one)."""


class ElfFileNotFoundError(SymbolError, FileNotFoundError):
    """The file does not exist. Also a FileNotFoundError, so callers that
    handle missing files generically still catch it."""

    def __init__(self, path: str):
        super().__init__(f"cannot read symbols of {path}: no such file")
        self.errno = errno.ENOENT
        self.filename = path


# ---- ELF files ----

class Segment(msgspec.Struct, frozen=True):
    """A PT_LOAD program header: ``filesz`` bytes at file ``offset`` are
    mapped at ``vaddr``; the rest of ``memsz`` is zero-filled (.bss) and has
    no file offset."""

    vaddr: int
    offset: int
    filesz: int
    memsz: int
    flags: int

    @property
    def executable(self) -> bool:
        return bool(self.flags & _PF_X)


class Symbol(msgspec.Struct, frozen=True):
    """A function symbol. ``name`` is the mangled name without its version;
    ``address`` is st_value, an ELF virtual address; ``file_offset`` is where
    that address is loaded from (what a uprobe attaches at), None when no
    PT_LOAD segment with file contents holds it."""

    name: str
    version: Optional[str]
    address: int
    size: int
    binding: str
    file_offset: Optional[int]
    default_version: bool = True

    @property
    def versioned_name(self) -> str:
        """``name@@VERSION`` (the default version), ``name@VERSION`` (a
        hidden, older one) or the plain name."""
        if self.version is None:
            return self.name
        return f"{self.name}{'@@' if self.default_version else '@'}{self.version}"


def _sort_key(symbol: Symbol) -> tuple:
    """Which of the names at one address represents it (smallest first)."""
    return (_BINDING_RANK.get(symbol.binding, 3), len(symbol.name), symbol.name,
            not symbol.default_version, symbol.version or "")


def _resolve_key(symbol: Symbol) -> tuple:
    """Which of the symbols sharing a name ``resolve`` means (smallest first):
    the default version is what a program linked today calls."""
    return (not symbol.default_version, _BINDING_RANK.get(symbol.binding, 3), symbol.address)


def _split_version(name: str) -> tuple[str, Optional[str], bool]:
    """``name@@V`` -> (name, V, True); ``name@V`` -> (name, V, False)."""
    plain, at, version = name.partition("@")
    if not at:
        return name, None, True
    if version.startswith("@"):
        return plain, version[1:], True
    return plain, version, False


class ElfFile:
    """An ELF file's build-id, load segments and function symbols, read once
    with pyelftools; the file is closed afterwards, so keeping many is cheap.

    Symbols come from .symtab and .dynsym (STT_FUNC and STT_GNU_IFUNC, defined,
    nonzero value), with .dynsym's versions. ``symbols`` holds one symbol per
    address, sorted, for address lookups; ``resolve`` knows every name.
    """

    __slots__ = ("path", "name", "stat_key", "build_id", "machine", "segments", "symbols", "is_go",
                 "has_symtab", "is_debug_file", "_by_name", "_addresses", "_ends", "_load_order")

    def __init__(self, path: str, name: str, stat_key: Optional[tuple[int, int, int, int]],
                 build_id: Optional[str], machine: str, segments: tuple[Segment, ...],
                 all_symbols: list[Symbol], is_go: bool, has_symtab: bool, is_debug_file: bool):
        self.path = path
        self.name = name
        self.stat_key = stat_key
        self.build_id = build_id
        self.machine = machine
        self.segments = segments
        self.is_go = is_go
        self.has_symtab = has_symtab
        self.is_debug_file = is_debug_file
        self._by_name: dict[str, list[Symbol]] = collections.defaultdict(list)
        at_address: dict[int, Symbol] = {}
        for symbol in all_symbols:
            self._by_name[symbol.name].append(symbol)
            kept = at_address.get(symbol.address)
            if kept is None or _sort_key(symbol) < _sort_key(kept):
                at_address[symbol.address] = symbol
        for same_name in self._by_name.values():
            same_name.sort(key=_resolve_key)
        self._by_name = dict(self._by_name)
        self.symbols: tuple[Symbol, ...] = tuple(at_address[a] for a in sorted(at_address))
        self._addresses = [s.address for s in self.symbols]
        self._ends = [self._end_of(i) for i in range(len(self.symbols))]
        # Executable segments first: if file ranges ever overlap, a stack
        # frame's offset is in code.
        self._load_order = sorted(segments, key=lambda s: not s.executable)

    def __repr__(self) -> str:
        return (f"ElfFile({self.name!r}, build_id={self.build_id!r}, "
                f"{len(self.symbols)} functions, {len(self.segments)} segments)")

    # -- reading --

    @classmethod
    def open(cls, path: str, *, name: Optional[str] = None) -> "ElfFile":
        """Read ``path``. ``name`` is the path to show for it (default
        ``path``): a file read through ``/proc/<pid>/map_files`` is named by
        the path the process mapped. Raises ElfFileNotFoundError, NotElfError
        (not ELF, or too damaged to read); PermissionError and other OS
        errors pass as they are."""
        try:
            f = open(path, "rb")
        except FileNotFoundError:
            raise ElfFileNotFoundError(path) from None
        with f:
            return cls.read(f, path, name=name)

    @classmethod
    def read(cls, f: BinaryIO, path: str, *, name: Optional[str] = None) -> "ElfFile":
        """Read from an open file; ``path`` is where it was opened (for
        messages, and ``ElfFile.path``)."""
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise NotElfError(f"{path} is not an ELF file: not a regular file")
        head = f.read(4)
        if head != _ELF_MAGIC:
            raise NotElfError(f"{path} is not an ELF file (it starts with {head!r}, not {_ELF_MAGIC!r})")
        f.seek(0)
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        try:
            return cls._parse(ELFFile(f), path, name or path, key)
        except (ELFError, struct.error, ValueError, KeyError, IndexError) as e:
            # pyelftools reports a truncated or malformed file with whatever
            # its parser hit first; the caller needs to know which file.
            raise NotElfError(f"{path} is not a readable ELF file: {type(e).__name__}: {e}") from e

    @classmethod
    def _parse(cls, elf: ELFFile, path: str, name: str, key: tuple[int, int, int, int]) -> "ElfFile":
        machine = elf["e_machine"]
        sections = list(elf.iter_sections())
        loads = [seg.header for seg in elf.iter_segments() if seg["p_type"] == "PT_LOAD"]
        # objcopy --only-keep-debug keeps the program headers and section
        # headers, but not the code: .text becomes NOBITS, the segments'
        # offsets are rewritten and their filesz zeroed.
        is_debug_file = any(s.name == ".text" and s["sh_type"] == "SHT_NOBITS" for s in sections)
        if is_debug_file:
            segments = _reconstruct_layout(loads)
        else:
            segments = tuple(Segment(h.p_vaddr, h.p_offset, h.p_filesz, h.p_memsz, h.p_flags) for h in loads)

        def file_offset(vaddr: int) -> Optional[int]:
            if is_debug_file:
                return None  # a reconstructed layout may name frames, never place probes
            return _file_offset_in(segments, vaddr)

        symbols: list[Symbol] = []
        # (name, address) -> versions seen. .dynsym is read first: .symtab
        # repeats its exports, without the version of a default one.
        seen: dict[tuple[str, int], set[Optional[str]]] = {}
        tables = sorted((s["sh_type"] != "SHT_DYNSYM", i) for i, s in enumerate(sections)
                        if s["sh_type"] in ("SHT_SYMTAB", "SHT_DYNSYM"))
        for _, index in tables:
            section = sections[index]
            versions = (_symbol_versions(sections, index, elf.little_endian)
                        if section["sh_type"] == "SHT_DYNSYM" else None)
            for symbol in _function_symbols(elf, section, versions, machine, file_offset):
                versions_seen = seen.setdefault((symbol.name, symbol.address), set())
                if symbol.version in versions_seen or (symbol.version is None and versions_seen):
                    continue
                versions_seen.add(symbol.version)
                symbols.append(symbol)
        has_symtab = any(s["sh_type"] == "SHT_SYMTAB" for s in sections)
        is_go = any(s.name == ".go.buildinfo" for s in sections) or any(s.name == "runtime.main" for s in symbols)
        return cls(path, name, key, _read_build_id(elf, sections), machine, segments, symbols, is_go,
                   has_symtab, is_debug_file)

    # -- addresses --

    def vaddr_of(self, file_offset: int) -> Optional[int]:
        """The virtual address loaded from ``file_offset``, or None when no
        PT_LOAD segment maps that byte of the file."""
        for seg in self._load_order:
            if seg.offset <= file_offset < seg.offset + seg.filesz:
                return seg.vaddr + (file_offset - seg.offset)
        return None

    def file_offset_of(self, vaddr: int) -> Optional[int]:
        """The file offset ``vaddr`` is loaded from, or None (not in a
        segment, or in its zero-filled .bss part)."""
        return _file_offset_in(self._load_order, vaddr)

    # -- symbols --

    def resolve(self, name: str) -> Symbol:
        """The function named ``name``, ``name@VERSION`` or ``name@@VERSION``.

        Several symbols may share a plain name (versions of one function, or
        LOCAL functions of different source files): the default version wins,
        then GLOBAL over WEAK over LOCAL, then the lowest address. The
        returned symbol always has a ``file_offset``.
        """
        if not self._by_name:
            raise NoSymbolsError(
                f"{self.name} has no function symbols (it was stripped): cannot find {name!r}; "
                "attach by file offset, or install its debug symbols")
        plain, version, default = _split_version(name)
        candidates = self._by_name.get(plain, [])
        if version is not None:
            candidates = [s for s in candidates
                          if s.version == version and (s.default_version or "@@" not in name)]
        if not candidates:
            raise self._not_found(name)
        symbol = candidates[0]
        if symbol.file_offset is None:
            where = ("it is a separate debug file: attach to the binary it describes" if self.is_debug_file
                     else "no PT_LOAD segment with file contents holds that address")
            raise SymbolError(f"{symbol.versioned_name} at {symbol.address:#x} in {self.name} "
                              f"has no file offset: {where}")
        return symbol

    def _not_found(self, name: str) -> SymbolNotFoundError:
        if "@" in name:
            known = [s.versioned_name for same in self._by_name.values() for s in same]
        else:
            known = list(self._by_name)
        close = difflib.get_close_matches(name, known, n=_MAX_SUGGESTIONS)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        return SymbolNotFoundError(
            f"{self.name} has no function symbol {name!r} ({len(self._by_name)} function names){hint}", close)

    def symbol_at_vaddr(self, vaddr: int, is_return_address: bool = False) -> Optional[tuple[Symbol, int]]:
        """(symbol, offset of ``vaddr`` in it), or None. A symbol of size 0
        covers up to the next symbol; past a sized symbol's end (padding
        between functions) there is none. For a return address the byte
        before is looked up, so a call that ends a function (a noreturn
        call) is attributed to the caller, not to the next function."""
        lookup = vaddr - 1 if is_return_address else vaddr
        i = bisect.bisect_right(self._addresses, lookup) - 1
        if i < 0 or lookup >= self._ends[i]:
            return None
        symbol = self.symbols[i]
        return symbol, vaddr - symbol.address

    def symbol_at_offset(self, file_offset: int,
                         is_return_address: bool = False) -> Optional[tuple[Symbol, int]]:
        """(symbol, offset within it) for a byte of the file, as a stack
        frame's (build-id, offset) names it; None when the offset is in no
        segment or no symbol."""
        lookup = file_offset - 1 if is_return_address else file_offset
        vaddr = self.vaddr_of(lookup)
        if vaddr is None:
            return None
        if is_return_address:
            vaddr += 1
        return self.symbol_at_vaddr(vaddr, is_return_address)

    def _end_of(self, i: int) -> int:
        symbol = self.symbols[i]
        if symbol.size:
            return symbol.address + symbol.size
        if i + 1 < len(self.symbols):
            return self.symbols[i + 1].address
        # The last symbol, without a size: up to the end of its segment.
        for seg in self.segments:
            if seg.vaddr <= symbol.address < seg.vaddr + seg.memsz:
                return seg.vaddr + seg.memsz
        return symbol.address + 1


def _file_offset_in(segments: Iterable[Segment], vaddr: int) -> Optional[int]:
    for seg in segments:
        if seg.vaddr <= vaddr < seg.vaddr + seg.filesz:
            return seg.offset + (vaddr - seg.vaddr)
    return None


def _reconstruct_layout(loads: list) -> tuple[Segment, ...]:
    """The original file's PT_LOAD layout, rebuilt from a separate debug
    file's program headers (whose offsets objcopy rewrote and whose filesz
    it zeroed). Linkers (GNU ld, gold, lld) place each segment at the first
    file offset at or after the previous segment's end that is congruent to
    its address modulo its alignment (mmap needs that congruence); memsz
    stands for filesz, which differs only in the last, writable segment.
    A linker script that pads the file on purpose (node's, for huge pages)
    defeats this: frames are then misnamed, so it is used only when the
    binary itself cannot be found."""
    segments = []
    end = 0
    for h in loads:
        align = h.p_align if h.p_align and not h.p_align & (h.p_align - 1) else 4096
        offset = end + ((h.p_vaddr - end) % align)
        segments.append(Segment(h.p_vaddr, offset, h.p_memsz, h.p_memsz, h.p_flags))
        end = offset + h.p_memsz
    return tuple(segments)


def _read_build_id(elf: ELFFile, sections: list) -> Optional[str]:
    """The NT_GNU_BUILD_ID note, from the note sections, else (a file with
    no section headers) from the PT_NOTE segments."""
    sources = [s for s in sections if s["sh_type"] == "SHT_NOTE"]
    if not sources:
        sources = [s for s in elf.iter_segments() if s["p_type"] == "PT_NOTE"]
    for source in sources:
        for note in source.iter_notes():
            if note["n_type"] == "NT_GNU_BUILD_ID" and note["n_name"] == "GNU":
                desc = note["n_desc"]
                return desc.lower() if isinstance(desc, str) else bytes(desc).hex()
    return None


def _symbol_versions(sections: list, dynsym_index: int,
                     little_endian: bool) -> Optional[list[tuple[Optional[str], bool]]]:
    """(version, is default) per .dynsym entry, from .gnu.version and the
    names .gnu.version_d gives its indexes. Indexes of .gnu.version_r name
    what the file imports: those symbols are undefined, and skipped."""
    versym = next((s for s in sections if s["sh_type"] == "SHT_GNU_versym" and s["sh_link"] == dynsym_index), None)
    if versym is None:
        return None
    names: dict[int, str] = {}
    for section in sections:
        if section["sh_type"] == "SHT_GNU_verdef":
            for verdef, aux in section.iter_versions():
                names[verdef["vd_ndx"]] = next(aux).name
    data = versym.data()
    result: list[tuple[Optional[str], bool]] = []
    for (raw,) in struct.iter_unpack(("<" if little_endian else ">") + "H", data[: len(data) // 2 * 2]):
        index = raw & ~_VERSYM_HIDDEN
        if index <= _VER_NDX_GLOBAL:
            result.append((None, True))
        else:
            result.append((names.get(index), not raw & _VERSYM_HIDDEN))
    return result


def _function_symbols(elf: ELFFile, section, versions, machine: str, file_offset) -> Iterable[Symbol]:
    """The defined function symbols of one symbol table. The table is decoded
    with struct rather than pyelftools' per-symbol parser: tens of
    thousands of symbols (an unstripped python) take milliseconds, not
    seconds."""
    if section["sh_type"] == "SHT_NOBITS" or not section["sh_entsize"]:
        return
    strtab = elf.get_section(section["sh_link"]).data()
    layout = (_ELF64_SYM if elf.elfclass == 64 else _ELF32_SYM)
    entry = struct.Struct(("<" if elf.little_endian else ">") + layout)
    data = section.data()
    count = min(len(data) // section["sh_entsize"], len(data) // entry.size)
    is_dynsym = section["sh_type"] == "SHT_DYNSYM"
    for i in range(1, count):
        fields = entry.unpack_from(data, i * section["sh_entsize"])
        if elf.elfclass == 64:
            st_name, st_info, _other, st_shndx, value, size = fields
        else:
            st_name, value, size, st_info, _other, st_shndx = fields
        if st_info & 0xF not in (_STT_FUNC, _STT_GNU_IFUNC) or st_shndx == _SHN_UNDEF or value == 0:
            continue
        if machine == "EM_ARM":
            value &= ~1  # the Thumb bit is not part of the address
        end = strtab.find(b"\0", st_name)
        raw_name = strtab[st_name: end if end >= 0 else len(strtab)].decode("utf-8", "surrogateescape")
        if is_dynsym and versions is not None and i < len(versions):
            plain, (version, default) = raw_name, versions[i]
        else:
            # .symtab spells versions into the name: memcpy@@GLIBC_2.14.
            plain, version, default = _split_version(raw_name)
        yield Symbol(plain, version, value, size, _BINDINGS.get(st_info >> 4, str(st_info >> 4)),
                     file_offset(value), default)


# ---- names for display ----

_DEMANGLE_CDEF = """
char *__cxa_demangle(const char *mangled, char *buf, size_t *len, int *status);
void free(void *);
"""
# Rust v0: _R, an optional encoding version, then a path, which starts with
# one of these tags; a C name such as _Run does not match.
_RUST_V0 = re.compile(r"_R[0-9]*[CMXYNIB]")
_RUST_HASH = re.compile(r"::h[0-9a-f]{16}$")
_RUST_ESCAPE = re.compile(r"\$(SP|BP|RF|LT|GT|LP|RP|C|u[0-9a-fA-F]{1,6})\$")
_RUST_ESCAPES = {"SP": "@", "BP": "*", "RF": "&", "LT": "<", "GT": ">", "LP": "(", "RP": ")", "C": ","}


@functools.lru_cache(maxsize=1)
def _cxa_demangle():
    """(ffi, libstdc++, libc) loaded once in cffi's ABI mode, or None when
    libstdc++ is not installed (names are then shown mangled). The buffer
    __cxa_demangle returns comes from malloc, so libc's free releases it."""
    import cffi

    ffi = cffi.FFI()
    ffi.cdef(_DEMANGLE_CDEF)
    try:
        return ffi, ffi.dlopen("libstdc++.so.6"), ffi.dlopen(None)
    except OSError:
        return None


@functools.lru_cache(maxsize=1)
def _cxxfilt() -> Optional[str]:
    return shutil.which("c++filt")


@functools.lru_cache(maxsize=4096)
def _demangle_rust_v0(name: str) -> str:
    """libstdc++ does not know Rust's v0 scheme; binutils' c++filt (2.36+)
    does. One process per name, but each name only once."""
    tool = _cxxfilt()
    if tool is None:
        return name
    try:
        out = subprocess.run([tool, name], capture_output=True, text=True, timeout=5, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return name
    return out.strip() or name


def _unescape_rust_legacy(path: str) -> str:
    """Undo rustc's legacy escapes ($LT$ for <, .. for ::, a leading _ before
    $) that __cxa_demangle leaves in each path component."""
    parts = []
    for part in path.split("::"):
        if part.startswith("_$"):
            part = part[1:]
        part = part.replace("..", "::")
        part = _RUST_ESCAPE.sub(
            lambda m: _RUST_ESCAPES.get(m.group(1)) or chr(int(m.group(1)[1:], 16)), part)
        parts.append(part)
    return "::".join(parts)


@functools.lru_cache(maxsize=65536)
def demangle(name: str) -> str:
    """The readable form of a symbol name, for display.

    C++ and legacy Rust (``_Z...``) through libstdc++'s ``__cxa_demangle``;
    legacy Rust loses its ``::h<16 hex>`` hash; Rust v0 (``_R...``) through
    ``c++filt`` when it is on PATH. C names, and any name that cannot be
    demangled here, come back unchanged.
    """
    if _RUST_V0.match(name):
        return _demangle_rust_v0(name)
    if not name.startswith("_Z"):
        return name
    loaded = _cxa_demangle()
    if loaded is None:
        return name
    ffi, cxx, libc = loaded
    status = ffi.new("int *")
    result = cxx.__cxa_demangle(name.encode("utf-8", "surrogateescape"), ffi.NULL, ffi.NULL, status)
    if result == ffi.NULL:
        return name
    try:
        text = ffi.string(result).decode("utf-8", "replace")
    finally:
        libc.free(result)
    if status[0] != 0:
        return name
    # Only Rust puts a 16-hex-digit hash last in a path without parameters:
    # a C++ function always ends with its parameter list.
    if _RUST_HASH.search(text):
        return _unescape_rust_legacy(_RUST_HASH.sub("", text))
    return text


def function_signature(symbol_name: str) -> str:
    """What is known of a function's signature from its symbol: C++ names
    carry their parameter types (``foo::bar(int)``), Rust names their path
    (``core::fmt::write``, no types), and C names only the name (C symbols
    carry no types: those live in DWARF debug info, not read here). A
    ``@VERSION`` suffix is dropped."""
    plain, _version, _default = _split_version(symbol_name)
    return demangle(plain)


# ---- finding files by build-id, reading each once ----

class BuildIdIndex:
    """Build-id -> paths of files that have it: learned from files read
    through an ElfCache and from maps snapshots, then, last, the debug file
    ``<debug dir>/.build-id/xx/rest.debug`` (debug files hold the symbols a
    stripped binary lacks). Thread-safe."""

    def __init__(self, debug_dirs: Iterable[str] = DEBUG_DIRS):
        self.debug_dirs = tuple(debug_dirs)
        self._lock = threading.Lock()
        self._paths: dict[str, list[str]] = {}

    def add(self, build_id: str, path: str) -> None:
        """Remember that ``path`` had ``build_id`` (newest first)."""
        with self._lock:
            paths = self._paths.setdefault(build_id, [])
            if path in paths:
                paths.remove(path)
            paths.insert(0, path)
            del paths[_MAX_PATHS_PER_BUILD_ID:]

    def forget(self, build_id: str, path: str) -> None:
        """``path`` no longer has ``build_id`` (it was rebuilt or removed)."""
        with self._lock:
            paths = self._paths.get(build_id)
            if paths and path in paths:
                paths.remove(path)

    def learn(self, snapshot: "MapsSnapshot") -> None:
        """Remember the build-ids of a process's mapped files, under the paths
        the process sees when they are reachable from here."""
        for mapping in snapshot.mappings:
            if mapping.build_id is not None and mapping.path_reachable:
                self.add(mapping.build_id, mapping.path)

    def debug_path_of(self, build_id: str) -> Optional[str]:
        """The separate debug file for ``build_id``, if one is installed."""
        if len(build_id) < 3:
            return None
        for directory in self.debug_dirs:
            path = os.path.join(directory, ".build-id", build_id[:2], build_id[2:] + ".debug")
            if os.path.isfile(path):
                return path
        return None

    def paths_of(self, build_id: str) -> list[str]:
        """Known paths, newest first, then the debug file. A path may have
        been rebuilt since: check the build-id of what you open."""
        with self._lock:
            paths = list(self._paths.get(build_id, ()))
        debug = self.debug_path_of(build_id)
        return paths + [debug] if debug and debug not in paths else paths

    def path_of(self, build_id: str) -> Optional[str]:
        paths = self.paths_of(build_id)
        return paths[0] if paths else None


class ElfCache:
    """Opens each file once: files are kept by (st_dev, st_ino, st_size,
    st_mtime_ns), so another path to the same file (a hard link,
    ``/proc/<pid>/map_files``) costs an fstat, and a rebuilt file is read
    again. Bounded, least recently used first out. Every build-id read is
    registered in ``index``. Thread-safe."""

    def __init__(self, max_files: int = DEFAULT_MAX_FILES, index: Optional[BuildIdIndex] = None):
        self.max_files = max_files
        self.index = index if index is not None else BuildIdIndex()
        self._lock = threading.Lock()
        self._files: collections.OrderedDict[tuple[int, int, int, int], ElfFile] = collections.OrderedDict()
        self._by_build_id: dict[str, ElfFile] = {}

    def __len__(self) -> int:
        return len(self._files)

    def open(self, path: str, *, name: Optional[str] = None) -> ElfFile:
        """The file at ``path``, read now or earlier. Raises like
        ElfFile.open."""
        try:
            f = open(path, "rb")
        except FileNotFoundError:
            raise ElfFileNotFoundError(path) from None
        with f:
            # fstat of the open file, not stat of the path: the key must
            # describe the bytes that are read.
            st = os.fstat(f.fileno())
            key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
            with self._lock:
                elf = self._files.get(key)
                if elf is not None:
                    self._files.move_to_end(key)
            if elf is None:
                elf = ElfFile.read(f, path, name=name)
                self._remember(key, elf)
        if elf.build_id is not None and not path.startswith("/proc/"):
            self.index.add(elf.build_id, path)
        return elf

    def _remember(self, key: tuple[int, int, int, int], elf: ElfFile) -> None:
        with self._lock:
            self._files[key] = elf
            if elf.build_id is not None:
                known = self._by_build_id.get(elf.build_id)
                # A debug file shares its binary's build-id; the binary wins,
                # its segments are the real ones.
                if known is None or known.is_debug_file or not elf.is_debug_file:
                    self._by_build_id[elf.build_id] = elf
            while len(self._files) > self.max_files:
                _, old = self._files.popitem(last=False)
                if old.build_id is not None and self._by_build_id.get(old.build_id) is old:
                    del self._by_build_id[old.build_id]

    def cached(self, build_id: str) -> Optional[ElfFile]:
        """A file with ``build_id`` already read, without touching the disk."""
        with self._lock:
            return self._by_build_id.get(build_id)

    def find(self, build_id: str) -> Optional[ElfFile]:
        """A file with ``build_id``: one already read, else the first of the
        index's paths that still has it (the binary before its debug file)."""
        elf = self.cached(build_id)
        if elf is not None:
            return elf
        for path in self.index.paths_of(build_id):
            try:
                elf = self.open(path)
            except (OSError, SymbolError):
                self.index.forget(build_id, path)
                continue
            if elf.build_id == build_id:
                return elf
            self.index.forget(build_id, path)
        return None

    def debug_file(self, build_id: str) -> Optional[ElfFile]:
        """The separate debug file of ``build_id``, if one is installed."""
        path = self.index.debug_path_of(build_id)
        if path is None:
            return None
        try:
            elf = self.open(path)
        except (OSError, SymbolError):
            return None
        return elf if elf.build_id == build_id else None


# ---- process memory maps ----

class Mapping(msgspec.Struct, frozen=True):
    """One line of /proc/<pid>/maps. ``path`` is "" for anonymous memory and
    ``[heap]``, ``[stack]``, ``[vdso]``... for the kernel's own mappings;
    ``build_id`` is set for file-backed mappings of ELF files that have one."""

    start: int
    end: int
    perms: str
    offset: int
    dev: str
    inode: int
    path: str
    deleted: bool = False
    build_id: Optional[str] = None
    path_reachable: bool = False

    @property
    def is_file(self) -> bool:
        return self.inode != 0 and self.path.startswith("/")

    @property
    def is_special(self) -> bool:
        """A kernel-provided mapping: [vdso], [vvar], [heap], [stack]..."""
        return self.path.startswith("[")

    @property
    def is_anonymous(self) -> bool:
        return self.path == ""


_DELETED = " (deleted)"


def _parse_maps_line(line: str) -> Optional[Mapping]:
    fields = line.rstrip("\n").split(maxsplit=5)
    if len(fields) < 5:
        return None
    start, _, end = fields[0].partition("-")
    path = fields[5] if len(fields) == 6 else ""
    deleted = path.endswith(_DELETED)
    if deleted:
        path = path[: -len(_DELETED)]
    return Mapping(int(start, 16), int(end, 16), fields[1], int(fields[2], 16), fields[3], int(fields[4]),
                   path, deleted)


class MapsSnapshot:
    """A process's memory maps at one moment, with the build-id of each
    mapped ELF file, so its raw instruction pointers can be named later,
    after it exited too.

    Each file is read through the ElfCache once per snapshot: at its path
    when that path still leads to the mapped inode, else through
    ``/proc/<pid>/map_files/<start>-<end>`` (a deleted file, or a path of
    another mount namespace, such as a container's).
    """

    def __init__(self, pid: int, mappings: tuple[Mapping, ...], files: dict[tuple[str, int, str], ElfFile]):
        self.pid = pid
        self.mappings = mappings
        self._starts = [m.start for m in mappings]
        self._files = files

    @classmethod
    def read(cls, pid: int, elf_cache: Optional[ElfCache] = None) -> "MapsSnapshot":
        """Read /proc/<pid>/maps. Raises ProcessLookupError when the process
        is gone; PermissionError when we may not read its maps."""
        try:
            with open(f"/proc/{pid}/maps") as f:
                lines = f.readlines()
        except (FileNotFoundError, ProcessLookupError):
            raise ProcessLookupError(f"process {pid} is gone: /proc/{pid}/maps does not exist") from None
        cache = elf_cache if elf_cache is not None else ElfCache()
        files: dict[tuple[str, int, str], Optional[ElfFile]] = {}
        reachable: dict[tuple[str, int, str], bool] = {}
        mappings = []
        for line in lines:
            mapping = _parse_maps_line(line)
            if mapping is None:
                continue
            if mapping.is_file:
                key = (mapping.dev, mapping.inode, mapping.path)
                if key not in files:
                    files[key], reachable[key] = _open_mapped(pid, mapping, cache)
                elf = files[key]
                mapping = msgspec.structs.replace(
                    mapping, build_id=elf.build_id if elf is not None else None, path_reachable=reachable[key])
            mappings.append(mapping)
        mappings.sort(key=lambda m: m.start)
        snapshot = cls(pid, tuple(mappings), {k: v for k, v in files.items() if v is not None})
        cache.index.learn(snapshot)
        return snapshot

    def mapping_for(self, ip: int) -> Optional[tuple[Mapping, int]]:
        """(mapping holding ``ip``, the file offset of ``ip`` in it), or None."""
        i = bisect.bisect_right(self._starts, ip) - 1
        if i < 0 or ip >= self.mappings[i].end:
            return None
        mapping = self.mappings[i]
        return mapping, ip - mapping.start + mapping.offset

    def elf_for(self, mapping: Mapping) -> Optional[ElfFile]:
        """The ELF file read for a file-backed mapping, or None."""
        return self._files.get((mapping.dev, mapping.inode, mapping.path))

    @property
    def paths(self) -> list[str]:
        """Each mapped file's path, once, in address order."""
        return list(dict.fromkeys(m.path for m in self.mappings if m.is_file))


def _open_mapped(pid: int, mapping: Mapping, cache: ElfCache) -> tuple[Optional[ElfFile], bool]:
    """(the mapped file read through the cache or None, whether its path
    leads to it from here). Comparing the inode tells whether the path is
    the mapped file: after an upgrade or in another mount namespace it is
    not. Not an ELF file (a locale archive, a font) gives None."""
    reachable = False
    if not mapping.deleted:
        try:
            reachable = os.stat(mapping.path).st_ino == mapping.inode
        except OSError:
            pass
    sources = [mapping.path] if reachable else []
    sources.append(f"/proc/{pid}/map_files/{mapping.start:x}-{mapping.end:x}")
    for source in sources:
        try:
            return cache.open(source, name=mapping.path), reachable
        except NotElfError:
            return None, reachable
        except (OSError, SymbolError):
            continue
    return None, reachable


# ---- stack frames ----

class Frame(msgspec.Struct, frozen=True):
    """One symbolized stack frame. ``offset`` is the file offset in
    ``module`` (the raw instruction pointer when no module holds it);
    ``symbol`` is the mangled name, ``function`` its display form."""

    module: Optional[str]
    build_id: Optional[str]
    offset: int
    symbol: Optional[str] = None
    symbol_offset: int = 0
    function: Optional[str] = None

    def describe(self) -> str:
        """``function+0x1a (libfoo.so)``, or ``0x7f12... (?)`` when unknown."""
        where = os.path.basename(self.module) if self.module else "?"
        if self.function is not None:
            return f"{self.function}+{self.symbol_offset:#x} ({where})"
        return f"{self.offset:#x} ({where})"


class Symbolizer:
    """Names stack frames: (build-id, file offset) pairs as the kernel
    captures them, or raw instruction pointers with a maps snapshot of
    their process. Frames are remembered (bounded, least recently used
    first out); ``cache_hits`` and ``cache_misses`` count lookups.
    Thread-safe.

    Pass ``is_return_address=True`` for every frame but the innermost: those
    are return addresses, one past the call, and the call may be a
    function's last instruction.
    """

    def __init__(self, elf_cache: Optional[ElfCache] = None, max_frames: int = DEFAULT_MAX_FRAMES):
        self.elf_cache = elf_cache if elf_cache is not None else ElfCache()
        self.max_frames = max_frames
        self.cache_hits = 0
        self.cache_misses = 0
        self._lock = threading.Lock()
        self._frames: collections.OrderedDict[tuple, Frame] = collections.OrderedDict()

    def frame_from_build_id(self, build_id: str, file_offset: int, is_return_address: bool = False) -> Frame:
        """The frame at ``file_offset`` of the file with ``build_id`` (hex),
        as the kernel captures user stacks. An unknown build-id gives a
        frame without module or symbol, and is not looked up again until
        the frame leaves the cache."""
        build_id = build_id.lower()
        return self._cached(("b", build_id, file_offset, is_return_address),
                            lambda: self._by_build_id(build_id, file_offset, is_return_address))

    def frame_from_ip(self, snapshot: MapsSnapshot, ip: int, is_return_address: bool = False) -> Frame:
        """The frame of an instruction pointer of ``snapshot``'s process."""
        # A return address may be the end of the mapping that holds the call.
        found = snapshot.mapping_for(ip - 1 if is_return_address else ip)
        if found is None or not found[0].is_file:
            return Frame(None, None, ip)
        mapping, file_offset = found
        file_offset += 1 if is_return_address else 0
        if mapping.build_id is not None:
            return self.frame_from_build_id(mapping.build_id, file_offset, is_return_address)
        elf = snapshot.elf_for(mapping)
        if elf is None:
            return Frame(mapping.path, None, file_offset)
        # No build-id to key on: the file's identity will do.
        return self._cached(("f", elf.stat_key, elf.path, file_offset, is_return_address),
                            lambda: _frame(elf, None, mapping.path, None, file_offset, is_return_address))

    def _cached(self, key: tuple, make) -> Frame:
        with self._lock:
            frame = self._frames.get(key)
            if frame is not None:
                self._frames.move_to_end(key)
                self.cache_hits += 1
                return frame
            self.cache_misses += 1
        frame = make()
        with self._lock:
            self._frames[key] = frame
            while len(self._frames) > self.max_frames:
                self._frames.popitem(last=False)
        return frame

    def _by_build_id(self, build_id: str, file_offset: int, is_return_address: bool) -> Frame:
        elf = self.elf_cache.find(build_id)
        if elf is None:
            return Frame(None, build_id, file_offset)
        symbols = elf
        if not elf.has_symtab and not elf.is_debug_file:
            # A stripped binary names only its exports; its debug file, when
            # installed, names every function.
            symbols = self.elf_cache.debug_file(build_id) or elf
        return _frame(elf, symbols, elf.name, build_id, file_offset, is_return_address)

    def clear(self) -> None:
        with self._lock:
            self._frames.clear()


def _frame(layout: ElfFile, symbols: Optional[ElfFile], module: str, build_id: Optional[str],
           file_offset: int, is_return_address: bool) -> Frame:
    """The frame at ``file_offset``: addresses from ``layout``'s segments,
    names from ``symbols`` (the same file, or its debug file)."""
    symbols = symbols or layout
    lookup = file_offset - 1 if is_return_address else file_offset
    vaddr = layout.vaddr_of(lookup)
    found = None
    if vaddr is not None:
        vaddr += 1 if is_return_address else 0
        found = symbols.symbol_at_vaddr(vaddr, is_return_address)
    if found is None:
        return Frame(module, build_id, file_offset)
    symbol, within = found
    return Frame(module, build_id, file_offset, symbol.name, within, demangle(symbol.name))


# ---- language runtimes ----

# (runtime, executable basename pattern, mapped library basename pattern):
# the first row that matches wins, so an embedding (python loading libjvm
# through JPype) is named by its host.
RUNTIMES: tuple[tuple[str, Optional[str], Optional[str]], ...] = (
    ("python", r"python[0-9.]*", r"libpython3.*\.so.*"),
    ("jvm", None, r"libjvm\.so"),
    ("node", r"node|nodejs", r"libnode\.so.*"),
    ("dotnet", None, r"libcoreclr\.so"),
    ("ruby", r"ruby.*", r"libruby.*\.so.*"),
)
_RUNTIME_PATTERNS = tuple((runtime, re.compile(exe) if exe else None, re.compile(lib) if lib else None)
                          for runtime, exe, lib in RUNTIMES)


def detect_runtime(executable: Optional[str], mapped_paths: Iterable[str],
                   elf_cache: Optional[ElfCache] = None) -> str:
    """Which runtime a process runs: "python", "jvm", "node", "dotnet",
    "ruby", "go", "native" (an ELF executable otherwise) or "unknown" (no
    executable known, or it cannot be read as ELF). Interpreters and VMs
    are known by their executable's name or their mapped library; Go by its
    executable's ELF contents, since Go programs are static and have any
    name."""
    exe_name = os.path.basename(executable.removesuffix(_DELETED)) if executable else None
    libraries = {os.path.basename(p.removesuffix(_DELETED)) for p in mapped_paths}
    for runtime, exe_pattern, lib_pattern in _RUNTIME_PATTERNS:
        if exe_pattern is not None and exe_name is not None and exe_pattern.fullmatch(exe_name):
            return runtime
        if lib_pattern is not None and any(lib_pattern.fullmatch(lib) for lib in libraries):
            return runtime
    if executable is None:
        return "unknown"
    try:
        elf = elf_cache.open(executable) if elf_cache is not None else ElfFile.open(executable)
    except (OSError, SymbolError):
        return "unknown"
    return "go" if elf.is_go else "native"


# ---- packages ----

# The top-level directories a merged-/usr system links into /usr.
_MERGED_USR_DIRS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
_DIST_INFO = ".dist-info"
_NOT_INSTALLED = {"not-installed", "config-files"}


def _purl_quote(text: str) -> str:
    """Percent-encode a purl component. The spec leaves A-Z a-z 0-9 and
    ``.-_~`` unencoded, and ':' too wherever it appears (Debian epochs,
    ``1:2.3``); everything else, '+' included, is encoded. urllib's quote
    keeps exactly ``A-Za-z0-9_.-~`` unencoded, so ':' is the one extra
    safe character."""
    return urllib.parse.quote(text, safe=":")


def _normalize_pypi(name: str) -> str:
    """PEP 503: lowercase, runs of -, _ and . become one -."""
    return re.sub(r"[-_.]+", "-", name).lower()


class PackageIndex:
    """The package a file came from, as a Package URL
    (https://github.com/package-url/purl-spec): ``pkg:deb/<os id>/<name>@<version>?arch=<arch>``
    for files dpkg installed, ``pkg:pypi/<name>@<version>`` for files a
    Python distribution's RECORD lists. None when unknown.

    dpkg's file lists (a few MB) are read on the first question, each
    site-packages directory's RECORDs on the first question about a file
    under it; answers are remembered. Thread-safe. Not handled: dpkg
    diversions, and Python distributions without a RECORD (egg-info).
    """

    def __init__(self, dpkg_dir: str = "/var/lib/dpkg", os_release: str = "/etc/os-release", root: str = "/"):
        """``root`` is where to look whether /bin, /lib... are links into
        /usr (a merged /usr, where dpkg's /lib/x and /usr/lib/x are one file)."""
        self.dpkg_dir = dpkg_dir
        self.os_release = os_release
        self.root = root
        self._lock = threading.RLock()
        self._deb_files: Optional[dict[str, str]] = None
        self._deb_packages: dict[tuple[str, str], tuple[str, str]] = {}
        self._deb_by_name: dict[str, list[tuple[str, str, str]]] = {}
        self._namespace = "debian"
        self._merged: tuple[str, ...] = ()
        self._site_dirs: dict[str, Optional[dict[str, str]]] = {}
        self._answers: dict[str, Optional[str]] = {}

    def purl_of(self, path: str) -> Optional[str]:
        with self._lock:
            if path in self._answers:
                return self._answers[path]
            # Packages own directories too (base-files owns /tmp): a directory is no component.
            is_dir = os.path.isdir(os.path.join(self.root, path.lstrip("/")))
            answer = None if is_dir else self._deb_purl(path) or self._pypi_purl(path)
            self._answers[path] = answer
            return answer

    # -- Debian --

    def _canonical(self, path: str) -> str:
        """One spelling for both sides of a merged /usr: /lib/x -> /usr/lib/x."""
        for top in self._merged:
            if path.startswith(f"/{top}/"):
                return "/usr" + path
        return path

    def _load_dpkg(self) -> dict[str, str]:
        if self._deb_files is not None:
            return self._deb_files
        self._merged = tuple(d for d in _MERGED_USR_DIRS
                             if os.path.islink(os.path.join(self.root, d))
                             and os.path.realpath(os.path.join(self.root, d))
                             == os.path.realpath(os.path.join(self.root, "usr", d)))
        self._namespace = _os_id(self.os_release) or "debian"
        self._load_dpkg_status()
        files: dict[str, str] = {}
        for list_file in sorted(glob.glob(os.path.join(self.dpkg_dir, "info", "*.list"))):
            package = os.path.basename(list_file)[: -len(".list")]
            try:
                with open(list_file, encoding="utf-8", errors="surrogateescape") as f:
                    for line in f:
                        files.setdefault(self._canonical(line.rstrip("\n")), package)
            except OSError:
                continue
        self._deb_files = files
        return files

    def _load_dpkg_status(self) -> None:
        try:
            with open(os.path.join(self.dpkg_dir, "status"), encoding="utf-8", errors="replace") as f:
                text = f.read()
        except OSError:
            return
        for paragraph in text.split("\n\n"):
            fields = {}
            for line in paragraph.splitlines():
                if line and not line[0].isspace():
                    key, _, value = line.partition(":")
                    fields[key] = value.strip()
            name, version = fields.get("Package"), fields.get("Version")
            arch = fields.get("Architecture", "")
            state = fields.get("Status", "").rsplit(" ", 1)[-1]
            if not name or not version or state in _NOT_INSTALLED:
                continue
            self._deb_packages[(name, arch)] = (version, arch)
            self._deb_by_name.setdefault(name, []).append((name, version, arch))

    def _deb_purl(self, path: str) -> Optional[str]:
        files = self._load_dpkg()
        for candidate in _candidates(path):
            package = files.get(self._canonical(candidate))
            if package is not None:
                return self._deb_package_purl(package)
        return None

    def _deb_package_purl(self, list_name: str) -> Optional[str]:
        """A package as its .list file names it: ``libssl3:amd64`` for
        Multi-Arch: same packages, ``bash`` otherwise."""
        name, _, arch = list_name.partition(":")
        if arch:
            found = self._deb_packages.get((name, arch))
            version = found[0] if found else None
        else:
            entries = self._deb_by_name.get(name, [])
            version, arch = (entries[0][1], entries[0][2]) if len(entries) == 1 else (None, "")
        purl = f"pkg:deb/{_purl_quote(self._namespace)}/{_purl_quote(name)}"
        if version:
            purl += "@" + _purl_quote(version)
        return purl + (f"?arch={_purl_quote(arch)}" if arch else "")

    # -- Python --

    def _pypi_purl(self, path: str) -> Optional[str]:
        real = os.path.realpath(path)
        directory = os.path.dirname(real)
        while True:
            records = self._site_records(directory)
            if records is not None and real in records:
                return records[real]
            parent = os.path.dirname(directory)
            if parent == directory:
                return None
            directory = parent

    def _site_records(self, directory: str) -> Optional[dict[str, str]]:
        """file -> purl for every distribution installed in ``directory``,
        or None when it holds no ``*.dist-info``."""
        if directory in self._site_dirs:
            return self._site_dirs[directory]
        try:
            dist_infos = [e.path for e in os.scandir(directory) if e.name.endswith(_DIST_INFO) and e.is_dir()]
        except OSError:
            dist_infos = []
        records: Optional[dict[str, str]] = None
        if dist_infos:
            records = {}
            for dist_info in sorted(dist_infos):
                purl = _dist_info_purl(dist_info)
                try:
                    with open(os.path.join(dist_info, "RECORD"), newline="", encoding="utf-8") as f:
                        for row in csv.reader(f):
                            if row and row[0]:
                                records.setdefault(os.path.normpath(os.path.join(directory, row[0])), purl)
                except OSError:
                    continue
        self._site_dirs[directory] = records
        return records


def _candidates(path: str) -> list[str]:
    """The spellings to look a file up by: where it really is first (the
    bytes that run), then the path as given (a symlink dpkg installed)."""
    absolute = os.path.abspath(path)
    return list(dict.fromkeys((os.path.realpath(absolute), absolute)))


def _dist_info_purl(dist_info: str) -> str:
    """``pkg:pypi/<name>@<version>`` from ``<name>-<version>.dist-info``,
    the name normalized per PEP 503 (wheels write it with _ for -;
    versions never hold a -)."""
    stem = os.path.basename(dist_info)[: -len(_DIST_INFO)]
    name, _, version = stem.rpartition("-")
    if not name:
        name, version = stem, ""
    purl = f"pkg:pypi/{_purl_quote(_normalize_pypi(name))}"
    return purl + ("@" + _purl_quote(version) if version else "")


def _os_id(os_release: str) -> Optional[str]:
    try:
        with open(os_release, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.strip().partition("=")
                if key == "ID":
                    return value.strip("\"'").lower() or None
    except OSError:
        pass
    return None
