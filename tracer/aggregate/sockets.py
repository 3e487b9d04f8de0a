"""Per-process TCP sockets per interval: what each process holds (by state,
from the kernel's socket table joined with /proc, exactly as ss -tanp does),
how fast it opens and closes connections (from BPF events), how long it
keeps them, and what pool would serve it. Pure state."""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from tracer.aggregate.histogram import Histogram
from tracer.aggregate.snapshot import PoolAdvice, ProcessRow
from tracer.domain import memory as mem, pools, tcp_memory
from tracer.domain.addresses import endpoint
from tracer.domain import outcomes
from tracer.events import Accept, Connect

# TCP state numbers (include/net/tcp_states.h)
ESTABLISHED, SYN_SENT, LISTEN, CLOSE_WAIT = 1, 2, 10, 8
WINDOW = pools.WINDOW    # intervals of history behind the advice
# Flows (process x remote) and processes are other users' to create: past
# these bounds new flows are summed into one "other" flow (pid OTHER_PID) and
# the least busy processes of an interval into one "other" row, counted in
# `evicted`. Flows also expire: one with nothing in its window is forgotten.
MAX_FLOWS = 4096
MAX_PROCESSES = 4096
OTHER_PID = 0
OTHER_REMOTE = (0, "other", 0)


@dataclass
class Holding:
    """What one process holds at one scan."""

    comm: str
    established: int = 0
    syn_sent: int = 0
    listen: int = 0
    close_wait: int = 0
    other: int = 0
    tx_queue_bytes: int = 0
    rx_queue_bytes: int = 0
    fds: int | None = None
    fd_limit: int | None = None
    rss_bytes: int | None = None            # resident memory (VmRSS)
    cgroup_memory_bytes: int | None = None  # its memory cgroup's use; None: root or none
    memory_limit_bytes: int | None = None   # what is available to it (domain.memory.available)
    memory_limit_from: str | None = None    # "cgroup" or "host"
    listen_backlog: int = 0                 # backlog maxima of its listeners, summed
    # socket memory the kernel charged to its TCP sockets (ss -tm skmem r and
    # w): received data waiting for the application, sent data not yet acked;
    # None where the kernel sent no meminfo
    socket_rmem_bytes: int | None = None
    socket_wmem_bytes: int | None = None
    by_remote: dict = field(default_factory=dict)   # (family, raddr, rport) -> established


def tally(sockets, holders: dict[int, tuple[int, ...]], comms: dict[int, str],
          fds: dict[int, int], limits: dict[int, int | None],
          memory: dict[int, tuple] | None = None,
          mem_total: int | None = None) -> dict[int, Holding]:
    """Join the socket table with /proc: a socket counts once for every
    process that holds it (after fork both do; dup'ed fds count once).
    memory: pid -> (resident bytes, its cgroup's use, its cgroup's limit),
    each None if unknown; mem_total: the host's RAM."""
    memory = memory or {}
    # An accepted connection has a listener's port as its local port; it is
    # not one the process opened, so it is no pool's (by_remote), else a
    # server would get one "pooled" flow per client port.
    listening = {s.sport for s in sockets if s.state == LISTEN}
    out: dict[int, Holding] = {}
    for s in sockets:
        for pid in holders.get(s.inode, ()) if s.inode else ():
            h = out.get(pid)
            if h is None:
                rss, cg_used, cg_limit = memory.get(pid, (None, None, None))
                avail, source = mem.available(cg_limit, mem_total)
                h = out[pid] = Holding(comms.get(pid, "?"), fds=fds.get(pid),
                                       fd_limit=limits.get(pid), rss_bytes=rss,
                                       cgroup_memory_bytes=cg_used, memory_limit_bytes=avail,
                                       memory_limit_from=source if avail else None)
            if s.state == ESTABLISHED:
                h.established += 1
                if s.sport not in listening:
                    key = (s.family, s.daddr, s.dport)
                    h.by_remote[key] = h.by_remote.get(key, 0) + 1
            elif s.state == SYN_SENT:
                h.syn_sent += 1
            elif s.state == LISTEN:
                h.listen += 1
                h.listen_backlog += s.wqueue   # a listener's Send-Q is its backlog
                continue   # a listener's queues are not buffer bytes
            elif s.state == CLOSE_WAIT:
                h.close_wait += 1
            else:
                h.other += 1
            h.tx_queue_bytes += s.wqueue
            h.rx_queue_bytes += s.rqueue
            if s.rmem_alloc is not None:
                h.socket_rmem_bytes = (h.socket_rmem_bytes or 0) + s.rmem_alloc
            if s.wmem_queued is not None:
                h.socket_wmem_bytes = (h.socket_wmem_bytes or 0) + s.wmem_queued
    return out


@dataclass
class _Flow:
    """One process talking to one remote endpoint."""

    opens: deque = field(default_factory=lambda: deque(maxlen=WINDOW))     # per interval
    seconds: deque = field(default_factory=lambda: deque(maxlen=WINDOW))
    held: deque = field(default_factory=lambda: deque(maxlen=WINDOW))      # scan samples
    # Lifetimes (µs) of the connections that closed, per interval: hold times
    # cover the same window as the rates they are multiplied with.
    lifetimes: deque = field(default_factory=lambda: deque(maxlen=WINDOW))
    # Most connections open at once in each interval, from the opens and
    # closes themselves (a scan at the interval's end sees one moment).
    peaks: deque = field(default_factory=lambda: deque(maxlen=WINDOW))
    connect: Histogram = field(default_factory=Histogram)
    opens_now: int = 0
    peak_now: int = 0
    lifetimes_now: Histogram = field(default_factory=Histogram)

    def hold_times(self) -> Histogram:
        out = Histogram()
        for h in self.lifetimes:
            if h.count:
                out.merge(h)
        return out


class ProcessTable:
    def __init__(self, max_flows: int | None = None, max_processes: int | None = None):
        self.max_flows = max_flows or MAX_FLOWS
        self.max_processes = max_processes or MAX_PROCESSES
        self._flows: dict[int, dict[tuple, _Flow]] = {}   # pid -> (family, raddr, rport) -> flow
        self._n_flows = 0
        self._opened: dict[int, int] = {}
        self._closed: dict[int, int] = {}
        self._comm: dict[int, str] = {}   # of pids with flows or active in the interval
        self._scanned_at: float | None = None
        # pid -> (interval ends in a row with unread data never shrinking, rx then)
        self._unread: dict[int, tuple[int, int]] = {}
        self.evicted_flows = 0       # flow updates summed into the "other" flow
        self.evicted_processes = 0   # process rows summed into the "other" row

    @property
    def evicted(self) -> dict[str, int]:
        return {"flows": self.evicted_flows, "process rows": self.evicted_processes}

    def _flow(self, pid: int, key: tuple) -> _Flow:
        flows = self._flows.get(pid)
        f = flows.get(key) if flows is not None else None
        if f is None:
            if self._n_flows >= self.max_flows and pid != OTHER_PID:
                self.evicted_flows += 1
                self._comm[OTHER_PID] = "other"
                return self._flow(OTHER_PID, OTHER_REMOTE)
            if flows is None:
                flows = self._flows[pid] = {}
            f = flows[key] = _Flow()
            self._n_flows += 1
        return f

    def opened(self, pid: int, comm: str, remote: tuple | None,
               connect_us: float | None = None) -> None:
        """A connection opened by pid: remote=(family, addr, port) for one it
        connected, None for one it accepted (counted, but pools are about
        the connections a process opens)."""
        self._opened[pid] = self._opened.get(pid, 0) + 1
        self._comm[pid] = comm
        if remote is None:
            return
        f = self._flow(pid, remote)
        f.opens_now += 1
        if connect_us is not None:
            f.connect.add(connect_us)

    def opened_by(self, ev) -> None:
        """opened() of one decoded event: every accept, and every connect
        once established (with its handshake time); anything else passed over."""
        if isinstance(ev, Connect):
            if ev.outcome == outcomes.ESTABLISHED:
                self.opened(ev.pid, ev.comm, (ev.family, ev.daddr, ev.dport), ev.latency_us)
        elif isinstance(ev, Accept):
            self.opened(ev.pid, ev.comm, None)

    def opened_sums(self, opened: dict, flows: dict) -> bool:
        """opened() of a poll's connections at once (tracer/aggregate/tally.py):
        opened {pid: [n, its last comm]}, flows {(pid, family, raddr, rport):
        [n, their connect latencies but None]} of those it connected, each in
        the order first seen. False, and nothing done, when a new flow could
        be evicted."""
        if self._n_flows + len(flows) > self.max_flows:
            return False
        counts, comms = self._opened, self._comm
        for pid, (n, comm) in opened.items():
            counts[pid] = counts.get(pid, 0) + n
            comms[pid] = comm
        for (pid, family, raddr, rport), (n, latencies) in flows.items():
            f = self._flow(pid, (family, raddr, rport))
            f.opens_now += n
            f.connect.add_all(latencies)
        return True

    def closed(self, ev) -> None:
        """One connection closed (a decoded tracer.events.Close)."""
        self._closed[ev.pid] = self._closed.get(ev.pid, 0) + 1
        if not ev.passive:   # pools are about connections a process opens
            self._flow(ev.pid, (ev.family, ev.raddr, ev.rport)).lifetimes_now.add(ev.lifetime_us)

    def add_closes(self, closes) -> None:
        """Closes tallied while reading (tracer.events.Closes)."""
        for pid, n in closes.passive.items():
            self._closed[pid] = self._closed.get(pid, 0) + n
        for (pid, family, raddr, rport), peak in getattr(closes, "peaks", {}).items():
            f = self._flow(pid, (family, raddr, rport))
            if peak > f.peak_now:
                f.peak_now = peak
        for (pid, family, raddr, rport), lifetimes in closes.active.items():
            self._closed[pid] = self._closed.get(pid, 0) + len(lifetimes)
            self._flow(pid, (family, raddr, rport)).lifetimes_now.add_all(lifetimes)

    def _advice(self, pid: int) -> tuple[PoolAdvice, ...]:
        out = []
        for (family, raddr, rport), f in self._flows.get(pid, {}).items():
            lifetimes = f.hold_times()
            held = list(f.held)
            if not (any(f.opens) or any(held)):
                continue
            d = pools.demand(
                sum(f.opens), sum(f.seconds),
                lifetimes.mean / 1e6 if lifetimes.count else None,
                lifetimes.percentile(50) / 1e6 if lifetimes.count else None, held,
                f.connect.percentile(50) / 1e6 if f.connect.count else None, list(f.peaks))
            out.append(PoolAdvice(
                destination=endpoint(raddr, rport, family), arrival_per_s=d.arrival_per_s,
                hold_s=d.hold_s or 0.0, concurrency_mean=d.concurrency_mean,
                concurrency_p99=d.concurrency_p99, concurrency_peak=d.concurrency_peak,
                recommended=d.recommended, in_use=d.in_use, verdict=d.verdict,
                window_s=d.window_s))
        out.sort(key=lambda a: -a.arrival_per_s)
        return tuple(out[:10])

    def update(self, seconds: float, holdings: dict[int, Holding],
               scanned_at: float | None = None) -> list[ProcessRow]:
        """Close an interval with the latest scan. scanned_at: when that scan
        was taken; one already seen (SocketTable reuses a scan that is
        expensive to repeat) adds no sample of what is held, else an old
        picture would count again, even from before a flow began."""
        fresh = scanned_at is None or scanned_at != self._scanned_at
        self._scanned_at = scanned_at
        if fresh:   # bounded by the processes of this scan
            self._unread = {pid: (tcp_memory.unread_streak(*self._unread.get(pid, (0, None)),
                                                           h.rx_queue_bytes), h.rx_queue_bytes)
                            for pid, h in holdings.items()}
        for pid, h in holdings.items():   # flows seen only by the scan (pooled, or older than us)
            for key in h.by_remote:
                self._flow(pid, key)
        for pid, flows in self._flows.items():
            h = holdings.get(pid)
            for key, f in flows.items():
                f.opens.append(f.opens_now)
                f.peaks.append(f.peak_now)
                f.peak_now = 0
                f.seconds.append(seconds)
                f.lifetimes.append(f.lifetimes_now)
                f.opens_now = 0
                f.lifetimes_now = Histogram()
                if fresh:
                    f.held.append(h.by_remote.get(key, 0) if h else 0)
        rows = []
        pids = set(holdings) | set(self._opened) | set(self._closed)
        if OTHER_PID in self._flows:
            pids.add(OTHER_PID)
        folded = None
        if len(pids) > self.max_processes:
            # the busiest keep their rows: most sockets, then most opens and closes
            def busy(pid):
                h = holdings.get(pid)
                return ((h.established + h.syn_sent + h.listen + h.close_wait + h.other) if h
                        else 0, self._opened.get(pid, 0) + self._closed.get(pid, 0))
            ranked = sorted(pids - {OTHER_PID}, key=busy, reverse=True)
            keep = set(ranked[:self.max_processes - 1])
            folded = pids - keep - {OTHER_PID}
            self.evicted_processes += len(folded)
            pids = keep | {OTHER_PID}
        for pid in pids:
            h = holdings.get(pid) or Holding(self._comm.get(pid, "?"))
            advice = self._advice(pid)
            rows.append(ProcessRow(
                pid=pid, comm=h.comm if h.comm != "?" else self._comm.get(pid, "?"),
                established=h.established, syn_sent=h.syn_sent, listen=h.listen,
                close_wait=h.close_wait, other=h.other,
                opened_per_s=self._opened.get(pid, 0) / seconds if seconds > 0 else 0.0,
                closed_per_s=self._closed.get(pid, 0) / seconds if seconds > 0 else 0.0,
                fds=h.fds, fd_limit=h.fd_limit, tx_queue_bytes=h.tx_queue_bytes,
                rx_queue_bytes=h.rx_queue_bytes,
                churning=any(a.verdict.startswith("churning") for a in advice),
                advice=advice,
                opened=self._opened.get(pid, 0), closed=self._closed.get(pid, 0),
                rss_bytes=h.rss_bytes, cgroup_memory_bytes=h.cgroup_memory_bytes,
                memory_limit_bytes=h.memory_limit_bytes, memory_limit_from=h.memory_limit_from,
                listen_backlog=h.listen_backlog, socket_rmem_bytes=h.socket_rmem_bytes,
                socket_wmem_bytes=h.socket_wmem_bytes,
                unread_intervals=self._unread.get(pid, (0, 0))[0],
            ))
        if folded is not None:
            rows = [r for r in rows if r.pid != OTHER_PID]
            rows.append(self._other_row(seconds, folded, holdings))
        self._opened, self._closed = {}, {}
        # forget flows with nothing left in the window
        for pid in list(self._flows):
            flows = self._flows[pid]
            for key in [k for k, f in flows.items() if not any(f.opens) and not any(f.held)
                        and not any(f.peaks)
                        and not any(h.count for h in f.lifetimes)]:
                del flows[key]
                self._n_flows -= 1
            if not flows:
                del self._flows[pid]
        self._comm = {pid: c for pid, c in self._comm.items() if pid in self._flows}
        return rows

    def _other_row(self, seconds: float, pids, holdings: dict[int, Holding]) -> ProcessRow:
        """The processes that did not get rows of their own, summed."""
        hs = [holdings[p] for p in pids if p in holdings]
        opened = sum(self._opened.get(p, 0) for p in pids)
        closed = sum(self._closed.get(p, 0) for p in pids)
        advice = self._advice(OTHER_PID)
        return ProcessRow(
            pid=OTHER_PID, comm="other", established=sum(h.established for h in hs),
            syn_sent=sum(h.syn_sent for h in hs), listen=sum(h.listen for h in hs),
            close_wait=sum(h.close_wait for h in hs), other=sum(h.other for h in hs),
            opened_per_s=opened / seconds if seconds > 0 else 0.0,
            closed_per_s=closed / seconds if seconds > 0 else 0.0,
            fds=None, fd_limit=None, tx_queue_bytes=sum(h.tx_queue_bytes for h in hs),
            rx_queue_bytes=sum(h.rx_queue_bytes for h in hs),
            churning=any(a.verdict.startswith("churning") for a in advice), advice=advice,
            opened=opened, closed=closed,
            # the sum of their resident memory over the sum of their connections
            rss_bytes=sum(h.rss_bytes for h in hs if h.rss_bytes is not None) if hs else None)
