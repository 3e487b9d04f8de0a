"""The connect views (per destination, process and container) are kept only
when a sink reads them: `record` and `serve` alone do not pay three latency
histograms a connect for rows no one sees, and what they write or serve is
the same as when the views are kept."""
from __future__ import annotations

import random

from tests.unit.test_fastpath import connect, framed
from tests.unit.test_poll_backlog import Ring, Session
from tracer.aggregate.snapshot import Header
from tracer.clock import Clock
from tracer.collector import Collector, Status
from tracer.sinks.console import StatusLineSink
from tracer.sinks.recorder import RecordSink


class Rows:
    """A Recording that keeps what it is handed."""

    def __init__(self):
        self.written = []

    def write(self, table, rows):
        self.written.append((table, rows))
        return 0

    def __getattr__(self, name):       # set_lost, set_evicted, ... : nothing kept
        return lambda *a, **k: None


class Viewer:
    """A sink that does not say: as top's, it is taken to read the views."""

    def on_events(self, events):
        pass

    def on_interval(self, status, snapshot):
        self.snapshot = snapshot

    close = on_interval


def run(sinks, data: bytes, clock: Clock):
    c = Collector(Session(Ring(data)), sinks, 1.0,
                  header=Header(host="h", kernel="k", backend="tracepoint"), clock=clock)
    c._drain(0)
    status = Status(elapsed_s=1.0, events_total=0, events_per_s=0.0, lost_events=0,
                    untracked_connects=0, decode_errors=0, inflight=0)
    snap = c._snapshot(1.0, status)
    for sink in sinks:
        sink.on_interval(status, snap)
    return c, snap


def traffic() -> bytes:
    rng = random.Random(3)
    # hostile text, but ids the kernel can give: a recording refuses a pid
    # or a cgroup id past its int32 and int64 columns (rows_to_batch)
    return framed([(connect(rng, 64 * i, 10_000 + i, family=2, pid=rng.choice([1, 4242, 4194304]),
                            tid=rng.randrange(1, 4194305), syn_retransmits=rng.randrange(256),
                            cgroup_id=rng.choice([0, 77, 2**63 - 1])), 0)
                   for i in range(500)])


def test_record_alone_keeps_no_connect_views_and_writes_the_same_rows():
    clock = Clock()
    clock.offset_ns = 0
    alone, with_view = Rows(), Rows()
    c1, snap1 = run([RecordSink(alone, clock), StatusLineSink(every_s=10**9)], traffic(), clock)
    c2, snap2 = run([RecordSink(with_view, clock), Viewer()], traffic(), clock)

    assert not c1.connect_views and c2.connect_views
    assert snap1.destinations == snap1.processes_connects == snap1.containers_connects == ()
    assert sum(r.attempts for r in snap2.destinations) == 500        # a view that reads them has them
    assert sum(r.attempts for r in snap2.processes_connects) == 500
    # what record writes does not depend on it: event rows and interval rows
    # alike (these stamped with the wall clock when each run took its snapshot)
    assert [t for t, _ in alone.written] == [t for t, _ in with_view.written]
    assert alone.written[0] == with_view.written[0] and alone.written[0][0] == "connects"
    assert len(alone.written[0][1]["ts"]) == 500
    for (_, a), (_, b) in zip(alone.written[1:], with_view.written[1:]):
        assert [{**r, "ts": 0} for r in a] == [{**r, "ts": 0} for r in b]
    assert snap1.edges == snap2.edges and snap1.processes == snap2.processes


def test_metrics_alone_keeps_no_connect_views():
    from tracer.sinks.metrics_endpoint import MetricsSink

    assert MetricsSink.uses_connect_views is False
    assert getattr(Viewer(), "uses_connect_views", True) is True
