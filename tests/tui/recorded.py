"""A small recording written with the real Parquet sink (tracer.sinks.parquet_writer.Recording)
from synthetic rows, and the Connect events it holds, for replay tests.

Timeline (interval 1 s, run start T0): a healthy API all along, a database
that answers slowly in interval SPIKE, a cache that refuses some connects,
and a web listener that drops connections in intervals 8-10, worst in DROP_PEAK.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from tracer.clock import Clock
from tracer.events import Connect
from tracer.sinks.parquet_writer import Recording
from tracer.sinks.recorder import connect_row

T0_US = 1_767_225_600_000_000          # 2026-01-01 00:00:00 UTC
INTERVAL_US = 1_000_000
INTERVALS = 20
SPIKE = 12
DROP_PEAK = 9
DROPS = {8: 10, 9: 40, 10: 5}
HOST = "rec-host"
RUN_ID = "run-1"


MONO0_NS = 50_000_000_000            # the recorder's CLOCK_MONOTONIC at T0


def clock() -> Clock:
    """The recorder's clock, pinned: monotonic MONO0_NS is wall time T0."""
    c = Clock()
    c.offset_ns = T0_US * 1000 - MONO0_NS
    return c


def connect_events(intervals: int = INTERVALS) -> list[list[Connect]]:
    """The Connect events the live collector saw, by interval of connect() time."""
    out = []
    for i in range(intervals):
        base = MONO0_NS + i * INTERVAL_US * 1000
        evs = []
        for k in range(10):
            evs.append(_connect(base + 1_000_000 + k * 90_000_000, 100, "api", "10.0.0.30", 443,
                                300_000 + 10_000 * k, "established"))
        lat_ns = 1_200_000_000 if i == SPIKE else 3_000_000 + 100_000 * (i % 5)
        evs.append(_connect(base + 500_000_000, 200, "orders", "10.0.0.10", 5432, lat_ns,
                            "established", rtx=1 if i == SPIKE else 0))
        if i % 4 == 0:
            evs.append(_connect(base + 700_000_000, 200, "orders", "10.0.0.20", 6379, 90_000,
                                "refused", err=111))
        if i == 15:
            evs.append(_connect(base + 100_000, 200, "orders", "fd00::9", 80, 127_000_000_000,
                                "timeout", err=110, rtx=5, family=6))
        out.append(evs)
    return out


def _connect(t_ns, pid, comm, daddr, dport, latency_ns, outcome, *, rtx=0, err=0, family=4):
    return Connect(ts_start_ns=t_ns, ts_end_ns=t_ns + latency_ns, pid=pid, tid=pid, comm=comm,
                   family=family, saddr="10.0.0.2" if family == 4 else "fd00::2", sport=40_000,
                   daddr=daddr, dport=dport, outcome=outcome, err=err, syn_retransmits=rtx)


def connect_rows(intervals: int = INTERVALS, run_id: str = RUN_ID) -> list[dict]:
    """The rows the recorder wrote for those events (tracer.sinks.recorder.connect_row)."""
    c = clock()
    return [{**connect_row(ev, c), "host": HOST, "run_id": run_id}
            for evs in connect_events(intervals) for ev in evs]


def _shifted(rows: list[dict], shift_us: int) -> list[dict]:
    return [{**r, "ts": r["ts"] + shift_us} for r in rows]


def interval_rows(intervals: int = INTERVALS, run_id: str = RUN_ID) -> dict[str, list[dict]]:
    listeners, overflows, sockets, accepts = [], [], [], []
    total = 0
    for i in range(intervals):
        end = T0_US + (i + 1) * INTERVAL_US
        drops = DROPS.get(i, 0)
        total += drops
        common = {"ts": end, "host": HOST, "run_id": run_id}
        listeners.append({**common, "family": 4, "laddr": "0.0.0.0", "lport": 8080, "pid": 812,
                          "comm": "nginx", "backlog_max": 128,
                          "queue_len": 128 if drops else 3, "queue_peak": 128 if drops else 9,
                          "overflows_total": total, "syn_queue_len": 4, "drops": drops,
                          "accepts": 50, "accept_wait_p99_us": 900.0})
        if drops:
            overflows.append({**common, "family": 4, "laddr": "0.0.0.0", "lport": 8080,
                              "pid": 812, "comm": "nginx", "drops": drops, "syn_drops": 2,
                              "backlog_max": 128, "backlog_peak": 128, "interval_s": 1.0,
                              "synack_retransmits": 1})
        sockets.append({**common, "pid": 200, "comm": "orders", "established": 5, "syn_sent": 0,
                        "listen": 0, "close_wait": 0, "other": 1, "opened": 12, "closed": 12,
                        "fds": 40 + i, "fd_limit": 1024, "tx_queue_bytes": 0,
                        "rx_queue_bytes": 0})
        for k in range(3):
            accepts.append({"ts": end - 500_000 + k, "host": HOST, "run_id": run_id, "pid": 812,
                            "comm": "nginx", "family": 4, "laddr": "0.0.0.0", "lport": 8080,
                            "raddr": "10.0.0.99", "rport": 50_000 + k,
                            "queue_wait_us": 100.0 * (k + 1), "backlog_len": k,
                            "backlog_max": 128})
    return {"listeners": listeners, "overflows": overflows, "sockets": sockets,
            "accepts": accepts}


def write_recording(directory, *, intervals: int = INTERVALS, with_interval_tables: bool = True,
                    kernel: str = "6.18.0-test", run_id: str = RUN_ID,
                    start_us: int = T0_US) -> Path:
    """Write the recording; the manifest's kernel is fixed so screens are reproducible.
    `start_us` shifts every timestamp (a second run in the same directory)."""
    directory = Path(directory)
    shift = start_us - T0_US
    start = datetime.fromtimestamp(start_us / 1e6, timezone.utc)
    with Recording(directory, host=HOST, run_id=run_id, backend="tracepoint",
                   options={"interval": 1.0}, start=start) as rec:
        rec.write("connects", _shifted(connect_rows(intervals, run_id), shift))
        if with_interval_tables:
            for table, rows in interval_rows(intervals, run_id).items():
                if rows:
                    rec.write(table, _shifted(rows, shift))
    manifest = directory / "runs" / f"{run_id}.json"
    m = json.loads(manifest.read_text())
    m["kernel"] = kernel
    manifest.write_text(json.dumps(m))
    return directory


