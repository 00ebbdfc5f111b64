"""The wheel is self-contained: built once, installed into a fresh virtualenv,
it imports and traces with no clang, bpftool, libbpf, libelf or zlib around."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import textwrap

import pytest

from conftest import ROOT


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    work = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(work / "dist"), ROOT], check=True, timeout=600)
    (wheel,) = glob.glob(str(work / "dist" / "runtimeguard-*.whl"))
    subprocess.run([sys.executable, "-m", "venv", str(work / "venv")], check=True, timeout=120)
    pip = str(work / "venv" / "bin" / "pip")
    subprocess.run([pip, "install", "-q", "--disable-pip-version-check", wheel], check=True, timeout=300)
    return work


def test_extension_links_no_libbpf_libelf_or_zlib(venv):
    (native,) = glob.glob(str(venv / "venv" / "lib" / "python*" / "site-packages" / "runtimeguard" / "_native*.so"))
    linked = subprocess.run(["ldd", native], capture_output=True, text=True, check=True).stdout
    for lib in ("libbpf", "libelf", "libz", "libzstd"):
        assert lib not in linked, linked


@pytest.mark.root
def test_installed_wheel_traces_without_build_tools(venv, tmp_path):
    code = textwrap.dedent("""
        import shutil, subprocess, runtimeguard
        assert not any(shutil.which(tool) for tool in ("clang", "bpftool", "cc", "gcc"))
        assert "site-packages" in runtimeguard.__file__
        with runtimeguard.Tracer(events=["process_exec"]) as t:
            subprocess.run(["/bin/echo", "from-the-wheel"], capture_output=True)
            for _ in range(20):
                if any(e.data.argv == ["/bin/echo", "from-the-wheel"] for e in t.poll(0.2)):
                    print("seen")
                    break
    """)
    # A search path holding nothing but the venv: no compiler, no bpftool.
    env = {"PATH": str(venv / "venv" / "bin"), "HOME": str(tmp_path)}
    out = subprocess.run([str(venv / "venv" / "bin" / "python"), "-c", code], capture_output=True, text=True,
                         cwd=tmp_path, env=env, timeout=60)
    assert out.stdout.strip() == "seen", out.stderr
