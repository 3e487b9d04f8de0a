"""The tables of the TUI as data: columns, sort orders, filter text and cells
for each view. Pure functions of a Snapshot (rich Text for colour, no textual),
so sorting, filtering and slicing are testable and stay out of the widgets.

Only the first `limit` rows after sort and filter go to the screen: a DataTable
of 10,000 rows costs far more to fill than the eye can use at 3 a.m.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from rich.text import Text

from tracer.aggregate.connects import ConnectRow
from tracer.aggregate.snapshot import ListenerRow, Notable, ProcessRow, Snapshot
from tracer.domain import memory
from tracer.safe_text import printable
from tracer.tui.problems import (HANGING_S, SLOW_P99_US, VERY_SLOW_P99_US, Problem,
                                 connect_badness)
from tracer.tui.text_charts import bar, sparkline
from tracer.tui.units import fit_count, fmt_clock, fmt_count, fmt_pct, fmt_rate, fmt_us

ROW_LIMIT = 300
TREND_WIDTH = 8

SEVERITY_STYLE = {"crit": "bold white on red", "warn": "bold black on yellow", "info": "dim"}
SEVERITY_WORD = {"crit": "CRIT", "warn": "WARN", "info": "info"}


@dataclass(frozen=True)
class Col:
    title: str
    width: int             # 0: whatever the screen has left
    right: bool = True


@dataclass(frozen=True)
class Sort:
    label: str
    key: Callable          # ascending order of this key is the display order


@dataclass(frozen=True)
class TableSpec:
    name: str
    columns: tuple[Col, ...]
    sorts: tuple[Sort, ...]
    items: Callable[[Snapshot], Sequence]
    row_key: Callable[[object], tuple]
    cells: Callable[[object], tuple]
    search_text: Callable[[object], str]


# ---------------------------------------------------------------- cells

def num(text: str, style: str = "") -> Text:
    return Text(text, style=style, justify="right")


def _count(n: int, bad_style: str = "bold red") -> Text:
    return num(fmt_count(n), bad_style if n else "dim")


def latency_style(us: float | None) -> str:
    if us is None:
        return "dim"
    if us >= VERY_SLOW_P99_US:
        return "bold red"
    if us >= SLOW_P99_US:
        return "yellow"
    return ""


def _latency(us: float | None) -> Text:
    return num(fmt_us(us), latency_style(us))


def fill_style(fraction: float) -> str:
    if fraction >= 0.8:
        return "bold red"
    if fraction >= 0.5:
        return "yellow"
    return "green"


def gauge(used: int | None, limit: int | None, width: int) -> Text:
    """A bar of used/limit with the numbers after it: '██████▍    120/128'."""
    if used is None or not limit:
        return Text(f"{'':{width}} {fmt_count(used) if used is not None else '-'}/?", style="dim")
    fraction = used / limit
    t = Text(bar(fraction, width), style=fill_style(fraction))
    t.append(f" {fmt_count(used)}/{fmt_count(limit)}")
    return t


def severity_cell(severity: str) -> Text:
    return Text(f" {SEVERITY_WORD.get(severity, severity)} ", style=SEVERITY_STYLE.get(severity, ""))


def _where(r) -> str:
    """A row's container and pod, for the filter (`f web-1` finds a pod's rows)."""
    a = r.container
    if a is None:
        return ""
    return " ".join(x for x in (a.container_label, a.container_id, a.pod_uid) if x)


CONTAINER_WIDTH = 16


def _container_of_process(r) -> str:
    """The container column of a row with an Attribution: pod/container, else
    runtime:short id; empty for the host. Someone else's names: a plain
    string cell, so escaped and cut to the column (_fit)."""
    a = r.container
    return (a.container_label if a is not None else None) or ""


def with_container(spec: TableSpec, cell) -> TableSpec:
    """`spec` with a CONTAINER column after its first: the app shows this
    variant when the snapshot has rows in containers (a host without any
    keeps its columns for numbers)."""
    cols = spec.columns
    return TableSpec(
        name=spec.name, columns=(cols[0], Col("CONTAINER", CONTAINER_WIDTH, False), *cols[1:]),
        sorts=spec.sorts, items=spec.items, row_key=spec.row_key,
        cells=lambda r: (lambda c: (c[0], cell(r), *c[1:]))(spec.cells(r)),
        search_text=spec.search_text)


def _who(pid: int | None, comm: str | None) -> str:
    if pid is None:
        return comm or "?"
    return f"{comm or '?'}[{pid}]"


# ---------------------------------------------------------------- overview

def _problem_key(p: Problem) -> tuple:
    return ("problem", p.view, p.key, p.kind, p.subject)


OVERVIEW = TableSpec(
    name="overview",
    columns=(Col("SEV", 6, False), Col("WHAT", 22, False), Col("WHERE", 26, False),
             Col("DETAILS", 0, False)),
    sorts=(Sort("worst first", lambda p: p.rank),),
    items=lambda s: (),   # the app passes find_problems(snapshot), computed once per snapshot
    row_key=_problem_key,
    cells=lambda p: (severity_cell(p.severity), Text(p.kind, style="bold"), p.subject, p.detail),
    search_text=lambda p: f"{p.kind} {p.subject} {p.detail}",
)


# ---------------------------------------------------------------- connects

def _failures(r: ConnectRow) -> int:
    return r.failures




def _trend(r: ConnectRow) -> Text:
    return Text(sparkline(r.p99_history, TREND_WIDTH)[0], style="cyan")


def _hanging_s(r: ConnectRow) -> float:
    """Age of the oldest connect still unanswered, if over a second (a SYN was lost)."""
    age = r.oldest_pending_s or 0.0
    return age if r.pending and age >= HANGING_S else 0.0


def _pending(r: ConnectRow) -> Text:
    if not r.pending:
        return num("0", "dim")
    return num(fmt_count(r.pending), "bold red" if _hanging_s(r) else "yellow")


def _connect_cells(r: ConnectRow) -> tuple:
    return (r.label, num(fmt_rate(r.rate)), num(fmt_count(r.attempts)), _pending(r),
            _count(r.refused), _count(r.timeouts), _count(r.errors),
            _count(r.syn_retransmits, "yellow"), _latency(r.p50_us), _latency(r.p95_us),
            _latency(r.p99_us), _latency(r.max_us), _trend(r))


_CONNECT_SORTS = (
    # as the Overview ranks its problems, then the slowest of the rest
    Sort("worst", lambda r: (connect_badness(r), -(r.p99_us or 0.0), -r.attempts, r.label)),
    Sort("p99", lambda r: (-(r.p99_us or -1.0), r.label)),
    Sort("rate", lambda r: (-r.rate, -r.attempts, r.label)),
    Sort("total", lambda r: (-r.attempts, r.label)),
    Sort("failures", lambda r: (-_failures(r), -r.attempts, r.label)),
    Sort("name", lambda r: r.label),
)


# Widths add up (with two spaces between columns) to what fits 120 columns.
def _connect_columns(first: str, width: int) -> tuple[Col, ...]:
    return (Col(first, width, False), Col("CONN/s", 6), Col("TOTAL", 6), Col("PEND", 5),
            Col("REFUSED", 7), Col("TIMEOUT", 7), Col("ERR", 3), Col("SYNRTX", 6),
            Col("p50", 6), Col("p95", 6), Col("p99", 6), Col("max", 6),
            Col("trend", TREND_WIDTH, False))


CONNECTS_BY_DEST = TableSpec(
    name="connects",
    columns=_connect_columns("DESTINATION", 19),
    sorts=_CONNECT_SORTS,
    items=lambda s: s.destinations,
    row_key=lambda r: ("dest", r.key),
    cells=_connect_cells,
    search_text=lambda r: r.label,
)

CONNECTS_BY_CONTAINER = TableSpec(
    name="connects",
    columns=_connect_columns("CONTAINER", 19),
    sorts=_CONNECT_SORTS,
    items=lambda s: s.containers_connects,
    row_key=lambda r: ("cont", r.key),
    cells=_connect_cells,
    search_text=lambda r: r.label,
)

CONNECTS_BY_PROC = TableSpec(
    name="connects",
    columns=_connect_columns("PROCESS", 19),
    sorts=_CONNECT_SORTS,
    items=lambda s: s.processes_connects,
    row_key=lambda r: ("proc", r.key),
    cells=_connect_cells,
    search_text=lambda r: r.label,
)


CONNECTS_BY_DEST_IN_CONTAINERS = with_container(CONNECTS_BY_DEST, lambda r: r.container or "")
CONNECTS_BY_PROC_IN_CONTAINERS = with_container(CONNECTS_BY_PROC, lambda r: r.container or "")


# ---------------------------------------------------------------- listeners

def _queue_fill(r: ListenerRow) -> float:
    return r.queue_peak / r.backlog_max if r.backlog_max else 0.0


def _listener_cells(r: ListenerRow) -> tuple:
    return (r.label, _who(r.pid, r.comm) if (r.pid or r.comm) else Text("?", style="dim"),
            gauge(r.queue_len, r.backlog_max, 10), num(str(r.queue_peak),
                                                       fill_style(_queue_fill(r))),
            num(fmt_rate(r.drops_per_s), "bold red" if r.drops_per_s else "dim"),
            _count(r.drops_total), num(fmt_count(r.accepts)),
            _latency(r.accept_wait_p50_us), _latency(r.accept_wait_p99_us))


LISTENERS = TableSpec(
    name="listeners",
    columns=(Col("LISTENER", 22, False), Col("OWNER", 14, False), Col("ACCEPT QUEUE", 19, False),
             Col("PEAK", 5), Col("DROP/s", 7), Col("DROPPED", 8), Col("ACCEPTS", 7),
             Col("WAIT p50", 8), Col("WAIT p99", 8)),
    sorts=(
        Sort("worst", lambda r: (-r.drops_per_s, -_queue_fill(r), -r.drops_total,
                                 -(r.accept_wait_p99_us or 0.0), r.label)),
        Sort("queue fill", lambda r: (-_queue_fill(r), r.label)),
        Sort("dropped", lambda r: (-r.drops_total, r.label)),
        Sort("accepts", lambda r: (-r.accepts, r.label)),
        Sort("port", lambda r: (r.lport, r.laddr)),
    ),
    items=lambda s: s.listeners,
    row_key=lambda r: (r.family, r.laddr, r.lport),
    cells=_listener_cells,
    search_text=lambda r: f"{r.label} {r.pid or ''} {r.comm or ''} {_where(r)}",
)


# ---------------------------------------------------------------- processes

def _advice(p: ProcessRow) -> Text:
    """The first word of each pool verdict ("churning", "pooled", ...); the
    panel under the table has the whole sentence."""
    if p.churning:
        return Text("churning", style="yellow")
    return Text(", ".join(sorted({a.verdict.split(":")[0] for a in p.advice})))


def _process_cells(p: ProcessRow) -> tuple:
    return (num(str(p.pid)), p.comm, num(fmt_count(p.established)), num(fmt_count(p.syn_sent)),
            num(fmt_count(p.listen)),
            num(fmt_count(p.close_wait), "yellow" if p.close_wait else "dim"),
            num(fmt_count(p.other)), num(fmt_rate(p.opened_per_s)), num(fmt_rate(p.closed_per_s)),
            gauge(p.fds, p.fd_limit, 5), num(fmt_pct(p.fd_ratio), fill_style(p.fd_ratio or 0.0)),
            _per_connection(p), _advice(p))


def _per_connection(p: ProcessRow) -> Text:
    """Memory per connection (resident memory / connections held; the detail
    pane has the memory itself), red when its projection would not fit, yellow
    when it would come close (tracer/domain/memory.py)."""
    proj = p.memory_projection()
    style = {"crit": "bold red", "warn": "yellow"}.get(proj.severity if proj else None, "")
    return num(memory.size(p.memory_per_connection), style)


PROCESSES = TableSpec(
    name="processes",
    columns=(Col("PID", 7), Col("COMM", 15, False), Col("ESTAB", 6), Col("SYN", 4),
             Col("LISTEN", 6), Col("CLOSE_W", 7), Col("OTHER", 5), Col("OPEN/s", 6),
             Col("CLOSE/s", 7), Col("FDS / LIMIT", 18, False), Col("FD%", 4),
             Col("MEM/CONN", 8), Col("POOLING", 0, False)),
    sorts=(
        Sort("worst", lambda p: (-(p.fd_ratio or 0.0) if (p.fd_ratio or 0) > 0.8 else 0,
                                 -p.churning, -p.close_wait, -p.sockets, p.pid)),
        Sort("sockets", lambda p: (-p.sockets, p.pid)),
        Sort("fd%", lambda p: (-(p.fd_ratio or 0.0), p.pid)),
        Sort("churn", lambda p: (-p.opened_per_s, p.pid)),
        Sort("close_wait", lambda p: (-p.close_wait, p.pid)),
        Sort("mem/conn", lambda p: (-(p.memory_per_connection or 0.0), p.pid)),
        Sort("pid", lambda p: p.pid),
    ),
    items=lambda s: s.processes,
    row_key=lambda p: (p.pid,),
    cells=_process_cells,
    search_text=lambda p: f"{p.pid} {p.comm} {_where(p)}",
)


PROCESSES_IN_CONTAINERS = with_container(PROCESSES, _container_of_process)
# (a listener's container is its owner's)
LISTENERS_IN_CONTAINERS = with_container(LISTENERS, _container_of_process)


def in_containers(s: Snapshot) -> bool:
    """The snapshot has processes, connects or listeners in a container (not the host)."""
    return (any(r.container for r in s.destinations)
            or any(p.container is not None and p.container.container_label
                   for p in (*s.processes, *s.listeners)))


# ---------------------------------------------------------------- log

def _notable_key(n: Notable) -> tuple:
    return ("notable", n.ts_us, n.kind, n.text)


LOG = TableSpec(
    name="log",
    columns=(Col("TIME UTC", 8, False), Col("SEV", 6, False), Col("KIND", 14, False),
             Col("EVENT", 0, False)),
    sorts=(Sort("newest first", lambda n: -n.ts_us),),
    items=lambda s: tuple(reversed(s.notable)),
    row_key=_notable_key,
    cells=lambda n: (fmt_clock(n.ts_us), severity_cell(n.severity), n.kind, n.text),
    search_text=lambda n: f"{n.kind} {n.text}",
)


# ---------------------------------------------------------------- sort, filter, slice

# What an on-call can do without on a narrow screen (80x24 over ssh), first
# folded first, by title. Columns not named here (and each table's first) are
# kept; folded columns are named in the caption and are all in the detail
# pane (Enter). At 80 columns: connects keep destination, rate, pending,
# refused, timeout, errors, p50 and p99; listeners keep listener, queue,
# drops and wait p99; processes keep pid, comm, established, opens, fds and
# pooling.
FOLD_ORDER = {
    "connects": ("trend", "p95", "CONTAINER", "TOTAL", "SYNRTX", "max"),
    "listeners": ("WAIT p50", "ACCEPTS", "PEAK", "CONTAINER", "OWNER"),
    "processes": ("OTHER", "LISTEN", "SYN", "CONTAINER", "CLOSE/s", "FD%", "CLOSE_W",
                  "MEM/CONN"),
    "map": ("p50", "ERR", "TIMEOUT"),
}
MIN_FLEX = 8


def _row_width(cols: Sequence[Col], gap: int) -> int:
    return sum(c.width or MIN_FLEX for c in cols) + gap * (len(cols) - 1)


def shown_columns(spec: TableSpec, available: int, gap: int = 2) -> list[int]:
    """Indexes of the columns that fit `available` cells, folding the ones
    FOLD_ORDER names first, then (still too wide) from the right; the first
    column always stays."""
    keep = list(range(len(spec.columns)))
    order = [t for t in FOLD_ORDER.get(spec.name, ())]
    order += [c.title for c in reversed(spec.columns[1:]) if c.title not in order]
    for title in order:
        if _row_width([spec.columns[i] for i in keep], gap) <= available:
            break
        for i in keep[1:]:
            if spec.columns[i].title == title:
                keep.remove(i)
                break
    return keep


def column_widths(spec: TableSpec, available: int, gap: int = 2) -> list[int]:
    """Column widths for a row `available` cells wide, 0 for a folded column;
    a width-0 column takes the rest (at least 8), so long text fits without
    a horizontal scrollbar."""
    keep = shown_columns(spec, available, gap)
    fixed = sum(spec.columns[i].width for i in keep) + gap * (len(keep) - 1)
    rest = max(MIN_FLEX, available - fixed)
    return [(c.width or rest) if i in keep else 0 for i, c in enumerate(spec.columns)]


def folded_titles(spec: TableSpec, widths: Sequence[int]) -> list[str]:
    return [c.title for c, w in zip(spec.columns, widths) if not w]


def _fit(cell, width: int, right: bool) -> Text:
    # Strings are data (names, labels, log lines other processes chose): plain
    # Text, never markup (a DataTable would read "[fd00::7]:443" or a process
    # named "[/x]" as markup), with control characters shown escaped. Cells
    # made as Text are the views' own numbers and words.
    t = cell.copy() if isinstance(cell, Text) else Text(printable(cell))
    t.no_wrap = True
    if t.cell_len > width and right:
        short = fit_count(t.plain, width)   # 1,149 in 3 cells: "1k", never "1,…"
        if short is not None:
            t = Text(short, style=t.style, justify="right", no_wrap=True)
    if t.cell_len > width:
        t.truncate(width, overflow="ellipsis")
    pad = width - t.cell_len
    if pad > 0:
        if right:
            t.pad_left(pad)
        else:
            t.pad_right(pad)
    return t


def join_cells(spec: TableSpec, cells: Sequence, widths: Sequence[int], gap: int = 2) -> Text:
    """One table row as one line of text. A DataTable cell costs about as much
    to measure and draw as a whole line, so each row is a single cell."""
    line = Text(no_wrap=True, end="")
    first = True
    for col, cell, width in zip(spec.columns, cells, widths):
        if not width:       # folded on a narrow screen
            continue
        if not first:
            line.append(" " * gap)
        first = False
        line.append_text(_fit(cell, width, col.right))
    return line


def header_line(spec: TableSpec, widths: Sequence[int]) -> Text:
    line = join_cells(spec, [c.title for c in spec.columns], widths)
    line.stylize("bold")
    return line


def matches(text: str, terms: Sequence[str]) -> bool:
    text = text.lower()
    return all(t in text for t in terms)


def visible(spec: TableSpec, items: Sequence, filter_text: str = "", sort: int = 0,
            limit: int = ROW_LIMIT) -> tuple[list, int]:
    """The rows to draw (filtered, sorted, at most `limit`) and how many matched.
    Filter: every whitespace-separated term must be a case-insensitive substring
    of the row's text (pid, comm, port, address)."""
    terms = filter_text.lower().split()
    if terms:
        # the text as shown: what the user sees ("a\\eb") is what the filter finds
        items = [it for it in items if matches(printable(spec.search_text(it)), terms)]
    total = len(items)
    items = sorted(items, key=spec.sorts[sort % len(spec.sorts)].key)
    return list(items[:limit]), total
