"""Latency histogram with bounded memory and bounded relative error.

Log-linear buckets (as in HdrHistogram): each power of two is split into
SUB linear sub-buckets, so any value is known to within 1/SUB of itself
(about 3 % for SUB = 32) whatever its magnitude, and a histogram of
microsecond latencies from 1 µs to an hour holds at most ~900 buckets.
"""
from __future__ import annotations

import math

SUB_BITS = 5
SUB = 1 << SUB_BITS


def bucket_of(value: float) -> int:
    v = int(value)
    if v < SUB:
        return max(v, 0)
    e = v.bit_length() - 1          # floor(log2 v), >= SUB_BITS
    shift = e - SUB_BITS
    return (shift + 1) * SUB + ((v >> shift) - SUB)


def bucket_bounds(index: int) -> tuple[float, float]:
    """[low, high) of the values that fall into bucket `index`."""
    if index < SUB:
        return float(index), float(index + 1)
    shift = index // SUB - 1
    low = (SUB + index % SUB) << shift
    return float(low), float(low + (1 << shift))


def _compiled_core():
    """tracer/_fastpath.c's HistogramCore (the five attributes, and add() of
    a float in C: four of them a connection, BENCHMARKS.md section 23), or
    None on the pure-Python path."""
    from tracer import fastpath
    return getattr(fastpath.native, "HistogramCore", None)


_CORE = _compiled_core()


class Histogram(_CORE or object):
    __slots__ = () if _CORE else ("counts", "count", "total", "min", "max")

    def __init__(self):
        self.counts: dict[int, int] = {}
        self.count = 0
        self.total = 0.0
        self.min = math.inf
        self.max = -math.inf

    def _add_any(self, value: float, n: int = 1) -> None:
        """add(), the definition: the compiled add() does the same for a
        float and n == 1 and calls this for anything else."""
        v = int(value)                   # bucket_of, inlined: called per event
        if v < SUB:
            b = v if v > 0 else 0
        else:
            shift = v.bit_length() - 1 - SUB_BITS
            b = (shift + 1) * SUB + ((v >> shift) - SUB)
        counts = self.counts
        counts[b] = counts.get(b, 0) + n
        self.count += n
        self.total += value * n
        if value < self.min:
            self.min = value
        if value > self.max:
            self.max = value

    def _add_each(self, values) -> None:
        """add_all(), the definition: the compiled add_all() does the same
        loop in C (a poll's latencies of one key at once, tracer/aggregate/tally.py)."""
        for v in values:
            self.add(v)

    if not _CORE:
        add = _add_any
        add_all = _add_each

    def __reduce__(self):
        # copy and pickle alike on both paths (the compiled base's attributes
        # are not __slots__, which is what they would look for)
        return (_rebuilt, (self.counts, self.count, self.total, self.min, self.max))

    def merge(self, other: "Histogram") -> None:
        for b, n in other.counts.items():
            self.counts[b] = self.counts.get(b, 0) + n
        self.count += other.count
        self.total += other.total
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)

    @property
    def mean(self) -> float | None:
        return self.total / self.count if self.count else None

    def percentile(self, q: float) -> float | None:
        """Value at quantile q (0..100): the midpoint of its bucket, clamped to
        the exact observed min and max."""
        if not self.count:
            return None
        rank = max(1, math.ceil(self.count * q / 100.0))
        seen = 0
        for b in sorted(self.counts):
            seen += self.counts[b]
            if seen >= rank:
                low, high = bucket_bounds(b)
                return min(max((low + high) / 2.0, self.min), self.max)
        return self.max

    def buckets(self) -> list[tuple[float, float, int]]:
        """(low, high, count) in increasing order, for drawing."""
        return [(*bucket_bounds(b), self.counts[b]) for b in sorted(self.counts)]


def _rebuilt(counts, count, total, low, high) -> Histogram:
    h = Histogram()
    h.counts, h.count, h.total, h.min, h.max = counts, count, total, low, high
    return h
