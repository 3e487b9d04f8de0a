"""The summary as plain text for a terminal or a ticket: widest news first.

Process names and addresses come from the traced system, so control
characters are shown escaped rather than sent to the terminal.
"""

from __future__ import annotations

from typing import Sequence

from tracer.domain import memory
from tracer.domain.hooks import skipped_runs_text
from tracer.domain.pools import FORMULA
from tracer.report.findings import Finding
from tracer.report.hosts import add, bounded, hosts_text
from tracer.report.pool import window
from tracer.report.summary import Summary
from tracer.report.timefmt import clock, duration, iso_stamp, rate, stamp
from tracer.safe_text import printable

MARK = {"crit": "CRIT", "warn": "WARN", "info": "info"}
MAX_PROBLEMS = 20


def clean(value) -> str:
    """`value` as text a terminal shows but never obeys (tracer/safe_text.py), '-' for None."""
    return "-" if value is None else printable(value)


ID_COLUMNS = ("pid",)      # numbers that are names: no thousands separators


def cell(value, header: str = "") -> str:
    """One table cell: counts get thousands separators, everything else is cleaned."""
    if isinstance(value, int) and not isinstance(value, bool) and header not in ID_COLUMNS:
        return f"{value:,}"
    return clean(value)


def table(headers: Sequence[str], rows: Sequence[Sequence], indent: str = "  ") -> list[str]:
    """Aligned columns: text left, numbers right (headers follow their column)."""
    cells = [[cell(c, h) for c, h in zip(r, headers)] for r in rows]
    numeric = [all(isinstance(r[i], (int, float)) or r[i] is None for r in rows) and rows
               for i in range(len(headers))]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]

    def line(values):
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)]
        return (indent + "  ".join(parts)).rstrip()

    return [line(headers)] + [line(r) for r in cells]


def _n(x: int) -> str:
    return f"{x:,}"


def _header(s: Summary, source: str) -> list[str]:
    ov = s.overview
    out = [f"connscope report: {clean(source)}"]
    if ov.first_us is not None:
        out.append(f"{stamp(ov.first_us)} to {stamp(ov.last_us)} "
                   f"({duration(ov.duration_s * 1e6)}), {len(ov.hosts)} host(s), "
                   f"{len(ov.runs)} run(s)")
    else:
        out.append(f"no rows recorded; {len(ov.runs)} run(s)")
    if ov.lost_events:
        by = ", ".join(f"{t} {_n(n)}" for t, n in sorted(ov.lost_by_table.items()))
        out += ["", f"!!! {_n(ov.lost_events)} EVENTS LOST by the kernel ({by}): "
                    f"every count in this report is a lower bound !!!"]
    if ov.missed_runs:
        out.append(f"!   {skipped_runs_text(ov.missed_runs_by)} (BPF recursion): each may "
                   f"have been an event")
    if ov.dropped_rows:
        out.append(f"!!! {_n(ov.dropped_rows)} rows were never written (disk full or "
                   f"unwritable) !!!")
    return out


def _findings(found: Sequence[Finding]) -> list[str]:
    out = ["", "WHAT TO LOOK AT FIRST"]
    if not found:
        return out + ["  nothing stands out: no drops, failures, slow connects or leaks"]
    return out + [f"  {i}. {MARK[f.severity]}  {clean(f.text)}" for i, f in enumerate(found, 1)]


def _recording(s: Summary) -> list[str]:
    ov = s.overview
    out = ["", "RECORDING",
           f"  hosts     {clean(hosts_text(ov.hosts)) or '-'}",
           f"  backends  {clean(', '.join(ov.backends)) or '-'}",
           f"  kernels   {clean(', '.join(ov.kernels)) or '-'}",
           "  rows      " + ", ".join(f"{t} {_n(n)}" for t, n in ov.rows.items()),
           f"  files     {ov.files_read} read, {len(ov.problems)} skipped", ""]
    rows = [(r.run_id, r.host, r.backend_text, r.kernel,
             r.status.upper() if r.status != "complete" else r.status,
             iso_stamp(r.start), iso_stamp(r.end), r.lost_events or "", r.dropped_rows or "")
            for r in ov.runs]
    return out + table(("run", "host", "backend", "kernel", "status", "start", "end", "lost",
                        "unwritten"), rows)


HOST_HEADERS = ("host", "runs", "connects", "established", "refused", "timeout", "error",
                "listeners", "dropped", "SYNs dropped", "accepts", "lost events", "unwritten")


def host_rows(s: Summary) -> list[tuple]:
    """The per-host table's rows, the last one `all hosts` (their sum); none
    for a recording of one host. Shared with html.py."""
    if len(s.hosts) < 2:
        return []
    return [(h.host, h.runs, h.connects, h.established, h.refused, h.timeout, h.error,
             h.listeners, h.drops, h.syn_drops, h.accepts, h.lost_events, h.dropped_rows)
            for h in [*bounded(list(s.hosts)), add("all hosts", s.hosts)]]


def _hosts(s: Summary) -> list[str]:
    rows = host_rows(s)
    if not rows:
        return []
    return ["", f"HOSTS ({len(s.hosts):,}; connects by outcome, listener drops, losses; "
                f"each column adds up to the last row)"] + table(HOST_HEADERS, rows)


def _destinations(s: Summary) -> list[str]:
    if "connects" not in s.tables_present:
        return ["", "CONNECTS", "  none recorded"]
    c = s.connects
    out = ["", f"CONNECTS: {_n(c.attempts)} attempts to {_n(c.destinations)} destinations; "
               f"{_n(c.refused)} refused, {_n(c.timeout)} timed out, {_n(c.error)} other "
               f"errors, {_n(c.retransmitted)} needed SYN retransmits",
           "", "SLOWEST DESTINATIONS (established connects; latency = connect() to handshake done)"]
    out += table(("destination", "connects", "p50", "p99", "max", "syn retx", "hosts",
                  "processes"),
                 [(d.label, d.samples, duration(d.p50_us), duration(d.p99_us), duration(d.max_us),
                   d.retransmitted, d.hosts, ", ".join(d.comms)) for d in s.slowest])
    out += ["", "FAILING DESTINATIONS (refused, timed out, other errors, SYN retransmits)"]
    if not s.failing:
        out.append("  none: every connect was established without a SYN retransmit")
    else:
        out += table(("destination", "attempts", "refused", "timeout", "error", "failed",
                      "syn retx", "first failure", "last failure", "processes"),
                     [(d.label, d.attempts, d.refused, d.timeout, d.error,
                       f"{d.failure_ratio:.0%}", d.retransmitted, clock(d.first_failure_us),
                       clock(d.last_failure_us), ", ".join(d.comms)) for d in s.failing])
    out += ["", f"BUSIEST CONNECTING PROCESSES (rate: connects per second over the whole "
                f"recording, {duration(s.overview.duration_s * 1e6)})"]
    out += table(("process", "pid", "host", "connects", "rate", "failed", "destinations"),
                 [(p.comm, p.pid, p.host, p.attempts, rate(p.per_s), p.failures,
                   p.destinations) for p in s.connecting])
    return out


def _listeners(s: Summary) -> list[str]:
    present = s.tables_present & {"listeners", "overflows", "accepts"}
    out = ["", "LISTENERS THAT DROPPED CONNECTIONS OR CAME CLOSE (accept queue >= 80 % of backlog)"]
    if not present:
        return out + ["  no listener data recorded (listeners, overflows, accepts tables empty)"]
    if not s.listeners:
        return out + [f"  none of {s.listeners_seen} listeners dropped a connection or filled "
                      f"its queue"]
    out += table(("listener", "host", "owner", "dropped", "SYNs dropped", "queue peak",
                  "first drop", "last drop", "accepts", "accept wait p99"),
                 [(li.label, li.host, li.owner, li.drops, li.syn_drops, li.queue_vs_backlog,
                   clock(li.first_drop_us), clock(li.last_drop_us), li.accepts,
                   duration(li.accept_wait_p99_us)) for li in s.listeners])
    for li in s.listeners:
        if not li.drop_minutes:
            continue
        out += ["", f"  drops per minute, {clean(li.label)} on {clean(li.host)}:"]
        top = max(d + sy for _, d, sy in li.drop_minutes)
        for minute, d, sy in li.drop_minutes:
            bar = "#" * max(1, round(30 * (d + sy) / top))
            out.append(f"    {clock(minute)[:5]}Z  {d:>7,} + {sy:>6,} SYNs  {bar}")
    return out


def _processes(s: Summary) -> list[str]:
    out = ["", "PROCESSES BY SOCKETS HELD"]
    if "sockets" not in s.tables_present:
        return out + ["  no per-process socket data recorded (sockets table empty)"]
    out += table(("process", "pid", "host", "peak", "at end", "established", "close_wait at end",
                  "fds/limit"),
                 [(p.comm, p.pid, p.host, p.peak_sockets, p.last_sockets, p.peak_established,
                   f"{p.last_close_wait}{' LEAK?' if p.close_wait_leak else ''}",
                   f"{p.peak_fds if p.peak_fds is not None else '?'}/{p.fd_limit or '?'}"
                   + (f" ({p.fd_ratio:.0%})" if p.fd_ratio is not None else ""))
                  for p in s.by_sockets])
    out += _memory(s)
    out += ["", "HOST TCP MEMORY (/proc/net/sockstat against net.ipv4.tcp_mem; TcpExt counters "
                "over the recording)"]
    out += [f"  {clean(h.text)}" for h in s.tcp_memory] or ["  not recorded"]
    out += ["", "PROCESSES BY CHURN (TCP sockets opened and closed per second over the time "
                "each process was seen)"]
    out += table(("process", "pid", "host", "opened", "closed", "opened total"),
                 [(p.comm, p.pid, p.host, rate(p.opened_per_s), rate(p.closed_per_s), p.opened)
                  for p in s.by_churn])
    return out


def _memory(s: Summary) -> list[str]:
    """Memory per connection of the processes above, where they held the
    most connections (tracer/domain/memory.py)."""
    rows = [p for p in s.by_sockets if p.memory_per_connection is not None]
    out = ["", f"MEMORY PER CONNECTION (resident memory / TCP connections held, where each "
               f"held the most; projected to {memory.USERS:,} connections or its listen "
               f"backlog)"]
    if not rows:
        return out + ["  no resident memory recorded with connections held"]
    for p in rows:
        proj = p.memory_projection
        line = f"  {clean(p.memory_sentence)}"
        if proj is not None:
            line += (f"; {proj.target:,} would need {memory.size(proj.projected)} of "
                     f"{memory.size(proj.available)} ({proj.share:.0%}, {proj.source})")
        out.append(line)
    return out


def _edges(s: Summary) -> list[str]:
    """The connection map: who connected to whom, busiest first."""
    out = ["", f"CONNECTION MAP (client -> destination -> serving process where local, each "
               f"`in` its container where it runs in one; "
               f"{len(s.edges)} of {s.edges_seen} edges; p50/p99 of established handshakes)"]
    if not s.edges:
        return out + ["  no edges recorded (edges table empty: nothing connected, or "
                      "recorded before the table existed)"]
    out += table(("client", "host", "destination", "server", "conn/s", "peak/s", "connects",
                  "held", "p50", "p99", "refused", "timeout", "error", "drops"),
                 [(e.client, e.host, e.destination, e.server or "-", rate(e.per_s),
                   rate(e.peak_per_s), e.connects, e.established_peak,
                   duration(e.p50_us) if e.p50_us is not None else "-",
                   duration(e.p99_us) if e.p99_us is not None else "-",
                   e.refused, e.timeout, e.error, e.listener_drops) for e in s.edges])
    return out


def _containers(s: Summary) -> list[str]:
    out = ["", "BY CONTAINER OR POD (connects made, connections accepted and accept-queue drops "
               "of the processes in each; `host`: in no container)"]
    if not s.containers:
        return out + ["  no row names a container or pod (none ran here, or recorded before "
                      "connscope named them)"]
    return out + table(("container or pod", "host", "connects", "failed", "accepts", "dropped",
                        "processes"),
                       [(c.label, c.host, c.connects, c.connect_failures, c.accepts, c.drops,
                         c.processes) for c in s.containers])


def _pool(s: Summary) -> list[str]:
    out = ["", f"POOL ADVICE (each flow's busiest window, as recorded in the pools table; "
               f"{FORMULA})"]
    if "pools" not in s.tables_present:
        return out + ["  no process connected anywhere while the recorder watched"]
    out += table(("process", "pid", "host", "destination", "window", "new/s", "held", "mean",
                  "p99", "pool", "in use", "verdict"),
                 [(a.comm, a.pid, a.host, a.destination, window(a), rate(a.arrival_per_s),
                   duration(a.hold_s * 1e6) if a.hold_s is not None else "-",
                   round(a.concurrency_mean, 1), round(a.concurrency_p99, 1), a.recommended,
                   a.in_use_peak, a.verdict) for a in s.pool])
    return out


def _problems(s: Summary) -> list[str]:
    problems = s.overview.problems
    if not problems:
        return []
    out = ["", f"DATA PROBLEMS ({len(problems)} files skipped)"]
    # file names in a directory someone else may write: shown, never obeyed
    out += [f"  {printable(p)}" for p in problems[:MAX_PROBLEMS]]
    if len(problems) > MAX_PROBLEMS:
        out.append(f"  ... and {len(problems) - MAX_PROBLEMS} more")
    return out


def render_text(s: Summary, source: str = "") -> str:
    lines = (_header(s, source) + _findings(s.findings) + _recording(s) + _hosts(s)
             + _destinations(s)
             + _listeners(s) + _processes(s) + _containers(s) + _edges(s) + _pool(s)
             + _problems(s))
    return "\n".join(lines) + "\n"
