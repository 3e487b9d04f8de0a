"""Names other processes choose are data: shown escaped, never markup, never
terminal control, in every view, panel, detail screen, the help screen, the
log, notifications and replay.

What is checked is what Textual hands to the terminal: the screen's full
update (the compositor's strips, as the driver writes them), so a name that
reached a widget raw, or was parsed as markup, shows here.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone

from textual.widgets import DataTable

from tests.tui import recorded, synthetic
from tracer.aggregate.connects import ConnectTable
from tracer.aggregate.notable import NotableLog
from tracer.aggregate.snapshot import Header, ListenerRow, PoolAdvice, ProcessRow, Snapshot
from tracer.replay import ReplayController, load
from tracer.safe_text import printable
from tracer.sinks.parquet_writer import Recording
from tracer.tui.app import VIEWS, build_app
from tracer.tui.screens import DetailScreen

# Each fits a task comm (15 bytes) except the last, which a recording can hold.
HOSTILE = ["[/x]", "[red on red]x", "\x1bc\x1b]0;pwned\x1b\\", "a\nb", "[@click=app.quit]",
           "[link=http://e.vil]y"]
DEST = "[/x]\x1b[2J"          # a destination address as a hostile recording can hold it
SIZE = (200, 60)
T_US = synthetic.T0_US + 1_000_000


def shown(name: str) -> str:
    return printable(name)


def hostile_header(source: str = "live") -> Header:
    return Header(host="[/x]\x1b]0;pwned\x07", kernel="[red on red]6.18", backend="tracepoint",
                  blind_spots=("[@click=app.quit]\x1b[2J",), recording_path="/tmp/[/x]\x1bc\nx",
                  source=source)


def hostile_snapshot() -> Snapshot:
    table, log = ConnectTable(), NotableLog()
    t = synthetic.MONO0_NS
    listeners, processes = [], []
    for i, name in enumerate(HOSTILE):
        pid = 100 + i
        for outcome in ("refused", "established", "timeout"):
            ev = synthetic._connect(t, pid, name, (f"10.9.0.{i}", 80), outcome, 500.0)
            table.add(ev)
            log.connect(ev, T_US)
        listeners.append(ListenerRow(
            family=4, laddr="0.0.0.0", lport=9000 + i, pid=pid, comm=name, backlog_max=8,
            queue_len=8, queue_peak=8, syn_queue_len=0, drops=3, syn_drops=1, drops_total=4,
            drops_per_s=4.0, accepts=1, accept_wait_p50_us=10.0, accept_wait_p99_us=20.0,
            synack_retransmits=0))
        processes.append(ProcessRow(
            pid=pid, comm=name, established=1, syn_sent=0, listen=1, close_wait=150, other=0,
            opened_per_s=50.0, closed_per_s=50.0, fds=10, fd_limit=1024, tx_queue_bytes=0,
            rx_queue_bytes=0, churning=True, opened=50, closed=50,
            advice=(PoolAdvice(destination=name, arrival_per_s=50.0, hold_s=0.01,
                               concurrency_mean=1.0, concurrency_p99=2.0, concurrency_peak=3,
                               recommended=3, in_use=0, verdict=f"churning: {name}"),)))
    ev = synthetic._connect(t, 99, "curl", (DEST, 443), "refused", 500.0)
    table.add(ev)
    log.connect(ev, T_US)
    listeners.append(ListenerRow(
        family=4, laddr=DEST, lport=1, pid=None, comm=None, backlog_max=8, queue_len=8,
        queue_peak=8, syn_queue_len=0, drops=1, syn_drops=0, drops_total=1, drops_per_s=1.0,
        accepts=0, accept_wait_p50_us=None, accept_wait_p99_us=None, synack_retransmits=0))
    table.roll(1.0)
    log.listeners(listeners, T_US)
    return Snapshot(ts_us=T_US, interval_s=1.0, header=hostile_header(), events_total=10,
                    events_per_s=10.0, lost_events=0, destinations=tuple(table.by_destination()),
                    processes_connects=tuple(table.by_process()), listeners=tuple(listeners),
                    processes=tuple(processes), notable=log.roll(T_US),
                    recording_warning="disk full at /tmp/[/x]\x1b[31m\nforged",
                    extra={"latency_buckets": {}})


def rendered(app) -> str:
    """The whole screen as the terminal receives it, less the style codes Textual
    adds itself: every segment's text, line by line. Fails on a control segment."""
    update = app.screen._compositor.render_update(full=True,
                                                  screen_stack=app._background_screens)
    lines = []
    for chops in update.strips:          # one line: the strips of its chops
        segments = [segment for strip in chops for segment in strip]
        assert not any(s.control for s in segments)
        lines.append("".join(s.text for s in segments))
    return "\n".join(lines)


def assert_safe(screen: str) -> None:
    assert "\x1b" not in screen
    assert "\x9b" not in screen and "\x07" not in screen and "\r" not in screen


# What markup would have eaten, what an escape shows instead of a control: the
# first characters of each name as shown (the tables cut long ones).
def assert_shows(screen: str, names, prefix: int = 8) -> None:
    for name in names:
        assert shown(name)[:prefix] in screen, (name, screen)


async def _details_of_every_row(app, pilot, view: str) -> str:
    """Enter on each row of the view (at most 30), the detail screens' text."""
    table = app.query_one(f"#{view}-table", DataTable)
    seen = []
    for row in range(min(table.row_count, 30)):
        table.move_cursor(row=row)
        await pilot.pause()
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, DetailScreen), (view, row)
        screen = rendered(app)
        assert_safe(screen)
        seen.append(screen)
        await pilot.press("escape")
        await pilot.pause()
    return "\n".join(seen)


async def test_every_view_and_detail_shows_hostile_names_as_text():
    app = build_app(hostile_header())
    app.post_snapshot(hostile_snapshot())
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await pilot.pause()
        for key, view in zip("12345", VIEWS):
            await pilot.press(key)
            await pilot.pause()
            assert app.active == view
            screen = rendered(app)
            assert_safe(screen)
            assert shown("[/x]\x1b]0;pwned\x07") in screen          # host, status line
            assert shown("/tmp/[/x]\x1bc\nx") in screen
            if view == "connects":      # by destination: addresses, no process names
                assert shown(DEST) in screen
            else:
                assert_shows(screen, HOSTILE)
            details = await _details_of_every_row(app, pilot, view)
            # the whole name, in the detail of its row
            if view == "connects":
                assert shown(DEST) in details
            else:
                assert_shows(details, HOSTILE, prefix=100)
        # connects by process: the process label carries the name
        await pilot.press("2", "g")
        await pilot.pause()
        screen = rendered(app)
        assert_safe(screen)
        assert_shows(screen, HOSTILE)
        assert_shows(await _details_of_every_row(app, pilot, "connects"), HOSTILE, prefix=100)
        # help: the data source (host, kernel, blind spots, recording path)
        await pilot.press("question_mark")
        await pilot.pause()
        screen = rendered(app)
        assert_safe(screen)
        for text in ("[/x]\x1b]0;pwned\x07", "[red on red]6.18", "[@click=app.quit]\x1b[2J",
                     "/tmp/[/x]\x1bc\nx"):
            assert shown(text) in screen
        await pilot.press("escape")
        # the filter finds a name by what is shown
        await pilot.press("4", "slash", *"\\ec", "enter")
        await pilot.pause()
        table = app.query_one("#processes-table", DataTable)
        assert table.row_count == 1 and shown(HOSTILE[2]) in rendered(app)
        assert app.is_running       # "[@click=app.quit]" did not quit


async def test_a_crash_in_a_view_is_kept_for_one_error_line_not_a_traceback(monkeypatch):
    """If the display fails anyway (a bug), the app keeps the error for the
    CLI to print as one Error: line and leaves no traceback of Textual's own."""
    from tracer.tui import details

    def broken(*_args):
        raise RuntimeError("boom \x1b]0;pwned\x07")

    monkeypatch.setattr(details, "detail_text", broken)
    app = build_app(hostile_header())
    app.post_snapshot(hostile_snapshot())
    try:
        async with app.run_test(size=SIZE, notifications=True) as pilot:
            await pilot.press("enter")
            await pilot.pause()
    except RuntimeError:
        pass                   # run_test re-raises what ended the app, for test frameworks
    assert not app.is_running
    assert isinstance(app.failure, RuntimeError) and app.return_code == 1
    assert app._exit_renderables == []


# ---------------------------------------------------------------- replay

def hostile_recording(directory):
    """A recording as another user could leave it: comms, a destination
    address, host and kernel chosen to attack the screen."""
    comms = {"api": HOSTILE[0], "orders": HOSTILE[2], "nginx": HOSTILE[1]}
    rows = [{**r, "comm": comms.get(r["comm"], r["comm"]), "host": HOSTILE[3],
             "daddr": DEST if r["daddr"] == "10.0.0.10" else r["daddr"]}
            for r in recorded.connect_rows()]
    tables = recorded.interval_rows()
    with Recording(directory, host=HOSTILE[3], run_id=recorded.RUN_ID, backend="tracepoint",
                   options={"interval": 1.0},
                   start=datetime.fromtimestamp(recorded.T0_US / 1e6, timezone.utc)) as rec:
        rec.write("connects", rows)
        for name in ("listeners", "sockets", "accepts"):     # no drops: `w` names a destination
            rec.write(name, [{**r, "comm": comms.get(r["comm"], r["comm"]), "drops": 0}
                             if name == "listeners" else
                             {**r, "comm": comms.get(r["comm"], r["comm"])}
                             for r in tables[name]])
    manifest = directory / "runs" / f"{recorded.RUN_ID}.json"
    m = json.loads(manifest.read_text())
    m["kernel"] = "[red on red]k\x1b[2J"
    m["host"] = HOSTILE[4]
    manifest.write_text(json.dumps(m))
    return directory


async def test_replay_of_a_hostile_recording(tmp_path):
    timeline = load(hostile_recording(tmp_path / "rec"))
    c = ReplayController(timeline)
    app = build_app(timeline.header, replay=c)
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await pilot.press("w")           # jumps to the slowest destination, and says so
        await pilot.pause()
        screen = rendered(app)
        assert_safe(screen)
        assert "largest p99: " + shown(DEST) in screen      # the notification
        assert shown("[red on red]k\x1b[2J") in screen and shown(HOSTILE[4]) in screen
        for key, view in zip("12345", VIEWS):
            await pilot.press(key)
            await pilot.pause()
            screen = rendered(app)
            assert_safe(screen)
            if view == "connects":
                assert shown(DEST)[:8] in screen
            if view == "listeners":
                assert shown(HOSTILE[1])[:8] in screen
            if view == "processes":
                assert shown(HOSTILE[2])[:8] in screen
            await _details_of_every_row(app, pilot, view)
        await pilot.press("2", "g")
        await pilot.pause()
        screen = rendered(app)
        assert_safe(screen)
        assert_shows(screen, [HOSTILE[0], HOSTILE[2]])
        await _details_of_every_row(app, pilot, "connects")
        assert app.is_running
