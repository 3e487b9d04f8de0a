"""`connscope report` as a user runs it (a subprocess), on a synthetic fleet
recording written by the real writer; and the same recording cross-checked
with duckdb, which computes the numbers independently of our Arrow code."""

import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from tests.report.synthetic import INCIDENT, T0, write_incident
from tracer.report.reader import read_recording
from tracer.report.summary import summarize
from tracer.schema import TABLES
from tracer.sinks.parquet_writer import Recording

ROOT = Path(__file__).resolve().parents[2]


def run(*args, timeout=120):
    p = subprocess.run([sys.executable, "-m", "tracer", *args], capture_output=True, text=True,
                       timeout=timeout, cwd=ROOT, stdin=subprocess.DEVNULL)
    return p.returncode, p.stdout, p.stderr


def assert_one_line_error(code, err, fragment):
    assert code == 1, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and len(err.strip().splitlines()) == 1, err
    assert fragment in errors[0], err


@pytest.fixture(scope="module")
def incident(tmp_path_factory):
    d = tmp_path_factory.mktemp("incident")
    write_incident(d)
    return d


def test_report_names_every_planted_problem(incident):
    code, out, err = run("report", str(incident))
    assert code == 0, err
    assert err == ""
    first = out.split("WHAT TO LOOK AT FIRST")[1].split("RECORDING")[0]
    lines = [line for line in first.splitlines() if line.strip()]
    assert "37 events LOST" in lines[0]                 # loud, and first
    assert "!!! 37 EVENTS LOST" in out.split("WHAT TO LOOK AT FIRST")[0]
    assert "0.0.0.0:80 (nginx) on web-1 dropped 4,050 connections" in lines[1]
    assert "worst minute 03:04Z with 2,655" in lines[1]
    assert "10.0.0.9:6379: 300 refused of 300" in first
    assert "10.0.2.7:443 are slow" in first
    assert "10.0.3.3:9200: 20 timed out" in first
    assert "java (4000) on web-2 used 3950 of 4096 file descriptors" in first
    assert "CLOSE_WAIT" in first
    assert "run run-web-2 on web-2 crashed" in first
    assert ("gunicorn (2001) on web-1 opens new connections to 10.0.0.5:5432 at 50/s (over the "
            "30.0s to 03:10:00Z), each held 200ms on average: a pool of 13 would do") in first
    # drops per minute, hand-computed in tests/report/synthetic.py
    assert "03:04Z    2,360 +    295 SYNs" in out
    assert "03:05Z    1,240 +    155 SYNs" in out
    assert "[2001:db8::10]:443" in out


def test_report_writes_html(incident, tmp_path):
    page = tmp_path / "incident.html"
    code, out, err = run("report", str(incident), "--html", str(page))
    assert code == 0, err
    assert err.strip() == f"wrote {page}"
    html = page.read_text()
    assert html.startswith("<!DOCTYPE html>") and "0.0.0.0:80" in html
    assert "WHAT TO LOOK AT FIRST" in out


def test_help_has_examples():
    code, out, _ = run("report", "-h")
    assert code == 0 and "Examples:" in out and "--html" in out


def test_missing_directory(tmp_path):
    code, _, err = run("report", str(tmp_path / "nope"))
    assert_one_line_error(code, err, f"{tmp_path / 'nope'} does not exist")


def test_empty_directory(tmp_path):
    code, _, err = run("report", str(tmp_path))
    assert_one_line_error(code, err, f"no connscope recording in {tmp_path}")


def test_only_garbage(tmp_path):
    part = tmp_path / "connects" / "date=2024-03-01"
    part.mkdir(parents=True)
    (part / "x.parquet").write_bytes(b"not parquet")
    code, _, err = run("report", str(tmp_path))
    assert_one_line_error(code, err, "none of its 1 Parquet files could be read")


def test_html_cannot_be_written(incident, tmp_path):
    target = tmp_path / "no" / "such" / "dir" / "r.html"
    code, out, err = run("report", str(incident), "--html", str(target))
    assert_one_line_error(code, err, f"cannot write {target}")
    assert out == ""


def test_bad_files_are_listed_but_do_not_fail(incident, tmp_path):
    import shutil

    d = tmp_path / "copy"
    shutil.copytree(incident, d)
    bad = d / "connects" / "date=2024-03-01" / "bad.parquet"
    bad.write_bytes(b"\0" * 100)
    code, out, err = run("report", str(d))
    assert code == 0, err
    assert "DATA PROBLEMS (1 files skipped)" in out
    assert f"{bad}: not a Parquet file (magic bytes not found)" in out


def test_progress_bar_only_for_many_files(tmp_path):
    few, many = tmp_path / "few", tmp_path / "many"
    for d, files in ((few, 3), (many, 25)):
        with Recording(d, host="h", run_id="r", rotate_rows=2) as r:
            for i in range(files):
                r.write("connects", [dict(ts=T0 + i, pid=1, tid=1, comm="c", family=4,
                                          saddr="10.0.0.1", sport=1, daddr="10.0.0.2",
                                          dport=2, latency_us=1.0, outcome="established",
                                          syn_retransmits=0)] * 2)
                r.flush()
    code, _, err = run("report", str(few))
    assert code == 0 and "reading" not in err
    code, out, err = run("report", str(many))
    assert code == 0 and "reading" in err and "files     33 read" in out   # + an empty file per table


# ---------------------------------------------------------------- duckdb as a second opinion

def _duck():
    con = duckdb.connect()
    con.execute("SET TimeZone='UTC'")
    return con


def test_duckdb_reads_the_same_recording(incident):
    data = read_recording(incident)
    con = _duck()
    for table in TABLES:
        if not (incident / table).exists():   # a table the synthetic incident has no rows for
            assert data.tables[table].num_rows == 0, table
            continue
        n = con.execute(f"select count(*) from read_parquet('{incident}/{table}/**/*.parquet', "
                        f"hive_partitioning=true)").fetchone()[0]
        assert n == data.tables[table].num_rows, table


def test_duckdb_agrees_on_percentiles_failures_and_drops(incident):
    s = summarize(read_recording(incident))
    con = _duck()
    src = f"read_parquet('{incident}/connects/**/*.parquet', hive_partitioning=true)"
    # quantile_disc is nearest-rank, as ours (checked for n = 1..300 while writing this)
    expected = {f"{a}:{p}": (q50, q99, n) for a, p, q50, q99, n in con.execute(
        f"select daddr, dport, quantile_disc(latency_us, 0.5), quantile_disc(latency_us, 0.99), "
        f"count(*) from {src} where outcome = 'established' group by 1, 2").fetchall()
        if ":" not in a}
    got = {d.label: (d.p50_us, d.p99_us, d.samples) for d in s.slowest if ":" not in d.daddr}
    assert got == expected
    refused = con.execute(f"select count(*) from {src} where daddr = '10.0.0.9' "
                          f"and outcome = 'refused'").fetchone()[0]
    (failing,) = [d for d in s.failing if d.label == INCIDENT["refusing"]]
    assert failing.refused == refused == INCIDENT["refused"]
    drops = con.execute(
        f"select epoch_us(date_trunc('minute', ts)), sum(drops), sum(syn_drops) from "
        f"read_parquet('{incident}/overflows/**/*.parquet', hive_partitioning=true) "
        f"group by 1 order by 1").fetchall()
    (listener,) = s.listeners
    assert [tuple(r) for r in drops] == [tuple(m) for m in listener.drop_minutes]
    assert {m: v for m, *v in listener.drop_minutes} == {
        m: list(v) for m, v in INCIDENT["drops_per_minute"].items()}
