"""ConnectTable: per-destination and per-process statistics, rolled per interval."""

import pytest

from tracer.aggregate.connects import HISTORY, ConnectTable
from tracer.events import Connect

T0 = 5_000_000_000  # an arbitrary CLOCK_MONOTONIC start, in ns


def connect(outcome="established", latency_us=1000.0, daddr="10.0.0.1", dport=80, pid=100,
            comm="curl", family=4, syn_retransmits=0, err=0):
    return Connect(
        ts_start_ns=T0, ts_end_ns=T0 + int(latency_us * 1000), pid=pid, tid=pid, comm=comm,
        family=family, saddr="10.0.0.2" if family == 4 else "fd00::2", sport=40000,
        daddr=daddr, dport=dport, outcome=outcome, err=err, syn_retransmits=syn_retransmits,
    )


def by_label(rows):
    return {r.label: r for r in rows}


def test_rows_per_destination_and_per_process():
    t = ConnectTable()
    t.add(connect(daddr="10.0.0.1", dport=80, pid=100, comm="curl"))
    t.add(connect(daddr="10.0.0.1", dport=80, pid=200, comm="nginx"))
    t.add(connect(daddr="10.0.0.1", dport=443, pid=200, comm="nginx"))
    t.add(connect(daddr="fd00::1", dport=443, family=6, pid=200, comm="nginx"))
    t.roll(1.0)
    dest = by_label(t.by_destination())
    assert {k: r.attempts for k, r in dest.items()} == {
        "10.0.0.1:80": 2, "10.0.0.1:443": 1, "[fd00::1]:443": 1}
    assert dest["[fd00::1]:443"].key == (6, "fd00::1", 443)
    proc = by_label(t.by_process())
    assert {k: r.attempts for k, r in proc.items()} == {"100 curl": 1, "200 nginx": 3}
    assert t.events == 4


def test_rate_is_per_interval_and_totals_accumulate():
    t = ConnectTable()
    for _ in range(5):
        t.add(connect())
    t.roll(2.0)
    (row,) = t.by_destination()
    assert row.rate == pytest.approx(2.5)
    t.add(connect())
    t.roll(0.5)
    (row,) = t.by_destination()
    assert row.rate == pytest.approx(2.0)
    assert row.attempts == 6
    t.roll(1.0)  # an interval with nothing to this destination
    (row,) = t.by_destination()
    assert row.rate == 0.0
    assert row.attempts == 6


def test_roll_of_zero_seconds_does_not_divide_by_zero():
    t = ConnectTable()
    t.add(connect())
    t.roll(0.0)
    assert t.by_destination()[0].rate == 0.0


def test_outcomes_are_counted_and_only_established_latencies_enter_percentiles():
    t = ConnectTable()
    for lat in (900.0, 1000.0, 1100.0):
        t.add(connect(latency_us=lat))
    # a refused connect has a latency (SYN to RST) but it is not a connect latency
    t.add(connect("refused", latency_us=50.0, err=111))
    t.add(connect("timeout", latency_us=127_000_000.0, err=110, syn_retransmits=6))
    t.add(connect("error", latency_us=3.0, err=113, syn_retransmits=1))
    t.roll(1.0)
    (row,) = t.by_destination()
    assert (row.attempts, row.established, row.refused, row.timeout, row.error) == (6, 3, 1, 1, 1)
    assert row.syn_retransmits == 7
    assert row.p50_us == pytest.approx(1000.0, rel=1 / 32)
    assert row.p99_us == pytest.approx(1100.0, rel=1 / 32)
    assert row.max_us == 1100.0
    assert 900.0 * (1 - 1 / 32) <= row.p50_us <= row.p95_us <= row.p99_us <= row.max_us


def test_only_failures_give_no_latency():
    t = ConnectTable()
    t.add(connect("refused", latency_us=40.0))
    t.add(connect("timeout"))
    t.roll(1.0)
    (row,) = t.by_destination()
    assert (row.p50_us, row.p95_us, row.p99_us, row.max_us) == (None, None, None, None)
    assert row.p99_history == (None,)


def test_p99_history_has_none_for_intervals_without_samples():
    t = ConnectTable()
    t.add(connect(latency_us=2000.0))
    t.roll(1.0)
    t.roll(1.0)  # nothing at all
    t.add(connect("refused", latency_us=10.0))
    t.roll(1.0)  # failures only
    t.add(connect(latency_us=300.0))
    t.add(connect(latency_us=50_000.0))
    t.roll(1.0)
    (row,) = t.by_destination()
    h = row.p99_history
    assert len(h) == 4
    assert h[0] == pytest.approx(2000.0, rel=1 / 32)
    assert h[1:3] == (None, None)
    assert h[3] == pytest.approx(50_000.0, rel=1 / 32)
    # the per-process view keeps its own history of the same intervals
    assert by_label(t.by_process())["100 curl"].p99_history[1:3] == (None, None)


def test_p99_history_is_bounded_and_drops_the_oldest():
    t = ConnectTable()
    t.add(connect(latency_us=777.0))
    t.roll(1.0)
    for _ in range(HISTORY - 1):
        t.roll(1.0)
    (row,) = t.by_destination()
    assert len(row.p99_history) == HISTORY
    assert row.p99_history[0] == pytest.approx(777.0, rel=1 / 32)
    t.roll(1.0)
    t.roll(1.0)
    (row,) = t.by_destination()
    assert len(row.p99_history) == HISTORY
    assert all(p is None for p in row.p99_history)
