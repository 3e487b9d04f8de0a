"""Plain periodic tables on a text stream: `top --plain`, pipes, ssh without a
pty, and the live view until the TUI is there."""
from __future__ import annotations

import sys
import time

from tracer.aggregate.connects import ConnectRow
from tracer.aggregate.snapshot import ListenerRow, Snapshot
from tracer.safe_text import printable


def fmt_us(us: float | None) -> str:
    if us is None:
        return "-"
    # Compare with the rounding points, so 999.6 shows as 1.0ms, not 1000us.
    if us < 999.5:
        return f"{us:.0f}us"
    if us < 999_950:
        return f"{us / 1000:.1f}ms"
    return f"{us / 1_000_000:.2f}s"


def rank(rows: list[ConnectRow]) -> list[ConnectRow]:
    """Worst first: failures, then connects stuck for over a second, then SYN
    retransmits, then p99 latency."""
    return sorted(rows, key=lambda r: (-r.failures,
                                       -(r.pending if (r.oldest_pending_s or 0) >= 1 else 0),
                                       -r.syn_retransmits, -(r.p99_us or 0.0), -r.attempts))


HEADER = (f"{'DESTINATION':<28} {'CONN/s':>7} {'TOTAL':>7} {'REFUSED':>7} {'TIMEOUT':>7} "
          f"{'ERROR':>6} {'SYNRTX':>6} {'p50':>8} {'p95':>8} {'p99':>8} {'max':>8} {'PENDING':>12}")


def _cell(text: object, width: int) -> str:
    """A name in a fixed-width column: escaped (an ESC would drive the terminal,
    a newline would forge a line in a log), then cut and padded."""
    return f"{printable(text)[:width]:<{width}}"


def format_row(r: ConnectRow) -> str:
    return (f"{_cell(r.label, 28)} {r.rate:>7.1f} {r.attempts:>7} {r.refused:>7} {r.timeouts:>7} "
            f"{r.errors:>6} {r.syn_retransmits:>6} {fmt_us(r.p50_us):>8} {fmt_us(r.p95_us):>8} "
            f"{fmt_us(r.p99_us):>8} {fmt_us(r.max_us):>8} {fmt_pending(r):>12}")


def fmt_pending(r: ConnectRow) -> str:
    if not r.pending:
        return "-"
    return f"{r.pending} ({r.oldest_pending_s:.1f}s)"


LISTENER_HEADER = (f"{'LISTENER':<28} {'OWNER':<22} {'QUEUE':>9} {'PEAK':>5} {'DROPS/s':>8} "
                   f"{'DROPS':>8} {'ACCEPT/s':>8} {'WAIT p50':>9} {'WAIT p99':>9}")


def format_listener(r: ListenerRow, seconds: float) -> str:
    owner = f"{r.comm}[{r.pid}]" if r.pid else "?"   # escaped by _cell
    accept_rate = r.accepts / seconds if seconds > 0 else 0.0
    return (f"{_cell(r.label, 28)} {_cell(owner, 22)} {f'{r.queue_len}/{r.backlog_max}':>9} "
            f"{r.queue_peak:>5} {r.drops_per_s:>8.1f} {r.drops_total:>8} {accept_rate:>8.1f} "
            f"{fmt_us(r.accept_wait_p50_us):>9} {fmt_us(r.accept_wait_p99_us):>9}")


def rank_listeners(rows) -> list[ListenerRow]:
    """Dropping now, then dropped before, then fullest queue."""
    return sorted(rows, key=lambda r: (-r.drops_per_s, -r.drops_total,
                                       -(r.queue_peak / r.backlog_max if r.backlog_max else 0)))


def missed_note(status) -> str:
    missed = getattr(status, "missed_runs", 0)
    return f"  probe runs skipped by the kernel {missed} (BPF recursion)" if missed else ""


def evicted_note(status) -> str:
    """Rows the live tables folded into "other" (tracer/aggregate): shown
    like lost events, never silent."""
    evicted = getattr(status, "evicted_by", None) or {}
    parts = [f"{what} {n}" for what, n in evicted.items() if n]
    return f"  evicted into 'other': {', '.join(parts)}" if parts else ""


def format_table(status, snapshot: Snapshot, limit: int = 15, title: str = "") -> str:
    lost = status.lost_total
    lines = [
        f"{time.strftime('%H:%M:%S')} {printable(title)}events {status.events_total} "
        f"({status.events_per_s:.0f}/s)  lost {lost}{'  <-- EVENTS LOST' if lost else ''}  "
        f"in-flight connects {status.inflight}{missed_note(status)}{evicted_note(status)}",
        HEADER,
    ]
    rows = rank(list(snapshot.destinations))
    lines += [format_row(r) for r in rows[:limit]]
    if len(rows) > limit:
        lines.append(f"... {len(rows) - limit} more destinations")
    if not rows:
        lines.append("(no connects yet)")
    listeners = rank_listeners(snapshot.listeners)
    if listeners:
        lines += ["", LISTENER_HEADER]
        lines += [format_listener(r, snapshot.interval_s) for r in listeners[:limit]]
        if len(listeners) > limit:
            lines.append(f"... {len(listeners) - limit} more listeners")
    return "\n".join(lines) + "\n"


class ConsoleSink:
    def __init__(self, stream=None, limit: int = 15, title: str = ""):
        self.stream = stream or sys.stdout
        self.limit = limit
        self.title = title

    def on_events(self, events) -> None:
        pass

    def on_interval(self, status, snapshot) -> None:
        self.stream.write(format_table(status, snapshot, self.limit, self.title) + "\n")
        self.stream.flush()

    def close(self, status, snapshot) -> None:
        self.stream.flush()


class StatusLineSink:
    """`record`'s short status line on stderr every few seconds.
    recording_status: a callable returning Recording.status()."""

    def __init__(self, every_s: float = 5.0, stream=None, recording_status=None):
        self.every_s = every_s
        self.stream = stream or sys.stderr
        self.recording_status = recording_status or (lambda: {})
        self._last = time.monotonic()
        self._warned: str | None = None

    def on_events(self, events) -> None:
        pass

    def line(self, status) -> str:
        rec = self.recording_status()
        text = (f"connscope: {status.elapsed_s:.0f}s  events {status.events_total} "
                f"({status.events_per_s:.0f}/s)  lost {status.lost_total}  "
                f"files {rec.get('files_written', 0)} "
                f"({rec.get('bytes_written', 0) / 1e6:.1f} MB){missed_note(status)}"
                f"{evicted_note(status)}")
        dropped = sum((rec.get("dropped_rows") or {}).values())
        if rec.get("paused_reason"):
            # the reason may quote a path or an OS error about a file in DIR
            text += f"  WARNING: {printable(rec['paused_reason'])}"
        elif dropped:
            text += f"  ({dropped} rows were dropped while writing was paused)"
        return text

    def on_interval(self, status, snapshot) -> None:
        now = time.monotonic()
        paused = self.recording_status().get("paused_reason")
        if paused != self._warned:   # a pause or a resume is said at once
            self._warned = paused
            self._last = 0.0
        if now - self._last >= self.every_s:
            self._last = now
            self.stream.write(self.line(status) + "\n")
            self.stream.flush()

    def close(self, status, snapshot) -> None:
        self.stream.write(self.line(status) + "  (stopped)\n")
        self.stream.flush()
