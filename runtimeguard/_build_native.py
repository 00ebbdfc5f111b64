"""cffi build script (API, out-of-line mode) for ``runtimeguard._native``.

Builds the BPF skeletons first (clang + bpftool, via bpf/Makefile), then
compiles csrc/ with them embedded and libbpf, libelf and zlib linked
statically, so the installed module needs none of them on the target host.
The wire structs reach cdef by preprocessing bpf/events.h itself: one
definition, shared by the BPF programs, the C consumer and Python.
"""

import glob
import os
import re
import subprocess
import sys

from cffi import FFI

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.path.join(ROOT, "build")
DEPS = os.path.join(BUILD, "deps")
SKELETONS = os.path.join(BUILD, "bpf")
# Relative to the project root: setuptools refuses absolute source paths.
SOURCES = sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "csrc", "*.c")))
HEADERS = sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "csrc", "*.h"))
                 + glob.glob(os.path.join(ROOT, "bpf", "*.h")))
SKELETON_NAMES = sorted(os.path.basename(p)[:-len(".bpf.c")] for p in glob.glob(os.path.join(ROOT, "bpf", "*.bpf.c")))


def _run(argv):
    result = subprocess.run(argv, cwd=ROOT)
    if result.returncode != 0:
        sys.exit(f"runtimeguard build: {' '.join(argv)} failed (exit {result.returncode})")


def _prepare():
    _run(["bash", "scripts/build-static-deps.sh"])
    _run(["make", "-s", "-C", "bpf", f"OUT={SKELETONS}", f"DEPS={DEPS}"])


def _cdef():
    """The API and wire structs, preprocessed, plus their integer #defines."""
    defines = []
    for header in (os.path.join(ROOT, "bpf", "events.h"), os.path.join(ROOT, "csrc", "api.h")):
        with open(header) as f:
            for line in f:
                m = re.match(r"#define (RG_\w+) (0x[0-9a-fA-F]+|\d+)U?\s*(/\*.*\*/)?\s*$", line)
                if m:
                    defines.append(f"#define {m[1]} {m[2]}\n")
    cc = os.environ.get("CC", "cc")
    expanded = subprocess.run(
        [cc, "-E", "-P", "-I", os.path.join(ROOT, "bpf"), os.path.join(ROOT, "csrc", "api.h")],
        check=True, capture_output=True, text=True,
    ).stdout
    return "".join(defines) + expanded


def _syscalls_cdef():
    """The system calls Python makes through the extension (csrc/syscalls.h)."""
    with open(os.path.join(ROOT, "csrc", "syscalls.cdef")) as f:
        return f.read()


_prepare()
ffibuilder = FFI()
ffibuilder.cdef(_cdef())
ffibuilder.cdef(_syscalls_cdef())
ffibuilder.set_source(
    "runtimeguard._native",
    '#include "api.h"\n#include "syscalls.h"\n',
    sources=SOURCES,
    # Rebuild when a skeleton or a shared header changes, not only a .c file.
    depends=[f"build/bpf/{s}.skel.h" for s in SKELETON_NAMES] + HEADERS,
    include_dirs=[os.path.join(ROOT, "bpf"), os.path.join(ROOT, "csrc"), SKELETONS,
                  os.path.join(DEPS, "include")],
    extra_compile_args=["-O2", "-g0", "-std=gnu11", "-Wall", "-Wno-unused-function"],
    extra_link_args=[
        "-Wl,--exclude-libs,ALL",
        "-Wl,--strip-debug",
        os.path.join(DEPS, "lib", "libbpf.a"),
        os.path.join(DEPS, "lib", "libelf.a"),
        os.path.join(DEPS, "lib", "libz.a"),
    ],
)

if __name__ == "__main__":
    os.chdir(ROOT)
    ffibuilder.compile(tmpdir=os.path.join(BUILD, "cffi"), verbose=True)
