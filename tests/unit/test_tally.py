"""A poll's events fed to the live tables a key at a time from the compiled
sums (tracer/aggregate/tally.py feed_summed, tracer/_fastpath.c tally)
against the definition, feed_each (one event at a time): after every poll
the edge, address-owner, listener and process tables and the notable log
must hold the same values, in the same order, field by field (histograms:
their counts, count, float total, min and max).

The events are decoded from records another user can shape: any comm bytes,
outcome codes (unknown ones too), ends before starts, SYN retransmits up to
65535, namespaces 0 and not, sources equal to their destinations, v4-mapped,
loopback and wildcard local addresses, handshake times after the accept.
They are drawn from small pools so that keys repeat within a poll, and the
tables' bounds are lowered so that every way a table refuses the sums (a key
that could be evicted, a listener not resolved yet, two keys of one
listener) is taken, and counted here: the test fails if one is never taken."""
from __future__ import annotations

import random
from collections import Counter
from types import SimpleNamespace

import pytest

from tracer import events as e
from tracer import fastpath
from tracer.aggregate import tally
from tracer.aggregate.edges import EdgeTable
from tracer.aggregate.histogram import Histogram, _CORE
from tracer.aggregate.listeners import ListenerTable
from tracer.aggregate.notable import NotableLog
from tracer.aggregate.sockets import ProcessTable
from tracer.clock import Clock
from tracer.domain.listeners import wildcard
from tests.unit.test_fastpath import accept, connect

native = fastpath.native
needs_native = pytest.mark.skipif(native is None, reason=f"compiled path: {fastpath.STATUS}")

V4 = [bytes([10, 0, 0, k]) + bytes(12) for k in (1, 2, 3)] + [bytes([127, 0, 0, 1]) + bytes(12),
                                                              bytes(16)]
V6 = [bytes(15) + b"\x01", bytes(10) + b"\xff\xff" + bytes([10, 0, 0, 1]),
      bytes([0xfd] + [0] * 14 + [7]), bytes(16)]


def _events(rng: random.Random, n: int) -> list:
    out, t = [], 10**12
    for i in range(n):
        t += rng.randrange(1, 10**6)
        if rng.random() < 0.55:
            fam = rng.choice([2, 2, 2, 10, 0])
            daddr = rng.choice(V6 if fam == 10 else V4)
            rec = connect(rng, i, t, family=fam, daddr=daddr,
                          saddr=daddr if rng.random() < 0.1 else rng.choice(V4 + V6),
                          pid=rng.choice([1, 4242, 4243, 2**32 - 1]),
                          dport=rng.choice([80, 80, 5432, 0]),
                          netns=rng.choice([0, 4026531840, 4026532001]),
                          ts_end_ns=t + rng.choice([0, 1, 123_456, 10**9 - 1, 10**9, 2 * 10**9, -5]),
                          outcome=rng.choice([0, 0, 0, 0, 1, 2, 3, 4, 5, 9, 255]))
            out.append(e.decode_connect_at(rec, 0))
        else:
            fam = rng.choice([2, 2, 10])
            rec = accept(rng, i, t, family=fam, laddr=rng.choice(V6 if fam == 10 else V4),
                         lport=rng.choice([80, 80, 6379]), pid=rng.choice([2, 9999]),
                         netns=rng.choice([0, 4026531840, 4026532001]),
                         handshake=rng.choice([0, t - 10, t - 12_345, t + 10]))
            out.append(e.decode_accept_at(rec, 0))
    return out


def _tables(rng: random.Random, accepts: list, *, small: bool):
    c = SimpleNamespace(
        edges=EdgeTable(3 if small else None),
        listeners=ListenerTable(False, 6 if small else None),
        processes=ProcessTable(4 if small else None),
        log=NotableLog(), clock=Clock())
    c.clock.offset_ns = 1_700_000_000 * 10**9
    if small:
        c.edges.owners.max_addresses = 3
    # listeners of some of the accepts' addresses, and wildcard ones
    known = sorted({(a.netns, a.family, a.laddr, a.lport) for a in accepts}, key=repr)
    for key in rng.sample(known, len(known) // 2):
        c.listeners._get(key)
    for netns, family, _, lport in known[:3]:
        c.listeners._get((netns, family, wildcard(family), lport))
    return c


def _hist(h: Histogram) -> tuple:
    return (list(h.counts.items()), h.count, repr(h.total), repr(h.min), repr(h.max))


def _stats(s) -> tuple:
    return (s.attempts, s.established, s.refused, s.timeout, s.abandoned, s.unreachable,
            s.error, s.syn_retransmits, _hist(s.latency), repr(s.waited_max_us))


def _state(c) -> dict:
    p = c.processes
    return {
        "edges": [(k, w.comm, w.netns, w.own_source, _stats(w.stats), w.cgroup_id)
                  for k, w in c.edges._window.items()],
        "edges_other": _stats(c.edges._other),
        "edges_evicted": c.edges.evicted,
        "owners": list(c.edges.owners._owners.items()),
        "listeners": [(k, lst.accepts_window, _hist(lst.waits))
                      for k, lst in c.listeners._by_key.items()],
        "listener_cache": [(k, id(v)) for k, v in c.listeners._accept_cache.items()],
        "other_accepts": c.listeners._other_accepts,
        "opened": list(p._opened.items()), "comm": list(p._comm.items()),
        "flows": [(pid, k, f.opens_now, f.peak_now, _hist(f.connect), _hist(f.lifetimes_now))
                  for pid, flows in p._flows.items() for k, f in flows.items()],
        "n_flows": p._n_flows, "evicted_flows": p.evicted,
        "log": [(n.ts_us, n.severity, n.kind, n.text) for n in (*c.log.lines, *c.log._window)],
    }


def _listener_ids(c) -> dict:
    return {id(v): k for k, v in c.listeners._by_key.items()}


class _Spy:
    """Counts what each table's sums method answered."""

    def __init__(self, c, seen: Counter):
        for obj, name in ((c.edges, "add_sums"), (c.edges.owners, "note_all"),
                          (c.listeners, "add_accept_sums"), (c.processes, "opened_sums")):
            method = getattr(obj, name)
            setattr(obj, name, self._wrap(name, method, seen))

    @staticmethod
    def _wrap(name, method, seen):
        def call(*args):
            took = method(*args)
            seen[(name, took)] += 1
            return took
        return call


def _run(seed: int, small: bool, seen: Counter) -> None:
    rng = random.Random(seed)
    events = _events(rng, 3000)
    accepts = [ev for ev in events if isinstance(ev, e.Accept)]
    each = _tables(random.Random(seed), accepts, small=small)
    summed = _tables(random.Random(seed), accepts, small=small)
    if small and seed % 2:
        each.edges.owners.max_addresses = summed.edges.owners.max_addresses = 8
    _Spy(summed, seen)
    i = 0
    while i < len(events):
        poll = events[i:i + rng.choice([1, 2, 3, 17, 200, 900])]
        i += len(poll)
        tally.feed_each(each, poll)
        sums = tally.sums_of(native.tally, poll)
        assert sums[6] == [ev.pid for ev in poll]
        assert sums[7] == [ev.cgroup_id for ev in poll if type(ev) is e.Connect]
        tally.feed_summed(summed, poll, sums)
        a, b = _state(each), _state(summed)
        # listeners are compared by key; the cache by the key it points to
        for state, c in ((a, each), (b, summed)):
            ids = _listener_ids(c)
            state["listener_cache"] = [(k, ids[v]) for k, v in state["listener_cache"]]
        for part in a:
            assert a[part] == b[part], (part, i)
        if rng.random() < 0.2:        # an interval ends: the windows are rolled on both
            assert each.edges.roll(1.0) == summed.edges.roll(1.0)
            assert each.processes.update(1.0, {}) == summed.processes.update(1.0, {})


@needs_native
@pytest.mark.parametrize("small", [False, True], ids=["bounds", "bounds-lowered"])
@pytest.mark.parametrize("seed", range(6))
def test_summed_feed_leaves_the_tables_the_loop_leaves(seed, small):
    seen: Counter = Counter()
    _run(seed, small, seen)
    if not small:    # at the real bounds nothing here is refused but unresolved listeners
        for name in ("add_sums", "note_all", "opened_sums"):
            assert seen[(name, True)] and not seen[(name, False)], (name, seen)
        assert seen[("add_accept_sums", True)], seen


@needs_native
def test_every_refusal_is_taken_and_so_are_the_sums():
    """With the bounds lowered, each table both takes sums and refuses them
    in the streams above (else the equivalence shows nothing of one path)."""
    seen: Counter = Counter()
    for seed in range(4):
        _run(seed, True, seen)
    for name in ("add_sums", "note_all", "add_accept_sums", "opened_sums"):
        assert seen[(name, True)] and seen[(name, False)], (name, seen)


@needs_native
def test_a_subclass_of_an_event_is_left_to_the_loop():
    class Odd(e.Connect):
        __slots__ = ()
    rng = random.Random(7)
    ev = _events(rng, 40)
    first = next(x for x in ev if isinstance(x, e.Connect))
    odd = Odd(**{f: getattr(first, f) for f in e.Connect.__dataclass_fields__})
    c = _tables(rng, [x for x in ev if isinstance(x, e.Accept)], small=False)
    before = _state(c)
    assert tally.sums_of(native.tally, ev + [odd]) is None
    assert _state(c) == before      # nothing fed


@needs_native
def test_an_error_in_an_event_is_raised_not_summed():
    rng = random.Random(3)
    ev = _events(rng, 20)
    first = next(x for x in ev if isinstance(x, e.Connect))
    first.pid = [1]                 # unhashable: no edge key can be made of it
    with pytest.raises(TypeError):
        native.tally(ev, "established", 0)


@pytest.mark.skipif(_CORE is None, reason=f"compiled path: {fastpath.STATUS}")
@pytest.mark.parametrize("seed", range(6))
def test_add_all_is_add_of_each(seed):
    rng = random.Random(seed)
    values = [rng.choice([rng.random() * 10**rng.randrange(12), float(rng.randrange(100)),
                          -3.5, 0.0, -0.0, 7, 2**70, 1e300, 4.7e18])
              for _ in range(500)]
    a, b = Histogram(), Histogram()
    a.add_all(values)
    b._add_each(values)
    assert _hist(a) == _hist(b)
    # an error stops both after the same adds
    for odd, error in (("x", ValueError), (None, TypeError), (float("inf"), OverflowError),
                       (float("nan"), ValueError)):
        bad = values[:10] + [odd] + values[10:]
        a, b = Histogram(), Histogram()
        with pytest.raises(error):
            a.add_all(bad)
        with pytest.raises(error):
            b._add_each(bad)
        assert _hist(a) == _hist(b)
    with pytest.raises(TypeError):
        Histogram().add_all(5)


class _Polls:
    """A session (tests/unit/test_poll_backlog.Session: real decoding, no
    kernel maps) whose polls return the events given."""

    def __init__(self, polls: list):
        from tests.unit.test_poll_backlog import Ring, Session
        self.session = Session(Ring(b""))
        self.session.poll = lambda timeout_ms: polls.pop(0) if polls else []
        self.session.take_closes = e.Closes


class _Sink:
    def __init__(self, views: bool):
        self.uses_connect_views = views

    def on_events(self, events):
        pass


@needs_native
@pytest.mark.parametrize("views", [False, True], ids=["record", "top"])
def test_the_collector_snapshots_the_same_either_way(views, monkeypatch):
    """Collector._drain with the sums (and, for top, the connect views fed
    after them) and without: the same snapshots, interval after interval."""
    from dataclasses import replace
    from tracer import collector
    from tracer.collector import Collector
    # (one wall clock for both sides' intervals: the log's "suppressed" line is stamped with it)
    monkeypatch.setattr(collector.time, "time_ns", lambda: 1_800_000_000 * 10**9)
    rng = random.Random(11)
    events = _events(rng, 4000)
    polls = [events[i:i + 250] for i in range(0, len(events), 250)]
    sides = []
    for summed in (True, False):
        c = Collector(_Polls(list(polls)).session, [_Sink(views)], header=None)
        c.clock.offset_ns = 1_700_000_000 * 10**9     # the notable log's times: one clock
        if not summed:
            c._tally = None
        sides.append(c)
    assert sides[0]._tally is native.tally and sides[0].connect_views == views
    for n in range(len(polls)):
        for c in sides:
            c._drain(0)
        if n % 4 == 3:
            a, b = (replace(c._snapshot(1.0, c._status(0.0, 1.0)), ts_us=0) for c in sides)
            assert a == b
            assert a.edges and (a.destinations if views else not a.destinations)
