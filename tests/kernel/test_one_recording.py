"""One recording, three readers: a real `connscope record` of real loopback
traffic (a client opening a connection per request, one holding a pool of
kept-alive connections, connects to a closed port), then the same totals,
outcomes and pool advice from replay (RecordingTimeline snapshots), the
report (tracer.report.summary) and the Parquet tables read with DuckDB, and
the connect counts equal to what the clients made."""
from __future__ import annotations

import json
import socket
import threading
import time

import duckdb
import pytest

from tests.kernel.test_record_cli import start_recorder, wait_started
from tracer.replay.timeline import RecordingTimeline
from tracer.report.reader import read_recording
from tracer.report.summary import summarize

pytestmark = pytest.mark.kernel

CHURN, CHURN_HOLD_S, REFUSED, POOL = 150, 0.02, 20, 3


class Server:
    """Accepts and echoes on loopback until stopped; bounded by its deadline."""

    def __init__(self, lifetime_s: float = 60):
        self.srv = socket.socket()
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(1024)
        self.srv.settimeout(0.2)
        self.port = self.srv.getsockname()[1]
        self._stop = threading.Event()
        self._deadline = time.monotonic() + lifetime_s
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _serve(self, c):
        with c:
            c.settimeout(10)
            try:
                while data := c.recv(64):
                    c.sendall(data)
            except OSError:
                pass

    def _run(self):
        while not self._stop.is_set() and time.monotonic() < self._deadline:
            try:
                c, _ = self.srv.accept()
            except OSError:
                continue
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def close(self):
        self._stop.set()
        self._t.join(5)
        self.srv.close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]      # nobody listens there once s is closed


def traffic(port: int, refused_port: int) -> tuple[int, int]:
    """CHURN connections each used for one request and held CHURN_HOLD_S,
    POOL kept-alive ones used all along, REFUSED connects to a closed port."""
    pool = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(POOL)]
    made = refused = 0
    deadline = time.monotonic() + 30
    for i in range(CHURN):
        if time.monotonic() > deadline:
            break
        with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
            c.sendall(b"q")
            c.recv(1)
            made += 1
            time.sleep(CHURN_HOLD_S)
        p = pool[i % POOL]
        p.sendall(b"k")
        p.recv(1)
        if i % (CHURN // REFUSED) == 0 and refused < REFUSED:
            try:
                socket.create_connection(("127.0.0.1", refused_port), timeout=5).close()
            except ConnectionRefusedError:
                refused += 1
    time.sleep(1.0)     # the pool is seen held at a few more interval ends
    for p in pool:
        p.close()
    return made + POOL, refused


def test_replay_report_and_parquet_agree_on_one_recording(tmp_path):
    out = tmp_path / "rec"
    server = Server()
    refused_port = closed_port()
    try:
        proc = start_recorder(out, "--interval", "0.5", "--duration", "9")
        wait_started(proc)
        time.sleep(1.0)
        made, refused = traffic(server.port, refused_port)
        _, err = proc.communicate(timeout=60)
    finally:
        server.close()
    assert proc.returncode == 0, err
    assert refused == REFUSED
    dest, gone = f"127.0.0.1:{server.port}", f"127.0.0.1:{refused_port}"
    (manifest,) = [json.loads(p.read_text()) for p in (out / "runs").glob("*.json")]
    assert manifest["status"] == "complete" and not any(manifest["lost_events"].values()), \
        manifest

    # Parquet, through DuckDB
    def sql(q):
        return duckdb.sql(q.format(out=out)).fetchall()
    by_outcome = dict(sql("select outcome, count(*) from read_parquet("
                          "'{out}/connects/**/*.parquet', hive_partitioning=true) group by 1"))
    per_dest = {(f"{a}:{p}", o): n for a, p, o, n in sql(
        "select daddr, dport, outcome, count(*) from read_parquet("
        "'{out}/connects/**/*.parquet', hive_partitioning=true) group by 1, 2, 3")}
    assert per_dest.get((dest, "established")) == made          # the clients' own count
    assert per_dest.get((gone, "refused")) == refused
    pools = sql("select pid, destination, epoch_us(ts), recommended, arrival_per_s, hold_s, "
                "verdict, in_use from read_parquet('{out}/pools/**/*.parquet', "
                "hive_partitioning=true)")

    # the report
    data = read_recording(out)
    s = summarize(data)
    assert s.connects.attempts == sum(by_outcome.values())
    assert s.connects.established == by_outcome.get("established", 0)
    assert s.connects.refused == by_outcome.get("refused", 0)

    # replay: the last snapshot's rows are totals since the start
    timeline = RecordingTimeline(data, out)
    snaps = [timeline.snapshot(i) for i in range(len(timeline))]
    last = snaps[-1]
    rows = {r.label: r for r in last.destinations}
    assert sum(r.attempts for r in last.destinations) == s.connects.attempts
    assert sum(r.established for r in last.destinations) == s.connects.established
    assert sum(r.refused for r in last.destinations) == s.connects.refused
    assert (rows[dest].attempts, rows[dest].established) == (made, made)
    assert (rows[gone].attempts, rows[gone].refused) == (refused, refused)

    # pool advice: the report's is a pools row as recorded, and replay shows
    # that same row at that moment
    (churn,) = [a for a in s.pool if a.destination == dest and a.churning]
    best = max((r for r in pools if r[0] == churn.pid and r[1] == dest),
               key=lambda r: (r[3], r[4], r[2]))
    assert (best[2], best[3], best[4], best[5], best[6]) == (
        churn.ts_us, churn.recommended, churn.arrival_per_s, churn.hold_s, churn.verdict)
    (at,) = [x for x in snaps if x.ts_us == churn.ts_us]
    (prow,) = [r for r in at.processes if r.pid == churn.pid]
    (shown,) = [a for a in prow.advice if a.destination == dest]
    assert (shown.recommended, shown.arrival_per_s, shown.hold_s, shown.verdict) == (
        churn.recommended, churn.arrival_per_s, churn.hold_s, churn.verdict)
    # the keep-alive pool is the same process's, to the same server: it makes
    # the process's in-use count, never less than the pool it held
    assert churn.in_use_peak >= POOL
    print(f"\n{made} connects made, {refused} refused; report {s.connects}; "
          f"pool advice {churn.recommended} ({churn.verdict})")
