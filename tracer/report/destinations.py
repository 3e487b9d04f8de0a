"""Outgoing connects by destination (daddr:dport, across hosts) and by process.

Latency percentiles count established connects only: a refused connect
returns as fast as a healthy one and a timeout's latency is the time someone
waited, so mixing them in would hide the slow destinations. Failures are
counted separately, summarised as the live view does (tracer/domain/outcomes.py):
`timeout` includes the connects the application gave up on, `error` the
unreachable ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import pyarrow as pa
import pyarrow.compute as pc

from tracer.domain.addresses import endpoint
from tracer.domain import outcomes as oc
from tracer.report.arrow_stats import quantiles_by, sums_by, ts_us

BINS_PER_DECADE = 5     # latency histogram: 10^(1/5) ≈ 1.58x per bin
TOP_COMMS = 3


@dataclass(frozen=True)
class DestinationStats:
    daddr: str
    dport: int
    attempts: int
    established: int
    refused: int
    timeout: int                # timed out, whoever gave up (kernel or application)
    error: int                  # unreachable, or connect() itself failed
    syn_retransmits: int        # SYN retransmissions, summed
    retransmitted: int          # attempts that needed at least one
    samples: int                # established connects with a latency
    p50_us: float | None
    p99_us: float | None
    max_us: float | None
    hosts: int                  # how many traced hosts connected here
    comms: tuple[str, ...]      # busiest processes, most attempts first
    first_failure_us: int | None
    last_failure_us: int | None
    histogram: tuple = ()       # ((low_us, high_us, count), ...) for the charted ones
    abandoned: int = 0          # of `timeout`: the application gave up (closed while SYN_SENT)
    abandoned_max_wait_us: float | None = None   # the longest it waited before giving up
    errnos: tuple = ()          # ((errno, count), ...) of `error`, most first

    @property
    def label(self) -> str:
        return endpoint_label(self.daddr, self.dport)

    @property
    def failures(self) -> int:
        return self.refused + self.timeout + self.error

    @property
    def failure_ratio(self) -> float:
        return self.failures / self.attempts if self.attempts else 0.0


@dataclass(frozen=True)
class ConnectingProcess:
    host: str
    pid: int
    comm: str
    attempts: int
    per_s: float                # attempts per second over the recording
    failures: int
    destinations: int


def endpoint_label(addr: str | None, port: int | None) -> str:
    return endpoint(addr, port)


def destination_stats(connects: pa.Table) -> list[DestinationStats]:
    """Every destination's counts and latency percentiles, busiest first."""
    if not connects.num_rows:
        return []
    keys = ["daddr", "dport"]
    t = connects.append_column(
        "retx", pc.cast(pc.greater(pc.fill_null(connects.column("syn_retransmits"), 0), 0),
                        pa.int64()))
    base = {(r["daddr"], r["dport"]): r for r in sums_by(t, keys, [
        ("outcome", "count"), ("syn_retransmits", "sum"), ("retx", "sum"),
        ("host", "count_distinct")])}
    by_outcome: dict[tuple, dict[str, int]] = {}
    for r in sums_by(connects, [*keys, "outcome"], [("ts", "count")]):
        by_outcome.setdefault((r["daddr"], r["dport"]), {})[r["outcome"]] = r["ts_count"]
    established = connects.filter(pc.equal(connects.column("outcome"), oc.ESTABLISHED))
    quant = quantiles_by(established, keys, "latency_us", (0.5, 0.99, 1.0))
    failed = connects.filter(_failed(connects))
    abandoned = connects.filter(pc.equal(connects.column("outcome"), oc.ABANDONED))
    waited = {(r["daddr"], r["dport"]): r["latency_us_max"]
              for r in sums_by(abandoned, keys, [("latency_us", "max")])}
    errored = failed.filter(pc.invert(pc.is_in(failed.column("outcome"),
                                               pa.array([oc.REFUSED, *oc.TIMEOUTS]))))
    errnos: dict[tuple, list[tuple[int, int]]] = {}
    for r in sums_by(errored, [*keys, "errno"], [("ts", "count")]):
        errnos.setdefault((r["daddr"], r["dport"]), []).append((r["errno"], r["ts_count"]))
    failed = failed.append_column("us", ts_us(failed))
    fail_span = {(r["daddr"], r["dport"]): (r["us_min"], r["us_max"])
                 for r in sums_by(failed, keys, [("us", "min"), ("us", "max")])}
    comms: dict[tuple, list[tuple[int, str]]] = {}
    for r in sums_by(connects, [*keys, "comm"], [("ts", "count")]):
        comms.setdefault((r["daddr"], r["dport"]), []).append((r["ts_count"], r["comm"] or "?"))

    out = []
    for key, r in base.items():
        counts = _summarised(by_outcome.get(key, {}))
        n, (p50, p99, top) = quant.get(key, (0, [None, None, None]))
        first, last = fail_span.get(key, (None, None))
        busiest = sorted(comms.get(key, []), key=lambda c: (-c[0], c[1]))[:TOP_COMMS]
        out.append(DestinationStats(
            daddr=key[0], dport=key[1], attempts=r["outcome_count"],
            established=counts[oc.ESTABLISHED], refused=counts[oc.REFUSED],
            timeout=counts[oc.TIMEOUT], error=counts[oc.ERROR],
            abandoned=by_outcome.get(key, {}).get(oc.ABANDONED, 0),
            abandoned_max_wait_us=waited.get(key),
            errnos=tuple(sorted(errnos.get(key, []), key=lambda e: (-e[1], e[0] or 0))),
            syn_retransmits=r["syn_retransmits_sum"] or 0, retransmitted=r["retx_sum"] or 0,
            samples=n, p50_us=p50, p99_us=p99, max_us=top, hosts=r["host_count_distinct"],
            comms=tuple(c for _, c in busiest), first_failure_us=first, last_failure_us=last))
    out.sort(key=lambda d: (-d.attempts, d.label))
    return out


def _failed(connects: pa.Table):
    """Rows that failed: every outcome but established (unknown names too)."""
    return pc.fill_null(pc.not_equal(connects.column("outcome"), oc.ESTABLISHED), True)


def _summarised(counts: dict[str, int]) -> dict[str, int]:
    """{outcome: n} folded into the four summary columns (oc.summary_class)."""
    out = {oc.ESTABLISHED: 0, oc.REFUSED: 0, oc.TIMEOUT: 0, oc.ERROR: 0}
    for outcome, n in counts.items():
        out[oc.summary_class(outcome)] += n
    return out


def worst_by_p99(dests: list[DestinationStats], n: int = 10) -> list[DestinationStats]:
    ranked = [d for d in dests if d.p99_us is not None]
    return sorted(ranked, key=lambda d: (-d.p99_us, -d.samples, d.label))[:n]


def worst_by_failures(dests: list[DestinationStats], n: int = 10) -> list[DestinationStats]:
    ranked = [d for d in dests if d.failures or d.retransmitted]
    return sorted(ranked, key=lambda d: (-d.failures, -d.retransmitted, d.label))[:n]


def with_histograms(connects: pa.Table, dests: list[DestinationStats]) -> list[DestinationStats]:
    """`dests` with their latency histograms filled in (log bins, BINS_PER_DECADE a decade)."""
    if not dests:
        return []
    wanted = {(d.daddr, d.dport) for d in dests}
    est = connects.filter(pc.and_(pc.equal(connects.column("outcome"), oc.ESTABLISHED),
                                  pc.is_valid(connects.column("latency_us"))))
    est = est.filter(pc.is_in(est.column("daddr"), pa.array(sorted({k[0] for k in wanted}))))
    lat = pc.max_element_wise(est.column("latency_us"), 1.0)  # below 1 µs goes in the first bin
    bins = pc.cast(pc.floor(pc.multiply(pc.log10(lat), float(BINS_PER_DECADE))), pa.int64())
    t = pa.table({"daddr": est.column("daddr"), "dport": est.column("dport"), "bin": bins})
    counts: dict[tuple, dict[int, int]] = {}
    for r in sums_by(t, ["daddr", "dport", "bin"], [("bin", "count")]):
        key = (r["daddr"], r["dport"])
        if key in wanted:
            counts.setdefault(key, {})[r["bin"]] = r["bin_count"]
    out = []
    for d in dests:
        c = counts.get((d.daddr, d.dport), {})
        hist = tuple((bin_low(b), bin_low(b + 1), c.get(b, 0))
                     for b in range(min(c), max(c) + 1)) if c else ()
        out.append(replace(d, histogram=hist))
    return out


def bin_low(b: int) -> float:
    return math.pow(10.0, b / BINS_PER_DECADE)


def connecting_processes(connects: pa.Table, span_s: float,
                         n: int = 10) -> list[ConnectingProcess]:
    """Processes by connect attempts: many per second means new connections instead of a pool."""
    if not connects.num_rows:
        return []
    t = connects.append_column("failed", pc.cast(_failed(connects), pa.int64()))
    t = t.append_column("dest", pc.binary_join_element_wise(
        t.column("daddr"), pc.cast(t.column("dport"), pa.string()), ":"))
    rows = sums_by(t, ["host", "pid", "comm"], [("ts", "count"), ("failed", "sum"),
                                                ("dest", "count_distinct")])
    span = max(span_s, 1.0)
    out = [ConnectingProcess(host=r["host"], pid=r["pid"], comm=r["comm"] or "?",
                             attempts=r["ts_count"], per_s=r["ts_count"] / span,
                             failures=r["failed_sum"] or 0, destinations=r["dest_count_distinct"])
           for r in rows]
    out.sort(key=lambda p: (-p.attempts, p.host, p.pid))
    return out[:n]
