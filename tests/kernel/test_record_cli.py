"""`connscope record` as a user runs it: real process, real signals, real
file systems; files checked with pyarrow and DuckDB."""
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.kernel

ROOT = Path(__file__).resolve().parents[2]
CONNSCOPE = [sys.executable, "-m", "tracer"]


def start_recorder(out, *extra):
    return subprocess.Popen([*CONNSCOPE, "record", "--out", str(out), *extra], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_started(proc, timeout=30):
    """The recorder prints its 'recording to' line once the probes are loaded."""
    deadline = time.monotonic() + timeout
    line = ""
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if "recording to" in line or not line:
            break
    assert "recording to" in line, line + proc.stderr.read()


class Connector:
    """Loopback connects to a listener of ours, one every `period` s, in a
    thread; remembers when each was made. Bounded by `limit`."""

    def __init__(self, period=0.01, limit=5000):
        self.srv = socket.socket()
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(4096)
        self.port = self.srv.getsockname()[1]
        self.made: list[float] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, args=(period, limit), daemon=True)

    def _run(self, period, limit):
        while not self._stop.is_set() and len(self.made) < limit:
            c = socket.create_connection(("127.0.0.1", self.port))
            self.made.append(time.time())
            c.close()
            a, _ = self.srv.accept()
            a.close()
            time.sleep(period)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join(10)
        self.srv.close()


def connects_rows(out, port):
    files = sorted(Path(out, "connects").glob("date=*/*.parquet"))
    n_arrow = sum(pq.read_table(f).column("dport").to_pylist().count(port) for f in files)
    n_duck = duckdb.sql(f"select count(*) from read_parquet('{out}/connects/**/*.parquet', "
                        f"hive_partitioning=true) where dport = {port}").fetchall()[0][0]
    assert n_arrow == n_duck
    return n_duck


def test_record_duration_writes_exact_rows(tmp_path):
    out = tmp_path / "rec"
    proc = start_recorder(out, "--duration", "4")
    wait_started(proc)
    with Connector(period=0.02, limit=23) as c:
        time.sleep(1.5)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert len(c.made) == 23
    assert connects_rows(out, c.port) == 23
    assert not list(out.rglob("*.inprogress"))
    import json
    [manifest] = [json.loads(p.read_text()) for p in (out / "runs").glob("*.json")
                  if json.loads(p.read_text())["status"] == "complete"]
    assert manifest["lost_events"]["connects"] == 0


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signals_finalize_everything(tmp_path, sig):
    out = tmp_path / "rec"
    proc = start_recorder(out)
    wait_started(proc)
    with Connector(period=0.01, limit=50) as c:
        time.sleep(1.5)
    time.sleep(0.3)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert connects_rows(out, c.port) == len(c.made) == 50
    assert not list(out.rglob("*.inprogress"))


def test_kill_9_loses_at_most_the_last_flush_and_next_start_recovers(tmp_path):
    out = tmp_path / "rec"
    proc = start_recorder(out)
    wait_started(proc)
    with Connector(period=0.01, limit=2000) as c:
        time.sleep(5)
        killed_at = time.time()
        proc.kill()
        proc.wait()
    # Finalized files so far are complete Parquet files already.
    for f in out.rglob("*.parquet"):
        pq.read_table(f)
    # The next start finalizes what the crash left and says so.
    proc = start_recorder(out, "--duration", "1")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "recovered" in err.lower() or "finalized" in err.lower(), err
    assert not list(out.rglob("*.inprogress"))
    rows = connects_rows(out, c.port)
    # Documented bound: one flush interval (2 s) plus one collector interval.
    made_before_bound = sum(1 for t in c.made if t < killed_at - 3.0)
    assert rows >= made_before_bound > 100, (rows, made_before_bound, len(c.made))
    assert rows <= len(c.made)


def test_unwritable_out_is_one_error_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    proc = subprocess.run([*CONNSCOPE, "record", "--out", str(blocker / "rec"), "--duration", "1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert [l for l in proc.stderr.splitlines() if l.startswith("Error:")], proc.stderr


def test_kprobe_backend_here_says_why():
    if os.path.exists("/sys/kernel/tracing/kprobe_events"):
        pytest.skip("this kernel has kprobes: the error path cannot be shown here")
    proc = subprocess.run([*CONNSCOPE, "record", "--out", "/tmp/never", "--backend", "kprobe",
                           "--duration", "1"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        "Error: kprobes are not available on this kernel (CONFIG_KPROBES is off); "
        "use --backend tracepoint")


def test_disk_full_pauses_warns_and_resumes(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], check=True)
    try:
        out = mnt / "rec"
        c = Connector(period=0.002, limit=4000)
        # only our connects, so that dropped + written rows can be checked
        proc = start_recorder(out, "--interval", "0.5", "--port", str(c.port))
        wait_started(proc)
        filler = mnt / "filler"
        with c:
            time.sleep(1.0)
            # fill the disk while it records
            with open(filler, "wb") as f:
                try:
                    while True:
                        f.write(b"\0" * 65536)
                        f.flush()
                except OSError:
                    pass
            time.sleep(6)        # status line at once on pause
            os.unlink(filler)    # space returns
            time.sleep(4)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert "WARNING: disk full" in err, err
        assert "Traceback" not in err
        for f in out.rglob("*.parquet"):
            pq.read_table(f)          # nothing written earlier was damaged
        rows = connects_rows(out, c.port)
        assert 0 < rows < len(c.made)    # some were dropped while paused, the rest written
        import json
        manifest = [json.loads(p.read_text()) for p in (out / "runs").glob("*.json")][0]
        assert manifest["dropped_rows"]["connects"] + rows == len(c.made)
    finally:
        subprocess.run(["umount", "-l", str(mnt)])
