"""The connscope TUI: `connscope top` (live) and `connscope replay DIR`.

Every panel is a pure function of the shown Snapshot and the UI state
(view, selection, filter, sort, pause); the app only decides which Snapshot
is shown. Live, the collector thread hands snapshots to `post_snapshot`,
which keeps only the newest and wakes the UI with at most one pending
message, so a slow screen can never queue up work. In replay, a
ReplayController picks the snapshot.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from typing import TYPE_CHECKING

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.message import Message
from textual.widgets import DataTable, Input, Static, TabbedContent, TabPane

from tracer.aggregate.snapshot import Header, Snapshot
from tracer.safe_text import printable
from tracer.tui import details, keys, map_view, table_views
from tracer.tui.problems import Problem, find_problems
from tracer.tui.replay_driver import ReplayDriver
from tracer.tui.screens import DetailScreen, HelpScreen
from tracer.tui.status import ViewState, counted, health_line, source_line, state_line
from tracer.tui.keys import VIEW_TITLES, VIEWS
from tracer.tui.table_views import TableSpec, column_widths, header_line, join_cells, visible

if TYPE_CHECKING:   # replay starts the TUI; the TUI only drives what it is given
    from tracer.replay import ReplayController

REPLAY_TICK_S = 0.1
HISTOGRAM_PANEL = 46        # width of #connects-hist in app.tcss


GROUP_WORDS = {"dest": "destination", "proc": "process", "cont": "container"}


class SnapshotArrived(Message):
    """A wake-up only: the newest snapshot waits in the app's mailbox."""


class ExitRequested(Message):
    """Posted by request_exit from another thread."""


class FilterInput(Input):
    BINDINGS = [Binding("escape", "app.clear_filter", "Clear filter", show=False)]


class ConnscopeApp(App):
    CSS_PATH = "app.tcss"
    TITLE = "connscope"
    ENABLE_COMMAND_PALETTE = False
    BINDINGS = keys.BINDINGS

    def __init__(self, source: Header, replay: ReplayController | None = None):
        super().__init__()
        # no sliding tab underline: every frame over ssh costs, and a view should
        # appear at once
        self.animation_level = "none"
        self.source = source
        self.replay = replay
        # the mailbox, shared with the collector thread
        self._shared_lock = threading.Lock()
        self._latest: Snapshot | None = None
        self._arrived = 0
        self._wake_pending = False
        # what is on screen
        self._shown: Snapshot | None = None
        self._shown_arrival = 0
        self._problems: list[Problem] = []
        self.paused = False
        self.active = "overview"
        self.filter_text = ""
        self.sort = {v: 0 for v in VIEWS}
        self.group = "dest"
        self._selected: dict[str, str | None] = {v: None for v in VIEWS}
        self._pinned = {v: False for v in VIEWS}
        self._widths: dict[str, int] = {}
        self._col_widths: dict[str, list[int]] = {}
        self._col_specs: dict[str, TableSpec] = {}     # what _col_widths were made for
        # a CONTAINER column in connects, listeners and processes (table_views.in_containers)
        self._in_containers = False
        self._rows: dict[str, dict[str, object]] = {v: {} for v in VIEWS}
        self._last_tick = 0.0
        self._replayer = None if replay is None else ReplayDriver(
            replay, show=lambda s: self._show(s, 0), changed=self._refresh_status,
            call_from_thread=self.call_from_thread)
        self.repaints = 0          # views filled; lets tests and the latency script wait for one
        self.failure: BaseException | None = None   # what ended the app, if it failed

    def _handle_exception(self, error: Exception) -> None:
        # Textual exits and, once the terminal is restored, prints its own
        # traceback (with locals: names other processes chose among them). The
        # caller re-raises `failure` instead: one Error: line, the traceback
        # only with --debug.
        if self.failure is None:
            self.failure = error
        super()._handle_exception(error)
        self._exit_renderables.clear()

    # ------------------------------------------------------------ from the collector thread

    def post_snapshot(self, snapshot: Snapshot) -> None:
        """Hand over the newest snapshot. Thread-safe; never blocks on the UI.
        Snapshots the UI has not taken yet are replaced, not queued."""
        with self._shared_lock:
            self._latest = snapshot
            self._arrived += 1
            if self._wake_pending or not self.is_running:
                return          # not running yet: on_mount takes it from the mailbox
            self._wake_pending = True
        if not self.post_message(SnapshotArrived()):
            with self._shared_lock:
                self._wake_pending = False

    def request_exit(self) -> None:
        """Leave the app from another thread (the collector stopped: --duration,
        SIGTERM, or an error the caller will report after run() returns)."""
        if self.is_running:
            self.post_message(ExitRequested())

    def on_exit_requested(self, _message: ExitRequested) -> None:
        self.exit()

    def _take_latest(self) -> tuple[Snapshot | None, int]:
        with self._shared_lock:
            self._wake_pending = False
            return self._latest, self._arrived

    def on_snapshot_arrived(self, _message: SnapshotArrived) -> None:
        snapshot, arrived = self._take_latest()
        if snapshot is None or self.replay is not None:
            return
        if self.paused:
            self._refresh_status()     # "N intervals behind" grows; the data stays frozen
            return
        self._show(snapshot, arrived)

    # ------------------------------------------------------------ layout

    def compose(self) -> ComposeResult:
        yield Static(id="status")
        with TabbedContent(id="views", initial="overview"):
            with TabPane(VIEW_TITLES[0], id="overview"):
                yield Static(id="overview-caption", classes="caption")
                yield DataTable(id="overview-table", cursor_type="row")
                yield Static(id="overview-panel", classes="panel")
                yield Static(id="overview-recent")
            with TabPane(VIEW_TITLES[1], id="connects"):
                yield Static(id="connects-caption", classes="caption")
                yield DataTable(id="connects-table", cursor_type="row")
                with Horizontal(id="connects-panel", classes="panel"):
                    yield Static(id="connects-trend")
                    yield Static(id="connects-hist")
            with TabPane(VIEW_TITLES[2], id="listeners"):
                yield Static(id="listeners-caption", classes="caption")
                yield DataTable(id="listeners-table", cursor_type="row")
                yield Static(id="listeners-panel", classes="panel")
            with TabPane(VIEW_TITLES[3], id="processes"):
                yield Static(id="processes-caption", classes="caption")
                yield DataTable(id="processes-table", cursor_type="row")
                yield Static(id="processes-panel", classes="panel")
            with TabPane(VIEW_TITLES[4], id="log"):
                yield Static(id="log-caption", classes="caption")
                yield DataTable(id="log-table", cursor_type="row")
                yield Static(id="log-panel", classes="panel")
            with TabPane(VIEW_TITLES[5], id="map"):
                yield Static(id="map-caption", classes="caption")
                yield DataTable(id="map-table", cursor_type="row")
                yield Static(id="map-panel", classes="panel")
        box = FilterInput(id="filter", placeholder="filter rows: pid, comm, port or address "
                                                  "(Enter keeps it, Esc clears it)")
        box.cursor_blink = False    # a blinking cursor would make screenshots differ run to run
        yield box
        yield Static(keys.key_hints(replay=self.replay is not None), id="keys")

    def on_mount(self) -> None:
        for view in VIEWS:
            self._set_columns(view)
        self.query_one("#filter", Input).display = False
        for tabs in self.query("Tabs"):
            tabs.can_focus = False     # arrows belong to the tables
        if self.replay is not None:
            self._replayer.goto()
            self._last_tick = time.monotonic()
            self.set_interval(REPLAY_TICK_S, self._replay_tick)
        else:
            snapshot, arrived = self._take_latest()
            if snapshot is not None:
                self._show(snapshot, arrived)
            else:
                self._refresh_all()
        self._table(self.active).focus()

    def _table(self, view: str) -> DataTable:
        return self.query_one(f"#{view}-table", DataTable)

    def _spec(self, view: str) -> TableSpec:
        tv = table_views
        if view == "connects":
            if self.group == "cont":
                return tv.CONNECTS_BY_CONTAINER
            if self._in_containers:
                return tv.CONNECTS_BY_PROC_IN_CONTAINERS if self.group == "proc" else \
                    tv.CONNECTS_BY_DEST_IN_CONTAINERS
            return tv.CONNECTS_BY_PROC if self.group == "proc" else tv.CONNECTS_BY_DEST
        if view == "processes" and self._in_containers:
            return tv.PROCESSES_IN_CONTAINERS
        if view == "listeners" and self._in_containers:
            return tv.LISTENERS_IN_CONTAINERS
        return {"overview": tv.OVERVIEW, "listeners": tv.LISTENERS,
                "processes": tv.PROCESSES, "log": tv.LOG, "map": map_view.MAP}[view]

    def _set_columns(self, view: str) -> None:
        table = self._table(view)
        spec = self._spec(view)
        table.clear(columns=True)
        # the screen's width, less cell padding, the vertical scrollbar and a margin
        widths = column_widths(spec, self.size.width - 2 * table.cell_padding - 3)
        self._col_widths[view] = widths
        self._col_specs[view] = spec
        table.add_column(header_line(spec, widths), key="row")
        self._widths[view] = self.size.width

    def on_resize(self, _event) -> None:
        for view in VIEWS:
            if self._widths.get(view) != self.size.width:
                self._set_columns(view)
                if view == self.active:
                    self._refresh_view(view)

    # ------------------------------------------------------------ rendering

    def _show(self, snapshot: Snapshot, arrival: int) -> None:
        if snapshot is not self._shown:
            self._problems = find_problems(snapshot)
            self._in_containers = table_views.in_containers(snapshot)
        self._shown = snapshot
        self._shown_arrival = arrival
        self._refresh_all()

    def _refresh_all(self) -> None:
        self._refresh_status()
        self._refresh_view(self.active)

    def _view_state(self) -> ViewState:
        spec = self._spec(self.active)
        crit = sum(1 for p in self._problems if p.severity == "crit")
        warn = sum(1 for p in self._problems if p.severity == "warn")
        r = self.replay
        return ViewState(
            view=self.active, sort_label=spec.sorts[self.sort[self.active] % len(spec.sorts)].label,
            filter_text=self.filter_text, paused=self.paused,
            behind=self._arrived - self._shown_arrival if self.paused else 0, crit=crit,
            warn=warn, replay_position=r.position if r else None,
            replay_building=self._replayer is not None and self._replayer.building,
            replay_length=r.length if r else None, replay_playing=r.playing if r else False,
            replay_speed=r.speed if r else 1)

    def _refresh_status(self) -> None:
        text = source_line(self.source, self._shown)
        text.append("\n")
        text.append_text(health_line(self.source, self._shown))
        text.append("\n")
        text.append_text(state_line(self._view_state()))
        self.query_one("#status", Static).update(text, layout=False)

    def _items(self, view: str):
        if view == "overview":
            return self._problems
        if self._shown is None:
            return ()
        return self._spec(view).items(self._shown)

    def _refresh_view(self, view: str) -> None:
        spec = self._spec(view)
        if self._col_specs.get(view) is not spec and view in self._col_specs:
            self._set_columns(view)     # the CONTAINER column came or went
        all_items = self._items(view)
        rows, matched = visible(spec, all_items, self.filter_text, self.sort[view])
        table = self._table(view)
        selected = self._selected[view]
        old_cursor, old_top = table.cursor_row, int(table.scroll_y)
        keyed: dict[str, object] = {}
        widths = self._col_widths[view]
        with table.prevent(DataTable.RowHighlighted):
            table.clear()
            for item in rows:
                key = repr(spec.row_key(item))
                if key in keyed:    # identical log lines in one interval: number them
                    key = f"{key}#{sum(1 for k in keyed if k.startswith(key))}"
                keyed[key] = item
                table.add_row(join_cells(spec, spec.cells(item), widths), key=key)
        self._rows[view] = keyed
        if rows:
            keys = list(keyed)
            # The cursor stays on the top (worst, newest) row unless the user moved
            # it; then it follows the selected row while rows re-sort under it.
            index = 0
            if self._pinned[view]:
                index = keys.index(selected) if selected in keyed else \
                    min(old_cursor, len(rows) - 1)
            with table.prevent(DataTable.RowHighlighted):
                table.move_cursor(row=index, scroll=False)
            if index:
                # keep the selected row on the same screen line
                top = max(0, index - (old_cursor - old_top))
                table.call_after_refresh(table.scroll_to, y=top, animate=False)
            self._selected[view] = keys[index]
        else:
            self._selected[view] = None
        self._refresh_caption(view, len(rows), matched, len(all_items))
        self._refresh_panel(view)
        if view == "overview":
            # as many lines as the tallest screen could show; the widget crops the rest
            # (its own height is not known yet on the first draw)
            recent = self.query_one("#overview-recent", Static)
            recent.update(details.recent_events(self._shown.notable if self._shown else (), 60),
                          layout=False)
        self.repaints += 1

    def _refresh_caption(self, view: str, shown: int, matched: int, total: int) -> None:
        what = {"overview": "problems, worst first",
                "connects": {"proc": "connects by process",
                             "cont": "connects by container"}.get(self.group,
                                                                   "connects by destination"),
                "listeners": "listening sockets", "processes": "processes with TCP sockets",
                "log": "notable events, newest first",
                "map": "connection map: client → destination → serving process"}[view]
        t = Text(" ")
        t.append(what, style="bold")
        if view == "connects":
            t.append(f"  (g: by {GROUP_WORDS[self._next_group()]})", style="dim")
        t.append(f"   {matched:,} of {total:,}" if self.filter_text else f"   {total:,}",
                 style="dim")
        if shown < matched:
            t.append(f", showing the first {shown:,}; / filters", style="yellow")
        traced = self.source.filters     # --pid/--comm/--port/-4/-6, applied to every view
        if self._shown is None:
            t.append("   waiting for the first interval...", style="dim italic")
        elif view == "overview" and not total:
            s = self._shown
            t = Text(" Nothing looks wrong. ", style="bold green")
            t.append(f"Watching {counted(len(s.destinations), 'destination')}, "
                     f"{counted(len(s.listeners), 'listener')}, "
                     f"{counted(len(s.processes), 'process', 'processes')}.", style="green")
            if traced and not (s.destinations or s.listeners or s.processes):
                t.append(f"  Nothing matches {printable(traced)} so far.", style="bold yellow")
        elif traced and not total and view != "log":
            t.append(f"   nothing matches {printable(traced)} so far", style="bold yellow")
        if traced and view != "overview" and total:
            t.append(f"   only {printable(traced)}", style="dim")
        folded = table_views.folded_titles(self._spec(view), self._col_widths.get(view, ()))
        if folded:      # a narrow screen: the detail pane (Enter) has every column
            t.append(f"   +{len(folded)} cols: Enter", style="dim")
        if self._shown is not None and view in ("connects", "listeners", "processes", "map"):
            # every "/s" column is the last interval's count divided by its length
            t.append(f"   /s = last {self._shown.interval_s:.3g}s", style="dim")
        self.query_one(f"#{view}-caption", Static).update(t, layout=False)

    def _selected_item(self, view: str):
        key = self._selected[view]
        return self._rows[view].get(key) if key is not None else None

    def _refresh_panel(self, view: str) -> None:
        # panels, captions and the status line have fixed sizes (app.tcss), so their
        # updates skip the layout pass: a cursor move repaints two lines and a panel
        item = self._selected_item(view)
        if view == "connects":
            trend = self.query_one("#connects-trend", Static)
            hist = self.query_one("#connects-hist", Static)
            if item is None:
                trend.update(Text(" no connect selected", style="dim"), layout=False)
                hist.update("", layout=False)
                return
            t = details.connect_summary(item)
            t.append("\n")
            t.append_text(details.percentiles(item))
            t.append("\n")
            # the panel's share of the screen (its own width is 0 before the first draw)
            width = max(20, self.size.width - HISTOGRAM_PANEL - 6)
            t.append_text(details.p99_chart(item, width, 4))
            trend.update(t, layout=False)
            row_key = self.group_key(item)
            hist.update(details.histogram_text(
                details.latency_buckets(self._shown, row_key), 20, 7), layout=False)
            return
        panel = self.query_one(f"#{view}-panel", Static)
        if item is None:
            panel.update("", layout=False)
            return
        if view == "map":
            panel.update(map_view.edge_summary(item, self._shown.edges), layout=False)
            return
        render = {"overview": details.problem_summary, "listeners": details.listener_summary,
                  "processes": details.process_summary, "log": details.notable_summary}[view]
        panel.update(render(item), layout=False)

    def group_key(self, item) -> tuple:
        return ("proc" if self.group == "proc" else "dest", item.key)

    # ------------------------------------------------------------ replay clock

    def _replay_tick(self) -> None:
        now = time.monotonic()
        elapsed, self._last_tick = now - self._last_tick, now
        r = self.replay
        was_playing = r.playing
        if r.advance(elapsed):
            self._replayer.goto()
        elif was_playing != r.playing:
            self._refresh_status()

    def on_unmount(self) -> None:
        if self._replayer is not None:
            self._replayer.stop()

    # ------------------------------------------------------------ events

    def on_tabbed_content_tab_activated(self, event: TabbedContent.TabActivated) -> None:
        view = event.pane.id
        if view in VIEWS and view != self.active:
            self.active = view
            self._refresh_all()
        self._table(self.active).focus()

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        view = (event.data_table.id or "").removesuffix("-table")
        if view in VIEWS and event.row_key is not None:
            # only the user moves the cursor: the app's own moves are prevented
            self._pinned[view] = event.cursor_row != 0
            self._selected[view] = event.row_key.value
            self._refresh_panel(view)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.action_detail()

    def on_input_changed(self, event: Input.Changed) -> None:
        self.filter_text = event.value.strip()
        self._refresh_all()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.input.display = False
        self._table(self.active).focus()

    # ------------------------------------------------------------ actions

    def check_action(self, action: str, parameters: tuple) -> bool | None:
        if action in keys.REPLAY_ACTIONS:
            return self.replay is not None
        return True

    def action_view(self, view: str) -> None:
        self.query_one(TabbedContent).active = view

    def action_next_view(self, step: int) -> None:
        self.query_one("#filter", Input).display = False
        i = VIEWS.index(self.active)
        self.action_view(VIEWS[(i + step) % len(VIEWS)])

    def action_cursor(self, step: int) -> None:
        table = self._table(self.active)
        if step > 0:
            table.action_cursor_down()
        else:
            table.action_cursor_up()

    def action_detail(self) -> None:
        item = self._selected_item(self.active)
        if item is None:
            return
        key = self.group_key(item) if self.active == "connects" else None
        width = min(self.size.width - 8, 110)
        if self.active == "map":
            self.push_screen(DetailScreen(printable(f"edge {item.label}"),
                                          map_view.edge_summary(item, self._shown.edges)))
            return
        self.push_screen(DetailScreen(details.detail_title(item),
                                      details.detail_text(item, self._shown, key, width)))

    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.display = True
        box.focus()

    def action_clear_filter(self) -> None:
        box = self.query_one("#filter", Input)
        had = bool(self.filter_text) or box.display
        box.value = ""
        box.display = False
        self.filter_text = ""
        self._table(self.active).focus()
        if had:
            self._refresh_all()

    def action_cycle_sort(self) -> None:
        spec = self._spec(self.active)
        if len(spec.sorts) == 1:
            self.notify(f"this view is always {spec.sorts[0].label}", timeout=2, markup=False)
            return
        self.sort[self.active] = (self.sort[self.active] + 1) % len(spec.sorts)
        self._refresh_all()

    def _next_group(self) -> str:
        """Destination -> process -> container -> destination; container only
        where the snapshot has container groups (containers resolved here)."""
        if self.group == "dest":
            return "proc"
        if self.group == "proc" and self._shown is not None and \
                self._shown.containers_connects:
            return "cont"
        return "dest"

    def action_toggle_group(self) -> None:
        """Connects by destination, process, container (from another view: go there)."""
        self.group = self._next_group()
        self._selected["connects"] = None
        self._pinned["connects"] = False
        self._set_columns("connects")
        if self.active != "connects":
            self.action_view("connects")
        else:
            self._refresh_all()

    def action_pause(self) -> None:
        if self.replay is not None:
            self.replay.toggle()
            self._last_tick = time.monotonic()
            self._refresh_status()
            return
        self.paused = not self.paused
        if not self.paused:
            snapshot, arrived = self._take_latest()
            if snapshot is not None and arrived != self._shown_arrival:
                self._show(snapshot, arrived)
                return
        self._refresh_status()

    def action_step(self, n: int) -> None:
        self.replay.step(n)
        self._replayer.goto()

    def action_faster(self) -> None:
        self.replay.faster()
        self._refresh_status()

    def action_slower(self) -> None:
        self.replay.slower()
        self._refresh_status()

    def action_worst(self) -> None:
        if self.replay.jump_to_worst():
            self._replayer.goto()
            reason = getattr(self.replay.timeline, "worst_reason", "")
            if reason:
                self.notify(printable(reason), timeout=4, markup=False)
        else:
            # the reason names a destination from the recording: data, not markup
            self.notify(printable(getattr(self.replay.timeline, "worst_reason",
                                          "nothing stands out")), timeout=4, markup=False)

    def action_help(self) -> None:
        self.push_screen(HelpScreen(keys.help_entries(self, self.source,
                                                      replay=self.replay is not None)))


def size_from_the_terminal() -> None:
    """Textual and Rich size the screen from $COLUMNS and $LINES before they
    ask the terminal: a value exported once (a CI runner, a script, an old
    shell) pinned the live view to that size, folded its columns and ignored
    every resize. When the terminal can be asked, it decides; otherwise the
    variables stay, the only size there is."""
    try:
        os.get_terminal_size(sys.__stdout__.fileno())
    except (AttributeError, ValueError, OSError):
        return
    for name in ("COLUMNS", "LINES"):
        os.environ.pop(name, None)


def build_app(source_description: Header, *, replay: ReplayController | None = None) -> App:
    """The TUI, for `top` (then call `post_snapshot` from the collector thread)
    or for `replay` (pass the controller)."""
    size_from_the_terminal()     # before the App reads the size (Rich does, at once)
    return ConnscopeApp(source_description, replay=replay)
