"""Processes by TCP sockets held and by churn, from the per-interval `sockets` table.

A process is (host, pid, comm): pids are reused, and a fleet repeats them.
Rates divide by the span the process was seen: last ts - first ts + one
interval (each row covers the interval that ends at its ts).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from tracer.domain import memory, tcp_memory
from tracer.report.arrow_stats import bucket_start, sums_by, ts_us

KEY = ["host", "pid", "comm"]
STATES = ("established", "syn_sent", "listen", "close_wait", "other")
CLOSE_WAIT_LEAK = 10    # this many sockets stuck in CLOSE_WAIT at the end is a leak, not noise
FD_WARN = 0.8


@dataclass(frozen=True)
class ProcessStats:
    host: str
    pid: int
    comm: str
    peak_sockets: int
    last_sockets: int
    peak_established: int
    first_close_wait: int
    last_close_wait: int
    peak_close_wait: int
    opened: int
    closed: int
    span_s: float
    peak_fds: int | None
    fd_limit: int | None
    # ((bucket_start_us, sockets, established, close_wait, fds or None), ...), maxima
    timeline: tuple = ()
    # the `sockets` row (a dict of MEMORY_COLUMNS) where it held the most
    # connections with its memory known, the latest such; None if none
    memory_row: dict | None = field(default=None, compare=False)
    unread: tuple[int, int] = (0, 0)   # longest run of interval ends not reading, bytes then

    @property
    def connections(self) -> int:
        return memory.row_connections(self.memory_row) if self.memory_row else 0

    @property
    def memory_per_connection(self) -> float | None:
        return memory.row_per_connection(self.memory_row) if self.memory_row else None

    @property
    def memory_projection(self) -> memory.Projection | None:
        return memory.row_projection(self.memory_row) if self.memory_row else None

    @property
    def memory_sentence(self) -> str | None:
        """"api (12) on web1 holds 200 connections at 2.10 MB each: 420 MB"."""
        if self.memory_per_connection is None:
            return None
        return memory.holds(self.label, self.connections, self.memory_per_connection)

    @property
    def label(self) -> str:
        return f"{self.comm} ({self.pid}) on {self.host}"

    @property
    def opened_per_s(self) -> float:
        return self.opened / self.span_s if self.span_s else 0.0

    @property
    def closed_per_s(self) -> float:
        return self.closed / self.span_s if self.span_s else 0.0

    @property
    def fd_ratio(self) -> float | None:
        if self.peak_fds is None or not self.fd_limit:
            return None
        return self.peak_fds / self.fd_limit

    @property
    def close_wait_leak(self) -> bool:
        """CLOSE_WAIT sockets pile up: the peer closed, the application never did."""
        return (self.last_close_wait >= CLOSE_WAIT_LEAK
                and self.last_close_wait > self.first_close_wait)


def with_totals(sockets: pa.Table) -> pa.Table:
    """`sockets` plus `total` (all states) and `us` (ts in µs) columns."""
    total = None
    for s in STATES:
        col = pc.cast(pc.fill_null(sockets.column(s), 0), pa.int64())
        total = col if total is None else pc.add(total, col)
    if total is None:
        total = pa.array([], pa.int64())
    return sockets.append_column("total", total).append_column("us", ts_us(sockets))


MEMORY_COLUMNS = ("ts", "established", "syn_sent", "close_wait", "other", "rss_bytes",
                  "cgroup_memory_bytes", "memory_limit_bytes", "memory_limit_from",
                  "listen_backlog")


def memory_rows(sockets: pa.Table) -> dict[tuple, dict]:
    """Per process (KEY), the row where it held the most connections with
    its resident memory known (the latest of equals): the moment its memory
    per connection is read at, in the report's sentence and its finding."""
    if "rss_bytes" not in sockets.column_names or not sockets.num_rows:
        return {}
    t = sockets.filter(pc.is_valid(sockets.column("rss_bytes")))
    if not t.num_rows:
        return {}
    held = None
    for s in ("established", "syn_sent", "close_wait", "other"):
        col = pc.cast(pc.fill_null(t.column(s), 0), pa.int64())
        held = col if held is None else pc.add(held, col)
    t = t.append_column("_held", held).append_column("_us", ts_us(t))
    t = t.filter(pc.greater(t.column("_held"), 0))
    if not t.num_rows:
        return {}
    order = pc.sort_indices(t, sort_keys=[("_held", "descending"), ("_us", "descending")])
    t = t.take(order)
    cols = [c for c in MEMORY_COLUMNS if c in t.column_names]
    # without threads group_by keeps the first row of each group in sort order
    firsts = t.select([*KEY, *cols]).group_by(KEY, use_threads=False).aggregate(
        [(c, "first") for c in cols])
    return {(r["host"], r["pid"], r["comm"]): {c: r[f"{c}_first"] for c in cols}
            for r in firsts.to_pylist()}


def unread_streaks(sockets: pa.Table) -> dict[tuple, tuple[int, int]]:
    """Per process (KEY) that ever left data unread: its longest run of
    interval ends with unread data never shrinking (tracer.domain.tcp_memory,
    as the live view counts it), and the bytes unread at the end of that run."""
    if not sockets.num_rows:
        return {}
    rx = pc.fill_null(sockets.column("rx_queue_bytes"), 0)
    t = sockets.filter(pc.greater(rx, 0))
    if not t.num_rows:
        return {}
    wanted = {(r["host"], r["pid"], r["comm"]) for r in t.select(KEY).to_pylist()}
    t = sockets.select([*KEY, "rx_queue_bytes"]).append_column("us", ts_us(sockets))
    t = t.sort_by([("us", "ascending")])
    state: dict[tuple, tuple[int, int | None]] = {}
    best: dict[tuple, tuple[int, int]] = {}
    for r in t.to_pylist():
        key = (r["host"], r["pid"], r["comm"])
        if key not in wanted:
            continue
        streak, before = state.get(key, (0, None))
        now = r["rx_queue_bytes"] or 0
        streak = tcp_memory.unread_streak(streak, before, now)
        state[key] = (streak, now)
        if streak > best.get(key, (0, 0))[0]:
            best[key] = (streak, now)
    return best


def process_stats(sockets: pa.Table, interval_us: int, bucket_us: int) -> list[ProcessStats]:
    """Every process seen, most sockets first; timelines in `bucket_us` buckets."""
    if not sockets.num_rows:
        return []
    t = with_totals(sockets).sort_by([("us", "ascending")])
    rows = sums_by(t, KEY, [
        ("total", "max"), ("total", "last"), ("established", "max"), ("close_wait", "first"),
        ("close_wait", "last"), ("close_wait", "max"), ("opened", "sum"), ("closed", "sum"),
        ("us", "min"), ("us", "max"), ("fds", "max"), ("fd_limit", "max")])
    tl = t.append_column("bucket", bucket_start(t, bucket_us))
    timelines: dict[tuple, list] = {}
    for r in sums_by(tl, [*KEY, "bucket"], [("total", "max"), ("established", "max"),
                                             ("close_wait", "max"), ("fds", "max")]):
        timelines.setdefault((r["host"], r["pid"], r["comm"]), []).append(
            (r["bucket"], r["total_max"], r["established_max"] or 0, r["close_wait_max"] or 0,
             r["fds_max"]))
    mem = memory_rows(sockets)
    unread = unread_streaks(sockets)
    out = []
    for r in rows:
        key = (r["host"], r["pid"], r["comm"])
        out.append(ProcessStats(
            host=r["host"], pid=r["pid"], comm=r["comm"] or "?",
            peak_sockets=r["total_max"], last_sockets=r["total_last"],
            peak_established=r["established_max"] or 0,
            first_close_wait=r["close_wait_first"] or 0,
            last_close_wait=r["close_wait_last"] or 0, peak_close_wait=r["close_wait_max"] or 0,
            opened=r["opened_sum"] or 0, closed=r["closed_sum"] or 0,
            span_s=(r["us_max"] - r["us_min"] + interval_us) / 1e6,
            peak_fds=r["fds_max"], fd_limit=r["fd_limit_max"],
            timeline=tuple(sorted(timelines.get(key, ()))), memory_row=mem.get(key),
            unread=unread.get(key, (0, 0))))
    out.sort(key=lambda p: (-p.peak_sockets, p.host, p.pid))
    return out


def by_churn(stats: list[ProcessStats], n: int = 10) -> list[ProcessStats]:
    ranked = [p for p in stats if p.opened or p.closed]
    return sorted(ranked, key=lambda p: (-(p.opened_per_s + p.closed_per_s), p.host, p.pid))[:n]
