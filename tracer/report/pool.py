"""Pool advice, as the `pools` table recorded it: read, never recomputed.

The live view wrote one row per process, destination and interval, with the
arithmetic of tracer/domain/pools.py over the window it states (window_s).
The report shows, for each (host, pid, comm, destination), the row of its
busiest window (the largest recommended pool; then the highest arrival rate;
then the latest), so report, replay and the Parquet tables say the same
thing about the same moment.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from tracer.domain.durations import seconds
from tracer.report.arrow_stats import ts_us
from tracer.report.timefmt import clock

KEY = ("host", "pid", "comm", "destination")


@dataclass(frozen=True)
class PoolAdvice:
    host: str
    pid: int
    comm: str
    destination: str            # "addr:port" or "[v6]:port"
    ts_us: int                  # end of the window this advice covers
    window_s: float | None      # its length (None: recorded before window_s existed)
    arrival_per_s: float        # new connections per second over the window
    hold_s: float | None        # mean connect()-to-close time; None if none closed
    concurrency_mean: float
    concurrency_p99: float
    concurrency_peak: int
    recommended: int
    in_use: int                 # held at the end of the window
    in_use_peak: int            # most held at any interval end of the recording
    verdict: str

    @property
    def churning(self) -> bool:
        return self.verdict.startswith("churning")


def pool_advice(pools: pa.Table, n: int = 10) -> list[PoolAdvice]:
    """Each flow's busiest window, highest arrival rate first; at most n."""
    if not pools.num_rows:
        return []
    t = pools.append_column("us", ts_us(pools))
    rows = t.sort_by([("recommended", "descending"), ("arrival_per_s", "descending"),
                      ("us", "descending")]).to_pylist()
    best: dict[tuple, dict] = {}
    in_use_peak: dict[tuple, int] = {}
    for r in rows:
        key = tuple(r[k] for k in KEY)
        best.setdefault(key, r)
        in_use_peak[key] = max(in_use_peak.get(key, 0), r["in_use"] or 0)
    out = [PoolAdvice(
        host=r["host"], pid=r["pid"], comm=r["comm"] or "?", destination=r["destination"],
        ts_us=r["us"], window_s=r.get("window_s"), arrival_per_s=r["arrival_per_s"],
        hold_s=r["hold_s"] or None, concurrency_mean=r["concurrency_mean"],
        concurrency_p99=r["concurrency_p99"], concurrency_peak=r["concurrency_peak"],
        recommended=r["recommended"], in_use=r["in_use"], in_use_peak=in_use_peak[key],
        verdict=r["verdict"]) for key, r in best.items()]
    out.sort(key=lambda a: (-a.arrival_per_s, a.host, a.pid, a.destination))
    return out[:n]


def window(a: PoolAdvice) -> str:
    """The window an advice's rates cover: '30.0s to 12:03:04Z'."""
    length = seconds(a.window_s) if a.window_s else "?"
    return f"{length} to {clock(a.ts_us)}"
