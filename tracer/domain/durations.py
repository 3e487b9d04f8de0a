"""How a duration is written, everywhere: live view, console, replay, report.

Three significant digits and the unit right after the number, so that a
latency, a hold time and a recording's span read alike and fit a 6-cell
table column: 7µs, 312µs, 4.12ms, 85.3ms, 312ms, 1.24s, 85.3s, 5m03s, 2h10m.
Thresholds compare with the rounding points, so 999.6 µs is 1.00ms, never
1000µs.
"""
from __future__ import annotations

import math

MICRO = "µs"


def duration(us: float | None) -> str:
    """A duration given in microseconds; "-" for None (nothing measured)."""
    if us is None or math.isnan(us):
        return "-"
    if us < 0:
        return "-" + duration(-us)
    if us < 999.5:
        return f"{us:.0f}{MICRO}"
    for unit, size in (("ms", 1e3), ("s", 1e6)):
        x = us / size
        if x < 9.995:
            return f"{x:.2f}{unit}"
        if x < 99.95:
            return f"{x:.1f}{unit}"
        if x < 999.5 and unit == "ms":
            return f"{x:.0f}{unit}"
    s = round(us / 1e6)
    if s < 7200:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def seconds(s: float | None) -> str:
    """A duration given in seconds."""
    return duration(None if s is None else s * 1e6)
