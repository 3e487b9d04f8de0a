"""Bounds of the per-process and per-listener tables, and where evictions
are shown: the collector's Status, record's status line, --plain's header,
the TUI health line and the run manifest."""
import io
import json

from tracer.aggregate.listeners import ListenerTable
from tracer.aggregate.sockets import OTHER_PID, Holding, ProcessTable
from tracer.collector import Status
from tracer.events import Accept, Close
from tests.unit.test_listener_table import NS, Diag


# ----------------------------------------------------------------- processes

def test_flows_past_the_cap_are_summed_into_one_other_flow():
    t = ProcessTable(max_flows=3)
    opened = 0
    for port in range(1, 8):
        for _ in range(port):
            t.opened(100 + port % 2, "client", (4, "10.0.0.9", port))
            opened += 1
    rows = {r.pid: r for r in t.update(1.0, {})}
    assert t._n_flows == 4 and len(t._flows) == 3      # 3 flows + the "other" flow
    assert t.evicted == {"flows": 4 + 5 + 6 + 7, "process rows": 0}
    other = rows[OTHER_PID]
    assert other.comm == "other"
    assert [(a.destination, a.arrival_per_s) for a in other.advice] == [("other", 22.0)]
    # every open is counted for its own process, and in exactly one flow
    assert sum(r.opened for r in rows.values()) == opened
    flows = [a.arrival_per_s for r in rows.values() for a in r.advice]
    assert sum(flows) == opened


def test_flows_expire_and_free_their_room():
    t = ProcessTable(max_flows=2)
    t.opened(1, "a", (4, "10.0.0.1", 1))
    t.opened(1, "a", (4, "10.0.0.1", 2))
    t.update(1.0, {})
    for _ in range(30):          # WINDOW intervals with nothing: forgotten
        t.update(1.0, {})
    assert t._n_flows == 0 and t._flows == {} and t._comm == {}
    t.opened(2, "b", (4, "10.0.0.1", 3))
    (r,) = t.update(1.0, {})
    assert r.pid == 2 and r.advice[0].destination == "10.0.0.1:3"
    assert t.evicted["flows"] == 0


def test_process_rows_past_the_cap_keep_the_busiest_and_sum_the_rest():
    t = ProcessTable(max_processes=3)
    holdings = {pid: Holding(f"p{pid}", established=pid) for pid in range(1, 6)}
    for pid in range(10, 20):      # short-lived processes: one connect each, no sockets left
        t.opened(pid, f"q{pid}", None)
        t.closed(Close(ts_ns=6000, ts_open_ns=1000, pid=pid, family=4, raddr="10.0.0.1",
                       rport=80, passive=True))
    rows = {r.pid: r for r in t.update(1.0, holdings)}
    assert set(rows) == {5, 4, OTHER_PID}
    other = rows[OTHER_PID]
    assert other.comm == "other"
    assert other.established == 1 + 2 + 3
    assert (other.opened, other.closed) == (10, 10)
    assert t.evicted["process rows"] == 13
    assert sum(r.established for r in rows.values()) == 15
    assert len(t._comm) == 0       # names of processes with no flow are not kept


# ----------------------------------------------------------------- listeners

def accept(port, laddr="127.0.0.1"):
    return Accept(ts_ns=2, ts_handshake_ns=1, pid=42, tid=42, comm="srv", family=4,
                  laddr=laddr, lport=port, raddr="127.0.0.1", rport=50000,
                  backlog_len=1, backlog_max=8, netns=NS)


def test_listeners_past_the_cap_are_summed_into_other_and_counted():
    t = ListenerTable(drop_points_hooked=False, max_listeners=2)
    diag = [(NS, Diag(4, "127.0.0.1", 8000 + i, rqueue=i, wqueue=8, drops=0, inode=i))
            for i in range(5)]
    t.prime(diag, [])
    for i in range(5):
        t.add_accept(accept(8000 + i))
    rows = {r.label: r for r in t.update(1.0, diag)}
    assert set(rows) == {"127.0.0.1:8000", "127.0.0.1:8001", "other"}
    other = rows["other"]
    assert (other.queue_len, other.backlog_max, other.accepts) == (2 + 3 + 4, 24, 3)
    assert sum(r.accepts for r in rows.values()) == 5
    assert t.evicted == {"listener rows": 3}
    assert len(t._by_key) == 2
    # one closes: reported a last time, and a folded listener gets its room
    # in the interval after
    rows = {r.label for r in t.update(1.0, diag[1:])}
    assert rows == {"127.0.0.1:8000", "127.0.0.1:8001", "other"}
    rows = {r.label for r in t.update(1.0, diag[1:])}
    assert rows == {"127.0.0.1:8001", "127.0.0.1:8002", "other"}


# ----------------------------------------------------------------- shown

def status(**evicted):
    return Status(elapsed_s=12.0, events_total=345, events_per_s=28.7, lost_events=0,
                  untracked_connects=0, decode_errors=0, inflight=0, evicted_by=evicted)


def test_status_line_and_plain_header_show_evictions():
    from tracer.aggregate.snapshot import Snapshot
    from tracer.sinks.console import StatusLineSink, format_table
    from tests.tui.synthetic import HEADER

    s = status(destinations=900, processes=0, flows=3)
    assert s.evicted == 903
    out = io.StringIO()
    StatusLineSink(every_s=0, stream=out).on_interval(s, None)
    assert "evicted into 'other': destinations 900, flows 3" in out.getvalue()
    snap = Snapshot(ts_us=0, interval_s=1.0, header=HEADER, events_total=0, events_per_s=0.0,
                    lost_events=0, evicted=903)
    assert "evicted into 'other': destinations 900, flows 3" in format_table(s, snap)
    assert "evicted" not in format_table(status(destinations=0), snap)


def test_tui_health_line_shows_evictions():
    from dataclasses import replace

    from tracer.tui.status import health_line
    from tests.tui.synthetic import HEADER, scenario

    snap = scenario(3)[-1]
    assert "evicted" not in health_line(HEADER, snap).plain
    assert "1,234 rows evicted into 'other'" in health_line(HEADER, replace(snap, evicted=1234)).plain


def test_manifest_keeps_the_evictions(tmp_path):
    from datetime import datetime, timezone

    from tracer.sinks.parquet_writer import Recording

    rec = Recording(tmp_path / "rec", host="h", run_id="r1", backend="tracepoint",
                    version="0", options={}, start=datetime.now(timezone.utc))
    rec.set_evicted({"destinations": 7, "processes": 0})
    assert rec.status()["evicted"] == {"destinations": 7, "processes": 0}
    rec.close()
    m = json.loads((tmp_path / "rec" / "runs" / "r1.json").read_text())
    assert m["evicted"] == {"destinations": 7, "processes": 0}
