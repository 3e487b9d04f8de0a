"""Synthetic Snapshots for the TUI tests: deterministic (fixed seed, fixed
clock, fixed host names), built as the live collector builds them (ConnectTable,
NotableLog, rolled once per interval), so percentiles, histories and log lines
are the real ones.

The scene: a slow database (p99 spikes, SYN retransmits), a refusing cache,
a black-holed host (timeouts), a healthy API; a listener whose accept queue
overflows; a churning process, one near its fd limit, one leaking CLOSE_WAIT.
`scenario(extra_destinations=10_000, extra_processes=2_000)` is the large variant.
"""
from __future__ import annotations

import random
from dataclasses import replace

from tracer.aggregate.connects import ConnectTable
from tracer.aggregate.edges import EdgeTable
from tracer.aggregate.sockets import Holding
from tracer.aggregate.histogram import Histogram
from tracer.aggregate.notable import NotableLog
from tracer.aggregate.snapshot import Header, ListenerRow, PoolAdvice, ProcessRow, Snapshot
from tracer.events import Connect

T0_US = 1_767_225_600_000_000        # 2026-01-01 00:00:00 UTC
MONO0_NS = 10_000_000_000

HEADER = Header(host="web-1", kernel="6.18.0-test", backend="tracepoint",
                blind_spots=("accept-queue wait",), recording_path="/var/tmp/incident",
                source="live")

SLOW_DB = ("10.0.0.10", 5432)
REFUSING = ("10.0.0.20", 6379)
BLACKHOLE = ("10.0.0.40", 80)
HEALTHY = ("10.0.0.30", 443)
OVERFLOWING = ("0.0.0.0", 8080)
SPIKE_INTERVAL = 20


def _connect(t_ns: int, pid: int, comm: str, dst: tuple, outcome: str, latency_us: float,
             rtx: int = 0, family: int = 4) -> Connect:
    return Connect(ts_start_ns=t_ns, ts_end_ns=t_ns + int(latency_us * 1000), pid=pid, tid=pid,
                   comm=comm, family=family, saddr="10.0.0.2", sport=40000 + pid % 20000,
                   daddr=dst[0], dport=dst[1], outcome=outcome,
                   err={"refused": 111, "timeout": 110}.get(outcome, 0), syn_retransmits=rtx)


def _events(i: int, rng: random.Random, extra_destinations: int) -> list[Connect]:
    t = MONO0_NS + i * 1_000_000_000
    evs = []
    for _ in range(40):
        evs.append(_connect(t, 1001, "api-gw", HEALTHY, "established", rng.uniform(300, 900)))
    for _ in range(20):
        lat = rng.uniform(2_000, 5_000)
        rtx = 0
        if i == SPIKE_INTERVAL or (i > SPIKE_INTERVAL and rng.random() < 0.05):
            lat, rtx = rng.uniform(1_000_000, 1_300_000), 1   # a retransmitted SYN: >= 1 s
        evs.append(_connect(t, 2002, "orders", SLOW_DB, "established", lat, rtx))
    for k in range(10):
        outcome = "refused" if k < 3 else "established"
        evs.append(_connect(t, 2002, "orders", REFUSING, outcome, rng.uniform(80, 200)))
    if i % 5 == 4:
        evs.append(_connect(t, 3003, "java", BLACKHOLE, "timeout", 0.0, rtx=6))
    evs.append(_connect(t, 1001, "api-gw", ("fd00::7", 8443), "established",
                        rng.uniform(400, 700), family=6))
    for d in range(extra_destinations):
        dst = (f"10.{1 + d // 65536}.{d // 256 % 256}.{d % 256}", 8000)
        evs.append(_connect(t, 5000 + d % 50, f"worker{d % 50}", dst, "established",
                            rng.uniform(200, 3_000)))
    return evs


def _local_events(i: int) -> list[Connect]:
    """A chain on this host for the Map view: haproxy -> nginx (the listener
    that overflows) -> postgres. Fed to the edge table only, so the other
    views keep their numbers."""
    t = MONO0_NS + i * 1_000_000_000
    rng = random.Random(1000 + i)   # its own: the other views' numbers stay as they were
    evs = [_connect(t, 600, "haproxy", ("127.0.0.1", OVERFLOWING[1]),
                    "refused" if k < 2 and i >= 10 else "established", rng.uniform(50, 90))
           for k in range(30)]
    evs += [_connect(t, 812, "nginx", ("127.0.0.1", 5432), "established", rng.uniform(30, 60))
            for _ in range(15)]
    return [replace(e, saddr="127.0.0.1") for e in evs]


HELD = {812: Holding("nginx", by_remote={(4, "127.0.0.1", 5432): 12}),
        2002: Holding("orders", by_remote={(4, *SLOW_DB): 20})}


def _listeners(i: int, totals: dict) -> list[ListenerRow]:
    drops = 57 if i >= 10 else 0
    syn_drops = 12 if i >= 10 else 0
    totals["web"] = totals.get("web", 0) + drops + syn_drops
    return [
        ListenerRow(family=4, laddr=OVERFLOWING[0], lport=OVERFLOWING[1], pid=812,
                    comm="nginx", backlog_max=128, queue_len=128 if drops else 40,
                    queue_peak=128 if drops else 64, syn_queue_len=200, drops=drops,
                    syn_drops=syn_drops, drops_total=totals["web"],
                    drops_per_s=float(drops + syn_drops), accepts=900, accept_wait_p50_us=800.0,
                    accept_wait_p99_us=250_000.0 if drops else 4_000.0, synack_retransmits=3),
        ListenerRow(family=4, laddr="127.0.0.1", lport=5432, pid=700, comm="postgres",
                    backlog_max=244, queue_len=0, queue_peak=2, syn_queue_len=0, drops=0,
                    syn_drops=0, drops_total=0, drops_per_s=0.0, accepts=20,
                    accept_wait_p50_us=40.0, accept_wait_p99_us=120.0, synack_retransmits=0),
        ListenerRow(family=6, laddr="::", lport=22, pid=None, comm=None, backlog_max=128,
                    queue_len=0, queue_peak=0, syn_queue_len=None, drops=0, syn_drops=0,
                    drops_total=0, drops_per_s=0.0, accepts=0, accept_wait_p50_us=None,
                    accept_wait_p99_us=None, synack_retransmits=0),
    ]


def _processes(i: int, extra_processes: int) -> list[ProcessRow]:
    rows = [
        ProcessRow(pid=812, comm="nginx", established=300, syn_sent=0, listen=2, close_wait=0,
                   other=40, opened_per_s=900.0, closed_per_s=890.0, fds=2_000,
                   fd_limit=65_536, tx_queue_bytes=12_000, rx_queue_bytes=0, churning=False,
                   opened=900, closed=890, rss_bytes=34_000_000,
                   memory_limit_bytes=25_275_203_584, memory_limit_from="host",
                   listen_backlog=1022),
        ProcessRow(pid=2001, comm="php-fpm", established=3, syn_sent=1, listen=0, close_wait=0,
                   other=180, opened_per_s=250.0, closed_per_s=248.0, fds=60, fd_limit=1024,
                   tx_queue_bytes=0, rx_queue_bytes=0, churning=True, opened=250, closed=248,
                   advice=(PoolAdvice(destination="10.0.0.10:5432", arrival_per_s=250.0,
                                      hold_s=0.004, concurrency_mean=1.0, concurrency_p99=4.0,
                                      concurrency_peak=6, recommended=5, in_use=0,
                                      verdict="churning: 250 new connections/s held 4 ms each; "
                                              "a pool of 5 would serve it"),)),
        ProcessRow(pid=3003, comm="java", established=400, syn_sent=2, listen=1, close_wait=3,
                   other=10, opened_per_s=2.0, closed_per_s=1.0, fds=980 + i, fd_limit=1024,
                   tx_queue_bytes=0, rx_queue_bytes=4096, churning=False,
                   rss_bytes=900_000_000, cgroup_memory_bytes=950_000_000,
                   memory_limit_bytes=1_073_741_824, memory_limit_from="cgroup",
                   listen_backlog=128),
        ProcessRow(pid=4004, comm="python3", established=12, syn_sent=0, listen=0,
                   close_wait=150 + i, other=0, opened_per_s=1.0, closed_per_s=0.0, fds=200,
                   fd_limit=4096, tx_queue_bytes=0, rx_queue_bytes=0, churning=False),
        ProcessRow(pid=2002, comm="orders", established=20, syn_sent=0, listen=0, close_wait=0,
                   other=0, opened_per_s=30.0, closed_per_s=30.0, fds=80, fd_limit=4096,
                   tx_queue_bytes=0, rx_queue_bytes=0, churning=False),
    ]
    for p in range(extra_processes):
        rows.append(ProcessRow(pid=10_000 + p, comm=f"svc{p % 97}", established=p % 13,
                               syn_sent=0, listen=p % 2, close_wait=0, other=p % 3,
                               opened_per_s=float(p % 7), closed_per_s=float(p % 7),
                               fds=50 + p % 400, fd_limit=4096, tx_queue_bytes=0,
                               rx_queue_bytes=0, churning=False))
    return rows


class LatencyBuckets:
    """Snapshot.extra["latency_buckets"] as a live collector could fill it: the
    histogram since start of every destination and process, as buckets."""

    def __init__(self):
        self._h: dict[tuple, Histogram] = {}

    def add(self, ev: Connect) -> None:
        if ev.outcome != "established" or ev.latency_us is None:
            return      # as ConnectStats: only established connects have a latency
        for key in (("dest", (ev.family, ev.daddr, ev.dport)), ("proc", (ev.pid,))):
            self._h.setdefault(key, Histogram()).add(ev.latency_us)

    def snapshot(self) -> dict[tuple, tuple]:
        return {k: tuple(h.buckets()) for k, h in self._h.items()}


def scenario(intervals: int = 30, *, extra_destinations: int = 0, extra_processes: int = 0,
             lost_from: int | None = 25, header: Header = HEADER) -> list[Snapshot]:
    """One Snapshot per interval, oldest first (only the last one when there are
    more than 60). Events are lost from interval `lost_from` on (None: never)."""
    rng = random.Random(7)
    # (a table that holds every destination: what is tested here is how the
    # TUI shows many rows, not the table's bound)
    table = ConnectTable(max_keys=extra_destinations + 100)
    edges = EdgeTable(max_edges=extra_destinations + 100)
    log, latency = NotableLog(), LatencyBuckets()
    totals: dict = {}
    out = []
    events_total = lost = 0
    for i in range(intervals):
        end_us = T0_US + (i + 1) * 1_000_000
        evs = _events(i, rng, extra_destinations)
        for ev in evs:
            table.add(ev)
            edges.add(ev)
            latency.add(ev)
            log.connect(ev, end_us)
        for ev in _local_events(i):
            edges.add(ev)
        table.roll(1.0)
        # the black hole always has connects waiting, the oldest for 1.5 s to 4.5 s
        table.set_pending({(4, *BLACKHOLE): (2, 1.5 + i % 4)})
        events_total += len(evs)
        new_lost = 0 if lost_from is None or i < lost_from else 17
        lost += new_lost
        listeners = _listeners(i, totals)
        edge_rows = edges.roll(1.0, listeners, HELD)
        log.listeners(listeners, end_us)
        log.lost_events(new_lost, end_us)
        notable = log.roll(end_us)
        if intervals > 60 and i < intervals - 1:
            continue
        out.append(Snapshot(
            ts_us=end_us, interval_s=1.0, header=header, events_total=events_total,
            events_per_s=float(len(evs)), lost_events=lost,
            destinations=tuple(table.by_destination()),
            processes_connects=tuple(table.by_process()), listeners=tuple(listeners),
            processes=tuple(_processes(i, extra_processes)), notable=notable,
            edges=tuple(edge_rows),
            recording_bytes=3_500_000 + i * 120_000,
            extra={"latency_buckets": latency.snapshot()}))
    return out


def last(**kwargs) -> Snapshot:
    return scenario(**kwargs)[-1]


def quiet(header: Header = HEADER) -> Snapshot:
    """A snapshot where nothing is wrong."""
    table = ConnectTable()
    for k in range(5):
        table.add(_connect(MONO0_NS, 1001, "api-gw", HEALTHY, "established", 400.0 + k))
    table.roll(1.0)
    return Snapshot(ts_us=T0_US + 1_000_000, interval_s=1.0, header=header, events_total=5,
                    events_per_s=5.0, lost_events=0, destinations=tuple(table.by_destination()),
                    processes_connects=tuple(table.by_process()))


def empty(header: Header = HEADER) -> Snapshot:
    """An interval in which nothing matched (a filter for a process that never shows up)."""
    return Snapshot(ts_us=T0_US + 1_000_000, interval_s=1.0, header=header, events_total=0,
                    events_per_s=0.0, lost_events=0)
