"""Replay's array arithmetic against the live code it stands in for: the
vectorized histogram against Histogram.add, the all-at-once p99 against a
per-group sort, the bucket lookup against a ConnectTable fed the same events."""
import math
import random

import numpy as np
import pyarrow as pa
import pytest

from tests.tui import recorded
from tracer.aggregate.histogram import Histogram
from tracer.replay import load
from tracer.replay.latency import ConnectIndex, histogram_of


@pytest.mark.parametrize("seed", range(5))
def test_histogram_of_equals_histogram_add(seed):
    rng = random.Random(seed)
    values = [rng.choice([rng.uniform(0, 40), rng.uniform(0, 5_000), rng.lognormvariate(8, 3),
                          float(2 ** rng.randint(0, 40)), float(2 ** rng.randint(5, 40) - 1)])
              for _ in range(5_000)]
    expected = Histogram()
    for v in values:
        expected.add(v)
    got = histogram_of(np.array(values))
    assert got.counts == expected.counts
    assert (got.count, got.min, got.max) == (expected.count, expected.min, expected.max)
    assert got.total == pytest.approx(expected.total)
    assert [got.percentile(q) for q in (50, 95, 99)] == \
           [expected.percentile(q) for q in (50, 95, 99)]


def test_histogram_of_nothing_is_empty():
    h = histogram_of(np.empty(0))
    assert h.count == 0 and h.buckets() == []


def test_worst_p99_is_the_nearest_rank_p99_of_the_worst_destination_interval():
    rng = random.Random(3)
    rows, offsets = [], [0]
    for _interval in range(6):
        for _ in range(rng.randint(0, 40)):
            rows.append({"family": 4, "daddr": f"10.0.0.{rng.randint(1, 5)}", "dport": 80,
                         "pid": 1, "latency_us": rng.uniform(10, 1e6),
                         "outcome": rng.choice(["established"] * 5 + ["refused"])})
        offsets.append(len(rows))
    index = ConnectIndex(pa.Table.from_pylist(rows), np.array(offsets))
    best = None
    for i in range(6):
        groups = {}
        for r in rows[offsets[i]:offsets[i + 1]]:
            if r["outcome"] == "established":
                groups.setdefault((4, r["daddr"], 80), []).append(r["latency_us"])
        for key, lat in groups.items():
            lat.sort()
            p99 = lat[math.ceil(len(lat) * 0.99) - 1]
            if best is None or p99 > best[0]:
                best = (p99, i, key)
    assert index.worst_p99() == best


def test_bucket_lookup_matches_the_live_histogram_at_every_interval(tmp_path):
    t = load(recorded.write_recording(tmp_path / "rec"))
    live = {}
    for i, evs in enumerate(recorded.connect_events()):
        for ev in evs:
            if ev.outcome == "established":
                for key in (("dest", (ev.family, ev.daddr, ev.dport)), ("proc", (ev.pid,))):
                    live.setdefault(key, Histogram()).add(ev.latency_us)
        lookup = t.snapshot(i).extra["latency_buckets"]
        for key, h in live.items():
            assert lookup.get(key) == tuple(h.buckets()), (i, key)
        assert lookup.get(("dest", (4, "192.0.2.1", 1))) == ()
