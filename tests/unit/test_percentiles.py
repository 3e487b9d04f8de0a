"""Nearest-rank percentiles, pinned where rounding the rank differs from
taking its ceiling: every percentile in the project is the value at rank
ceil(q * n) of the n sorted values (tracer/report/arrow_stats.py), and a rank
taken with round() instead passes any test whose ranks happen to round up.
The lists here are small and their values distinct, so a rank off by one
gives a different answer."""
import math
import random
from fractions import Fraction

import numpy as np
import pyarrow as pa
import pytest

from tracer.aggregate.histogram import SUB, Histogram, bucket_bounds, bucket_of
from tracer.replay.latency import ConnectIndex
from tracer.replay.rows import _percentile as replay_percentile
from tracer.report.arrow_stats import nearest_rank, quantiles_by

# q as a fraction of 1; each has some n <= 12 for which round(q*n) != ceil(q*n)
QS = ("0.01", "0.1", "0.25", "0.3", "0.5", "0.6", "0.75", "0.9", "0.95", "0.99", "1")


def exact_rank(n: int, q: str) -> int:
    """1-based nearest rank, with exact fractions (no float on the way)."""
    return max(1, math.ceil(Fraction(n) * Fraction(q)))


def test_the_cases_below_tell_ceil_from_round():
    """Guards the test itself: the grid has ranks where round() (Python's, to
    even) and ceil() disagree, in both directions of rounding."""
    differ = [(n, q) for n in range(1, 13) for q in QS
              if max(1, round(n * float(q))) != exact_rank(n, q)]
    assert len(differ) > 20
    assert (4, "0.6") in differ and (10, "0.25") in differ


def test_nearest_rank_by_hand_where_round_and_ceil_differ():
    four = [10, 20, 30, 40]
    assert nearest_rank(four, 0.6) == 30      # rank ceil(2.4) = 3; round: 2
    assert nearest_rank(four, 0.3) == 20      # rank ceil(1.2) = 2; round: 1
    ten = list(range(1, 11))
    assert nearest_rank(ten, 0.25) == 3       # ceil(2.5) = 3; round (to even): 2
    assert nearest_rank(ten, 0.91) == 10      # ceil(9.1) = 10; round: 9
    assert nearest_rank([7], 0.01) == 7       # rank is at least 1
    sixty = list(range(60))
    assert nearest_rank(sixty, 0.99) == 59    # ceil(59.4) = 60; round: 59 -> 58


@pytest.mark.parametrize("n", range(1, 13))
def test_nearest_rank_on_every_small_list(n):
    values = [100 * (i + 1) for i in range(n)]
    for q in QS:
        assert nearest_rank(values, float(q)) == values[exact_rank(n, q) - 1], (n, q)


def test_quantiles_by_on_groups_of_every_small_size():
    rows = [{"g": n, "v": float(100 * (i + 1))} for n in range(1, 13) for i in range(n)]
    random.Random(1).shuffle(rows)
    qs = [float(q) for q in QS]
    got = quantiles_by(pa.Table.from_pylist(rows), ["g"], "v", qs)
    for n in range(1, 13):
        count, picks = got[(n,)]
        assert count == n
        assert picks == [100.0 * exact_rank(n, q) for q in QS], n


@pytest.mark.parametrize("n", range(1, 13))
def test_histogram_percentile_is_nearest_rank_where_buckets_are_exact(n):
    """Below SUB every integer has a bucket of its own, so the histogram's
    answer (the bucket's midpoint, clamped to min and max) names the exact
    value: floor(answer) must be the value at the nearest rank."""
    values = list(range(3, 3 + 2 * n, 2))      # distinct, all below SUB
    assert values[-1] < SUB
    h = Histogram()
    for v in reversed(values):
        h.add(v)
    for q in QS:
        want = values[exact_rank(n, q) - 1]
        got = h.percentile(float(q) * 100)
        assert math.floor(got) == want, (n, q, got)
        assert replay_percentile(values, float(q) * 100) == got


def test_histogram_percentile_by_hand():
    h = Histogram()
    for v in (1, 2, 3, 4):
        h.add(v)
    assert h.percentile(60) == 3.5       # rank 3: bucket [3, 4); round would give rank 2
    assert h.percentile(30) == 2.5       # rank 2
    assert h.percentile(100) == 4        # clamped to the max observed
    assert h.percentile(1) == 1.5


@pytest.mark.parametrize("seed", range(4))
def test_histogram_error_is_within_its_bucket_bound_against_numpy(seed):
    """Against numpy's nearest-rank percentile (method="inverted_cdf") on
    random data of many magnitudes: the answer is the midpoint of a bucket at
    most 1/SUB of its low edge wide, so it is off by at most half that (and
    by at most half a unit below SUB, where buckets are one unit wide)."""
    rng = np.random.default_rng(seed)
    n = 10_007          # prime: n * q / 100 is never a whole number below
    values = np.concatenate([rng.lognormal(6, 2.5, n // 2), rng.uniform(0, 64, n - n // 2)])
    h = Histogram()
    for v in values:
        h.add(float(v))
    for q in (1, 10, 25, 50, 75, 90, 95, 99, 99.9):
        want = float(np.percentile(values, q, method="inverted_cdf"))
        got = h.percentile(q)
        low, high = bucket_bounds(bucket_of(want))
        assert low <= got < high or got == h.max, (q, want, got)
        bound = 0.5 if want < SUB else (high - low) / 2
        assert abs(got - want) <= bound + 1e-9, (q, want, got)
        assert (high - low) <= max(1.0, low / SUB)


def test_replay_worst_p99_takes_the_ceiling_rank():
    """60 established connects to one destination in one interval: p99 is rank
    ceil(59.4) = 60, the slowest; a rounded rank would take the 59th."""
    lat = [1000.0 + i for i in range(60)]
    random.Random(2).shuffle(lat)
    rows = [{"family": 4, "daddr": "10.0.0.1", "dport": 80, "pid": 1, "latency_us": v,
             "outcome": "established"} for v in lat]
    index = ConnectIndex(pa.Table.from_pylist(rows), np.array([0, len(rows)]))
    assert index.worst_p99() == (1059.0, 0, (4, "10.0.0.1", 80))
