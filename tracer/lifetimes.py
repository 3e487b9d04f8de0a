"""Connection lifetimes: the kernel's close records joined with the opens.

When a TCP socket reaches CLOSE the kernel sends only the socket's address
and the time (bpf/sockets.h). Who opened it, to where and when were in the
connect or accept event of the same socket, which arrived earlier; this
table keeps them from the open to the close. Keeping it here instead of in a
kernel map takes a map insert, lookup and delete off every connection in the
traced processes' context.

Order: the ring buffer delivers records in the order they were written, so
an open comes before its close, with two exceptions this handles: a peer can
close an accepted connection before accept() returns it (the close is then
written first), and the per-CPU perf buffers of old kernels are read one CPU
after the other. A close with no open is kept for two reads; an open that
finds one from after its own start is counted closed at once.
"""
from __future__ import annotations

from tracer import events

# As many open connections as the kernel's own tables hold for us; past it
# a connection's close is not joined, and that is counted.
MAX_OPEN = 262_144
_EARLY_MAX = 65_536


class OpenConnections:
    """{kernel socket address: what its open said}, from open to close."""

    __slots__ = ("_open", "_early", "_early_prev", "untracked")

    def __init__(self):
        # sk -> (key, ts_open_ns); key is (pid, family, raddr, rport) for a
        # connect, the pid alone for an accept.
        self._open: dict[int, tuple] = {}
        self._early: dict[int, int] = {}        # sk -> close time, this read
        self._early_prev: dict[int, int] = {}   # ... and the one before
        self.untracked = 0                      # opens not kept: table full

    def __len__(self) -> int:
        return len(self._open)

    def connected(self, ev: events.Connect, closes: events.Closes) -> None:
        """A connect() that established (ev.outcome == "established")."""
        self._opened(ev.sk, (ev.pid, ev.family, ev.daddr, ev.dport), ev.ts_end_ns, closes)

    def accepted(self, ev: events.Accept, closes: events.Closes) -> None:
        self._opened(ev.sk, ev.pid, ev.ts_handshake_ns or ev.ts_ns, closes)

    def _opened(self, sk: int, key, ts_open: int, closes: events.Closes) -> None:
        ts_close = self._early.pop(sk, None)
        if ts_close is None:
            ts_close = self._early_prev.pop(sk, None)
        # (a close from before this open is an earlier socket's at the same
        # address: kernel addresses are reused within microseconds)
        if ts_close is not None and ts_close >= ts_open:
            _tally(closes, key, ts_open, ts_close)
            return
        if len(self._open) >= MAX_OPEN and sk not in self._open:
            self.untracked += 1
            return
        self._open[sk] = (key, ts_open)

    def closed_at(self, view, offset: int, closes: events.Closes) -> None:
        """A close_event record at `offset` of a buffer."""
        sk, ts = events.close_at(view, offset)
        opened = self._open.pop(sk, None)
        if opened is not None:
            _tally(closes, opened[0], opened[1], ts)
        elif len(self._early) < _EARLY_MAX:
            self._early[sk] = ts

    def end_read(self) -> None:
        """After each read of the buffer: closes without an open wait one
        more read, then are let go (sockets opened before we started, or not
        ones we trace)."""
        self._early_prev, self._early = self._early, {}


def _tally(closes: events.Closes, key, ts_open: int, ts_close: int) -> None:
    if type(key) is tuple:
        closes.add_active(key, max(0, ts_close - ts_open) / 1000.0)
    else:
        closes.add_passive(key)
