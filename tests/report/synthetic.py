"""Synthetic recordings for the report tests, written through the real writer
(`Recording`) so the files are exactly what `connscope record` produces.

`write_incident` is a small fleet with known trouble; INCIDENT says what a
report must find in it:

- web-1 (run "run-web-1", complete, tracepoint backend):
  gunicorn (2001) connects to the database 10.0.0.5:5432 50 times a second and
  holds each connection 0.2 s (10 established): churning, pool advice 13
  (ceil(1.25 x 10), in the pools table the live view would have written);
  worker (2002) calls a slow API 10.0.2.7:443 (median ~80 ms, 3 % with one SYN
  retransmit, +1 s); nginx (1500) listens on 0.0.0.0:80 with backlog 128 and
  drops 40 connections and 5 SYNs a second from 03:04:01 to 03:05:30
  (2360 + 295 in minute 03:04, 1240 + 155 in minute 03:05).
- web-2 (run "run-web-2", crashed, kprobe backend, 37 connects events lost):
  cron (3001) gets 300 refusals from 10.0.0.9:6379 between 03:02 and 03:03;
  java (4000) times out 20 times on 10.0.3.3:9200, holds 800 to 900
  connections, leaks CLOSE_WAIT sockets (0 to 300) and reaches 3950 of 4096
  file descriptors; worker (2101) connects over IPv6 to [2001:db8::10]:443.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from tracer.domain import pools
from tracer.sinks.parquet_writer import Recording

T0 = 1_709_262_000_000_000          # 2024-03-01T03:00:00Z, µs
SECOND = 1_000_000
DURATION_S = 600

INCIDENT = {
    "hosts": ("web-1", "web-2"),
    "lost_events": 37,
    "crashed_run": "run-web-2",
    "slow": "10.0.2.7:443",
    "refusing": "10.0.0.9:6379",
    "refused": 300,
    "timing_out": "10.0.3.3:9200",
    "timeouts": 20,
    "listener": "0.0.0.0:80",
    "drops_per_minute": {T0 + 4 * 60 * SECOND: (2360, 295), T0 + 5 * 60 * SECOND: (1240, 155)},
    "churning": ("gunicorn", 2001, "10.0.0.5:5432", 13),
    "leaking": ("java", 4000),
}


def _utc(us: int) -> datetime:
    return datetime.fromtimestamp(us / 1e6, tz=timezone.utc)


def _connects(rng, *, comm, pid, daddr, dport, per_s, median_us, start_s=0, end_s=DURATION_S,
              outcome="established", errno=None, retx_share=0.0, retx=1, family=4,
              saddr="10.0.1.10"):
    n = int((end_s - start_s) * per_s)
    ts = T0 + start_s * SECOND + np.sort(rng.integers(0, (end_s - start_s) * SECOND, n))
    retx_n = np.where(rng.random(n) < retx_share, retx, 0).astype(np.int32)
    latency = None
    if outcome != "timeout":  # a timeout never resolves: no latency
        latency = median_us * rng.lognormal(0.0, 0.35, n) + retx_n * 1_000_000.0
    return {
        "ts": ts, "pid": np.full(n, pid, np.int32), "tid": np.full(n, pid, np.int32),
        "comm": [comm] * n, "family": np.full(n, family, np.int8),
        "saddr": [saddr] * n, "sport": rng.integers(32768, 60999, n).astype(np.int32),
        "daddr": [daddr] * n, "dport": np.full(n, dport, np.int32),
        "latency_us": [None] * n if latency is None else latency,
        "outcome": [outcome] * n, "syn_retransmits": retx_n if outcome != "timeout"
        else np.full(n, retx, np.int32),
        "errno": [errno] * n,
    }


def _seconds(start_s=1, end_s=DURATION_S):
    """ts of per-interval rows: the end of each 1 s interval."""
    return T0 + np.arange(start_s, end_s + 1, dtype=np.int64) * SECOND


def _listener_rows(rng, *, laddr, lport, pid, comm, backlog, burst=None, drops=0):
    ts = _seconds()
    n = len(ts)
    in_burst = np.zeros(n, bool) if burst is None else (ts >= burst[0]) & (ts <= burst[1])
    queue = rng.integers(0, 4, n).astype(np.int32)
    peak = np.where(in_burst, backlog, queue + rng.integers(0, 3, n)).astype(np.int32)
    drop_col = np.where(in_burst, drops, 0).astype(np.int64)
    return {
        "ts": ts, "family": np.full(n, 4, np.int8), "laddr": [laddr] * n,
        "lport": np.full(n, lport, np.int32), "pid": np.full(n, pid, np.int32), "comm": [comm] * n,
        "backlog_max": np.full(n, backlog, np.int32),
        "queue_len": np.where(in_burst, backlog, queue).astype(np.int32), "queue_peak": peak,
        "overflows_total": np.cumsum(drop_col), "syn_queue_len": np.zeros(n, np.int32),
        "drops": drop_col, "accepts": np.full(n, 30, np.int64),
    }, in_burst


def _overflow_rows(listener: dict, in_burst, syn_drops: int) -> dict:
    keep = np.nonzero(in_burst)[0]
    n = len(keep)
    return {
        "ts": listener["ts"][keep], "family": np.full(n, 4, np.int8),
        "laddr": [listener["laddr"][0]] * n, "lport": listener["lport"][keep],
        "pid": listener["pid"][keep], "comm": [listener["comm"][0]] * n,
        "drops": listener["drops"][keep], "syn_drops": np.full(n, syn_drops, np.int64),
        "backlog_max": listener["backlog_max"][keep], "backlog_peak": listener["queue_peak"][keep],
        "interval_s": np.ones(n), "synack_retransmits": np.full(n, 2, np.int64),
    }


def _accept_rows(rng, *, laddr, lport, pid, comm, backlog, per_s, burst):
    n = DURATION_S * per_s
    ts = T0 + np.sort(rng.integers(0, DURATION_S * SECOND, n))
    slow = (ts >= burst[0]) & (ts <= burst[1])
    wait = np.where(slow, 50_000.0, 200.0) * rng.lognormal(0.0, 0.3, n)
    return {
        "ts": ts, "pid": np.full(n, pid, np.int32), "comm": [comm] * n,
        "family": np.full(n, 4, np.int8), "laddr": [laddr] * n,
        "lport": np.full(n, lport, np.int32), "raddr": ["192.0.2.50"] * n,
        "rport": rng.integers(1024, 65535, n).astype(np.int32), "queue_wait_us": wait,
        "backlog_len": np.where(slow, backlog, rng.integers(0, 4, n)).astype(np.int32),
        "backlog_max": np.full(n, backlog, np.int32),
    }


def _socket_rows(*, pid, comm, established, opened, closed, close_wait=0, listen=0,
                 fds=None, fd_limit=1024):
    ts = _seconds()
    n = len(ts)

    def col(v, dtype):
        return np.broadcast_to(np.asarray(v, dtype), (n,)).copy()

    est = col(established, np.int32)
    cw = col(close_wait, np.int32)
    return {
        "ts": ts, "pid": np.full(n, pid, np.int32), "comm": [comm] * n,
        "established": est, "syn_sent": np.zeros(n, np.int32), "listen": col(listen, np.int32),
        "close_wait": cw, "other": np.zeros(n, np.int32), "opened": col(opened, np.int64),
        "closed": col(closed, np.int64),
        "fds": col(fds if fds is not None else est + cw + 20, np.int32),
        "fd_limit": np.full(n, fd_limit, np.int64),
        "tx_queue_bytes": np.zeros(n, np.int64), "rx_queue_bytes": np.zeros(n, np.int64),
    }


def _pool_rows(*, pid, comm, destination, per_s, hold_s, held):
    """The `pools` rows the live view writes for a steady flow, by the same
    arithmetic (tracer.domain.pools), one a second over the last 30 s."""
    rows = []
    for i, ts in enumerate(_seconds()):
        window = min(pools.WINDOW, i + 1)
        d = pools.demand(per_s * window, float(window), hold_s, hold_s, [held] * window)
        rows.append({"ts": int(ts), "pid": pid, "comm": comm, "destination": destination,
                     "arrival_per_s": d.arrival_per_s, "hold_s": d.hold_s,
                     "concurrency_mean": d.concurrency_mean,
                     "concurrency_p99": d.concurrency_p99,
                     "concurrency_peak": d.concurrency_peak, "recommended": d.recommended,
                     "in_use": d.in_use, "verdict": d.verdict, "window_s": d.window_s})
    return {k: [r[k] for r in rows] for k in rows[0]}


def _ramp(a, b):
    return np.linspace(a, b, DURATION_S).round().astype(np.int64)


def _finish_manifest(directory: Path, run_id: str, **fields) -> None:
    path = directory / "runs" / f"{run_id}.json"
    m = json.loads(path.read_text())
    m.update(fields)
    path.write_text(json.dumps(m, indent=2))


def write_incident(directory, seed: int = 7) -> dict:
    """Write the INCIDENT fleet into `directory`; return INCIDENT."""
    directory = Path(directory)
    rng = np.random.default_rng(seed)
    burst = (T0 + (4 * 60 + 1) * SECOND, T0 + (5 * 60 + 30) * SECOND)
    end = T0 + DURATION_S * SECOND

    with Recording(directory, host="web-1", run_id="run-web-1", backend="tracepoint",
                   options={"interval": 1.0}, start=_utc(T0)) as r:
        r.write("connects", _connects(rng, comm="gunicorn", pid=2001, daddr="10.0.0.5",
                                      dport=5432, per_s=50, median_us=400))
        r.write("connects", _connects(rng, comm="worker", pid=2002, daddr="10.0.2.7", dport=443,
                                      per_s=2, median_us=80_000, retx_share=0.03))
        nginx, in_burst = _listener_rows(rng, laddr="0.0.0.0", lport=80, pid=1500,
                                         comm="nginx", backlog=128, burst=burst, drops=40)
        r.write("listeners", nginx)
        r.write("overflows", _overflow_rows(nginx, in_burst, syn_drops=5))
        exporter, _ = _listener_rows(rng, laddr="127.0.0.1", lport=9100, pid=900,
                                     comm="node_exporter", backlog=4096)
        r.write("listeners", exporter)
        r.write("accepts", _accept_rows(rng, laddr="0.0.0.0", lport=80, pid=1500, comm="nginx",
                                        backlog=128, per_s=30, burst=burst))
        r.write("sockets", _socket_rows(pid=2001, comm="gunicorn", established=10, opened=50,
                                        closed=50))
        r.write("pools", _pool_rows(pid=2001, comm="gunicorn", destination="10.0.0.5:5432",
                                    per_s=50, hold_s=0.2, held=10))
        r.write("sockets", _socket_rows(pid=1500, comm="nginx", established=100, listen=1,
                                        opened=30, closed=30, fd_limit=65536))
    _finish_manifest(directory, "run-web-1", kernel="6.18.0-connscope", end=_iso(end))

    with Recording(directory, host="web-2", run_id="run-web-2", backend="kprobe",
                   options={"interval": 1.0}, start=_utc(T0)) as r:
        r.write("connects", _connects(rng, comm="cron", pid=3001, daddr="10.0.0.9", dport=6379,
                                      per_s=5, median_us=80, start_s=120, end_s=180,
                                      outcome="refused", errno=111, saddr="10.0.1.11"))
        r.write("connects", _connects(rng, comm="java", pid=4000, daddr="10.0.3.3", dport=9200,
                                      per_s=1, median_us=2000, saddr="10.0.1.11"))
        r.write("connects", _connects(rng, comm="java", pid=4000, daddr="10.0.3.3", dport=9200,
                                      per_s=1 / 30, median_us=None, outcome="timeout",
                                      errno=110, retx=6, saddr="10.0.1.11"))
        r.write("connects", _connects(rng, comm="worker", pid=2101, daddr="2001:db8::10",
                                      dport=443, per_s=1, median_us=30_000, family=6,
                                      saddr="2001:db8::11"))
        r.write("sockets", _socket_rows(pid=4000, comm="java", established=_ramp(800, 900),
                                        close_wait=_ramp(0, 300), opened=2, closed=1,
                                        fds=_ramp(3600, 3950), fd_limit=4096))
        r.set_lost({"connects": 37})
    _finish_manifest(directory, "run-web-2", kernel="6.1.0-18-cloud-amd64", status="crashed",
                     end=_iso(end - 30 * SECOND))
    return INCIDENT


def _iso(us: int) -> str:
    return _utc(us).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def write_connects(directory, rows: int, *, destinations: int = 200, processes: int = 50,
                   seconds: int = 3600, seed: int = 1, rotate_rows: int = 250_000) -> None:
    """`rows` connects over `seconds` from one host, for measuring the report's speed."""
    rng = np.random.default_rng(seed)
    dest = rng.integers(0, destinations, rows)
    proc = rng.integers(0, processes, rows)
    outcome = np.array(["established", "refused", "timeout", "error"])[
        rng.choice(4, rows, p=[0.97, 0.02, 0.005, 0.005])]
    lat = 300.0 * (1 + dest % 17) * rng.lognormal(0.0, 0.5, rows)
    columns = {
        "ts": T0 + np.sort(rng.integers(0, seconds * SECOND, rows)),
        "pid": (1000 + proc).astype(np.int32), "tid": (1000 + proc).astype(np.int32),
        "comm": np.array([f"app{i}" for i in range(processes)], dtype=object)[proc].tolist(),
        "family": np.full(rows, 4, np.int8), "saddr": ["10.0.1.10"] * rows,
        "sport": rng.integers(32768, 60999, rows).astype(np.int32),
        "daddr": np.array([f"10.1.{i // 256}.{i % 256}" for i in range(destinations)],
                          dtype=object)[dest].tolist(),
        "dport": (5000 + dest % 7).astype(np.int32),
        "latency_us": np.where(outcome == "timeout", np.nan, lat),
        "outcome": outcome.tolist(),
        "syn_retransmits": (outcome == "timeout").astype(np.int32) * 6,
    }
    import pyarrow as pa

    columns["latency_us"] = pa.array(columns["latency_us"], from_pandas=True)
    with Recording(directory, host="bench", run_id="run-bench", rotate_rows=rotate_rows,
                   options={"interval": 1.0}, start=_utc(T0)) as r:
        step = 100_000
        for i in range(0, rows, step):
            r.write("connects", {k: v[i:i + step] for k, v in columns.items()})
            r.flush()
