"""The kernel's own view of every TCP socket and who holds it: one sock_diag
dump and one /proc scan, exactly what `ss -tanp` reads. Done once per
interval; when a scan gets expensive (thousands of processes) it is spaced
out so that it never takes more than a tenth of the time."""
from __future__ import annotations

import time

from tracer.probes import sock_diag
from tracer.probes.procfs import ProcScanner, ProcSnapshot

MAX_SHARE = 0.10   # of wall time spent scanning
# TIME_WAIT and request sockets belong to no process (inode 0) and can be
# tens of thousands on a busy host: leaving them out made the dump 10x faster.
HELD_STATES = sock_diag.ALL_STATES & ~sock_diag.state_mask(sock_diag.TIME_WAIT, sock_diag.SYN_RECV)


class SocketTable:
    def __init__(self):
        self.scanner = ProcScanner()
        self._last: tuple[list, ProcSnapshot] | None = None
        self._next_at = 0.0
        self.last_cost_s = 0.0

    def read(self) -> tuple[list, ProcSnapshot, bool]:
        """(sockets, proc snapshot, fresh): fresh is False when the previous
        scan is reused to keep the cost bounded."""
        now = time.monotonic()
        if self._last is not None and now < self._next_at:
            return (*self._last, False)
        t0 = time.monotonic()
        sockets = sock_diag.tcp_sockets(HELD_STATES)
        snap = self.scanner.scan()
        self.last_cost_s = time.monotonic() - t0
        self._next_at = now + self.last_cost_s / MAX_SHARE
        self._last = (sockets, snap)
        return sockets, snap, True

    @staticmethod
    def listeners(sockets) -> list:
        return [s for s in sockets if s.state == sock_diag.LISTEN]
