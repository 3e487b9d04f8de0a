"""Pool arithmetic (Little's law, recommended size, connect overhead) and the
churn classification, against figures worked out by hand."""
import pytest

from tracer.domain import pools


@pytest.mark.parametrize("rate, hold, expected", [
    (40.0, 0.1, 4.0),        # 40 connections/s held 100 ms: 4 in use on average
    (250.0, 0.004, 1.0),
    (0.0, 5.0, 0.0),
    (10.0, 0.0, 0.0),
    (3.0, 20.0, 60.0),
])
def test_littles_law_is_rate_times_hold(rate, hold, expected):
    assert pools.littles_law(rate, hold) == pytest.approx(expected)


@pytest.mark.parametrize("rate, hold", [(-1.0, 1.0), (1.0, -0.5)])
def test_littles_law_rejects_negative_inputs(rate, hold):
    with pytest.raises(ValueError):
        pools.littles_law(rate, hold)


@pytest.mark.parametrize("demand, expected", [
    (0.0, 1),     # never less than one connection
    (0.5, 1),     # 0.625 -> 1
    (0.8, 1),     # exactly 1.0 with headroom: no rounding up past it
    (4.0, 5),     # 5.0 exactly
    (24 * 0.1, 3),  # 2.4000000000000004 * 1.25 = 3.0000000000000004: still 3
    (4.01, 6),    # 5.0125 -> 6
    (5.0, 7),     # 6.25 -> 7
    (100.0, 125),
])
def test_recommended_pool_covers_demand_with_25_percent_headroom(demand, expected):
    assert pools.recommended_pool(demand) == expected


def test_recommended_pool_headroom_is_a_parameter():
    assert pools.recommended_pool(10.0, headroom=1.0) == 10
    assert pools.recommended_pool(10.0, headroom=2.0) == 20


def test_connect_overhead_is_rate_times_connect_time():
    # 250 connects/s, 2 ms each: half a connection busy only connecting
    assert pools.connect_overhead(250.0, 0.002) == pytest.approx(0.5)
    assert pools.connect_overhead(0.0, 0.002) == 0.0


@pytest.mark.parametrize("rate, median_hold, churning", [
    (40.0, 0.1, True),
    (5.0, 0.999, True),       # the rate threshold is inclusive, the hold one exclusive
    (4.99, 0.1, False),       # too few opens to call it churn
    (40.0, 1.0, False),       # connections held a second or more are not churn
    (40.0, None, False),      # no hold time known yet (nothing has closed)
    (1000.0, 0.0, True),
])
def test_is_churning(rate, median_hold, churning):
    assert pools.is_churning(rate, median_hold) is churning


def test_verdict_churning_names_rate_window_hold_and_pool():
    text = pools.verdict(40.0, 0.1, in_use=4, recommended=5, connect_s=None, window_s=30.0)
    assert text == ("churning: 40 new connections/s over 30.0s, median held 100ms; "
                    "a pool of 5 would serve it")


def test_verdict_churning_adds_connect_cost_when_known():
    text = pools.verdict(250.0, 0.004, in_use=1, recommended=2, connect_s=0.002, window_s=12.0)
    assert text == ("churning: 250 new connections/s over 12.0s, median held 4.00ms; "
                    "a pool of 2 would serve it"
                    "; connecting alone costs 0.50 connections' worth of time")


def test_verdict_leaves_out_a_connect_cost_too_small_to_show():
    # 40/s connecting in 50 µs on loopback: 0.002 connections' worth, "0.00"
    text = pools.verdict(40.0, 0.1, in_use=4, recommended=5, connect_s=0.00005, window_s=30.0)
    assert "connecting alone" not in text
    text = pools.verdict(40.0, 0.1, in_use=4, recommended=5, connect_s=0.000125, window_s=30.0)
    assert text.endswith("; connecting alone costs 0.01 connections' worth of time")


@pytest.mark.parametrize("in_use, recommended, rate, expected", [
    (5, 7, 0.0, "pooled: 5 connections held, 0.0 new connections/s over 30.0s"),
    (1, 1, 0.1, "pooled: 1 connection held, 0.1 new connections/s over 30.0s"),
    (20, 7, 0.5, "pooled: 20 connections held, 0.5 new connections/s over 30.0s; "
                 "about 7 would do"),
    (0, 1, 0.0, "mixed or idle: 0.0 new connections/s over 30.0s"),
    (0, 1, 0.04, "mixed or idle: 0.04 new connections/s over 30.0s"),
])
def test_verdict_pooled_and_idle_state_the_window(in_use, recommended, rate, expected):
    assert pools.verdict(rate, 60.0, in_use, recommended, None, 30.0) == expected


def test_nearest_rank_takes_the_ceiling_rank():
    # rank ceil(0.99 * 30) = 30 of 30: the largest; ceil(0.5 * 4) = 2
    assert pools.nearest_rank(list(range(1, 31)), 0.99) == 30
    assert pools.nearest_rank([4, 1, 3, 2], 0.5) == 2
    assert pools.nearest_rank(list(range(1, 101)), 0.99) == 99   # round() would give 100 too


def test_demand_takes_the_larger_of_littles_law_and_what_was_held():
    # 8 clients, each connection held 20 ms connect-to-close, 400/s: L = 8
    d = pools.demand(opens=12_000, window_s=30.0, hold_s=0.02, median_hold_s=0.02,
                     held=[3, 7, 5])
    assert d.arrival_per_s == pytest.approx(400.0)
    assert d.concurrency_mean == pytest.approx(8.0)
    assert d.recommended == 10            # ceil(1.25 * 8)
    assert d.in_use == 5 and d.concurrency_peak == 7 and d.concurrency_p99 == 7.0
    assert d.verdict.startswith("churning: 400 new connections/s over 30.0s")
    # a keep-alive client: 5 held all along, nothing new
    d = pools.demand(opens=0, window_s=30.0, hold_s=None, median_hold_s=None, held=[5] * 30)
    assert (d.recommended, d.in_use, d.concurrency_mean) == (7, 5, 5.0)
    assert d.verdict.startswith("pooled: 5 connections held")


def test_demand_without_samples_or_window_is_defined():
    d = pools.demand(opens=0, window_s=0.0, hold_s=None, median_hold_s=None, held=[])
    assert (d.recommended, d.in_use, d.window_s) == (1, 0, 1.0)


def test_demand_covers_the_peak_the_events_saw_not_only_the_mean():
    # pgbench -C -c 8: about 5 open on average (Little's law, and the
    # scans), 9 at its busiest moments (a closed socket waits for the
    # server's FIN as the next opens): the pool covers the peak as seen
    d = pools.demand(opens=1000, window_s=5.0, hold_s=0.027, median_hold_s=0.024,
                     held=[5, 6, 4, 5], peaks=[9, 7, 8, 9])
    assert d.concurrency_mean == pytest.approx(5.4)
    assert (d.concurrency_p99, d.concurrency_peak, d.recommended, d.in_use) == (6.0, 9, 9, 5)
    # the mean with headroom, when it is the larger: ceil(1.25 x 5.4) = 7
    d = pools.demand(opens=1000, window_s=5.0, hold_s=0.027, median_hold_s=0.024,
                     held=[5, 6, 4, 5], peaks=[6, 6])
    assert (d.concurrency_peak, d.recommended) == (6, 8)      # ceil(1.25 x 6 scans)
