"""Connection pool sizing from Little's law.

    L = λ · W     concurrency = arrival rate × hold time

For each process in the `sockets` table, over the span it was seen (S seconds,
N intervals of length dt):

    λ   = Σ opened / S                     sockets opened per second
    L   = mean of established over the N intervals
    W   = L / λ                            how long a connection is held, seconds

For each destination the process connects to (`connects` table; if the
recording has no connects at all, the process's opened sockets count as one
destination "*"):

    λ_d        = connects to d / S
    c_i        = (connects to d in the k intervals ending with i) / (k · dt) · W
                 with k = max(1, round(W / dt)): concurrency in interval i, from the
                 arrival rate over a window as long as a connection is held
    mean       = λ_d · W
    p99        = nearest-rank 99th percentile of c_1..c_N (intervals without connects are 0)
    recommended pool = max(1, ceil(1.2 · p99))              20 % headroom above the p99

W is the process's average over all its sockets (inbound ones too), so the
split by destination assumes they are held alike. A process that opens at
least CHURN_RATE connections a second and holds them under CHURN_HOLD_S is
"churning": it connects per request, and a pool of the recommended size would
replace λ_d handshakes a second with a few long-lived connections.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from tracer.report.arrow_stats import nearest_rank, sums_by, ts_us
from tracer.report.destinations import endpoint_label

HEADROOM = 1.2
CHURN_RATE = 1.0        # new connections per second
CHURN_HOLD_S = 1.0
ALL_DESTINATIONS = "*"


@dataclass(frozen=True)
class PoolAdvice:
    host: str
    pid: int
    comm: str
    destination: str            # "addr:port", or "*" for all of the process's sockets
    arrival_per_s: float        # λ_d
    hold_s: float | None        # W (None if the process opened nothing: nothing to divide by)
    concurrency_mean: float
    concurrency_p99: float
    concurrency_peak: float
    recommended: int
    in_use_peak: int            # most established sockets the process held
    verdict: str

    @property
    def churning(self) -> bool:
        return self.verdict.startswith("churning")


def recommended_pool(concurrency_p99: float) -> int:
    return max(1, math.ceil(round(concurrency_p99 * HEADROOM, 9)))


def _verdict(arrival: float, hold: float | None) -> str:
    if hold is None:
        return "no new connections"
    if arrival >= CHURN_RATE and hold < CHURN_HOLD_S:
        return "churning: a connection per request, use a pool"
    if hold >= CHURN_HOLD_S:
        return "long-lived connections (pooled)"
    return "few connections"


def _arrivals(connects: pa.Table, interval_us: int) -> dict:
    """(host, pid, comm) -> destination -> {interval index: connects}."""
    out: dict[tuple, dict[str, dict[int, int]]] = {}
    if not connects.num_rows:
        return out
    t = connects.select(["host", "pid", "comm", "daddr", "dport"]).append_column(
        "slot", pc.divide(ts_us(connects), interval_us))
    for r in sums_by(t, ["host", "pid", "comm", "daddr", "dport", "slot"], [("slot", "count")]):
        per_dest = out.setdefault((r["host"], r["pid"], r["comm"]), {})
        per_dest.setdefault(endpoint_label(r["daddr"], r["dport"]), {})[r["slot"]] = \
            r["slot_count"]
    return out


def _window_p99(slots: dict[int, int], n_slots: int, dt: float, hold: float) -> tuple[float, float]:
    """(p99, peak) of concurrency per interval: arrivals over the last ~W seconds, times W."""
    k = max(1, round(hold / dt))
    dense = [0] * n_slots
    for slot, c in slots.items():
        if 0 <= slot < n_slots:
            dense[slot] += c
    conc, running = [], 0
    for i, c in enumerate(dense):
        running += c
        if i >= k:
            running -= dense[i - k]
        conc.append(running / (min(k, i + 1) * dt) * hold)
    conc.sort()
    return nearest_rank(conc, 0.99) or 0.0, conc[-1]


def pool_advice(sockets: pa.Table, connects: pa.Table, interval_us: int,
                n: int = 10) -> list[PoolAdvice]:
    """Advice per (process, destination), highest arrival rate first; empty without `sockets`."""
    if not sockets.num_rows:
        return []
    dt = interval_us / 1e6
    s = sockets.append_column("us", ts_us(sockets))
    procs = sums_by(s, ["host", "pid", "comm"], [
        ("opened", "sum"), ("opened", "list"), ("us", "list"), ("established", "mean"),
        ("established", "max"), ("us", "min"), ("us", "max")])
    arrivals = _arrivals(connects, interval_us)
    candidates = []
    for p in procs:
        key = (p["host"], p["pid"], p["comm"])
        span = (p["us_max"] - p["us_min"] + interval_us) / 1e6
        n_slots = max(1, round(span / dt))
        # each sockets row covers the interval that ends at its ts
        first_slot = (p["us_min"] - interval_us) // interval_us
        rate = (p["opened_sum"] or 0) / span
        hold = (p["established_mean"] or 0.0) / rate if rate else None
        if connects.num_rows:
            # only the connects made while the sockets table watched this process
            per_dest = {dest: {slot - first_slot: c for slot, c in slots.items()
                               if 0 <= slot - first_slot < n_slots}
                        for dest, slots in arrivals.get(key, {}).items()}
        else:  # no connects recorded: every socket the process opened counts
            per_dest = {ALL_DESTINATIONS: {
                (us - interval_us) // interval_us - first_slot: o or 0
                for us, o in zip(p["us_list"], p["opened_list"])}}
        for dest, slots in per_dest.items():
            arrival = sum(slots.values()) / span
            candidates.append((arrival, key, dest, slots, n_slots, hold,
                               p["established_max"] or 0))
    candidates.sort(key=lambda c: (-c[0], c[1][0], c[1][1], c[2]))
    out = []
    for arrival, key, dest, slots, n_slots, hold, in_use in candidates[:n]:
        p99, peak = _window_p99(slots, n_slots, dt, hold) if hold else (0.0, 0.0)
        out.append(PoolAdvice(
            host=key[0], pid=key[1], comm=key[2] or "?", destination=dest,
            arrival_per_s=arrival, hold_s=hold, concurrency_mean=arrival * (hold or 0.0),
            concurrency_p99=p99, concurrency_peak=peak, recommended=recommended_pool(p99),
            in_use_peak=in_use, verdict=_verdict(arrival, hold)))
    return out
