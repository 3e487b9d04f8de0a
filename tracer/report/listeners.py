"""Listening sockets that dropped connections or came close, and when.

Drops come from the `overflows` table (one row per listener and interval with
a drop); a listener without overflow rows falls back to `listeners.drops`, so
the two tables never count the same drop twice. Queue depth is the highest of
what `listeners` (queue_peak), `overflows` (backlog_peak) and `accepts`
(backlog_len) saw.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from tracer.report.arrow_stats import bucket_start, quantiles_by, sums_by, ts_us
from tracer.domain.listeners import listener_key, listener_label

MINUTE_US = 60_000_000
NEAR_FULL = 0.8     # a queue that reached 80 % of its backlog is worth a look
# One listener: tracer/domain/listeners.py's key (netns, family, address,
# port) on its host; the address tells the family.
KEY = ["host", "netns", "laddr", "lport"]


def _key(r: dict) -> tuple:
    return (r["host"], r["netns"], r["laddr"], r["lport"])


@dataclass(frozen=True)
class ListenerStats:
    host: str
    netns: int | None
    laddr: str
    lport: int
    pid: int | None
    comm: str | None
    backlog_max: int | None
    queue_peak: int | None
    drops: int                  # accept queue full
    syn_drops: int              # SYNs dropped
    first_drop_us: int | None
    last_drop_us: int | None
    drop_minutes: tuple = ()    # ((minute_start_us, drops, syn_drops), ...), minutes with drops
    accepts: int = 0
    accept_wait_p99_us: float | None = None
    timeline: tuple = ()        # ((bucket_start_us, drops + syn_drops, queue_peak or None), ...)
    bucket_us: int = MINUTE_US
    netns_shown: bool = False   # another namespace of this host listens on the same address

    @property
    def label(self) -> str:
        key = listener_key(self.netns if self.netns_shown else 0, 0, self.laddr, self.lport)
        return listener_label(key)

    @property
    def owner(self) -> str:
        return f"{self.comm or '?'} ({self.pid if self.pid is not None else '?'})"

    @property
    def queue_vs_backlog(self) -> str:
        peak = self.queue_peak if self.queue_peak is not None else "?"
        return f"{peak}/{self.backlog_max or '?'}"

    @property
    def total_drops(self) -> int:
        return self.drops + self.syn_drops

    @property
    def fill(self) -> float | None:
        """Peak queue as a fraction of the backlog."""
        if not self.backlog_max or self.queue_peak is None:
            return None
        return self.queue_peak / self.backlog_max

    @property
    def peak_minute(self) -> tuple[int, int] | None:
        if not self.drop_minutes:
            return None
        start, d, s = max(self.drop_minutes, key=lambda m: (m[1] + m[2], -m[0]))
        return start, d + s


def _drops_by_bucket(overflows: pa.Table, listeners: pa.Table, bucket_us: int) -> dict:
    """(host, netns, laddr, lport) -> {bucket_start: [drops, syn_drops]}; overflows win per listener."""
    out: dict[tuple, dict[int, list[int]]] = {}
    if overflows.num_rows:
        t = overflows.append_column("bucket", bucket_start(overflows, bucket_us))
        for r in sums_by(t, [*KEY, "bucket"], [("drops", "sum"), ("syn_drops", "sum")]):
            out.setdefault(_key(r), {})[r["bucket"]] = [
                r["drops_sum"] or 0, r["syn_drops_sum"] or 0]
    if listeners.num_rows:
        t = listeners.filter(pc.greater(pc.fill_null(listeners.column("drops"), 0), 0))
        t = t.append_column("bucket", bucket_start(t, bucket_us))
        fallback: dict[tuple, dict[int, list[int]]] = {}
        for r in sums_by(t, [*KEY, "bucket"], [("drops", "sum")]):
            fallback.setdefault(_key(r), {})[r["bucket"]] = [
                r["drops_sum"] or 0, 0]
        for key, buckets in fallback.items():
            out.setdefault(key, buckets)
    return out


def _drop_spans(overflows: pa.Table, listeners: pa.Table) -> dict:
    """(host, netns, laddr, lport) -> (ts of the first drop, ts of the last), µs; overflows win."""
    out: dict[tuple, tuple[int, int]] = {}
    sources = [(overflows, pc.add(pc.fill_null(overflows.column("drops"), 0),
                                  pc.fill_null(overflows.column("syn_drops"), 0))),
               (listeners, pc.fill_null(listeners.column("drops"), 0))]
    for t, dropped in sources:
        t = t.filter(pc.greater(dropped, 0))
        t = t.append_column("us", ts_us(t))
        for r in sums_by(t, KEY, [("us", "min"), ("us", "max")]):
            out.setdefault(_key(r), (r["us_min"], r["us_max"]))
    return out


def _queue_by_bucket(tables: list[tuple[pa.Table, str]], bucket_us: int) -> dict:
    """(host, netns, laddr, lport) -> {bucket_start: highest queue length seen}."""
    out: dict[tuple, dict[int, int]] = {}
    for t, col in tables:
        if not t.num_rows:
            continue
        q = pa.table({k: t.column(k) for k in KEY} | {"q": t.column(col),
                                                        "bucket": bucket_start(t, bucket_us)})
        for r in sums_by(q, [*KEY, "bucket"], [("q", "max")]):
            if r["q_max"] is None:
                continue
            b = out.setdefault(_key(r), {})
            b[r["bucket"]] = max(b.get(r["bucket"], 0), r["q_max"])
    return out


def _owners(tables: list[pa.Table]) -> dict:
    """(host, netns, laddr, lport) -> [pid, comm, backlog_max], from whichever table knows them."""
    out: dict[tuple, list] = {}
    for t in tables:
        if not t.num_rows:
            continue
        for r in sums_by(t, KEY, [("pid", "last"), ("comm", "last"), ("backlog_max", "max")]):
            key = _key(r)
            pid, comm, backlog = out.setdefault(key, [None, None, None])
            backlogs = [b for b in (backlog, r["backlog_max_max"]) if b is not None]
            out[key] = [pid if pid is not None else r["pid_last"], comm or r["comm_last"],
                        max(backlogs) if backlogs else None]
    return out


def listener_stats(listeners: pa.Table, overflows: pa.Table, accepts: pa.Table,
                   bucket_us: int) -> list[ListenerStats]:
    """Every listener seen, most drops first; timelines in `bucket_us` buckets."""
    minutes = _drops_by_bucket(overflows, listeners, MINUTE_US)
    drops_tl = _drops_by_bucket(overflows, listeners, bucket_us)
    queue_tl = _queue_by_bucket([(listeners, "queue_peak"), (overflows, "backlog_peak"),
                                 (accepts, "backlog_len")], bucket_us)
    owners = _owners([listeners, overflows, accepts])
    spans = _drop_spans(overflows, listeners)
    waits = quantiles_by(accepts, KEY, "queue_wait_us", (0.99,))
    accepted = {_key(r): r["ts_count"]
                for r in sums_by(accepts, KEY, [("ts", "count")])}
    if not accepted:
        accepted = {_key(r): r["accepts_sum"] or 0
                    for r in sums_by(listeners, KEY, [("accepts", "sum")])}
    listed_waits = {_key(r): r["accept_wait_p99_us_max"]
                    for r in sums_by(listeners, KEY, [("accept_wait_p99_us", "max")])}

    keys = set(owners) | set(minutes) | set(queue_tl)
    namespaces: dict[tuple, set] = {}
    for host, netns, laddr, lport in keys:
        namespaces.setdefault((host, laddr, lport), set()).add(netns)
    out = []
    for key in keys:
        pid, comm, backlog = owners.get(key, [None, None, None])
        by_min = minutes.get(key, {})
        drop_minutes = tuple((m, d, s) for m, (d, s) in sorted(by_min.items()) if d or s)
        qtl, dtl = queue_tl.get(key, {}), drops_tl.get(key, {})
        timeline = tuple((b, sum(dtl.get(b, (0, 0))), qtl.get(b))
                         for b in sorted(set(qtl) | set(dtl)))
        wait = waits.get(key)
        out.append(ListenerStats(
            host=key[0], netns=key[1], laddr=key[2], lport=key[3], pid=pid, comm=comm,
            netns_shown=len(namespaces[(key[0], key[2], key[3])]) > 1,
            backlog_max=backlog,
            queue_peak=max(qtl.values()) if qtl else None,
            drops=sum(d for _, d, _ in drop_minutes),
            syn_drops=sum(s for _, _, s in drop_minutes),
            first_drop_us=spans.get(key, (None, None))[0],
            last_drop_us=spans.get(key, (None, None))[1],
            drop_minutes=drop_minutes, accepts=accepted.get(key, 0),
            accept_wait_p99_us=wait[1][0] if wait else listed_waits.get(key),
            timeline=timeline, bucket_us=bucket_us))
    out.sort(key=lambda s: (-s.total_drops, -(s.fill or 0), s.host, s.label, s.netns or 0))
    return out


def troubled(stats: list[ListenerStats]) -> list[ListenerStats]:
    """Listeners that dropped connections or whose queue came near its backlog."""
    return [s for s in stats if s.total_drops or (s.fill or 0) >= NEAR_FULL]
