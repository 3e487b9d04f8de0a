"""ConnectTable under hostile cardinality: every view is bounded (idle
expiry plus a cap), what is let go is folded into an "other" row so the rows
still add up to every connect fed, and each eviction is counted."""

import random

import pytest

from tracer.aggregate import connects
from tracer.aggregate.connects import BATCH_MAX, HISTORY, OTHER_DESTINATION, ConnectTable
from tests.unit.test_connect_table import connect
from tracer.domain.containers import HOST


def dest(i: int) -> str:
    return f"127.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"


def totals(rows) -> dict:
    return {f: sum(getattr(r, f) for r in rows)
            for f in ("attempts", "established", "refused", "timeout", "error")}


def test_cap_reached_least_recently_active_folded_into_other():
    t = ConnectTable(max_keys=10)
    for i in range(10):
        t.add(connect(daddr=dest(i), outcome="refused"))
    t.roll(1.0)
    assert len(t.by_destination()) == 10 and t.evicted["destinations"] == 0
    # 0..4 active again: 5..9 are now the least recently active
    for i in list(range(5)) + list(range(10, 15)):
        t.add(connect(daddr=dest(i), latency_us=200.0))
    t.roll(1.0)
    rows = {r.label: r for r in t.by_destination()}
    assert set(rows) == {f"{dest(i)}:80" for i in range(15) if not 5 <= i < 10} | {"other"}
    other = rows["other"]
    assert other.key == OTHER_DESTINATION
    assert other.attempts == other.refused == 5
    assert t.evicted["destinations"] == 5
    assert rows[f"{dest(0)}:80"].attempts == 2
    assert totals(rows.values()) == {"attempts": 20, "established": 10, "refused": 10,
                                     "timeout": 0, "error": 0}


def test_idle_keys_expire_after_their_history_is_all_empty():
    t = ConnectTable(idle_intervals=3)
    t.add(connect(daddr="10.0.0.1", outcome="timeout"))
    t.add(connect(daddr="10.0.0.2"))
    t.roll(1.0)
    for _ in range(2):
        t.add(connect(daddr="10.0.0.2"))
        t.roll(1.0)
    assert {r.label for r in t.by_destination()} == {"10.0.0.1:80", "10.0.0.2:80"}
    t.roll(1.0)   # 10.0.0.1 idle for 3 intervals now
    rows = {r.label: r for r in t.by_destination()}
    assert set(rows) == {"10.0.0.2:80", "other"}
    assert rows["other"].timeout == 1 and rows["other"].attempts == 1
    assert t.evicted == {"destinations": 1, "processes": 0}   # pid 100 stayed active


def test_a_flood_within_one_interval_is_bounded_and_counted():
    t = ConnectTable(max_keys=100)
    for i in range(1000):
        t.add(connect(daddr=dest(i), outcome="refused", pid=1000 + i, comm=f"p{i}"))
    # before the interval closes: connects waiting to be grouped (add) are at
    # most BATCH_MAX, and once summed the window holds at most max_keys keys
    assert t._batched <= BATCH_MAX
    t._flush()
    assert len(t._dest.window) == 100 and len(t._proc.window) == 100
    t.roll(1.0)
    for rows in (t.by_destination(), t.by_process()):
        assert len(rows) == 101
        assert totals(rows)["attempts"] == totals(rows)["refused"] == 1000
        other = [r for r in rows if r.label == "other"][0]
        assert other.key in ((0, "other", 0), (0,))
        assert other.attempts == 900 and other.rate == 900.0
    assert t.evicted == {"destinations": 900, "processes": 900}
    assert len(t._comm) == 100   # names kept only for pids with a row of their own


def test_totals_add_up_over_many_intervals_of_new_keys():
    t = ConnectTable(max_keys=50, idle_intervals=5)
    fed = 0
    outcomes = ("refused", "established", "timeout", "error")
    for interval in range(40):
        for j in range(30):
            i = interval * 30 + j
            t.add(connect(daddr=dest(i % 700), dport=80 + i % 3, pid=i % 90,
                          outcome=outcomes[i % 4]))
            fed += 1
        t.roll(1.0)
        for rows in (t.by_destination(), t.by_process()):
            assert len(rows) <= 51
            assert totals(rows)["attempts"] == fed
    assert t.evicted["destinations"] > 0 and t.evicted["processes"] > 0
    assert t.events == fed
    assert len(t._comm) <= 50


def test_evicted_process_names_are_forgotten():
    t = ConnectTable(max_keys=2)
    for pid in (1, 2, 3):
        t.add(connect(pid=pid, comm=f"c{pid}"))
        t.roll(1.0)
    assert sorted(r.label for r in t.by_process()) == ["2 c2", "3 c3", "other"]
    assert set(t._comm) == {2, 3}


def test_history_of_an_idle_key_is_padded_as_before():
    t = ConnectTable()
    t.add(connect(daddr="10.0.0.1", latency_us=100.0))
    t.roll(1.0)
    t.roll(1.0)
    t.roll(1.0)
    (row,) = t.by_destination()
    assert row.p99_history[1:] == (None, None) and row.p99_history[0] is not None
    assert row.rate == 0.0
    t.add(connect(daddr="10.0.0.1", latency_us=100.0))
    t.roll(1.0)
    (row,) = t.by_destination()
    assert len(row.p99_history) == 4 and row.p99_history[1:3] == (None, None)
    for _ in range(HISTORY + 5):
        t.add(connect(daddr="10.0.0.1", latency_us=100.0))
        t.roll(1.0)
    assert len(t.by_destination()[0].p99_history) == HISTORY


def test_pending_beyond_the_room_left_is_summed_into_other():
    t = ConnectTable(max_keys=4)
    t.add(connect(daddr="10.0.0.1"))
    t.roll(1.0)
    t.set_pending({(4, dest(i), 80): (2, float(i)) for i in range(10)})
    rows = t.by_destination()
    assert len(rows) == 5
    # the longest waiting keep their own rows
    own = {r.label for r in rows if r.attempts == 0 and r.key != OTHER_DESTINATION}
    assert own == {f"{dest(i)}:80" for i in (9, 8, 7)}
    other = [r for r in rows if r.key == OTHER_DESTINATION][0]
    assert other.pending == 14 and other.oldest_pending_s == 6.0
    assert sum(r.pending for r in rows) == 20


def _one_by_one(t: ConnectTable, ev, container) -> None:
    """What ConnectTable.add did before connects were grouped: each connect
    added to the three views in turn."""
    t.events += 1
    dest = (ev.family, ev.daddr, ev.dport)
    in_dest = t._dest.add(dest, ev)
    in_proc = t._proc.add((ev.pid,), ev)
    if in_proc:
        t._comm[ev.pid] = ev.comm
    if container is not None:
        t._cont.add((container,), ev)
        where = None if container == HOST else container
        if in_proc:
            t._proc_where[ev.pid] = where
        if in_dest:
            had = t._dest_where.get(dest, connects._UNSEEN)
            if had is connects._UNSEEN:
                t._dest_where[dest] = where
            elif had != where:
                t._dest_where[dest] = connects.SEVERAL


@pytest.mark.parametrize("batch_max", [BATCH_MAX, 7, 1])
def test_grouped_connects_give_the_rows_one_by_one_adds_gave(monkeypatch, batch_max):
    # Repeated keys (groups), lone connects, every outcome, comms that change,
    # full windows within an interval, groups cut by BATCH_MAX, idle keys let go.
    monkeypatch.setattr(connects, "BATCH_MAX", batch_max)
    rng = random.Random(5)
    grouped = ConnectTable(max_keys=12, idle_intervals=3)
    reference = ConnectTable(max_keys=12, idle_intervals=3)
    outcomes = ("established",) * 6 + ("refused", "timeout", "abandoned", "unreachable", "error")
    for interval in range(8):
        for _ in range(rng.randint(1, 300)):
            ev = connect(outcome=rng.choice(outcomes), latency_us=rng.uniform(5, 5e6),
                         daddr=dest(rng.randint(0, 16)), dport=rng.choice((80, 443)),
                         pid=rng.randint(1, 18), comm=rng.choice(("a", "b")),
                         syn_retransmits=rng.randint(0, 2))
            container = rng.choice((None, HOST, "docker:1", "docker:2", "pod/x"))
            grouped.add(ev, container)
            _one_by_one(reference, ev, container)
        if interval % 3 == 1:   # read within an interval too
            assert grouped.by_destination() == reference.by_destination()
        grouped.roll(1.0)
        reference.roll(1.0)
        for view in ("by_destination", "by_process", "by_container"):
            assert getattr(grouped, view)() == getattr(reference, view)()
        assert grouped.evicted == reference.evicted
        assert grouped.events == reference.events
    assert grouped.evicted["destinations"] > 0 and grouped.evicted["processes"] > 0
