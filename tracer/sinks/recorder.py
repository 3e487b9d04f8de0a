"""Events and interval state as rows of the Parquet tables (tracer/schema.py)."""
from __future__ import annotations

from tracer.clock import Clock
from tracer.events import Connect


def connect_row(ev: Connect, clock: Clock, host: str, run_id: str) -> dict:
    return {
        "ts": clock.wall_us(ev.ts_start_ns),   # SPEC: when connect() was called
        "host": host,
        "run_id": run_id,
        "pid": ev.pid,
        "tid": ev.tid,
        "comm": ev.comm,
        "family": ev.family,
        "saddr": ev.saddr,
        "sport": ev.sport,
        "daddr": ev.daddr,
        "dport": ev.dport,
        "latency_us": ev.latency_us,
        "outcome": ev.outcome,
        "syn_retransmits": ev.syn_retransmits,
        "errno": ev.err if ev.outcome != "established" else None,
    }


class RecordSink:
    """Feeds a tracer.sinks.parquet_writer.Recording."""

    def __init__(self, recording, clock: Clock, host: str, run_id: str):
        self.recording = recording
        self.clock = clock
        self.host = host
        self.run_id = run_id

    def on_events(self, events) -> None:
        rows = [connect_row(ev, self.clock, self.host, self.run_id)
                for ev in events if isinstance(ev, Connect)]
        if rows:
            self.recording.write("connects", rows)

    def on_interval(self, status, connects) -> None:
        self.recording.set_lost({"connects": status.lost_total})
        self.recording.flush()

    def close(self, status) -> None:
        self.recording.set_lost({"connects": status.lost_total})
        self.recording.close()
