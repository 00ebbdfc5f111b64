"""Containers and pods, from a cgroup path and the files runtimes leave on
disk: no daemon is asked, so nothing here waits on a socket or needs one.

``parse_cgroup(path)`` is pure: a cgroup v2 path (relative to the
hierarchy's root) names a container by its runtime's shape for the scope
(docker, containerd, cri-o, podman, rootless podman, podman under a
systemd unit, GitHub Actions' job containers, kubelet's cgroupfs layout) and a Kubernetes pod by kubelet's
(its uid and QoS class), under the systemd or the cgroupfs driver. Where
paths nest (a kind node's pods inside a docker container) the innermost
container wins: it is the one the process runs in.

``ContainerCatalog(root).describe(path)`` adds what the runtime wrote for
that id under ``root`` (``/``, or where the host's root is mounted):
names, image, pod name and namespace. Each container's files are read once
(remembered by id; an id whose files are not there yet is read again
after ``RETRY_MISSING_S``, so a container seen while it is being created is
still named). A file that is missing, unreadable, not a regular file, over
``MAX_FILE_BYTES`` or not JSON of the expected shape counts as absent: the
path alone answers, and no exception reaches the caller.
"""

from __future__ import annotations

import os
import pwd
import re
import stat
import threading
import time
from typing import Any, Callable, NamedTuple, Optional

import msgspec

from .schema import Container, Pod

MAX_FILE_BYTES = 4 << 20
MAX_VALUE_CHARS = 1024  # longer names or images are dropped, not carried in every event
RETRY_MISSING_S = 2.0
MAX_CONTAINERS = 4096

_ID = r"[0-9a-f]{64}"
# A pod's uid is a UUID; a static pod's is its manifest's 32-hex hash. The
# systemd driver writes the dashes as underscores (they separate slice levels).
_POD_UID = r"[0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12}|[0-9a-f]{32}"

# A whole path segment that names a container by itself. The conmon scopes
# (crio-conmon-<id>, libpod-conmon-<id>.scope) hold the monitor, not the
# container: "conmon-<id>" is not an id, so they never match.
_CONTAINER_SEGMENTS = (
    (re.compile(rf"docker-({_ID})\.scope"), "docker"),
    (re.compile(rf"cri-containerd-({_ID})\.scope"), "containerd"),
    # containerd given kubelet's systemd-style cgroupsPath without systemd
    # managing it: "kubepods-burstable-pod<uid>.slice:cri-containerd:<id>".
    (re.compile(rf"[^/]*:cri-containerd:({_ID})"), "containerd"),
    (re.compile(rf"crio-({_ID})(?:\.scope)?"), "cri-o"),
    # podman --cgroups=split (quadlet's default) puts the container in
    # libpod-payload-<id> under the unit's own cgroup.
    (re.compile(rf"libpod-(?:payload-)?({_ID})(?:\.scope)?"), "podman"),
)
_BARE_ID = re.compile(_ID)
# A bare id is a container only under a parent that says whose it is.
_BARE_ID_PARENTS = {"docker": "docker", "actions_job": "github-actions"}
_SYSTEMD_POD = re.compile(rf"(?:[^/]*-)?kubepods(?:-(besteffort|burstable))?-pod({_POD_UID})\.slice")
_CGROUPFS_POD = re.compile(rf"pod({_POD_UID})")
_USER_MANAGER = re.compile(r"user@([0-9]{1,10})\.service")


class CgroupFacts(NamedTuple):
    """What a cgroup path alone says."""

    container_id: Optional[str] = None
    runtime: Optional[str] = None
    pod_uid: Optional[str] = None
    """With dashes, whichever way the path wrote it."""
    qos_class: Optional[str] = None
    user: Optional[int] = None
    """The uid whose systemd user manager holds the container (rootless)."""


def parse_cgroup(path: str) -> Optional[CgroupFacts]:
    """The container and pod a cgroup path names; None if neither."""
    segments = path.split("/")
    container_id = runtime = None
    at = len(segments) - 1
    for i in range(len(segments) - 1, -1, -1):
        container_id, runtime = _container_segment(segments, i)
        if container_id is not None:
            at = i
            break
    pod_uid = qos_class = None
    for j in range(at, -1, -1):
        pod = _pod_segment(segments, j)
        if pod is not None:
            pod_uid, qos_class = pod
            break
    if container_id is None and pod_uid is None:
        return None
    user = None
    if container_id is not None:
        for j in range(at - 1, -1, -1):
            m = _USER_MANAGER.fullmatch(segments[j])
            if m:
                user = int(m.group(1))
                break
    return CgroupFacts(container_id, runtime, pod_uid, qos_class, user)


def container_from_cgroup(path: str) -> Optional[Container]:
    """The container a cgroup path names, if it carries a runtime's id."""
    facts = parse_cgroup(path)
    if facts is None or facts.container_id is None:
        return None
    return Container(id=facts.container_id, runtime=facts.runtime)


def _container_segment(segments: list[str], i: int) -> tuple[Optional[str], Optional[str]]:
    segment = segments[i]
    if len(segment) < 64:
        return None, None
    for pattern, runtime in _CONTAINER_SEGMENTS:
        m = pattern.fullmatch(segment)
        if m:
            return m.group(1), runtime
    if i > 0 and _BARE_ID.fullmatch(segment):
        parent = segments[i - 1]
        if parent in _BARE_ID_PARENTS:
            return segment, _BARE_ID_PARENTS[parent]
        if _CGROUPFS_POD.fullmatch(parent) and _pod_segment(segments, i - 1) is not None:
            # kubelet's cgroupfs layout does not say which runtime made it.
            return segment, "kubernetes"
    return None, None


def _pod_segment(segments: list[str], j: int) -> Optional[tuple[str, str]]:
    """(uid, QoS class) if segment j is a pod's cgroup."""
    # (The part before a ":" is the pod's slice in containerd's
    # "<pod slice>:cri-containerd:<id>" form.)
    m = _SYSTEMD_POD.fullmatch(segments[j].split(":", 1)[0])
    if m:
        return m.group(2).replace("_", "-"), m.group(1) or "guaranteed"
    m = _CGROUPFS_POD.fullmatch(segments[j])
    if m and j >= 1:
        parent = segments[j - 1]
        if parent == "kubepods":
            return m.group(1).replace("_", "-"), "guaranteed"
        if parent in ("besteffort", "burstable") and j >= 2 and segments[j - 2] == "kubepods":
            return m.group(1).replace("_", "-"), parent
    return None


# ---- what the runtimes wrote ----

class Described(NamedTuple):
    container: Optional[Container]
    pod: Optional[Pod]
    retry_at: Optional[float]
    """When (the catalog's clock) to describe the path again: the runtime's
    files were not there yet. None: the answer is final."""


class _Found(NamedTuple):
    """What a runtime's files say of one container."""

    runtime: str
    name: Optional[str] = None
    image: Optional[str] = None
    pod_name: Optional[str] = None
    pod_namespace: Optional[str] = None
    pod_uid: Optional[str] = None


# Only the fields read are declared: msgspec skips the rest of a bundle
# (mounts, process, linux) without building it. Values are typed Any and
# checked one by one, so one odd field does not hide the others.

class _OciSpec(msgspec.Struct):
    annotations: Any = None


class _DockerConfig(msgspec.Struct):
    Image: Any = None
    Labels: Any = None


class _DockerContainer(msgspec.Struct):
    Name: Any = None
    Config: Optional[_DockerConfig] = None


class _StoredContainer(msgspec.Struct):
    """An entry of containers/storage's containers.json."""

    id: Any = None
    names: Any = None
    metadata: Any = None  # JSON text: podman's and CRI-O's "name", "image-name"


_NOTHING = Described(None, None, None)
_CONTAINERD_TASKS = "run/containerd/io.containerd.runtime.v2.task"
_ROOTFUL_STORAGE = ("var/lib/containers/storage", "run/containers/storage")
_STORAGE_INDEXES = ("containers.json", "volatile-containers.json")


class ContainerCatalog:
    """Containers and pods by cgroup path, from the path and the runtimes'
    files under root. Files are read on the first describe() of a container
    (and again, at most every RETRY_MISSING_S, while they are missing);
    callers keep the answer per path, so an event costs a dict lookup."""

    def __init__(self, root: str = "/", clock: Callable[[], float] = time.monotonic,
                 max_containers: int = MAX_CONTAINERS):
        self.root = root
        self._clock = clock
        self._max = max_containers
        # (id, runtime from the path, user) -> (_Found or None, retry_at)
        self._known: dict[tuple, tuple[Optional[_Found], Optional[float]]] = {}
        self._homes: dict[int, str] = {}
        # containers.json path -> ((inode, size, mtime), {id: entry})
        self._indexes: dict[str, tuple[tuple, dict[str, _StoredContainer]]] = {}
        self._lock = threading.Lock()

    def describe(self, path: str) -> Described:
        facts = parse_cgroup(path)
        if facts is None:
            return _NOTHING
        found, retry_at = self._metadata(facts) if facts.container_id is not None else (None, None)
        return Described(*_merge(facts, found), retry_at)

    def _metadata(self, facts: CgroupFacts) -> tuple[Optional[_Found], Optional[float]]:
        key = (facts.container_id, facts.runtime, facts.user)
        with self._lock:
            hit = self._known.get(key)
            if hit is not None and (hit[1] is None or self._clock() < hit[1]):
                return hit
            found = self._read(facts)
            entry = (found, None if found is not None else self._clock() + RETRY_MISSING_S)
            if key not in self._known and len(self._known) >= self._max:
                for old in list(self._known)[: max(1, self._max // 4)]:
                    del self._known[old]
            self._known[key] = entry
            return entry

    def _read(self, facts: CgroupFacts) -> Optional[_Found]:
        cid, runtime = facts.container_id, facts.runtime
        if runtime in ("docker", "github-actions"):
            return self._docker(cid, facts.user)
        if runtime == "containerd":
            return self._containerd(cid)
        if runtime in ("cri-o", "podman"):
            return self._storage(cid, facts.user, runtime)
        # kubelet's cgroupfs layout: whichever runtime has files for the id.
        return self._containerd(cid) or self._storage(cid, facts.user, None) or self._docker(cid, facts.user)

    def _under_root(self, relative: str) -> str:
        return os.path.join(self.root, relative.lstrip("/"))

    def _containerd(self, cid: str) -> Optional[_Found]:
        """The OCI bundle containerd's runc shim runs from, in any containerd
        namespace (k8s.io for the CRI, moby for docker, default for ctr)."""
        tasks = self._under_root(_CONTAINERD_TASKS)
        try:
            namespaces = sorted(os.listdir(tasks))
        except OSError:
            return None
        for namespace in namespaces:
            spec = _read_json(os.path.join(tasks, namespace, cid, "config.json"), _OciSpec)
            if spec is not None:
                a = _strings(spec.annotations)
                return _Found("containerd", a.get("io.kubernetes.cri.container-name"),
                              a.get("io.kubernetes.cri.image-name"), a.get("io.kubernetes.cri.sandbox-name"),
                              a.get("io.kubernetes.cri.sandbox-namespace"), a.get("io.kubernetes.cri.sandbox-uid"))
        return None

    def _docker(self, cid: str, user: Optional[int]) -> Optional[_Found]:
        """docker's config.v2.json, in the daemon's default data root (a
        rootless daemon's under its user's home)."""
        if user is None:
            data_root = "var/lib/docker"
        else:
            home = self._home(user)
            if home is None:
                return None
            data_root = f"{home}/.local/share/docker"
        found = _read_json(self._under_root(f"{data_root}/containers/{cid}/config.v2.json"), _DockerContainer)
        if found is None:
            return None
        config = found.Config or _DockerConfig()
        labels = _strings(config.Labels)
        name = _text(found.Name)
        name = (name.removeprefix("/") or None) if name else None
        return _Found("docker", labels.get("io.kubernetes.container.name") or name,
                      _text(config.Image), labels.get("io.kubernetes.pod.name"),
                      labels.get("io.kubernetes.pod.namespace"), labels.get("io.kubernetes.pod.uid"))

    def _storage(self, cid: str, user: Optional[int], runtime: Optional[str]) -> Optional[_Found]:
        """containers/storage, which podman and CRI-O share: the OCI bundle
        in overlay-containers/<id>/userdata/config.json (CRI-O's
        annotations name the container, image and pod; podman's only say
        "io.container.manager: libpod"), and the store's own index,
        containers.json, where podman keeps the name it gave ("names") and
        the image ("image-name" in the entry's metadata). Rootful under
        /var/lib/containers/storage and /run/containers/storage; a rootless
        podman's under its user's home and /run/user/<uid>/containers."""
        if user is None:
            stores = _ROOTFUL_STORAGE
        else:
            home = self._home(user)
            stores = ((f"{home}/.local/share/containers/storage",) if home else ()) + (f"run/user/{user}/containers",)
        annotations = None
        for store in stores:
            spec = _read_json(self._under_root(f"{store}/overlay-containers/{cid}/userdata/config.json"), _OciSpec)
            if spec is not None:
                annotations = _strings(spec.annotations)
                break
        stored = self._stored(cid, stores)
        if annotations is None and stored is None:
            return None
        a = annotations or {}
        if runtime is None:
            runtime = "podman" if a.get("io.container.manager") == "libpod" else "cri-o"
        stored_name, stored_image = stored or (None, None)
        # CRI-O's ContainerName is the long k8s_<container>_<pod>_... form.
        return _Found(runtime,
                      a.get("io.kubernetes.container.name") or stored_name or a.get("io.kubernetes.cri-o.ContainerName"),
                      a.get("io.kubernetes.cri-o.ImageName") or stored_image, a.get("io.kubernetes.pod.name"),
                      a.get("io.kubernetes.pod.namespace"), a.get("io.kubernetes.pod.uid"))

    def _stored(self, cid: str, stores) -> Optional[tuple[Optional[str], Optional[str]]]:
        """(name, image) from containers/storage's index, if it lists cid."""
        for store in stores:
            for index in _STORAGE_INDEXES:
                entry = self._index(self._under_root(f"{store}/overlay-containers/{index}")).get(cid)
                if entry is None:
                    continue
                names = entry.names if isinstance(entry.names, list) else []
                meta = {}
                if isinstance(entry.metadata, str):
                    try:
                        meta = _strings(msgspec.json.decode(entry.metadata))
                    except (msgspec.DecodeError, RecursionError):
                        pass
                name = (_text(names[0]) if names else None) or meta.get("name")
                return name, meta.get("image-name")
        return None

    def _index(self, path: str) -> dict[str, _StoredContainer]:
        """containers.json by id, parsed again only when the file changed."""
        try:
            st = os.stat(path)
        except OSError:
            self._indexes.pop(path, None)
            return {}
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        kept = self._indexes.get(path)
        if kept is not None and kept[0] == stamp:
            return kept[1]
        entries = _read_json(path, list[_StoredContainer]) or []
        by_id = {e.id: e for e in entries if isinstance(e.id, str)}
        if len(self._indexes) >= 64:
            self._indexes.clear()
        self._indexes[path] = (stamp, by_id)
        return by_id

    def _home(self, uid: int) -> Optional[str]:
        """uid's home directory, relative to root: from the password
        database (this system's, through NSS, when root is "/"; else root's
        etc/passwd), else the one directory in root's home/ that uid owns."""
        home = self._homes.get(uid)
        if home is not None:
            return home
        if os.path.realpath(self.root) == "/":
            try:
                home = pwd.getpwuid(uid).pw_dir
            except KeyError:
                pass
        else:
            home = _passwd_home(self._under_root("etc/passwd"), uid)
        if not home:
            home = self._owned_home(uid)
        if not home:
            return None
        home = home.strip("/")
        if len(self._homes) >= 256:
            self._homes.clear()
        self._homes[uid] = home
        return home

    def _owned_home(self, uid: int) -> Optional[str]:
        homes = self._under_root("home")
        try:
            names = sorted(os.listdir(homes))
        except OSError:
            return None
        owned = []
        for name in names:
            try:
                st = os.lstat(os.path.join(homes, name))
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode) and st.st_uid == uid:
                owned.append(name)
        # Two homes of one uid: neither is more likely its storage's.
        return f"home/{owned[0]}" if len(owned) == 1 else None


def _merge(facts: CgroupFacts, found: Optional[_Found]) -> tuple[Optional[Container], Optional[Pod]]:
    container = None
    if facts.container_id is not None:
        if found is None:
            container = Container(id=facts.container_id, runtime=facts.runtime)
        else:
            container = Container(id=facts.container_id, runtime=found.runtime, name=found.name, image=found.image)
    name = namespace = None
    uid = facts.pod_uid
    if found is not None:
        name, namespace, uid = found.pod_name, found.pod_namespace, uid or found.pod_uid
    if name is None and namespace is None and uid is None:
        return container, None
    return container, Pod(name=name, namespace=namespace, uid=uid, qos_class=facts.qos_class)


def _read_json(path: str, kind):
    """path's content decoded as kind, or None (see the module's docstring)."""
    data = _read_bounded(path)
    if data is None:
        return None
    try:
        return msgspec.json.decode(data, type=kind)
    except (msgspec.DecodeError, RecursionError):  # (a ValidationError is a DecodeError)
        return None


def _read_bounded(path: str) -> Optional[bytes]:
    """A regular file's bytes, if it holds at most MAX_FILE_BYTES."""
    try:
        # No following a last symlink and no blocking on a FIFO: rootless
        # runtimes' files are in their users' homes, which those users control.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_FILE_BYTES:
            return None
        data = bytearray()
        while len(data) <= MAX_FILE_BYTES:
            chunk = os.read(fd, MAX_FILE_BYTES + 1 - len(data))
            if not chunk:
                break
            data += chunk
        return bytes(data) if len(data) <= MAX_FILE_BYTES else None  # (grown past the bound while read)
    except OSError:
        return None
    finally:
        os.close(fd)


def _passwd_home(path: str, uid: int) -> Optional[str]:
    data = _read_bounded(path)
    if data is None:
        return None
    wanted = str(uid)
    for line in data.decode(errors="replace").splitlines():
        fields = line.split(":")
        if len(fields) >= 7 and fields[2] == wanted:
            return fields[5] or None
    return None


def _text(value: Any) -> Optional[str]:
    """value if it is a non-empty string of a sensible length."""
    if isinstance(value, str) and 0 < len(value) <= MAX_VALUE_CHARS:
        return value
    return None


def _strings(mapping: Any) -> dict[str, str]:
    """The string values of a JSON object (annotations, labels), others dropped."""
    if not isinstance(mapping, dict):
        return {}
    return {k: v for k, v in mapping.items() if _text(v) is not None}
