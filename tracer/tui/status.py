"""The three header lines: where the data comes from, how healthy the tracer
is, and the state of the view. A pure function of the header, the shown
Snapshot and the UI state. Host, kernel and paths may come from a recording
someone else wrote: shown through `printable`, as Text (never markup)."""
from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text

from tracer.aggregate.snapshot import Header, Snapshot
from tracer.safe_text import printable
from tracer.tui.text_charts import bar
from tracer.tui.units import fmt_bytes, fmt_clock, fmt_count, fmt_rate

SEP = ("  |  ", "dim")


def counted(n: int, word: str, plural: str | None = None) -> str:
    """'1 process', '2 processes', '1,024 listeners'."""
    return f"{n:,} {word if n == 1 else plural or word + 's'}"
BLIND_SPOTS_INLINE = 40


@dataclass(frozen=True)
class ViewState:
    view: str
    sort_label: str
    filter_text: str
    paused: bool             # live: display frozen
    behind: int              # live: snapshots arrived while paused
    crit: int                # problems in the shown snapshot
    warn: int
    replay_position: int | None = None    # replay only
    replay_length: int | None = None
    replay_playing: bool = False
    replay_speed: int = 1
    replay_building: bool = False          # the position's Snapshot is being built


def source_line(h: Header, snap: Snapshot | None) -> Text:
    t = Text()
    t.append(" connscope ", style="bold reverse")
    t.append(" ")
    t.append("host ", style="dim")
    t.append(printable(h.host), style="bold")
    t.append(*SEP)
    t.append("kernel ", style="dim")
    t.append(printable(h.kernel))
    t.append(*SEP)
    t.append("backend ", style="dim")
    t.append(printable(h.backend_text), style="bold")
    if h.passed_over:       # `auto` fell back: the reasons are with the blind spots (?)
        t.append(f", {printable(', '.join(h.passed_over))} failed to load", style="yellow")
    if h.blind_spots:
        spots = printable(", ".join(map(str, h.blind_spots)))
        if len(spots) > BLIND_SPOTS_INLINE:      # the whole list is on the help screen
            n = len(h.blind_spots)
            t.append(f" ({n} blind spot{'s' if n > 1 else ''}: press ?)", style="yellow")
        else:
            t.append(f" (cannot see: {spots})", style="yellow")
    t.append(*SEP)
    t.append(fmt_clock(snap.ts_us) if snap else "--:--:--", style="bold")
    t.append(" UTC", style="dim")
    return t


def health_line(h: Header, snap: Snapshot | None) -> Text:
    t = Text(" ")
    if snap is None:
        t.append("waiting for the first interval...", style="dim italic")
        return t
    t.append("events ", style="dim")
    t.append(f"{fmt_count(snap.events_total)} ({fmt_rate(snap.events_per_s)}/s over "
             f"{snap.interval_s:.3g}s)")
    t.append(*SEP)
    if snap.lost_events:
        t.append(f" LOST {counted(snap.lost_events, 'event')} ", style="bold white on red")
    else:
        t.append("lost ", style="dim")
        t.append("0", style="green")
    if snap.missed_runs:   # runs of our programs the kernel skipped (BPF recursion)
        t.append(*SEP)
        t.append(f" {counted(snap.missed_runs, 'probe run')} skipped ", style="bold black on yellow")
    if snap.evicted:   # tables full: rows folded into "other" (tracer/aggregate)
        t.append(*SEP)
        t.append(f" {counted(snap.evicted, 'row')} evicted into 'other' ",
                 style="bold black on yellow")
    if h.recording_path:
        t.append(*SEP)
        t.append("recording " if h.source == "live" else "from ", style="dim")
        t.append(printable(h.recording_path))
        if snap.recording_bytes is not None:
            t.append(f" ({fmt_bytes(snap.recording_bytes)})", style="dim")
    if snap.recording_warning:
        t.append("  ")
        t.append(f" {printable(snap.recording_warning)} ", style="bold white on red")
    return t


def state_line(s: ViewState) -> Text:
    t = Text(" ")
    if s.replay_length is not None:
        if s.replay_playing:
            t.append(f" REPLAY > {s.replay_speed}x ", style="bold black on green")
        else:
            t.append(f" REPLAY || paused ({s.replay_speed}x) ", style="bold black on yellow")
        t.append(f" interval {s.replay_position + 1}/{s.replay_length} ")
        done = s.replay_position / (s.replay_length - 1) if s.replay_length > 1 else 1.0
        t.append(bar(done, 20), style="green on grey23")
        if s.replay_building:
            t.append("  building this interval...", style="bold yellow")
    elif s.paused:
        behind = f", {s.behind} interval{'s' if s.behind != 1 else ''} behind"
        t.append(f" PAUSED{behind} ", style="bold black on yellow")
    else:
        t.append(" LIVE ", style="bold black on green")
    t.append(*SEP)
    if s.crit:
        t.append(f" {s.crit} CRIT ", style="bold white on red")
        t.append(" ")
    if s.warn:
        t.append(f" {s.warn} WARN ", style="bold black on yellow")
    if not s.crit and not s.warn:
        t.append("no problems seen", style="green")
    t.append(*SEP)
    t.append("sort ", style="dim")
    t.append(s.sort_label)
    if s.filter_text:
        t.append(*SEP)
        t.append("filter ", style="dim")
        t.append(printable(s.filter_text), style="bold reverse")
    return t
