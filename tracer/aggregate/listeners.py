"""Listening sockets per interval: queue depth, peaks, drops, accept waits.

A listener is its key (netns, family, address, port; tracer/domain/listeners.py).
The members of an SO_REUSEPORT group are separate sockets with the same key:
each is counted on its own (kernel counters per socket, sock_diag's sk_drops
per socket cookie) and the differences are summed per key, so a member that
comes or goes (a reload) neither restarts the key's counts nor makes them
negative. Three sources are joined on the key:
  * the kernel's socket table (sock_diag): current queue, backlog, sk_drops,
    inode (hence owner) -- for every listener, including ones older than us;
  * the BPF `listeners` map: cumulative counters per socket taken at the
    hooks, and the last sk_drops of a socket that closed;
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

A socket's sk_drops is read at the end of each interval; one that closes
in between leaves its last value in the BPF map (taken at close), matched by
socket cookie. Where that is missing (the map entry was never made, e.g. a
listener older than us that closed without any hook seeing it) the drops of
its last interval are unknown and the listener is counted in
`evicted["listeners closed unread"]`, shown with the other losses. A
listener sock_diag never lists (its namespace out of sight: held by sockets
alone, or by one thread of a process living elsewhere) counts only what BPF
saw while open; its SYN-time drops come in at close, from that last value,
when BPF saw its listen() (else the value holds drops from before we began).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from tracer.aggregate.histogram import Histogram
from tracer.aggregate.snapshot import ListenerRow, label_namespaces
from tracer.domain.listeners import listener_key, listener_of_accept, member_delta


def split_drops(d_sk_drops: int, d_request_overflows: int, d_cookie_overflows: int = 0
                ) -> tuple[int, int]:
    """(drops, syn_drops) from the change in sk_drops and the ACK-time
    overflows seen by BPF (request-socket ones are in sk_drops twice)."""
    drops, syn_drops, _ = split_drops_carried(d_sk_drops, d_request_overflows, d_cookie_overflows)
    return drops, syn_drops


def split_drops_carried(d_sk_drops: int, d_request_overflows: int, d_cookie_overflows: int,
                        carry: int = 0) -> tuple[int, int, int]:
    """split_drops, exact over intervals: (drops, syn_drops, carry). sk_drops
    (sock_diag) and the overflow counters (BPF) are read one after the other,
    so an overflow between the two reads is in one interval's counters and
    the next interval's sk_drops: SYN drops would come out negative in one
    and too many in the other. What is short is carried to the next
    interval (carry <= 0) instead of being lost to a clamp at zero."""
    r, c = max(0, d_request_overflows), max(0, d_cookie_overflows)
    syn = d_sk_drops - 2 * r - c + carry
    return r + c, max(0, syn), min(0, syn)


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
    drops_total: int = 0
    syn_carry: int = 0       # see split_drops_carried
    waits: Histogram = field(default_factory=Histogram)
    accepts_window: int = 0
    seen_now: bool = False


_COUNTERS = ("ack_overflows", "cookie_overflows", "syn_overflows", "synack_retransmits")


class ListenerTable:
    def __init__(self, drop_points_hooked: bool, max_listeners: int | None = None):
        # kprobe/fentry see both drop points; tracepoints need sk_drops.
        self.drop_points_hooked = drop_points_hooked
        self.max_listeners = max_listeners or MAX_LISTENERS
        self._primed = False
        self._by_key: dict[tuple, _Listener] = {}
        # An accept's (netns, family, laddr, lport) -> the listener it resolved
        # to (listener_of_accept, _get: ~2 µs an accept). Emptied whenever
        # _by_key gains or loses a key, the only thing that can change the
        # answer; bounded as _by_key is.
        self._accept_cache: dict[tuple, _Listener] = {}
        # Per socket, bounded by the kernel map (BPF) and by _by_key (sock_diag):
        self._members: dict[int, object] = {}            # sk address -> last ListenerCounters
        self._old_members: set[int] = set()              # sk addresses open before prime()
        self._sk_drops: dict[int, tuple[tuple, int]] = {}  # cookie -> (key, last sk_drops)
        self._other_accepts = 0
        self.evicted_rows = 0     # listener rows summed into "other"
        self.closed_unread = 0    # listeners whose last interval's sk_drops are unknown

    @property
    def evicted(self) -> dict[str, int]:
        out = {"listener rows": self.evicted_rows}
        if self.closed_unread:
            out["listeners closed unread"] = self.closed_unread
        return out

    def _get(self, key: tuple) -> _Listener | None:
        """The listener's entry; None when the table is full."""
        key = listener_key(*key)
        lst = self._by_key.get(key)
        if lst is None:
            if len(self._by_key) >= self.max_listeners:
                return None
            lst = self._by_key[key] = _Listener(*key)
            self._accept_cache.clear()
        return lst

    def prime(self, diag=(), counters=()) -> None:
        """Take the starting values, so the first interval counts only what
        happens in it (sk_drops of old listeners, counters of a reused session).
        diag: (netns inode, listening TcpSocket) pairs."""
        self._primed = True
        for c in counters:
            self._members[c.sk] = c
            if not c.closed:
                self._old_members.add(c.sk)
        for netns, s in diag:
            lst = self._get((netns, s.family, s.saddr, s.sport))
            if lst is None:
                continue
            if s.drops is not None:
                self._sk_drops[s.cookie] = (listener_key(netns, s.family, s.saddr, s.sport),
                                            s.drops)
            lst.queue_len = s.rqueue
            lst.backlog_max = s.wqueue

    def add_accept(self, ev) -> None:
        raw = (ev.netns, ev.family, ev.laddr, ev.lport)
        lst = self._accept_cache.get(raw)
        if lst is None:
            lst = self._get(listener_of_accept(self._by_key, *raw))
            if lst is None:
                self._other_accepts += 1
                return
            if len(self._accept_cache) >= 4 * self.max_listeners:
                self._accept_cache.clear()
            self._accept_cache[raw] = lst
        lst.accepts_window += 1
        wait = ev.queue_wait_us
        if wait is not None:
            lst.waits.add(wait)

    def add_accept_sums(self, sums: dict) -> bool:
        """add_accept() of a poll's accepts, a key at a time: {(netns,
        family, laddr, lport): [n, their queue_wait_us but None]}
        (tracer/aggregate/tally.py). False, and nothing done, unless each
        key's listener is already known and no two keys share one (the
        waits of one listener are then added in the order they came)."""
        cache = self._accept_cache
        found = [cache.get(raw) for raw in sums]
        if any(lst is None for lst in found) or len({id(lst) for lst in found}) < len(found):
            return False
        for lst, (n, waits) in zip(found, sums.values()):
            lst.accepts_window += n
            lst.waits.add_all(waits)
        return True

    def _counter_deltas(self, counters) -> dict[tuple, list[int]]:
        """key -> [ack, cookie, syn, synack] added since the last read, summed
        over the key's sockets. A socket not seen before counts from zero
        (the kernel made its entry after prime()); a closed one is forgotten
        once read (the kernel removes its entry)."""
        out: dict[tuple, list[int]] = {}
        for c in counters:
            prev = self._members.get(c.sk)
            if prev is None and not self._primed:
                self._members[c.sk] = c
                continue
            d = out.setdefault(listener_key(*c.key), [0, 0, 0, 0])
            for i, name in enumerate(_COUNTERS):
                d[i] += member_delta(getattr(c, name),
                                     getattr(prev, name) if prev is not None else None)
            if c.closed:
                self._members.pop(c.sk, None)
                self._old_members.discard(c.sk)
            else:
                self._members[c.sk] = c
        return out

    def _sk_drops_deltas(self, diag, counters) -> dict[tuple, int]:
        """key -> d(sk_drops) summed over the key's sockets, for keys whose
        every socket's change is known (the others are left out: only what
        BPF saw is counted for them)."""
        # The last sk_drops of the socket that closed at each address; kept
        # in the entry also after a new listener took the address (matched
        # once: its cookie is then no longer followed).
        final = {c.cookie: c for c in counters if c.cookie}
        current: dict[int, tuple[tuple, int | None]] = {}
        for netns, s in diag:
            current[s.cookie] = (listener_key(netns, s.family, s.saddr, s.sport), s.drops)
        out: dict[tuple, int] = {}
        unknown: set = set()
        matched: set = set()
        for cookie in set(current) | set(self._sk_drops):
            key, prev = self._sk_drops.pop(cookie, (None, None))
            c = final.get(cookie)
            if c is not None and (c.closed or cookie not in current):
                # closed since (maybe after the scan): its final value
                key, now, still_open = listener_key(*c.key), c.drops_at_close, False
                matched.add(cookie)
            elif cookie in current:
                key, now = current[cookie]
                still_open = True
            else:                           # gone, and its last value with it
                self.closed_unread += 1
                unknown.add(key)
                continue
            if key not in self._by_key:
                continue                    # folded into "other": not followed
            if now is None:
                unknown.add(key)            # the kernel sent no meminfo
                continue
            if still_open:
                self._sk_drops[cookie] = (key, now)
            if prev is None and not self._primed:
                unknown.add(key)            # first sight: its past is not this interval's
                continue
            out[key] = out.get(key, 0) + member_delta(now, 0 if prev is None else prev)
        # Closed and never listed by sock_diag (opened and closed within one
        # interval, or in a namespace it cannot read): its sk_drops at close
        # are its whole life's. They are ours when BPF saw its listen() (the
        # owner is known only from there) and it was not open at prime();
        # otherwise they hold drops from before we started. Its earlier
        # intervals counted only what BPF saw: what they reported (twice per
        # request-socket overflow, as sk_drops counts it) is taken off, so
        # the split leaves its SYN-time drops, all of them, to this interval.
        # Closed entries are read once (the session removes them).
        for c in counters:
            if not c.closed or (c.cookie and c.cookie in matched):
                continue
            key = listener_key(*c.key)
            if key not in self._by_key or not self._primed:
                continue
            if c.sk in self._old_members or not c.pid:
                unknown.add(key)
                continue
            prev = self._members.get(c.sk)
            reported = 0 if prev is None else 2 * prev.ack_overflows + prev.cookie_overflows
            out[key] = out.get(key, 0) + c.drops_at_close - reported
        for key in unknown:
            out.pop(key, None)
        return out

    def update(self, seconds: float, diag=(), counters=(), peaks=None,
               owners=None) -> list[ListenerRow]:
        """Close an interval. diag: (netns inode, sock_diag LISTEN socket) pairs
        (sockets have family, saddr, sport, rqueue, wqueue, drops, inode,
        cookie); counters: BPF ListenerCounters, one per socket; peaks:
        {key: peak}; owners: {inode: (pid, comm)}. Keys are (netns, family,
        laddr, lport)."""
        peaks = peaks or {}
        owners = owners or {}
        for lst in self._by_key.values():
            lst.seen_now = False
            lst.queue_len = 0
        folded: set = set()
        other_queue = other_backlog = 0

        for c in counters:
            lst = self._get(c.key)
            if lst is None:
                folded.add(c.key)
                continue
            if c.closed:
                continue
            lst.seen_now = True
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
            # SO_REUSEPORT members each have a queue: the fullest one is what
            # comes near its backlog (and drops).
            lst.seen_now = True
            lst.queue_len = max(lst.queue_len, s.rqueue)
            lst.backlog_max = s.wqueue
            owner = owners.get(s.inode)
            if owner:
                lst.pid, lst.comm = owner

        # (sk_drops first: it needs to know which sockets were open at prime())
        sk_drops = {} if self.drop_points_hooked else self._sk_drops_deltas(diag, counters)
        bpf = self._counter_deltas(counters)

        rows = []
        for key, lst in list(self._by_key.items()):
            d_ack, d_cookie, d_syn_hook, d_synack = bpf.get(key, (0, 0, 0, 0))
            if self.drop_points_hooked:
                drops, syn_drops = d_ack + d_cookie, d_syn_hook
            elif key in sk_drops:
                drops, syn_drops, lst.syn_carry = split_drops_carried(
                    sk_drops[key], d_ack, d_cookie, lst.syn_carry)
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
                self._accept_cache.clear()
        if folded or self._other_accepts:
            self.evicted_rows += len(folded)
            rows.append(ListenerRow(
                family=0, laddr="other", lport=0, pid=None, comm=None,
                backlog_max=other_backlog, queue_len=other_queue, queue_peak=other_queue,
                syn_queue_len=None, drops=0, syn_drops=0, drops_total=0, drops_per_s=0.0,
                accepts=self._other_accepts, accept_wait_p50_us=None, accept_wait_p99_us=None,
                synack_retransmits=0))
            self._other_accepts = 0
        return label_namespaces(rows)
