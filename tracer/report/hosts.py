"""Per-host figures of a fleet's recordings read as one dataset.

Each figure is the same count the rest of the report makes, split by the
`host` column: connects by outcome (tracer/domain/outcomes.py's summary
classes, as the CONNECTS line), listener drops from the listener statistics
the LISTENERS section ranks (a listener is keyed by its host already), runs
and losses from the manifests. The rows therefore add up to the report's
totals; `total` is their sum, never a separate count.

Host names are read from files in a directory others may write: any number
of them, any text. The table is bounded (MAX_HOSTS rows, the rest summed in
one `other` row) and the renderers escape them (text.clean, html._e).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import pyarrow as pa

from tracer.domain import outcomes as oc
from tracer.report.arrow_stats import sums_by
from tracer.report.listeners import ListenerStats
from tracer.report.overview import RunInfo

MAX_HOSTS = 50          # rows of the per-host table; the rest are summed in one row
UNKNOWN = "?"           # a row without a host (a file from another tool)


@dataclass(frozen=True)
class HostStats:
    host: str
    runs: int = 0
    connects: int = 0           # attempts
    established: int = 0
    refused: int = 0
    timeout: int = 0            # timed out, whoever gave up
    error: int = 0              # unreachable, or connect() itself failed
    listeners: int = 0          # listening sockets seen
    drops: int = 0              # accept queue full (ACK time)
    syn_drops: int = 0          # SYNs dropped
    accepts: int = 0
    lost_events: int = 0        # the kernel dropped these before we read them
    dropped_rows: int = 0       # we had these but the disk refused them

    @property
    def failed(self) -> int:
        return self.refused + self.timeout + self.error

    @property
    def total_drops(self) -> int:
        return self.drops + self.syn_drops


_COUNTS = tuple(f.name for f in fields(HostStats) if f.name != "host")


def add(host: str, parts) -> HostStats:
    """The sum of `parts`, named `host`."""
    parts = list(parts)
    return HostStats(host, **{k: sum(getattr(p, k) for p in parts) for k in _COUNTS})


def host_stats(connects: pa.Table, listeners: list[ListenerStats],
               runs: tuple[RunInfo, ...]) -> list[HostStats]:
    """One row per host that has a run or a row, busiest first (connects plus drops)."""
    acc: dict[str, dict[str, int]] = {}

    def of(host) -> dict[str, int]:
        return acc.setdefault(host if host else UNKNOWN, dict.fromkeys(_COUNTS, 0))

    for r in runs:
        h = of(r.host)
        h["runs"] += 1
        h["lost_events"] += r.lost_events
        h["dropped_rows"] += r.dropped_rows
    if connects.num_rows:
        for r in sums_by(connects, ["host", "outcome"], [("ts", "count")]):
            h = of(r["host"])
            h["connects"] += r["ts_count"]
            h[oc.summary_class(r["outcome"])] += r["ts_count"]
    for li in listeners:
        h = of(li.host)
        h["listeners"] += 1
        h["drops"] += li.drops
        h["syn_drops"] += li.syn_drops
        h["accepts"] += li.accepts
    out = [HostStats(host, **counts) for host, counts in acc.items()]
    out.sort(key=lambda s: (-(s.connects + s.total_drops), s.host))
    return out


def bounded(stats: list[HostStats], limit: int = MAX_HOSTS) -> list[HostStats]:
    """At most `limit` rows: the busiest `limit - 1` and one summing the rest."""
    if len(stats) <= limit:
        return list(stats)
    rest = stats[limit - 1:]
    return list(stats[:limit - 1]) + [add(f"({len(rest):,} other hosts)", rest)]


def hosts_text(hosts, limit: int = 10) -> str:
    """`a, b, c` for a line of the report: at most `limit` names, then how many more."""
    hosts = list(hosts)
    shown = ", ".join(hosts[:limit])
    return shown + (f" and {len(hosts) - limit:,} more" if len(hosts) > limit else "")
