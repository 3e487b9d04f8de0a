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


# ---- the compiled add (tracer/_fastpath.c HistogramCore) against the definition

class _Reference:
    """Histogram's attributes with its Python add(), the definition
    (Histogram._add_any), whichever path Histogram itself takes."""
    __slots__ = ("counts", "count", "total", "min", "max")
    __init__ = Histogram.__init__
    add = Histogram._add_any


def _state(h):
    return ([(k, type(k), v, type(v)) for k, v in h.counts.items()],
            (h.count, type(h.count)), (repr(h.total), type(h.total)),
            (repr(h.min), type(h.min)), (repr(h.max), type(h.max)))


ODD_VALUES = [0.0, -0.0, -1.5, 0.999, 31.999999, 32.0, 63.99, 64.0, 1e-300, 5e-324,
              2.0**52 + 0.5, 2.0**53, 2.0**61, 2.0**62, -2.0**62, 4.6e18, 4.7e18, 2.0**63,
              1e300, math.inf, -math.inf, math.nan, 7, 0, -3, 2**70, True, False,
              Fraction(7, 2)]


def _same_outcome(ours, ref, *args, **kwargs):
    outcome = []
    for h in (ours, ref):
        try:
            h.add(*args, **kwargs)
            outcome.append(None)
        except Exception as e:      # the same refusal, if any
            outcome.append((type(e), str(e).replace("_add_any", "add")))
    assert outcome[0] == outcome[1], (args, kwargs, outcome)
    assert _state(ours) == _state(ref), (args, kwargs)


def test_the_histogram_is_compiled_where_the_event_path_is():
    from tracer import fastpath
    from tracer.aggregate import histogram
    assert (histogram._CORE is not None) == (fastpath.native is not None)


@pytest.mark.parametrize("seed", range(20))
def test_add_gives_what_the_definition_gives(seed):
    """Random floats of every magnitude and sign, the odd values above, other
    types and other n: the same counts, totals, extremes (and their types),
    or the same error, after every add."""
    rnd = random.Random(seed)
    ours, ref = Histogram(), _Reference()
    for _ in range(2000):
        pick = rnd.random()
        if pick < 0.6:
            v = rnd.uniform(-10, 10) * 10 ** rnd.randint(0, 19)
        elif pick < 0.8:
            v = rnd.choice(ODD_VALUES)
        else:
            v = float(rnd.getrandbits(rnd.randint(1, 64)))
        if rnd.random() < 0.1:
            n = rnd.choice([0, 2, -1, 1.0, 10**20, True])
            _same_outcome(ours, ref, v, n)
        elif rnd.random() < 0.02:
            _same_outcome(ours, ref, value=v)
        else:
            _same_outcome(ours, ref, v)


def test_add_on_counts_and_totals_of_other_types():
    """What replay assigns (tracer/replay/latency.py) and anything else: the
    compiled add hands the call to the definition, so the same results."""
    for counts, count, total, low in (({5: 2}, 2, 11, 5), ({}, 0, 0.0, math.inf),
                                      ({5: 1.5}, 1.5, 3.0, 2.5)):
        ours, ref = Histogram(), _Reference()
        for h in (ours, ref):
            h.counts, h.count, h.total, h.min, h.max = dict(counts), count, total, low, low
        for v in (3.5, 40.25, 7, 1e9):
            _same_outcome(ours, ref, v)


def test_add_with_wrong_arguments_is_refused_as_the_definition_refuses():
    ours, ref = Histogram(), _Reference()
    _same_outcome(ours, ref)
    _same_outcome(ours, ref, 1.0, 1, 2)
    _same_outcome(ours, ref, 1.0, k=2)
    _same_outcome(ours, ref, "1.0")
    _same_outcome(ours, ref, None)


def test_add_keeps_the_first_of_equal_extremes():
    """0.0 and -0.0 are equal: the extreme seen first stays (value < min,
    value > max), on both paths."""
    for first, second in ((0.0, -0.0), (-0.0, 0.0)):
        ours, ref = Histogram(), _Reference()
        for v in (first, second, 1.0, -1.0, -1.0, 1.0):
            _same_outcome(ours, ref, v)
        assert repr(ours.min) == "-1.0" and repr(Histogram().max) == "-inf"
        ours, ref = Histogram(), _Reference()
        _same_outcome(ours, ref, first)
        _same_outcome(ours, ref, second)
        assert repr(ours.min) == repr(first) and repr(ours.max) == repr(first)


def test_copies_and_pickles_are_equal_histograms():
    import copy
    import pickle
    h = Histogram()
    for v in (3.5, 100.25, 7, 1e9):
        h.add(v)
    assert type(copy.copy(h)) is Histogram and _state(copy.copy(h)) == _state(h)
    for other in (copy.deepcopy(h), pickle.loads(pickle.dumps(h))):
        assert type(other) is Histogram and _state(other) == _state(h)
        other.add(2.0)
        assert other.count == h.count + 1 and 2 not in h.counts
