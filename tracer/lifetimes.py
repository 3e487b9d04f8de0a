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

from itertools import islice

from tracer import events

# As many open connections as the kernel's own tables hold for us. Past it
# the oldest opens are let go, a sixteenth at a time (a dict keeps insertion
# order, and removing in batches keeps that O(1) per open): their closes will
# not be joined, and each is counted. Letting the oldest go, rather than
# refusing new ones, also clears out opens whose close was lost (ring buffer
# full), which would otherwise fill the table for good.
MAX_OPEN = 262_144
_EARLY_MAX = 65_536   # closes waiting for their open (mostly sockets we never saw open)


class OpenConnections:
    """{kernel socket address: what its open said}, from open to close."""

    __slots__ = ("_open", "_live", "_early", "_early_prev", "untracked")

    def __init__(self):
        # sk -> (key, ts_open_ns); key is (pid, family, raddr, rport) for a
        # connect, the pid alone for an accept.
        self._open: dict[int, tuple] = {}
        # (pid, family, raddr, rport) -> its connections in _open: how many
        # it holds at once, at every open (Closes.peaks). A pool must cover
        # that peak; interval-end scans and Little's law see the mean.
        self._live: dict[tuple, int] = {}
        self._early: dict[int, int] = {}        # sk -> close time, this read
        self._early_prev: dict[int, int] = {}   # ... and the one before
        self.untracked = 0                      # opens let go: table full

    def __len__(self) -> int:
        return len(self._open)

    def connected(self, ev: events.Connect, closes: events.Closes) -> None:
        """A connect() that established (ev.outcome == "established"). Held
        from the connect() call, not from the handshake's end: a pool holds a
        connection while it waits for the SYN-ACK too (Little's law)."""
        self._opened(ev.sk, (ev.pid, ev.family, ev.daddr, ev.dport), ev.ts_start_ns, closes)

    def accepted(self, ev: events.Accept, closes: events.Closes) -> None:
        self._opened(ev.sk, ev.pid, ev.ts_handshake_ns or ev.ts_ns, closes)

    def _opened(self, sk: int, key, ts_open: int, closes: events.Closes) -> None:
        if self._early or self._early_prev:
            ts_close = self._early.pop(sk, None)
            if ts_close is None:
                ts_close = self._early_prev.pop(sk, None)
            # (a close from before this open is an earlier socket's at the same
            # address: kernel addresses are reused within microseconds)
            if ts_close is not None and ts_close >= ts_open:
                _tally(closes, key, ts_open, ts_close)
                return
        table = self._open
        if len(table) >= MAX_OPEN and sk not in table:
            oldest = list(islice(table, max(1, MAX_OPEN // 16)))
            for old in oldest:
                self._let_go(table.pop(old)[0])
            self.untracked += len(oldest)
        replaced = table.get(sk)
        if replaced is not None:   # its close was never seen
            self._let_go(replaced[0])
        table[sk] = (key, ts_open)
        if key.__class__ is tuple:
            live = self._live[key] = self._live.get(key, 0) + 1
            if live > closes.peaks.get(key, 0):
                closes.peaks[key] = live

    def _let_go(self, key) -> None:
        if key.__class__ is tuple:
            n = self._live.get(key, 0) - 1
            if n > 0:
                self._live[key] = n
            else:
                self._live.pop(key, None)

    def closed_at(self, view, offset: int, closes: events.Closes) -> None:
        """A close_event record at `offset` of a buffer. (Half of all records:
        kept to one unpack and one pop.)"""
        r = _CLOSE(view, offset)
        opened = self._open.pop(r[_SK], None)
        if opened is not None:
            key = opened[0]
            if key.__class__ is tuple:
                self._let_go(key)
                lifetimes = closes.active.get(key)
                if lifetimes is None:
                    lifetimes = closes.active[key] = []
                ts = r[_TS]
                lifetimes.append((ts - opened[1]) / 1000.0 if ts > opened[1] else 0.0)
            else:
                closes.passive[key] = closes.passive.get(key, 0) + 1
        elif len(self._early) < _EARLY_MAX:
            self._early[r[_SK]] = r[_TS]

    def end_read(self) -> None:
        """After each read of the buffer: closes without an open wait one
        more read, then are let go (sockets opened before we started, or not
        ones we trace)."""
        self._early_prev, self._early = self._early, {}


_CLOSE = events.CLOSE_UNPACK
_TS, _SK = events.CLOSE_TS, events.CLOSE_SK


def _tally(closes: events.Closes, key, ts_open: int, ts_close: int) -> None:
    if type(key) is tuple:
        closes.add_active(key, max(0, ts_close - ts_open) / 1000.0)
    else:
        closes.add_passive(key)
