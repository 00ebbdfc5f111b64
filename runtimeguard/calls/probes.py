"""Function probes: what to attach, and where it is.

A probe is written as the user thinks of it, ``libssl.so.3:SSL_write``,
``/usr/bin/python3.11:PyObject_Call``, ``./app:handle_request``, or
``usdt:/usr/bin/python3.11:python:function__entry``, and resolved here to a
file and a file offset (uprobes) or a file and a note (USDT) before anything
is loaded, so a missing file, symbol or note is refused with a clear error
and nothing is half-attached.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from functools import lru_cache
from typing import Optional

import msgspec

from ..errors import ProbeError
from .symbols import ElfCache, ElfFile, Symbol

#: Where a bare library name is looked for when the linker's cache does not
#: know it (the multiarch directories first, as ld.so does on Debian).
_LIBRARY_DIRS = ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib/aarch64-linux-gnu",
                 "/usr/lib/aarch64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib", "/usr/local/lib")


class UsdtNote(msgspec.Struct, frozen=True):
    """One USDT site: an ``stapsdt`` note of the file."""

    provider: str
    name: str
    address: int
    semaphore: int
    arguments: str
    """The note's argument spec ("8@%rdi -4@%esi"): its count is the probe's arity."""


class Probe(msgspec.Struct, frozen=True):
    """A function probe, resolved.

    ``spec`` is what the user wrote; ``path`` the file attached to (a
    library covers every process that maps it, now or later); ``offset`` the
    uprobe's file offset (0 for USDT); ``symbol`` the function's ELF symbol
    (None for USDT); ``usdt`` the provider and name."""

    spec: str
    path: str
    kind: str
    """"uprobe" or "usdt"."""
    entry: bool = True
    returns: bool = False
    offset: int = 0
    symbol: Optional[Symbol] = None
    provider: Optional[str] = None
    name: Optional[str] = None
    arity: int = 0
    """USDT: the note's argument count."""
    string_arguments: tuple[int, ...] = ()
    """USDT: which arguments are C strings (copied with the call)."""
    build_id: Optional[str] = None

    @property
    def function(self) -> str:
        """The probed function as people read it: ``SSL_write``, ``python:function__entry``."""
        if self.kind == "usdt":
            return f"{self.provider}:{self.name}"
        return self.symbol.name if self.symbol is not None else hex(self.offset)


@lru_cache(maxsize=1)
def _ldconfig_cache() -> dict[str, str]:
    """The dynamic linker's cache (``ldconfig -p``): soname -> path, this
    machine's architecture first."""
    ldconfig = shutil.which("ldconfig") or "/sbin/ldconfig"
    try:
        out = subprocess.run([ldconfig, "-p"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    found: dict[str, str] = {}
    for line in out.splitlines()[1:]:
        name, sep, path = line.strip().partition(" => ")
        if sep:
            found.setdefault(name.split(" (", 1)[0], path.strip())
    return found


def find_target(target: str, root: str = "/") -> str:
    """The file a probe names: a path (absolute or relative to the working
    directory), a library by name (``libssl.so.3``, through the linker's
    cache, then the usual directories), or a program on ``PATH``
    (``python3.11``)."""
    if not target:
        raise ProbeError("a probe needs a file: BINARY:SYMBOL")
    if "/" in target:
        path = os.path.abspath(target)
        if not os.path.exists(path):
            raise ProbeError(f"{target}: no such file")
        return path
    looked = []
    if ".so" in target:
        cached = _ldconfig_cache().get(target)
        if cached and os.path.exists(cached):
            return cached
        for d in _LIBRARY_DIRS:
            candidate = os.path.join(d, target)
            looked.append(d)
            if os.path.exists(candidate):
                return candidate
    program = shutil.which(target)
    if program:
        return os.path.abspath(program)
    where = f"the linker's cache, {', '.join(looked)} and PATH" if looked else "PATH"
    raise ProbeError(f"{target}: not found in {where}; give its path")


def usdt_notes(path: str) -> list[UsdtNote]:
    """The file's USDT sites (its ``.note.stapsdt`` section), in file order."""
    from elftools.elf.elffile import ELFFile

    notes = []
    with open(path, "rb") as f:
        elf = ELFFile(f)
        section = elf.get_section_by_name(".note.stapsdt")
        if section is None:
            return []
        data = section.data()
    pos = 0
    while pos + 12 <= len(data):
        namesz, descsz, ntype = struct.unpack_from("<III", data, pos)
        pos += 12
        owner = data[pos:pos + namesz].rstrip(b"\0")
        pos += (namesz + 3) & ~3
        desc = data[pos:pos + descsz]
        pos += (descsz + 3) & ~3
        if owner != b"stapsdt" or ntype != 3 or len(desc) < 24:
            continue
        address, _base, semaphore = struct.unpack_from("<QQQ", desc)
        provider, name, arguments = (desc[24:].split(b"\0") + [b"", b"", b""])[:3]
        notes.append(UsdtNote(provider.decode(errors="replace"), name.decode(errors="replace"), address, semaphore,
                              arguments.decode(errors="replace")))
    return notes


def _usdt_arity(arguments: str) -> int:
    return len(arguments.split()) if arguments.strip() else 0


#: USDT probes whose string arguments are known: CPython's function__entry
#: and function__return are (filename, funcname, lineno).
_KNOWN_STRING_ARGUMENTS = {
    ("python", "function__entry"): (0, 1),
    ("python", "function__return"): (0, 1),
    ("python", "import__find__load__start"): (0,),
    ("python", "import__find__load__done"): (0,),
    ("python", "audit"): (0,),
}


def parse(spec: str, *, returns: bool = False, elf_cache: Optional[ElfCache] = None) -> Probe:
    """Resolves one probe.

    - ``BINARY:SYMBOL``: a uprobe at the function's entry (``returns``: and
      at its return); ``SYMBOL`` may carry a version (``SSL_write@@OPENSSL_3.0.0``);
    - ``uretprobe:BINARY:SYMBOL``: its return only;
    - ``usdt:BINARY:PROVIDER:NAME``: every site of that USDT probe.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ProbeError(f"probe {spec!r}: expected BINARY:SYMBOL or usdt:BINARY:PROVIDER:NAME")
    text = spec.strip()
    kind, entry = "uprobe", True
    if text.startswith("usdt:"):
        return _parse_usdt(spec, text[len("usdt:"):])
    if text.startswith("uretprobe:"):
        text, entry, returns = text[len("uretprobe:"):], False, True
    elif text.startswith("uprobe:"):
        text = text[len("uprobe:"):]
    target, sep, symbol_name = text.rpartition(":")
    if not sep or not target or not symbol_name:
        raise ProbeError(f"probe {spec!r}: expected BINARY:SYMBOL (libssl.so.3:SSL_write, ./app:handler)")
    path = find_target(target)
    elf = (elf_cache.open(path) if elf_cache is not None else ElfFile.open(path))
    try:
        symbol = elf.resolve(symbol_name)
    except ProbeError:
        raise
    except Exception as exc:  # the symbol table's own error says what and why
        raise ProbeError(f"probe {spec!r}: {exc}") from exc
    return Probe(spec=spec, path=path, kind=kind, entry=entry, returns=returns, offset=symbol.file_offset,
                 symbol=symbol, build_id=elf.build_id)


def _parse_usdt(spec: str, text: str) -> Probe:
    parts = text.rsplit(":", 2)
    if len(parts) != 3 or not all(parts):
        raise ProbeError(f"probe {spec!r}: expected usdt:BINARY:PROVIDER:NAME "
                         "(usdt:/usr/bin/python3.11:python:function__entry)")
    target, provider, name = parts
    path = find_target(target)
    try:
        notes = usdt_notes(path)
    except Exception as exc:
        raise ProbeError(f"probe {spec!r}: reading {path}'s USDT notes: {exc}") from exc
    sites = [n for n in notes if n.provider == provider and n.name == name]
    if not sites:
        have = sorted({f"{n.provider}:{n.name}" for n in notes})
        if not have:
            raise ProbeError(f"probe {spec!r}: {path} has no USDT notes (built without them)")
        raise ProbeError(f"probe {spec!r}: {path} has no USDT probe {provider}:{name}; it has "
                         f"{', '.join(have[:12])}{' …' if len(have) > 12 else ''}")
    arity = _usdt_arity(sites[0].arguments)
    strings = tuple(i for i in _KNOWN_STRING_ARGUMENTS.get((provider, name), ()) if i < arity)
    try:
        build_id = ElfFile.open(path).build_id
    except Exception:
        build_id = None
    return Probe(spec=spec, path=path, kind="usdt", provider=provider, name=name, arity=arity,
                 string_arguments=strings, build_id=build_id)
