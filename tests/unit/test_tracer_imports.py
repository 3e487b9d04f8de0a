"""The tracer process records without pyarrow.compute (~9 MB of RSS) and
without pyarrow's cloud file systems (libarrow_s3 and OpenSSL, ~3 MB):
issue 17's peak-RSS target at the ceiling. Its one use of computed values,
the rows' earliest and latest ts (the day partition; a recovered run's
end), is read from the column's buffers, and must agree with
pyarrow.compute on every layout a column can have."""
from __future__ import annotations

import json
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from tracer.sinks.table_writer import ts_bounds

ROOT = Path(__file__).resolve().parents[2]
TS = pa.timestamp("us", tz="UTC")


def reference(table) -> tuple[int, int] | None:
    us = table.column("ts").cast(pa.int64())
    mm = pc.min_max(us)
    lo, hi = mm["min"].as_py(), mm["max"].as_py()
    return None if lo is None else (lo, hi)


def tables(rng: random.Random):
    """Tables and batches whose ts columns are single or chunked, sliced
    (buffers with an offset), with nulls, empty chunks, before 1970."""
    for _ in range(200):
        chunks = []
        for _ in range(rng.randrange(1, 5)):
            n = rng.randrange(0, 50)
            values = [rng.choice((None, rng.randrange(-10**15, 4 * 10**15))) if rng.random() < 0.1
                      else rng.randrange(-10**15, 4 * 10**15) for _ in range(n)]
            arr = pa.array(values, pa.int64()).cast(TS)
            if n and rng.random() < 0.5:
                start = rng.randrange(n)
                arr = arr.slice(start, rng.randrange(0, n - start + 1))
            chunks.append(arr)
        table = pa.Table.from_arrays([pa.chunked_array(chunks, TS)], names=["ts"])
        yield table
        if table.num_rows:
            yield table.combine_chunks().to_batches()[0]


def test_the_bounds_agree_with_pyarrow_compute():
    seen = 0
    for t in tables(random.Random(17)):
        assert ts_bounds(t) == reference(t if isinstance(t, pa.Table) else pa.Table.from_batches([t]))
        seen += 1
    assert seen > 300
    empty = pa.Table.from_arrays([pa.array([], TS)], names=["ts"])
    nulls = pa.Table.from_arrays([pa.array([None, None], TS)], names=["ts"])
    assert ts_bounds(empty) is None and ts_bounds(nulls) is None


WRITE = textwrap.dedent("""
    import json, os, sys
    from tracer import run
    run.keep_out_of_the_tracer()
    from tracer.sinks.parquet_writer import Recording

    d, first_ts, n, crash = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "crash"
    rows = [dict(ts=first_ts + i * 1_000_000, pid=1, tid=1, comm="c", family=4, saddr="10.0.0.1",
                 sport=1, daddr="10.0.0.2", dport=80, latency_us=1.0, outcome="established",
                 syn_retransmits=0) for i in range(n)]
    # (killed: its rows stay in a journal, for the next run to recover)
    r = Recording(d, rotate_rows=10**6 if crash else 40, run_id="crashed" if crash else "second")
    r.write("connects", rows[: n // 2])
    r.flush()
    r.write("connects", {k: [row[k] for row in rows[n // 2:]] for k in rows[0]})
    r.tick()
    r.flush()
    if crash:
        os._exit(0)                 # journals and manifest left as a kill -9 leaves them
    r.close()
    print(json.dumps(sorted(m for m in ("pyarrow.compute", "pyarrow._s3fs", "pyarrow._gcsfs",
                                        "pyarrow._azurefs", "pyarrow._hdfs", "pandas", "numpy")
                            if m in sys.modules)))
""")

DAY = 86_400_000_000


def write(d: str, first_ts: int, n: int, crash: bool) -> list[str]:
    p = subprocess.run([sys.executable, "-c", WRITE, d, str(first_ts), str(n),
                        "crash" if crash else "close"], capture_output=True, text=True,
                       cwd=ROOT, timeout=120)
    assert p.returncode == 0, p.stderr
    return [] if crash else json.loads(p.stdout)


def test_recording_and_recovering_need_neither_compute_nor_cloud_file_systems(tmp_path):
    """As `record` runs: rows flushed, journaled, rotated into files and
    compacted, after recovering what a killed run left in the directory
    (its rows, and its end from its last row's ts)."""
    import pyarrow.parquet as pq

    from tracer.sinks.manifest import read_manifest
    from tracer.sinks.names import RUNS_DIR, manifest_name

    d = str(tmp_path / "rec")
    first = 19_000 * DAY + 3_600_000_000
    write(d, first, 100, crash=True)
    assert write(d, first + 200_000_000, 100, crash=False) == []
    t = pq.read_table(Path(d, "connects"))
    assert t.num_rows == 200
    assert sorted(set(t.column("run_id").to_pylist())) == ["crashed", "second"]
    crashed = read_manifest(Path(d, RUNS_DIR, manifest_name("crashed")))
    assert crashed["status"] == "crashed"
    assert crashed["end"] == "2022-01-08T01:01:39.000000Z"   # its last row's ts


def test_rows_over_midnight_still_go_to_their_days(tmp_path):
    """The one case that loads pyarrow.compute: a flush whose rows span two
    UTC days is split by day."""
    import pyarrow.parquet as pq

    d = str(tmp_path / "rec")
    assert write(d, 19_000 * DAY - 10_000_000, 60, crash=False) == ["pyarrow.compute"]
    days: dict[str, int] = {}
    for p in Path(d, "connects").glob("date=*/*.parquet"):
        days[p.parent.name] = days.get(p.parent.name, 0) + pq.read_table(p, partitioning=None).num_rows
    # (a run writes an empty file of each table on its start's day: the schema)
    assert {k: v for k, v in days.items() if v} == {"date=2022-01-07": 10, "date=2022-01-08": 50}
