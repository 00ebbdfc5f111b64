"""Watched files: file_open reported, in the kernel, only for opens that
reach a watched file or a file directly in a watched directory, by inode
(whatever the name used), not the host's whole firehose."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import textwrap

import pytest

from runtimeguard import Tracer
from helpers import drain
from test_event_model import cgroup, run_in  # noqa: F401,F811 (a fixture, and the way into it)

pytestmark = pytest.mark.root


@pytest.fixture
def tree():
    root = os.path.realpath(tempfile.mkdtemp(prefix="rg-test-"))
    for path in ("secret", "neighbour", "keys/id_test", "keys/deeper/id_nested", "elsewhere/x"):
        os.makedirs(os.path.dirname(os.path.join(root, path)), exist_ok=True)
        with open(os.path.join(root, path), "w") as f:
            f.write("x\n")
    yield root
    shutil.rmtree(root)


OPENS = textwrap.dedent("""
    import os, sys
    root = sys.argv[1]
    for path in ("secret", "neighbour", "keys/id_test", "keys/deeper/id_nested", "elsewhere/x"):
        open(os.path.join(root, path)).close()
    # Made after the tracer started, in the watched directory.
    with open(os.path.join(root, "keys", "id_new"), "w") as f:
        f.write("new")
    # The watched file by another name: a hard link, a relative open.
    os.link(os.path.join(root, "secret"), os.path.join(root, "elsewhere", "alias"))
    open(os.path.join(root, "elsewhere", "alias")).close()
    os.chdir(root)
    open("secret").close()
    # A failed open of a watched directory's file reaches no file.
    try:
        open(os.path.join(root, "keys", "missing"))
    except FileNotFoundError:
        pass
""")


def test_only_opens_of_watched_files_are_reported(cgroup, tree):
    with Tracer(events=["file_open"], cgroups=[cgroup],
                watch_files=[os.path.join(tree, "secret"), os.path.join(tree, "keys")]) as t:
        out = run_in(cgroup, [sys.executable, "-c", OPENS, tree], text=True)
        assert out.returncode == 0, out.stderr
        events = drain(t)
    seen = [(ev.data.path, ev.data.resolved_path) for ev in events]
    secret = os.path.join(tree, "secret")
    assert sorted(resolved for _, resolved in seen) == sorted([
        secret,                                   # by its name
        os.path.join(tree, "keys", "id_test"),    # in the watched directory
        os.path.join(tree, "keys", "id_new"),     # made there since
        os.path.join(tree, "elsewhere", "alias"),  # the same inode, another name
        secret,                                   # relative
    ])
    assert ("secret", secret) in seen
    st = os.stat(secret)
    assert all((ev.data.device, ev.data.inode) == (st.st_dev, st.st_ino) for ev in events
               if ev.data.resolved_path in (secret, os.path.join(tree, "elsewhere", "alias")))


def test_watching_without_file_open_or_a_missing_path_is_refused(tree):
    with pytest.raises(ValueError, match="add \"file_open\" to events"):
        Tracer(events=["process_exec"], watch_files=[tree])
    t = Tracer(events=["file_open"], watch_files=[os.path.join(tree, "not-there")])
    with pytest.raises(ValueError, match="watch_files: .*not-there: No such file or directory"):
        t.start()
    t.close()
