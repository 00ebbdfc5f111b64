"""Containers and pods (runtimeguard/containers.py): what a cgroup path
says (pure logic, property tests), what the runtimes' files add (fake
files under tmp_path, one layout per runtime), and a real process in a
real cgroup shaped like a Kubernetes pod's container, traced."""

from __future__ import annotations

import errno
import json
import os
import secrets
import sys
import tempfile
import time
import uuid

import msgspec
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from runtimeguard import Tracer, processes, schema
from runtimeguard.containers import (MAX_FILE_BYTES, MAX_VALUE_CHARS, RETRY_MISSING_S, ContainerCatalog,
                                     container_from_cgroup, parse_cgroup)
from runtimeguard.environment import cgroup2_mount
from runtimeguard.processes import ProcessTable
from runtimeguard.schema import EVENT_IDS, Container, Event, Pod, ProcessExecData
from helpers import wait_for
from test_event_model import run_in

HEX64 = st.text("0123456789abcdef", min_size=64, max_size=64)
# A UUID from the API server, or a static pod's 32-hex manifest hash.
POD_UIDS = st.uuids().map(str) | st.text("0123456789abcdef", min_size=32, max_size=32)
QOS = st.sampled_from(["guaranteed", "burstable", "besteffort"])
# Where processes sit below the container's own cgroup.
SUFFIXES = st.sampled_from(["", "/init.scope", "/container", "/app/worker", "/system.slice/cron.service"])


def kubepods_systemd(qos: str, uid: str, prefix: str = "") -> str:
    """kubelet's pod slice under the systemd driver (prefix: a kind node's
    "kubelet-" nesting)."""
    top = f"{prefix}kubepods"
    uid = uid.replace("-", "_")
    if qos == "guaranteed":
        return f"/{top}.slice/{top}-pod{uid}.slice"
    return f"/{top}.slice/{top}-{qos}.slice/{top}-{qos}-pod{uid}.slice"


def kubepods_cgroupfs(qos: str, uid: str) -> str:
    return f"/kubepods/pod{uid}" if qos == "guaranteed" else f"/kubepods/{qos}/pod{uid}"


# ---------------------------------------------------------------- the path alone

@st.composite
def runtime_paths(draw):
    """(path, id, runtime, pod uid, QoS class, user) for each shape a runtime gives a container."""
    cid, uid, qos = draw(HEX64), draw(POD_UIDS), draw(QOS)
    user = draw(st.integers(1000, 2**31))
    shape = draw(st.sampled_from([
        "docker-systemd", "docker-cgroupfs", "containerd-systemd", "containerd-colon", "crio-systemd",
        "crio-no-scope", "podman", "podman-container", "podman-rootless", "podman-split", "podman-split-rootless",
        "podman-cgroupfs", "actions", "kubepods-cgroupfs",
        "cri-dockerd", "kind-node"]))
    pod = (uid, qos)
    rootless = None
    if shape == "docker-systemd":
        path, runtime, pod = f"/system.slice/docker-{cid}.scope", "docker", None
    elif shape == "docker-cgroupfs":
        path, runtime, pod = f"/docker/{cid}", "docker", None
    elif shape == "containerd-systemd":
        path, runtime = f"{kubepods_systemd(qos, uid)}/cri-containerd-{cid}.scope", "containerd"
    elif shape == "containerd-colon":
        path, runtime = f"{kubepods_systemd(qos, uid)}:cri-containerd:{cid}", "containerd"
    elif shape == "crio-systemd":
        path, runtime = f"{kubepods_systemd(qos, uid)}/crio-{cid}.scope", "cri-o"
    elif shape == "crio-no-scope":
        path, runtime = f"{kubepods_systemd(qos, uid)}/crio-{cid}", "cri-o"
    elif shape == "podman":
        path, runtime, pod = f"/machine.slice/libpod-{cid}.scope", "podman", None
    elif shape == "podman-container":
        path, runtime, pod = f"/machine.slice/libpod-{cid}.scope/container", "podman", None
    elif shape == "podman-rootless":
        path = f"/user.slice/user-{user}.slice/user@{user}.service/user.slice/libpod-{cid}.scope/container"
        runtime, pod, rootless = "podman", None, user
    elif shape == "podman-split":
        path, runtime, pod = f"/system.slice/web.service/libpod-payload-{cid}", "podman", None
    elif shape == "podman-split-rootless":
        path = f"/user.slice/user-{user}.slice/user@{user}.service/app.slice/web.service/libpod-payload-{cid}"
        runtime, pod, rootless = "podman", None, user
    elif shape == "podman-cgroupfs":
        path, runtime, pod = f"/libpod_parent/libpod-{cid}", "podman", None
    elif shape == "actions":
        path, runtime, pod = f"/actions_job/{cid}", "github-actions", None
    elif shape == "kubepods-cgroupfs":
        path, runtime = f"{kubepods_cgroupfs(qos, uid)}/{cid}", "kubernetes"
    elif shape == "cri-dockerd":
        path, runtime = f"{kubepods_systemd(qos, uid)}/docker-{cid}.scope", "docker"
    else:
        # A kind node is a docker container; its pods' containers nest inside.
        node = draw(HEX64)
        path = (f"/system.slice/docker-{node}.scope/kubelet.slice{kubepods_systemd(qos, uid, 'kubelet-')}"
                f"/cri-containerd-{cid}.scope")
        runtime = "containerd"
    return path + draw(SUFFIXES), cid, runtime, pod, rootless


@settings(max_examples=400)
@given(case=runtime_paths())
@example(case=(f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{'1' * 8}_{'2' * 4}_{'3' * 4}_"
               f"{'4' * 4}_{'5' * 12}.slice/cri-containerd-{'a' * 64}.scope", "a" * 64, "containerd",
               (f"{'1' * 8}-{'2' * 4}-{'3' * 4}-{'4' * 4}-{'5' * 12}", "besteffort"), None))
def test_every_runtime_shape_parses_back_to_its_id_and_runtime(case):
    path, cid, runtime, pod, user = case
    facts = parse_cgroup(path)
    assert facts is not None, path
    assert (facts.container_id, facts.runtime) == (cid, runtime), path
    assert (facts.pod_uid, facts.qos_class) == (pod or (None, None)), path
    assert facts.user == user
    assert container_from_cgroup(path) == Container(id=cid, runtime=runtime)


@given(uid=st.uuids().map(str), qos=QOS, cid=HEX64)
def test_a_pod_uid_reads_back_with_dashes_from_either_driver(uid, qos, cid):
    systemd = parse_cgroup(f"{kubepods_systemd(qos, uid)}/cri-containerd-{cid}.scope")
    cgroupfs = parse_cgroup(f"{kubepods_cgroupfs(qos, uid)}/{cid}")
    assert "_" in kubepods_systemd(qos, uid)  # the systemd driver really wrote underscores
    assert systemd.pod_uid == cgroupfs.pod_uid == uid
    assert systemd.qos_class == cgroupfs.qos_class == qos


@given(uid=POD_UIDS, qos=QOS)
def test_a_pod_cgroup_alone_is_a_pod_and_no_container(uid, qos):
    for path in (kubepods_systemd(qos, uid), kubepods_cgroupfs(qos, uid)):
        facts = parse_cgroup(path)
        assert facts is not None and facts.container_id is None, path
        assert (facts.pod_uid, facts.qos_class) == (uid, qos)
        assert container_from_cgroup(path) is None


WORDS = st.text("abcdefghijklmnopqrstuvwxyz0123456789.-_@:", min_size=1, max_size=30).filter(
    lambda w: w not in ("docker", "actions_job", "kubepods"))


@st.composite
def decoy_segments(draw):
    """A path segment, or two, that is no container: words, and ids in shapes
    no runtime uses (conmon's scopes, the wrong length or case, a bare id
    under a parent that does not say whose it is)."""
    cid = draw(HEX64)
    kind = draw(st.sampled_from(["word", "crio-conmon", "libpod-conmon", "bare-id", "short", "long", "upper",
                                 "no-prefix-scope", "docker-no-scope"]))
    if kind == "word":
        return [draw(WORDS)]
    if kind == "crio-conmon":
        return [f"crio-conmon-{cid}" + draw(st.sampled_from(["", ".scope"]))]
    if kind == "libpod-conmon":
        return [f"libpod-conmon-{cid}.scope"]
    if kind == "bare-id":
        return [draw(WORDS), cid]
    if kind == "short":
        return [f"docker-{cid[:63]}.scope"]
    if kind == "long":
        return [f"cri-containerd-{cid}{draw(st.sampled_from('0123456789abcdef'))}.scope"]
    if kind == "upper":
        upper = cid.upper()
        return [f"crio-{upper}.scope"] if upper != cid else [draw(WORDS)]
    if kind == "no-prefix-scope":
        return [f"{cid}.scope"]
    return [f"docker-{cid}"]


@settings(max_examples=400)
@given(parts=st.lists(decoy_segments(), max_size=6))
@example(parts=[["system.slice"], ["crio-conmon-" + "ab" * 32 + ".scope"]])
@example(parts=[["machine.slice"], ["libpod-conmon-" + "cd" * 32 + ".scope"]])
@example(parts=[["system.slice"], ["containerd.service"], ["0" * 64]])
@example(parts=[["user.slice"], ["user-1000.slice"], ["session-3.scope"]])
def test_paths_of_no_container_never_yield_one(parts):
    path = "/" + "/".join(segment for part in parts for segment in part)
    facts = parse_cgroup(path)
    assert facts is None or facts.container_id is None, path
    assert container_from_cgroup(path) is None


def test_the_innermost_container_is_the_process_s():
    outer, inner = "1" * 64, "2" * 64
    assert parse_cgroup(f"/docker/{outer}/docker/{inner}").container_id == inner
    assert parse_cgroup(f"/system.slice/docker-{outer}.scope/init.scope").container_id == outer


# ---------------------------------------------------------------- the runtimes' files

CID = "3f" * 32
POD_UID = "5a7e1c2d-9b8f-4e6a-a1b2-c3d4e5f60718"


def write_json(root, relative: str, doc) -> str:
    path = os.path.join(str(root), relative)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(doc, f)
    return path


def containerd_bundle(root, cid: str = CID, namespace: str = "k8s.io", **annotations) -> str:
    return write_json(root, f"run/containerd/io.containerd.runtime.v2.task/{namespace}/{cid}/config.json",
                      {"ociVersion": "1.1.0", "process": {"args": ["/pause"]}, "annotations": annotations})


CRI_ANNOTATIONS = {
    "io.kubernetes.cri.container-type": "container",
    "io.kubernetes.cri.container-name": "web",
    "io.kubernetes.cri.image-name": "docker.io/library/nginx:1.27",
    "io.kubernetes.cri.sandbox-name": "web-7d9f8c-x2x4q",
    "io.kubernetes.cri.sandbox-namespace": "shop",
    "io.kubernetes.cri.sandbox-uid": POD_UID,
}


def test_containerd_bundle_names_container_image_and_pod(tmp_path):
    containerd_bundle(tmp_path, **CRI_ANNOTATIONS)
    got = ContainerCatalog(str(tmp_path)).describe(f"{kubepods_systemd('burstable', POD_UID)}/cri-containerd-{CID}.scope")
    assert got.container == Container(id=CID, runtime="containerd", name="web", image="docker.io/library/nginx:1.27")
    assert got.pod == Pod(name="web-7d9f8c-x2x4q", namespace="shop", uid=POD_UID, qos_class="burstable")
    assert got.retry_at is None


def test_containerd_bundle_in_any_namespace(tmp_path):
    # docker's containers, run by containerd, are in its "moby" namespace:
    # the bundle is there, without Kubernetes' annotations.
    containerd_bundle(tmp_path, namespace="moby")
    got = ContainerCatalog(str(tmp_path)).describe(f"/kubepods/burstable/pod{POD_UID}/{CID}")
    assert got.container == Container(id=CID, runtime="containerd")
    assert got.pod == Pod(uid=POD_UID, qos_class="burstable")


def docker_config(root, cid: str = CID, data_root: str = "var/lib/docker", **config) -> str:
    return write_json(root, f"{data_root}/containers/{cid}/config.v2.json",
                      {"ID": cid, "Name": "/web", "Image": "sha256:" + "9" * 64,
                       "Config": {"Image": "nginx:1.27", "Labels": {}, **config}})


def test_docker_config_names_container_and_image(tmp_path):
    docker_config(tmp_path)
    catalog = ContainerCatalog(str(tmp_path))
    for path in (f"/system.slice/docker-{CID}.scope", f"/docker/{CID}/init.scope"):
        got = catalog.describe(path)
        assert got.container == Container(id=CID, runtime="docker", name="web", image="nginx:1.27")
        assert got.pod is None


def test_docker_under_kubelet_takes_the_pod_from_its_labels(tmp_path):
    docker_config(tmp_path, Labels={"io.kubernetes.pod.name": "api-0", "io.kubernetes.pod.namespace": "prod",
                                    "io.kubernetes.pod.uid": POD_UID, "io.kubernetes.container.name": "api"})
    got = ContainerCatalog(str(tmp_path)).describe(f"{kubepods_systemd('besteffort', POD_UID)}/docker-{CID}.scope")
    assert got.container == Container(id=CID, runtime="docker", name="api", image="nginx:1.27")
    assert got.pod == Pod(name="api-0", namespace="prod", uid=POD_UID, qos_class="besteffort")


def test_docker_rootless_in_the_user_s_home(tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text("carol:x:1001:1001::/home/carol:/bin/sh\n")
    docker_config(tmp_path, data_root="home/carol/.local/share/docker", Image="redis:7")
    path = f"/user.slice/user-1001.slice/user@1001.service/user.slice/docker-{CID}.scope"
    got = ContainerCatalog(str(tmp_path)).describe(path)
    assert got.container == Container(id=CID, runtime="docker", name="web", image="redis:7")


def test_a_docker_name_keeps_all_but_its_leading_slash(tmp_path):
    write_json(tmp_path, f"var/lib/docker/containers/{CID}/config.v2.json", {"Name": "web", "Config": None})
    assert ContainerCatalog(str(tmp_path)).describe(f"/docker/{CID}").container.name == "web"
    write_json(tmp_path, f"var/lib/docker/containers/{CID}/config.v2.json", {"Name": "/"})
    assert ContainerCatalog(str(tmp_path)).describe(f"/docker/{CID}").container.name is None


def test_github_actions_job_container_is_docker_s_when_its_files_say_so(tmp_path):
    path = f"/actions_job/{CID}"
    assert ContainerCatalog(str(tmp_path)).describe(path).container == Container(id=CID, runtime="github-actions")
    docker_config(tmp_path)
    assert ContainerCatalog(str(tmp_path)).describe(path).container == Container(
        id=CID, runtime="docker", name="web", image="nginx:1.27")


CRIO_ANNOTATIONS = {
    "io.container.manager": "cri-o",
    "io.kubernetes.cri-o.ContainerName": f"k8s_db_db-0_data_{POD_UID}_0",
    "io.kubernetes.container.name": "db",
    "io.kubernetes.cri-o.ImageName": "quay.io/fedora/postgresql-16:latest",
    "io.kubernetes.pod.name": "db-0",
    "io.kubernetes.pod.namespace": "data",
    "io.kubernetes.pod.uid": POD_UID,
}


@pytest.mark.parametrize("store", ["var/lib/containers/storage", "run/containers/storage"])
def test_crio_bundle_names_container_image_and_pod(tmp_path, store):
    write_json(tmp_path, f"{store}/overlay-containers/{CID}/userdata/config.json", {"annotations": CRIO_ANNOTATIONS})
    got = ContainerCatalog(str(tmp_path)).describe(f"{kubepods_systemd('guaranteed', POD_UID)}/crio-{CID}.scope")
    assert got.container == Container(id=CID, runtime="cri-o", name="db", image="quay.io/fedora/postgresql-16:latest")
    assert got.pod == Pod(name="db-0", namespace="data", uid=POD_UID, qos_class="guaranteed")


def test_crio_long_container_name_when_the_short_one_is_missing(tmp_path):
    annotations = {k: v for k, v in CRIO_ANNOTATIONS.items() if k != "io.kubernetes.container.name"}
    write_json(tmp_path, f"var/lib/containers/storage/overlay-containers/{CID}/userdata/config.json",
               {"annotations": annotations})
    got = ContainerCatalog(str(tmp_path)).describe(f"/kubepods/pod{POD_UID}/{CID}")
    # Found in containers/storage under kubelet's cgroupfs layout: CRI-O's.
    assert got.container.runtime == "cri-o"
    assert got.container.name == f"k8s_db_db-0_data_{POD_UID}_0"


def podman_storage(root, store: str, cid: str = CID, index: str = "containers.json", name: str = "happy_turing",
                   image: str = "docker.io/library/alpine:3.20") -> None:
    write_json(root, f"{store}/overlay-containers/{cid}/userdata/config.json",
               {"ociVersion": "1.0.0", "annotations": {"io.container.manager": "libpod",
                                                       "org.opencontainers.image.stopSignal": "15"}})
    other = "7" * 64
    write_json(root, f"{store}/overlay-containers/{index}", [
        {"id": other, "names": ["someone_else"], "image": "1" * 64, "layer": "2" * 64,
         "metadata": json.dumps({"image-name": "docker.io/library/busybox:latest", "name": "someone_else"})},
        {"id": cid, "names": [name], "image": "3" * 64, "layer": "4" * 64,
         "metadata": json.dumps({"image-name": image, "image-id": "3" * 64, "name": name, "created-at": 1})},
    ])


@pytest.mark.parametrize("index", ["containers.json", "volatile-containers.json"])
def test_podman_rootful_name_and_image_from_containers_storage(tmp_path, index):
    podman_storage(tmp_path, "var/lib/containers/storage", index=index)
    got = ContainerCatalog(str(tmp_path)).describe(f"/machine.slice/libpod-{CID}.scope/container")
    assert got.container == Container(id=CID, runtime="podman", name="happy_turing",
                                      image="docker.io/library/alpine:3.20")
    assert got.pod is None


def test_podman_rootless_storage_in_the_user_s_home_from_passwd(tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n"
                                             "alice:x:1000:1000:Alice:/home/alice:/bin/bash\n")
    podman_storage(tmp_path, "home/alice/.local/share/containers/storage", name="alices_web")
    # The same id in the rootful store is someone else's container: not read.
    podman_storage(tmp_path, "var/lib/containers/storage", name="rootful")
    path = f"/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{CID}.scope/container"
    got = ContainerCatalog(str(tmp_path)).describe(path)
    assert got.container == Container(id=CID, runtime="podman", name="alices_web",
                                      image="docker.io/library/alpine:3.20")


@pytest.mark.root
def test_podman_rootless_home_found_by_owner_without_passwd(tmp_path):
    podman_storage(tmp_path, "home/bob/.local/share/containers/storage", name="bobs_db")
    os.chown(tmp_path / "home" / "bob", 4242, 4242)
    path = f"/user.slice/user-4242.slice/user@4242.service/app.slice/libpod-{CID}.scope"
    got = ContainerCatalog(str(tmp_path)).describe(path)
    assert got.container.name == "bobs_db"


def test_podman_rootless_on_this_system_through_pwd():
    # Root "/": the home comes from the password database (pwd, NSS).
    catalog = ContainerCatalog("/")
    assert catalog._home(0) == os.path.expanduser("~root").strip("/")


# ---- files that are not what they should be

def kube_containerd_path(cid: str = CID) -> str:
    return f"{kubepods_systemd('burstable', POD_UID)}/cri-containerd-{cid}.scope"


PATH_ONLY = Container(id=CID, runtime="containerd")
BUNDLE = f"run/containerd/io.containerd.runtime.v2.task/k8s.io/{CID}/config.json"


def bundle_path(root) -> str:
    path = os.path.join(str(root), BUNDLE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return path


@pytest.mark.parametrize("content", [
    b"", b"{", b"not json", b"[]", b"null", b'"annotations"', b"\xff\xfe{}", b"[" * 100_000,
    b'{"annotations": ["io.kubernetes.cri.container-name", "web"]}',
    b'{"annotations": {"io.kubernetes.cri.container-name": 7, "io.kubernetes.cri.image-name": null}}',
    b'{"annotations": {"io.kubernetes.cri.container-name": ""}}',
])
def test_a_bad_bundle_gives_what_the_path_says(tmp_path, content):
    with open(bundle_path(tmp_path), "wb") as f:
        f.write(content)
    got = ContainerCatalog(str(tmp_path)).describe(kube_containerd_path())
    assert got.container == PATH_ONLY
    assert got.pod == Pod(uid=POD_UID, qos_class="burstable")


def test_a_bundle_over_the_size_bound_is_not_read(tmp_path):
    doc = {"annotations": CRI_ANNOTATIONS, "padding": "x" * MAX_FILE_BYTES}
    with open(bundle_path(tmp_path), "w") as f:
        json.dump(doc, f)
    assert ContainerCatalog(str(tmp_path)).describe(kube_containerd_path()).container == PATH_ONLY


def test_an_overlong_value_is_dropped_not_carried(tmp_path):
    containerd_bundle(tmp_path, **{**CRI_ANNOTATIONS, "io.kubernetes.cri.image-name": "x" * (MAX_VALUE_CHARS + 1)})
    got = ContainerCatalog(str(tmp_path)).describe(kube_containerd_path())
    assert (got.container.name, got.container.image) == ("web", None)


def test_a_bundle_that_is_a_symlink_fifo_or_directory_is_not_read(tmp_path):
    real = write_json(tmp_path, "elsewhere/config.json", {"annotations": CRI_ANNOTATIONS})
    path = bundle_path(tmp_path)
    os.symlink(real, path)
    assert ContainerCatalog(str(tmp_path)).describe(kube_containerd_path()).container == PATH_ONLY
    os.unlink(path)
    os.mkfifo(path)  # opening it for reading must not wait for a writer
    assert ContainerCatalog(str(tmp_path)).describe(kube_containerd_path()).container == PATH_ONLY
    os.unlink(path)
    os.mkdir(path)
    assert ContainerCatalog(str(tmp_path)).describe(kube_containerd_path()).container == PATH_ONLY


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
                    max_leaves=20)


@settings(max_examples=150, deadline=None)
@given(annotations=JSON, raw=st.binary(max_size=200), docker=JSON)
def test_any_file_content_gives_an_answer_never_an_exception(annotations, raw, docker):
    with tempfile.TemporaryDirectory() as root:
        with open(bundle_path(root), "w") as f:
            json.dump({"annotations": annotations}, f)
        got = ContainerCatalog(root).describe(kube_containerd_path())
        assert got.container.id == CID and got.container.runtime == "containerd"
        if isinstance(annotations, dict):
            name = annotations.get("io.kubernetes.cri.container-name")
            assert got.container.name == (name if isinstance(name, str) and name else None)
        write_json(root, f"var/lib/docker/containers/{CID}/config.v2.json", docker)
        assert ContainerCatalog(root).describe(f"/docker/{CID}").container.id == CID
        with open(os.path.join(root, BUNDLE), "wb") as f:
            f.write(raw)
        assert ContainerCatalog(root).describe(kube_containerd_path()).container.id == CID


# ---- read once; missing files read again, a little later

class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_files_that_appear_a_moment_later_are_found_and_then_kept(tmp_path):
    clock = Clock()
    catalog = ContainerCatalog(str(tmp_path), clock=clock)
    first = catalog.describe(kube_containerd_path())
    assert first.container == PATH_ONLY and first.retry_at == clock.now + RETRY_MISSING_S
    containerd_bundle(tmp_path, **CRI_ANNOTATIONS)
    # Not read again before the retry time (a miss is cached too)...
    assert catalog.describe(kube_containerd_path()).container == PATH_ONLY
    clock.now += RETRY_MISSING_S
    found = catalog.describe(kube_containerd_path())
    assert found.container.name == "web" and found.retry_at is None
    # ...and once found, never read again: what the runtime wrote at creation stands.
    containerd_bundle(tmp_path, **{**CRI_ANNOTATIONS, "io.kubernetes.cri.container-name": "renamed"})
    clock.now += 100 * RETRY_MISSING_S
    assert catalog.describe(kube_containerd_path()).container.name == "web"


def test_the_cache_is_bounded(tmp_path):
    catalog = ContainerCatalog(str(tmp_path), max_containers=16)
    ids = [f"{i:064x}" for i in range(200)]
    for cid in ids:
        containerd_bundle(tmp_path, cid=cid, **CRI_ANNOTATIONS)
        assert catalog.describe(kube_containerd_path(cid)).container.name == "web"
    assert len(catalog._known) <= 16
    # A container pushed out is read again, and still found.
    assert catalog.describe(kube_containerd_path(ids[0])).container.name == "web"


# ---------------------------------------------------------------- through the process table

FIRST_PID = 5_000_000  # above PID_MAX_LIMIT: no /proc entry


def exec_event(pid: int, cgroup: int, timestamp: int) -> Event:
    return Event.make(id=EVENT_IDS["process_exec"], timestamp=timestamp, pid=pid, tid=pid, entity_id=pid * 7 + 1,
                      cgroup_id=cgroup, uid=0, euid=0, gid=0, comm="app",
                      data=ProcessExecData(executable="/app", argv=["app"], comm="app", uid=0, euid=0, gid=0, ppid=1,
                                           parent_entity_id=0, start_time=0, return_code=0))


@pytest.fixture
def table_with_paths(tmp_path):
    """A table whose cgroup ids 1 and 2 are a pod's container and a host
    service, reading runtimes' files under tmp_path/root."""
    paths = {1: kube_containerd_path(), 2: "/system.slice/cron.service"}
    root = tmp_path / "root"
    root.mkdir()
    table = ProcessTable(lambda pid, start: pid * 7 + 1, lambda: 0, str(tmp_path / "no-cgroups"), paths.get,
                         container_root=str(root))
    saved = schema._resolver
    schema.set_resolver(table)
    yield table, root
    schema.set_resolver(saved)


def test_workloads_carry_container_and_pod(table_with_paths):
    table, root = table_with_paths
    containerd_bundle(root, **CRI_ANNOTATIONS)
    table.learn([exec_event(FIRST_PID, 1, 10), exec_event(FIRST_PID + 1, 2, 10)])
    ev = exec_event(FIRST_PID, 1, 10)
    assert ev.workload.container == Container(id=CID, runtime="containerd", name="web",
                                              image="docker.io/library/nginx:1.27")
    assert ev.workload.pod == Pod(name="web-7d9f8c-x2x4q", namespace="shop", uid=POD_UID, qos_class="burstable")
    # Every event of the process version shares the one Workload, and container.
    assert exec_event(FIRST_PID, 1, 10).workload is ev.workload
    host = exec_event(FIRST_PID + 1, 2, 10).workload
    assert host.container is None and host.pod is None
    record = msgspec.json.decode(schema.json_encoder.encode(ev.record()))
    assert record["workload"]["pod"]["qos_class"] == "burstable"
    assert record["workload"]["container"]["image"] == "docker.io/library/nginx:1.27"
    assert "pod" not in msgspec.json.decode(schema.json_encoder.encode(exec_event(FIRST_PID + 1, 2, 10).record())
                                            )["workload"]


def test_a_process_started_before_its_container_s_files_gets_them_on_its_next_exec(table_with_paths):
    table, root = table_with_paths
    table.learn([exec_event(FIRST_PID + 2, 1, 10)])
    assert exec_event(FIRST_PID + 2, 1, 10).workload.container == PATH_ONLY
    containerd_bundle(root, **CRI_ANNOTATIONS)
    time.sleep(RETRY_MISSING_S + 0.1)
    table.learn([exec_event(FIRST_PID + 2, 1, 20)])
    assert exec_event(FIRST_PID + 2, 1, 20).workload.container.name == "web"


def test_a_new_container_root_holds_from_then_on(table_with_paths, tmp_path):
    table, root = table_with_paths
    other = tmp_path / "other-root"
    containerd_bundle(other, **{**CRI_ANNOTATIONS, "io.kubernetes.cri.container-name": "from-other-root"})
    table.learn([exec_event(FIRST_PID + 3, 1, 10)])
    assert exec_event(FIRST_PID + 3, 1, 10).workload.container == PATH_ONLY
    table.set_container_root(str(other))
    assert exec_event(FIRST_PID + 3, 1, 10).workload.container.name == "from-other-root"


# ---------------------------------------------------------------- a real cgroup, a real process

@pytest.fixture
def pod_container_cgroup():
    """A cgroup at the path kubelet and containerd give a burstable pod's
    container (under the systemd driver), below a test directory at the
    hierarchy's root; removed, innermost first, at the end."""
    uid, cid = str(uuid.uuid4()), secrets.token_hex(32)
    top = os.path.join(cgroup2_mount(), f"rg-test-{os.getpid()}-{secrets.token_hex(4)}")
    leaf = top + kubepods_systemd("burstable", uid) + f"/cri-containerd-{cid}.scope"
    os.makedirs(leaf)
    try:
        yield leaf, uid, cid
    finally:
        # The processes have exited (run_in waits); a cgroup can stay busy a
        # moment after its last one is reaped.
        path = leaf
        while len(path) >= len(top):
            deadline = time.monotonic() + 2
            while True:
                try:
                    os.rmdir(path)
                    break
                except OSError as e:
                    if e.errno != errno.EBUSY or time.monotonic() > deadline:
                        raise
                    time.sleep(0.02)
            path = os.path.dirname(path)
        assert not os.path.exists(top)


@pytest.mark.root
def test_a_traced_process_in_a_pod_container_s_cgroup_gets_container_and_pod(pod_container_cgroup, tmp_path):
    leaf, uid, cid = pod_container_cgroup
    annotations = {**CRI_ANNOTATIONS, "io.kubernetes.cri.sandbox-uid": uid}
    containerd_bundle(tmp_path, cid=cid, **annotations)
    processes.set_container_root(str(tmp_path))
    try:
        with Tracer(events=["process_exec"], cgroups=[os.stat(leaf).st_ino]) as t:
            done = run_in(leaf, ["/bin/true"])
            assert done.returncode == 0, done.stderr
            ev = wait_for(t, lambda e: e.name == "process_exec" and e.data.return_code == 0)
            workload = ev.workload
    finally:
        processes.set_container_root("/")
    assert workload.cgroup == "/" + os.path.relpath(leaf, cgroup2_mount())
    assert workload.container == Container(id=cid, runtime="containerd", name="web",
                                           image="docker.io/library/nginx:1.27")
    assert workload.pod == Pod(name="web-7d9f8c-x2x4q", namespace="shop", uid=uid, qos_class="burstable")
    assert workload.process.executable in ("/bin/true", "/usr/bin/true", os.path.realpath("/bin/true"))


@pytest.mark.root
def test_the_same_cgroup_without_the_runtime_s_files_still_says_what_its_path_does(pod_container_cgroup, tmp_path):
    leaf, uid, cid = pod_container_cgroup
    processes.set_container_root(str(tmp_path))  # an empty root: no runtime left files
    try:
        with Tracer(events=["process_exec"], cgroups=[os.stat(leaf).st_ino]) as t:
            done = run_in(leaf, [sys.executable, "-c", "pass"])
            assert done.returncode == 0, done.stderr
            workload = wait_for(t, lambda e: e.name == "process_exec" and e.data.return_code == 0).workload
    finally:
        processes.set_container_root("/")
    assert workload.container == Container(id=cid, runtime="containerd")
    assert workload.pod == Pod(uid=uid, qos_class="burstable")
