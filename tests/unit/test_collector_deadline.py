"""A --duration ends on the interval it is a whole number of, and a plain
console prints what the run saw even when it never reached an interval
(CI, trixie guest: `top --plain --duration 1` printed nothing once, because
a poll returned a hair before the tick was due and the deadline check came
first)."""
from __future__ import annotations

import io

import pytest

from tests.unit.test_events import pack
from tests.unit.test_poll_backlog import Ring, Session
from tracer import collector as col
from tracer.events import decode_connect
from tracer.collector import Collector
from tracer.sinks.console import ConsoleSink


class Clock:
    """time.monotonic for the collector: every reading moves it on by
    `step` (the time between two lines of the loop)."""

    def __init__(self, step: float):
        self.t = 1000.0
        self.step = step

    def __call__(self) -> float:
        self.t += self.step
        return self.t


def connects(n: int) -> list:
    return [decode_connect(pack(sport=40000 + i)) for i in range(n)]


class EarlySession(Session):
    """A session whose poll returns `early` seconds before its timeout (as
    epoll may, and as a guest's coarse clock does), with `pending` connects
    for its next poll."""

    def __init__(self, clock: Clock, early: float, pending: int = 0):
        super().__init__(Ring(b""))
        self.clock = clock
        self.early = early
        self.pending = connects(pending)

    def poll(self, timeout_ms: int):
        self.clock.t += max(0.0, timeout_ms / 1000 - self.early)
        out, self.pending = self.pending, []
        return out


class Keep:
    def __init__(self):
        self.intervals = []
        self.closed = None

    def on_events(self, events):
        pass

    def on_interval(self, status, snapshot):
        self.intervals.append(snapshot.interval_s)

    def close(self, status, snapshot):
        self.closed = snapshot.interval_s


@pytest.mark.parametrize("early", [0.0, 0.0004, 0.0015, 0.05])
@pytest.mark.parametrize("intervals", [1, 3])
def test_a_duration_of_whole_intervals_ends_on_its_last_interval(monkeypatch, early, intervals):
    clock = Clock(step=0.001)
    monkeypatch.setattr(col.time, "monotonic", clock)
    keep = Keep()
    Collector(EarlySession(clock, early), [keep], interval=1.0, header=None).run(
        lambda: False, duration=float(intervals))
    assert len(keep.intervals) == intervals, keep.intervals
    assert all(0.99 <= s < 1.01 for s in keep.intervals), keep.intervals
    assert keep.closed is not None and keep.closed < 0.01     # the rest: next to nothing


def plain_run(monkeypatch, duration: float, pending: int, after_first_tick: int = 0) -> list[str]:
    """The tables a plain console printed (their first lines): `pending`
    connects for the first poll, `after_first_tick` more once the first
    interval has been closed."""
    clock = Clock(step=0.001)
    monkeypatch.setattr(col.time, "monotonic", clock)
    session = EarlySession(clock, 0.0, pending)
    out = io.StringIO()

    class FillAfterFirstTick:
        def on_events(self, events):
            pass

        def on_interval(self, status, snapshot):
            if after_first_tick and not status.events_total:
                session.pending = connects(after_first_tick)

        def close(self, status, snapshot):
            pass

    Collector(session, [ConsoleSink(stream=out, title="[t] "), FillAfterFirstTick()],
              interval=1.0, header=None).run(lambda: False, duration=duration)
    return [line for line in out.getvalue().splitlines() if " [t] events " in line]


def test_a_plain_run_shorter_than_an_interval_still_prints_a_table(monkeypatch):
    firsts = plain_run(monkeypatch, 0.3, pending=5)
    assert len(firsts) == 1 and " events 5 " in firsts[0], firsts


def test_a_last_partial_interval_that_saw_nothing_is_not_printed(monkeypatch):
    firsts = plain_run(monkeypatch, 1.5, pending=0)
    assert len(firsts) == 1, firsts        # nothing after the first table: not printed again


def test_the_last_partial_interval_is_printed_when_it_has_events(monkeypatch):
    """Events arriving after the last full interval (here: seven connects
    come after the first tick) are in a last table, not lost to the eye."""
    firsts = plain_run(monkeypatch, 1.5, pending=0, after_first_tick=7)
    assert len(firsts) == 2 and " events 0 " in firsts[0] and " events 7 " in firsts[1], firsts
