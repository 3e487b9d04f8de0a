"""A recording is readable by everyone at every moment (issue 14): while it is
written (small files within seconds, compacted at rotation, file count
bounded), after its recorder is killed (report, replay and `connscope
recover` finalize what it journaled), and when it is quiet (every table has a
file, so the README's own queries run). Real files, real subprocesses, real
DuckDB and pyarrow."""
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from tracer.report.reader import read_recording
from tracer.schema import TABLES
from tracer.sinks.names import covered_by_compaction, is_empty_placeholder
from tracer.sinks.parquet_writer import Recording

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
T0 = 1_709_294_400_000_000      # 2024-03-01T12:00:00Z


class FakeClock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def rows(n, start=0):
    return [dict(ts=T0 + (start + i) * 1000, pid=7, tid=7, comm="curl", family=4,
                 saddr="127.0.0.1", sport=10000 + (start + i) % 50000, daddr="127.0.0.1",
                 dport=8080, latency_us=50.0, outcome="established", syn_retransmits=0)
            for i in range(n)]


def duck(sql):
    con = duckdb.connect()
    con.execute("SET TimeZone='UTC'")
    return con.execute(sql).fetchall()


def count(d, table="connects"):
    return duck(f"select count(*) from read_parquet('{d}/{table}/**/*.parquet', "
                f"hive_partitioning=true)")[0][0]


def data_files(d, table="connects"):
    return sorted(Path(d, table).glob("date=*/*.parquet"))


def run_cli(*args, user=None):
    cmd = [sys.executable, "-m", "tracer", *args]
    if user:
        cmd = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *cmd]
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    return p.returncode, p.stdout, p.stderr


# ---------------------------------------------------------------- live readers

def test_live_rows_are_parquet_within_seconds_and_files_are_compacted(tmp_path):
    """Ten simulated minutes at one write a second: after every step DuckDB on
    DIR sees every row older than publish + flush; at the end the file count is
    one per minute plus the small files of the last minute, and no row is read
    twice or lost."""
    d = tmp_path / "rec"
    clock = FakeClock()
    r = Recording(d, clock=clock, flush_interval_s=2.0, publish_age_s=5.0, rotate_age_s=60.0)
    written, most_files = 0, 0
    history = []     # (time, rows written by then)
    for step in range(600):
        r.write("connects", rows(10, start=written))
        written += 10
        history.append((clock.t, written))
        clock.t += 1.0
        r.tick()
        visible = count(d) if step % 7 == 0 else None
        if visible is not None:
            # every row written 2 s (flush) + 5 s (publish) + 1 s (tick) ago is readable
            due = max([n for t, n in history if t <= clock.t - 8.0], default=0)
            assert due <= visible <= written, (step, due, visible, written)
        most_files = max(most_files, len(data_files(d)))
    r.close()
    assert count(d) == written == 6000
    # compacted at each 60 s rotation: 10 files of a minute each, at most one
    # minute of 5 s files besides (12) while running
    assert len(data_files(d)) <= 11, data_files(d)
    assert most_files <= 10 + 13, most_files
    t = pa.concat_tables([pq.read_table(f) for f in data_files(d)])
    assert sorted(t.column("sport").to_pylist()) == sorted(r["sport"] for r in rows(6000))


def test_background_recorder_publishes_within_ten_seconds(tmp_path):
    """Real clock, the recorder's own defaults (5 s publish, 2 s flush): a row
    written now is in a Parquet file that pyarrow reads well within 10 s."""
    import time

    d = tmp_path / "rec"
    r = Recording(d, background_flush=True)
    try:
        t0 = time.monotonic()
        r.write("connects", rows(3))
        seen_at = None
        while time.monotonic() - t0 < 12:
            try:
                if ds.dataset(str(d / "connects"), format="parquet").count_rows() == 3:
                    seen_at = time.monotonic() - t0
                    break
            except (FileNotFoundError, pa.ArrowInvalid):
                pass
            time.sleep(0.1)
        assert seen_at is not None and seen_at < 10, seen_at
    finally:
        r.close()


def test_compaction_cut_short_is_read_once_and_recovered(tmp_path):
    """A recorder killed between publishing a compacted file and deleting its
    small files: the reader reads each row once, recovery deletes the small files."""
    d = tmp_path / "rec"
    clock = FakeClock()
    r = Recording(d, clock=clock, publish_age_s=5.0, rotate_age_s=60.0)
    smalls = []
    for step in range(30):
        r.write("connects", rows(10, start=step * 10))
        clock.t += 1.0
        r.tick()
        smalls = sorted(set(smalls) | set(data_files(d)))
    copies = {p: p.read_bytes() for p in smalls if not is_empty_placeholder(p.name)}
    clock.t += 60
    r.tick()
    r.close()
    [compacted] = [p for p in data_files(d) if not is_empty_placeholder(p.name)]
    assert re.search(r"-\d{4}-\d{4}\.parquet$", compacted.name)
    # put the small files back, as a kill between the rename and the unlinks leaves them
    for p, data in copies.items():
        if not p.exists():
            p.write_bytes(data)
    assert len(data_files(d)) > 2
    assert covered_by_compaction([p.name for p in data_files(d)])
    assert read_recording(d).tables["connects"].num_rows == 300
    from tracer.sinks.parquet_writer import recover

    lines = recover(d)
    assert any("its rows are in the compacted file" in line for line in lines), lines
    assert [p for p in data_files(d) if not is_empty_placeholder(p.name)] == [compacted]
    assert count(d) == 300


# ---------------------------------------------------------------- after kill -9

KILLED_CHILD = """
import os, signal, sys
sys.path.insert(0, {repo!r})
from tests.unit.test_recording_readable import rows
from tracer.sinks.parquet_writer import Recording
r = Recording(sys.argv[1], flush_interval_s=0.05, publish_age_s=3600, rotate_age_s=3600)
for k in range(20):
    r.write("connects", rows(50, start=50 * k))
    r.flush()                      # journaled and fsynced: recovery must find all of it
print(50 * 20, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def killed_recording(d, before: int = 0) -> int:
    p = subprocess.run([sys.executable, "-c", KILLED_CHILD.format(repo=str(REPO)), str(d)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == -signal.SIGKILL, p.stderr
    assert list(Path(d).rglob("*.arrows.inprogress")), "the journal is what the test is about"
    assert count(d) == before    # the journal's rows are not in any Parquet file yet
    return int(p.stdout.split()[0])


def test_report_finalizes_a_dead_recorder(tmp_path):
    d = tmp_path / "rec"
    journaled = killed_recording(d)
    code, out, err = run_cli("report", str(d))
    assert code == 0, err
    assert "recovered connects/date=2024-03-01/" in err and f"{journaled} rows" in err, err
    assert "no rows recorded" not in out
    assert count(d) == journaled
    assert not list(d.rglob("*.inprogress"))
    # every table exists now: queries on the quiet ones return nothing, not an error
    for table in TABLES:
        assert data_files(d, table), table


def test_replay_load_finalizes_a_dead_recorder(tmp_path):
    from tracer.replay import load

    d = tmp_path / "rec"
    journaled = killed_recording(d)
    timeline = load(d)
    assert any("recovered connects/" in p for p in timeline.problems), timeline.problems
    assert count(d) == journaled


def test_recover_command_says_what_it_recovered(tmp_path):
    d = tmp_path / "rec"
    journaled = killed_recording(d)
    code, out, err = run_cli("recover", str(d))
    assert code == 0, err
    assert f"{journaled} rows recovered" in out, out
    assert "marked run" in out and "as crashed" in out, out
    assert count(d) == journaled
    assert sum(pq.read_table(f).num_rows for f in data_files(d)) == journaled
    code, out, err = run_cli("recover", str(d))
    assert code == 0 and "nothing to recover" in out, (out, err)


def test_recover_refuses_a_live_recording_and_readers_leave_it_alone(tmp_path):
    d = tmp_path / "rec"
    with Recording(d, publish_age_s=3600) as r:
        r.write("connects", rows(5))
        r.flush()
        code, out, err = run_cli("recover", str(d))
        assert code == 1 and err.startswith("Error: ") and "being recorded" in err, err
        assert len(err.strip().splitlines()) == 1
        data = read_recording(d, finalize=True)
        assert data.recovery == [] and data.unfinished == 1
        assert list(d.rglob("*.arrows.inprogress"))     # the live journal untouched


def test_recover_missing_directory_is_one_error_line(tmp_path):
    code, out, err = run_cli("recover", str(tmp_path / "nope"))
    assert code == 1 and err.strip().splitlines() == [
        f"Error: {tmp_path / 'nope'} does not exist; pass the directory given to "
        f"'connscope record --out'"]


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")


@pytest.fixture
def shared_tmp():
    """A directory other users can reach (pytest's own is 0700 under root's)."""
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="connscope-test-", dir="/tmp"))
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@needs_root
def test_report_as_another_user_reads_what_it_can_and_says_recovery_needs_the_owner(shared_tmp):
    """A root recording, killed, made readable to others (the admin shares it):
    a non-root report reads the finalized files, says in one line that the
    rest needs the owner, and changes nothing."""
    d = shared_tmp / "rec"
    with Recording(d, publish_age_s=3600) as r:
        r.write("connects", rows(7))
    journaled = killed_recording(d, before=7)
    subprocess.run(["chmod", "-R", "o+rX", str(d)], check=True)
    before = sorted(str(p) for p in d.rglob("*"))
    code, out, err = run_cli("report", str(d), user=65534)
    assert code == 0, err
    lines = [line for line in err.splitlines() if "recover" in line]
    assert len(lines) == 1 and "needs the owner" in lines[0], err
    assert f"sudo connscope recover {d}" in lines[0]
    assert "Traceback" not in err
    assert sorted(str(p) for p in d.rglob("*")) == before      # nothing finalized or made
    code, out, err = run_cli("recover", str(d))                 # the owner can
    assert code == 0 and count(d) == 7 + journaled, (out, err)


@needs_root
def test_report_as_another_user_on_an_unreadable_recording_is_one_error_line(shared_tmp):
    d = shared_tmp / "rec"
    killed_recording(d)
    code, out, err = run_cli("report", str(d), user=65534)
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("Error: ") and "Permission denied" in err, err


@needs_root
def test_root_does_not_recover_in_a_directory_another_user_owns(shared_tmp):
    tmp_path = shared_tmp
    """The trap: journals in a directory nobody owns, next to a link to a
    victim file. Root's report reads nothing through it, finalizes nothing there,
    and says why in one line."""
    base = tmp_path / "nobody"
    base.mkdir()
    shutil.chown(base, 65534, 65534)
    d = base / "rec"
    killed_recording(tmp_path / "made")
    shutil.move(tmp_path / "made", d)
    subprocess.run(["chown", "-R", "65534:65534", str(d)], check=True)
    victim = tmp_path / "victim"
    victim.write_text("keep")
    part = next(d.glob("connects/date=*"))
    subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                    "ln", "-s", str(victim), str(part / "h-20240301T120000Z-0009.parquet.inprogress")],
                   check=True)
    before = sorted(str(p) for p in d.rglob("*"))
    code, out, err = run_cli("report", str(d))
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "not finalized" in line]
    assert len(lines) == 1 and "owned by uid 65534" in lines[0], err
    assert sorted(str(p) for p in d.rglob("*")) == before
    assert victim.read_text() == "keep"


# ---------------------------------------------------------------- quiet recordings

def readme_queries() -> list[str]:
    """The SQL of the README's Recordings section, as a user would paste it."""
    text = README.read_text()
    section = text[text.index("## Recordings"):]
    sql = section[section.index("```sql") + len("```sql"):]
    sql = sql[: sql.index("```")]
    queries = [q.strip() for q in sql.split(";") if "read_parquet" in q]
    assert len(queries) >= 3, queries
    return queries


@pytest.mark.parametrize("how", ["quiet", "nothing at all", "killed"])
def test_readme_queries_run_on_every_finished_recording(tmp_path, how):
    d = tmp_path / "rec"
    if how == "quiet":
        with Recording(d) as r:         # connects only: no drops, no accepts
            r.write("connects", rows(20))
    elif how == "nothing at all":
        Recording(d).close()
    else:
        killed_recording(d)
        run_cli("recover", str(d))
    for table in TABLES:
        assert data_files(d, table), f"{how}: no file for {table}"
        assert ds.dataset(str(d / table), format="parquet").count_rows() >= 0
    for q in readme_queries():
        result = duck(q.replace("DIR", str(d)))     # raises "No files found" if a table is missing
        assert isinstance(result, list)
    assert count(d) == {"quiet": 20, "nothing at all": 0, "killed": 1000}[how]
