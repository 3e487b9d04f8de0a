"""Listening sockets per interval: queue depth, peaks, drops, accept waits.

Three sources are joined on (family, address, port):
  * the kernel's socket table (sock_diag): current queue, backlog, sk_drops,
    inode (hence owner) -- for every listener, including ones older than us;
  * the BPF `listeners` map: cumulative counters taken at the hooks;
  * accept events: how long each connection waited in the queue.

Drop arithmetic (measured on 6.18; tests/kernel/test_sock_diag.py pins it):
a listener's sk_drops counts every listen drop once, except that an ACK-time
overflow with a request socket (the handshake finished into a full queue) is
counted twice: once in tcp_v4_syn_recv_sock and once more when the packet is
discarded (kfree_skb reason TCP_LISTEN_OVERFLOW). The same overflow for a
SYN-cookie handshake has no request socket, is discarded as NO_SOCKET on the
listener, and is counted once. With R and C those two as seen by BPF:

    ListenDrops share  = d(sk_drops) - R
    drops (ACK time)   = R + C
    syn_drops          = d(sk_drops) - 2R - C

With kprobe/fentry both drop points are hooked directly and the counts are
taken as they are.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from tracer.aggregate.histogram import Histogram
from tracer.aggregate.snapshot import ListenerRow


def split_drops(d_sk_drops: int, d_request_overflows: int, d_cookie_overflows: int = 0
                ) -> tuple[int, int]:
    """(drops, syn_drops) from the change in sk_drops and the ACK-time
    overflows seen by BPF (request-socket ones are in sk_drops twice)."""
    r, c = max(0, d_request_overflows), max(0, d_cookie_overflows)
    return r + c, max(0, d_sk_drops - 2 * r - c)


# Any user can open thousands of listening sockets: past this many the rest
# are summed, per interval, into one "other" row (queues and accepts; their
# drops need a listener's own history, so they are not known), and each is
# counted in `evicted`. Closed listeners leave the table.
MAX_LISTENERS = 4096


@dataclass
class _Listener:
    netns: int
    family: int
    laddr: str
    lport: int
    pid: int | None = None
    comm: str | None = None
    backlog_max: int = 0
    queue_len: int = 0
    syn_queue_len: int | None = None
    sk_drops: int | None = None            # last sock_diag value
    counters: object | None = None         # last ListenerCounters
    drops_total: int = 0
    waits: Histogram = field(default_factory=Histogram)
    accepts_window: int = 0
    seen_now: bool = False


class ListenerTable:
    def __init__(self, drop_points_hooked: bool, max_listeners: int | None = None):
        # kprobe/fentry see both drop points; tracepoints need sk_drops.
        self.drop_points_hooked = drop_points_hooked
        self.max_listeners = max_listeners or MAX_LISTENERS
        self._primed = False
        self._by_key: dict[tuple, _Listener] = {}
        self._other_accepts = 0
        self.evicted_rows = 0   # listener rows summed into "other"

    @property
    def evicted(self) -> dict[str, int]:
        return {"listener rows": self.evicted_rows}

    def _get(self, key: tuple) -> _Listener | None:
        """The listener's entry; None when the table is full."""
        lst = self._by_key.get(key)
        if lst is None:
            if len(self._by_key) >= self.max_listeners:
                return None
            lst = self._by_key[key] = _Listener(*key)
        return lst

    def _listener_of(self, netns: int, family: int, laddr: str, lport: int) -> _Listener | None:
        lst = self._by_key.get((netns, family, laddr, lport))
        if lst is None:
            lst = self._by_key.get((netns, family, "0.0.0.0" if family == 4 else "::", lport))
        return lst

    def prime(self, diag=(), counters=()) -> None:
        """Take the starting values, so the first interval counts only what
        happens in it (sk_drops of old listeners, counters of a reused session).
        diag: (netns inode, listening TcpSocket) pairs."""
        self._primed = True
        for c in counters:
            lst = self._get(c.key)
            if lst is not None:
                lst.counters = c
        for netns, s in diag:
            lst = self._get((netns, s.family, s.saddr, s.sport))
            if lst is None:
                continue
            lst.sk_drops = s.drops
            lst.queue_len = s.rqueue
            lst.backlog_max = s.wqueue

    def add_accept(self, ev) -> None:
        lst = self._listener_of(ev.netns, ev.family, ev.laddr, ev.lport)
        if lst is None:
            lst = self._get((ev.netns, ev.family, ev.laddr, ev.lport))
            if lst is None:
                self._other_accepts += 1
                return
        lst.accepts_window += 1
        wait = ev.queue_wait_us
        if wait is not None:
            lst.waits.add(wait)

    def update(self, seconds: float, diag=(), counters=(), peaks=None,
               owners=None) -> list[ListenerRow]:
        """Close an interval. diag: (netns inode, sock_diag LISTEN socket) pairs
        (sockets have family, saddr, sport, rqueue, wqueue, drops, inode);
        counters: BPF ListenerCounters; peaks: {key: peak}; owners:
        {inode: (pid, comm)}. Keys are (netns, family, laddr, lport)."""
        peaks = peaks or {}
        owners = owners or {}
        for lst in self._by_key.values():
            lst.seen_now = False
        new_drops: dict[tuple, tuple[int, int]] = {}

        prev_counters = {k: v.counters for k, v in self._by_key.items()}
        # Before anything below adds this interval's new listeners: one
        # that is new now has no previous sk_drops, whoever saw it first.
        prev_sk_drops = {k: v.sk_drops for k, v in self._by_key.items()}
        folded: set = set()
        other_queue = other_backlog = 0
        for c in counters:
            lst = self._get(c.key)
            if lst is None:
                folded.add(c.key)
                continue
            lst.counters = c
            lst.seen_now = not c.closed
            if c.pid:
                lst.pid, lst.comm = c.pid, c.comm
            if c.backlog_max:
                lst.backlog_max = c.backlog_max
            lst.syn_queue_len = c.syn_queue_len

        for netns, s in diag:
            key = (netns, s.family, s.saddr, s.sport)
            lst = self._get(key)
            if lst is None:
                folded.add(key)
                other_queue += s.rqueue
                other_backlog += s.wqueue
                continue
            lst.seen_now = True
            lst.queue_len = s.rqueue
            lst.backlog_max = s.wqueue
            lst.sk_drops = s.drops
            owner = owners.get(s.inode)
            if owner:
                lst.pid, lst.comm = owner

        rows = []
        for key, lst in list(self._by_key.items()):
            c, pc = lst.counters, prev_counters.get(key)
            d_ack = (c.ack_overflows - (pc.ack_overflows if pc else 0)) if c else 0
            d_cookie = (c.cookie_overflows - (pc.cookie_overflows if pc else 0)) if c else 0
            d_syn_hook = (c.syn_overflows - (pc.syn_overflows if pc else 0)) if c else 0
            d_synack = (c.synack_retransmits - (pc.synack_retransmits if pc else 0)) if c else 0
            if self.drop_points_hooked:
                drops, syn_drops = d_ack + d_cookie, d_syn_hook
            else:
                # A listener first seen after prime() was opened since: it
                # started from zero drops (treating it as unknown lost ~3 %).
                # (Its entry may exist already without sk_drops: made by BPF's
                # counters or by an accept event earlier in this interval.)
                prev = prev_sk_drops.get(key)
                if prev is None and self._primed:
                    prev = 0
                if lst.sk_drops is not None and prev is not None:
                    drops, syn_drops = split_drops(lst.sk_drops - prev, d_ack, d_cookie)
                else:
                    # First sight of this listener, or not visible to
                    # sock_diag (another network namespace): only what BPF saw.
                    drops, syn_drops = d_ack + d_cookie, 0
            lst.drops_total += drops + syn_drops
            peak = max(peaks.get(key, 0), lst.queue_len)
            rows.append(ListenerRow(
                family=lst.family, laddr=lst.laddr, lport=lst.lport, pid=lst.pid, comm=lst.comm,
                backlog_max=lst.backlog_max, queue_len=lst.queue_len, queue_peak=peak,
                syn_queue_len=lst.syn_queue_len, drops=drops, syn_drops=syn_drops,
                drops_total=lst.drops_total,
                drops_per_s=(drops + syn_drops) / seconds if seconds > 0 else 0.0,
                accepts=lst.accepts_window,
                accept_wait_p50_us=lst.waits.percentile(50),
                accept_wait_p99_us=lst.waits.percentile(99),
                synack_retransmits=d_synack, netns=lst.netns or None, cookie_drops=d_cookie,
            ))
            lst.waits = Histogram()
            lst.accepts_window = 0
            if not lst.seen_now:
                del self._by_key[key]   # closed: its last interval is reported above
        if folded or self._other_accepts:
            self.evicted_rows += len(folded)
            rows.append(ListenerRow(
                family=0, laddr="other", lport=0, pid=None, comm=None,
                backlog_max=other_backlog, queue_len=other_queue, queue_peak=other_queue,
                syn_queue_len=None, drops=0, syn_drops=0, drops_total=0, drops_per_s=0.0,
                accepts=self._other_accepts, accept_wait_p50_us=None, accept_wait_p99_us=None,
                synack_retransmits=0))
            self._other_accepts = 0
        return rows
