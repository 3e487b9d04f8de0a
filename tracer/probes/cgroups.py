"""Which cgroup, container and pod a process is in, read from /proc, the
cgroup v2 mount and the kubelet's log directories (no BPF, no Kubernetes API).

What the files mean is tracer/domain/containers.py; this module reads them
safely, as root, on a host where others name cgroups and pods:

- /proc/PID/cgroup is opened by number (never /proc/self), O_NOFOLLOW, size
  capped, and refused whole if it does not read as the kernel writes it;
- the cgroup v2 id is the inode of the cgroup's directory under the v2 mount
  (what bpf_get_current_cgroup_id() returns), reached one component at a
  time with O_NOFOLLOW, so a name cannot lead the walk out of the mount;
- /var/log/pods (and /var/log/containers, for which container an id is) is
  listed only if it and its parents are root's and not writable by others
  (tracer/trusted_fs.py), each pod directory only if root's too; nothing in
  them is opened or followed: their names are all we read.

Resolution happens in the collector's drain and interval steps, never in a
ring-buffer callback, and is cached per pid (ContainerCache): bounded, least
recently used out first (counted), and checked against the process's start
time every interval so that a reused pid does not inherit a container.

Cost (2-core VM, 6.18): /proc/PID/stat + /proc/PID/cgroup + the id walk are
a few tens of microseconds per new process; a cached pid is a dict look-up.
"""
from __future__ import annotations

import ctypes
import os
import stat
import struct
import time
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Iterable, Optional

from tracer import trusted_fs
from tracer.domain import containers
from tracer.domain.containers import (HOST, NONE, Attribution, CgroupIdentity, PodInfo,
                                     group_label, values)
from tracer.probes.process_memory import _dir_under, _read

PROC = "/proc"
MOUNTINFO = "/proc/self/mountinfo"
POD_LOGS = "/var/log/pods"
CONTAINER_LOGS = "/var/log/containers"
# Tests (and hosts with a kubelet --root-dir elsewhere) point these elsewhere;
# the directory must pass the same ownership checks wherever it is.
POD_LOGS_ENV = "CONNSCOPE_POD_LOGS"
CONTAINER_LOGS_ENV = "CONNSCOPE_CONTAINER_LOGS"
MAX_PODS = 10_000           # entries read from a pods directory; the rest ignored, counted
MAX_CONTAINERS_PER_POD = 64
PODS_REFRESH_S = 10.0
# v1 hierarchies whose path names a container as well as v2's does, in the
# order asked on hosts where v2 does not (v1 only, or hybrid with v2 unused)
_V1_ORDER = ("name=systemd", "memory", "pids", "cpu", "cpuacct", "blkio", "devices")


# ---------------------------------------------------------------- the cgroup mounts

_NOT_CONTROLLERS = {"rw", "ro", "xattr", "noprefix", "clone_children", "cpuset_v2_mode",
                    "nsdelegate", "memory_recursiveprot", "favordynmods", "memory_localevents"}


@dataclass(frozen=True)
class Hierarchies:
    v2: Optional[str]           # mount point of cgroup2, None if not mounted
    v1: tuple[str, ...]         # v1 controllers mounted (names), e.g. ("cpu", "memory")

    @property
    def mode(self) -> str:
        if self.v2 and self.v1:
            return "hybrid"
        return "v2" if self.v2 else ("v1" if self.v1 else "none")


def hierarchies(mountinfo: str = MOUNTINFO) -> Hierarchies:
    """The cgroup file systems mounted here (this process's mount namespace)."""
    raw = _read(mountinfo, limit=1 << 20) or b""
    v2: list[str] = []
    v1: list[str] = []
    for line in raw.split(b"\n"):
        left, sep, right = line.partition(b" - ")
        if not sep:
            continue
        fields, rest = left.split(b" "), right.split(b" ")
        if len(fields) < 5 or len(rest) < 3:
            continue
        point = fields[4].decode("utf-8", "replace").replace("\\040", " ")
        if rest[0] == b"cgroup2":
            v2.append(point)
        elif rest[0] == b"cgroup":
            opts = rest[2].decode("ascii", "replace").split(",")
            v1 += [o for o in opts if o not in _NOT_CONTROLLERS
                   and ("=" not in o or o.startswith("name="))]
    # the usual places first: the unified mount of hybrid hosts, then pure v2
    for usual in ("/sys/fs/cgroup/unified", "/sys/fs/cgroup"):
        if usual in v2:
            return Hierarchies(usual, tuple(sorted(set(v1))))
    return Hierarchies(v2[0] if v2 else None, tuple(sorted(set(v1))))


def cgroup_id(v2_root: str, path: str) -> Optional[int]:
    """The v2 cgroup id of `path`: its directory's inode under the mount."""
    fd = _dir_under(v2_root, path)
    if fd is None:
        return None
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    return st.st_ino if stat.S_ISDIR(st.st_mode) else None


_FILEID_KERNFS = 0xfe       # a cgroup's file handle: its 64-bit id (kernfs)


class _FileHandle(ctypes.Structure):
    _fields_ = [("handle_bytes", ctypes.c_uint), ("handle_type", ctypes.c_int),
                ("f_handle", ctypes.c_ubyte * 8)]


_libc = None


def path_of_id(v2_root: str, cid: int) -> Optional[str]:
    """The path of cgroup v2 id `cid` (what BPF's bpf_get_current_cgroup_id
    gave), opened by its file handle (open_by_handle_at: root only) and named
    by the kernel (/proc/self/fd); None if gone, not under `v2_root`, or not
    allowed. Used for processes that exited before their pid was read."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    try:
        mount = os.open(v2_root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        handle = _FileHandle(8, _FILEID_KERNFS,
                             (ctypes.c_ubyte * 8)(*struct.pack("=Q", cid & (2 ** 64 - 1))))
        fd = _libc.open_by_handle_at(mount, ctypes.byref(handle),
                                     os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    finally:
        os.close(mount)
    if fd < 0:
        return None
    try:
        if os.fstat(fd).st_ino != cid:
            return None
        where = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None
    finally:
        os.close(fd)
    root = v2_root.rstrip("/")
    if where == root:
        return "/"
    if not where.startswith(root + "/"):
        return None
    return containers.clean_path(os.fsencode(where[len(root):]))


def start_time(pid: int, proc: str = PROC) -> Optional[int]:
    """When pid started (clock ticks since boot, /proc/PID/stat field 22):
    with the pid, names one process for as long as the host is up."""
    raw = _read(f"{proc}/{pid}/stat", limit=2048)
    if raw is None:
        return None
    # comm (field 2) may hold spaces and parentheses: fields after the last ')'
    rest = raw[raw.rfind(b")") + 2:].split()
    if len(rest) < 20 or not rest[19].isdigit():
        return None
    return int(rest[19])


def identity_of(raw: bytes) -> Optional[tuple[Optional[str], CgroupIdentity]]:
    """(v2 path, what names the process) from /proc/PID/cgroup's text: the
    v2 path if it says anything, else the first v1 path that does, else the
    v2 path (or name=systemd's on a v1-only host)."""
    parsed = containers.parse_proc_cgroup(raw)
    if parsed is None:
        return None
    v2, v1 = parsed
    candidates = ([v2] if v2 else []) + [v1[c] for c in _V1_ORDER if c in v1]
    for path in candidates:
        ident = containers.identify(path)
        if ident.runtime or ident.pod_uid:
            return v2, ident
    fallback = v2 or next(iter(candidates), None)
    return v2, (containers.identify(fallback) if fallback else CgroupIdentity("/"))


# ---------------------------------------------------------------- the kubelet's directories

@dataclass(frozen=True)
class Pods:
    """What the kubelet's log directories say, with what was skipped and why."""
    by_uid: dict            # uid -> PodInfo
    containers: dict        # uid -> tuple of container names (their log directories)
    names_by_id: dict       # container id -> container name (/var/log/containers)
    notes: tuple = ()       # why a directory or entry was not read


EMPTY_PODS = Pods({}, {}, {})


def _list_trusted(path: str, what: str) -> tuple[Optional[int], Optional[str]]:
    """(fd of the directory, None), (None, why not), or (None, None) if absent."""
    try:
        return trusted_fs.CACHE.open_dir(path), None
    except FileNotFoundError:
        return None, None
    except trusted_fs.Untrusted as e:
        return None, f"{what} not read from {path}: {e}"
    except OSError as e:
        return None, f"{what} not read from {path}: {e.strerror or e}"


def read_pods(pods_root: str = POD_LOGS, links_root: str = CONTAINER_LOGS) -> Pods:
    """Pods and container names from `pods_root`/<ns>_<name>_<uid>/<container>/
    and `links_root`/<pod>_<ns>_<container>-<id>.log, by name only."""
    notes: list[str] = []
    by_uid: dict[str, PodInfo] = {}
    names: dict[str, tuple[str, ...]] = {}
    fd, why = _list_trusted(pods_root, "pod names")
    if why:
        notes.append(why)
    if fd is not None:
        try:
            entries = sorted(os.listdir(fd))
            if len(entries) > MAX_PODS:
                notes.append(f"{pods_root}: {len(entries)} entries, only {MAX_PODS} read")
                entries = entries[:MAX_PODS]
            skipped = 0
            for entry in entries:
                pod = containers.pod_dir(entry)
                if pod is None:
                    skipped += 1
                    continue
                try:
                    sub = trusted_fs.CACHE.open_subdir(fd, entry, f"{pods_root}/{entry}")
                except OSError:
                    skipped += 1    # a link, a file, someone else's: not a kubelet's
                    continue
                try:
                    kids = sorted(n for n in os.listdir(sub) if containers.container_dir(n))
                finally:
                    os.close(sub)
                by_uid[pod.uid] = pod
                names[pod.uid] = tuple(kids[:MAX_CONTAINERS_PER_POD])
            if skipped:
                notes.append(f"{pods_root}: {skipped} entries are not pod directories the "
                             "kubelet made (name, type or owner): skipped")
        finally:
            os.close(fd)
    by_id: dict[str, str] = {}
    fd, why = _list_trusted(links_root, "container names")
    if why:
        notes.append(why)
    if fd is not None:
        try:
            for entry in os.listdir(fd)[:MAX_PODS * 4]:
                parsed = containers.container_log(entry)
                if parsed is not None:
                    by_id[parsed[3]] = parsed[2]
        finally:
            os.close(fd)
    return Pods(by_uid, names, by_id, tuple(notes))


def with_pod(a: Attribution, pods: Pods) -> Attribution:
    """`a` with its pod's namespace and name and its container's name, where
    the kubelet's directories give them. A container's name is taken from
    /var/log/containers by id, else from the pod's only container directory."""
    if a.pod_uid is None or a.pod_uid not in pods.by_uid:
        return a
    pod = pods.by_uid[a.pod_uid]
    name = pods.names_by_id.get(a.container_id) if a.container_id else None
    kids = pods.containers.get(a.pod_uid, ())
    if name is None and len(kids) == 1 and a.container_id and a.container_runtime != "conmon":
        name = kids[0]
    return replace(a, pod_namespace=pod.namespace, pod_name=pod.name, container_name=name)


# ---------------------------------------------------------------- per-pid cache

_NO_COLUMNS = values(None)

class ContainerCache:
    """pid -> Attribution, resolved once per process and kept while it lives.

    Bounded (`max_pids`, least recently used out first, counted in
    `evicted`); `revalidate()` (once per interval) drops pids that exited or
    were reused (start time changed). Pods are re-read every PODS_REFRESH_S."""

    def __init__(self, max_pids: int = 8192, v2_root: Optional[str] = "auto",
                 pods_root: Optional[str] = None, links_root: Optional[str] = None,
                 proc: str = PROC, clock=time.monotonic):
        self.max_pids = max(1, max_pids)
        self.v2_root = hierarchies().v2 if v2_root == "auto" else v2_root
        self.pods_root = pods_root or os.environ.get(POD_LOGS_ENV) or POD_LOGS
        self.links_root = links_root or os.environ.get(CONTAINER_LOGS_ENV) or CONTAINER_LOGS
        self.proc = proc
        self._clock = clock
        self._entries: OrderedDict[int, tuple[int, Attribution]] = OrderedDict()
        self._bare: dict[int, Attribution] = {}    # pid -> before the pod join
        # per event, only dict look-ups: the columns and the group, made once per pid
        self._columns: dict[int, tuple] = {}
        self._groups: dict[int, str] = {}
        self._pods = EMPTY_PODS
        self._pods_at: Optional[float] = None
        self.evicted = 0
        self.unreadable = 0     # pids gone or unreadable when first seen
        self._missing: set[int] = set()     # such pids, not read again until revalidate()
        self._touched: set[int] = set()     # pids asked for since the last revalidate()
        # cgroup id (from BPF, connects) -> columns, group: for pids gone before read
        self._id_columns: dict[int, tuple] = {}
        self._id_groups: dict[int, str] = {}
        self._id_bare: dict[int, Attribution] = {}
        self._id_attr: dict[int, Attribution] = {}
        self._missing_ids: set[int] = set()

    @property
    def notes(self) -> tuple[str, ...]:
        """Why the kubelet's directories were not read, or read in part."""
        if self._pods_at is None:
            self._refresh_pods(force=True)
        return self._pods.notes

    def get(self, pid: int) -> Optional[Attribution]:
        """The attribution of pid, resolving it now if new; None if unknown."""
        entry = self._entries.get(pid)
        if entry is not None:
            self._entries.move_to_end(pid)
            self._touched.add(pid)
            return entry[1]
        if pid in self._missing or pid <= 0:
            return None
        return self._resolve(pid)

    def note(self, pids: Iterable[int], cgroup_ids: Iterable[int] = ()) -> None:
        """Resolve the pids not yet known (the collector calls this per poll),
        and the cgroup ids of events whose pid could not be read."""
        entries = self._entries
        pids = set(pids)
        self._touched |= pids
        for pid in pids:
            if pid in entries:
                entries.move_to_end(pid)
            elif pid > 0 and pid not in self._missing:
                self._resolve(pid)
        for cid in set(cgroup_ids):
            if cid and cid not in self._id_columns and cid not in self._missing_ids:
                self._resolve_id(cid)

    def _resolve_id(self, cid: int) -> None:
        path = path_of_id(self.v2_root, cid) if self.v2_root else None
        if path is None:
            if len(self._missing_ids) < self.max_pids:
                self._missing_ids.add(cid)
            return
        if len(self._id_columns) >= self.max_pids:     # ids are never reused: start again
            self.evicted += len(self._id_columns)
            self._id_columns.clear()
            self._id_groups.clear()
            self._id_bare.clear()
            self._id_attr.clear()
        ident = containers.identify(path)
        bare = Attribution(cid, ident.path, ident.runtime, ident.container_id, ident.pod_uid)
        self._id_bare[cid] = bare
        self._set_id(cid, with_pod(bare, self._pods))

    def _set_id(self, cid: int, a: Attribution) -> None:
        self._id_columns[cid] = values(a)
        self._id_attr[cid] = a
        self._id_groups[cid] = group_label(a)

    def columns_of(self, pid: int, cgroup_id: int) -> tuple:
        """columns(pid), or those of the cgroup id if the pid was not read."""
        got = self._columns.get(pid)
        if got is None:
            got = self._id_columns.get(cgroup_id)
        if got is None:
            # the cgroup was gone before its path was read (a container removed
            # within a poll of its last connect): the kernel's id is still a fact
            got = (cgroup_id or None, *_NO_COLUMNS[1:])
        return got

    def attribution_of(self, pid: int, cgroup_id: int) -> Optional[Attribution]:
        """get(pid), or (as columns_of) that of the cgroup id if the pid was
        not read: the kernel's id alone if even its path is gone."""
        got = self.get(pid) if pid > 0 else None
        if got is None and cgroup_id:
            got = self._id_attr.get(cgroup_id) or Attribution(cgroup_id)
        return got

    def group_of(self, pid: int, cgroup_id: int) -> str:
        """group(pid), or that of the cgroup id if the pid was not read."""
        got = self._groups.get(pid)
        if got is None:
            got = self._id_groups.get(cgroup_id, HOST)
        return got

    def revalidate(self) -> None:
        """Once per interval: forget exited or reused pids, and those not asked
        for since the last call (read again if they come back), so that each
        interval costs one read per active process; re-read the pods."""
        self._missing.clear()
        self._missing_ids.clear()
        touched, self._touched = self._touched, set()
        for pid, (started, _) in list(self._entries.items()):
            if pid not in touched or start_time(pid, self.proc) != started:
                self._forget(pid)
        self._refresh_pods()

    def _refresh_pods(self, force: bool = False) -> None:
        now = self._clock()
        if not force and self._pods_at is not None and now - self._pods_at < PODS_REFRESH_S:
            return
        self._pods_at = now
        pods = read_pods(self.pods_root, self.links_root)
        if pods != self._pods:
            self._pods = pods
            for pid, (started, _) in list(self._entries.items()):
                self._set(pid, started, with_pod(self._bare[pid], pods))
            for cid, bare in self._id_bare.items():
                self._set_id(cid, with_pod(bare, pods))

    def _resolve(self, pid: int) -> Optional[Attribution]:
        if self._pods_at is None:
            self._refresh_pods(force=True)
        started = start_time(pid, self.proc)
        raw = _read(f"{self.proc}/{pid}/cgroup", limit=8192)
        if started is None or raw is None:
            self.unreadable += 1
            if len(self._missing) < self.max_pids:
                self._missing.add(pid)
            return None
        found = identity_of(raw)
        if found is None:
            bare = NONE
        else:
            v2, ident = found
            cid = cgroup_id(self.v2_root, v2) if self.v2_root and v2 else None
            bare = Attribution(cid, ident.path, ident.runtime, ident.container_id,
                               ident.pod_uid)
        # the process may have exited and its pid been reused between the reads
        if start_time(pid, self.proc) != started:
            self.unreadable += 1
            if len(self._missing) < self.max_pids:
                self._missing.add(pid)
            return None
        a = with_pod(bare, self._pods)
        self._bare[pid] = bare
        self._set(pid, started, a)
        while len(self._entries) > self.max_pids:
            self._forget(next(iter(self._entries)))
            self.evicted += 1
        return a

    def _set(self, pid: int, started: int, a: Attribution) -> None:
        self._entries[pid] = (started, a)
        self._columns[pid] = values(a)
        self._groups[pid] = group_label(a)

    def _forget(self, pid: int) -> None:
        del self._entries[pid]
        self._bare.pop(pid, None)
        self._columns.pop(pid, None)
        self._groups.pop(pid, None)

    # Per event, after note() for its poll: plain look-ups, no LRU touch (note did that)

    def columns(self, pid: int) -> tuple:
        """The container columns (tracer.domain.containers.COLUMNS) of pid; nulls if unknown."""
        return self._columns.get(pid, _NO_COLUMNS)

    def group(self, pid: int) -> str:
        """The connects view's container group of pid (HOST if unknown)."""
        return self._groups.get(pid, HOST)
