"""Host TCP memory (issue 18 item 2): parsing /proc the way the kernel writes
it, the states against net.ipv4.tcp_mem, counter deltas, and the same reading
in the live Overview, the `tcp_memory` table, the report and doctor."""
from __future__ import annotations

from dataclasses import replace

import pyarrow as pa

from tracer.aggregate.snapshot import TcpMemoryRow
from tracer.collector import Collector
from tracer.doctor import assess_limits
from tracer.domain import tcp_memory as tm
from tracer.probes import tcp_memory as probe
from tracer.report.summary import summarize_tables
from tracer.report.text import render_text
from tracer.sinks.table_writer import rows_to_batch
from tracer.tui.problems import find_problems

SOCKSTAT = ("sockets: used 310\nTCP: inuse 12 orphan 0 tw 3 alloc 20 mem 4096\n"
            "UDP: inuse 2 mem 1\n")
NETSTAT = ("TcpExt: SyncookiesSent PruneCalled RcvPruned OfoPruned TCPMemoryPressures "
           "TCPRcvQDrop TCPAbortOnMemory\nTcpExt: 0 7 2 1 3 40 0\n"
           "IpExt: InNoRoutes\nIpExt: 0\n")


def test_parse_proc_as_the_kernel_writes_it(tmp_path):
    (tmp_path / "net").mkdir()
    (tmp_path / "sys" / "net" / "ipv4").mkdir(parents=True)
    (tmp_path / "net" / "sockstat").write_text(SOCKSTAT)
    (tmp_path / "net" / "netstat").write_text(NETSTAT)
    (tmp_path / "sys" / "net" / "ipv4" / "tcp_mem").write_text("1000\t2000\t3000\n")
    m = probe.read(str(tmp_path))
    page = probe.PAGE_SIZE
    assert (m.used, m.low, m.pressure, m.maximum) == (4096 * page, 1000 * page, 2000 * page,
                                                      3000 * page)
    assert m.counters == {"PruneCalled": 7, "RcvPruned": 2, "OfoPruned": 1,
                          "TCPMemoryPressures": 3, "TCPRcvQDrop": 40, "TCPAbortOnMemory": 0}
    assert probe.sockstat_pages("TCP: inuse 1 mem x\n") is None
    assert probe.tcp_mem_pages("1 2") == (None, None, None)
    assert probe.read(str(tmp_path / "nowhere")).used is None


def test_states_against_tcp_mem():
    assert tm.state(100, 1000, 2000) == tm.NORMAL
    assert tm.state(800, 1000, 2000) == tm.NEAR
    assert tm.state(1001, 1000, 2000) == tm.PRESSURE
    assert tm.state(2000, 1000, 2000) == tm.LIMIT
    assert tm.state(None, 1000, 2000) is None


def test_deltas_start_at_zero_and_never_go_negative():
    assert tm.deltas({"TCPRcvQDrop": 50}, None) == {"TCPRcvQDrop": 0}
    assert tm.deltas({"TCPRcvQDrop": 55, "X": 1}, {"TCPRcvQDrop": 50}) == \
        {"TCPRcvQDrop": 5, "X": 0}
    assert tm.deltas({"TCPRcvQDrop": 3}, {"TCPRcvQDrop": 50}) == {"TCPRcvQDrop": 0}


class _Session:
    def counters(self):
        return {"lost_events": 0, "untracked_connects": 0, "decode_errors": 0}


def test_collector_reports_what_the_counters_added():
    readings = iter([tm.TcpMemory(10, 100, 200, 300, {"TCPMemoryPressures": 5, "TCPRcvQDrop": 1,
                                                      "RcvPruned": 0, "OfoPruned": 0}),
                     tm.TcpMemory(250, 100, 200, 300, {"TCPMemoryPressures": 7, "TCPRcvQDrop": 9,
                                                       "RcvPruned": 2, "OfoPruned": 1})])
    c = Collector(_Session(), [], header=None, host_view=lambda: next(readings))
    c._tcp_memory()                 # primed: history before the run is not counted
    row = c._tcp_memory()
    assert row == TcpMemoryRow(250, 100, 200, 300, memory_pressures=2, rcvq_drops=8, pruned=3)
    assert row.state == tm.PRESSURE


def test_pressure_is_a_problem_live_and_a_finding_in_the_report():
    from tests.tui.synthetic import last
    row = TcpMemoryRow(1_600_000_000, 1_180_000_000, 1_570_000_000, 2_360_000_000,
                       memory_pressures=1, rcvq_drops=12, pruned=3)
    (p,) = [p for p in find_problems(replace(last(), tcp_memory=row)) if p.kind == "TCP memory"]
    assert p.severity == "crit" and "1 entries into memory pressure" in p.detail
    ts = 1_709_262_000_000_000
    rows = [dict(ts=ts + i * 1_000_000, used_bytes=u, low_bytes=row.low_bytes,
                 pressure_bytes=row.pressure_bytes, max_bytes=row.max_bytes,
                 memory_pressures=n, rcvq_drops=d, pruned=0, aborts_on_memory=0)
            for i, (u, n, d) in enumerate([(1_000_000_000, 0, 0), (1_600_000_000, 1, 12)])]
    t = pa.Table.from_batches([rows_to_batch("tcp_memory", rows, host="h1", run_id="r1")])
    s = summarize_tables({"tcp_memory": t})
    (h,) = s.tcp_memory
    assert (h.peak_used, h.memory_pressures, h.rcvq_drops, h.peak_state) == (
        1_600_000_000, 1, 12, tm.PRESSURE)
    assert any(f.severity == "crit" and f.text == h.text for f in s.findings)
    assert h.text in render_text(s)
    quiet = t.slice(0, 1)
    (h,) = summarize_tables({"tcp_memory": quiet}).tcp_memory
    assert not h.troubled


def test_doctor_explains_tcp_mem_in_bytes_and_connections():
    (item,) = [i for i in assess_limits({"net.ipv4.tcp_mem": "100 200 300",
                                         "net.ipv4.tcp_rmem": "4096 131072 6291456"},
                                        (65536, 65536)) if i["name"] == "net.ipv4.tcp_mem"]
    page = probe.PAGE_SIZE
    assert item["status"] == "warn"             # 200 pages hold 6 default buffers, not 1,000
    assert f"{200 * page // 131072:,} connections" in item["advice"]


def test_unread_streak_counts_scans_with_data_that_never_shrinks():
    streak, before = 0, None
    for rx, want in [(0, 0), (100, 1), (100, 2), (300, 3), (200, 1), (200, 2), (0, 0)]:
        streak, before = tm.unread_streak(streak, before, rx), rx
        assert streak == want


def test_not_reading_live_and_in_the_report():
    """A server whose receive queues hold 514 kB at every scan: after
    STUCK_INTERVALS scans the live view and the report say it is not reading;
    one that drains them between scans never is."""
    from tracer.aggregate.sockets import ProcessTable, tally
    from tracer.probes.sock_diag import TcpSocket
    from tracer.sinks.recorder import socket_row
    from tracer.tui.problems import process_problem

    def scan(rx):
        s = TcpSocket(family=4, state=1, saddr="127.0.0.1", sport=80, daddr="127.0.0.1",
                      dport=40000, inode=5, uid=0, cookie=5, rqueue=rx, wqueue=0, drops=0,
                      rmem_alloc=rx, wmem_queued=0)
        return tally([s], {5: (7,)}, {7: "api"}, {}, {})
    table, rows = ProcessTable(), []
    ts = 1_709_262_000_000_000
    for i in range(tm.STUCK_INTERVALS):
        (row,) = table.update(1.0, scan(514_048), scanned_at=float(i))
        rows.append(socket_row(row, ts + i * 1_000_000))
        assert (process_problem(row) is not None) == (i + 1 >= tm.STUCK_INTERVALS)
    (row,) = table.update(1.0, scan(514_048), scanned_at=float(i))    # a reused scan: no count
    assert row.unread_intervals == tm.STUCK_INTERVALS
    p = process_problem(row)
    assert p.kind == "not reading" and "514 kB unread" in p.detail
    t = pa.Table.from_batches([rows_to_batch("sockets", rows, host="h1", run_id="r1")])
    s = summarize_tables({"sockets": t})
    (f,) = [f for f in s.findings if "not reading" in f.text]
    assert f.text == tm.not_reading_text("api (7) on h1", 514_048, tm.STUCK_INTERVALS)
    drained = [dict(r, rx_queue_bytes=(514_048 if i % 2 else 0)) for i, r in enumerate(rows)]
    t = pa.Table.from_batches([rows_to_batch("sockets", drained, host="h1", run_id="r1")])
    assert not [f for f in summarize_tables({"sockets": t}).findings if "not reading" in f.text]


def test_replay_shows_the_recorded_tcp_memory(tmp_path):
    """One reading recorded, replayed: the Overview problem is the live one."""
    from tests.tui.synthetic import last
    from tracer.aggregate.snapshot import ProcessRow
    from tracer.replay.timeline import RecordingTimeline
    from tracer.report.reader import read_recording
    from tracer.sinks.parquet_writer import Recording
    from tracer.sinks.recorder import RecordSink
    from tracer.clock import Clock

    row = TcpMemoryRow(1_600_000_000, 1_180_000_000, 1_570_000_000, 2_360_000_000,
                       memory_pressures=1, rcvq_drops=12, pruned=3)
    proc = ProcessRow(pid=7, comm="api", established=1, syn_sent=0, listen=0, close_wait=0,
                      other=0, opened_per_s=0.0, closed_per_s=0.0, fds=5, fd_limit=1024,
                      tx_queue_bytes=0, rx_queue_bytes=0, churning=False)
    snap = replace(last(), tcp_memory=row, processes=(proc,), listeners=(), destinations=(),
                   processes_connects=())
    with Recording(tmp_path, host="h1", run_id="r1") as rec:
        sink = RecordSink(rec, Clock())
        sink._interval(type("S", (), {"lost_total": 0, "evicted_by": {}})(), snap)
    timeline = RecordingTimeline(read_recording(tmp_path), tmp_path)
    replayed = timeline.snapshot(len(timeline) - 1)
    assert replayed.tcp_memory == row
    live = [p for p in find_problems(snap) if p.kind == "TCP memory"]
    again = [p for p in find_problems(replayed) if p.kind == "TCP memory"]
    assert live == again and live
