"""Charts drawn with block characters: bars, sparklines, a latency histogram.
Pure functions of numbers to strings, so they are cheap and unit-testable."""
from __future__ import annotations

import math
from typing import Sequence

from tracer.tui.units import fmt_count, fmt_us

EIGHTHS = " ▏▎▍▌▋▊▉█"      # left-aligned partial blocks for horizontal bars
LEVELS = " ▁▂▃▄▅▆▇█"       # bottom-aligned partial blocks for vertical bars


def bar(fraction: float, width: int) -> str:
    """A horizontal bar `width` cells wide, filled to `fraction` (clamped to 0..1),
    padded with spaces. Any non-zero fraction shows at least a sliver."""
    fraction = min(max(fraction, 0.0), 1.0)
    eighths = round(fraction * width * 8)
    if fraction > 0 and eighths == 0:
        eighths = 1
    full, part = divmod(eighths, 8)
    text = "█" * full + (EIGHTHS[part] if part else "")
    return text.ljust(width)


def sparkline(values: Sequence[float | None], width: int, height: int = 1) -> list[str]:
    """The last `width` values as `height` lines of vertical bars. None (no sample in that interval) is a blank column; any value > 0
    is at least one eighth of a cell high, so a single slow interval stays visible."""
    values = list(values)[-width:] if width > 0 else []
    present = sorted(v for v in values if v is not None)
    # Scale to at least twice the median: a steady series sits at half height and
    # a spike reaches the top, instead of every steady bar being full height.
    top = max(present[-1], 2 * present[len(present) // 2]) if present else 0.0
    steps = height * 8
    levels = []
    for v in values:
        if v is None or top <= 0:
            levels.append(0)
        else:
            levels.append(max(1, math.ceil(v / top * steps)) if v > 0 else 0)
    lines = []
    for row in range(height - 1, -1, -1):
        base = row * 8
        lines.append("".join(LEVELS[min(8, max(0, lv - base))] for lv in levels).ljust(width))
    return lines


def coarse_buckets(buckets: Sequence[tuple[float, float, int]],
                   max_rows: int = 8) -> list[tuple[float, float, int]]:
    """Merge fine (log-linear) histogram buckets into at most `max_rows` bins
    whose edges are powers of two (in µs), covering only the occupied range."""
    if not buckets:
        return []
    bins: dict[int, int] = {}
    for low, _high, n in buckets:
        if n:
            e = int(math.floor(math.log2(low))) if low >= 1 else 0
            bins[e] = bins.get(e, 0) + n
    if not bins:
        return []
    lo, hi = min(bins), max(bins)
    span = hi - lo + 1
    group = max(1, math.ceil(span / max_rows))  # powers of two per row
    out = []
    for start in range(lo, hi + 1, group):
        n = sum(bins.get(e, 0) for e in range(start, start + group))
        low = 0.0 if start == 0 else float(2 ** start)
        out.append((low, float(2 ** (start + group)), n))
    return out


def histogram_lines(buckets: Sequence[tuple[float, float, int]], width: int,
                    max_rows: int = 8) -> list[tuple[str, str, str]]:
    """(range label, bar, count) per coarse bin, bars scaled to the fullest bin."""
    rows = coarse_buckets(buckets, max_rows)
    if not rows:
        return []
    most = max(n for _, _, n in rows) or 1
    return [(f"{fmt_us(low):>7}-{fmt_us(high):<7}", bar(n / most, width), fmt_count(n))
            for low, high, n in rows]
