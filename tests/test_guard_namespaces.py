"""The namespaces section: no guarded process makes or joins a namespace, or
mounts, unless the policy allows it. Driven for real: unshare, clone and
clone3 (a C program), setns into a namespace the test made, and mount, as
root and as nobody, in enforce mode (killed at syscall entry; a clone leaves
no child) and audit mode (it happens and is reported)."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from helpers import compiled
from runtimeguard.guard import guard
from runtimeguard.policy import Policy, PolicyError

pytestmark = pytest.mark.root


def policy(mode="enforce", **namespaces) -> Policy:
    return Policy.from_dict({"version": 1, "name": "ns", "mode": mode, **({"namespaces": namespaces}
                                                                          if namespaces else {})})


def denied(events):
    return [(e.data.operation, e.data.namespaces, e.action, e.policy.rule) for e in events
            if e.name == "namespace_denied"]


@pytest.fixture(scope="module")
def ns_clone(tmp_path_factory):
    return compiled(tmp_path_factory.mktemp("ns"), "ns_clone.c")


@pytest.mark.parametrize("user", [None, "nobody"])
def test_unshare_is_killed_before_the_namespace_is_used(tmp_path, user):
    marker = tmp_path / "ran"
    tmp_path.chmod(0o777)
    result = guard(policy(), ["unshare", "-Urm", "sh", "-c", f"touch {marker}"], user=user)
    assert result.exit_status == 128 + 9 and not marker.exists()
    assert denied(result.events) == [("unshare", ("mnt", "user"), "killed", "namespaces.deny")]
    (ev,) = result.events
    assert ev.target_context.formatted == "unshare (mnt, user)" and ev.data.blocked


def test_unshare_in_audit_mode_happens_and_is_reported(tmp_path):
    marker = tmp_path / "ran"
    result = guard(policy("audit"), ["unshare", "-Ur", "sh", "-c", f"touch {marker}"])
    assert result.exit_status == 0 and marker.exists()
    assert denied(result.events) == [("unshare", ("user",), "would_block", "namespaces.deny")]


@pytest.mark.parametrize("call", ["clone", "clone3"])
def test_a_clone_into_a_new_namespace_leaves_no_child(tmp_path, ns_clone, call):
    marker = tmp_path / "child-ran"
    result = guard(policy(), [ns_clone, call, str(marker)])
    assert result.exit_status == 128 + 9
    time.sleep(0.1)
    assert not marker.exists(), "the child ran"
    assert denied(result.events) == [(call, ("user",), "killed", "namespaces.deny")]


@pytest.mark.parametrize("call", ["clone", "clone3"])
def test_a_clone_into_a_new_namespace_in_audit_mode(tmp_path, ns_clone, call):
    marker = tmp_path / "child-ran"
    result = guard(policy("audit"), [ns_clone, call, str(marker)])
    assert result.exit_status == 0 and marker.exists()
    assert denied(result.events) == [(call, ("user",), "would_block", "namespaces.deny")]


@pytest.fixture
def other_network_namespace():
    """A process of the test's in a network namespace of its own."""
    holder = subprocess.Popen(["unshare", "-n", "sleep", "30"])
    deadline = time.monotonic() + 5
    while os.readlink(f"/proc/{holder.pid}/ns/net") == os.readlink("/proc/self/ns/net"):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    yield holder.pid
    holder.kill()
    holder.wait()


@pytest.mark.parametrize("mode,status,action", [("enforce", 128 + 9, "killed"), ("audit", 0, "would_block")])
def test_joining_a_namespace(other_network_namespace, mode, status, action):
    result = guard(policy(mode), ["nsenter", "-t", str(other_network_namespace), "-n", "true"])
    assert result.exit_status == status
    assert denied(result.events) == [("setns", ("net",), action, "namespaces.deny")]


def test_a_mount_is_killed_and_what_it_left_is_said(tmp_path):
    """The kill comes at syscall entry and mount(2) does not check for it: the
    mount of a root workload in the guard's mount namespace is made before the
    process dies (README). An unprivileged workload has no mount to make
    without a namespace of its own, which it cannot get (above)."""
    target = tmp_path / "mnt"
    target.mkdir()
    try:
        result = guard(policy(), ["mount", "-t", "tmpfs", "none", str(target)])
        assert result.exit_status == 128 + 9
        assert denied(result.events) == [("mount", (), "killed", "namespaces.deny")]
        assert result.events[0].target_context.formatted == "mount"
    finally:
        while os.path.ismount(target):
            subprocess.run(["umount", str(target)], check=True)


def test_allowed_kinds_and_mounts_pass_unjudged(tmp_path):
    target = tmp_path / "mnt"
    target.mkdir()
    script = f"unshare -n true && unshare -m sh -c 'mount -t tmpfs none {target}' && echo ok"
    result = guard(policy(allow=["net", "mnt", "mount"]), ["sh", "-c", script])
    assert result.exit_status == 0 and result.events == []
    result = guard(policy(allow=["net"]), ["sh", "-c", "unshare -n true && unshare -U true"])
    assert result.exit_status == 128 + 9  # sh exits with the killed unshare's status
    assert denied(result.events) == [("unshare", ("user",), "killed", "namespaces.deny")]


def test_deny_false_judges_nothing():
    result = guard(policy(deny=False), ["unshare", "-Urm", "true"])
    assert result.exit_status == 0 and result.events == []


def test_exceptions_to_an_absent_deny_are_a_clear_error():
    with pytest.raises(PolicyError, match=r"namespaces.allow: exceptions to a deny that is off"):
        policy(deny=False, allow=["net"])


@pytest.mark.parametrize("scope,deny,judged", [
    ({"type": "command"}, None, True), ({"type": "cgroup", "cgroup": "x"}, None, True),
    ({"type": "host"}, None, False), ({"type": "host"}, True, True), ({"type": "command"}, False, False),
])
def test_on_by_default_except_for_the_whole_host(scope, deny, judged):
    """A host's own services (init, container runtimes) mount and make
    namespaces all the time: the whole-host scope judges them only when the
    policy says so."""
    section = {} if deny is None else {"deny": deny}
    p = Policy.from_dict({"version": 1, "scope": scope, "namespaces": section})
    assert p.namespaces_denied() is judged


def test_exceptions_for_the_whole_host_need_the_deny_said():
    with pytest.raises(PolicyError, match=r"namespaces.allow: exceptions to a deny that is off for the whole host"):
        Policy.from_dict({"version": 1, "scope": {"type": "host"}, "namespaces": {"allow": ["net"]}})
