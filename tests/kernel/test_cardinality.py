"""Hostile cardinality on the running kernel: an unprivileged process makes
real refused connects to more distinct loopback destinations than the
(lowered) table bound. The evictions must be counted and shown, the "other"
row must hold the rest, and the recording must still have one connects row
per connect the process made (its own count)."""
import io
import json
import subprocess
import threading
import time

import pyarrow.compute as pc
import pyarrow.dataset as ds
import pytest

from tests.kernel.conftest import discard_pending

pytestmark = pytest.mark.kernel

DESTINATIONS = 400
CAP = 50
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]

# Bounded (count and time), loopback only; counts its own connect() calls.
FLOOD = r"""
import json, socket, sys, time
n, ports = int(sys.argv[1]), json.loads(sys.argv[2])
out = {"attempts": 0, "refused": 0, "other": 0}
end = time.monotonic() + 30
for i in range(n):
    if time.monotonic() > end:
        break
    h, p = divmod(i, len(ports))
    s = socket.socket()
    try:
        out["attempts"] += 1
        s.connect((f"127.{1 + (h >> 16) % 254}.{(h >> 8) & 255}.{h & 255}", ports[p]))
        out["other"] += 1
    except ConnectionRefusedError:
        out["refused"] += 1
    except OSError:
        out["other"] += 1
    finally:
        s.close()
print(json.dumps(out), flush=True)
"""


def closed_ports(n=20):
    """Ports below 1024 nothing listens on (only root could start a listener there)."""
    out = subprocess.run(["ss", "-ltnH"], capture_output=True, text=True, timeout=10).stdout
    used = {int(line.split()[3].rsplit(":", 1)[1]) for line in out.splitlines()}
    return [p for p in range(600, 1024) if p not in used][:n]


class Seen:
    def __init__(self):
        self.connects = 0
        self.status = self.snapshot = None

    def on_events(self, events):
        from tracer.events import Connect
        self.connects += sum(type(e) is Connect for e in events)

    def on_interval(self, status, snapshot):
        self.status, self.snapshot = status, snapshot

    close = on_interval


def test_more_destinations_than_the_cap_are_counted_shown_and_recorded(probe_session, tmp_path):
    from tracer.clock import Clock
    from tracer.collector import Collector
    from tracer.run import header_for, kernel_view
    from tracer.sinks.console import StatusLineSink
    from tracer.sinks.parquet_writer import Recording
    from tracer.sinks.recorder import RecordSink

    discard_pending(probe_session)
    clock = Clock()
    out = tmp_path / "rec"
    recording = Recording(out, host="test", run_id="cardinality", backend="tracepoint",
                          version="test", options={})
    status_lines, seen = io.StringIO(), Seen()
    sinks = [RecordSink(recording, clock),
             StatusLineSink(every_s=0, stream=status_lines, recording_status=recording.status),
             seen]
    collector = Collector(probe_session, sinks, 0.5, header=header_for(probe_session),
                          clock=clock, kernel_view=kernel_view(), limits={"max_keys": CAP, "max_edges": CAP})
    stop = threading.Event()
    thread = threading.Thread(target=collector.run, args=(stop.is_set,))
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not collector.primed and time.monotonic() < deadline:
            time.sleep(0.01)
        flood = subprocess.run([*NOBODY, "/usr/bin/python3", "-I", "-c", FLOOD,
                                str(DESTINATIONS), json.dumps(closed_ports())],
                               capture_output=True, text=True, timeout=60, cwd="/")
        pid_hint = flood.stdout
        time.sleep(1.5)   # the flood's last events are read and an interval closes
    finally:
        stop.set()
        thread.join(30)
    assert flood.returncode == 0, flood.stderr
    made = json.loads(pid_hint.strip().splitlines()[-1])
    assert made["attempts"] == made["refused"] == DESTINATIONS

    # the recording: one row per connect the process made, all refused
    t = ds.dataset(str(out / "connects"), format="parquet", partitioning="hive").to_table(
        columns=["pid", "comm", "daddr", "dport", "outcome"])
    mine = t.filter(pc.starts_with(t["daddr"], "127.")).filter(
        pc.not_equal(t["daddr"], "127.0.0.1"))
    flood_pids = set(mine.column("pid").to_pylist())
    assert len(flood_pids) == 1
    assert mine.num_rows == made["attempts"]
    assert mine.column("outcome").to_pylist().count("refused") == made["refused"]

    # the live view: bounded, the rest in "other", rows add up to every connect seen
    snap, status = seen.snapshot, seen.status
    rows = snap.destinations
    assert len(rows) <= CAP + 1
    other = [r for r in rows if r.label == "other"]
    assert len(other) == 1 and other[0].refused >= DESTINATIONS - CAP
    assert sum(r.attempts for r in rows) == seen.connects >= DESTINATIONS
    assert sum(r.attempts for r in snap.processes_connects) == seen.connects

    # evictions: counted, and shown like lost events
    evicted = status.evicted_by["destinations"]
    assert evicted >= DESTINATIONS - CAP and snap.evicted == status.evicted
    assert f"evicted into 'other': destinations {evicted}" in status_lines.getvalue()
    assert any(n.kind == "evicted" for n in snap.notable)
    manifest = json.loads((out / "runs" / "cardinality.json").read_text())
    assert manifest["evicted"]["destinations"] == evicted
    # the connection map too: one edge per destination, bounded per interval,
    # the rest in "other" (with anything else over the bound), every connect kept
    edges = ds.dataset(str(out / "edges"), format="parquet", partitioning="hive").to_table(
        columns=["ts", "pid", "comm", "refused"])
    per_interval = edges.group_by("ts").aggregate([("comm", "count")])
    assert max(per_interval.column("comm_count").to_pylist()) <= CAP + 1
    (pid,) = flood_pids
    flood = edges.filter(pc.equal(edges["pid"], pid))
    other = edges.filter(pc.equal(edges["comm"], "other"))
    assert sum(flood.column("refused").to_pylist()) + \
        sum(other.column("refused").to_pylist()) >= DESTINATIONS
    intervals = len(set(flood.column("ts").to_pylist()))
    assert status.evicted_by["edges"] >= DESTINATIONS - CAP * intervals
    assert manifest["evicted"]["edges"] == status.evicted_by["edges"]
    assert manifest["status"] == "complete"
    assert status.lost_total == 0
