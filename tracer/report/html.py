"""The summary as one self-contained HTML file: inline CSS and inline SVG, no
script, no font, no image and no URL, so it opens offline, from a ticket or a
mail attachment, years later. Every string from the recording is escaped."""

from __future__ import annotations

import math
from html import escape
from typing import Sequence

from tracer.domain import memory
from tracer.domain.hooks import skipped_runs_text
from tracer.domain.pools import FORMULA
from tracer.report.hosts import hosts_text
from tracer.report.pool import window
from tracer.report.summary import Summary
from tracer.report.edges import graph_of
from tracer.report.svg import graph, histogram, timeseries
from tracer.report.text import HOST_HEADERS, cell, clean, host_rows
from tracer.report.timefmt import clock, duration, iso_stamp, rate, stamp

SEV_LABEL = {"crit": "CRIT", "warn": "WARN", "info": "INFO"}
COLORS = {"p50": "#2e7d32", "p99": "#c62828", "drops": "#d9480f", "queue": "#1c7ed6",
          "backlog": "#c62828", "sockets": "#495057", "established": "#1c7ed6",
          "close_wait": "#d9480f", "fds": "#9c36b5"}
CHARTED = 6

CSS = """
:root { color-scheme: light; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0;
       color: #1f2328; background: #f6f7f9; }
header { background: #1f2937; color: #f9fafb; padding: 16px 28px; }
header h1 { margin: 0 0 4px; font-size: 20px; }
header .meta { color: #cbd5e1; }
main { padding: 8px 28px 40px; max-width: 1240px; }
section { background: #fff; border: 1px solid #e5e7eb; border-radius: 8px;
          padding: 14px 18px; margin: 16px 0; }
h2 { font-size: 16px; margin: 0 0 10px; }
h3 { font-size: 14px; margin: 14px 0 6px; }
.lost { background: #c62828; color: #fff; font-weight: 700; font-size: 16px;
        padding: 12px 18px; border-radius: 8px; margin: 16px 0; }
ol.findings { margin: 0; padding-left: 22px; }
ol.findings li { margin: 5px 0; }
ol.findings a { color: inherit; text-decoration: none; }
ol.findings a:hover { text-decoration: underline; }
.badge { display: inline-block; min-width: 40px; text-align: center; border-radius: 4px;
         font-size: 11px; font-weight: 700; padding: 1px 5px; margin-right: 8px; color: #fff; }
.crit { background: #c62828; } .warn { background: #e67700; } .info { background: #1c7ed6; }
.ok { color: #2e7d32; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid #edf0f3;
         vertical-align: top; }
th { background: #f1f3f5; font-weight: 600; white-space: nowrap; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
td.bad { color: #c62828; font-weight: 600; }
.charts { display: grid; grid-template-columns: repeat(auto-fill, minmax(560px, 1fr));
          gap: 12px; margin-top: 12px; }
.charts svg { max-width: 100%; height: auto; background: #fff; }
.note { color: #57606a; font-size: 12.5px; }
.graph svg { max-width: 100%; height: auto; }
code { font-size: 12.5px; }
"""


def _e(value) -> str:
    return escape(clean(value), quote=True)


def _cell(value, header: str) -> str:
    return escape(cell(value, header), quote=True)


def _table(headers: Sequence[str], rows: Sequence[Sequence], numeric: Sequence[int] = (),
           bad: Sequence[Sequence[bool]] = ()) -> str:
    head = "".join(f'<th class="n">{_e(h)}</th>' if i in numeric else f"<th>{_e(h)}</th>"
                   for i, h in enumerate(headers))
    body = []
    for r, row in enumerate(rows):
        cells = []
        for i, (v, h) in enumerate(zip(row, headers)):
            cls = " ".join(c for c, on in (("n", i in numeric),
                                          ("bad", bool(bad) and bad[r][i])) if on)
            text = _cell(v, h)
            cells.append(f'<td class="{cls}">{text}</td>' if cls else f"<td>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _section(anchor: str, title: str, *parts: str) -> str:
    return f'<section id="{anchor}"><h2>{_e(title)}</h2>{"".join(parts)}</section>'


def _p(text: str, cls: str = "note") -> str:
    return f'<p class="{cls}">{_e(text)}</p>'


def _header(s: Summary, source: str) -> str:
    ov = s.overview
    span = (f"{stamp(ov.first_us)} to {stamp(ov.last_us)} ({duration(ov.duration_s * 1e6)})"
            if ov.first_us is not None else "no rows recorded")
    meta = (f"{span} · hosts: {hosts_text(ov.hosts) or '-'} · {len(ov.runs)} run(s) · "
            f"backends: {', '.join(ov.backends) or '-'}")
    out = (f'<header><h1>connscope report: {_e(source)}</h1>'
           f'<div class="meta">{_e(meta)}</div></header>')
    return out


def _banners(s: Summary) -> str:
    ov = s.overview
    out = []
    if ov.lost_events:
        by = ", ".join(f"{t}: {n:,}" for t, n in sorted(ov.lost_by_table.items()))
        out.append(f'<div class="lost">{ov.lost_events:,} events were LOST by the kernel '
                   f'({_e(by)}). Every count in this report is a lower bound.</div>')
    if ov.missed_runs:
        out.append(f'<div class="lost">{_e(skipped_runs_text(ov.missed_runs_by))} (BPF '
                   f'recursion): each may have been an event.</div>')
    if ov.dropped_rows:
        out.append(f'<div class="lost">{ov.dropped_rows:,} rows were never written (disk full '
                   f'or unwritable): the recording has gaps.</div>')
    return "".join(out)


def _findings(s: Summary) -> str:
    if not s.findings:
        return _section("first", "What to look at first",
                        _p("Nothing stands out: no drops, failures, slow connects or leaks.",
                           "ok"))
    items = "".join(f'<li><span class="badge {f.severity}">{SEV_LABEL[f.severity]}</span>'
                    f'<a href="#{f.section}">{_e(f.text)}</a></li>' for f in s.findings)
    return _section("first", "What to look at first", f'<ol class="findings">{items}</ol>')


def _overview(s: Summary) -> str:
    ov = s.overview
    rows = [(r.run_id, r.host, r.backend_text, r.kernel, r.status, iso_stamp(r.start), iso_stamp(r.end),
             r.lost_events, r.dropped_rows) for r in ov.runs]
    bad = [[False] * 4 + [r.status not in ("complete",)] + [False] * 2
           + [r.lost_events > 0, r.dropped_rows > 0] for r in ov.runs]
    counts = ", ".join(f"{t} {n:,}" for t, n in ov.rows.items())
    return _section("overview", "Recording",
                    _p(f"Rows: {counts}. Files: {ov.files_read} read, "
                       f"{len(ov.problems)} skipped. Kernels: {', '.join(ov.kernels) or '-'}."),
                    _table(("run", "host", "backend", "kernel", "status", "start", "end",
                            "lost events", "unwritten rows"), rows, numeric=(7, 8), bad=bad))


def _hosts(s: Summary) -> str:
    rows = host_rows(s)
    if not rows:
        return ""
    # the last row is the sum of the others: the fleet's totals
    bad = [[False] * 8 + [r[8] > 0, r[9] > 0, False, r[11] > 0, r[12] > 0] for r in rows]
    return _section("hosts", f"Hosts ({len(s.hosts):,})",
                    _p("Connects by outcome, listeners and their drops, and losses, per host; "
                       "the last row is their sum."),
                    _table(HOST_HEADERS, rows, numeric=tuple(range(1, len(HOST_HEADERS))),
                           bad=bad))


def _latency(s: Summary) -> str:
    if "connects" not in s.tables_present:
        return _section("latency", "Connect latency", _p("No connects recorded."))
    charted = [d for d in s.slowest if d.histogram]
    charts = []
    if charted:
        # whole decades, so both ends of the axis carry a label
        lo = 10.0 ** math.floor(math.log10(min(d.histogram[0][0] for d in charted)) + 1e-9)
        hi = 10.0 ** math.ceil(math.log10(max(d.histogram[-1][1] for d in charted)) - 1e-9)
        for d in charted:
            title = f"{d.label}: {d.samples:,} connects, p99 {duration(d.p99_us)}"
            charts.append(histogram(d.histogram, lo, hi, title,
                                    markers=[(d.p50_us, f"p50 {duration(d.p50_us)}", COLORS["p50"]),
                                             (d.p99_us, f"p99 {duration(d.p99_us)}", COLORS["p99"])]))
    rows = [(d.label, d.samples, duration(d.p50_us), duration(d.p99_us), duration(d.max_us), d.retransmitted,
             d.hosts, ", ".join(d.comms)) for d in s.slowest]
    return _section("latency", "Slowest destinations (connect latency)",
                    _p("Established connects only; latency is connect() to handshake done. "
                       "Histograms share a log-scaled axis; percentiles are nearest-rank."),
                    _table(("destination", "connects", "p50", "p99", "max", "SYN retx",
                            "hosts", "processes"), rows, numeric=(1, 2, 3, 4, 5, 6)),
                    f'<div class="charts">{"".join(charts)}</div>')


def _failing(s: Summary) -> str:
    if "connects" not in s.tables_present:
        return ""
    c = s.connects
    intro = _p(f"{c.attempts:,} connects to {c.destinations:,} destinations: {c.refused:,} "
               f"refused, {c.timeout:,} timed out, {c.error:,} other errors, "
               f"{c.retransmitted:,} needed SYN retransmits.")
    if not s.failing:
        return _section("destinations", "Failing destinations", intro,
                        _p("Every connect was established without a SYN retransmit.", "ok"))
    rows = [(d.label, d.attempts, d.refused, d.timeout, d.error, f"{d.failure_ratio:.0%}",
             d.retransmitted, clock(d.first_failure_us), clock(d.last_failure_us),
             ", ".join(d.comms)) for d in s.failing]
    bad = [[False, False, d.refused > 0, d.timeout > 0, d.error > 0, d.failures > 0,
            False, False, False, False] for d in s.failing]
    procs = [(p.comm, p.pid, p.host, p.attempts, rate(p.per_s), p.failures, p.destinations)
             for p in s.connecting]
    return _section("destinations", "Failing destinations", intro,
                    _table(("destination", "attempts", "refused", "timeout", "error", "failed",
                            "SYN retx", "first failure", "last failure", "processes"), rows,
                           numeric=(1, 2, 3, 4, 5, 6), bad=bad),
                    f"<h3>Busiest connecting processes (rate: connects per second over the "
                    f"whole recording, {_e(duration(s.overview.duration_s * 1e6))})</h3>",
                    _table(("process", "pid", "host", "connects", "rate", "failed",
                            "destinations"), procs, numeric=(1, 3, 4, 5, 6)))


def _listeners(s: Summary) -> str:
    title = "Listeners that dropped connections or came close"
    if not s.tables_present & {"listeners", "overflows", "accepts"}:
        return _section("listeners", title, _p("No listener data recorded."))
    if not s.listeners:
        return _section("listeners", title, _p(f"None of {s.listeners_seen} listeners dropped "
                                               f"a connection or filled its queue.", "ok"))
    ov = s.overview
    rows, charts, minutes = [], [], []
    for li in s.listeners:
        rows.append((li.label, li.host, li.owner, li.drops, li.syn_drops, li.queue_vs_backlog,
                     clock(li.first_drop_us), clock(li.last_drop_us), li.accepts,
                     duration(li.accept_wait_p99_us)))
        width_s = li.bucket_us // 1_000_000
        drops = [(t, d) for t, d, _ in li.timeline]
        queue = [(t, q) for t, _, q in li.timeline]
        name = f"{li.label} on {li.host}"
        charts.append(timeseries(ov.first_us, ov.last_us, f"{name}: drops",
                                 [{"name": f"dropped per {width_s} s", "color": COLORS["drops"],
                                   "points": drops, "kind": "bars", "bar_us": li.bucket_us}],
                                 y_label=f"connections dropped per {width_s} s", height=150))
        hl = [(li.backlog_max, f"backlog {li.backlog_max}", COLORS["backlog"])] \
            if li.backlog_max else []
        charts.append(timeseries(ov.first_us, ov.last_us, f"{name}: accept queue",
                                 [{"name": "queue peak", "color": COLORS["queue"],
                                   "points": queue}], hlines=hl,
                                 y_label=f"highest queue length per {width_s} s", height=150))
        minutes += [(name, clock(m)[:5] + "Z", d, sy) for m, d, sy in li.drop_minutes]
    parts = [_table(("listener", "host", "owner", "dropped", "SYNs dropped", "queue peak",
                     "first drop", "last drop", "accepts", "accept wait p99"), rows,
                    numeric=(3, 4, 8, 9)),
             f'<div class="charts">{"".join(charts)}</div>']
    if minutes:
        parts += ["<h3>Drops per minute</h3>",
                  _table(("listener", "minute", "dropped", "SYNs dropped"), minutes,
                         numeric=(2, 3))]
    return _section("listeners", title, *parts)


def _processes(s: Summary) -> str:
    if "sockets" not in s.tables_present:
        return _section("processes", "Processes", _p("No per-process socket data recorded."))
    ov = s.overview
    rows = [(p.comm, p.pid, p.host, p.peak_sockets, p.last_sockets, p.peak_established,
             p.last_close_wait, f"{p.peak_fds if p.peak_fds is not None else '?'}/"
             f"{p.fd_limit or '?'}" + (f" ({p.fd_ratio:.0%})" if p.fd_ratio is not None else ""))
            for p in s.by_sockets]
    bad = [[False] * 6 + [p.close_wait_leak, (p.fd_ratio or 0) >= 0.8] for p in s.by_sockets]
    charts = []
    for p in s.by_sockets[:CHARTED]:
        tl = p.timeline
        series = [{"name": "all sockets", "color": COLORS["sockets"],
                   "points": [(t[0], t[1]) for t in tl]},
                  {"name": "established", "color": COLORS["established"],
                   "points": [(t[0], t[2]) for t in tl]},
                  {"name": "close_wait", "color": COLORS["close_wait"],
                   "points": [(t[0], t[3]) for t in tl]}]
        limit = []
        if p.fd_ratio is not None and p.fd_ratio >= 0.5:  # the limit matters: draw it
            series.append({"name": "fds", "color": COLORS["fds"],
                           "points": [(t[0], t[4]) for t in tl]})
            limit = [(p.fd_limit, f"fd limit {p.fd_limit}", COLORS["backlog"])]
        charts.append(timeseries(ov.first_us, ov.last_us,
                                 f"{p.comm} ({p.pid}) on {p.host}", series, hlines=limit))
    churn = [(p.comm, p.pid, p.host, rate(p.opened_per_s), rate(p.closed_per_s), p.opened)
             for p in s.by_churn]
    return _section("processes", "Processes by sockets held",
                    _table(("process", "pid", "host", "peak sockets", "at end", "established",
                            "close_wait at end", "fds/limit"), rows,
                           numeric=(1, 3, 4, 5, 6), bad=bad),
                    f'<div class="charts">{"".join(charts)}</div>',
                    "<h3>Processes by churn (TCP sockets opened and closed per second over the "
                    "time each process was seen)</h3>",
                    _table(("process", "pid", "host", "opened", "closed", "opened total"),
                           churn, numeric=(1, 3, 4, 5)),
                    *_memory(s))


def _memory(s: Summary) -> list[str]:
    """Memory per connection where each process held the most connections
    (tracer/domain/memory.py), and its projection."""
    rows, bad = [], []
    for p in s.by_sockets:
        if p.memory_per_connection is None:
            continue
        proj = p.memory_projection
        rows.append((p.comm, p.pid, p.host, p.connections, memory.size(p.memory_row["rss_bytes"]),
                     memory.size(p.memory_per_connection),
                     f"{proj.target:,}: {memory.size(proj.projected)} of "
                     f"{memory.size(proj.available)} ({proj.share:.0%}, {proj.source})"
                     if proj else "-"))
        bad.append([False] * 6 + [bool(proj and proj.severity)])
    if not rows:
        return []
    return [f"<h3>Memory per connection (resident memory / TCP connections held, where each "
            f"held the most; projected to {memory.USERS:,} connections or its listen "
            f"backlog)</h3>",
            _table(("process", "pid", "host", "connections", "resident", "per connection",
                    "projected"), rows, numeric=(1, 3, 4, 5), bad=bad)]


def _pool(s: Summary) -> str:
    formula = (f"Each flow's busiest window, as recorded in the pools table. {FORMULA}.")
    if "pools" not in s.tables_present:
        return _section("pool", "Pool advice", _p(formula),
                        _p("No process connected anywhere while the recorder watched."))
    rows = [(a.comm, a.pid, a.host, a.destination, window(a), rate(a.arrival_per_s),
             duration(a.hold_s * 1e6) if a.hold_s is not None else "-",
             f"{a.concurrency_mean:.1f}", f"{a.concurrency_p99:.1f}", a.recommended,
             a.in_use_peak, a.verdict) for a in s.pool]
    bad = [[False] * 11 + [a.churning] for a in s.pool]
    return _section("pool", "Pool advice", _p(formula),
                    _table(("process", "pid", "host", "destination", "window", "new/s", "held",
                            "mean", "p99", "pool", "in use", "verdict"), rows,
                           numeric=(1, 5, 7, 8, 9, 10), bad=bad))


def _edges(s: Summary) -> str:
    title = "Connection map"
    if not s.edges:
        return _section("edges", title, _p("No edges recorded (nothing connected, or recorded "
                                           "before the edges table existed)."))
    several = len({e.host for e in s.edges}) > 1
    nodes, links = graph_of(list(s.edges), several)
    # (svg.py shows every label escaped: control characters, then markup)
    drawn = graph(nodes,
                  [(a, b, e.per_s, e.troubled,
                    f"{e.client} -> {e.destination}" + (f" -> {e.server}" if e.server else "")
                    + f": {e.connects:,} connects, {rate(e.per_s)}, {e.failures:,} failed, "
                    f"{e.listener_drops or 0:,} listener drops") for a, b, e in links],
                  f"Who connects to whom ({len(s.edges)} of {s.edges_seen} edges)")
    rows = [(e.client, e.host, e.destination, e.server or "-", rate(e.per_s),
             rate(e.peak_per_s), e.connects, e.established_peak,
             duration(e.p50_us) if e.p50_us is not None else "-",
             duration(e.p99_us) if e.p99_us is not None else "-", e.refused, e.timeout,
             e.error, e.listener_drops) for e in s.edges]
    bad = [[False] * 10 + [bool(e.refused), bool(e.timeout), bool(e.error),
                           bool(e.listener_drops)] for e in s.edges]
    return _section("edges", title,
                    _p("Client process -> destination -> the process serving it where the "
                       "destination is a listener of the traced host; each process \"in\" its "
                       "container where it runs in one. Line width: connects "
                       "per second; red: failed connects or drops at the listener."),
                    f'<div class="graph">{drawn}</div>',
                    _table(("client", "host", "destination", "server", "conn/s", "peak/s",
                            "connects", "held", "p50", "p99", "refused", "timeout", "error",
                            "drops"), rows, numeric=(4, 5, 6, 7, 8, 9, 10, 11, 12, 13), bad=bad))


def _containers(s: Summary) -> str:
    """By container or pod; absent when no row names one (nothing to say)."""
    if not s.containers:
        return ""
    rows = [(c.label, c.host, c.connects, c.connect_failures, c.accepts, c.drops, c.processes)
            for c in s.containers]
    bad = [[False] * 3 + [bool(c.connect_failures), False, bool(c.drops), False]
           for c in s.containers]
    return _section("containers", "By container or pod",
                    _p("Connects made and failed, connections accepted and accept-queue drops "
                       "of the processes in each; host: in no container."),
                    _table(("container or pod", "host", "connects", "failed", "accepts",
                            "dropped", "processes"), rows, numeric=(2, 3, 4, 5, 6), bad=bad))


def _problems(s: Summary) -> str:
    problems = s.overview.problems
    if not problems:
        return ""
    items = "".join(f"<li><code>{_e(p)}</code></li>" for p in problems)
    return _section("problems", f"Data problems: {len(problems)} files skipped",
                    f"<ul>{items}</ul>")


def render_html(s: Summary, source: str = "") -> str:
    body = (_header(s, source) + "<main>" + _banners(s) + _findings(s) + _hosts(s)
            + _listeners(s)
            + _failing(s) + _latency(s) + _processes(s) + _containers(s) + _edges(s)
            + _pool(s) + _overview(s)
            + _problems(s) + "</main>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>connscope report: {_e(source)}</title><style>{CSS}</style></head>"
            f"<body>{body}</body></html>\n")
