"""The collection loop: poll the probes, feed aggregation and sinks, and
close an interval every --interval seconds.

Single-threaded on purpose: the poll has a short timeout, so a stop request
(SIGINT/SIGTERM set a flag) is seen within ~100 ms, and there is one exit
path that closes every sink.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Protocol

from tracer.aggregate.connects import ConnectTable


@dataclass(frozen=True)
class Status:
    elapsed_s: float
    events_total: int
    events_per_s: float      # over the last interval
    lost_events: int         # ring/perf buffer full (kernel counter)
    untracked_connects: int  # in-flight map full
    decode_errors: int
    inflight: int

    @property
    def lost_total(self) -> int:
        return self.lost_events + self.untracked_connects + self.decode_errors


class Sink(Protocol):
    def on_events(self, events: list) -> None: ...
    def on_interval(self, status: Status, connects: ConnectTable) -> None: ...
    def close(self, status: Status) -> None: ...


class Collector:
    def __init__(self, session, sinks: list, interval: float = 1.0):
        self.session = session
        self.sinks = sinks
        self.interval = interval
        self.connects = ConnectTable()
        self._events_total = 0
        self._events_at_tick = 0

    def _status(self, started: float, seconds: float) -> Status:
        c = self.session.counters()
        rate = (self._events_total - self._events_at_tick) / seconds if seconds > 0 else 0.0
        return Status(
            elapsed_s=time.monotonic() - started, events_total=self._events_total,
            events_per_s=rate, lost_events=c["lost_events"],
            untracked_connects=c["untracked_connects"], decode_errors=c["decode_errors"],
            inflight=self.session.inflight(),
        )

    def _drain(self, timeout_ms: int) -> None:
        events = self.session.poll(timeout_ms)
        if not events:
            return
        self._events_total += len(events)
        for ev in events:
            self.connects.add(ev)
        for sink in self.sinks:
            sink.on_events(events)

    def _tick(self, started: float, last_tick: float, now: float) -> None:
        seconds = now - last_tick
        self.connects.roll(seconds)
        status = self._status(started, seconds)
        self._events_at_tick = self._events_total
        for sink in self.sinks:
            sink.on_interval(status, self.connects)

    def run(self, should_stop: Callable[[], bool], duration: float | None = None) -> Status:
        started = last_tick = time.monotonic()
        deadline = started + duration if duration else None
        try:
            while not should_stop():
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    break
                next_tick = last_tick + self.interval
                wait = min(next_tick, deadline or next_tick) - now
                self._drain(max(0, min(100, int(wait * 1000))))
                now = time.monotonic()
                if now >= next_tick:
                    self._tick(started, last_tick, now)
                    last_tick = now
        finally:
            # Events already in the buffer belong to this run: take them.
            self._drain(0)
            now = time.monotonic()
            self.connects.roll(max(now - last_tick, 1e-9))
            status = self._status(started, max(now - last_tick, 1e-9))
            errors = []
            for sink in self.sinks:
                try:
                    sink.close(status)
                except Exception as e:  # close every sink, then report
                    errors.append(e)
            if errors:
                raise errors[0]
        return status
