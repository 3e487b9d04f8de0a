"""Connection pool arithmetic (Little's law), the churn rule and the verdict
text: one definition, used by the live view (tracer/aggregate/sockets.py),
written to the `pools` table, and read back as is by replay and the report.

Little's law: the number of connections in use L equals the rate at which
they are opened (lambda, per second) times how long each is held (W,
seconds), W counted from connect() to close, handshake wait included: a
connection waiting for its SYN-ACK is already one the pool must hold. A pool
must cover L at its busiest, plus headroom for bursts. Without a pool every
request also pays the connect itself: what pooling saves is lambda times the
connect time.

Rates and hold times cover a window of the last WINDOW intervals (or since
the flow was first seen, if later); every rate is stated with that window.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from tracer.domain.durations import duration, seconds

HEADROOM = 1.25          # 25 % above the busiest observed demand
WINDOW = 30              # intervals of history behind the advice
CHURN_MIN_RATE = 5.0     # opens per second to one destination before we call it churn
CHURN_MAX_HOLD_S = 1.0   # ...when connections live less than this
FORMULA = (f"Little's law: connections in use = new connections per second x time each "
           f"is held (connect() to close); pool = ceil({HEADROOM} x the larger of that "
           f"and the p99 of connections held at interval ends), and at least the most held "
           f"at once; over the last {WINDOW} intervals")


def littles_law(arrival_per_s: float, hold_s: float) -> float:
    """Mean connections in use: L = lambda * W."""
    if arrival_per_s < 0 or hold_s < 0:
        raise ValueError("rates and times are not negative")
    return arrival_per_s * hold_s


def recommended_pool(demand_peak: float, headroom: float = HEADROOM) -> int:
    """Smallest pool that covers the busiest demand with headroom (at least 1)."""
    return max(1, math.ceil(demand_peak * headroom - 1e-9))


def connect_overhead(arrival_per_s: float, connect_s: float) -> float:
    """Connections' worth of time spent only connecting, per second, when every
    request opens its own: what pooling saves (L_connect = lambda * connect time)."""
    return arrival_per_s * connect_s


def is_churning(opens_per_s: float, median_hold_s: float | None) -> bool:
    """Opening connections fast and dropping them quickly: no pooling."""
    return (opens_per_s >= CHURN_MIN_RATE and median_hold_s is not None
            and median_hold_s < CHURN_MAX_HOLD_S)


def nearest_rank(values: Sequence[float], q: float) -> float:
    """The nearest-rank q-quantile (0 < q <= 1) of values (not empty)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def per_second(rate: float) -> str:
    """A rate as the verdicts write it: 250, 12, 3.4, 0.0, 0.05."""
    if rate >= 10:
        return f"{rate:.0f}"
    return f"{rate:.1f}" if rate >= 0.1 or rate == 0 else f"{rate:.1g}"


def verdict(opens_per_s: float, median_hold_s: float | None, in_use: int,
            recommended: int, connect_s: float | None, window_s: float) -> str:
    """One line saying what the figures mean, with the window they cover."""
    rate = f"{per_second(opens_per_s)} new connections/s over {seconds(window_s)}"
    if is_churning(opens_per_s, median_hold_s):
        text = (f"churning: {rate}, median held {duration(median_hold_s * 1e6)}; "
                f"a pool of {recommended} would serve it")
        overhead = connect_overhead(opens_per_s, connect_s or 0.0)
        if overhead >= 0.005:   # shown to two decimals: "0.00" would say nothing
            text += (f"; connecting alone costs {overhead:.2f} "
                     f"connections' worth of time")
        return text
    if in_use and opens_per_s < CHURN_MIN_RATE:
        held = f"{in_use} connection{'s' if in_use != 1 else ''} held, {rate}"
        if in_use > recommended:
            return f"pooled: {held}; about {recommended} would do"
        return f"pooled: {held}"
    return f"mixed or idle: {rate}"


@dataclass(frozen=True)
class Demand:
    """What one flow (a process and one remote endpoint) needs over the window."""

    arrival_per_s: float        # new connections per second over window_s
    hold_s: float | None        # mean connect()-to-close time of those that closed
    concurrency_mean: float     # the larger of Little's law and the mean held
    concurrency_p99: float      # nearest-rank p99 of connections held at interval ends
    concurrency_peak: int       # most held at once in the window (events and scans)
    recommended: int
    in_use: int                 # held at the last interval end
    window_s: float
    verdict: str


def demand(opens: int, window_s: float, hold_s: float | None, median_hold_s: float | None,
           held: Sequence[int], connect_s: float | None = None,
           peaks: Sequence[int] = ()) -> Demand:
    """The advice for one flow: `opens` connections opened over `window_s`
    seconds; hold times (mean and median, seconds) of those that closed, None
    if none did; `held`: connections held at each interval end (oldest
    first); `peaks`: the most open at once in each interval, from the opens
    and closes themselves.

    Little's law and the scans see the mean and single moments: the pool gets
    HEADROOM above the larger of them, for the bursts they miss. The peak is
    a burst seen: the pool covers it as it is. (It can count one connection
    more per client than the application holds: a socket the client closed
    lasts until the peer's FIN, as the next one opens.)"""
    window_s = window_s if window_s > 0 else 1.0
    rate = opens / window_s
    samples = list(held) or [0]
    peak = max(samples + list(peaks))
    little = littles_law(rate, hold_s) if hold_s is not None else 0.0
    p99 = float(nearest_rank(samples, 0.99))
    rec = max(recommended_pool(max(little, p99)), peak)
    in_use = samples[-1]
    return Demand(
        arrival_per_s=rate, hold_s=hold_s,
        concurrency_mean=max(little, sum(samples) / len(samples)), concurrency_p99=p99,
        concurrency_peak=peak, recommended=rec, in_use=in_use, window_s=window_s,
        verdict=verdict(rate, median_hold_s, in_use, rec, connect_s, window_s))
