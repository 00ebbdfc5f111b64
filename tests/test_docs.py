"""The README says what the code does: its table of limits against the
record layout the kernel fills (bpf/events.h, through cffi)."""

from __future__ import annotations

import os
import re

from runtimeguard._native import lib

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def limits_table() -> dict[str, str]:
    with open(README) as f:
        text = f.read()
    section = text[text.index("### Limits"):]
    section = section[: section.index("\n### ", 1)]
    rows = [line.split("|")[1:-1] for line in section.splitlines() if line.startswith("| ") and "---" not in line]
    return {cells[0].strip(): cells[1].strip() for cells in rows[1:]}


def test_the_readme_limits_are_the_records():
    limits = limits_table()
    # Each string field keeps its size less the NUL.
    assert limits["a path as passed (`file_open`)"] == f"{lib.RG_PATH_LEN - 1} bytes"
    assert limits["an executable as passed (`process_exec`)"] == f"{lib.RG_PATH_LEN - 1} bytes"
    assert re.match(rf"{lib.RG_ARGS_LEN} bytes in all", limits["the arguments of an exec"])
    assert limits["the arguments of a failed exec"] == (
        f"{lib.RG_MAX_ARGS} arguments of at most {lib.RG_ARG_CHUNK - 1} bytes each")
    assert limits["a name (`comm`)"] == f"{lib.RG_COMM_LEN - 1} bytes"
    assert limits["a resolved path (`resolved_path`, `resolved_executable`, `cwd`)"].startswith(
        f"its last {lib.RG_PATH_LEN - 1} bytes, and at most {lib.RG_PATH_DEPTH} names and mounts deep")
    assert limits["a terminal's name (`tty`)"] == f"{lib.RG_TTY_LEN - 1} bytes"


def layout_block() -> str:
    with open(README) as f:
        text = f.read()
    section = text[text.index("## Layout"):]
    return section[section.index("```\n") + 4: section.index("\n```", section.index("```\n") + 4)]


def test_the_readme_layout_names_every_module():
    """A file added to bpf/, csrc/ or runtimeguard/ without a line in the
    README's layout fails here, so the layout cannot drift from the tree."""
    root = os.path.dirname(README)
    named = set(re.findall(r"[\w.-]+", layout_block()))
    missing = []
    for top in ("bpf", "csrc", "runtimeguard"):
        for folder, dirs, files in os.walk(os.path.join(root, top)):
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            missing += [os.path.relpath(os.path.join(folder, name), root) for name in files
                        if name not in named and not name.endswith((".so", ".pyc"))]
    assert not missing, f"README's layout does not name: {', '.join(sorted(missing))}"
