"""Connect latencies of a recording as arrays, for what replay computes from
all rows at once: the histogram of the selected row at any interval (on
demand: copying every destination's buckets into every Snapshot would cost
gigabytes at 10,000 destinations), and each interval's worst p99.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tracer.aggregate.histogram import SUB, SUB_BITS, Histogram


def histogram_of(values: np.ndarray) -> Histogram:
    """The Histogram that Histogram.add would build from `values`, vectorized:
    the same log-linear buckets (tracer/aggregate/histogram.py), exact min and max."""
    h = Histogram()
    if values.size == 0:
        return h
    v = np.maximum(values.astype(np.int64), 0)           # int(value), as bucket_of does
    exp = np.frexp(np.maximum(v, 1).astype(np.float64))[1] - 1   # floor(log2 v), exact < 2**53
    shift = np.maximum(exp - SUB_BITS, 0)
    buckets = np.where(v < SUB, v, (shift + 1) * SUB + (v >> shift) - SUB)
    index, counts = np.unique(buckets, return_counts=True)
    h.counts = dict(zip(index.tolist(), counts.tolist()))
    h.count = int(values.size)
    h.total = float(values.sum())
    h.min, h.max = float(values.min()), float(values.max())
    return h


class ConnectIndex:
    """One run's `connects` rows (sorted by interval) as arrays: latency of the
    established ones (NaN otherwise, as only they enter ConnectStats' histogram),
    destination and process ids."""

    def __init__(self, table: pa.Table, offsets: np.ndarray):
        self.offsets = offsets
        n = table.num_rows
        lat = np.asarray(table.column("latency_us").to_numpy(zero_copy_only=False), np.float64) \
            if n else np.empty(0)
        ok = np.asarray(pc.equal(table.column("outcome"), "established").fill_null(False)
                        .to_numpy(zero_copy_only=False), bool) if n else np.empty(0, bool)
        self.latency = np.where(ok, lat, np.nan)
        self.pid = np.asarray(table.column("pid").to_numpy(zero_copy_only=False), np.int64) \
            if n else np.empty(0, np.int64)
        self.dest_id, self.dest_keys = self._destinations(table)
        self._dest_of = {k: i for i, k in enumerate(self.dest_keys)}

    @staticmethod
    def _destinations(table: pa.Table) -> tuple[np.ndarray, list[tuple]]:
        if not table.num_rows:
            return np.empty(0, np.int64), []
        key = pa.Table.from_arrays([table.column("family"), table.column("daddr"),
                                    table.column("dport")], names=["family", "daddr", "dport"])
        uniq = key.group_by(["family", "daddr", "dport"], use_threads=False).aggregate([])
        keys = list(zip(*(uniq.column(c).to_pylist() for c in ("family", "daddr", "dport"))))
        of = {k: i for i, k in enumerate(keys)}
        ids = np.fromiter((of[k] for k in zip(*(key.column(c).to_pylist()
                                                for c in ("family", "daddr", "dport")))),
                          np.int64, count=table.num_rows)
        return ids, keys

    def buckets(self, row_key: tuple, interval: int) -> tuple:
        """Histogram buckets of ("dest", key) or ("proc", (pid,)) over intervals 0..interval."""
        end = int(self.offsets[interval + 1])
        kind, key = row_key
        if kind == "dest":
            i = self._dest_of.get(key)
            if i is None:
                return ()
            mine = self.dest_id[:end] == i
        else:
            mine = self.pid[:end] == key[0]
        values = self.latency[:end][mine]
        return tuple(histogram_of(values[~np.isnan(values)]).buckets())

    def worst_p99(self) -> tuple[float, int, tuple] | None:
        """(p99, interval, destination key) of the slowest destination-interval:
        nearest-rank p99 of the established connects of each destination in each
        interval, computed for all of them at once."""
        valid = ~np.isnan(self.latency)
        if not valid.any():
            return None
        interval = np.repeat(np.arange(len(self.offsets) - 1), np.diff(self.offsets))[valid]
        group = interval * max(1, len(self.dest_keys)) + self.dest_id[valid]
        lat = self.latency[valid]
        order = np.lexsort((lat, group))
        group, lat = group[order], lat[order]
        starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
        counts = np.diff(np.r_[starts, group.size])
        p99 = lat[starts + np.ceil(counts * 0.99).astype(np.int64) - 1]
        k = int(np.argmax(p99))
        g = int(group[starts[k]])
        n = max(1, len(self.dest_keys))
        return float(p99[k]), g // n, self.dest_keys[g % n]


class LatencyAt:
    """Snapshot.extra["latency_buckets"] of a replayed interval: a read-only
    mapping ("dest"|"proc", key) -> buckets, computed on first use and kept.
    Its answers depend only on the recording and the interval, so it behaves
    like the dict a live snapshot would carry."""

    def __init__(self, index: ConnectIndex, interval: int):
        self._index = index
        self._interval = interval
        self._done: dict[tuple, tuple] = {}

    def get(self, row_key: tuple, default=()) -> tuple:
        got = self._done.get(row_key)
        if got is None:
            got = self._done[row_key] = self._index.buckets(row_key, self._interval)
        return got or default

    def __contains__(self, row_key) -> bool:
        return bool(self.get(row_key))
