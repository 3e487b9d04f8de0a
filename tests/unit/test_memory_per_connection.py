"""Memory per connection (tracer/domain/memory.py): the arithmetic by hand,
the projection and its finding, and one figure for the same data in the live
rows, the `sockets` table (recorder -> replay) and the report."""
from __future__ import annotations


import pyarrow as pa
import pytest

from tracer.aggregate.sockets import ProcessTable, tally
from tracer.domain import memory as mem
from tracer.probes.sock_diag import TcpSocket
from tracer.replay.rows import process_rows
from tracer.report.summary import summarize_tables
from tracer.report.text import render_text
from tracer.sinks.recorder import socket_row
from tracer.sinks.table_writer import rows_to_batch
from tracer.tui.problems import find_problems, process_problem

MB = 1_000_000
GB = 1_000_000_000


def test_connections_are_every_tcp_socket_but_listeners():
    assert mem.connections(established=10, syn_sent=2, close_wait=3, other=4) == 19
    assert mem.connections(None, None, None, None) == 0


def test_per_connection_by_hand():
    assert mem.per_connection(420 * MB, 200) == 2.1 * MB
    assert mem.per_connection(420 * MB, 0) is None          # nothing to divide by
    assert mem.per_connection(None, 10) is None             # memory unknown
    assert mem.per_connection(0, 10) is None                # a zombie, a kernel thread


def test_size_is_decimal_with_three_figures():
    assert [mem.size(n) for n in (812, 5_100, 2_100_000, 512_000_000, 5_100_000_000, None)] == \
        ["812 B", "5.10 kB", "2.10 MB", "512 MB", "5.10 GB", "-"]
    assert mem.size(999_600) == "1.00 MB"     # rounds up into the next unit, never "1000 kB"


def test_the_sentence_of_the_issue():
    assert mem.holds("api", 1_000, 5.1 * MB) == "api holds 1,000 connections at 5.10 MB each: 5.10 GB"
    assert mem.holds("api", 1, None) == "api holds 1 connection"


def test_available_is_the_cgroup_limit_when_below_the_host():
    assert mem.available(1 * GB, 24 * GB) == (1 * GB, mem.CGROUP)
    assert mem.available(None, 24 * GB) == (24 * GB, mem.HOST)
    assert mem.available(64 * GB, 24 * GB) == (24 * GB, mem.HOST)   # a limit above RAM is none
    assert mem.available(None, None) == (None, mem.HOST)


def test_projection_to_1000_against_a_cgroup_limit():
    # 200 connections, 420 MB resident: 2.1 MB each; 1,000 need 2.1 GB, plus
    # the 80 MB the rest of the cgroup uses (500 - 420): 2.18 GB > 1 GB
    p = mem.projection(420 * MB, 200, backlog=128, cgroup_bytes=500 * MB, cgroup_limit=1 * GB,
                       mem_total=24 * GB)
    assert (p.target, p.others, p.available, p.source) == (1000, 80 * MB, 1 * GB, mem.CGROUP)
    assert p.projected == pytest.approx(2.1 * GB + 80 * MB)
    assert p.severity == "crit"
    assert p.text("api") == ("api holds 200 connections at 2.10 MB each: 420 MB; 1,000 would "
                             "need 2.18 GB (with 80.0 MB the rest of its cgroup uses), more "
                             "than the 1.00 GB its cgroup allows")


def test_projection_to_a_backlog_larger_than_1000():
    # 4,096 backlog, 100 kB each: 410 MB of 24 GB (host): fine
    p = mem.projection(10 * MB, 100, backlog=4096, mem_total=24 * GB)
    assert p.target == 4096 and p.projected == pytest.approx(409.6 * MB)
    assert p.source == mem.HOST and p.severity is None
    # 5 MB each: 20.5 GB of 24 GB, 85 %: warn
    p = mem.projection(500 * MB, 100, backlog=4096, mem_total=24 * GB)
    assert p.severity == "warn" and "85% of the 24.0 GB the host has (MemTotal)" in p.text("x")


def test_no_projection_from_a_baseline_or_beyond_the_target():
    # 49 connections: the average is mostly the process's baseline
    assert mem.projection(4 * GB, mem.MIN_CONNECTIONS - 1, mem_total=1 * GB) is None
    assert mem.projection(4 * GB, 1000, mem_total=1 * GB) is None        # already there
    assert mem.projection(None, 200, mem_total=1 * GB) is None
    assert mem.projection(400 * MB, 200) is None                          # nothing to compare


def _sock(state, sport, dport, inode, wqueue=0):
    return TcpSocket(family=4, state=state, saddr="127.0.0.1", sport=sport, daddr="127.0.0.1",
                     dport=dport, inode=inode, uid=0, cookie=inode, rqueue=0, wqueue=wqueue,
                     drops=None, rmem_alloc=None, wmem_queued=None)


def _live_rows():
    """A server (pid 7) with a listener of backlog 128 and 200 accepted
    connections, 420 MB resident in a cgroup using 500 MB of 1 GB."""
    socks = [_sock(10, 8080, 0, 1, wqueue=128)]
    socks += [_sock(1, 8080, 40000 + i, 100 + i) for i in range(200)]
    holders = {s.inode: (7,) for s in socks}
    holdings = tally(socks, holders, {7: "api"}, {7: 210}, {7: 1024},
                     memory={7: (420 * MB, 500 * MB, 1 * GB)}, mem_total=24 * GB)
    return ProcessTable().update(1.0, holdings, scanned_at=1.0)


def test_live_rows_carry_memory_and_the_listener_backlog():
    (row,) = _live_rows()
    assert (row.connections, row.listen_backlog, row.rss_bytes) == (200, 128, 420 * MB)
    assert (row.memory_limit_bytes, row.memory_limit_from) == (1 * GB, "cgroup")
    assert row.memory_per_connection == 2.1 * MB
    p = process_problem(row)
    assert p.severity == "crit" and p.kind == "memory per connection"
    assert "1,000 would need 2.18 GB" in p.detail


def test_one_figure_live_replay_and_report():
    """The same interval shown live, written to the `sockets` table, read back
    by replay and summarized by the report: one memory per connection, one
    projection, one finding."""
    (live,) = _live_rows()
    ts = 1_709_262_000_000_000
    row = socket_row(live, ts)
    table = pa.Table.from_batches([rows_to_batch("sockets", [row], host="h1", run_id="r1")])
    assert table.column("memory_per_connection_bytes").to_pylist() == [2.1 * MB]
    (replayed,) = process_rows(table.to_pylist(), [], 1.0)
    assert replayed.memory_per_connection == live.memory_per_connection
    assert replayed.memory_projection() == live.memory_projection()
    s = summarize_tables({"sockets": table})
    (p,) = s.by_sockets
    assert p.memory_per_connection == live.memory_per_connection
    assert p.memory_projection == live.memory_projection()
    text = render_text(s)
    assert "api (7) on h1 holds 200 connections at 2.10 MB each: 420 MB" in text
    from tracer.report.html import render_html
    assert "<td class=\"bad\">1,000: 2.18 GB of 1.00 GB (218%, cgroup)</td>" in render_html(s, "")
    from tracer.sinks.console import format_process
    assert "2.10 MB" in format_process(live)
    (finding,) = [f for f in s.findings if "would need" in f.text]
    assert finding.severity == "crit" and finding.text == live.memory_projection().text(p.label)
    # the live Overview lists it too
    from tests.tui.synthetic import last
    from dataclasses import replace
    snap = replace(last(), processes=(live,))
    assert any(pr.kind == "memory per connection" for pr in find_problems(snap))


def test_report_reads_memory_where_the_most_connections_were_held():
    ts = 1_709_262_000_000_000
    base = dict(pid=7, comm="api", syn_sent=0, listen=1, close_wait=0, other=0, opened=0,
                closed=0, fds=10, fd_limit=1024, tx_queue_bytes=0, rx_queue_bytes=0,
                memory_limit_bytes=24 * GB, memory_limit_from="host", listen_backlog=128)
    rows = [dict(base, ts=ts, established=10, rss_bytes=60 * MB),
            dict(base, ts=ts + 1_000_000, established=300, rss_bytes=660 * MB),
            dict(base, ts=ts + 2_000_000, established=300, rss_bytes=690 * MB),   # latest of equals
            dict(base, ts=ts + 3_000_000, established=20, rss_bytes=None)]
    table = pa.Table.from_batches([rows_to_batch("sockets", rows, host="h1", run_id="r1")])
    (p,) = summarize_tables({"sockets": table}).by_sockets
    assert (p.connections, p.memory_per_connection) == (300, 2.3 * MB)
    # 2.3 MB x 1,000 = 2.3 GB of 24 GB: no finding
    assert p.memory_projection.severity is None


def test_old_recordings_without_memory_columns_report_none():
    ts = 1_709_262_000_000_000
    row = dict(ts=ts, pid=7, comm="api", established=300, syn_sent=0, listen=1, close_wait=0,
               other=0, opened=0, closed=0, fds=10, fd_limit=1024, tx_queue_bytes=0,
               rx_queue_bytes=0)
    table = pa.Table.from_batches([rows_to_batch("sockets", [row], host="h1", run_id="r1")])
    (p,) = summarize_tables({"sockets": table}).by_sockets
    assert p.memory_per_connection is None and p.memory_projection is None
    assert "no resident memory recorded" in render_text(summarize_tables({"sockets": table}))


def test_socket_memory_is_summed_per_process_and_recorded():
    """skmem r and w of a process's TCP sockets (listeners left out), summed;
    None where the kernel gave no meminfo; through the table and replay."""
    def sock(state, inode, r, w):
        return TcpSocket(family=4, state=state, saddr="127.0.0.1", sport=8080, daddr="127.0.0.1",
                         dport=40000 + inode, inode=inode, uid=0, cookie=inode, rqueue=r // 2,
                         wqueue=0, drops=0, rmem_alloc=r, wmem_queued=w)
    socks = [sock(10, 1, 999, 999), sock(1, 2, 4096, 0), sock(1, 3, 8192, 1280),
             sock(8, 4, 0, 512)]
    holdings = tally(socks, {s.inode: (7,) for s in socks}, {7: "api"}, {}, {})
    (row,) = ProcessTable().update(1.0, holdings, scanned_at=1.0)
    assert (row.socket_rmem_bytes, row.socket_wmem_bytes) == (12288, 1792)
    table = pa.Table.from_batches([rows_to_batch("sockets", [socket_row(row, 1)], host="h",
                                                 run_id="r")])
    (back,) = process_rows(table.to_pylist(), [], 1.0)
    assert (back.socket_rmem_bytes, back.socket_wmem_bytes) == (12288, 1792)
    no_meminfo = [s._replace(rmem_alloc=None, wmem_queued=None)
                  for s in socks]
    (row,) = ProcessTable().update(1.0, tally(no_meminfo, {s.inode: (7,) for s in socks},
                                              {7: "api"}, {}, {}), scanned_at=1.0)
    assert (row.socket_rmem_bytes, row.socket_wmem_bytes) == (None, None)
