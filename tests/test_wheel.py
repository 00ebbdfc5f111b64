"""Packaging: `make wheel` leaves one cp39-abi3 manylinux wheel, which installs
into a fresh virtualenv of every CPython from 3.9 to 3.13 on the machine and
traces there with no clang, bpftool, libbpf, libelf or zlib around; the sdist
holds what a build needs and builds the same wheel; the package refuses an
extension built from another version."""

from __future__ import annotations

import ast
import concurrent.futures
import glob
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import textwrap
import uuid
import zipfile
from dataclasses import dataclass

import pytest

from conftest import ROOT

OLDEST, NEWEST = (3, 9), (3, 13)
ARCH = platform.machine()
WHEEL_NAME = re.compile(r"runtimeguard-(?P<version>[^-]+)-cp39-abi3-(?P<platform>manylinux_2_(?P<glibc>\d+)_"
                        + re.escape(ARCH) + r")\.whl")


def source_version() -> str:
    """runtimeguard.__version__ as written in the source."""
    with open(os.path.join(ROOT, "runtimeguard", "__init__.py")) as f:
        tree = ast.parse(f.read())
    (version,) = [node.value.value for node in tree.body if isinstance(node, ast.Assign)
                  and any(getattr(t, "id", None) == "__version__" for t in node.targets)]
    return version


def run(argv: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess:
    """subprocess.run whose timeout ends the command's whole process group
    (the build's and pip's own children too), so nothing outlives a test."""
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True, **kwargs) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            raise AssertionError(f"{' '.join(argv)} took more than {timeout}s\n{out}\n{err}") from None
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def checked(argv: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess:
    done = run(argv, timeout, **kwargs)
    assert done.returncode == 0, f"{' '.join(argv)} exited {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def workdir():
    path = tempfile.mkdtemp(prefix="rg-wheel-")
    try:
        yield path
    finally:
        shutil.rmtree(path)


@pytest.fixture(scope="module")
def wheel(workdir) -> str:
    """`make wheel` into a directory of the test's own that already holds a
    stale wheel and a file that is not runtimeguard's."""
    dist = os.path.join(workdir, "dist")
    os.makedirs(dist)
    for name in ("runtimeguard-0.0.1-cp311-cp311-linux_x86_64.whl", "unrelated.txt"):
        open(os.path.join(dist, name), "w").close()
    checked(["make", "-s", "-C", ROOT, "wheel", f"PYTHON={sys.executable}", f"DIST={dist}"], timeout=600)
    return dist


@pytest.mark.root  # `make wheel` installs the build tools when missing and writes the tree
def test_make_wheel_leaves_one_cp39_abi3_manylinux_wheel(wheel):
    packages = sorted(os.listdir(wheel))
    assert len(packages) == 2 and "unrelated.txt" in packages, packages
    (name,) = [p for p in packages if p != "unrelated.txt"]
    match = WHEEL_NAME.fullmatch(name)
    assert match, f"{name}: not runtimeguard-VERSION-cp39-abi3-manylinux_2_N_{ARCH}.whl"
    assert match["version"] == source_version()
    with zipfile.ZipFile(os.path.join(wheel, name)) as whl:
        files = [f for f in whl.namelist() if not f.endswith("/")]
        dist_info = f"runtimeguard-{match['version']}.dist-info"
        tags = [line.split(": ", 1)[1] for line in whl.read(f"{dist_info}/WHEEL").decode().splitlines()
                if line.startswith("Tag: ")]
        metadata = whl.read(f"{dist_info}/METADATA").decode()
    assert tags == [f"cp39-abi3-{match['platform']}"]
    assert f"\nVersion: {match['version']}\n" in metadata
    assert [f for f in files if f.endswith(".so")] == ["runtimeguard/_native.abi3.so"]
    assert "runtimeguard/py.typed" in files
    assert "runtimeguard/detections/default.yaml" in files


@pytest.mark.root  # `make wheel` installs the build tools when missing and writes the tree
def test_extension_needs_only_glibc_and_its_tag_names_the_newest_version(wheel, tmp_path):
    (name,) = glob.glob(os.path.join(wheel, "runtimeguard-*.whl"))
    with zipfile.ZipFile(name) as whl:
        native = whl.extract("runtimeguard/_native.abi3.so", tmp_path)
    symbols = checked(["objdump", "-T", native], timeout=30).stdout
    needed = max(int(minor) for minor in re.findall(r"\bGLIBC_2\.(\d+)", symbols))
    assert WHEEL_NAME.fullmatch(os.path.basename(name))["glibc"] == str(needed)
    linked = checked(["ldd", native], timeout=30).stdout
    for library in ("libbpf", "libelf", "libz", "libzstd"):
        assert library not in linked, linked


@dataclass(frozen=True)
class Interpreter:
    executable: str  # the real file, which several candidates may lead to
    version: tuple[int, int]

    @property
    def label(self) -> str:
        return f"{self.version[0]}.{self.version[1]} ({self.executable})"


_PROBE = ("import os, platform, sys, sysconfig; print(platform.python_implementation(), sys.version_info[0], "
          "sys.version_info[1], int(bool(sysconfig.get_config_var('Py_GIL_DISABLED'))), "
          "os.path.realpath(sys.executable))")


def cpythons() -> tuple[list[Interpreter], list[str]]:
    """The CPythons 3.9 to 3.13 on this machine, one per real interpreter: the
    one running the tests, pyenv's, /usr/bin's and /usr/local/bin's, and
    whatever python3.N the search path finds; and why other candidates were
    passed over."""
    pyenv_root = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    candidates = {sys.executable} | set(glob.glob(os.path.join(pyenv_root, "versions", "*", "bin", "python3.*")))
    for minor in range(OLDEST[1], NEWEST[1] + 1):
        for directory in ("/usr/bin", "/usr/local/bin"):
            candidates.add(f"{directory}/python3.{minor}")
        candidates.add(shutil.which(f"python3.{minor}"))
    candidates = sorted(c for c in candidates if c and re.fullmatch(r"python3?(\.\d+)?", os.path.basename(c))
                        and os.access(c, os.X_OK))
    found: dict[str, Interpreter] = {}
    passed_over = []
    for candidate in candidates:
        probe = run([candidate, "-c", _PROBE], timeout=30)
        if probe.returncode != 0:
            # A pyenv shim for a version pyenv has not selected: the version
            # itself is found under pyenv's versions/ directly.
            passed_over.append(f"{candidate} (does not run: {(probe.stderr.strip().splitlines() or ['?'])[0]})")
            continue
        implementation, major, minor, free_threaded, executable = probe.stdout.split(maxsplit=4)
        version = (int(major), int(minor))
        if implementation != "CPython" or not OLDEST <= version <= NEWEST:
            passed_over.append(f"{candidate} ({implementation} {major}.{minor})")
        elif free_threaded == "1":
            # The free-threaded build has no stable ABI: pip rightly refuses abi3 wheels there.
            passed_over.append(f"{candidate} (free-threaded {major}.{minor})")
        else:
            found.setdefault(executable.strip(), Interpreter(executable.strip(), version))
    return sorted(found.values(), key=lambda i: (i.version, i.executable)), passed_over


_TRACE = textwrap.dedent("""
    import importlib.metadata, os, shutil, subprocess, sys, time
    import runtimeguard

    assert "site-packages" in runtimeguard.__file__, runtimeguard.__file__
    assert not any(shutil.which(tool) for tool in ("clang", "bpftool", "cc", "gcc")), os.environ["PATH"]
    assert runtimeguard.__version__ == importlib.metadata.version("runtimeguard")
    assert os.path.isfile(os.path.join(os.path.dirname(runtimeguard.__file__), "py.typed"))
    marker = sys.argv[1]
    with runtimeguard.Tracer(events=["process_exec"]) as tracer:
        subprocess.run(["/bin/true", marker], check=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if any(event.data.argv == ["/bin/true", marker] for event in tracer.poll(0.2)):
                print("traced /bin/true", marker)
                sys.exit(0)
    sys.exit(f"no process_exec event for /bin/true {marker} within 10s")
""")


def install_and_trace(interpreter: Interpreter, wheel_path: str, workdir: str) -> str | None:
    """What went wrong installing the wheel into a fresh virtualenv of this
    interpreter and tracing an exec there, or None."""
    venv = os.path.join(workdir, f"venv-{interpreter.version[0]}.{interpreter.version[1]}-{uuid.uuid4().hex[:8]}")
    home = venv + "-home"
    os.makedirs(home)
    python = os.path.join(venv, "bin", "python")
    marker = f"rg-wheel-{uuid.uuid4().hex}"
    steps = [
        ([interpreter.executable, "-m", "venv", venv], 120, {}),
        # pip's own cache (the caller's HOME) is shared by all the venvs.
        ([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", wheel_path], 300, {}),
        # A search path holding nothing but the venv: no compiler, no bpftool.
        ([python, "-c", _TRACE, marker], 60, {"env": {"PATH": os.path.dirname(python), "HOME": home}, "cwd": home}),
    ]
    for argv, timeout, kwargs in steps:
        try:
            done = run(argv, timeout, **kwargs)
        except AssertionError as e:
            return str(e)
        if done.returncode != 0:
            return f"{' '.join(argv[:3])} exited {done.returncode}\n{done.stdout}{done.stderr}"
    return None


@pytest.mark.root
def test_wheel_installs_and_traces_in_every_cpython(wheel, workdir, capsys):
    interpreters, passed_over = cpythons()
    assert interpreters, "no CPython 3.9 to 3.13 found, not even the one running the tests"
    (wheel_path,) = glob.glob(os.path.join(wheel, "runtimeguard-*.whl"))
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(interpreters)) as pool:
        outcomes = list(pool.map(lambda i: install_and_trace(i, wheel_path, workdir), interpreters))
    with capsys.disabled():
        print(f"\ntest_wheel: tried CPython {', '.join(i.label for i in interpreters)}"
              + (f"; passed over {', '.join(passed_over)}" if passed_over else ""))
    failures = [f"{i.label}: {problem}" for i, problem in zip(interpreters, outcomes) if problem]
    assert not failures, "\n\n".join(failures)


_CONSUMER = textwrap.dedent("""
    import runtimeguard

    events = runtimeguard.Tracer(events=["process_exec"]).poll(0)
    reveal_type(events)
    reveal_type(events[0].name)
    reveal_type(runtimeguard.Policy.from_text("version: 1").network.default)
    pid: str = events[0].pid
""")


@pytest.mark.root  # `make wheel` installs the build tools when missing and writes the tree
def test_type_checkers_see_the_installed_packages_types(wheel, workdir):
    """PEP 561: mypy reads an installed package's annotations only where it
    ships py.typed; without it, it would see an untyped module."""
    pytest.importorskip("mypy")
    (wheel_path,) = glob.glob(os.path.join(wheel, "runtimeguard-*.whl"))
    venv = os.path.join(workdir, f"venv-typed-{uuid.uuid4().hex[:8]}")
    # The host's site-packages give runtimeguard's dependencies; the wheel
    # goes into the venv's own, away from the source tree.
    checked([sys.executable, "-m", "venv", "--system-site-packages", venv], timeout=120)
    python = os.path.join(venv, "bin", "python")
    checked([python, "-m", "pip", "install", "-q", "--no-deps", "--disable-pip-version-check", wheel_path],
            timeout=300)
    consumer = os.path.join(venv, "consumer.py")
    with open(consumer, "w") as f:
        f.write(_CONSUMER)

    def check() -> str:
        # From the venv: mypy also searches its working directory, which must
        # not be the source tree.
        done = run([sys.executable, "-m", "mypy", "--python-executable", python, "--no-incremental",
                    "--follow-imports=silent", "--cache-dir", os.path.join(venv, "mypy-cache"), consumer],
                   timeout=300, cwd=venv, env={k: v for k, v in os.environ.items() if k != "MYPYPATH"})
        return done.stdout + done.stderr

    installed = run([python, "-c", "import os, runtimeguard; print(os.path.dirname(runtimeguard.__file__))"],
                    timeout=60, cwd=venv).stdout.strip()
    assert installed.startswith(venv), installed
    typed = check()
    # mypy before 1.11 spells builtins out.
    assert re.search(r'Revealed type is "(builtins\.)?list\[runtimeguard\.schema\.Event\]"', typed), typed
    assert re.search(r'Revealed type is "(builtins\.)?str"', typed), typed
    assert "Revealed type is \"Literal['allow'] | Literal['deny']\"" in typed, typed
    assert 'Incompatible types in assignment (expression has type "int", variable has type "str")' in typed, typed

    os.remove(os.path.join(installed, "py.typed"))
    untyped = check()
    assert "missing library stubs or py.typed marker" in untyped, untyped


@pytest.mark.root  # `make wheel` installs the build tools when missing and writes the tree
def test_sdist_holds_what_a_build_needs_and_builds_the_same_wheel(wheel, workdir):
    if not os.path.exists(os.path.join(ROOT, ".git")):
        pytest.skip("the sdist's contents are checked against git's lists of files, and this is no git checkout")
    # Tracked files and new ones not yet added, but nothing git ignores (build
    # products, caches).
    sources = set(checked(["git", "-C", ROOT, "ls-files", "--cached", "--others", "--exclude-standard"],
                          timeout=30).stdout.splitlines())
    sdist_dir = os.path.join(workdir, "sdist")
    checked([sys.executable, "setup.py", "-q", "sdist", "-d", sdist_dir], timeout=120, cwd=ROOT)
    (sdist,) = glob.glob(os.path.join(sdist_dir, "runtimeguard-*.tar.gz"))
    top = f"runtimeguard-{source_version()}"
    with tarfile.open(sdist) as tar:
        members = {m.name[len(top) + 1:] for m in tar.getmembers() if m.isfile()}
        tar.extractall(sdist_dir, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))

    needed = {"Makefile", "bpf/Makefile", "vmlinux.h", "scripts/build-static-deps.sh", "pyproject.toml", "setup.py",
              "MANIFEST.in", "README.md", "runtimeguard/_build_native.py", "runtimeguard/py.typed"}
    needed |= {f for f in sources if f.startswith(("bpf/", "csrc/", "runtimeguard/"))}
    assert needed <= members, f"missing from the sdist: {sorted(needed - members)}"
    # Everything else is a source file or what setuptools writes about the sdist itself.
    generated = {f for f in members if f in ("PKG-INFO", "setup.cfg") or f.startswith("runtimeguard.egg-info/")}
    assert members - generated <= sources, f"ignored files in the sdist: {sorted(members - generated - sources)}"
    assert not [f for f in members if f.startswith(("build/", "dist/", ".ci/", "bench/"))], sorted(members)

    # Built as pip builds any sdist (an isolated environment with the declared
    # build requirements), reusing this tree's static libraries.
    out = os.path.join(workdir, "from-sdist")
    env = dict(os.environ, RUNTIMEGUARD_DEPS_DIR=os.path.join(ROOT, "build", "deps"))
    checked([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--disable-pip-version-check", "-w", out,
             os.path.join(sdist_dir, top)], timeout=600, env=env)
    (built,) = os.listdir(out)
    assert built == f"{top}-cp39-abi3-linux_{ARCH}.whl"
    (repaired,) = glob.glob(os.path.join(wheel, "runtimeguard-*.whl"))

    def files(path):
        with zipfile.ZipFile(path) as whl:
            return sorted(f for f in whl.namelist() if not f.endswith("/") and ".dist-info/" not in f)

    assert files(os.path.join(out, built)) == files(repaired)


def test_a_deps_directory_without_the_libraries_is_a_clear_build_error(tmp_path):
    env = dict(os.environ, RUNTIMEGUARD_DEPS_DIR=str(tmp_path))
    done = run([sys.executable, "runtimeguard/_build_native.py"], timeout=120, cwd=ROOT, env=env)
    assert done.returncode != 0
    assert (f"RUNTIMEGUARD_DEPS_DIR={tmp_path} lacks lib/libbpf.a, lib/libelf.a, lib/libz.a, "
            "include/bpf/libbpf.h") in done.stderr


def _import_copy(package_parent) -> subprocess.CompletedProcess:
    return run([sys.executable, "-c", "import runtimeguard; print(runtimeguard.__version__)"], timeout=60,
               cwd=package_parent, env=dict(os.environ, PYTHONPATH=str(package_parent)))


@pytest.fixture
def package_copy(tmp_path):
    """The source tree's package with its built extension, somewhere else."""
    natives = glob.glob(os.path.join(ROOT, "runtimeguard", "_native*.so"))
    assert natives, "runtimeguard/_native*.so is not built: run `make build`"
    shutil.copytree(os.path.join(ROOT, "runtimeguard"), tmp_path / "runtimeguard",
                    ignore=shutil.ignore_patterns("__pycache__"))
    done = _import_copy(tmp_path)
    assert done.returncode == 0 and done.stdout.strip() == source_version(), done.stderr
    return tmp_path


def test_an_extension_from_another_version_is_refused(package_copy):
    init = package_copy / "runtimeguard" / "__init__.py"
    version = source_version()
    text = init.read_text()
    assert text.count(f'__version__ = "{version}"') == 1
    init.write_text(text.replace(f'__version__ = "{version}"', '__version__ = "99.0.0"'))
    done = _import_copy(package_copy)
    assert done.returncode != 0
    (error,) = [line for line in done.stderr.splitlines() if line.startswith("ImportError: ")]
    assert f"runtimeguard 99.0.0 cannot use the native extension {package_copy}/runtimeguard/_native" in error
    assert f"built from runtimeguard {version}; rebuild it with `make build`" in error
    assert "or reinstall the wheel (pip install --force-reinstall runtimeguard-99.0.0-*.whl)" in error


def test_an_extension_that_records_no_version_is_refused(package_copy):
    # Stands for an extension built before the version was recorded: a module
    # named _native that offers the C API's ffi and lib but no version.
    for native in glob.glob(str(package_copy / "runtimeguard" / "_native*.so")):
        os.unlink(native)
    (package_copy / "runtimeguard" / "_native.py").write_text(
        "import types\nfrom cffi import FFI\nffi = FFI()\nlib = types.SimpleNamespace()\n")
    done = _import_copy(package_copy)
    assert done.returncode != 0
    assert "built from a runtimeguard older than the version check; rebuild it with `make build`" in done.stderr


def test_a_missing_extension_says_how_to_build_it(package_copy):
    for native in glob.glob(str(package_copy / "runtimeguard" / "_native*.so")):
        os.unlink(native)
    done = _import_copy(package_copy)
    assert done.returncode != 0
    assert "its native extension (runtimeguard/_native*.so) is not built; build it in the source tree with " \
           "`make build`, or install the wheel" in done.stderr
