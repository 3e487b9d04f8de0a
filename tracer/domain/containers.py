"""Which container, systemd service or Kubernetes pod a cgroup path names.

Pure functions of text: the probe layer (tracer/probes/cgroups.py) reads
/proc/PID/cgroup and the kubelet's log directories; this module says what
they mean. Everything here was chosen by someone else (a container's id by
its runtime, a cgroup's name by whoever may create one in a delegated
subtree, a pod's name by whoever may create pods), so each form is matched
strictly (ids of 64 lowercase hex digits, pod uids in the 8-4-4-4-12 form,
Kubernetes names as the API allows them) and anything else means "no
container", never a guess; text kept for display is capped and faithful.

The paths each runtime makes (v2 path, or a v1 controller's path):

    docker, cgroupfs driver        /docker/<id>
    docker, systemd driver         /system.slice/docker-<id>.scope
    containerd (CRI), systemd      .../cri-containerd-<id>.scope
    CRI-O                          .../crio-<id>.scope  (conmon: crio-conmon-<id>.scope)
    podman                         .../libpod-<id>.scope (conmon: libpod-conmon-<id>.scope),
                                   /libpod_parent/libpod-<id> (cgroupfs)
    kubelet, systemd driver        /kubepods.slice/kubepods-burstable.slice/
                                     kubepods-burstable-pod<uid, _ for ->.slice/<container>
    kubelet, cgroupfs driver       /kubepods/burstable/pod<uid>/<id>
                                   (guaranteed pods sit right under kubepods)
    systemd service                .../<name>.service
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional


# Longest cgroup path we keep as text; the kernel allows PATH_MAX, but a path
# this long is nobody's container and a column of them would be a hostile
# user's way to bloat a recording.
MAX_PATH = 512
MAX_UNIT = 256          # systemd's own limit on a unit name
# /proc/PID/cgroup: one line per hierarchy; hybrid hosts have ~13
MAX_LINES = 64

_HEX64 = r"[0-9a-f]{64}"
_UID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_UID_SYSTEMD = r"[0-9a-f]{8}_[0-9a-f]{4}_[0-9a-f]{4}_[0-9a-f]{4}_[0-9a-f]{12}"

# (runtime, pattern of one path component naming a container); first match wins,
# so the conmon forms come before the container forms they contain.
_CONTAINER_FORMS = (
    ("conmon", re.compile(rf"libpod-conmon-({_HEX64})\.scope")),
    ("conmon", re.compile(rf"crio-conmon-({_HEX64})\.scope")),
    ("docker", re.compile(rf"docker-({_HEX64})\.scope")),
    ("containerd", re.compile(rf"cri-containerd-({_HEX64})\.scope")),
    ("cri-o", re.compile(rf"crio-({_HEX64})(?:\.scope)?")),
    ("podman", re.compile(rf"libpod-({_HEX64})(?:\.scope)?")),
)
_BARE_ID = re.compile(_HEX64)
_POD_CGROUPFS = re.compile(rf"pod({_UID})")
_POD_SYSTEMD = re.compile(rf"(?:kubelet-)?kubepods(?:-(?:burstable|besteffort))?-pod({_UID_SYSTEMD})\.slice")
# kind and other kubelets in a container prefix their slices with "kubelet-"
_KUBEPODS = re.compile(r"(?:kubelet-)?kubepods(?:-(?:burstable|besteffort))?(?:\.slice)?")
# systemd unit names: letters, digits, ":-_.\" and "@" for instances
_SERVICE = re.compile(r"[A-Za-z0-9:_.\\@-]{1,%d}\.service" % (MAX_UNIT - 8))

# Kubernetes names (k8s.io/apimachinery validation): a namespace and a
# container name are DNS-1123 labels, a pod name a DNS-1123 subdomain.
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_SUBDOMAIN = rf"{_LABEL}(?:\.{_LABEL})*"
_POD_DIR = re.compile(rf"({_LABEL})_({_SUBDOMAIN})_({_UID})")
_LABEL_RE = re.compile(_LABEL)
_CONTAINER_LOG = re.compile(rf"({_SUBDOMAIN})_({_LABEL})_({_LABEL})-({_HEX64})\.log")


@dataclass(frozen=True)
class CgroupIdentity:
    """What a cgroup path says about the processes in it."""
    path: str                           # the path (capped, faithful text)
    runtime: Optional[str] = None       # docker, containerd, cri-o, podman, conmon, cri, systemd
    container_id: Optional[str] = None  # 64 hex digits; for systemd, the unit name
    pod_uid: Optional[str] = None       # Kubernetes pod uid (8-4-4-4-12)

    @property
    def short(self) -> Optional[str]:
        """How people name a container: its id's first 12 digits; a service by its unit."""
        if self.container_id is None:
            return None
        return self.container_id if self.runtime == "systemd" else self.container_id[:12]


@dataclass(frozen=True)
class PodInfo:
    namespace: str
    name: str
    uid: str


def parse_proc_cgroup(raw: bytes) -> Optional[tuple[Optional[str], dict[str, str]]]:
    """(v2 path or None, {v1 controller: path}) from /proc/PID/cgroup.

    None if the file does not read as the kernel writes it: a line that is
    not `id:controllers:path`, a path that is not absolute, or two lines for
    one hierarchy (a cgroup name with a newline in it could forge a line).
    Paths are returned as written; see clean_path."""
    v2: Optional[str] = None
    v1: dict[str, str] = {}
    seen_ids: set[bytes] = set()
    lines = [line for line in raw.split(b"\n") if line]
    if len(lines) > MAX_LINES:
        return None
    for line in lines:
        parts = line.split(b":", 2)
        if len(parts) != 3:
            return None
        hid, controllers, path = parts
        if not hid.isdigit() or hid in seen_ids:
            return None
        seen_ids.add(hid)
        text = clean_path(path)
        if text is None:
            return None
        if hid == b"0" and controllers == b"":
            v2 = text
        else:
            for c in controllers.split(b","):
                name = c.decode("ascii", "replace")
                if name in v1:
                    return None
                v1[name] = text
    return v2, v1


def clean_path(raw: bytes) -> Optional[str]:
    """An absolute cgroup path with no empty, `.` or `..` component and no
    NUL, as text that loses nothing (faithful_text); None otherwise."""
    if not raw.startswith(b"/") or b"\x00" in raw:
        return None
    parts = raw.split(b"/")[1:]
    if parts == [b""]:
        return "/"
    if any(p in (b"", b".", b"..") for p in parts):
        return None
    # as tracer.safe_text.faithful_text (the domain layer imports only itself)
    return raw.decode("utf-8", "backslashreplace")


def capped(path: str) -> str:
    """A path to show or store: at most MAX_PATH characters, the tail kept
    (the leaf names the container), marked with a leading `...`."""
    return path if len(path) <= MAX_PATH else "..." + path[-(MAX_PATH - 3):]


def identify(path: str) -> CgroupIdentity:
    """Runtime, container id and pod uid that a cgroup path names.

    The deepest component naming a container wins (a container nested in
    another's cgroup is the inner one); a pod uid counts only under a
    kubepods ancestor; a bare 64-hex id is a container only inside a pod
    (the cgroupfs driver's form, whose runtime the path does not say:
    `cri`) or right under /docker."""
    parts = [p for p in path.split("/") if p]
    runtime = container_id = pod_uid = None
    in_kubepods = False
    for i, part in enumerate(parts):
        if _KUBEPODS.fullmatch(part):
            in_kubepods = True
        if in_kubepods:
            m = _POD_SYSTEMD.fullmatch(part)
            if m:
                pod_uid = m.group(1).replace("_", "-")
                continue
            m = _POD_CGROUPFS.fullmatch(part)
            if m:
                pod_uid = m.group(1)
                continue
        found = _container(part)
        if found is not None:
            runtime, container_id = found
        elif _BARE_ID.fullmatch(part):
            if pod_uid is not None and parts[i - 1].startswith("pod"):
                runtime, container_id = "cri", part
            elif i == 1 and parts[0] == "docker":
                runtime, container_id = "docker", part
    if container_id is None and parts and _SERVICE.fullmatch(parts[-1]):
        runtime, container_id = "systemd", parts[-1]
    elif container_id is None:
        # a process in a service's child cgroup (systemd's Delegate=): the service
        for part in reversed(parts):
            if _SERVICE.fullmatch(part):
                runtime, container_id = "systemd", part
                break
    return CgroupIdentity(capped(path), runtime, container_id, pod_uid)


def _container(part: str) -> Optional[tuple[str, str]]:
    for runtime, form in _CONTAINER_FORMS:
        m = form.fullmatch(part)
        if m:
            return runtime, m.group(1)
    return None


def pod_dir(name: str) -> Optional[PodInfo]:
    """A kubelet pod log directory name, `<namespace>_<name>_<uid>`, if it is one."""
    if len(name) > 63 + 253 + 36 + 2:
        return None
    m = _POD_DIR.fullmatch(name)
    if m is None or len(m.group(2)) > 253:
        return None
    return PodInfo(m.group(1), m.group(2), m.group(3))


def container_dir(name: str) -> Optional[str]:
    """A container's log directory name in a pod's (a DNS-1123 label), if it is one."""
    return name if _LABEL_RE.fullmatch(name) else None


def container_log(name: str) -> Optional[tuple[str, str, str, str]]:
    """(pod name, namespace, container name, container id) from a kubelet
    link name in /var/log/containers, `<pod>_<namespace>_<container>-<id>.log`."""
    if len(name) > 253 + 63 + 63 + 64 + 8:
        return None
    m = _CONTAINER_LOG.fullmatch(name)
    if m is None or len(m.group(1)) > 253:
        return None
    return m.group(1), m.group(2), m.group(3), m.group(4)


@dataclass(frozen=True)
class Attribution:
    """Everything the tables say about where a process runs."""
    cgroup_id: Optional[int] = None     # v2 id (inode), None on v1-only hosts
    cgroup: Optional[str] = None        # path (capped)
    container_runtime: Optional[str] = None
    container_id: Optional[str] = None
    pod_uid: Optional[str] = None
    pod_namespace: Optional[str] = None
    pod_name: Optional[str] = None
    container_name: Optional[str] = None

    @property
    def container_label(self) -> Optional[str]:
        """How views name it: pod/container, else runtime:short id, else None."""
        if self.pod_name:
            who = f"{self.pod_namespace}/{self.pod_name}"
            return f"{who}/{self.container_name}" if self.container_name else who
        if self.container_id is None:
            return f"pod {self.pod_uid}" if self.pod_uid else None
        short = (self.container_id if self.container_runtime == "systemd"
                 else self.container_id[:12])
        return f"{self.container_runtime}:{short}"


NONE = Attribution()

COLUMNS = ("cgroup_id", "cgroup", "container_runtime", "container_id", "pod_namespace",
           "pod_name", "pod_uid", "container_name")
# The same, of a connection map edge's serving process (the edges table)
SERVER_PREFIX = "server_"
SERVER_COLUMNS = tuple(SERVER_PREFIX + c for c in COLUMNS)


def values(a: Optional[Attribution]) -> tuple:
    """An attribution's columns, in COLUMNS order."""
    a = a or NONE
    return (a.cgroup_id, a.cgroup, a.container_runtime, a.container_id, a.pod_namespace,
            a.pod_name, a.pod_uid, a.container_name)


def from_row(row, prefix: str = "") -> Optional[Attribution]:
    """The attribution in a recorded row (a mapping with COLUMNS, some
    perhaps absent: older recordings; each name after `prefix`, e.g.
    SERVER_PREFIX); None if it names nothing."""
    got = Attribution(*(row.get(prefix + c) for c in _FIELDS))
    return None if got == NONE else got


# COLUMNS in the order of Attribution's fields
_FIELDS = ("cgroup_id", "cgroup", "container_runtime", "container_id", "pod_uid",
           "pod_namespace", "pod_name", "container_name")


# The connects view's group of processes in no container (or gone before read)
HOST = "host"


def in_container(process: str, a: Optional[Attribution]) -> str:
    """A process as the connection map names it: with its container
    (pod/container, or runtime:short id) where it runs in one."""
    label = a.container_label if a is not None else None
    return f"{process} in {label}" if label else process


def group_label(a: Optional[Attribution]) -> str:
    """The connects view's container group of a process: its container's label, or HOST."""
    return (a.container_label if a is not None else None) or HOST


def group_of_row(row) -> Optional[str]:
    """group_label of a recorded row; None for a recording made before the
    container columns (no group at all, rather than everything "host")."""
    if "container_id" not in row:
        return None
    return group_label(from_row(row))


# ---------------------------------------------------------------- --container ID

MIN_ID_PREFIX = 12      # as docker ps shows ids; shorter prefixes collide across a fleet
_ID_PREFIX = re.compile(r"[0-9a-f]{%d,64}" % MIN_ID_PREFIX)


def container_prefix(text: str) -> Optional[str]:
    """A --container argument as an id prefix (12 to 64 lowercase hex
    digits; upper case is taken as lower), or None if it is not one."""
    text = text.strip().lower()
    return text if _ID_PREFIX.fullmatch(text) else None


def container_cgroups(prefix: str, paths) -> dict[str, str]:
    """{container id: its cgroup path} for the containers whose id starts
    with `prefix`, among cgroup `paths` (any order). A container's cgroup is
    the shallowest path naming it: the cgroups below it (a runtime's or the
    container's own) are part of it. conmon's cgroups (a runtime's monitor,
    not the container) are not containers here."""
    found: dict[str, str] = {}
    for path in paths:
        ident = identify(path)
        cid = ident.container_id
        if cid is None or ident.runtime in ("systemd", "conmon") or not cid.startswith(prefix):
            continue
        have = found.get(cid)
        if have is None or path.count("/") < have.count("/"):
            found[cid] = path
    return found
