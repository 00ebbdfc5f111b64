"""cffi build script (API, out-of-line mode) for ``runtimeguard._native``.

Builds the BPF skeletons first (clang + bpftool, via bpf/Makefile), then
compiles csrc/ with them embedded and libbpf, libelf and zlib linked
statically, so the installed module needs none of them on the target host.
The wire structs reach cdef by preprocessing bpf/events.h itself: one
definition, shared by the BPF programs, the C consumer and Python.

The static libraries are built into build/deps from Debian's sources, which
takes minutes; RUNTIMEGUARD_DEPS_DIR names a directory that already holds
them (lib/libbpf.a, lib/libelf.a, lib/libz.a and their include/), for
instance a source tree's build/deps reused by a build from the sdist.
"""

import ast
import glob
import os
import re
import subprocess
import sys

from cffi import FFI

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.path.join(ROOT, "build")
DEPS_DIR_VARIABLE = "RUNTIMEGUARD_DEPS_DIR"
DEPS = os.path.abspath(os.environ.get(DEPS_DIR_VARIABLE) or os.path.join(BUILD, "deps"))
STATIC_LIBRARIES = ("libbpf.a", "libelf.a", "libz.a")
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
    if os.environ.get(DEPS_DIR_VARIABLE):
        _check_given_deps()
    else:
        _run(["bash", "scripts/build-static-deps.sh"])
    _run(["make", "-s", "-C", "bpf", f"OUT={SKELETONS}", f"DEPS={DEPS}"])


def _check_given_deps():
    # A directory named on purpose is used as it is, never built into: a typo
    # should fail here, not start a download and a build of several minutes.
    missing = [os.path.join("lib", name) for name in STATIC_LIBRARIES
               if not os.path.isfile(os.path.join(DEPS, "lib", name))]
    if not os.path.isfile(os.path.join(DEPS, "include", "bpf", "libbpf.h")):
        missing.append(os.path.join("include", "bpf", "libbpf.h"))
    if missing:
        sys.exit(f"runtimeguard build: {DEPS_DIR_VARIABLE}={DEPS} lacks {', '.join(missing)}; name a directory "
                 f"that scripts/build-static-deps.sh filled (a source tree's build/deps), or unset "
                 f"{DEPS_DIR_VARIABLE} to build them into build/deps")


def _package_version():
    """runtimeguard.__version__, read from the source without importing the
    package (whose import needs the extension being built)."""
    path = os.path.join(ROOT, "runtimeguard", "__init__.py")
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__version__" for t in node.targets):
            value = getattr(node.value, "value", None)
            # It becomes a C string literal below: nothing that needs escaping.
            if isinstance(value, str) and re.fullmatch(r"[0-9A-Za-z.+!_-]+", value):
                return value
            sys.exit(f"runtimeguard build: __version__ in {path} must be a plain version string such as "
                     f"\"1.2.3\", not {ast.unparse(node.value)}")
    sys.exit(f"runtimeguard build: {path} has no __version__ = \"...\" assignment to take the version from")


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


VERSION = _package_version()
ffibuilder = FFI()
# Called by setup.py's build_ext just before compiling, so that commands that
# compile nothing (sdist, metadata) need neither the static libraries nor clang.
ffibuilder.prepare_sources = _prepare
ffibuilder.cdef(_cdef())
ffibuilder.cdef(_syscalls_cdef())
# The package version this extension was built from: runtimeguard/__init__.py
# refuses an extension left over from another version.
ffibuilder.cdef("const char *rg_package_version(void);")
ffibuilder.set_source(
    "runtimeguard._native",
    '#include "api.h"\n#include "syscalls.h"\n'
    f'static const char *rg_package_version(void) {{ return "{VERSION}"; }}\n',
    sources=SOURCES,
    # Rebuild when a skeleton, a shared header or this script (flags, the
    # version) changes, not only a .c file.
    depends=[f"build/bpf/{s}.skel.h" for s in SKELETON_NAMES] + HEADERS + [os.path.relpath(__file__, ROOT)],
    # The 3.9 limited API, which setup.py's cp39-abi3 wheel tag promises; cffi
    # alone would define an unversioned Py_LIMITED_API.
    define_macros=[("Py_LIMITED_API", "0x03090000")],
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
    _prepare()
    ffibuilder.compile(tmpdir=os.path.join(BUILD, "cffi"), verbose=True)
