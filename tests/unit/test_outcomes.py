"""Connect outcomes: one definition (tracer/domain/outcomes.py), and every
place that summarises failures counts them the same way: live aggregation,
the Parquet row, replay and the report."""
import pyarrow as pa
import pytest

from tracer.aggregate.connects import ConnectTable
from tracer.clock import Clock
from tracer.domain import outcomes as oc
from tracer.events import Connect
from tracer.replay.rows import connect_from_row
from tracer.report.destinations import destination_stats
from tracer.report.findings import _destination_findings
from tracer.schema import schema
from tracer.sinks.recorder import CONNECT_FIELDS, connect_row, connect_values
from tracer.sinks.table_writer import rows_to_batch

T0 = 5_000_000_000
ERRNO = {oc.ESTABLISHED: 0, oc.REFUSED: 111, oc.TIMEOUT: 110, oc.ABANDONED: 0,
         oc.UNREACHABLE: 113, oc.ERROR: 99}


def connect(outcome, latency_us=1000.0, daddr="10.0.0.1", dport=80, pid=100, netns=4026531840):
    return Connect(ts_start_ns=T0, ts_end_ns=T0 + int(latency_us * 1000), pid=pid, tid=pid,
                   comm="curl", family=4, saddr="10.0.0.2", sport=0 if outcome == oc.ERROR
                   else 40000, daddr=daddr, dport=dport, outcome=outcome, err=ERRNO[outcome],
                   syn_retransmits=3 if outcome in oc.TIMEOUTS else 0, netns=netns)


# ---------------------------------------------------------------- the domain

def test_every_outcome_is_described_and_classified_once():
    assert len(set(oc.OUTCOMES)) == 6
    assert set(oc.DESCRIPTIONS) == set(oc.OUTCOMES)
    assert oc.FAILURES == tuple(o for o in oc.OUTCOMES if o != oc.ESTABLISHED)
    assert {o: oc.summary_class(o) for o in oc.OUTCOMES} == {
        "established": "established", "refused": "refused", "timeout": "timeout",
        "abandoned": "timeout", "unreachable": "error", "error": "error"}
    assert oc.TIMEOUTS == ("timeout", "abandoned") and oc.ERRORS == ("unreachable", "error")
    assert oc.errno_text(99) == "errno 99 EADDRNOTAVAIL" and oc.errno_text(4242) == "errno 4242"


def test_an_unknown_outcome_is_summarised_as_an_error():
    # a recording made by a newer connscope
    assert oc.summary_class("simultaneous") == "error"


def test_schema_documents_every_outcome():
    text = schema("connects").field("outcome").metadata[b"description"].decode()
    for name in oc.OUTCOMES:
        assert f"{name}: " in text


# ---------------------------------------------------------------- live aggregation

def test_abandoned_counts_as_a_timeout_and_unreachable_as_an_error():
    t = ConnectTable()
    for outcome, n in ((oc.ESTABLISHED, 5), (oc.REFUSED, 1), (oc.TIMEOUT, 2),
                       (oc.ABANDONED, 3), (oc.UNREACHABLE, 4), (oc.ERROR, 6)):
        for i in range(n):
            t.add(connect(outcome, latency_us=2_000_000.0 + i if outcome == oc.ABANDONED
                          else 1000.0))
    t.roll(1.0)
    [r] = t.by_destination()
    assert (r.attempts, r.established, r.refused, r.timeout, r.abandoned, r.unreachable,
            r.error) == (21, 5, 1, 2, 3, 4, 6)
    assert (r.timeouts, r.errors, r.failures) == (5, 10, 16)
    # the handshake latency is of established connects only; the abandoned
    # waits are kept apart
    assert r.max_us == 1000.0
    assert r.abandoned_max_wait_us == 2_000_002.0
    [p] = t.by_process()
    assert (p.timeouts, p.errors) == (5, 10)


def test_abandoned_survives_rolls_and_eviction_into_other():
    t = ConnectTable(max_keys=1)
    t.add(connect(oc.ABANDONED, latency_us=500.0, daddr="10.0.0.1"))
    t.roll(1.0)
    t.add(connect(oc.UNREACHABLE, daddr="10.0.0.9"))
    t.roll(1.0)   # the first key is evicted into "other"
    rows = {r.label: r for r in t.by_destination()}
    assert rows["other"].abandoned == 1 and rows["other"].timeouts == 1
    assert rows["other"].abandoned_max_wait_us == 500.0
    assert rows["10.0.0.9:80"].unreachable == 1 and rows["10.0.0.9:80"].errors == 1


# ---------------------------------------------------------------- Parquet and replay

class _Clock(Clock):
    def __init__(self):
        pass

    def wall_us(self, mono_ns):
        return 1_700_000_000_000_000 + mono_ns // 1000


@pytest.mark.parametrize("outcome", oc.OUTCOMES)
def test_row_carries_the_wait_the_errno_and_the_netns_and_replays_back(outcome):
    ev = connect(outcome, latency_us=1_999_000.0)
    row = connect_row(ev, _Clock())
    assert row["latency_us"] == 1_999_000.0      # also for a timeout or an abandoned connect
    assert row["errno"] == (None if outcome == oc.ESTABLISHED else ERRNO[outcome])
    assert row["netns"] == 4026531840 and row["outcome"] == outcome
    # the row fits the schema
    rows_to_batch("connects", [row], host="h", run_id="r")
    back = connect_from_row(row)
    assert (back.outcome, back.err, back.netns, back.latency_us) == (
        outcome, ERRNO[outcome], 4026531840, 1_999_000.0)
    assert len(connect_values(ev, _Clock())) == len(CONNECT_FIELDS)


def test_an_old_rows_null_latency_replays_as_unknown():
    row = connect_row(connect(oc.TIMEOUT), _Clock())
    row.update(latency_us=None, netns=None)
    back = connect_from_row(row)
    assert back.latency_us is None and back.netns == 0


def test_live_and_replayed_rows_agree():
    evs = [connect(o, latency_us=700.0 + i) for i, o in enumerate(oc.OUTCOMES * 3)]
    live, replayed = ConnectTable(), ConnectTable()
    for ev in evs:
        live.add(ev)
        replayed.add(connect_from_row(connect_row(ev, _Clock())))
    live.roll(1.0)
    replayed.roll(1.0)
    assert live.by_destination() == replayed.by_destination()


# ---------------------------------------------------------------- the report

def _table(evs):
    rows = [connect_row(ev, _Clock()) for ev in evs]
    return pa.Table.from_batches([rows_to_batch("connects", rows, host="h", run_id="r")])


def test_report_summarises_as_the_live_view_does():
    evs = ([connect(oc.ESTABLISHED)] * 4 + [connect(oc.REFUSED)] + [connect(oc.TIMEOUT)]
           + [connect(oc.ABANDONED, latency_us=1_500_000.0), connect(oc.ABANDONED, 2_000_000.0)]
           + [connect(oc.UNREACHABLE)] + [connect(oc.ERROR)] * 2)
    [d] = destination_stats(_table(evs))
    live = ConnectTable()
    for ev in evs:
        live.add(ev)
    live.roll(1.0)
    [r] = live.by_destination()
    assert (d.attempts, d.established, d.refused, d.timeout, d.error, d.failures) == (
        r.attempts, r.established, r.refused, r.timeouts, r.errors, r.failures) == (
        11, 4, 1, 3, 3, 7)
    assert d.abandoned == r.abandoned == 2
    assert d.abandoned_max_wait_us == r.abandoned_max_wait_us == 2_000_000.0
    assert dict(d.errnos) == {99: 2, 113: 1}
    # latency percentiles stay those of the handshakes
    assert d.samples == 4 and d.max_us == 1000.0
    [finding] = _destination_findings([d], [])
    assert ("1 refused, 3 timed out (2 given up by the application after up to 2.00s), "
            "3 failed (errno 99 EADDRNOTAVAIL, errno 113 EHOSTUNREACH) of 11") in finding.text


# ---------------------------------------------------------------- stale in-flight connects

class _Map:
    """The two calls the sweep makes on the loader's map, over a dict (the
    real map: tests/kernel/test_connect_outcomes.py)."""

    def __init__(self, entries):
        self.d = dict(entries)

    def lookup(self, k):
        return self.d.get(k)

    def delete(self, k):
        return self.d.pop(k, None) is not None


def test_sweep_is_bounded_and_counts_only_what_it_removed(monkeypatch):
    from types import SimpleNamespace

    from tracer.probes import session as sess
    monkeypatch.setattr(sess, "STALE_SWEEP_MAX", 2)
    s = sess.ProbeSession.__new__(sess.ProbeSession)
    s.stale_connects = 0
    now = 10_000 * 10**9
    old = now - (sess.STALE_CONNECT_S + 1) * 10**9
    entries = [(bytes([i]), b"v%d" % i, SimpleNamespace(ts_active_ns=old if i < 4 else now))
               for i in range(5)]
    table = _Map((k, v) for k, v, _ in entries)
    table.d[bytes([1])] = b"changed"   # a socket that began anew at that address meanwhile
    kept = s.sweep_stale_connects(table, entries, now)
    # the changed one is left alone; past the bound the rest waits for the next sweep
    assert s.stale_connects == 2 and set(table.d) == {bytes([1]), bytes([3]), bytes([4])}
    assert [k for k, _, _ in kept] == [bytes([3]), bytes([4])]


def test_event_log_tells_each_failure_with_its_errno():
    from tracer.aggregate.notable import NotableLog
    log = NotableLog()
    for outcome in oc.FAILURES:
        ev = connect(outcome, latency_us=2_000_000.0)
        assert log.wants_connect(ev)
        log.connect(ev, 0)
    texts = [n.text for n in log._window]
    assert texts == [
        "curl[100] -> 10.0.0.1:80 refused",
        "curl[100] -> 10.0.0.1:80 timed out after 3 SYN retransmits",
        "curl[100] -> 10.0.0.1:80 given up by the application after 2.00s (3 SYN retransmits)",
        "curl[100] -> 10.0.0.1:80 unreachable (errno 113 EHOSTUNREACH)",
        "curl[100] -> 10.0.0.1:80 error (errno 99 EADDRNOTAVAIL)",
    ]
