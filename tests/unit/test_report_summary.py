"""The report's arithmetic against values computed by hand (shown in comments):
percentiles, failure counts, drop bucketing, rates, pool advice, findings order."""

import math

import pyarrow as pa
import pytest

from tracer.report.arrow_stats import nearest_rank, nice_bucket_us, quantiles_by, \
    typical_interval_us
from tracer.report.destinations import destination_stats, with_histograms, worst_by_failures, \
    worst_by_p99
from tracer.report.listeners import listener_stats, troubled
from tracer.report.pool import pool_advice
from tracer.report.processes import process_stats
from tracer.report.summary import summarize_tables
from tracer.schema import schema
from tracer.sinks.table_writer import rows_to_batch

S = 1_000_000
T0 = 1_709_262_000_000_000          # 2024-03-01T03:00:00Z
MIN = 60 * S

DEFAULTS = {
    "connects": dict(pid=10, tid=10, comm="app", family=4, saddr="10.0.0.1", sport=40000,
                     daddr="10.0.0.2", dport=5432, latency_us=100.0, outcome="established",
                     syn_retransmits=0),
    "overflows": dict(family=4, laddr="0.0.0.0", lport=80, pid=1, comm="nginx", drops=0,
                      syn_drops=0, backlog_max=128, backlog_peak=128, interval_s=1.0,
                      synack_retransmits=0),
    "listeners": dict(family=4, laddr="0.0.0.0", lport=80, pid=1, comm="nginx", backlog_max=128,
                      queue_len=0, queue_peak=0, overflows_total=0, syn_queue_len=0, drops=0,
                      accepts=0),
    "accepts": dict(pid=1, comm="nginx", family=4, laddr="0.0.0.0", lport=80, raddr="10.9.9.9",
                    rport=50000, queue_wait_us=100.0, backlog_len=0, backlog_max=128),
    "sockets": dict(pid=20, comm="app", established=0, syn_sent=0, listen=0, close_wait=0,
                    other=0, opened=0, closed=0, fds=10, fd_limit=1024, tx_queue_bytes=0,
                    rx_queue_bytes=0),
    "pools": dict(pid=20, comm="app", destination="10.0.0.2:5432"),
}


def tbl(table, rows, host="h1"):
    full = [{**DEFAULTS[table], **r} for r in rows]
    return pa.Table.from_batches([rows_to_batch(table, full, host=host, run_id="r1")])


def empty(table):
    return schema(table).empty_table()


# ---------------------------------------------------------------- percentiles

def test_nearest_rank_by_hand():
    values = list(range(1, 101))            # 1..100
    assert nearest_rank(values, 0.99) == 99   # rank ceil(99.0) = 99
    assert nearest_rank(values, 0.5) == 50
    assert nearest_rank([1, 5, 9], 0.99) == 9  # rank ceil(2.97) = 3
    assert nearest_rank([1, 5, 9], 0.5) == 5   # rank ceil(1.5) = 2
    assert nearest_rank([], 0.99) is None


def test_quantiles_by_group_exact():
    rows = [dict(ts=T0 + i, daddr="a", latency_us=float(v)) for i, v in
            enumerate(range(100, 0, -1))]                      # 100..1, unsorted
    rows += [dict(ts=T0 + 1000 + i, daddr="b", latency_us=v) for i, v in enumerate([9.0, 1.0, 5.0])]
    rows += [dict(ts=T0 + 2000, daddr="b", latency_us=None, outcome="timeout")]
    q = quantiles_by(tbl("connects", rows), ["daddr", "dport"], "latency_us", (0.5, 0.99))
    assert q[("a", 5432)] == (100, [50.0, 99.0])
    assert q[("b", 5432)] == (3, [5.0, 9.0])                  # the null is not a value


def test_quantiles_by_three_keys_keep_groups_apart():
    # 2 hosts x 2 addresses x 2 ports: value = 1000*host + 100*addr + 10*port + i, 3 rows each
    rows = [dict(ts=T0 + n, host=f"h{h}", laddr=f"10.0.0.{a}", lport=p,
                 queue_wait_us=float(1000 * h + 100 * a + 10 * p + i))
            for n, (h, a, p, i) in enumerate((h, a, p, i) for h in (1, 2) for a in (1, 2)
                                             for p in (1, 2) for i in range(3))]
    t = pa.Table.from_batches([rows_to_batch("accepts", [{**DEFAULTS["accepts"], **r}
                                                         for r in rows], host="x", run_id="r")])
    q = quantiles_by(t, ["host", "laddr", "lport"], "queue_wait_us", (0.99,))
    assert len(q) == 8
    for (host, laddr, lport), (n, [p99]) in q.items():
        h, a = int(host[1:]), int(laddr.rsplit(".", 1)[1])
        assert n == 3 and p99 == 1000 * h + 100 * a + 10 * lport + 2


# ---------------------------------------------------------------- destinations

def _destination_rows():
    # 10.0.0.2:5432: 98 established with latency 1..98 ms, 1 refused (fast), 1 timeout;
    # 3 of the established needed a SYN retransmit (1 each), the timeout 6.
    rows = [dict(ts=T0 + i * S, latency_us=(i + 1) * 1000.0,
                 syn_retransmits=1 if i in (10, 20, 30) else 0) for i in range(98)]
    rows.append(dict(ts=T0 + 200 * S, latency_us=50.0, outcome="refused", errno=111))
    rows.append(dict(ts=T0 + 300 * S, latency_us=None, outcome="timeout", syn_retransmits=6,
                     errno=110))
    # 10.0.0.3:80: 4 established, 2 errors
    rows += [dict(ts=T0 + i * S, daddr="10.0.0.3", dport=80, latency_us=v, comm="curl")
             for i, v in enumerate([400.0, 100.0, 300.0, 200.0])]
    rows += [dict(ts=T0 + (10 + i) * S, daddr="10.0.0.3", dport=80, latency_us=20.0,
                  outcome="error", comm="curl") for i in range(2)]
    return tbl("connects", rows)


def test_destination_counts_and_percentiles():
    by = {d.label: d for d in destination_stats(_destination_rows())}
    db = by["10.0.0.2:5432"]
    assert (db.attempts, db.established, db.refused, db.timeout, db.error) == (100, 98, 1, 1, 0)
    assert db.failures == 2 and db.failure_ratio == pytest.approx(0.02)
    assert db.syn_retransmits == 3 + 6 and db.retransmitted == 4
    # established only: 98 values 1..98 ms; p99 rank ceil(97.02) = 98, p50 rank 49
    assert db.samples == 98
    assert db.p99_us == 98_000.0 and db.p50_us == 49_000.0 and db.max_us == 98_000.0
    assert db.first_failure_us == T0 + 200 * S and db.last_failure_us == T0 + 300 * S
    web = by["10.0.0.3:80"]
    assert (web.attempts, web.error, web.samples) == (6, 2, 4)
    assert web.p50_us == 200.0 and web.p99_us == 400.0      # 100,200,300,400: ranks 2 and 4
    assert web.comms == ("curl",)


def test_worst_rankings():
    dests = destination_stats(_destination_rows())
    assert [d.label for d in worst_by_p99(dests)] == ["10.0.0.2:5432", "10.0.0.3:80"]
    assert [d.label for d in worst_by_failures(dests)] == ["10.0.0.2:5432", "10.0.0.3:80"]


def test_ipv6_label():
    d = destination_stats(tbl("connects", [dict(ts=T0, daddr="2001:db8::1", dport=443,
                                                family=6)]))[0]
    assert d.label == "[2001:db8::1]:443"


def test_latency_histogram_log_bins():
    # 5 bins a decade: bin b is [10^(b/5), 10^((b+1)/5)); 100 and 150 µs are in bin 10
    # ([100, 158.5)), 1000, 1001 and 1500 µs in bin 15 ([1000, 1584.9))
    t = tbl("connects", [dict(ts=T0 + i, latency_us=v) for i, v in
                         enumerate([100.0, 150.0, 1000.0, 1001.0, 1500.0])])
    (d,) = with_histograms(t, destination_stats(t))
    lows = [round(low, 3) for low, _, _ in d.histogram]
    assert lows[0] == 100.0 and d.histogram[-1][1] == pytest.approx(1584.893, abs=1e-3)
    counts = [c for _, _, c in d.histogram]
    assert counts == [2, 0, 0, 0, 0, 3]             # bins 10..15, empty ones included
    assert sum(counts) == 5


# ---------------------------------------------------------------- listeners

def test_drops_bucketed_per_minute():
    over = tbl("overflows", [
        dict(ts=T0 + 4 * MIN + 10 * S, drops=5, syn_drops=1, backlog_peak=128),
        dict(ts=T0 + 4 * MIN + 50 * S, drops=7, syn_drops=0, backlog_peak=120),
        dict(ts=T0 + 5 * MIN + 1 * S, drops=3, syn_drops=2, backlog_peak=128)])
    lis = tbl("listeners", [dict(ts=T0 + i * MIN, queue_peak=q, queue_len=1)
                            for i, q in enumerate([3, 9, 20, 64, 128, 128, 2])])
    (s,) = listener_stats(lis, over, empty("accepts"), MIN)
    assert s.drop_minutes == ((T0 + 4 * MIN, 12, 1), (T0 + 5 * MIN, 3, 2))
    assert (s.drops, s.syn_drops, s.total_drops) == (15, 3, 18)
    assert s.first_drop_us == T0 + 4 * MIN + 10 * S and s.last_drop_us == T0 + 5 * MIN + S
    assert s.peak_minute == (T0 + 4 * MIN, 13)
    assert (s.queue_peak, s.backlog_max, s.fill) == (128, 128, 1.0)
    assert (s.pid, s.comm) == (1, "nginx")


def test_listener_drops_not_counted_twice():
    # both tables report the same 5 drops: overflows win
    over = tbl("overflows", [dict(ts=T0 + S, drops=5)])
    lis = tbl("listeners", [dict(ts=T0 + S, drops=5, queue_peak=128)])
    (s,) = listener_stats(lis, over, empty("accepts"), MIN)
    assert s.total_drops == 5


def test_listener_drops_fall_back_to_listeners_table():
    lis = tbl("listeners", [dict(ts=T0 + S, drops=4), dict(ts=T0 + 2 * S, drops=0),
                            dict(ts=T0 + 61 * S, drops=6)])
    (s,) = listener_stats(lis, empty("overflows"), empty("accepts"), MIN)
    assert s.drop_minutes == ((T0, 4, 0), (T0 + MIN, 6, 0))


def test_quiet_listener_is_not_troubled_but_a_full_one_is():
    lis = tbl("listeners", [dict(ts=T0, lport=80, queue_peak=3),
                            dict(ts=T0, lport=81, queue_peak=110)])     # 110/128 = 86 %
    stats = listener_stats(lis, empty("overflows"), empty("accepts"), MIN)
    assert [s.lport for s in troubled(stats)] == [81]


def test_accept_wait_p99_from_accepts():
    acc = tbl("accepts", [dict(ts=T0 + i, queue_wait_us=float(v)) for i, v in
                          enumerate(range(1, 101))])
    (s,) = listener_stats(empty("listeners"), empty("overflows"), acc, MIN)
    assert s.accept_wait_p99_us == 99.0 and s.accepts == 100


# ---------------------------------------------------------------- processes

def test_process_rates_and_leak():
    # rows at 1..10 s: the span is 9 s + one 1 s interval = 10 s
    rows = [dict(ts=T0 + i * S, opened=5, closed=3, established=100 + i, close_wait=2 * i,
                 fds=900 + i, fd_limit=1000) for i in range(1, 11)]
    (p,) = process_stats(tbl("sockets", rows), S, MIN)
    assert p.span_s == 10.0
    assert p.opened == 50 and p.opened_per_s == 5.0 and p.closed_per_s == 3.0
    assert p.peak_sockets == 110 + 20 and p.last_sockets == 130
    assert (p.first_close_wait, p.last_close_wait) == (2, 20) and p.close_wait_leak
    assert p.fd_ratio == pytest.approx(0.91)


def test_typical_interval():
    rows = [dict(ts=T0 + i * 2 * S) for i in range(5)] + [dict(ts=T0 + i * 2 * S, pid=21)
                                                          for i in range(3)]
    assert typical_interval_us(tbl("sockets", rows), ["host", "pid"], S) == 2 * S
    assert typical_interval_us(empty("sockets"), ["host", "pid"], 7) == 7


# ---------------------------------------------------------------- pool advice

def _pool_rows(*rows):
    return tbl("pools", [dict(ts=T0 + (i + 1) * S, **r) for i, r in enumerate(rows)])


def test_pool_advice_is_the_pools_table_as_recorded_never_recomputed():
    """The report shows each flow's busiest window exactly as the live view
    recorded it: the same recommendation, rate, hold time and verdict."""
    quiet = dict(arrival_per_s=10.0, hold_s=0.1, concurrency_mean=1.0, concurrency_p99=1.0,
                 concurrency_peak=1, recommended=2, in_use=1, verdict="quiet", window_s=1.0)
    busy = dict(quiet, arrival_per_s=400.0, hold_s=0.02, concurrency_mean=8.0,
                concurrency_p99=7.0, concurrency_peak=7, recommended=10, in_use=5,
                verdict="churning: busy", window_s=2.0)
    (a,) = pool_advice(_pool_rows(quiet, busy, dict(quiet, in_use=9)))
    assert (a.recommended, a.arrival_per_s, a.hold_s, a.verdict, a.window_s) == \
        (10, 400.0, 0.02, "churning: busy", 2.0)
    assert a.ts_us == T0 + 2 * S and a.in_use == 5 and a.in_use_peak == 9 and a.churning
    assert a.destination == "10.0.0.2:5432" and (a.host, a.pid, a.comm) == ("h1", 20, "app")


def test_pool_advice_per_flow_busiest_rate_first_at_most_n():
    base = dict(hold_s=0.1, concurrency_mean=1.0, concurrency_p99=1.0, concurrency_peak=1,
                in_use=1, verdict="v", window_s=1.0)
    rows = [dict(base, destination=f"10.0.0.{i}:80", arrival_per_s=float(i), recommended=i)
            for i in range(1, 13)]
    got = pool_advice(_pool_rows(*rows), 10)
    assert [a.destination for a in got] == [f"10.0.0.{i}:80" for i in range(12, 2, -1)]


def test_pool_advice_of_a_recording_without_pools_is_empty():
    assert pool_advice(empty("pools")) == []


def test_pool_finding_states_rate_per_second_window_and_real_hold():
    churn = dict(arrival_per_s=250.0, hold_s=0.004, concurrency_mean=1.0,
                 concurrency_p99=1.0, concurrency_peak=1, recommended=2, in_use=1,
                 verdict="churning: x", window_s=30.0)
    s = summarize_tables({"pools": _pool_rows(churn)})
    (f,) = [f for f in s.findings if f.section == "pool"]
    assert f.text == ("app (20) on h1 opens new connections to 10.0.0.2:5432 at 250/s "
                      "(over the 30.0s to 03:00:01Z), each held 4.00ms on average: a pool of "
                      "2 would do")
    nothing_closed = dict(churn, hold_s=0.0)
    s = summarize_tables({"pools": _pool_rows(nothing_closed)})
    (f,) = [f for f in s.findings if f.section == "pool"]
    assert "none closed yet" in f.text and "0µs" not in f.text


# ---------------------------------------------------------------- the whole summary

def test_summary_of_nothing_but_a_manifest():
    s = summarize_tables({}, [{"run_id": "r1", "host": "h1", "status": "abandoned",
                               "reason": "no BPF"}])
    assert s.connects.attempts == 0 and s.findings == ()
    assert s.overview.runs[0].status == "abandoned"


def test_findings_order_and_loud_losses():
    manifests = [{"run_id": "r1", "host": "h1", "status": "crashed", "end": None,
                  "lost_events": {"connects": 5}, "rows": {}, "options": {"interval": 1.0}}]
    tables = {"connects": _destination_rows(),
              "overflows": tbl("overflows", [dict(ts=T0 + S, drops=50)])}
    s = summarize_tables(tables, manifests)
    texts = [f.text for f in s.findings]
    assert "5 events LOST" in texts[0]
    assert "dropped 50 connections" in texts[1]
    assert [f.severity for f in s.findings] == sorted(
        (f.severity for f in s.findings), key=["crit", "warn", "info"].index)
    assert any("crashed" in t for t in texts)


def test_findings_collapse_many_alike():
    rows = [dict(ts=T0 + i, daddr=f"10.0.1.{i}", outcome="refused", latency_us=10.0)
            for i in range(12)]
    s = summarize_tables({"connects": tbl("connects", rows)})
    texts = [f.text for f in s.findings]
    assert len(texts) == 4 and texts[-1].startswith("... and 9 more")


def test_nice_bucket():
    assert nice_bucket_us(600 * S) == 5 * S            # 600 s / 120 buckets
    assert nice_bucket_us(10 * S) == S                 # never below the floor
    assert nice_bucket_us(24 * 3600 * S) == 15 * MIN   # 720 s wanted -> 15 min
    assert math.isclose(nice_bucket_us(3600 * S, floor_us=60 * S), 60 * S)
