"""Plain periodic tables on a text stream: `top --plain`, pipes, ssh without a
pty, and the live view until the TUI is there."""
from __future__ import annotations

import sys
import time

from tracer.aggregate.connects import ConnectRow
from tracer.aggregate.snapshot import ListenerRow, PoolAdvice, ProcessRow, Snapshot
from tracer.domain import memory
from tracer.domain.durations import duration as fmt_us
from tracer.domain.hooks import skipped_runs_text
from tracer.safe_text import printable


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
    missed = getattr(status, "missed_by", None) or {}
    if not missed and getattr(status, "missed_runs", 0):   # total without the breakdown
        missed = {"programs": status.missed_runs}
    return f"  {skipped_runs_text(missed)} (BPF recursion)" if missed else ""


def evicted_note(status) -> str:
    """Rows the live tables folded into "other" (tracer/aggregate): shown
    like lost events, never silent."""
    evicted = getattr(status, "evicted_by", None) or {}
    parts = [f"{what} {n}" for what, n in evicted.items() if n]
    return f"  evicted into 'other': {', '.join(parts)}" if parts else ""


PROCESS_HEADER = (f"{'PID':>7} {'COMM':<15} {'ESTAB':>6} {'SYN':>4} {'LISTEN':>6} "
                  f"{'CLOSE_W':>7} {'OTHER':>5} {'OPEN/s':>7} {'CLOSE/s':>7} {'FDS/LIMIT':>13} "
                  f"{'MEM/CONN':>8} POOLING")


def format_process(p: ProcessRow) -> str:
    fds = f"{p.fds if p.fds is not None else '-'}/{p.fd_limit or '?'}"
    pooling = "churning" if p.churning else ", ".join(sorted({a.verdict.split(":")[0]
                                                              for a in p.advice}))
    return (f"{p.pid:>7} {_cell(p.comm, 15)} {p.established:>6} {p.syn_sent:>4} {p.listen:>6} "
            f"{p.close_wait:>7} {p.other:>5} {p.opened_per_s:>7.1f} {p.closed_per_s:>7.1f} "
            f"{fds:>13} {memory.size(p.memory_per_connection):>8} {printable(pooling)}").rstrip()


def format_advice(p: ProcessRow, a: PoolAdvice) -> str:
    """The pool advice the TUI's process panel shows, one line per destination."""
    return (f"  {printable(p.comm)}[{p.pid}] -> {printable(a.destination)}: "
            f"{printable(a.verdict)} ({a.arrival_per_s:.1f} new/s x {fmt_us(a.hold_s * 1e6)} "
            f"held; in use {a.in_use}, p99 {a.concurrency_p99:.0f}, peak "
            f"{a.concurrency_peak}; pool {a.recommended})")


def rank_processes(rows) -> list[ProcessRow]:
    """As the TUI's processes view sorts by default: fds near the limit,
    churning, CLOSE_WAIT, then most sockets."""
    return sorted(rows, key=lambda p: (-(p.fd_ratio or 0.0) if (p.fd_ratio or 0) > 0.8 else 0,
                                       -p.churning, -p.close_wait, -p.sockets, p.pid))


def _more(n: int, word: str, plural: str = "") -> str:
    return f"{n} more {word if n == 1 else plural or word + 's'}"


def _nothing(snapshot: Snapshot, what: str) -> str:
    filters = getattr(snapshot.header, "filters", "")
    if filters:
        return f"(no {what} match the filter so far: {printable(filters)})"
    return f"(no {what} yet)"


def format_problems(snapshot: Snapshot, limit: int) -> list[str]:
    """The TUI's Overview: what is wrong now, worst first."""
    from tracer.tui.problems import find_problems   # pure; no textual

    problems = find_problems(snapshot)
    if not problems:
        return ["PROBLEMS: none seen"]
    lines = ["PROBLEMS (worst first)"]
    lines += [f"  {p.severity.upper():<4} {p.kind}: {printable(p.subject)}  {printable(p.detail)}"
              for p in problems[:limit]]
    if len(problems) > limit:
        lines.append(f"  ... {_more(len(problems) - limit, 'problem')}")
    return lines


def format_table(status, snapshot: Snapshot, limit: int = 15, title: str = "") -> str:
    """One interval as text: what the TUI's views show (Overview, Connects,
    Listeners, Processes with their pool advice), worst first in each."""
    lost = status.lost_total
    lines = [
        f"{time.strftime('%H:%M:%S')} {printable(title)}events {status.events_total} "
        f"({status.events_per_s:.0f}/s over {snapshot.interval_s:.3g}s)  lost {lost}"
        f"{'  <-- EVENTS LOST' if lost else ''}  "
        f"in-flight connects {status.inflight}{missed_note(status)}{evicted_note(status)}",
    ]
    filters = getattr(snapshot.header, "filters", "")
    if filters:
        lines.append(f"filter: {printable(filters)}")
    lines += format_problems(snapshot, limit)
    processes = rank_processes(snapshot.processes)
    lines += _section(snapshot, HEADER, rank(list(snapshot.destinations)), format_row, limit,
                      ("destination", "destinations"), "connects")
    lines += _section(snapshot, LISTENER_HEADER, rank_listeners(snapshot.listeners),
                      lambda r: format_listener(r, snapshot.interval_s), limit,
                      ("listener", "listeners"), "listeners")
    lines += _section(snapshot, PROCESS_HEADER, processes, format_process, limit,
                      ("process", "processes"), "processes")
    advice = [format_advice(p, a) for p in processes[:limit] for a in p.advice]
    if advice:
        lines += ["", "POOL ADVICE (Little's law: connections needed = arrival rate x hold time)"]
        lines += advice[:limit]
        if len(advice) > limit:
            lines.append(f"  ... {len(advice) - limit} more")
    return "\n".join(lines) + "\n"


def _section(snapshot: Snapshot, header: str, rows: list, fmt, limit: int,
             nouns: tuple[str, str], view: str) -> list[str]:
    """One view's table: a blank line, its header, the first `limit` rows
    (ranked already), how many more, or what it shows when there is nothing."""
    out = ["", header, *(fmt(r) for r in rows[:limit])]
    if len(rows) > limit:
        out.append(f"... {_more(len(rows) - limit, *nouns)}")
    if not rows:
        out.append(_nothing(snapshot, view))
    return out


class ConsoleSink:
    def __init__(self, stream=None, limit: int = 15, title: str = ""):
        self.stream = stream or sys.stdout
        self.limit = limit
        self.title = title
        self._events_printed: int | None = None   # events_total at the last table

    def on_events(self, events) -> None:
        pass

    def on_interval(self, status, snapshot) -> None:
        self.stream.write(format_table(status, snapshot, self.limit, self.title) + "\n")
        self.stream.flush()
        self._events_printed = status.events_total

    def close(self, status, snapshot) -> None:
        """The last, partial interval (Ctrl-C, --duration) is printed when it
        saw events no table showed, or when no table was printed at all (a
        --duration shorter than the interval): what the recording holds, the
        console showed."""
        if self._events_printed is None or status.events_total > self._events_printed:
            self.on_interval(status, snapshot)
        else:
            self.stream.flush()


class StatusLineSink:
    """`record`'s short status line on stderr every few seconds.
    recording_status: a callable returning Recording.status().

    The event rate is over what the line covers (since the previous line, or
    the start), and says so: the collector's own rate is the last interval's
    only, a fifth of what a line every 5 s stands for."""

    uses_connect_views = False   # (tracer/collector.py Sink)

    def __init__(self, every_s: float = 5.0, stream=None, recording_status=None,
                 clock=time.monotonic):
        self.every_s = every_s
        self.stream = stream or sys.stderr
        self.recording_status = recording_status or (lambda: {})
        self._clock = clock
        self._last = clock()
        self._line_at = self._last        # start of what the next line covers
        self._line_events = 0
        self._warned: str | None = None
        self.unwritable: OSError | None = None   # why the stream took no more lines

    def on_events(self, events) -> None:
        pass

    def line(self, status, now: float | None = None) -> str:
        rec = self.recording_status()
        now = self._clock() if now is None else now
        window = now - self._line_at
        rate = (status.events_total - self._line_events) / window if window > 0 else 0.0
        text = (f"connscope: {status.elapsed_s:.0f}s  events {status.events_total} "
                f"({rate:.0f}/s over the last {window:.0f}s)  lost {status.lost_total}  "
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

    def _write(self, status, suffix: str = "") -> None:
        now = self._clock()
        if self.unwritable is None:
            try:
                self.stream.write(self.line(status, now) + suffix + "\n")
                self.stream.flush()
            except OSError as e:
                # stderr on a full disk or gone: the recording goes on without
                # its status line (which is all this sink is), and stops trying
                self.unwritable = e
        self._line_at, self._line_events = now, status.events_total

    def on_interval(self, status, snapshot) -> None:
        now = self._clock()
        paused = self.recording_status().get("paused_reason")
        if paused != self._warned:   # a pause or a resume is said at once
            self._warned = paused
            self._last = now - self.every_s
        if now - self._last >= self.every_s:
            self._last = now
            self._write(status)

    def close(self, status, snapshot) -> None:
        self._write(status, "  (stopped)")
