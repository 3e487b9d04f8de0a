"""Plain console output: units, worst-first ordering, and the table's markers."""

from __future__ import annotations

from dataclasses import replace

import pytest

from tracer.aggregate.connects import ConnectRow, ConnectTable
from tracer.aggregate.snapshot import Header, ListenerRow, Snapshot
from tracer.collector import Status
from tracer.domain.durations import duration
from tracer.events import Connect
from tracer.sinks.console import HEADER, LISTENER_HEADER, fmt_us, format_table, rank


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
    assert "events 345 (29/s)" in lines[0]
    assert "in-flight connects 3" in lines[0]
    assert "EVENTS LOST" not in out
    assert lines[1] == HEADER
    assert lines[2:] == ["(no connects yet)"]


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
    assert lines[2].split()[0] == "10.0.0.9:443"
    assert lines[2].endswith("37 (4.2s)")


def test_probe_runs_skipped_by_the_kernel_are_shown_not_hidden():
    from tracer.sinks.console import StatusLineSink

    quiet = status()
    skipped = Status(elapsed_s=12.0, events_total=345, events_per_s=28.7, lost_events=0,
                     untracked_connects=0, decode_errors=0, inflight=3, missed_runs=17)
    assert "skipped" not in format_table(quiet, snap())
    assert "probe runs skipped by the kernel 17" in format_table(skipped, snap()).splitlines()[0]
    sink = StatusLineSink(stream=open("/dev/null", "w"))
    assert "skipped" not in sink.line(quiet)
    assert "probe runs skipped by the kernel 17" in sink.line(skipped)
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
