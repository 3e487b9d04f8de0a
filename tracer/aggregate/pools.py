"""Connection pool arithmetic (Little's law) and churn classification. Pure.

Little's law: the number of connections in use L equals the rate at which
they are opened (lambda, per second) times how long each is held (W, seconds).
A pool must cover L at its busiest, plus headroom for bursts. Without a pool,
every request also pays the connect itself: the pool that would replace it
needs only the time connections are used, not the time spent connecting.
"""
from __future__ import annotations

import math

HEADROOM = 1.25          # 25 % above the busiest observed demand
CHURN_MIN_RATE = 5.0     # opens per second to one destination before we call it churn
CHURN_MAX_HOLD_S = 1.0   # ...when connections live less than this


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


def verdict(opens_per_s: float, median_hold_s: float | None, in_use: int,
            recommended: int, connect_s: float | None) -> str:
    if is_churning(opens_per_s, median_hold_s):
        text = (f"churning: {opens_per_s:.0f} new connections/s held "
                f"{median_hold_s * 1000:.0f} ms each; a pool of {recommended} would serve it")
        overhead = connect_overhead(opens_per_s, connect_s or 0.0)
        if overhead >= 0.005:   # shown to two decimals: "0.00" would say nothing
            text += (f"; connecting alone costs {overhead:.2f} "
                     f"connections' worth of time")
        return text
    if in_use and opens_per_s < CHURN_MIN_RATE:
        if in_use > recommended:
            return f"pooled: {in_use} held, about {recommended} would do"
        return f"pooled: {in_use} held"
    return "mixed or idle"
