"""What container attribution costs the collector per event: the same
decoded Connect events through what the collector and the recorder do with
them (ConnectTable, RecordSink.on_events), without and with a ContainerCache,
side by side in one run. The events belong to live processes of this host,
so the cache reads their real /proc files (first poll: every pid resolved;
later polls: cache hits; every 10th poll an interval's revalidate()).

`python -m bench.container_attribution [EVENTS_PER_POLL] [POLLS]`"""
from __future__ import annotations

import os
import statistics
import sys
import time

from tracer.aggregate.connects import ConnectTable
from tracer.clock import Clock
from tracer.events import Connect
from tracer.probes.cgroups import ContainerCache
from tracer.sinks.recorder import RecordSink


class NoRecording:
    def write(self, table, rows):
        return 0

    def tick(self):
        pass

    def interval_tick(self):
        pass


def events(n: int, pids: list[int]) -> list[Connect]:
    return [Connect(ts_start_ns=i, ts_end_ns=i + 1000, pid=pids[i % len(pids)], tid=1,
                    comm="worker", family=4, saddr="127.0.0.1", sport=40000 + i % 20000,
                    daddr="127.0.0.1", dport=8080, outcome="established", err=0,
                    syn_retransmits=0) for i in range(n)]


class Config:
    """One side of the comparison: its own tables, sink and cache."""

    def __init__(self, cache: ContainerCache | None):
        self.cache = cache
        self.table, self.sink = ConnectTable(), RecordSink(NoRecording(), Clock(), cache)
        self.times: list[float] = []
        self.i = 0

    def poll(self, batch: list[Connect]) -> None:
        cache, table, sink, i = self.cache, self.table, self.sink, self.i
        self.i += 1
        t0 = time.perf_counter()
        if cache is not None:
            cache.note([ev.pid for ev in batch])
            group = cache.group
            for ev in batch:
                table.add(ev, group(ev.pid))
            if i % 10 == 9:
                cache.revalidate()
        else:
            for ev in batch:
                table.add(ev)
        sink.on_events(batch)
        self.times.append((time.perf_counter() - t0) * 1e6 / len(batch))
        sink._rows = {"connects": [], "accepts": []}


def main(argv=sys.argv[1:]):
    per_poll = int(argv[0]) if argv else 2000
    polls = int(argv[1]) if len(argv) > 1 else 200
    pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())[:200]
    batch = events(per_poll, pids)
    cold = ContainerCache()
    t0 = time.perf_counter()
    cold.note(pids)
    first_ms = (time.perf_counter() - t0) * 1e3
    # interleaved poll by poll: the machine's noise falls on both sides alike
    sides = Config(None), Config(ContainerCache())
    for _ in range(polls):
        for side in sides:
            side.poll(batch)
    base, with_cache = sides[0].times, sides[1].times
    print(f"{per_poll:,} connect events per poll from {len(pids)} live pids, {polls} polls "
          f"(median µs per event; collector's ConnectTable.add + RecordSink.on_events)")
    print("| | µs/event (median) | p90 |")
    print("|---|---:|---:|")
    for name, xs in (("without attribution", base), ("with ContainerCache", with_cache)):
        q = statistics.quantiles(xs, n=10)
        print(f"| {name} | {statistics.median(xs):.2f} | {q[8]:.2f} |")
    print(f"first resolution of {len(pids)} pids (/proc/PID/stat, cgroup, v2 id walk): "
          f"{first_ms:.1f} ms ({first_ms * 1e3 / len(pids):.0f} µs a pid)")


if __name__ == "__main__":
    main()
