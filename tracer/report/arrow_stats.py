"""Exact statistics over Arrow columns, vectorized so a report over millions of
rows stays fast. Percentiles use the nearest-rank definition everywhere (the
value at rank ceil(q * n) of the n sorted values), as the live histograms do
(tracer/aggregate/histogram.py), so p99 of 1..100 is 99 and p99 of 3 values is
the largest.
"""

from __future__ import annotations

import math
from typing import Sequence

import pyarrow as pa
import pyarrow.compute as pc


def nearest_rank(sorted_values: Sequence[float], q: float) -> float | None:
    """The q-quantile (0 < q <= 1) of already sorted values, by nearest rank."""
    n = len(sorted_values)
    if not n:
        return None
    return sorted_values[max(1, math.ceil(q * n)) - 1]


def quantiles_by(table: pa.Table, keys: list[str], value: str,
                 qs: Sequence[float]) -> dict[tuple, tuple[int, list[float]]]:
    """Per group of `keys`: (count of non-null values, [nearest-rank quantile per q])."""
    t = table.select([*keys, value]).filter(pc.is_valid(table.column(value)))
    if not t.num_rows:
        return {}
    ids, decode = _group_ids(t, keys)
    # sorting integers is several times faster than sorting by string keys
    order = pc.sort_indices(pa.table({"id": ids, "v": t.column(value)}),
                            sort_keys=[("id", "ascending"), ("v", "ascending")])
    sorted_ids = pc.take(ids, order)
    values = pc.take(t.column(value), order)
    # without threads group_by keeps first-seen order, i.e. the sort order
    g = pa.table({"id": sorted_ids}).group_by(["id"], use_threads=False).aggregate(
        [("id", "count")])
    counts = g.column("id_count").to_pylist()
    starts, at = [], 0
    for n in counts:
        starts.append(at)
        at += n
    picks = [[s + max(1, math.ceil(q * n)) - 1 for s, n in zip(starts, counts)] for q in qs]
    chosen = [pc.take(values, pa.array(p, pa.int64())).to_pylist() for p in picks]
    return {decode(gid): (n, [c[i] for c in chosen])
            for i, (gid, n) in enumerate(zip(g.column("id").to_pylist(), counts))}


def _group_ids(t: pa.Table, keys: list[str]):
    """One dense int64 id per row for its combination of `keys`, and id -> key tuple."""
    words, combos, ids = [], [], None
    for k in keys:
        enc = pc.dictionary_encode(t.column(k)).combine_chunks()
        w = enc.dictionary.to_pylist() + [None]         # the extra slot is null
        idx = pc.fill_null(pc.cast(enc.indices, pa.int64()), len(w) - 1)
        words.append(w)
        if ids is None:
            ids = idx
            continue
        # renumber densely after each key, so ids stay below the row count
        pairs = pc.dictionary_encode(pc.add(pc.multiply(ids, len(w)), idx))
        combos.append(pairs.dictionary.to_pylist())
        ids = pc.cast(pairs.indices, pa.int64())

    def decode(gid: int) -> tuple:
        out = []
        for w, pairs in zip(reversed(words[1:]), reversed(combos)):
            gid, i = divmod(pairs[gid], len(w))
            out.append(w[i])
        out.append(words[0][gid])
        return tuple(reversed(out))

    return ids, decode


def sums_by(table: pa.Table, keys: list[str], aggs: list[tuple[str, str]]) -> list[dict]:
    """Rows of group_by(keys).aggregate(aggs), as dicts keyed `<column>_<agg>`."""
    if not table.num_rows:
        return []
    return table.group_by(keys, use_threads=False).aggregate(aggs).to_pylist()


def ts_us(table: pa.Table) -> pa.Array:
    """The `ts` column as int64 microseconds since the epoch."""
    return pc.cast(table.column("ts"), pa.int64())


def bucket_start(table: pa.Table, bucket_us: int) -> pa.Array:
    """Start (µs since the epoch) of the fixed-width time bucket of each row's ts."""
    # integer division truncates toward zero: right for any ts after 1970
    return pc.multiply(pc.divide(ts_us(table), bucket_us), bucket_us)


def time_range(tables: Sequence[pa.Table]) -> tuple[int, int] | None:
    """(first, last) ts in µs over all tables, or None if all are empty."""
    lo = hi = None
    for t in tables:
        if not t.num_rows:
            continue
        mm = pc.min_max(ts_us(t))
        a, b = mm["min"].as_py(), mm["max"].as_py()
        if a is None:
            continue
        lo = a if lo is None else min(lo, a)
        hi = b if hi is None else max(hi, b)
    return None if lo is None else (lo, hi)


def typical_interval_us(table: pa.Table, keys: list[str], default_us: int) -> int:
    """The median gap between consecutive rows of one key (per-interval tables)."""
    if table.num_rows < 2:
        return default_us
    t = table.select([*keys, "ts"]).sort_by(
        [(k, "ascending") for k in keys] + [("ts", "ascending")]).combine_chunks()
    gaps = pc.pairwise_diff(ts_us(t).combine_chunks())
    same = None
    for k in keys:
        col = t.column(k).combine_chunks()
        eq = pc.equal(col.slice(1), col.slice(0, len(col) - 1))
        same = eq if same is None else pc.and_(same, eq)
    gaps = gaps.slice(1)
    if same is not None:
        gaps = gaps.filter(pc.fill_null(same, False))
    gaps = gaps.filter(pc.greater(gaps, 0))
    if not len(gaps):
        return default_us
    return int(nearest_rank(pc.take(gaps, pc.sort_indices(gaps)).to_pylist(), 0.5))


def nice_bucket_us(span_us: int, target_buckets: int = 120, floor_us: int = 1_000_000) -> int:
    """A round bucket width (1 s, 5 s, 10 s, 30 s, 1 min, 5 min, ...) giving about
    `target_buckets` buckets over `span_us`, never below `floor_us`."""
    steps_s = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 86400)
    want = max(span_us / max(target_buckets, 1), floor_us)
    for s in steps_s:
        if s * 1_000_000 >= want:
            return s * 1_000_000
    return steps_s[-1] * 1_000_000
