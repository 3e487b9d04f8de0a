"""What the TUI says about one selected row: the panel under each table and the
Enter detail screen. Pure functions returning rich Text (no textual)."""
from __future__ import annotations

from rich.text import Text

from tracer.aggregate.connects import ConnectRow
from tracer.aggregate.snapshot import ListenerRow, Notable, ProcessRow, Snapshot
from tracer.domain import memory
from tracer.safe_text import printable
from tracer.tui.problems import HINTS, Problem
from tracer.tui.table_views import SEVERITY_STYLE, fill_style, latency_style, severity_cell
from tracer.tui.text_charts import bar, histogram_lines, sparkline
from tracer.tui.units import fmt_bytes, fmt_clock, fmt_pct, fmt_rate, fmt_us


def _kv(t: Text, label: str, value: str, style: str = "") -> None:
    """label and value: the views' own words and numbers, never names."""
    t.append(f"{label} ", style="dim")
    t.append(value, style=style or "bold")
    t.append("   ")


def latency_buckets(snapshot: Snapshot | None, row_key: tuple) -> tuple | None:
    """Histogram buckets of a connects row from extra["latency_buckets"] (keyed
    ("dest", key) or ("proc", key)); None if the snapshot carries none at all."""
    if snapshot is None or "latency_buckets" not in snapshot.extra:
        return None
    return snapshot.extra["latency_buckets"].get(row_key, ())


# ---------------------------------------------------------------- connects

def connect_summary(r: ConnectRow) -> Text:
    t = Text()
    t.append(printable(r.label), style="bold cyan")
    t.append(f"   {r.attempts:,} attempt{'' if r.attempts == 1 else 's'}, "
             f"{fmt_rate(r.rate)}/s now", style="dim")
    if r.pending:
        age = r.oldest_pending_s
        t.append(f"   {r.pending:,} pending" + (f", oldest {age:.1f}s" if age is not None else ""),
                 style="bold red" if (age or 0) >= 1.0 else "bold yellow")
    t.append("\n")
    _kv(t, "ok", f"{r.established:,}", "bold green")
    # each outcome apart here (tracer/domain/outcomes.py; the table sums them),
    # the two rarer ones only when they happened
    for n, name in ((r.refused, "refused"), (r.timeout, "timed out"),
                    (r.abandoned, "given up"), (r.unreachable, "unreachable"),
                    (r.error, "failed")):
        if n or name not in ("given up", "unreachable"):
            _kv(t, name, f"{n:,}", "bold red" if n else "dim")
    if r.abandoned_max_wait_us is not None:
        _kv(t, "gave up after", f"up to {fmt_us(r.abandoned_max_wait_us)}", "bold red")
    _kv(t, "SYN rtx", f"{r.syn_retransmits:,}", "bold yellow" if r.syn_retransmits else "dim")
    return t


def percentiles(r: ConnectRow) -> Text:
    t = Text()
    for name, v in (("p50", r.p50_us), ("p95", r.p95_us), ("p99", r.p99_us), ("max", r.max_us)):
        _kv(t, name, fmt_us(v), latency_style(v) or "bold")
    return t


def p99_chart(r: ConnectRow, width: int, height: int) -> Text:
    history = r.p99_history
    present = [v for v in history if v is not None]
    t = Text()
    t.append("p99 per interval", style="bold")
    shown = min(width, len(history))
    if present:
        t.append(f"  last {shown}, peak {fmt_us(max(present[-width:] or present))}; "
                 f"blank = no connects\n", style="dim")
    else:
        t.append("  no established connects yet\n", style="dim")
    for line in sparkline(history, width, height):
        t.append(line + "\n", style="cyan")
    return t


def histogram_text(buckets, width: int, rows: int = 7) -> Text:
    t = Text()
    t.append("latency since start", style="bold")
    if buckets is None:
        t.append("\n(not in this source's snapshots)", style="dim")
        return t
    lines = histogram_lines(buckets, width, rows)
    if not lines:
        t.append("\n(no established connects)\n", style="dim")
        return t
    t.append("\n")
    for label, b, count in lines:
        t.append(label, style="dim")
        t.append(" " + b, style="magenta")
        t.append(f" {count}\n")
    return t


# ---------------------------------------------------------------- listeners and processes

def container_lines(t: Text, where) -> None:
    """Where the process runs (tracer.domain.containers.Attribution), if known.
    Every part was named by someone else: shown through printable."""
    if where is None or where.cgroup is None:
        return
    if where.pod_uid:
        pod = (f"{where.pod_namespace}/{where.pod_name}" if where.pod_name
               else "(name not known)")
        _kv(t, "pod", printable(f"{pod} uid {where.pod_uid}"), "bold")
        if where.container_name:
            _kv(t, "container name", printable(where.container_name), "bold")
    if where.container_id:
        _kv(t, where.container_runtime or "container", printable(where.container_id), "bold")
    cid = f" (id {where.cgroup_id})" if where.cgroup_id is not None else ""
    _kv(t, "cgroup", printable(where.cgroup) + cid)
    t.append("\n")


def listener_summary(r: ListenerRow) -> Text:
    t = Text()
    t.append(printable(r.label), style="bold cyan")
    t.append(f"  owner {printable(r.comm or '?')}[{r.pid if r.pid is not None else '?'}]\n",
             style="dim")
    container_lines(t, r.container)
    fill = r.queue_peak / r.backlog_max if r.backlog_max else 0.0
    t.append("accept queue ", style="dim")
    t.append(bar(r.queue_len / r.backlog_max if r.backlog_max else 0.0, 30),
             style=fill_style(r.queue_len / r.backlog_max if r.backlog_max else 0.0))
    t.append(f" {r.queue_len}/{r.backlog_max} now, peak {r.queue_peak} ({fmt_pct(fill)})\n")
    _kv(t, "dropped", f"{r.drops:,} conn + {r.syn_drops:,} SYN this interval",
        "bold red" if r.drops or r.syn_drops else "dim")
    _kv(t, "rate", f"{fmt_rate(r.drops_per_s)}/s", "bold red" if r.drops_per_s else "dim")
    _kv(t, "since start", f"{r.drops_total:,}", "bold red" if r.drops_total else "dim")
    t.append("\n")
    _kv(t, "accepted", f"{r.accepts:,}")
    _kv(t, "wait p50", fmt_us(r.accept_wait_p50_us), latency_style(r.accept_wait_p50_us))
    _kv(t, "wait p99", fmt_us(r.accept_wait_p99_us), latency_style(r.accept_wait_p99_us))
    _kv(t, "SYN queue", "-" if r.syn_queue_len is None else f"{r.syn_queue_len:,}")
    _kv(t, "SYN-ACK rtx", f"{r.synack_retransmits:,}")
    return t


def process_summary(p: ProcessRow) -> Text:
    t = Text()
    t.append(f"{printable(p.comm)}[{p.pid}]", style="bold cyan")
    t.append(f"  {p.sockets:,} TCP sockets\n", style="dim")
    container_lines(t, p.container)
    for name, n in (("ESTABLISHED", p.established), ("SYN_SENT", p.syn_sent),
                    ("LISTEN", p.listen), ("CLOSE_WAIT", p.close_wait), ("other", p.other)):
        _kv(t, name, f"{n:,}", "bold yellow" if name == "CLOSE_WAIT" and n else "bold")
    t.append("\n")
    _kv(t, "opens", f"{fmt_rate(p.opened_per_s)}/s")
    _kv(t, "closes", f"{fmt_rate(p.closed_per_s)}/s")
    ratio = p.fd_ratio
    if ratio is not None:
        t.append("fds ", style="dim")
        t.append(bar(ratio, 12), style=fill_style(ratio))
        t.append(f" {p.fds:,}/{p.fd_limit:,} ({fmt_pct(ratio)})   ")
    _kv(t, "send-q", fmt_bytes(p.tx_queue_bytes))
    _kv(t, "recv-q", fmt_bytes(p.rx_queue_bytes))
    if p.socket_rmem_bytes is not None or p.socket_wmem_bytes is not None:
        _kv(t, "socket mem", f"{memory.size(p.socket_rmem_bytes)} rx, "
                             f"{memory.size(p.socket_wmem_bytes)} tx")
    if p.rss_bytes is not None:
        t.append("\n")
        _kv(t, "rss", memory.size(p.rss_bytes))
        _kv(t, "per connection", memory.size(p.memory_per_connection))
        if p.cgroup_memory_bytes is not None:
            _kv(t, "cgroup uses", memory.size(p.cgroup_memory_bytes))
        if p.memory_limit_bytes:
            _kv(t, "available", f"{memory.size(p.memory_limit_bytes)} "
                                f"({p.memory_limit_from or '?'})")
        proj = p.memory_projection()
        if proj is not None:
            t.append(f"\n{printable(proj.text(f'{p.comm}[{p.pid}]'))}",
                     style={"crit": "bold red", "warn": "bold yellow"}.get(proj.severity or "",
                                                                            "dim"))
    for a in p.advice:
        t.append(f"\n{printable(a.destination)}: ", style="bold cyan")
        t.append(printable(a.verdict),
                 style="bold yellow" if a.verdict.startswith("churning") else "bold")
        t.append(f"  ({fmt_rate(a.arrival_per_s)} new/s x {fmt_us(a.hold_s * 1e6)} held; in use "
                 f"{a.in_use}, p99 {a.concurrency_p99:.0f}, peak {a.concurrency_peak}; pool "
                 f"{a.recommended})", style="dim")
    return t


# ---------------------------------------------------------------- overview and log

def problem_summary(p: Problem) -> Text:
    t = Text()
    t.append_text(severity_cell(p.severity))
    t.append(f" {p.kind}: ", style="bold")
    t.append(printable(p.subject), style="bold cyan")
    t.append(f"\n{printable(p.detail)}\n")
    hint = HINTS.get(p.kind)
    if hint:
        t.append(hint, style="italic")
    return t


def recent_events(notable, limit: int) -> Text:
    """The newest log lines, newest first, for the Overview."""
    t = Text()
    t.append("recent events", style="bold")
    t.append("  (5: the whole log)\n", style="dim")
    shown = list(reversed(notable))[:limit]
    if not shown:
        t.append("nothing notable yet", style="dim")
    for n in shown:
        t.append(f"{fmt_clock(n.ts_us)} ", style="dim")
        t.append_text(severity_cell(n.severity))
        t.append(f" {printable(n.kind)}: ", style="bold")
        t.append(printable(n.text) + "\n")
    return t


def notable_summary(n: Notable) -> Text:
    t = Text(f"{fmt_clock(n.ts_us)} UTC ", style="dim")
    t.append(f" {n.severity} ", style=SEVERITY_STYLE.get(n.severity, ""))
    t.append(f" {printable(n.kind)}\n", style="bold")
    t.append(printable(n.text))
    return t


# ---------------------------------------------------------------- the Enter screen

def detail_text(item, snapshot: Snapshot | None, row_key: tuple | None, width: int) -> Text:
    """Everything known about one row, for the detail screen."""
    if isinstance(item, ConnectRow):
        t = connect_summary(item)
        t.append("\n")
        t.append_text(percentiles(item))
        t.append("\n\n")
        t.append_text(p99_chart(item, max(20, width - 4), 6))
        t.append("\n")
        t.append_text(histogram_text(latency_buckets(snapshot, row_key), max(10, width - 30), 12))
        return t
    if isinstance(item, ListenerRow):
        return listener_summary(item)
    if isinstance(item, ProcessRow):
        return process_summary(item)
    if isinstance(item, Problem):
        return problem_summary(item)
    if isinstance(item, Notable):
        return notable_summary(item)
    return Text(printable(item))


def detail_title(item) -> str:
    """The detail screen's title, names shown escaped (plain text: the screen
    must not read it as markup)."""
    return printable(_title(item))


def _title(item) -> str:
    if isinstance(item, ConnectRow):
        return f"connects to {item.label}" if item.key and len(item.key) == 3 else \
            f"connects by {item.label}"
    if isinstance(item, ListenerRow):
        return f"listener {item.label}"
    if isinstance(item, ProcessRow):
        return f"process {item.comm}[{item.pid}]"
    if isinstance(item, Problem):
        return f"{item.kind}: {item.subject}"
    if isinstance(item, Notable):
        return f"{item.kind} at {fmt_clock(item.ts_us)} UTC"
    return "detail"

