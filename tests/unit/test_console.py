"""Plain console output: units, worst-first ordering, and the table's markers."""

from __future__ import annotations

from dataclasses import replace

import pytest

from tracer.aggregate.connects import ConnectRow, ConnectTable
from tracer.aggregate.snapshot import Header, ListenerRow, Snapshot
from tracer.collector import Status
from tracer.domain.durations import duration
from tracer.events import Connect
from tracer.sinks.console import (HEADER, LISTENER_HEADER, PROCESS_HEADER, fmt_us, format_table,
                                  rank)


def test_console_writes_durations_as_everywhere_else():
    # the cases are in test_domain_format.py
    assert fmt_us is duration


def row(label, refused=0, timeout=0, error=0, syn=0, p99=None, attempts=10):
    return ConnectRow(key=(4, label, 80), label=label, attempts=attempts, rate=1.0,
                      established=attempts - refused - timeout - error, refused=refused,
                      timeout=timeout, error=error, syn_retransmits=syn, p50_us=p99, p95_us=p99,
                      p99_us=p99, max_us=p99, p99_history=())


def test_rank_failures_then_syn_retransmits_then_p99():
    rows = [
        row("fast", p99=100.0),
        row("no-latency", p99=None),
        row("slow", p99=900_000.0),
        row("retransmits", syn=50, p99=3_000_000.0),
        row("one-refused", refused=1, p99=50.0),
        row("timeout+error", timeout=1, error=1),
        row("more-retransmits", syn=51, p99=10.0),
    ]
    assert [r.label for r in rank(rows)] == [
        "timeout+error", "one-refused", "more-retransmits", "retransmits", "slow", "fast",
        "no-latency"]


def test_rank_breaks_ties_by_attempts():
    assert [r.label for r in rank([row("few", attempts=2), row("many", attempts=200)])] == [
        "many", "few"]


def status(lost_events=0, untracked=0, decode_errors=0):
    return Status(elapsed_s=12.0, events_total=345, events_per_s=28.7, lost_events=lost_events,
                  untracked_connects=untracked, decode_errors=decode_errors, inflight=3)


def connect(daddr, outcome="established", latency_us=800.0):
    return Connect(ts_start_ns=10**9, ts_end_ns=10**9 + int(latency_us * 1000), pid=7, tid=7,
                   comm="app", family=4, saddr="127.0.0.1", sport=50000, daddr=daddr, dport=5432,
                   outcome=outcome, err=0, syn_retransmits=0)


def snap(table: ConnectTable | None = None, listeners=()) -> Snapshot:
    return Snapshot(ts_us=0, interval_s=1.0, header=Header("h", "k", "tracepoint"),
                    events_total=0, events_per_s=0.0, lost_events=0,
                    destinations=tuple(table.by_destination()) if table else (),
                    listeners=tuple(listeners))


def test_empty_table():
    out = format_table(status(), snap())
    lines = out.splitlines()
    assert "events 345 (29/s over 1s)" in lines[0]
    assert "in-flight connects 3" in lines[0]
    assert "EVENTS LOST" not in out
    assert lines[1] == "PROBLEMS: none seen"
    start = lines.index(HEADER)
    assert lines[start + 1] == "(no connects yet)"
    # every view of the TUI is there, each saying it is empty
    assert lines[lines.index(LISTENER_HEADER) + 1] == "(no listeners yet)"
    assert lines[lines.index(PROCESS_HEADER) + 1] == "(no processes yet)"


@pytest.mark.parametrize("kw", [{"lost_events": 1}, {"untracked": 2}, {"decode_errors": 5}])
def test_lost_events_are_flagged(kw):
    st = status(**kw)
    first = format_table(st, snap()).splitlines()[0]
    assert f"lost {st.lost_total}  <-- EVENTS LOST" in first


def test_rows_worst_first_and_limited():
    t = ConnectTable()
    for i in range(20):
        t.add(connect(f"127.0.0.{i + 1}", latency_us=100.0 + i))
    t.add(connect("127.0.0.99", outcome="refused"))
    t.roll(1.0)
    lines = format_table(status(), snap(t), limit=15).splitlines()
    lines = lines[lines.index(HEADER) - 1:lines.index(LISTENER_HEADER) - 1]
    assert lines[2].startswith("127.0.0.99:5432 ")
    assert len(lines) == 2 + 15 + 1
    assert lines[-1] == "... 6 more destinations"
    assert "(no connects yet)" not in lines
    # then by p99: 127.0.0.20 had the slowest established connect
    assert lines[3].split()[0] == "127.0.0.20:5432"
    assert lines[3].split()[-2] == "119µs"   # max, then the pending column
    assert lines[3].split()[-1] == "-"


def listener(port, drops_per_s=0.0, drops_total=0, peak=1, backlog=128):
    return ListenerRow(family=4, laddr="0.0.0.0", lport=port, pid=42, comm="nginx",
                       backlog_max=backlog, queue_len=peak, queue_peak=peak, syn_queue_len=0,
                       drops=int(drops_per_s), syn_drops=0, drops_total=drops_total,
                       drops_per_s=drops_per_s, accepts=3, accept_wait_p50_us=50.0,
                       accept_wait_p99_us=2_000_000.0, synack_retransmits=0)


def test_listeners_dropping_now_come_first():
    rows = [listener(80, peak=100), listener(443, drops_per_s=12.0, drops_total=12),
            listener(8080, drops_total=5)]
    lines = format_table(status(), snap(listeners=rows)).splitlines()
    start = lines.index(LISTENER_HEADER)
    order = [line.split()[0] for line in lines[start + 1:start + 4]]
    assert order == ["0.0.0.0:443", "0.0.0.0:8080", "0.0.0.0:80"]
    assert "nginx[42]" in lines[start + 1]
    assert "2.00s" in lines[start + 1]   # accept wait p99


def test_destination_with_connects_stuck_shows_first():
    t = ConnectTable()
    t.add(connect("127.0.0.5", latency_us=900_000.0))
    t.roll(1.0)
    t.set_pending({(4, "10.0.0.9", 443): (37, 4.2)})
    lines = format_table(status(), snap(t)).splitlines()
    first = lines[lines.index(HEADER) + 1]
    assert first.split()[0] == "10.0.0.9:443"
    assert first.endswith("37 (4.2s)")


def test_probe_runs_skipped_by_the_kernel_are_shown_not_hidden():
    from tracer.sinks.console import StatusLineSink

    quiet = status()
    skipped = Status(elapsed_s=12.0, events_total=345, events_per_s=28.7, lost_events=0,
                     untracked_connects=0, decode_errors=0, inflight=3, missed_runs=17,
                     missed_by={"tracepoint__sock__inet_sock_set_state": 15,
                                "tracepoint__tcp__tcp_destroy_sock": 2})
    assert "skipped" not in format_table(quiet, snap())
    expected = ("17 probe runs skipped by the kernel (tracepoint sock:inet_sock_set_state 15, "
                "tracepoint tcp:tcp_destroy_sock 2) (BPF recursion)")
    assert expected in format_table(skipped, snap()).splitlines()[0]
    sink = StatusLineSink(stream=open("/dev/null", "w"))
    assert "skipped" not in sink.line(quiet)
    assert expected in sink.line(skipped)
    assert skipped.lost_total == 0   # a skipped run is not known to be a lost event


HOSTILE = ["[/x]", "[red on red]x", "\x1bc\x1b]0;pwned\x1b\\", "a\nb", "[@click=app.quit]",
           "x\r\x9b2J\u202e"]


@pytest.mark.parametrize("name", HOSTILE)
def test_plain_output_shows_hostile_names_escaped_on_their_own_line(name):
    """A process name is data: on `top --plain` (often piped to a log) it can
    neither drive the terminal (ESC, CSI) nor forge a line (newline, CR)."""
    import io

    from tracer.safe_text import printable
    from tracer.sinks.console import ConsoleSink

    def output(comm, label):
        t = ConnectTable()
        t.add(Connect(ts_start_ns=10**9, ts_end_ns=10**9 + 500_000, pid=7, tid=7, comm=comm,
                      family=4, saddr="127.0.0.1", sport=50000, daddr="127.0.0.9", dport=80,
                      outcome="established", err=0, syn_retransmits=0))
        t.roll(1.0)
        rows = [replace(listener(80), comm=comm), replace(listener(81), laddr=label)]
        out = io.StringIO()
        ConsoleSink(stream=out, title=f"[{label}] ").on_interval(status(), snap(t, rows))
        return out.getvalue()

    plain, hostile = output("nginx", "tracepoint"), output(name, name)
    assert "\x1b" not in hostile and "\r" not in hostile and "\x9b" not in hostile
    assert len(hostile.splitlines()) == len(plain.splitlines())
    assert f"{printable(name)[:18]}" in hostile


@pytest.mark.parametrize("name", HOSTILE)
def test_status_line_shows_hostile_text_escaped(name):
    import io

    from tracer.sinks.console import StatusLineSink

    out = io.StringIO()
    sink = StatusLineSink(stream=out, recording_status=lambda: {
        "paused_reason": f"cannot write {name}/connects: No space left on device"})
    sink.on_interval(status(), snap())
    sink.close(status(), snap())
    text = out.getvalue()
    assert "\x1b" not in text and "\r" not in text and "\x9b" not in text
    assert len(text.splitlines()) == 2


def test_record_status_rate_covers_the_lines_window_and_says_so():
    """A line every 5 s with 1 s intervals: the rate is over the 5 s the line
    covers (events since the previous line / time since it), not the last interval's."""
    from tracer.sinks.console import StatusLineSink

    now = [100.0]
    out = __import__("io").StringIO()
    sink = StatusLineSink(every_s=5.0, stream=out, clock=lambda: now[0])

    def at(t, total, last_interval_rate):
        now[0] = t
        sink.on_interval(Status(elapsed_s=t - 100, events_total=total,
                                events_per_s=last_interval_rate, lost_events=0,
                                untracked_connects=0, decode_errors=0, inflight=0), None)

    for second in range(1, 6):       # 1,000 events in the first second, none after
        at(100.0 + second, 1000, 1000.0 if second == 1 else 0.0)
    at(106.0, 1000, 0.0)
    at(110.0, 1500, 500.0)           # 500 events in the last of the next 5 s
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert "events 1000 (200/s over the last 5s)" in lines[0]
    assert "events 1500 (100/s over the last 5s)" in lines[1]


def _process(pid, comm, advice=()):
    from tracer.aggregate.snapshot import ProcessRow

    return ProcessRow(pid=pid, comm=comm, established=3, syn_sent=0, listen=1, close_wait=0,
                      other=0, opened_per_s=12.0, closed_per_s=11.0, fds=40, fd_limit=1024,
                      tx_queue_bytes=0, rx_queue_bytes=0, churning=False, advice=advice)


def test_plain_shows_problems_processes_and_pool_advice_as_the_tui_does():
    from tracer.aggregate.snapshot import PoolAdvice

    advice = PoolAdvice("10.0.0.7:5432", 40.0, 0.05, 2.0, 3.0, 4, 5, 3, "churning (no pooling)")
    t = ConnectTable()
    t.add(connect("127.0.0.99", outcome="refused"))
    t.roll(1.0)
    s = replace(snap(t), processes=(_process(4242, "pgbench", (advice,)),))
    lines = format_table(status(), s).splitlines()
    assert lines[1] == "PROBLEMS (worst first)"
    assert lines[2].startswith("  CRIT connects failing: 127.0.0.99:5432")
    row = lines[lines.index(PROCESS_HEADER) + 1]
    assert row.split()[:3] == ["4242", "pgbench", "3"] and row.endswith("churning (no pooling)")
    start = next(i for i, l in enumerate(lines) if l.startswith("POOL ADVICE"))
    assert lines[start + 1].startswith("  pgbench[4242] -> 10.0.0.7:5432: churning (no pooling) "
                                       "(40.0 new/s x 50.0ms held")
    assert lines[start + 1].endswith("pool 5)")


def test_plain_says_when_a_filter_matches_nothing():
    h = Header("h", "k", "tracepoint", filters="pid 999999")
    s = replace(snap(), header=h)
    out = format_table(status(), s)
    assert "filter: pid 999999" in out.splitlines()[1]
    for what in ("connects", "listeners", "processes"):
        assert f"(no {what} match the filter so far: pid 999999)" in out


def test_one_more_is_singular():
    t = ConnectTable()
    for i in range(3):
        t.add(connect(f"127.0.0.{i + 1}"))
    t.roll(1.0)
    lines = format_table(status(), snap(t), limit=2).splitlines()
    assert "... 1 more destination" in lines
