"""Pool arithmetic (Little's law, recommended size, connect overhead) and the
churn classification, against figures worked out by hand."""
import pytest

from tracer.aggregate import pools


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


def test_verdict_churning_names_rate_hold_and_pool():
    text = pools.verdict(40.0, 0.1, in_use=4, recommended=5, connect_s=None)
    assert text == "churning: 40 new connections/s held 100 ms each; a pool of 5 would serve it"


def test_verdict_churning_adds_connect_cost_when_known():
    text = pools.verdict(250.0, 0.004, in_use=1, recommended=2, connect_s=0.002)
    assert text == ("churning: 250 new connections/s held 4 ms each; a pool of 2 would serve it"
                    "; connecting alone costs 0.50 connections' worth of time")


def test_verdict_leaves_out_a_connect_cost_too_small_to_show():
    # 40/s connecting in 50 µs on loopback: 0.002 connections' worth, "0.00"
    text = pools.verdict(40.0, 0.1, in_use=4, recommended=5, connect_s=0.00005)
    assert text == "churning: 40 new connections/s held 100 ms each; a pool of 5 would serve it"
    text = pools.verdict(40.0, 0.1, in_use=4, recommended=5, connect_s=0.000125)
    assert text.endswith("; connecting alone costs 0.01 connections' worth of time")


def test_verdict_pooled():
    assert pools.verdict(0.2, 30.0, in_use=5, recommended=7, connect_s=0.001) == "pooled: 5 held"
    assert pools.verdict(0.0, None, in_use=7, recommended=7, connect_s=None) == "pooled: 7 held"
    assert (pools.verdict(0.0, None, in_use=20, recommended=7, connect_s=None)
            == "pooled: 20 held, about 7 would do")


def test_verdict_mixed_or_idle():
    # nothing held and not churning
    assert pools.verdict(0.0, None, in_use=0, recommended=1, connect_s=None) == "mixed or idle"
    # many opens of long-held connections: neither a pool nor churn
    assert pools.verdict(20.0, 5.0, in_use=100, recommended=125, connect_s=None) == "mixed or idle"
