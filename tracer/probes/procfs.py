"""Which process holds which socket, read from /proc without BPF.

Each open socket is a link "socket:[INODE]" in /proc/PID/fd; INODE is the
`inode` sock_diag reports, the same in every network namespace. A socket
passed over a Unix socket, inherited through fork or dup'ed shows up under
every process holding it, which is why owners() picks one pid and
owner_pids() gives them all.

Everything here races with processes that exit or close fds while we read:
such a process or fd is skipped, never an error. Processes we may not read
(EACCES when not root) are skipped the same way.

Cost (measured, 2-core VM, 6.18): ~5 µs per open fd in Python, ~3 µs with
the compiled scan (tracer/_fastpath.c fd_sockets), nearly all of it the
kernel's readlink. A full scan of ~300 processes, 200 of them holding 10 TCP
sockets each (~3,600 fds), took 15-22 ms in Python; see ProcScanner.
The fd directory's mtime never changes (procfs sets it when the inode is
made), so it cannot tell which processes to skip: every scan reads every fd
table.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Iterable, Optional

from tracer import fastpath
from tracer.probes import process_memory
from tracer.safe_text import faithful_text

PROC = "/proc"
_SOCKET_PREFIX = "socket:["


def all_pids() -> list[int]:
    """Every process (thread group) now alive; /proc lists no thread ids."""
    return [int(name) for name in os.listdir(PROC) if name.isdigit()]


def socket_inodes(pid: int) -> Optional[set[int]]:
    """Inodes of the sockets (any kind) open in pid; None if pid is gone or
    unreadable. Threads normally share their process's fd table."""
    scanned = _scan_fd_dir(pid)
    return None if scanned is None else scanned[1]


def _scan_fd_dir_python(pid: int) -> Optional[tuple[int, set[int]]]:
    """(number of fds, socket inodes) of pid from one listing of its fd
    directory, or None if gone or unreadable. For the calling process the
    count includes the fds used to list it. The reference for the compiled
    scan (tracer/_fastpath.c fd_sockets), used when that is not built."""
    try:
        dfd = os.open(f"{PROC}/{pid}/fd", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        names = os.listdir(dfd)
        found = set()
        for name in names:
            try:
                # Relative to the open directory: no path walk per fd.
                target = os.readlink(name, dir_fd=dfd)
            except OSError:  # closed since the listing, or the process exited
                continue
            if target.startswith(_SOCKET_PREFIX):
                found.add(int(target[len(_SOCKET_PREFIX):-1]))
        return len(names), found
    except OSError:
        return None
    finally:
        os.close(dfd)


# (about 3 us of the 6 a socket took in Python is the kernel's readlink)
_scan_fd_dir = fastpath.native.fd_sockets if fastpath.native is not None else _scan_fd_dir_python


def socket_inodes_by_pid(pids: Optional[Iterable[int]] = None) -> dict[int, set[int]]:
    """pid -> inodes of its open sockets, for pids (default: every process).
    Processes without sockets, gone, or unreadable are left out."""
    out: dict[int, set[int]] = {}
    for pid in (all_pids() if pids is None else pids):
        inodes = socket_inodes(pid)
        if inodes:
            out[pid] = inodes
    return out


def owner_pids(inodes: Iterable[int], by_pid: Optional[dict[int, set[int]]] = None) -> dict[int, tuple[int, ...]]:
    """inode -> every pid holding it, ascending, for the given inodes (those
    no process holds are left out). by_pid: a scan to reuse instead of
    reading /proc again."""
    wanted = set(inodes)
    if by_pid is None:
        by_pid = socket_inodes_by_pid()
    holders: dict[int, list[int]] = {}
    for pid in sorted(by_pid):
        for inode in by_pid[pid] & wanted:
            holders.setdefault(inode, []).append(pid)
    return {inode: tuple(pids) for inode, pids in holders.items()}


def owners(inodes: Iterable[int], by_pid: Optional[dict[int, set[int]]] = None) -> dict[int, tuple[int, str]]:
    """inode -> (pid, comm) of one holder: the lowest pid, which after a fork
    is usually the parent. Inodes whose holder vanished are left out."""
    out: dict[int, tuple[int, str]] = {}
    names: dict[int, Optional[str]] = {}
    for inode, pids in owner_pids(inodes, by_pid).items():
        for pid in pids:
            if pid not in names:
                names[pid] = comm(pid)
            if names[pid] is not None:
                out[inode] = (pid, names[pid])
                break
    return out


def fd_count(pid: int) -> Optional[int]:
    """Open fds of pid; None if gone or unreadable."""
    path = f"{PROC}/{pid}/fd"
    try:
        # Since 6.2 the size of /proc/PID/fd is the number of open fds: one
        # stat instead of a listing. Before, it is 0: count the entries.
        size = os.stat(path).st_size
        return size if size > 0 else len(os.listdir(path))
    except OSError:
        return None


def nofile_limit(pid: int) -> Optional[int]:
    """The soft RLIMIT_NOFILE of pid; None if unlimited, gone or unreadable."""
    try:
        with open(f"{PROC}/{pid}/limits") as f:
            for line in f:
                if line.startswith("Max open files"):
                    soft = line[len("Max open files"):].split()[0]
                    return None if soft == "unlimited" else int(soft)
    except OSError:
        return None
    return None


def comm(pid: int) -> Optional[str]:
    """The command name (up to 15 bytes) of pid, decoded as the kernel's
    records are (faithful_text); None if gone."""
    try:
        with open(f"{PROC}/{pid}/comm", "rb") as f:
            # the kernel ends the name with one newline; a newline of the name's own stays
            raw = f.read(64)
            return faithful_text(raw[:-1] if raw.endswith(b"\n") else raw)
    except OSError:
        return None


def tgid(pid: int) -> Optional[int]:
    """The process (thread group) a thread id belongs to; None if gone."""
    try:
        with open(f"{PROC}/{pid}/status") as f:
            for line in f:
                if line.startswith("Tgid:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


@dataclass(frozen=True)
class ProcSnapshot:
    """One scan of /proc: who held which socket at `taken_at` (monotonic)."""
    taken_at: float
    inodes_by_pid: dict[int, frozenset[int]]  # only pids holding sockets
    fds_by_pid: dict[int, int]  # every scanned pid: open fds
    comm_by_pid: dict[int, str]  # pids holding sockets
    nofile_by_pid: dict[int, Optional[int]]  # pids holding sockets; None: unlimited
    holders: dict[int, tuple[int, ...]] = field(default_factory=dict)  # inode -> pids, ascending
    scan_ms: float = 0.0
    rss_by_pid: dict[int, Optional[int]] = field(default_factory=dict)  # pids holding sockets
    # pids holding sockets and in a memory cgroup (not the root one)
    cgroup_by_pid: dict[int, process_memory.CgroupRef] = field(default_factory=dict)
    cgroups: dict[process_memory.CgroupRef, process_memory.CgroupMemory] = field(
        default_factory=dict)
    mem_total: Optional[int] = None   # the host's RAM, bytes

    def owner(self, inode: int) -> Optional[int]:
        """The lowest pid holding inode, or None."""
        pids = self.holders.get(inode)
        return pids[0] if pids else None


class ProcScanner:
    """Rescans /proc for socket ownership, cheaply enough to run every few
    seconds: every fd table is read each time (nothing in procfs says which
    changed), while the command name, resident memory, memory cgroup and fd
    limit are read only for processes holding sockets, and the limit and
    the cgroup (which a process rarely changes) only every `limits_every`
    scans. A cgroup's use and limit are read once per scan, however many
    processes share it.

    A socket passed to another process (fork, SCM_RIGHTS) is attributed to
    the new holder at the next scan, so the scan period bounds how stale
    that attribution can be. A pid reused within `limits_every` scans shows
    its predecessor's fd limit until the next refresh.
    """

    def __init__(self, pids: Optional[Iterable[int]] = None, limits_every: int = 5):
        self.pids = None if pids is None else sorted(set(pids))
        self.limits_every = max(1, limits_every)
        self._scans = 0
        self._limits: dict[int, Optional[int]] = {}
        self._mem_total: Optional[int] = None
        self._cgroups: dict[int, Optional[process_memory.CgroupRef]] = {}

    def scan(self) -> ProcSnapshot:
        start = time.monotonic()
        refresh_limits = self._scans % self.limits_every == 0
        if refresh_limits or self._mem_total is None:
            self._mem_total = process_memory.mem_total()
        self._scans += 1
        inodes_by_pid: dict[int, frozenset[int]] = {}
        fds: dict[int, int] = {}
        names: dict[int, str] = {}
        rss: dict[int, Optional[int]] = {}
        holders: dict[int, list[int]] = {}
        for pid in (all_pids() if self.pids is None else self.pids):
            scanned = _scan_fd_dir(pid)
            if scanned is None:
                continue
            count, inodes = scanned
            fds[pid] = count
            if not inodes:
                continue
            name = comm(pid)
            if name is None:  # exited during the scan
                del fds[pid]
                continue
            names[pid] = name
            inodes_by_pid[pid] = frozenset(inodes)
            for inode in inodes:
                holders.setdefault(inode, []).append(pid)
            rss[pid] = process_memory.rss_bytes(pid)
            if refresh_limits or pid not in self._limits:
                self._limits[pid] = nofile_limit(pid)
                self._cgroups[pid] = process_memory.memory_cgroup(pid)
        self._limits = {pid: lim for pid, lim in self._limits.items() if pid in names}
        self._cgroups = {pid: ref for pid, ref in self._cgroups.items() if pid in names}
        cgroup_by_pid = {pid: ref for pid, ref in self._cgroups.items() if ref is not None}
        cgroups = {}
        for ref in set(cgroup_by_pid.values()):
            mem = process_memory.cgroup_memory(ref)
            if mem is not None:
                cgroups[ref] = mem
        for pids in holders.values():
            pids.sort()
        end = time.monotonic()
        return ProcSnapshot(
            taken_at=end, inodes_by_pid=inodes_by_pid, fds_by_pid=fds,
            comm_by_pid=names, nofile_by_pid=dict(self._limits),
            holders={inode: tuple(pids) for inode, pids in holders.items()},
            scan_ms=(end - start) * 1000.0, rss_by_pid=rss, cgroup_by_pid=cgroup_by_pid,
            cgroups=cgroups, mem_total=self._mem_total,
        )
