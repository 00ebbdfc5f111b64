"""The trace table as the operator's terminal gets it, and the Tracer's
argument handling: pure code, no kernel needed."""

from __future__ import annotations

import io

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runtimeguard import Tracer
from runtimeguard.cli import Table, escape, fit
from runtimeguard.errors import TracerStateError
from runtimeguard.schema import EventRecord, FileOpenData, ProcessExecData

CONTROLS = {*range(0x20), *range(0x7f, 0xa0)}


def unescape(text: str) -> str:
    """The reader's way back: \\xNN, \\n, \\r, \\t and \\\\."""
    out, i = [], 0
    while i < len(text):
        if text[i] != "\\":
            out.append(text[i])
            i += 1
        elif text[i + 1] == "x":
            out.append(chr(int(text[i + 2:i + 4], 16)))
            i += 4
        else:
            out.append({"n": "\n", "r": "\r", "t": "\t", "\\": "\\"}[text[i + 1]])
            i += 2
    return "".join(out)


@given(st.text())
def test_no_control_character_reaches_the_terminal_and_nothing_is_lost(text):
    escaped = escape(text)
    assert not any(ord(c) in CONTROLS for c in escaped)
    assert unescape(escaped) == text  # lossless: two texts never look alike


@given(st.text(max_size=300), st.integers(10, 200))
def test_a_cut_line_fits(text, room):
    cut = fit(text, room)
    assert len(cut) <= room
    if len(text) <= room:
        assert cut == text


def test_the_outcome_survives_a_long_path():
    line = "/srv/" + "deep/" * 40 + "secret.key -> ENOENT"
    cut = fit(line, 60)
    assert len(cut) == 60 and cut.startswith("/srv/deep/") and cut.endswith("secret.key -> ENOENT"[-15:])
    assert cut.endswith(" -> ENOENT") and "…" in cut


def row(ev: EventRecord, width: int = 80) -> str:
    out = io.StringIO()
    table = Table(out)
    table.width = width
    table.row(ev)
    return out.getvalue()


def test_an_argv_with_terminal_escapes_is_shown_escaped():
    data = ProcessExecData(executable="/bin/echo", argv=["echo", "\x1b[2J\x1b]0;owned\x07", "a\rb"], comm="echo",
                           uid=0, euid=0, gid=0, ppid=1, parent_entity_id=0, start_time=0, return_code=0)
    line = row(EventRecord(timestamp=0, id=1, name="process_exec", data=data, pid=7), width=200)
    assert not any(ord(c) in CONTROLS for c in line.rstrip("\n"))
    assert "\\x1b[2J\\x1b]0;owned\\x07 a\\rb" in line


def test_a_fileless_exec_says_so():
    data = ProcessExecData(executable="/dev/fd/3", argv=["x"], comm="3", uid=0, euid=0, gid=0, ppid=1,
                           parent_entity_id=0, start_time=0, return_code=0, resolved_executable="/memfd:evil",
                           fileless=True)
    line = row(EventRecord(timestamp=0, id=1, name="process_exec", data=data, pid=7), width=200)
    assert "x [fileless: /memfd:evil]" in line


def test_a_failed_open_keeps_its_outcome_at_80_columns():
    data = FileOpenData(path="/srv/" + "x" * 200, flags=0, mode=0, result=-2, device=0, inode=0, syscall="openat")
    line = row(EventRecord(timestamp=0, id=4, name="file_open", data=data, pid=7)).rstrip("\n")
    assert len(line) <= 80 and line.endswith("-> ENOENT")


def test_events_may_be_one_name_or_include_lost():
    assert Tracer("process_exec").events == {"process_exec", "lost"}
    assert Tracer("process_exec, file_open").events == {"process_exec", "file_open", "lost"}
    assert Tracer(["lost"]).events == {"lost"}
    with pytest.raises(ValueError, match=r"unknown event\(s\) 'p'"):
        Tracer(["p"])


def test_iterating_a_closed_tracer_raises_as_poll_does():
    tracer = Tracer(["process_exec"])
    tracer.close()
    with pytest.raises(TracerStateError, match="closed"):
        iter(tracer)
    with pytest.raises(TracerStateError, match="closed"):
        tracer.poll(0)
