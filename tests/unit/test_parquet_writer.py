"""The Parquet sink against real files: pyarrow and duckdb read what it writes,
a SIGKILLed writer is recovered, and real full or read-only file systems pause it.

Tests that mount a tmpfs need root and are marked `kernel`.
"""

import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tracer.schema import UnknownTable, schema
from tracer.sinks import parquet_writer as pw
from tracer.sinks.parquet_writer import Recording, RecordingBusy, RecordingError, recover

REPO = Path(__file__).resolve().parents[2]
# 2024-03-01T12:00:00Z in microseconds
T0 = 1_709_294_400_000_000
IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="mounting a tmpfs needs root")


def connect_rows(n, start=0, ts0=T0, step_us=1000):
    return [dict(ts=ts0 + (start + i) * step_us, pid=100 + i % 7, tid=100 + i % 7,
                 comm="curl", family=4, saddr="127.0.0.1", sport=40000 + (start + i) % 20000,
                 daddr="127.0.0.1", dport=8080, latency_us=50.0 + i,
                 outcome="established", syn_retransmits=0)
            for i in range(n)]


def parquet_files(d, table="connects"):
    """The files with rows: not the empty file (`-0000.parquet`) each table gets
    at the start of a recording so that queries always find one."""
    return sorted(p for p in Path(d, table).glob("date=*/*.parquet")
                  if not p.name.endswith("-0000.parquet"))


def leftovers(d):
    return sorted(p for p in Path(d).rglob("*") if p.name.endswith(".inprogress"))


def duck_count(d, table="connects", where=""):
    con = duckdb.connect()
    con.execute("SET TimeZone='UTC'")
    q = (f"select count(*) from read_parquet('{d}/{table}/**/*.parquet', "
         f"hive_partitioning=true) {where}")
    return con.execute(q).fetchone()[0]


def sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class FakeClock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


# ---------------------------------------------------------------- files and readers

def test_written_files_are_readable_by_pyarrow_and_duckdb(tmp_path):
    d = tmp_path / "rec"
    rows = connect_rows(500)
    with Recording(d, host="box1", run_id="run1", backend="tracepoint") as r:
        assert r.write("connects", rows[:250]) == 250
        r.flush()
        r.write("connects", rows[250:])
    files = parquet_files(d)
    assert len(files) == 1
    assert files[0].parent.name == "date=2024-03-01"
    assert files[0].name == f"box1-{r.start:%Y%m%dT%H%M%SZ}-{r.run_token}-0001.parquet"
    assert leftovers(d) == []

    t = pq.read_table(files[0], partitioning=None)   # the file alone, not its date= folder
    assert t.num_rows == 500
    assert t.schema.remove_metadata().equals(schema("connects").remove_metadata())
    assert t.column("ts").cast(pa.int64()).to_pylist() == [row["ts"] for row in rows]
    assert set(t.column("host").to_pylist()) == {"box1"}
    assert set(t.column("run_id").to_pylist()) == {"run1"}
    assert t.schema.field("latency_us").metadata[b"description"]

    meta = pq.read_metadata(files[0]).metadata
    assert meta[b"connscope.schema_version"] == b"1"
    assert meta[b"connscope.table"] == b"connects"
    assert meta[b"connscope.run_id"] == b"run1"

    assert duck_count(d) == 500
    con = duckdb.connect()
    con.execute("SET TimeZone='UTC'")
    date, ts_type = con.execute(
        f"select distinct date, typeof(ts) from read_parquet('{d}/connects/**/*.parquet', "
        "hive_partitioning=true)").fetchall()[0]
    assert str(date) == "2024-03-01"
    assert ts_type == "TIMESTAMP WITH TIME ZONE"


def test_pandas_reads_the_recording(tmp_path):
    pd = pytest.importorskip("pandas", reason="pandas is not installed in this venv")
    d = tmp_path / "rec"
    with Recording(d) as r:
        r.write("connects", connect_rows(10))
    df = pd.read_parquet(d / "connects")
    assert len(df) == 10


def test_readers_never_see_the_file_being_written(tmp_path):
    d = tmp_path / "rec"
    r = Recording(d, rotate_rows=100)
    r.write("connects", connect_rows(100))
    r.flush()                                       # reaches rotate_rows: finalized
    r.write("connects", connect_rows(30, start=100))
    r.flush()                                       # journaled, still open
    assert len(parquet_files(d)) == 1
    assert len(leftovers(d)) == 1
    assert duck_count(d) == 100
    r.close()
    assert duck_count(d) == 130
    assert leftovers(d) == []


def test_close_is_idempotent_and_write_after_close_fails(tmp_path):
    r = Recording(tmp_path / "rec")
    r.write("connects", connect_rows(3))
    r.close()
    r.close()
    with pytest.raises(RuntimeError, match="connects: write after close"):
        r.write("connects", connect_rows(1))
    assert duck_count(tmp_path / "rec") == 3


def test_every_table_round_trips(tmp_path):
    d = tmp_path / "rec"
    ts = datetime(2024, 3, 1, 12, tzinfo=timezone.utc)
    sample = {
        "accepts": dict(ts=ts, pid=1, comm="nginx", family=6, laddr="::1", lport=80,
                        raddr="::1", rport=50000, queue_wait_us=None, backlog_len=3,
                        backlog_max=511),
        "overflows": dict(ts=ts, family=4, laddr="0.0.0.0", lport=80, drops=5, syn_drops=2,
                          backlog_max=8, backlog_peak=9, interval_s=1.0,
                          synack_retransmits=0),
        "listeners": dict(ts=ts, family=4, laddr="0.0.0.0", lport=80, pid=1, comm="nginx",
                          backlog_max=511, queue_len=0, queue_peak=4, overflows_total=0,
                          syn_queue_len=0, drops=0, accepts=10, accept_wait_p99_us=12.0),
        "sockets": dict(ts=ts, pid=1, comm="nginx", established=10, syn_sent=0, listen=1,
                        close_wait=0, other=0, opened=3, closed=2, fds=20, fd_limit=1024,
                        tx_queue_bytes=0, rx_queue_bytes=0),
    }
    with Recording(d) as r:
        for table, row in sample.items():
            r.write(table, [row])
    for table, row in sample.items():
        got = pq.read_table(parquet_files(d, table)[0]).to_pylist()
        assert len(got) == 1
        for k, v in row.items():
            assert got[0][k] == v, (table, k)
        assert duck_count(d, table) == 1


# ---------------------------------------------------------------- input conversion

def test_timestamps_from_ints_and_datetimes():
    want = datetime(2024, 3, 1, 12, 0, 0, 5, tzinfo=timezone.utc)
    us = T0 + 5
    cet = want.astimezone(timezone(timedelta(hours=1)))
    rows = [dict(connect_rows(1)[0], ts=v) for v in (us, want, cet, want.replace(tzinfo=None))]
    b = pw.rows_to_batch("connects", rows, host="h", run_id="r")
    assert b.column("ts").cast(pa.int64()).to_pylist() == [us] * 4


def test_columns_and_record_batches_are_accepted():
    rows = connect_rows(4)
    cols = {k: [row[k] for row in rows] for k in rows[0]}
    a = pw.rows_to_batch("connects", cols, host="h", run_id="r")
    raw = pa.RecordBatch.from_pydict({**cols, "ts": pa.array(cols["ts"], pa.int64()),
                                      "pid": pa.array(cols["pid"], pa.int64())})
    b = pw.rows_to_batch("connects", raw, host="h", run_id="r")
    c = pw.rows_to_batch("connects", rows, host="h", run_id="r")
    assert a.equals(c) and b.equals(c)
    assert c.column("errno").null_count == 4


def test_bad_rows_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="connects has no column latncy_us"):
        pw.rows_to_batch("connects", [dict(connect_rows(1)[0], latncy_us=1.0)],
                         host="h", run_id="r")
    row = connect_rows(1)[0]
    del row["dport"]
    with pytest.raises(ValueError, match=r"connects.dport is required but 1 of 1 rows"):
        pw.rows_to_batch("connects", [row], host="h", run_id="r")
    with pytest.raises(UnknownTable):
        pw.rows_to_batch("connect", [], host="h", run_id="r")


def test_host_and_run_id_given_in_rows_are_kept(tmp_path):
    rows = [dict(r, host="other") for r in connect_rows(2)]
    b = pw.rows_to_batch("connects", rows + connect_rows(1), host="h", run_id="r")
    assert b.column("host").to_pylist() == ["other", "other", "h"]


# ---------------------------------------------------------------- rotation

def test_rotation_by_rows(tmp_path):
    d = tmp_path / "rec"
    with Recording(d, rotate_rows=100) as r:
        for k in range(5):
            r.write("connects", connect_rows(50, start=50 * k))
            r.flush()
    counts = [pq.read_metadata(f).num_rows for f in parquet_files(d)]
    assert counts == [100, 100, 50]
    assert [f.name[-12:] for f in parquet_files(d)] == ["0001.parquet", "0002.parquet",
                                                        "0003.parquet"]


def test_rotation_by_bytes(tmp_path):
    d = tmp_path / "rec"
    with Recording(d, rotate_bytes=4096) as r:
        for k in range(4):
            r.write("connects", connect_rows(200, start=200 * k))
            r.flush()
    assert len(parquet_files(d)) == 4
    assert duck_count(d) == 800


def test_rows_are_partitioned_by_their_own_utc_date(tmp_path):
    d = tmp_path / "rec"
    midnight = 1_709_337_600_000_000  # 2024-03-02T00:00:00Z
    rows = connect_rows(10, ts0=midnight - 5_000_000, step_us=1_000_000)  # 23:59:55 .. 00:00:04
    with Recording(d) as r:
        r.write("connects", rows[:3])
        r.flush()
        r.write("connects", rows[3:])
    assert [f.parent.name for f in parquet_files(d)] == ["date=2024-03-01", "date=2024-03-02"]
    assert duck_count(d, where="where date = DATE '2024-03-01'") == 5
    assert duck_count(d, where="where date = DATE '2024-03-02'") == 5
    assert duck_count(d, where="where cast(ts as date) <> date") == 0


def test_flush_and_rotation_by_age_with_an_injected_clock(tmp_path):
    d = tmp_path / "rec"
    clock = FakeClock()
    r = Recording(d, clock=clock, flush_interval_s=2.0, rotate_age_s=60.0, publish_age_s=60.0)
    r.write("connects", connect_rows(10))
    assert leftovers(d) == []                      # not due yet: nothing on disk
    clock.t += 2.0
    r.write("connects", connect_rows(5, start=10))  # write() flushes once due
    [journal] = leftovers(d)
    assert journal.name.endswith(".arrows.inprogress")
    assert pa.ipc.open_stream(pa.memory_map(str(journal))).read_all().num_rows == 15
    clock.t += 59.0
    r.tick()
    r.flush()                                       # flush() rotates what is due, too
    assert parquet_files(d) == []
    clock.t += 1.0
    r.flush()                                       # 60 s after the journal opened
    assert leftovers(d) == []
    assert [pq.read_metadata(f).num_rows for f in parquet_files(d)] == [15]
    r.close()


def test_background_flush_puts_rows_on_disk_without_calls(tmp_path):
    d = tmp_path / "rec"
    r = Recording(d, flush_interval_s=0.2, background_flush=True)
    try:
        r.write("connects", connect_rows(7))
        deadline = time.monotonic() + 5
        rows = 0
        while time.monotonic() < deadline and rows < 7:
            time.sleep(0.05)
            for j in leftovers(d):
                try:
                    rows = pa.ipc.open_stream(pa.memory_map(str(j))).read_all().num_rows
                except (pa.ArrowException, OSError):
                    pass
        assert rows == 7
    finally:
        r.close()
    assert duck_count(d) == 7


def test_the_collectors_interval_tick_never_waits_for_the_flusher(tmp_path):
    """With a background flusher, the collector's tick once an interval does
    no I/O and takes no lock (the flusher may be fsyncing under it while
    records pile into the kernel's ring buffer); it still raises what the
    flusher ran into. Without one, it is tick(): the due flush happens."""
    import threading

    d = tmp_path / "rec"
    r = Recording(d, flush_interval_s=3600, background_flush=True)
    held, release, done = threading.Event(), threading.Event(), threading.Event()

    def hold_the_io_lock():            # as the flusher does while it writes
        with r._io_lock:
            held.set()
            release.wait(10)

    holder = threading.Thread(target=hold_the_io_lock)
    holder.start()
    try:
        assert held.wait(5)
        caller = threading.Thread(target=lambda: (r.interval_tick(), done.set()))
        caller.start()
        assert done.wait(2), "interval_tick waited for the I/O lock the flusher held"
        caller.join()
    finally:
        release.set()
        holder.join()
    r._background_error = OSError(28, "No space left on device")
    with pytest.raises(OSError, match="No space left"):
        r.interval_tick()
    r.close()

    d2 = tmp_path / "rec2"
    clock = FakeClock()
    r2 = Recording(d2, flush_interval_s=2.0, clock=clock)
    r2.write("connects", connect_rows(5))
    assert leftovers(d2) == []
    clock.t += 2.5
    r2.interval_tick()                              # no flusher: the due flush happens here
    assert sum(pa.ipc.open_stream(pa.memory_map(str(j))).read_all().num_rows
               for j in leftovers(d2)) == 5
    r2.close()
    assert duck_count(d2) == 5


# ---------------------------------------------------------------- manifest, lock, limits

def test_manifest_at_start_and_at_close(tmp_path):
    d = tmp_path / "rec"
    r = Recording(d, host="box1", run_id="run1", backend="tracepoint",
                  options={"interval": 1, "port": [80]})
    path = d / "runs" / "run1.json"
    m = json.loads(path.read_text())
    assert m["end"] is None and m["status"] == "running"
    assert m["kernel"] == subprocess.run(["uname", "-r"], capture_output=True,
                                         text=True).stdout.strip()
    r.write("connects", connect_rows(4))
    r.write("sockets", [dict(ts=T0, pid=1, comm="x", established=1, syn_sent=0, listen=0,
                             close_wait=0, other=0, opened=1, closed=0, fds=3, fd_limit=1024,
                             tx_queue_bytes=0, rx_queue_bytes=0)])
    r.add_lost("connects", 9)
    r.close()
    m = json.loads(path.read_text())
    assert m["host"] == "box1" and m["backend"] == "tracepoint"
    assert m["options"] == {"interval": 1, "port": [80]}
    assert m["status"] == "complete"
    assert datetime.strptime(m["end"], "%Y-%m-%dT%H:%M:%S.%f%z") >= \
        datetime.strptime(m["start"], "%Y-%m-%dT%H:%M:%S.%f%z")
    assert m["rows"] == {"connects": 4, "accepts": 0, "overflows": 0, "listeners": 0,
                         "sockets": 1, "pools": 0, "tcp_memory": 0, "edges": 0}
    assert m["lost_events"]["connects"] == 9
    assert m["files"] == 2 + 8     # and the empty file each table gets at the start
    assert not list((d / "runs").glob("*.tmp"))


def test_backend_lost_totals_and_abandon_reach_the_manifest(tmp_path):
    d = tmp_path / "rec"
    r = Recording(d, run_id="run2", backend="auto", version="9.9")
    path = d / "runs" / "run2.json"
    r.set_backend("tracepoint")
    assert json.loads(path.read_text())["backend"] == "tracepoint"  # written at once
    assert "tracepoint_hooks" not in json.loads(path.read_text())
    r.set_backend("tracepoint", "raw tracepoints: BTF tracepoints failed to load (...)")
    assert json.loads(path.read_text())["tracepoint_hooks"] == \
        "raw tracepoints: BTF tracepoints failed to load (...)"
    r.set_lost({"connects": 3})
    r.set_lost({"connects": 5, "accepts": 1})
    with pytest.raises(UnknownTable):
        r.set_lost({"connect": 1})
    r.abandon("tracer failed to start")
    r.abandon("again")  # closed already: no effect
    m = json.loads(path.read_text())
    assert m["status"] == "abandoned" and m["reason"] == "tracer failed to start"
    assert m["version"] == "9.9"
    assert m["lost_events"]["connects"] == 5 and m["lost_events"]["accepts"] == 1


def test_one_recorder_per_directory(tmp_path):
    d = tmp_path / "rec"
    r = Recording(d)
    try:
        with pytest.raises(RecordingBusy, match=f"being recorded by another connscope "
                                                f"\\(pid {os.getpid()}\\)"):
            Recording(d)
        with pytest.raises(RecordingBusy):
            recover(d)
    finally:
        r.close()
    Recording(d).close()  # released on close


def test_max_bytes_deletes_oldest_finalized_files_first(tmp_path):
    d = tmp_path / "rec"
    with Recording(d, rotate_rows=200, run_id="old") as r:
        for k in range(3):
            r.write("connects", connect_rows(200, start=200 * k))
            r.flush()
    old = parquet_files(d)
    assert len(old) == 3
    one_file = max(f.stat().st_size for f in old)

    r = Recording(d, rotate_rows=200, run_id="new", max_bytes=int(3.5 * one_file))
    for k in range(4):
        r.write("connects", connect_rows(200, start=1000 + 200 * k))
        r.flush()
    r.close()
    left = parquet_files(d)
    assert sum(f.stat().st_size for f in left) <= 3.5 * one_file
    assert not any(f in left for f in old)          # the old run went first
    assert len(left) == 3 and r.status()["deleted_files"] == 4
    assert pq.read_metadata(left[-1]).num_rows == 200  # the newest survived
    assert json.loads((d / "runs" / "new.json").read_text())["deleted_files"] == 4


def test_file_and_directory_modes(tmp_path):
    d = tmp_path / "rec"
    old = os.umask(0o077)  # stricter than ours: proves modes are set, not inherited
    try:
        with Recording(d) as r:
            r.write("connects", connect_rows(3))
    finally:
        os.umask(old)
    for p in [d, *d.rglob("*")]:
        mode = stat.S_IMODE(p.stat().st_mode)
        assert mode == (0o750 if p.is_dir() else 0o640), (p, oct(mode))


@pytest.mark.kernel
@pytest.mark.skipif(not IS_ROOT, reason="chown to another user needs root")
def test_files_belong_to_the_sudo_user(tmp_path, monkeypatch):
    monkeypatch.setenv("SUDO_UID", "65534")
    monkeypatch.setenv("SUDO_GID", "65533")
    d = tmp_path / "rec"
    with Recording(d) as r:
        r.write("connects", connect_rows(3))
    paths = [d, *d.rglob("*")]
    assert len(paths) >= 6
    for p in paths:
        st = p.stat()
        assert (st.st_uid, st.st_gid) == (65534, 65533), p


# ---------------------------------------------------------------- crashes

CRASHING_CHILD = """
import os, signal, sys
sys.path.insert(0, {repo!r})
from tests.unit.test_parquet_writer import connect_rows
from tracer.sinks.parquet_writer import Recording
r = Recording(sys.argv[1], host="crashbox", run_id="crashed-run", flush_interval_s=3600,
              rotate_age_s=3600)
for k in range(3):
    r.write("connects", connect_rows(100, start=100 * k))
    r.flush()
r.write("connects", connect_rows(50, start=300))  # buffered only: lost by design
os.kill(os.getpid(), signal.SIGKILL)
"""


def crash_a_recorder(d):
    """Run a recorder in a child that flushes 300 rows, buffers 50 more and is SIGKILLed."""
    p = subprocess.run([sys.executable, "-c", CRASHING_CHILD.format(repo=str(REPO)), str(d)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == -signal.SIGKILL, p.stderr
    [journal] = leftovers(d)
    assert parquet_files(d) == []
    return journal


def test_recover_after_sigkill_keeps_every_flushed_row(tmp_path, monkeypatch):
    d = tmp_path / "rec"
    crash_a_recorder(d)
    assert json.loads((d / "runs" / "crashed-run.json").read_text())["status"] == "running"

    from tracer.sinks import journal, recovery
    reads = []
    counted = journal.read_journal

    def read_journal(part, name, **kw):
        reads.append(name)
        return counted(part, name, **kw)

    monkeypatch.setattr(journal, "read_journal", read_journal)
    monkeypatch.setattr(recovery, "read_journal", read_journal)
    lines = recover(d)
    assert len(reads) == 1, reads          # the journal is read (and checked) once
    assert leftovers(d) == []
    [f] = parquet_files(d)
    ts = pq.read_table(f).column("ts").cast(pa.int64()).to_pylist()
    assert ts == [r["ts"] for r in connect_rows(300)]
    assert any(line.startswith("recovered connects/date=2024-03-01/") and "300 rows" in line
               for line in lines), lines
    m = json.loads((d / "runs" / "crashed-run.json").read_text())
    assert m["status"] == "crashed"
    assert m["rows"]["connects"] == 300
    assert m["end"] == "2024-03-01T12:00:00.299000Z"  # the last recovered ts
    assert recover(d) == []                          # nothing left to do


def test_recover_ignores_a_batch_cut_short(tmp_path):
    d = tmp_path / "rec"
    journal = crash_a_recorder(d)
    os.truncate(journal, journal.stat().st_size - 10)  # the third flush is now incomplete
    lines = recover(d)
    assert duck_count(d) == 200
    assert any("cut short" in line for line in lines), lines


def test_next_recording_recovers_at_start(tmp_path):
    d = tmp_path / "rec"
    crash_a_recorder(d)
    with Recording(d) as r:
        assert any(line.startswith("recovered ") for line in r.recovered)
        assert r.status()["recovered"] == r.recovered
        r.write("connects", connect_rows(10, start=1000))
    assert duck_count(d) == 310


def test_garbage_and_empty_journals_are_quarantined(tmp_path):
    d = tmp_path / "rec"
    with Recording(d) as r:
        r.write("connects", connect_rows(5))
    part = d / "connects" / "date=2024-03-01"
    garbage = os.urandom(4000)
    # names of the recorder's own pattern: recovery touches no others
    (part / "x-20240301T120000Z-0001.arrows.inprogress").write_bytes(garbage)
    (part / "x-20240301T120000Z-0002.arrows.inprogress").write_bytes(b"")
    lines = recover(d)
    assert sum(line.startswith("quarantined connects/date=2024-03-01/x-2024") for line in lines) == 2
    q = d / "quarantine" / "connects" / "date=2024-03-01"
    assert (q / "x-20240301T120000Z-0001.arrows.inprogress").read_bytes() == garbage
    assert (q / "x-20240301T120000Z-0002.arrows.inprogress").exists()
    assert leftovers(d / "connects") == []
    assert duck_count(d) == 5


def test_journal_left_next_to_its_finalized_file_is_not_replayed(tmp_path):
    # a crash between publishing the Parquet file and deleting its journal
    d = tmp_path / "rec"
    r = Recording(d)
    r.write("connects", connect_rows(20))
    r.flush()
    [journal] = leftovers(d)
    saved = tmp_path / "journal-copy"
    shutil.copy(journal, saved)
    r.close()
    [final] = parquet_files(d)
    before = sha(final)
    shutil.copy(saved, journal)
    lines = recover(d)
    assert lines == [f"removed {journal.relative_to(d)}: already finalized as {final.name}"]
    assert sha(final) == before and duck_count(d) == 20


def test_leftover_temporary_parquet_files(tmp_path):
    d = tmp_path / "rec"
    part = d / "connects" / "date=2024-03-01"
    part.mkdir(parents=True)
    t = pw.rows_to_batch("connects", connect_rows(8), host="h", run_id="r")
    a1, a2 = "a-20240301T120000Z-0001", "a-20240301T120000Z-0002"
    pq.write_table(pa.Table.from_batches([t]), part / f"{a1}.parquet.inprogress")
    data = (part / f"{a1}.parquet.inprogress").read_bytes()
    (part / f"{a2}.parquet.inprogress").write_bytes(data[: len(data) // 2])
    lines = recover(d)
    assert lines == [
        f"finalized connects/date=2024-03-01/{a1}.parquet.inprogress as {a1}.parquet",
        f"quarantined connects/date=2024-03-01/{a2}.parquet.inprogress: incomplete Parquet "
        f"file (moved to quarantine/connects/date=2024-03-01/{a2}.parquet.inprogress)",
    ]
    assert duck_count(d) == 8


# ---------------------------------------------------------------- unwritable storage

@pytest.mark.skipif(IS_ROOT, reason="root ignores permission bits; "
                                    "test_read_only_file_system covers this as root")
def test_unwritable_directory_fails_at_start(tmp_path):
    parent = tmp_path / "locked"
    parent.mkdir()
    parent.chmod(0o500)
    try:
        with pytest.raises(RecordingError, match="cannot write to .*: Permission denied"):
            Recording(parent / "rec")
    finally:
        parent.chmod(0o700)


@pytest.fixture
def tmpfs(tmp_path):
    """A real, tiny tmpfs: ENOSPC and EROFS come from the kernel, not from a mock."""
    if not IS_ROOT:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()

    def remount(opts):
        subprocess.run(["mount", "-o", f"remount,{opts}", str(mnt)], check=True,
                       capture_output=True)

    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0755", "tmpfs", str(mnt)],
                   check=True, capture_output=True)
    try:
        yield mnt, remount
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def complete_rows(journal):
    """Rows in the batches of an IPC stream that pyarrow reads before the first damaged one."""
    reader = pa.ipc.open_stream(pa.memory_map(str(journal)))
    n = 0
    while True:
        try:
            n += reader.read_next_batch().num_rows
        except StopIteration:
            return n
        except (pa.ArrowException, OSError):
            return n


def write_until_paused(r, start, limit=200):
    """Write 1000-row flushes until the recording pauses; return rows given."""
    for k in range(limit):
        r.write("connects", connect_rows(1000, start=start + 1000 * k))
        r.flush()
        if r.paused_reason:
            return 1000 * (k + 1)
    raise AssertionError(f"still writing after {limit} flushes")


@pytest.mark.kernel
def test_disk_full_pauses_drops_and_resumes(tmpfs):
    mnt, _ = tmpfs
    d = mnt / "rec"
    # 256k, of which the six empty files every table gets at the start take
    # ~50k: every 1000-row flush is finalized, so some are before the disk fills
    r = Recording(d, rotate_rows=1000)
    (mnt / "filler").write_bytes(b"x" * 60_000)
    given = write_until_paused(r, 0)
    assert r.paused_reason.startswith(f"disk full on {d}: writing paused, ")
    finalized = {f: sha(f) for f in parquet_files(d)}
    assert finalized, "nothing was finalized before the disk filled up"

    r.write("connects", connect_rows(1000, start=given))
    r.flush()
    given += 1000
    st = r.status()
    assert st["dropped_rows"]["connects"] >= 1000
    assert f"{st['dropped_rows']['connects']} rows dropped" in r.paused_reason

    os.unlink(mnt / "filler")
    r.write("connects", connect_rows(1000, start=given))
    r.flush()
    given += 1000
    assert r.paused_reason is None
    r.close()
    assert {f: sha(f) for f in finalized} == finalized  # never touched
    st = r.status()
    assert st["rows"]["connects"] == given
    assert duck_count(d) + st["dropped_rows"]["connects"] == given
    m = json.loads((d / "runs" / f"{r.run_id}.json").read_text())
    assert m["dropped_rows"]["connects"] == st["dropped_rows"]["connects"]
    assert m["status"] == "complete"  # it resumed: what it kept is all on disk


@pytest.mark.kernel
def test_close_on_a_full_disk_raises_and_leaves_journals_to_recover(tmpfs):
    mnt, _ = tmpfs
    d = mnt / "rec"
    r = Recording(d, rotate_rows=1_000_000)
    (mnt / "filler").write_bytes(b"x" * 60_000)
    write_until_paused(r, 0)
    with pytest.raises(pw.RecordingIncomplete, match="disk full on .*next start to recover"):
        r.close()
    r.close()  # idempotent: the error was reported once
    on_disk = leftovers(d)
    assert on_disk
    journaled = sum(complete_rows(j) for j in on_disk if j.name.endswith(".arrows.inprogress"))
    assert journaled > 0
    os.unlink(mnt / "filler")
    lines = recover(d)
    assert any(line.startswith("recovered ") for line in lines), lines
    assert duck_count(d) == journaled
    assert leftovers(d) == []


@pytest.mark.kernel
def test_read_only_file_system(tmpfs):
    mnt, remount = tmpfs
    d = mnt / "rec"
    r = Recording(d)
    r.write("connects", connect_rows(10))
    r.rotate()
    [done] = parquet_files(d)
    before = sha(done)

    remount("ro")
    try:
        with pytest.raises(RecordingBusy):
            Recording(d)  # the lock still works on a read-only mount
        r.write("connects", connect_rows(10, start=10))
        r.flush()
        assert r.paused_reason == f"read-only file system at {d}: writing paused, " \
                                  f"10 rows dropped"
    finally:
        remount("rw")
    r.write("connects", connect_rows(10, start=20))
    r.flush()
    assert r.paused_reason is None
    r.close()
    assert sha(done) == before
    assert duck_count(d) == 20

    remount("ro")
    try:
        with pytest.raises(RecordingError, match="Read-only file system"):
            Recording(mnt / "other")
    finally:
        remount("rw")


def test_writes_racing_the_background_flusher_lose_nothing(tmp_path):
    d = tmp_path / "rec"
    r = Recording(d, flush_interval_s=0.02, rotate_age_s=0.1, background_flush=True)
    end = time.monotonic() + 0.6  # several flush intervals and age rotations
    n = 0
    while time.monotonic() < end and n < 200_000:
        r.write("connects", connect_rows(200, start=n))
        n += 200
        time.sleep(0.001)
    r.close()
    assert r.status()["dropped_rows"]["connects"] == 0
    assert duck_count(d) == n
    assert len(parquet_files(d)) > 1  # it rotated while rows were arriving


TIMED_CHILD = """
import os, signal, sys, time
sys.path.insert(0, {repo!r})
from tests.unit.test_parquet_writer import connect_rows
from tracer.sinks.parquet_writer import Recording
r = Recording(sys.argv[1], flush_interval_s=0.2, background_flush=True, rotate_age_s=3600)
# a second of writing and at least 200 rows (a loaded machine can take most
# of a second over the first write), never more than 20 s
start = time.time()
seq = 0
while (time.time() < start + 1.0 or seq < 200) and time.time() < start + 20:
    # start=seq numbers the rows through sport, so a lost middle batch shows
    # as a gap in the sequence whatever the scheduler did to our timing.
    r.write("connects", connect_rows(1, start=seq, ts0=int(time.time() * 1e6) - seq * 1000))
    seq += 1
    time.sleep(0.001)
print(int(time.time() * 1e6), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_sigkill_loses_at_most_one_flush_interval_and_a_tick(tmp_path):
    d = tmp_path / "rec"
    p = subprocess.run([sys.executable, "-c", TIMED_CHILD.format(repo=str(REPO)), str(d)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == -signal.SIGKILL, p.stderr
    killed_at = int(p.stdout.split()[0])
    recover(d)
    # small files published every 5 s for live readers: all of them, in order
    table = pa.concat_tables([pq.read_table(f) for f in parquet_files(d)])
    ts = table.column("ts").cast(pa.int64()).to_pylist()
    seq = [p - 40000 for p in table.column("sport").to_pylist()]
    assert len(ts) > 100
    assert ts == sorted(ts)
    assert seq == list(range(len(seq)))  # no holes: every row up to the last flush
    lost_s = (killed_at - ts[-1]) / 1e6
    # documented bound: flush interval 0.2 s + one background tick 0.05 s; 0.25 s of
    # slack for a loaded machine still tells it apart from losing a whole file
    assert 0 <= lost_s < 0.5, lost_s


def test_recovery_checks_every_value_of_a_journal_and_the_writer_its_structure(tmp_path):
    """The writer reads back its own journal with the structural check only
    (journal.read_journal every_value=False: the full one was a fifth of the
    CPU of turning rows into Parquet); recovery, reading the journals of other
    runs, still checks every value: a batch whose text is not UTF-8, well
    formed otherwise, ends what it keeps."""
    import struct

    from tracer.sinks import journal
    from tracer.sinks.trusted_dir import open_trusted

    sch = pa.schema([("comm", pa.string())])
    bad = pa.Array.from_buffers(pa.string(), 1, [None, pa.py_buffer(struct.pack("<ii", 0, 2)),
                                                 pa.py_buffer(b"\xff\xfe")])
    with pytest.raises(pa.ArrowInvalid):
        bad.validate(full=True)
    bad.validate()
    name = "x-20240301T120000Z-0001.arrows.inprogress"
    with pa.OSFile(str(tmp_path / name), "wb") as f, pa.ipc.new_stream(f, sch) as w:
        w.write_batch(pa.record_batch([pa.array(["ok"])], schema=sch))
        w.write_batch(pa.record_batch([bad], schema=sch))
    with open_trusted(tmp_path) as part:
        _, every, clean = journal.read_journal(part, name)
        assert [b.num_rows for b in every] == [1] and not clean
        _, structure, clean = journal.read_journal(part, name, every_value=False)
        assert [b.num_rows for b in structure] == [1, 1] and clean
