"""The recorder's event rows made by the compiled path (tracer/_fastpath.c
event_rows, RecordSink.on_events' loop in C) against the Python loop, the
definition (recorder.connect_values / accept_values): the same rows, value
for value and type for type, or the same error after the same rows.

The events are decoded from records another user can shape (any comm
bytes, addresses, ports, outcome codes, errno, namespaces and cgroup ids;
timestamps up to 2**64-1, ends before starts) and include values no decoder
makes (subclasses of int, None, strings where numbers go), which the
compiled path must treat as the Python loop does."""
from __future__ import annotations

import random

import pytest

from tracer import events as e
from tracer import fastpath
from tracer.clock import Clock
from tracer.domain import containers
from tracer.sinks import recorder
from tests.unit.test_fastpath import accept, connect

native = fastpath.native
needs_native = pytest.mark.skipif(native is None, reason=f"compiled path: {fastpath.STATUS}")


class _Recording:
    def write(self, table, columns):
        pass


def _clock(offset: int) -> Clock:
    c = Clock()
    c.offset_ns = offset
    return c


def _sinks(clock, containers_=None):
    compiled = recorder.RecordSink(_Recording(), clock, containers_)
    reference = recorder.RecordSink(_Recording(), clock, containers_)
    reference._compiled_rows = None
    return compiled, reference


def _typed(rows):
    return [[(type(v), repr(v)) for v in row] for row in rows]


def _same(compiled, reference, events):
    outcome = []
    for sink in (compiled, reference):
        try:
            sink.on_events(events)
            outcome.append(None)
        except Exception as exc:
            outcome.append((type(exc), str(exc)))
    assert outcome[0] == outcome[1]
    for table in ("connects", "accepts"):
        assert _typed(compiled._rows[table]) == _typed(reference._rows[table]), table
    return outcome[0]


def _events(rng: random.Random, n: int) -> list:
    out = []
    t = rng.choice([1, 10**12, 2**63 - 10**9, 2**64 - 10**9])
    for i in range(n):
        t = min(t + rng.randrange(10**6), 2**64 - 10**6)
        pick = rng.random()
        if pick < 0.5:
            out.append(e.decode_connect_at(connect(rng, i, t), 0))
        elif pick < 0.95:
            out.append(e.decode_accept_at(accept(rng, i, t), 0))
        else:
            out.append(rng.choice([None, "x", 5, e.Closes()]))   # passed over by both
    return out


class _Containers:
    """columns_of as tracer.probes.cgroups.ContainerCache has it: known pids,
    known cgroup ids, else the id alone."""

    def __init__(self, rng):
        self.known = {pid: (rng.randrange(2**64), f"docker/{pid}", None, "pod\x1b[2J", "ns", "c")
                      for pid in (1, 4242, 9999)}

    def columns_of(self, pid, cgroup_id):
        return self.known.get(pid) or (cgroup_id or None, *containers.values(None)[1:])


@needs_native
@pytest.mark.parametrize("seed", range(12))
def test_the_compiled_rows_are_the_python_rows(seed):
    rng = random.Random(seed)
    offset = rng.choice([Clock().offset_ns, 0, -2**63, 2**63 - 1, -1, 999, -1001])
    compiled, reference = _sinks(_clock(offset), _Containers(rng) if seed % 2 else None)
    assert compiled._compiled_rows is native.event_rows
    for _ in range(5):
        assert _same(compiled, reference, _events(rng, rng.randrange(0, 400))) is None
    assert compiled._rows["connects"] or compiled._rows["accepts"]


@needs_native
def test_values_no_decoder_makes_are_treated_as_python_treats_them():
    """Fields set by hand (replay, tests): the compiled path reads the same
    attributes and does the same arithmetic, on ints of any size and kind."""
    class Big(int):
        pass

    rng = random.Random(7)
    base_c = e.decode_connect_at(connect(rng, 1, 10**15), 0)
    base_a = e.decode_accept_at(accept(rng, 2, 10**15), 0)
    odd = [
        {"ts_start_ns": 2**70}, {"ts_start_ns": -5}, {"ts_start_ns": Big(12345678)},
        {"ts_start_ns": 1.5e12}, {"netns": None}, {"netns": ""}, {"netns": Big(0)},
        {"outcome": None}, {"outcome": "established"}, {"outcome": "refused"},
        {"ts_end_ns": 0}, {"pid": "1"}, {"comm": b"\xff"}, {"cgroup_id": 2**80},
    ]
    for clock_offset in (Clock().offset_ns, 2**63 - 1, -2**63):
        compiled, reference = _sinks(_clock(clock_offset))
        for fields in odd:
            ev = e.Connect(*[fields.get(f, getattr(base_c, f)) for f in _names(e.Connect)])
            _same(compiled, reference, [ev])
        for fields in ({"ts_ns": 2**66}, {"ts_handshake_ns": 2**66}, {"ts_ns": "x"},
                       {"netns": 0}, {"netns": None}, {"backlog_len": Big(3)}):
            ev = e.Accept(*[fields.get(f, getattr(base_a, f)) for f in _names(e.Accept)])
            _same(compiled, reference, [ev])


def _names(cls):
    import dataclasses
    return [f.name for f in dataclasses.fields(cls)]


@needs_native
def test_a_failing_container_lookup_fails_after_the_same_rows():
    rng = random.Random(3)
    events = _events(rng, 50)
    calls = {"n": 0}

    class Failing:
        def columns_of(self, pid, cgroup_id):
            calls["n"] += 1
            if calls["n"] % 40 == 0:
                raise KeyError(pid)
            if calls["n"] % 7 == 0:
                return [1, 2, 3, 4, 5, 6]           # any iterable, as *where takes it
            return containers.values(None)

    compiled, reference = _sinks(_clock(Clock().offset_ns), Failing())
    raised = []
    for sink in (compiled, reference):
        calls["n"] = 0
        with pytest.raises(KeyError) as exc:
            sink.on_events(events)
        raised.append(exc.value.args)
    assert raised[0] == raised[1]
    assert _typed(compiled._rows["connects"]) == _typed(reference._rows["connects"])
    assert _typed(compiled._rows["accepts"]) == _typed(reference._rows["accepts"])


def test_a_clock_of_its_own_gets_the_python_loop():
    class Shifted(Clock):
        def wall_us(self, mono_ns):
            return 42

    sink = recorder.RecordSink(_Recording(), Shifted())
    assert sink._compiled_rows is None
    rng = random.Random(1)
    sink.on_events([e.decode_connect_at(connect(rng, 1, 10**12), 0)])
    assert sink._rows["connects"][0][0] == 42
