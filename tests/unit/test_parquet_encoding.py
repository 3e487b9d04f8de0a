"""How a recording's Parquet is encoded (tracer/sinks/journal.py
parquet_options): text in dictionaries, integers and times delta-encoded.
The files are written by the real Recording (published, then compacted) and
read back by DuckDB, pyarrow and polars, the readers the README names: every
value, nulls and the extremes of each integer type included, must come back
as written, and the file metadata must show the encodings asked for."""
import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from tracer.sinks.journal import parquet_options
from tracer.sinks.parquet_writer import Recording
from tracer.schema import TABLES, schema

from tests.unit.test_recording_readable import T0, FakeClock


def connects(n, start=0):
    """Rows as the tracer writes them, with what delta encoding must survive:
    times out of order by a little, ports and pids jumping across their
    types' whole range, nulls in the nullable integers, hostile text."""
    out = []
    for i in range(start, start + n):
        out.append(dict(
            ts=T0 + i * 1000 - (i % 3) * 7,           # not monotonic
            pid=(1, 2**31 - 1, 4_000_000)[i % 3], tid=i % 2**31,
            comm=("curl", "\u202eevil\x1b[2J", "nginx: worker")[i % 3], family=(4, 6)[i % 2],
            saddr="127.0.0.1", sport=(0, 65535, 10000 + i % 50000)[i % 3],
            daddr=("::1", "10.0.0.1")[i % 2], dport=(80, 65535)[i % 2],
            latency_us=None if i % 11 == 0 else 12.5 * (i % 40),
            outcome=("established", "refused")[i % 5 == 0], syn_retransmits=i % 7,
            errno=111 if i % 5 == 0 else None,
            netns=None if i % 4 == 0 else 4026531840 + i % 3,
            cgroup_id=(None, 2**63 - 1, 1, 0)[i % 4]))
    return out


def _record(d, rows_per_step, steps):
    """Written as `record` writes: small files published, then compacted."""
    clock = FakeClock()
    r = Recording(d, clock=clock, flush_interval_s=1.0, publish_age_s=2.0, rotate_age_s=10.0)
    written = []
    for step in range(steps):
        rows = connects(rows_per_step, start=len(written))
        r.write("connects", rows)
        written += rows
        clock.t += 1.0
        r.tick()
    r.close()
    return written


def _files(d):
    return sorted(d.joinpath("connects").glob("date=*/*.parquet"))


def _key(row):
    return (row["ts"], row["tid"])


def test_every_reader_reads_back_every_value_written(tmp_path):
    d = tmp_path / "rec"
    written = _record(d, 500, 25)
    files = [f for f in _files(d) if pq.ParquetFile(f).metadata.num_rows]
    assert len(files) >= 2, files          # compacted at 10 s, and the rest
    names = list(written[0])
    want = sorted((tuple(r[c] for c in names) for r in written))

    cols = ", ".join("epoch_us(ts)" if c == "ts" else c for c in names)
    con = duckdb.connect()
    got_duck = sorted(con.execute(
        f"select {cols} from read_parquet({[str(f) for f in files]})").fetchall())
    assert got_duck == want

    t = pa.concat_tables([pq.read_table(f) for f in files])
    t = t.set_column(t.schema.get_field_index("ts"), "ts", t.column("ts").cast(pa.int64()))
    got_arrow = sorted(tuple(r[c] for c in names) for r in t.select(names).to_pylist())
    assert got_arrow == want

    p = pl.concat([pl.read_parquet(f) for f in files]).select(names)
    p = p.with_columns(pl.col("ts").dt.epoch("us"))
    got_polars = sorted(p.iter_rows())
    assert got_polars == want


def test_text_is_dictionary_encoded_and_numbers_delta_encoded(tmp_path):
    d = tmp_path / "rec"
    _record(d, 500, 25)
    sch = schema("connects")
    for f in _files(d):
        md = pq.ParquetFile(f).metadata
        if not md.num_rows:
            continue
        for g in range(md.num_row_groups):
            rg = md.row_group(g)
            for i in range(rg.num_columns):
                col = rg.column(i)
                field = sch.field(col.path_in_schema)
                if pa.types.is_string(field.type):
                    assert "RLE_DICTIONARY" in col.encodings, (f, col.path_in_schema, col.encodings)
                elif pa.types.is_integer(field.type) or pa.types.is_timestamp(field.type):
                    assert "DELTA_BINARY_PACKED" in col.encodings, (col.path_in_schema, col.encodings)
                    assert "RLE_DICTIONARY" not in col.encodings, (col.path_in_schema, col.encodings)
                    assert col.is_stats_set, col.path_in_schema     # DuckDB skips by ts range
                assert col.compression == "ZSTD"


def test_every_tables_options_name_only_its_own_columns():
    """pyarrow refuses a column in both lists, and one not in the schema."""
    for table in TABLES:
        sch = schema(table)
        opts = parquet_options(sch)
        assert set(opts["use_dictionary"]) <= set(sch.names)
        assert set(opts["column_encoding"]) <= set(sch.names)
        assert not set(opts["use_dictionary"]) & set(opts["column_encoding"])
        w = pq.ParquetWriter(pa.BufferOutputStream(), sch, **opts)
        w.write_table(sch.empty_table())
        w.close()
