"""read_recording against real files: what the writer makes, plus what a disk, a
copy or a newer connscope can leave next to it. Each bad file costs one
problem line naming it; every good file is still read."""

import json
import random
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tracer.report.reader import EmptyRecording, RecordingNotFound, read_recording
from tracer.schema import SCHEMA_VERSION, TABLES, VERSION_KEY, schema
from tracer.sinks.parquet_writer import Recording

T0 = 1_709_262_000_000_000
PART = "connects/date=2024-03-01"


def connects(n, start=0, daddr="10.0.0.2"):
    return [dict(ts=T0 + (start + i) * 1000, pid=10, tid=10, comm="app", family=4,
                 saddr="10.0.0.1", sport=40000 + i, daddr=daddr, dport=5432,
                 latency_us=100.0 + i, outcome="established", syn_retransmits=0)
            for i in range(n)]


def record(d, host="h1", run_id="r1", rows=100, files=1):
    """A real recording: `files` connects files of `rows` rows each."""
    with Recording(d, host=host, run_id=run_id, rotate_rows=rows) as r:
        for f in range(files):
            r.write("connects", connects(rows, start=f * rows))
            r.flush()
    return sorted(Path(d, PART).glob("*.parquet"))


def problem_for(data, name):
    lines = [p for p in data.problems if p.startswith(str(name))]
    assert len(lines) == 1, data.problems
    return lines[0]


# ---------------------------------------------------------------- good data

def test_reads_what_the_writer_wrote(tmp_path):
    record(tmp_path, rows=100, files=3)
    data = read_recording(tmp_path)
    # and the empty file each of the 8 tables gets at the start
    assert data.files_read == 3 + 8 and data.problems == []
    assert set(data.tables) == set(TABLES)
    assert data.tables["connects"].num_rows == 300
    for t in TABLES:
        assert data.tables[t].schema.equals(schema(t))      # empty tables keep the schema
    assert [m["run_id"] for m in data.manifests] == ["r1"]
    assert data.manifests[0]["status"] == "complete"


def test_fleet_in_nested_directories(tmp_path):
    record(tmp_path / "web-1", host="web-1", run_id="run-a", rows=10)
    record(tmp_path / "dc2" / "web-2", host="web-2", run_id="run-b", rows=20)
    record(tmp_path / "dc2" / "web-2b", host="web-2", run_id="run-c", rows=30)
    data = read_recording(tmp_path)
    t = data.tables["connects"]
    assert t.num_rows == 60 and data.files_read == 3 * (1 + 8)   # + an empty file per table each
    assert sorted(set(t.column("host").to_pylist())) == ["web-1", "web-2"]
    assert [m["run_id"] for m in data.manifests] == ["run-a", "run-b", "run-c"]


def test_copied_twice_is_read_once(tmp_path):
    record(tmp_path / "a", rows=10)
    shutil.copytree(tmp_path / "a", tmp_path / "backup-of-a")
    data = read_recording(tmp_path)
    assert data.tables["connects"].num_rows == 10
    assert len(data.manifests) == 1
    assert len(data.problems) == 1 and "copied twice" in data.problems[0]


def test_inprogress_and_quarantine_are_ignored(tmp_path):
    (good,) = record(tmp_path, rows=10)
    shutil.copy(good, good.with_name("x.parquet.inprogress"))
    shutil.copy(good, good.with_name("y.arrows.inprogress"))
    q = tmp_path / "quarantine" / PART
    q.mkdir(parents=True)
    shutil.copy(good, q / "z.parquet")
    data = read_recording(tmp_path)
    assert data.tables["connects"].num_rows == 10 and data.problems == []


def test_older_file_without_newer_columns_reads_as_nulls(tmp_path):
    record(tmp_path, rows=10)
    rows = [dict(r, host="h0", run_id="r0") for r in connects(5, start=100)]
    full = pa.Table.from_pylist(rows, schema=schema("connects").remove(
        schema("connects").get_field_index("errno")))
    old = full.drop_columns(["tid"]).replace_schema_metadata(
        {VERSION_KEY: SCHEMA_VERSION, "connscope.table": "connects"})
    pq.write_table(old, tmp_path / PART / "old-1.parquet")
    data = read_recording(tmp_path)
    t = data.tables["connects"]
    assert data.problems == [] and t.num_rows == 15
    assert t.schema.equals(schema("connects"))
    assert t.column("tid").null_count == 5 and t.column("errno").null_count == 15


def test_progress_counts_every_file(tmp_path):
    record(tmp_path, rows=5, files=4)
    (tmp_path / PART / "junk.parquet").write_bytes(b"junk")
    seen = []
    read_recording(tmp_path, progress=lambda done, total: seen.append((done, total)))
    assert seen == [(i, 13) for i in range(1, 14)]     # + an empty file per table


# ---------------------------------------------------------------- bad files

def test_each_bad_file_is_one_problem_and_the_rest_is_read(tmp_path):
    files = record(tmp_path, rows=200, files=2)
    part = tmp_path / PART
    # random bytes named .parquet (a fixed seed: reproducible, and not starting with PAR1)
    (part / "corrupt.parquet").write_bytes(random.Random(1).randbytes(4096))
    # a real file cut in half: the footer is gone
    blob = files[0].read_bytes()
    (part / "truncated.parquet").write_bytes(blob[: len(blob) // 2])
    (part / "empty.parquet").write_bytes(b"")
    # valid Parquet, but not ours
    pq.write_table(pa.table({"x": [1, 2, 3]}), part / "foreign.parquet")
    # ours, from a connscope with schema version 9
    future = pq.read_table(files[1])
    future = future.replace_schema_metadata({**future.schema.metadata, VERSION_KEY.encode(): b"9"})
    pq.write_table(future, part / "future.parquet")

    data = read_recording(tmp_path)
    assert data.tables["connects"].num_rows == 400 and data.files_read == 2 + 8
    assert len(data.problems) == 5
    assert problem_for(data, part / "corrupt.parquet").endswith(
        "not a Parquet file (magic bytes not found)")
    assert "truncated" in problem_for(data, part / "truncated.parquet")
    assert problem_for(data, part / "empty.parquet").endswith("empty file")
    assert problem_for(data, part / "foreign.parquet").endswith(
        "not a connscope file (no connscope.schema_version metadata)")
    assert f"schema version 9 is newer than this connscope ({SCHEMA_VERSION})" in problem_for(
        data, part / "future.parquet")


def test_file_in_the_wrong_table_folder(tmp_path):
    (good,) = record(tmp_path, rows=10)
    wrong = tmp_path / "accepts" / "date=2024-03-01"
    wrong.mkdir(parents=True)
    shutil.copy(good, wrong / "moved.parquet")
    data = read_recording(tmp_path)
    assert "holds connects rows but lies in the accepts folder" in problem_for(
        data, wrong / "moved.parquet")
    assert data.tables["accepts"].num_rows == 0


def test_bad_manifest_is_a_problem_not_a_failure(tmp_path):
    record(tmp_path, rows=10)
    (tmp_path / "runs" / "broken.json").write_text("{not json")
    data = read_recording(tmp_path)
    assert [m["run_id"] for m in data.manifests] == ["r1"]
    assert problem_for(data, tmp_path / "runs" / "broken.json").endswith(
        "not a valid JSON run manifest")


def test_only_a_manifest_is_not_empty(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "r1.json").write_text(json.dumps({"run_id": "r1", "status": "abandoned"}))
    data = read_recording(tmp_path)
    assert data.files_read == 0 and data.manifests[0]["status"] == "abandoned"


# ---------------------------------------------------------------- no recording at all

def _one_line(e) -> str:
    text = str(e.value)
    assert "\n" not in text
    return text


def test_missing_directory(tmp_path):
    with pytest.raises(RecordingNotFound) as e:
        read_recording(tmp_path / "nope")
    assert str(tmp_path / "nope") in _one_line(e) and "does not exist" in _one_line(e)


def test_a_file_is_not_a_recording(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(RecordingNotFound) as e:
        read_recording(f)
    assert "not a directory" in _one_line(e)


def test_empty_directory(tmp_path):
    with pytest.raises(EmptyRecording) as e:
        read_recording(tmp_path)
    assert f"no connscope recording in {tmp_path}" in _one_line(e)


def test_only_unreadable_files(tmp_path):
    part = tmp_path / PART
    part.mkdir(parents=True)
    (part / "a.parquet").write_bytes(b"")
    (part / "b.parquet").write_bytes(b"garbage!")
    with pytest.raises(EmptyRecording) as e:
        read_recording(tmp_path)
    msg = _one_line(e)
    assert str(tmp_path) in msg and "none of its 2 Parquet files could be read" in msg
