"""Every key and every view of the TUI, driven with Pilot and fed synthetic
Snapshots the way the collector feeds it (post_snapshot)."""
import threading
from dataclasses import replace

import pytest
from rich.text import Text
from textual.widgets import DataTable, Input, Static, TabbedContent

from tests.tui import recorded, synthetic
from tracer.replay import ReplayController, load
from tracer.tui import table_views
from tracer.tui.app import VIEWS, build_app
from tracer.tui.screens import DetailScreen, HelpScreen

SIZE = (120, 40)


@pytest.fixture(scope="module")
def snaps():
    return synthetic.scenario()


@pytest.fixture(scope="module")
def big():
    return synthetic.last(intervals=5, extra_destinations=10_000, extra_processes=2_000)


@pytest.fixture(scope="module")
def timeline(tmp_path_factory):
    return load(recorded.write_recording(tmp_path_factory.mktemp("rec") / "rec"))


def live_app(snapshot):
    app = build_app(synthetic.HEADER)
    app.post_snapshot(snapshot)     # before it runs: taken from the mailbox on mount
    return app


def rows(app, view: str) -> list[str]:
    table = app.query_one(f"#{view}-table", DataTable)
    return [table.get_row_at(i)[0].plain for i in range(table.row_count)]


def text(app, selector: str) -> str:
    content = app.query_one(selector, Static).content
    return content.plain if isinstance(content, Text) else str(content)


def screen_text(screen) -> str:
    return "\n".join(text_of(w) for w in screen.query(Static))


def text_of(w) -> str:
    c = w.content
    return c.plain if isinstance(c, Text) else str(c)


EXPECT = {
    "overview": "listener dropping",
    "connects": "10.0.0.10:5432",
    "listeners": "0.0.0.0:8080",
    "processes": "php-fpm",
    "log": "drop burst",
    "map": "haproxy (600) → 127.0.0.1:8080 → nginx (812)",
}


async def test_views_by_number(snaps):
    app = live_app(snaps[-1])
    async with app.run_test(size=SIZE) as pilot:
        for number, view in reversed(list(enumerate(VIEWS, 1))):
            await pilot.press(str(number))
            assert app.query_one(TabbedContent).active == view
            assert app.focused is app.query_one(f"#{view}-table")
            assert any(EXPECT[view] in r for r in rows(app, view)), view


async def test_tab_and_shift_tab_cycle_views(snaps):
    app = live_app(snaps[-1])
    async with app.run_test(size=SIZE) as pilot:
        seen = []
        for _ in VIEWS:
            await pilot.press("tab")
            seen.append(app.active)
        assert seen == [*VIEWS[1:], VIEWS[0]]
        await pilot.press("shift+tab")
        assert app.active == VIEWS[-1]


async def test_overview_ranks_worst_first_and_explains_the_selection(snaps):
    app = live_app(snaps[-1])
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        top = rows(app, "overview")
        assert "listener dropping" in top[0] and "events lost" in top[5]
        assert "accept queue is full" in text(app, "#overview-panel")   # the hint
        assert "drop burst" in text(app, "#overview-recent")
        status = text(app, "#status")
        assert "LOST 85 events" in status and "6 CRIT" in status and "2 WARN" in status


async def test_j_k_and_arrows_move_the_selection_and_the_panel_follows(snaps):
    app = live_app(snaps[-1])
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("2")
        table = app.query_one("#connects-table", DataTable)
        labels = [r.split()[0] for r in rows(app, "connects")]
        assert table.cursor_row == 0 and text(app, "#connects-trend").startswith(labels[0])
        await pilot.press("j")
        assert table.cursor_row == 1 and text(app, "#connects-trend").startswith(labels[1])
        await pilot.press("down", "down")
        assert table.cursor_row == 3
        await pilot.press("k", "up")
        assert table.cursor_row == 1 and text(app, "#connects-trend").startswith(labels[1])


async def test_selection_follows_its_row_when_a_new_snapshot_reorders(snaps):
    app = live_app(snaps[-2])
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("2", "j", "j")
        chosen = rows(app, "connects")[2].split()[0]
        await pilot.press("s")                    # p99 order: the rows move
        app.post_snapshot(snaps[-1])
        await pilot.pause()
        table = app.query_one("#connects-table", DataTable)
        assert rows(app, "connects")[table.cursor_row].split()[0] == chosen


async def test_the_cursor_stays_on_top_until_the_user_moves_it(snaps):
    app = live_app(snaps[10])
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("5")
        app.post_snapshot(snaps[-1])
        await pilot.pause()
        assert app.query_one("#log-table", DataTable).cursor_row == 0   # the newest line


async def test_enter_opens_the_detail_and_escape_closes_it(snaps):
    app = live_app(snaps[-1])
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("2")
        slow = next(i for i, r in enumerate(rows(app, "connects")) if "10.0.0.10:5432" in r)
        for _ in range(slow):
            await pilot.press("j")
        await pilot.press("enter")
        assert isinstance(app.screen, DetailScreen)
        body = screen_text(app.screen)
        assert "10.0.0.10:5432" in body and "p99" in body and "latency since start" in body
        await pilot.press("escape")
        assert not isinstance(app.screen, DetailScreen)
        await pilot.press("1", "enter")
        assert isinstance(app.screen, DetailScreen)
        assert "accepts too slowly" in screen_text(app.screen)
        await pilot.press("q")                    # q closes a pop-up, it does not quit
        assert app.is_running and not isinstance(app.screen, DetailScreen)


async def test_mouse_selects_a_row_and_a_second_click_opens_its_detail(snaps):
    app = live_app(snaps[-1])
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("3")
        table = app.query_one("#listeners-table", DataTable)
        await pilot.click("#listeners-table", offset=(4, 2))     # header is line 0
        assert table.cursor_row == 1
        await pilot.click("#listeners-table", offset=(4, 2))
        assert isinstance(app.screen, DetailScreen)
        assert "127.0.0.1:5432" in screen_text(app.screen)


@pytest.mark.parametrize("key", ["slash", "f"])
async def test_filter_narrows_every_view_until_escape(snaps, key):
    app = live_app(snaps[-1])
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("2", key)
        box = app.query_one("#filter", Input)
        assert box.display and app.focused is box
        await pilot.press(*"6379")
        assert [r.split()[0] for r in rows(app, "connects")] == ["10.0.0.20:6379"]
        assert "1 of 5" in text(app, "#connects-caption")
        await pilot.press("enter")
        assert not box.display and app.focused is app.query_one("#connects-table")
        await pilot.press("5")                    # the filter holds in every view
        assert rows(app, "log") and all("6379" in r for r in rows(app, "log"))
        assert "filter 6379" in text(app, "#status")
        await pilot.press("escape")
        assert len(rows(app, "log")) > 5 and "filter" not in text(app, "#status")


async def test_keys_typed_into_the_filter_are_text_not_commands(snaps):
    app = live_app(snaps[-1])
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("4", "slash", *"php q s p")
        assert app.is_running and not app.paused and app.sort["processes"] == 0
        assert app.query_one("#filter", Input).value == "php q s p"
        await pilot.press("escape")
        assert app.query_one("#filter", Input).value == ""


async def test_filter_matches_pid_comm_port_and_address(snaps):
    app = live_app(snaps[-1])
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("3", "slash", *"postgres", "enter")
        assert [r.split()[0] for r in rows(app, "listeners")] == ["127.0.0.1:5432"]
        await pilot.press("escape", "4", "slash", *"3003", "enter")
        assert [r.split()[:2] for r in rows(app, "processes")] == [["3003", "java"]]


async def test_s_cycles_the_sort_of_the_view(snaps):
    app = live_app(snaps[-1])
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("2")
        labels = [s.label for s in table_views.CONNECTS_BY_DEST.sorts]
        seen = []
        for _ in labels:
            seen.append(text(app, "#status").split("sort ")[1].split()[0])
            await pilot.press("s")
        assert seen == [label.split()[0] for label in labels]
        assert text(app, "#status").split("sort ")[1].startswith(labels[0])  # wrapped round
        await pilot.press("s")                    # p99
        assert rows(app, "connects")[0].startswith("10.0.0.10:5432")
        await pilot.press("5", "s")               # the log has one order: says so
        assert app.sort["log"] == 0


async def test_g_switches_connects_between_destinations_and_processes(snaps):
    app = live_app(snaps[-1])
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("3", "g")               # from elsewhere: goes to Connects
        assert app.active == "connects"
        names = {r.split()[0] for r in rows(app, "connects")}
        assert {"1001", "2002", "3003"} <= names
        assert "connects by process" in text(app, "#connects-caption")
        await pilot.press("g")
        assert "10.0.0.10:5432" in {r.split()[0] for r in rows(app, "connects")}


async def test_g_cycles_through_containers_where_they_are_known(snaps):
    from tracer.aggregate.connects import ConnectTable
    from tracer.domain.containers import HOST

    t = ConnectTable()
    for ev in synthetic_connects():
        t.add(ev, "shop/web-1/nginx" if ev.pid == 1001 else HOST)
    t.roll(1.0)
    app = live_app(replace(snaps[-1], containers_connects=tuple(t.by_container())))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("2", "g")
        assert "(g: by container)" in text(app, "#connects-caption")
        await pilot.press("g")
        assert "connects by container" in text(app, "#connects-caption")
        assert {r.split()[0] for r in rows(app, "connects")} == {"shop/web-1/nginx", HOST}
        await pilot.press("g")
        assert "connects by destination" in text(app, "#connects-caption")


def synthetic_connects():
    from tests.unit.test_connect_table import connect

    return [connect(pid=pid) for pid in (1001, 1001, 2002)]


@pytest.mark.parametrize("key", ["p", "space"])
async def test_pause_freezes_the_display_while_snapshots_arrive(snaps, key):
    app = live_app(snaps[10])
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("2", key)
        frozen = rows(app, "connects")
        for s in snaps[11:14]:
            app.post_snapshot(s)
        await pilot.pause()
        assert rows(app, "connects") == frozen
        assert "PAUSED, 3 intervals behind" in text(app, "#status")
        assert "00:00:11 UTC" in text(app, "#status")
        await pilot.press(key)
        assert "LIVE" in text(app, "#status") and "00:00:14 UTC" in text(app, "#status")
        assert rows(app, "connects") != frozen


async def test_help_lists_every_key(snaps):
    app = live_app(snaps[-1])
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        body = screen_text(app.screen)
        for b in app.BINDINGS:
            if b.action.split("(")[0] in ("step", "faster", "slower", "worst"):
                assert b.description not in body        # replay only
                continue
            for key in b.key.split(","):
                shown = app.get_key_display(type(b)(key, b.action))
                assert shown in body, (key, b.action)
            assert b.description in body or b.action == "pause"
        for words in ("up/down j/k", "PgUp/PgDn", "mouse"):
            assert words in body
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)


async def test_help_and_status_name_the_tracepoint_hooks(snaps):
    """The data source says which tracepoint hooks the session uses, as
    replay and the report do (tracer/domain/hooks.py backend_text)."""
    header = replace(synthetic.HEADER, hooks="BTF")
    app = build_app(header)
    app.post_snapshot(replace(snaps[-1], header=header))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert "backend tracepoint (BTF hooks)" in text(app, "#status")
        await pilot.press("question_mark")
        assert "tracepoint (BTF hooks)" in screen_text(app.screen)


async def test_q_quits(snaps):
    app = live_app(snaps[-1])
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("q")
        await pilot.pause()
        assert not app.is_running


async def test_replay_keys_do_nothing_live(snaps):
    app = live_app(snaps[-1])
    async with app.run_test(size=SIZE) as pilot:
        before = text(app, "#status")
        await pilot.press("w", "full_stop", "comma", "plus", "minus")
        assert text(app, "#status") == before and app.is_running


async def test_waiting_for_the_first_snapshot():
    app = build_app(synthetic.HEADER)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert "waiting for the first interval" in text(app, "#status")
        for view in VIEWS:
            await pilot.press(str(VIEWS.index(view) + 1))
            assert rows(app, view) == []


async def test_nothing_wrong_says_so():
    app = live_app(synthetic.quiet())
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert "Nothing looks wrong" in text(app, "#overview-caption")
        assert "no problems seen" in text(app, "#status")


async def test_ten_thousand_destinations_show_a_slice_and_filter_finds_any(big):
    app = live_app(big)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("2")
        assert app.query_one("#connects-table", DataTable).row_count == table_views.ROW_LIMIT
        assert "10,005" in text(app, "#connects-caption")
        assert "showing the first 300" in text(app, "#connects-caption")
        await pilot.press("slash", *"10.1.39.15:", "enter")
        assert [r.split()[0] for r in rows(app, "connects")] == ["10.1.39.15:8000"]
        await pilot.press("escape", "4")
        assert app.query_one("#processes-table", DataTable).row_count == table_views.ROW_LIMIT


async def test_snapshots_posted_from_a_thread_are_replaced_not_queued(snaps):
    app = build_app(synthetic.HEADER)
    async with app.run_test(size=SIZE) as pilot:
        shown = []
        original = app._show
        app._show = lambda s, arrival: (shown.append(s), original(s, arrival))[1]
        burst = [replace(snaps[i % len(snaps)], ts_us=snaps[-1].ts_us + i) for i in range(300)]

        def collector():
            for s in burst:
                app.post_snapshot(s)

        t = threading.Thread(target=collector)
        t.start()
        t.join()
        await pilot.pause()
        assert shown[-1] is burst[-1]              # the newest is on screen
        assert len(shown) < len(burst) / 4         # the rest were replaced, not drawn


async def test_replay_play_step_speed_and_worst(timeline):
    c = ReplayController(timeline)
    app = build_app(timeline.header, replay=c)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert "interval 1/20" in text(app, "#status") and "paused" in text(app, "#status")
        await pilot.press("full_stop", "full_stop")
        assert c.position == 2 and "interval 3/20" in text(app, "#status")
        await pilot.press("comma")
        assert c.position == 1 and "00:00:02 UTC" in text(app, "#status")
        await pilot.press("plus", "plus", "equals_sign")
        assert c.speed == 10 and "(10x)" in text(app, "#status")
        await pilot.press("minus")
        assert c.speed == 5
        await pilot.press("w")
        assert c.position == recorded.DROP_PEAK
        assert "listener dropping" in rows(app, "overview")[0]
        await pilot.press("space")
        assert c.playing and "REPLAY > 5x" in text(app, "#status")
        await pilot.pause(0.5)                     # 5x: about two intervals go by
        assert c.position > recorded.DROP_PEAK
        await pilot.press("p")
        assert not c.playing
        stopped = c.position
        await pilot.pause(0.3)
        assert c.position == stopped


async def test_replay_shows_unreadable_files_in_the_log(tmp_path):
    d = recorded.write_recording(tmp_path / "rec")
    (d / "listeners" / "date=2026-01-01" / "junk.parquet").write_bytes(b"not parquet")
    t = load(d)
    app = build_app(t.header, replay=ReplayController(t))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("5", "slash", *"unreadable", "enter")
        assert len(rows(app, "log")) == 1
        assert "junk.parquet: not a Parquet file" in text(app, "#log-panel")


async def test_request_exit_from_another_thread_leaves_the_app(snaps):
    app = live_app(snaps[-1])
    async with app.run_test(size=SIZE) as pilot:
        t = threading.Thread(target=app.request_exit)
        t.start()
        t.join()
        await pilot.pause()
        assert not app.is_running


async def test_replay_builds_costly_intervals_in_the_background(timeline, monkeypatch):
    from tracer.tui import replay_driver

    monkeypatch.setattr(replay_driver, "SYNC_BUILD_ROWS", -1)    # every build goes to the thread
    c = ReplayController(timeline)
    app = build_app(timeline.header, replay=c)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("full_stop", "full_stop", "full_stop")
        assert c.position == 3
        for _ in range(100):                       # bounded: 10 s
            await pilot.pause(0.1)
            if "building" not in text(app, "#status"):
                break
        status = text(app, "#status")
        assert "interval 4/20" in status and "00:00:04 UTC" in status and "building" not in status
        await pilot.press("q")
        await pilot.pause()
        assert not app.is_running


async def test_help_lists_the_data_source_with_every_blind_spot(snaps):
    header = replace(synthetic.HEADER, blind_spots=("first blind spot " * 4, "second one"))
    app = build_app(header)
    app.post_snapshot(snaps[-1])
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("question_mark")
        body = screen_text(app.screen)
        assert "first blind spot " * 4 in body and "second one" in body
        assert "web-1" in body and "6.18.0-test" in body and "/var/tmp/incident" in body
