"""The kernel's own view of every TCP socket and who holds it: one sock_diag
dump and one /proc scan, exactly what `ss -tanp` reads. Done once per
interval; when a scan gets expensive (thousands of processes) it is spaced
out so that it never takes more than a tenth of the time."""
from __future__ import annotations

import os
import time

from tracer.probes import sock_diag
from tracer.probes.procfs import ProcScanner, ProcSnapshot

MAX_SHARE = 0.10   # of wall time spent scanning
# TIME_WAIT and request sockets belong to no process (inode 0) and can be
# tens of thousands on a busy host: leaving them out made the dump 10x faster.
HELD_STATES = sock_diag.ALL_STATES & ~sock_diag.state_mask(sock_diag.TIME_WAIT, sock_diag.SYN_RECV)


def netns_inode(pid: int | str = "self") -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


NAMED_NETNS = "/run/netns"   # `ip netns add` keeps its namespaces here


def namespaces(pids, named_dir: str = NAMED_NETNS) -> dict[int, str]:
    """{network namespace inode: a path that opens it}: those of running
    processes (containers) and the named ones of `ip netns`, which may hold
    sockets with no process inside."""
    out: dict[int, str] = {}
    for pid in pids:
        ino = netns_inode(pid)
        if ino is not None:
            out.setdefault(ino, f"/proc/{pid}/ns/net")
    try:
        names = os.listdir(named_dir)
    except OSError:
        names = []
    for name in names:
        path = os.path.join(named_dir, name)
        try:
            out.setdefault(os.stat(path).st_ino, path)
        except OSError:
            pass
    return out


def _dump(netns: int, path: str, own: int, states: int) -> list:
    if netns == own:
        return sock_diag.tcp_sockets(states)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:       # the process left, and maybe the namespace with it
        return []
    try:
        return sock_diag.tcp_sockets(states, netns_fd=fd)
    except (OSError, sock_diag.SockDiagError):
        return []
    finally:
        os.close(fd)


LISTEN_ONLY = sock_diag.state_mask(sock_diag.LISTEN)


class SocketTable:
    """Every network namespace that has a process in it (or a name) is read:
    services in containers have their listeners (and sk_drops) there.

    Listeners are read afresh on every call: they are few, the kernel filters
    them by state (~0.1 ms), and drop counts must not go stale. The full
    socket dump and /proc scan are what gets spaced out."""

    def __init__(self):
        self.scanner = ProcScanner()
        self.own_netns = netns_inode() or 0
        self._last: tuple[list, ProcSnapshot] | None = None
        self._next_at = 0.0
        self.last_cost_s = 0.0

    def _spaces(self, snap: ProcSnapshot) -> dict[int, str]:
        spaces = namespaces(snap.fds_by_pid)
        spaces.setdefault(self.own_netns, "/proc/self/ns/net")
        return spaces

    def read(self) -> tuple[list, list, ProcSnapshot, bool]:
        """(listeners, held sockets, proc snapshot, fresh), sockets as
        (netns, TcpSocket) pairs; fresh is False when the previous full scan
        is reused to keep its cost bounded (listeners are always fresh)."""
        now = time.monotonic()
        spaces = None
        if self._last is None or now >= self._next_at:
            t0 = time.monotonic()
            snap = self.scanner.scan()
            spaces = self._spaces(snap)
            sockets = [(netns, s) for netns, path in spaces.items()
                       for s in _dump(netns, path, self.own_netns, HELD_STATES)
                       if s.state != sock_diag.LISTEN]
            self.last_cost_s = time.monotonic() - t0
            self._next_at = now + self.last_cost_s / MAX_SHARE
            self._last = (sockets, snap)
            fresh = True
        else:
            fresh = False
        sockets, snap = self._last
        # the namespaces just listed for a fresh scan (a stat of every pid's)
        if spaces is None:
            spaces = self._spaces(snap)
        listeners = [(netns, s) for netns, path in spaces.items()
                     for s in _dump(netns, path, self.own_netns, LISTEN_ONLY)]
        return listeners, sockets, snap, fresh
