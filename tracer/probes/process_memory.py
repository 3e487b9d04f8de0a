"""A process's resident memory, its memory cgroup's use and limit, and the
host's RAM, read from /proc and the cgroup file systems (no BPF).

Everything read here belongs to someone else: a pid can exit or be reused
between two reads, and a cgroup's name is chosen by whoever may create it
(a delegated subtree, a container runtime). So each value is parsed
strictly and anything odd reads as unknown (None), never an error; a
cgroup path is used only if it is absolute, has no `.` or `..` component,
and the file it names still lies under the hierarchy's mount, opened
without following a link. Both v1 (memory controller, e.g.
/sys/fs/cgroup/memory on hybrid hosts) and v2 (/sys/fs/cgroup, or
/sys/fs/cgroup/unified on hybrid hosts, where it usually has no memory
controller) are read.

Cost (measured, 2-core VM, 6.18): statm ~14 µs a process, read every scan
for processes holding sockets; /proc/PID/cgroup ~16 µs, read every 5th scan
(ProcScanner.limits_every); a cgroup's figures once per scan however many
processes share it. With 200 processes holding sockets (300 in all), scans
with and without these reads took a median 43 vs 34 ms in one run of 45 each
and 29 vs 30 ms in the next: within the noise of this shared machine.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

PROC = "/proc"
V1_MEMORY = "/sys/fs/cgroup/memory"
V2_ROOTS = ("/sys/fs/cgroup/unified", "/sys/fs/cgroup")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
# v1 reports "no limit" as PAGE_COUNTER_MAX pages (9223372036854771712 on
# x86-64); anything this large is no limit.
NO_LIMIT = 1 << 60
_MAX_READ = 16384


def _read(path: str, dir_fd: Optional[int] = None, limit: int = _MAX_READ) -> Optional[bytes]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        return os.read(fd, limit)
    except OSError:
        return None
    finally:
        os.close(fd)


def _int(raw: Optional[bytes]) -> Optional[int]:
    if raw is None:
        return None
    text = raw.strip()
    if not text.isdigit() or len(text) > 20:
        return None
    return int(text)


def rss_bytes(pid: int) -> Optional[int]:
    """Resident memory of pid (statm's second field: VmRSS); None if gone,
    unreadable or not numbers. A kernel thread or a zombie has 0."""
    raw = _read(f"{PROC}/{pid}/statm", limit=256)
    if raw is None:
        return None
    fields = raw.split()
    if len(fields) < 2 or not fields[1].isdigit() or len(fields[1]) > 16:
        return None
    return int(fields[1]) * PAGE_SIZE


def mem_total(meminfo: str = f"{PROC}/meminfo") -> Optional[int]:
    """The host's RAM (MemTotal), bytes."""
    raw = _read(meminfo, limit=4096)
    if raw is None:
        return None
    for line in raw.split(b"\n"):
        if line.startswith(b"MemTotal:"):
            parts = line.split()
            if len(parts) == 3 and parts[1].isdigit() and parts[2] == b"kB":
                return int(parts[1]) * 1024
    return None


@dataclass(frozen=True)
class CgroupRef:
    """A process's memory cgroup: which hierarchy, and the path in it."""
    version: int      # 1 or 2
    path: str         # absolute, normalised, e.g. /system.slice/api.service


def _clean(path: bytes) -> Optional[str]:
    """A cgroup path as /proc/PID/cgroup shows it, if it is one we may use."""
    try:
        text = path.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if not text.startswith("/") or "\x00" in text:
        return None
    parts = [p for p in text.split("/") if p]
    if any(p in (".", "..") for p in parts):
        return None
    return "/" + "/".join(parts)


def memory_cgroup(pid: int) -> Optional[CgroupRef]:
    """The memory cgroup of pid, from /proc/PID/cgroup: the v1 line naming
    the memory controller if there is one, else the v2 line ("0::"). None
    for the root cgroup (its figures are the whole host's), a process gone,
    or a file that does not read as the kernel writes it (a cgroup name with
    a newline in it could forge a line: then two lines claim memory)."""
    raw = _read(f"{PROC}/{pid}/cgroup", limit=8192)
    if raw is None:
        return None
    v1 = v2 = None
    for line in raw.split(b"\n"):
        if not line:
            continue
        parts = line.split(b":", 2)
        if len(parts) != 3:
            return None
        hid, controllers, path = parts
        if hid == b"0" and controllers == b"":
            if v2 is not None:
                return None
            v2 = path
        elif b"memory" in controllers.split(b","):
            if v1 is not None:
                return None
            v1 = path
    chosen, version = (v1, 1) if v1 is not None else (v2, 2)
    if chosen is None:
        return None
    path = _clean(chosen)
    if path is None or path == "/":
        return None
    return CgroupRef(version, path)


@dataclass(frozen=True)
class CgroupMemory:
    used: Optional[int]    # bytes charged to the cgroup (its subtree included)
    limit: Optional[int]   # the smallest limit on its path to the root; None: none


def _dir_under(root: str, path: str) -> Optional[int]:
    """An fd of the directory root+path, if it is a real directory under
    root (no link followed on the way); None otherwise."""
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    for part in path.strip("/").split("/") if path != "/" else []:
        try:
            nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                          dir_fd=fd)
        except OSError:
            os.close(fd)
            return None
        os.close(fd)
        fd = nxt
    return fd


def _v1(path: str, root: str) -> Optional[CgroupMemory]:
    fd = _dir_under(root, path)
    if fd is None:
        return None
    try:
        used = _int(_read("memory.usage_in_bytes", fd))
        limit = None
        stat = _read("memory.stat", fd)
        for line in (stat or b"").split(b"\n"):
            if line.startswith(b"hierarchical_memory_limit "):
                limit = _int(line.split(b" ", 1)[1])
        if limit is None:
            limit = _int(_read("memory.limit_in_bytes", fd))
    finally:
        os.close(fd)
    return CgroupMemory(used, limit if limit is not None and limit < NO_LIMIT else None)


def _v2(path: str, root: str) -> Optional[CgroupMemory]:
    """memory.current of the cgroup; the limit is the smallest memory.max
    from it up to the root (v2 has no hierarchical figure of its own)."""
    fd = _dir_under(root, path)
    if fd is None:
        return None
    try:
        used = _int(_read("memory.current", fd))
    finally:
        os.close(fd)
    if used is None:      # no memory controller in this hierarchy
        return None
    limit = None
    parts = path.strip("/").split("/")
    for depth in range(len(parts), 0, -1):
        fd = _dir_under(root, "/" + "/".join(parts[:depth]))
        if fd is None:
            continue
        try:
            value = _int(_read("memory.max", fd))    # "max": no limit, reads as None
        finally:
            os.close(fd)
        if value is not None and value < NO_LIMIT and (limit is None or value < limit):
            limit = value
    return CgroupMemory(used, limit)


def _v2_root() -> Optional[str]:
    for root in V2_ROOTS:
        if os.path.exists(os.path.join(root, "cgroup.controllers")):
            return root
    return None


def cgroup_memory(ref: CgroupRef, v1_root: str = V1_MEMORY,
                  v2_root: Optional[str] = None) -> Optional[CgroupMemory]:
    """The use and limit of a memory cgroup; None if it is gone or has no
    memory controller."""
    if ref.version == 1:
        return _v1(ref.path, v1_root)
    root = v2_root or _v2_root()
    return _v2(ref.path, root) if root else None
