"""Every key of the TUI in one place: the bindings, the line of hints at the
bottom, and the help screen, which is built from the bindings so it cannot
fall out of date."""
from __future__ import annotations

from rich.text import Text
from textual.binding import Binding

from tracer.aggregate.snapshot import Header

VIEWS = ("overview", "connects", "listeners", "processes", "log", "map")
VIEW_TITLES = ("1 Overview", "2 Connects", "3 Listeners", "4 Processes", "5 Log", "6 Map")
REPLAY_ACTIONS = {"step", "faster", "slower", "worst"}     # disabled live

BINDINGS = [
    Binding("q", "quit", "Quit"),
    # muscle memory at 3 a.m.: Ctrl-C quits (textual would copy text instead)
    Binding("ctrl+c", "quit", "Quit", show=False, priority=True),
    Binding("question_mark", "help", "Help", key_display="?"),
    Binding("slash,f", "filter", "Filter", key_display="/"),
    Binding("escape", "clear_filter", "Clear filter", show=False),
    Binding("s", "cycle_sort", "Sort"),
    Binding("p,space", "pause", "Pause", key_display="p"),
    Binding("g", "toggle_group", "By dest/proc"),
    Binding("enter", "detail", "Detail", show=False),
    Binding("j", "cursor(1)", "Down", show=False),
    Binding("k", "cursor(-1)", "Up", show=False),
    Binding("comma", "step(-1)", "Back", key_display=","),
    Binding("full_stop", "step(1)", "Step", key_display="."),
    Binding("minus", "slower", "Slower", key_display="-"),
    Binding("plus,equals_sign", "faster", "Faster", key_display="+"),
    Binding("w", "worst", "Worst"),
    *(Binding(str(i + 1), f"view('{v}')", VIEW_TITLES[i][2:], show=False)
      for i, v in enumerate(VIEWS)),
    Binding("tab", "next_view(1)", "Next view", show=False, priority=True),
    Binding("shift+tab", "next_view(-1)", "Previous view", show=False, priority=True),
]

# Keys of the tables themselves, listed in the help screen next to the app's.
TABLE_KEYS = [
    ("up/down j/k", "move the selection"),
    ("PgUp/PgDn", "page through the rows"),
    ("Home/End", "first / last column; ctrl+Home/End first / last row"),
    ("mouse", "click a row to select it, click again for detail; click a tab; wheel scrolls"),
]


def key_hints(replay: bool) -> Text:
    """The bottom line. A fixed Static rather than textual's Footer, which
    rebuilds itself on every focus change (a view switch) and costs frames."""
    hints = [("q", "quit"), ("?", "help"), ("1-6", "views"), ("Enter", "detail"),
             ("/", "filter"), ("s", "sort"), ("g", "by dest/proc")]
    if replay:
        hints += [("space", "play"), (", .", "step"), ("- +", "speed"), ("w", "worst")]
    else:
        hints.append(("p", "pause"))
    t = Text(" ")
    for key, what in hints:
        t.append(key, style="bold cyan")
        t.append(f" {what}   ")
    return t


def help_entries(app, header: Header, replay: bool) -> list[tuple[str, str]]:
    """(label, text) lines of the help screen; an empty label is a heading. The
    data source first (with every blind spot of the backend), then each binding
    usable in this mode, keys with the same meaning on one line."""
    groups: dict[str, list[str]] = {}
    for b in BINDINGS:
        if b.action.split("(")[0] in REPLAY_ACTIONS and not replay:
            continue
        description = b.description
        if b.action == "pause":
            description = ("Play / pause the replay" if replay
                           else "Pause the display (data keeps arriving)")
        groups.setdefault(description, []).extend(
            app.get_key_display(Binding(k, b.action)) for k in b.key.split(","))
    out = [("", "data source"), ("host", header.host), ("kernel", header.kernel),
           ("backend", header.backend_text)]
    out += [("cannot see", spot) for spot in header.blind_spots]
    if header.recording_path:
        out.append(("recording" if header.source == "live" else "replay of",
                    header.recording_path))
    out.append(("", "keys"))
    out += [(" ".join(k), description) for description, k in groups.items()]
    out.append(("", "in a table"))
    out += TABLE_KEYS
    return out
