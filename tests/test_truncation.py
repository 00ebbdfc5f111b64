"""Truncation flags at their exact boundaries, from real processes.

A record holds a path or an executable in 256 bytes (255 and the NUL), argv
in 512 bytes, and a failed exec's arguments in chunks of 128 bytes (127 and
the NUL). A string that fits exactly is whole; one byte more and it is cut.
Every expectation below is written from the lengths passed, never from the
product's own code.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys

import pytest

from runtimeguard import Tracer
from runtimeguard.cli import details
from helpers import wait_for

pytestmark = pytest.mark.root

# Room in a record for a path or an executable, its NUL included.
PATH_ROOM = 256


def path_of_length(root, length: int) -> str:
    """An absolute path of exactly `length` bytes under root: directories of
    100-byte names, then one last component making up the rest. The
    directories are created; the last component is not."""
    path = str(root)
    assert len(path) + 20 < length, "tmp_path too long for this length"
    while length - len(path) > 120:
        path += "/" + "d" * 100
    os.makedirs(path, exist_ok=True)
    path += "/" + "f" * (length - len(path) - 1)
    assert len(path.encode()) == length
    return path


def cut(text: str, room: int) -> str:
    """What fits in `room` bytes with its NUL."""
    return text[: room - 1]


# Path length -> whether the record must say it was cut.
PATH_CASES = {254: False, 255: False, 256: True, 300: True}


def test_open_path_is_truncated_only_past_255_bytes(tmp_path):
    paths = {n: path_of_length(tmp_path / str(n), n) for n in PATH_CASES}
    for p in paths.values():
        open(p, "w").close()
    with Tracer(events=["file_open"]) as t:
        subprocess.run([sys.executable, "-c", "import os, sys\nfor p in sys.argv[1:]:\n"
                        "    os.close(os.open(p, os.O_RDONLY))", *paths.values()], check=True)
        got = {}
        for n, p in paths.items():
            ev = wait_for(t, lambda e: e.name == "file_open" and e.data.path == cut(p, PATH_ROOM))
            got[n] = (len(ev.data.path), ev.data.path_truncated, ev.data.result >= 0)
            # Where it was cut, the target's text and the command line say so.
            shown = ev.target_context.formatted.split(" (inode ")[0]
            got[n] += (shown.endswith("[\u2026]"), "[\u2026] (inode" in details(ev))
    assert got == {254: (254, False, True, False, False), 255: (255, False, True, False, False),
                   256: (255, True, True, True, True), 300: (255, True, True, True, True)}


def test_exec_filename_is_truncated_only_past_255_bytes(tmp_path):
    programs = {}
    for n in PATH_CASES:
        programs[n] = path_of_length(tmp_path / str(n), n)
        os.symlink("/bin/true", programs[n])
    with Tracer(events=["process_exec"]) as t:
        got = {}
        for n, p in programs.items():
            subprocess.run([p], check=True)
            ev = wait_for(t, lambda e: e.name == "process_exec" and e.data.executable == cut(p, PATH_ROOM))
            got[n] = (len(ev.data.executable), ev.data.executable_truncated, ev.data.return_code)
    assert got == {254: (254, False, 0), 255: (255, False, 0), 256: (255, True, 0), 300: (255, True, 0)}


def test_failed_exec_filename_is_truncated_only_past_255_bytes(tmp_path):
    # The last component is never made: each exec fails with ENOENT, and its
    # filename is read from the caller's memory, not from the kernel's copy.
    missing = {n: path_of_length(tmp_path / str(n), n) for n in PATH_CASES}
    with Tracer(events=["process_exec"]) as t:
        got = {}
        for n, p in missing.items():
            with pytest.raises(FileNotFoundError):
                subprocess.run([p, "arg"])
            ev = wait_for(t, lambda e: e.name == "process_exec" and e.data.executable == cut(p, PATH_ROOM))
            got[n] = (len(ev.data.executable), ev.data.executable_truncated, ev.data.return_code,
                      ev.data.argv[1:])
    assert got == {254: (254, False, -2, ["arg"]), 255: (255, False, -2, ["arg"]),
                   256: (255, True, -2, ["arg"]), 300: (255, True, -2, ["arg"])}


def filler(length: int) -> str:
    """An argument of exactly `length` bytes, starting with a token of its own."""
    token = secrets.token_hex(4)
    return token + "x" * (length - len(token))


def test_exec_argv_is_truncated_only_past_512_bytes():
    # The kernel lays argv out as each argument and its NUL: "/bin/true\0" is 10 bytes.
    a, b, c, d, e = filler(500), filler(501), filler(502), filler(501), filler(589)
    cases = {
        "511 bytes": ["/bin/true", a],
        "512 bytes": ["/bin/true", b],
        "513 bytes, the last NUL past the end": ["/bin/true", c],
        "513 bytes, an empty argument past the end": ["/bin/true", d, ""],
        "600 bytes": ["/bin/true", e],
    }
    for label, argv in cases.items():
        assert sum(len(x) + 1 for x in argv) == int(label.split()[0])
    with Tracer(events=["process_exec"]) as t:
        got = {}
        for label, argv in cases.items():
            subprocess.run(argv, check=True)
            ev = wait_for(t, lambda e: e.name == "process_exec" and e.data.argv[:1] == ["/bin/true"]
                          and e.data.argv[1:2] and e.data.argv[1][:8] == argv[1][:8])
            got[label] = (ev.data.argv, ev.data.argv_truncated, ev.workload.process.argv_truncated)
            # The command line marks argv that was cut, and only that.
            assert details(ev).endswith("[\u2026]") == ev.data.argv_truncated, label
    assert got == {
        "511 bytes": (["/bin/true", a], False, False),
        "512 bytes": (["/bin/true", b], False, False),
        # Every character came, the end did not.
        "513 bytes, the last NUL past the end": (["/bin/true", c], True, True),
        # What came ends cleanly: only the kernel's count says an argument is missing.
        "513 bytes, an empty argument past the end": (["/bin/true", d], True, True),
        "600 bytes": (["/bin/true", e[:502]], True, True),
    }


def test_failed_exec_argument_is_cut_only_past_127_bytes(tmp_path):
    # A failed exec's arguments are read 128 bytes each, the NUL included.
    with Tracer(events=["process_exec"]) as t:
        got = {}
        for n in (126, 127, 128, 200):
            missing = str(tmp_path / f"missing-{n}" / "tool")
            arg = secrets.token_hex(4) + "a" * (n - 8)
            assert len(arg) == n
            with pytest.raises(FileNotFoundError):
                subprocess.run([missing, arg, "next"])
            ev = wait_for(t, lambda e: e.name == "process_exec" and e.data.executable == missing)
            got[n] = ([len(a) for a in ev.data.argv[1:]], ev.data.argv[1] == arg[:127], ev.data.argv_truncated)
    # A cut argument keeps its first 127 bytes; the ones after it still come.
    assert got == {126: ([126, 4], True, False), 127: ([127, 4], True, False),
                   128: ([127, 4], True, True), 200: ([127, 4], True, True)}


def test_failed_exec_reports_at_most_32_arguments_and_says_so(tmp_path):
    with Tracer(events=["process_exec"]) as t:
        got = {}
        for argc in (32, 33):
            missing = str(tmp_path / f"missing-{argc}" / "tool")
            argv = [missing] + [f"a{i}" for i in range(1, argc)]
            with pytest.raises(FileNotFoundError):
                subprocess.run(argv)
            ev = wait_for(t, lambda e: e.name == "process_exec" and e.data.executable == missing)
            got[argc] = (len(ev.data.argv), ev.data.argv == argv[:32], ev.data.argv_truncated)
    assert got == {32: (32, True, False), 33: (32, True, True)}
