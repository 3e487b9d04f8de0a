"""Log-linear histogram against exact arithmetic on the raw values."""

import math
import random
from fractions import Fraction

import pytest

from tracer.aggregate.histogram import SUB, Histogram, bucket_bounds, bucket_of

QS = (0, 1, 10, 25, 50, 75, 90, 95, 99, 99.9, 100)


def exact_percentile(values, q):
    """Nearest-rank percentile, computed with exact fractions."""
    s = sorted(values)
    rank = max(1, math.ceil(Fraction(len(s)) * Fraction(str(q)) / 100))
    return s[rank - 1]


def test_every_value_lies_in_its_own_bucket():
    for v in range(100_001):
        low, high = bucket_bounds(bucket_of(v))
        assert low <= v < high, v


def test_fractional_values_fall_in_the_bucket_of_their_floor():
    for v in (0.5, 31.9, 32.4, 1000.7, 123456.789):
        low, high = bucket_bounds(bucket_of(v))
        assert low <= v < high, v


def test_buckets_are_contiguous_and_monotonic():
    last = bucket_of(2**40)
    for i in range(last):
        assert bucket_bounds(i)[1] == bucket_bounds(i + 1)[0], i
    prev = 0
    for v in range(100_001):
        b = bucket_of(v)
        assert b in (prev, prev + 1), v
        prev = b


@pytest.mark.parametrize("start", [SUB, 1000, 65_536, 10**6, 3_600 * 10**6, 2**40])
def test_bucket_width_is_at_most_1_32_of_any_value_in_it(start):
    for v in range(start, start + 5000):
        low, high = bucket_bounds(bucket_of(v))
        assert (high - low) / v <= 1 / 32, v


def test_small_values_have_exact_buckets():
    for v in range(SUB):
        assert bucket_bounds(bucket_of(v)) == (v, v + 1)


def _datasets():
    rng = random.Random(20240611)
    yield "uniform", [rng.randint(1, 10**6) for _ in range(5000)]
    yield "lognormal", [rng.lognormvariate(7, 2) for _ in range(5000)]
    yield "exponential", [rng.expovariate(1 / 500) for _ in range(3000)]
    # 1 ms and 1 s: a healthy pool with a tail of SYN retransmit timeouts
    yield "bimodal", [rng.gauss(1000, 50) if rng.random() < 0.9 else rng.gauss(10**6, 10**4)
                      for _ in range(4000)]
    yield "tiny", [rng.randint(0, 40) for _ in range(777)]
    yield "single", [4242.0]
    yield "two", [3.0, 7_000_000.0]


@pytest.mark.parametrize("name,values", list(_datasets()), ids=lambda x: x if isinstance(x, str) else "")
def test_percentile_is_within_the_bucket_of_the_exact_value(name, values):
    h = Histogram()
    for v in values:
        h.add(v)
    assert h.count == len(values)
    for q in QS:
        want = exact_percentile(values, q)
        got = h.percentile(q)
        low, high = bucket_bounds(bucket_of(want))
        assert low <= got < high, (name, q, want, got)
        if want >= SUB:
            assert abs(got - want) <= want / 32, (name, q, want, got)
        assert min(values) <= got <= max(values)


def test_bimodal_percentiles_land_on_the_right_mode():
    h = Histogram()
    h.add(1000, n=900)
    h.add(1_000_000, n=100)
    assert h.percentile(50) == pytest.approx(1000, rel=1 / 32)
    assert h.percentile(90) == pytest.approx(1000, rel=1 / 32)
    assert h.percentile(91) == pytest.approx(1_000_000, rel=1 / 32)
    assert h.percentile(99) == pytest.approx(1_000_000, rel=1 / 32)


def test_percentiles_are_clamped_to_observed_min_and_max():
    h = Histogram()
    h.add(1_000_001)  # bucket [999424, 1015808): its midpoint is far from the value
    assert all(h.percentile(q) == 1_000_001 for q in QS)
    # both in bucket [40, 41), midpoint 40.5 lies above the max
    h = Histogram()
    h.add(40.0)
    h.add(40.2)
    assert all(40.0 <= h.percentile(q) <= 40.2 for q in QS)
    # both in bucket [992, 1008), midpoint 1000 lies below the min
    h = Histogram()
    h.add(1000.9)
    h.add(1001.0)
    assert all(1000.9 <= h.percentile(q) <= 1001.0 for q in QS)
    assert (h.min, h.max) == (1000.9, 1001.0)


def test_merge_equals_adding_everything_to_one_histogram():
    rng = random.Random(7)
    a_vals = [rng.lognormvariate(6, 1.5) for _ in range(2000)]
    b_vals = [rng.lognormvariate(9, 0.5) for _ in range(500)]
    a, b, both = Histogram(), Histogram(), Histogram()
    for v in a_vals:
        a.add(v)
        both.add(v)
    for v in b_vals:
        b.add(v)
        both.add(v)
    a.merge(b)
    assert a.counts == both.counts
    assert a.count == both.count == 2500
    assert (a.min, a.max) == (both.min, both.max) == (min(a_vals + b_vals), max(a_vals + b_vals))
    assert a.total == pytest.approx(both.total)
    assert [a.percentile(q) for q in QS] == [both.percentile(q) for q in QS]


def test_merge_with_empty_histograms():
    h = Histogram()
    h.add(500)
    h.merge(Histogram())
    assert (h.count, h.min, h.max, h.percentile(50)) == (1, 500, 500, 500)
    empty = Histogram()
    empty.merge(h)
    assert (empty.count, empty.min, empty.max, empty.percentile(99)) == (1, 500, 500, 500)


def test_empty_histogram_has_no_statistics():
    h = Histogram()
    assert h.percentile(50) is None
    assert h.percentile(99) is None
    assert h.mean is None
    assert h.buckets() == []


def test_mean_and_buckets_count_repeated_adds():
    h = Histogram()
    h.add(10, n=3)
    h.add(100_000)
    assert h.count == 4
    assert h.mean == pytest.approx((30 + 100_000) / 4)
    bk = h.buckets()
    assert [c for _, _, c in bk] == [3, 1]
    assert bk[0][:2] == (10.0, 11.0)
    assert bk[1][0] <= 100_000 < bk[1][1]
