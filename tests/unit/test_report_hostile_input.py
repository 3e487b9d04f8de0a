"""`connscope report` on the hostile and foreign files of issue 13, one case
each: the file is skipped and named with its reason, the rest of the
recording is reported, exit 0 (or exit 1 with one `Error:` line when nothing
at all is readable); never exit 2 ("internal error") or a traceback.

The traps a local user can set in a directory they own (a FIFO, links to
/dev/zero and /etc/shadow, a name with terminal escapes) are planted by
`nobody` and read by root, as on a shared host."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.report.hostile import RUN_ID, data_files, manifest_file, run_cli, write_base
from tracer.report.data_file import MAX_FILE_ROWS
from tracer.report.reader import read_recording
from tracer.schema import schema

ROOT = Path(__file__).resolve().parents[2]
NOBODY = 65534


def report(directory, *extra) -> tuple[int, str, str]:
    """`connscope report` in this process, through the console script's main()."""
    return run_cli("report", str(directory), *extra)


def report_script(directory, *extra, timeout=60) -> tuple[int, str, str]:
    """The real console script in a subprocess; a hang fails the test."""
    p = subprocess.run([sys.executable, "-m", "tracer", "report", str(directory), *extra],
                       capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                       stdin=subprocess.DEVNULL)
    return p.returncode, p.stdout, p.stderr


def assert_reported_with(code, out, err, path, reason):
    assert code == 0, err
    assert "Traceback" not in out + err and "internal error" not in err
    lines = [line for line in out.splitlines() if str(path) in line]
    assert lines, out
    assert reason in lines[0], lines[0]
    assert "CONNECTS:" in out      # the rest is still reported


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    d = tmp_path_factory.mktemp("base") / "rec"
    write_base(d)
    return d


@pytest.fixture
def rec(base, tmp_path):
    d = tmp_path / "rec"
    shutil.copytree(base, d, symlinks=True)
    return d


def connects_file(rec) -> Path:
    return next(p for p in data_files(rec) if p.parts[-3] == "connects")


def rewrite(path: Path, change) -> None:
    t = pq.read_table(path)
    meta = t.schema.metadata
    pq.write_table(change(t).replace_schema_metadata(meta), path)


def set_column(name, values, type_=None):
    def change(t):
        col = pa.array(values(t.num_rows), type_) if type_ else pa.array(values(t.num_rows))
        return t.set_column(t.schema.get_field_index(name), pa.field(name, col.type), col)
    return change


# ---------------------------------------------------------------- manifests

@pytest.mark.parametrize("run_id,why", [(["a", "b"], "run_id is a list, not text"),
                                        ({"x": 1}, "run_id is a dict, not text"),
                                        ("../../etc/x", "slash"), ("", "characters"),
                                        (7, "run_id is a int")])
def test_manifest_run_id_not_a_name(rec, run_id, why):
    m = json.loads(manifest_file(rec).read_text())
    m["run_id"] = run_id
    manifest_file(rec).write_text(json.dumps(m))
    code, out, err = report(rec)
    assert_reported_with(code, out, err, manifest_file(rec), why)
    assert "NO MANIFEST" in out         # its rows are still reported, as a run without one


@pytest.mark.parametrize("raw", ["1e309", "-1e309", "NaN", "Infinity", "0", "\"1\"", "[1]"])
def test_manifest_interval_not_a_number_of_seconds(rec, raw):
    m = json.loads(manifest_file(rec).read_text())
    m["options"] = {"interval": "@@"}
    manifest_file(rec).write_text(json.dumps(m).replace('"@@"', raw))
    code, out, err = report(rec)
    assert_reported_with(code, out, err, manifest_file(rec), "options.interval is not a number")


@pytest.mark.parametrize("field,value,why", [
    ("start", 12, "start is not an ISO 8601 time"),
    ("start", "9999-12-31T23:59:59-23:59", "start is not an ISO 8601 time"),
    ("end", "3000-01-01T00:00:00Z", "end is outside 1970..2199"),
    ("lost_events", {"connects": -1}, "lost_events is not a map"),
    ("rows", [1, 2], "rows is not a map"),
    ("host", ["h"], "host is not a line of text"),
    ("blind_spots", "x", "blind_spots is not a list")])
def test_manifest_fields_of_the_wrong_shape(rec, field, value, why):
    m = json.loads(manifest_file(rec).read_text())
    m[field] = value
    manifest_file(rec).write_text(json.dumps(m))
    code, out, err = report(rec)
    assert_reported_with(code, out, err, manifest_file(rec), why)


@pytest.mark.parametrize("sentence,shown", [
    ("BTF tracepoints (tp_btf: fields read by plain loads at BTF offsets)", "BTF"),
    ("raw tracepoints: BTF tracepoints failed to load (EINVAL)", "raw"),
    ("classic tracepoints: no kernel BTF, so fields come from the trace records", "classic"),
    ("\x1b]0;pwned\x07 tracepoints", None), ("BTFx tracepoints", None), (["BTF"], None),
    ("B" * 100_000, None)])
def test_manifest_tracepoint_hooks_only_ever_show_one_of_three_words(rec, sentence, shown):
    """The runs table says which kind of tracepoint hook a run had (the
    manifest's tracepoint_hooks, first word); anything else in that field
    shows nothing, in the text and the HTML report."""
    m = json.loads(manifest_file(rec).read_text())
    m["tracepoint_hooks"] = sentence
    manifest_file(rec).write_text(json.dumps(m))
    code, out, err = report(rec)
    assert code == 0, err
    [line] = [ln for ln in out.splitlines() if ln.lstrip().startswith(RUN_ID)]
    html = Path(rec).parent / "report.html"
    code, _, err = report(rec, "--html", str(html))
    assert code == 0, err
    page = html.read_text()
    if shown is None:
        assert " hooks)" not in line and "pwned" not in out and " hooks)" not in page
    else:
        assert f"({shown} hooks)" in line and f"({shown} hooks)" in page


def test_manifest_nested_too_deep(rec):
    manifest_file(rec).write_text('{"run_id": ' + "[" * 200_000 + "]" * 200_000 + "}")
    code, out, err = report(rec)
    assert_reported_with(code, out, err, manifest_file(rec), "not a valid JSON run manifest")


# ---------------------------------------------------------------- data files

@pytest.mark.parametrize("column", ["host", "run_id", "ts", "daddr"])
def test_file_without_a_key_column(rec, column):
    path = connects_file(rec)
    rewrite(path, lambda t: t.drop_columns([column]))
    code, out, err = report(rec)
    assert_reported_with(code, out, err, path, f"no {column} column")


@pytest.mark.parametrize("ts", [1 << 62, -(1 << 62), (1 << 63) - 1, -(1 << 63), -1,
                                253_402_300_800_000_000])
def test_times_no_datetime_can_hold(rec, ts):
    path = connects_file(rec)
    rewrite(path, set_column("ts", lambda n: pa.array([ts] * n, pa.int64()).cast(
        pa.timestamp("us", tz="UTC"))))
    code, out, err = report(rec)
    assert_reported_with(code, out, err, path, "column ts holds a time outside 1970..2199")


@pytest.mark.parametrize("value,why", [(float("inf"), "nan or infinity"),
                                       (float("nan"), "nan or infinity"),
                                       (-1.0, "holds -1.0"), (1e300, "holds 1e+300")])
def test_latency_not_a_duration(rec, value, why):
    path = connects_file(rec)
    rewrite(path, set_column("latency_us", lambda n: [value] * n, pa.float64()))
    code, out, err = report(rec)
    assert_reported_with(code, out, err, path, f"column latency_us holds {why.removeprefix('holds ')}")


@pytest.mark.parametrize("column,values,why", [
    ("dport", lambda n: ["http"] * n, "column dport is string, cannot be read as int32"),
    ("pid", lambda n: [1 << 40] * n, "column pid is int64, cannot be read as int32"),
    ("comm", lambda n: [[1]] * n, "column comm is list<"),
    ("comm", lambda n: [b"\xff\xfe"] * n, "column comm is binary"),
    ("host", lambda n: [None] * n, "column host has empty (null) values"),
    ("comm", lambda n: ["x" * 5000] * n, "column comm holds a value of 5,000 characters"),
    ("syn_retransmits", lambda n: [-3] * n, "column syn_retransmits holds -3")])
def test_columns_of_the_wrong_type_or_range(rec, column, values, why):
    path = connects_file(rec)
    rewrite(path, set_column(column, values, pa.string() if column == "host" else None))
    code, out, err = report(rec)
    assert_reported_with(code, out, err, path, why)


def test_file_claiming_more_rows_than_connscope_writes(rec):
    """A tiny file that expands to more rows than a connscope file ever holds is
    refused from its footer, before anything is decompressed."""
    path = connects_file(rec).with_name("bomb.parquet")
    t = pq.read_table(connects_file(rec))
    one = t.slice(0, 1)
    with pq.ParquetWriter(path, t.schema, compression="zstd") as w:
        w.write_table(pa.concat_tables([one] * 1000).combine_chunks(), row_group_size=1000)
        big = pa.Table.from_arrays([pa.repeat(one.column(i)[0], MAX_FILE_ROWS)
                                    .cast(one.schema.field(i).type)
                                    for i in range(one.num_columns)], schema=one.schema)
        w.write_table(big)
    assert path.stat().st_size < 2_000_000
    code, out, err = report(rec)
    assert_reported_with(code, out, err, path, f"holds {MAX_FILE_ROWS + 1000:,} rows, more than")


@pytest.mark.parametrize("size,footer,why", [
    (3 << 30, 100, "bytes, more than the 1,073,741,824 allowed"),
    (64 << 20, 60 << 20, "a Parquet footer of 62,914,560 bytes, more than")])
def test_files_too_big_to_be_ours(rec, size, footer, why):
    """Sparse files: nothing is written, and nothing of that size may be read."""
    path = connects_file(rec).with_name("huge.parquet")
    with open(path, "wb") as f:
        f.write(b"PAR1")
        f.truncate(size)
        f.seek(size - 8)
        f.write(footer.to_bytes(4, "little") + b"PAR1")
    code, out, err = report(rec)
    assert_reported_with(code, out, err, path, why)


def test_row_budget_names_the_files_it_leaves_out(rec):
    code, out, err = report(rec, "--max-rows", "30")
    assert code == 0, err
    skipped = [line for line in out.splitlines() if "--max-rows" in line]
    assert skipped and all(".parquet" in line for line in skipped)
    data = read_recording(rec, max_rows=30)
    assert sum(t.num_rows for t in data.tables.values()) <= 30
    assert len(data.problems) == len(skipped) > 0


def test_row_budget_spends_itself_on_events_last(rec):
    """Past --max-rows, event rows (connects, accepts) are left out before any
    per-interval table (listeners, overflows, sockets, pools): those are small
    and hold the incident; alphabetical order would read accepts and connects
    first and starve them. The smallest budget that reads every per-interval
    row must leave connects rows out."""
    full = read_recording(rec)
    interval = {t: n.num_rows for t, n in full.tables.items()
                if t not in ("connects", "accepts") and n.num_rows}
    assert interval, "the fixture has per-interval rows"

    def complete(budget):
        data = read_recording(rec, max_rows=budget)
        return {t: data.tables[t].num_rows for t in interval} == interval, data

    lo, hi = 0, 10_000_000
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if complete(mid)[0] else (mid + 1, hi)
    _, data = complete(lo)
    assert data.tables["connects"].num_rows < full.tables["connects"].num_rows
    assert any("connects" in p and "--max-rows" in p for p in data.problems)


def test_distinct_destinations_count_against_the_budget(rec):
    """1,000 rows to 1,000 destinations cost the summary what ~9,000 ordinary
    rows do: over a 5,000-row budget; the same rows to one destination are read."""
    path = connects_file(rec).with_name("many.parquet")
    t = pq.read_table(connects_file(rec))
    rows = pa.concat_tables([t] * (1000 // t.num_rows + 1)).slice(0, 1000)
    spread = rows.set_column(rows.schema.get_field_index("dport"), "dport",
                             pa.array(range(1, 1001), pa.int32()))
    pq.write_table(spread.replace_schema_metadata(t.schema.metadata), path)
    code, out, err = report(rec, "--max-rows", "5000")
    assert_reported_with(code, out, err, path, "1,000 distinct destinations, listeners or "
                                               "processes (each counts as 8 rows)")
    pq.write_table(rows.replace_schema_metadata(t.schema.metadata), path)
    code, out, err = report(rec, "--max-rows", "5000")
    assert code == 0 and str(path) not in out, out


@pytest.mark.parametrize("kind,why", [
    ("empty", "empty file"), ("bytes", "not a Parquet file (magic bytes not found)"),
    ("par1", "truncated or corrupt"), ("dir", "a directory, not a file"), ("dirlink", "a symbolic link; not followed"),
    ("foreign", "not a connscope file"), ("loop", "a symbolic link; not followed"),
    ("link", "a symbolic link; not followed")])
def test_foreign_things_named_like_data_files(rec, kind, why):
    path = connects_file(rec).with_name(f"planted-{kind}.parquet")
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "bytes":
        path.write_bytes(b"hello" * 100)
    elif kind == "par1":
        path.write_bytes(b"PAR1" + b"\0" * 100 + b"PAR1")
    elif kind == "dir":
        path.mkdir()
    elif kind == "dirlink":
        path.symlink_to("/")
    elif kind == "foreign":
        pq.write_table(pa.table({"x": [1, 2]}), path)
    elif kind == "loop":
        path.symlink_to(path)
    else:
        path.symlink_to(connects_file(rec))
    code, out, err = report(rec)
    assert_reported_with(code, out, err, path, why)


def test_tree_too_deep_to_search(rec):
    """3,000 nested directories: os.walk would recurse past Python's limit."""
    here = rec / "deep"
    here.mkdir()
    fd = os.open(here, os.O_RDONLY)
    try:
        for _ in range(3_000):      # relative to a descriptor: paths this long exceed PATH_MAX
            os.mkdir("d", dir_fd=fd)
            fd, old = os.open("d", os.O_RDONLY, dir_fd=fd), fd
            os.close(old)
    finally:
        os.close(fd)
    try:
        code, out, err = report(rec)
    finally:    # rm copes with the depth; shutil.rmtree (and pytest's clean-up) would recurse
        subprocess.run(["rm", "-rf", str(here)], check=True, timeout=60)
    assert_reported_with(code, out, err, rec / "deep", "directories deep; not searched")


def test_nothing_readable_is_one_error_line(tmp_path):
    part = tmp_path / "connects" / "date=2024-03-01"
    part.mkdir(parents=True)
    (part / "a.parquet").write_bytes(b"junk")
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "x.json").write_text('{"run_id": ["x"]}')
    code, out, err = report(tmp_path)
    assert code == 1 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("Error: ")


# ---------------------------------------------------------------- traps set by another user

@pytest.fixture
def trap_dir():
    """A directory nobody can reach (pytest's own tmp is root's, mode 0700)."""
    d = Path(tempfile.mkdtemp(prefix="connscope-trap-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d)


def as_nobody(*argv: str) -> None:
    subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                    *argv], check=True, timeout=30)


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root (to read as root what nobody planted) and setpriv")
def test_traps_planted_by_another_user(base, trap_dir):
    """nobody owns the directory and plants a FIFO, a link to /dev/zero, a link
    to /etc/shadow as a manifest and a file name holding terminal escapes;
    root's report neither hangs, nor reads them, nor prints an ESC."""
    rec = trap_dir / "rec"
    shutil.copytree(base, rec, symlinks=True)
    for dirpath, dirs, files in os.walk(rec):
        for name in [dirpath, *(os.path.join(dirpath, n) for n in dirs + files)]:
            os.chown(name, NOBODY, NOBODY)
    good = connects_file(rec)
    part = good.parent
    evil = "\x1b]0;pwned\x07\x1b[2J.parquet"
    as_nobody("mkfifo", str(part / "fifo.parquet"))
    as_nobody("ln", "-s", "/dev/zero", str(part / "zero.parquet"))
    as_nobody("ln", "-s", "/etc/shadow", str(rec / "runs" / "shadow.json"))
    as_nobody("mkfifo", str(rec / "runs" / "fifo.json"))
    as_nobody("cp", str(good), str(part / evil))
    shadow = Path("/etc/shadow").read_bytes()

    code, out, err = report_script(rec, timeout=60)
    assert code == 0, err
    assert "\x1b" not in out + err and "\x07" not in out + err
    assert "\\e]0;pwned\\x07\\e[2J.parquet" in out or "pwned" not in out
    for name, why in [("fifo.parquet", "not a regular file"),
                      ("zero.parquet", "a symbolic link; not followed"),
                      ("shadow.json", "a symbolic link; not followed"),
                      ("fifo.json", "not a regular file")]:
        lines = [line for line in out.splitlines() if name in line]
        assert lines and why in lines[0], (name, out)
    assert not any(line and line in out for line in shadow.decode(errors="replace")
                   .splitlines() if ":" in line and len(line) > 20)
    assert RUN_ID in out


def test_schema_of_the_base_is_current(base):
    """The fixture's files are the writer's, with the current schema."""
    t = pq.read_table(connects_file(base), partitioning=None)   # the file, not its date= folder
    assert t.schema.remove_metadata().equals(schema("connects").remove_metadata())
