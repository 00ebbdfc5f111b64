"""Changes to protected files by path, reported by fanotify inode marks
(runtimeguard.mutations), with the pid that made them and the key the file
was watched under."""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest

from runtimeguard.mutations import MutationWatch

pytestmark = pytest.mark.root


def open_descriptors() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def changed_by_child(watch: MutationWatch, code: str) -> tuple[int, set[tuple[int, str, object]]]:
    """Runs code in a child and returns its pid and what the watch read."""
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid()); " + code],
                           capture_output=True, text=True, check=True)
    return int(child.stdout), {(m.pid, m.operation, m.key) for m in watch.read()}


def test_changes_to_a_file_and_to_a_directory_entry_name_the_changer_and_the_key(tmp_path):
    token = tmp_path / "token"
    token.write_text("x")
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "id_test").write_text("x")
    watch = MutationWatch([(str(token), "token"), (str(keys), "keys")])
    try:
        assert watch.read() == []
        pid, found = changed_by_child(watch, f"open({str(token)!r}, 'a').write('y'); os.chmod({str(token)!r}, 0)")
        assert found == {(pid, "modify", "token"), (pid, "attributes", "token")}
        pid, found = changed_by_child(watch, f"os.rename({str(keys / 'id_test')!r}, {str(keys / 'moved')!r}); "
                                             f"open({str(keys / 'new')!r}, 'w').close()")
        assert found == {(pid, "move", "keys"), (pid, "create", "keys")}
        pid, found = changed_by_child(watch, f"os.unlink({str(token)!r})")
        assert (pid, "delete", "token") in found
    finally:
        watch.close()
    assert watch.fd == -1


def test_a_missing_path_is_an_error_naming_it_and_leaves_no_descriptor(tmp_path):
    before = open_descriptors()
    missing = tmp_path / "missing"
    with pytest.raises(FileNotFoundError, match=rf"fanotify_mark\({missing}\): No such file or directory") as got:
        MutationWatch([(str(tmp_path), "dir"), (str(missing), "missing")])
    assert got.value.errno == errno.ENOENT
    assert open_descriptors() == before


def test_a_file_without_file_handles_is_an_error_naming_it(tmp_path):
    before = open_descriptors()
    # procfs gives no file handles: fanotify could mark the file but never say which it was.
    with pytest.raises(OSError, match=r"name_to_handle_at\(/proc/version\): Operation not supported") as got:
        MutationWatch([("/proc/version", "version")])
    assert got.value.errno == errno.EOPNOTSUPP
    assert open_descriptors() == before
