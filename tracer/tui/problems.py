"""What is wrong right now, worst first: the Overview's list. A pure function of
one Snapshot, so the ranking is unit-testable and costs one pass over the rows.

One line per thing (a listener, a destination, a process), naming its worst
aspect first and the others after it, so a bad destination is one line, not four.
"""
from __future__ import annotations

from dataclasses import dataclass

from tracer.aggregate.connects import ConnectRow
from tracer.aggregate.snapshot import ListenerRow, ProcessRow, Snapshot
from tracer.domain import tcp_memory
from tracer.domain.hooks import skipped_runs_text
from tracer.tui.units import fmt_rate, fmt_us

CRIT, WARN = "crit", "warn"
SEVERITY_ORDER = {CRIT: 0, WARN: 1, "info": 2}

SLOW_P99_US = 100_000.0        # connect p99 above this: slow (warn)
VERY_SLOW_P99_US = 1_000_000.0  # ... above this: crit (a SYN was retransmitted, or worse)
FAILING_RATIO = 0.1            # failed / attempts above this is crit
QUEUE_NEAR_FULL = 0.8          # accept queue peak / backlog
FD_WARN, FD_CRIT = 0.8, 0.95
CLOSE_WAIT_LEAK = 100          # sockets the peer closed but the app never did
SLOW_ACCEPT_US = 100_000.0
HANGING_S = 1.0                # a connect unanswered this long has lost a SYN at least once
BLACKHOLE_S = 3.0              # ... this long: two or more SYNs unanswered


@dataclass(frozen=True)
class Problem:
    severity: str       # "crit" or "warn"
    score: float        # within a severity, larger is worse
    kind: str           # short: "listener dropping", "connects failing", ...
    subject: str        # what: "0.0.0.0:8080 nginx[812]"
    detail: str         # numbers that justify it
    view: str           # the view that shows the subject: connects, listeners, processes, log
    key: tuple | None   # the subject's row key in that view

    @property
    def rank(self) -> tuple:
        return (SEVERITY_ORDER.get(self.severity, 3), -self.score, self.subject)


def _who(pid: int | None, comm: str | None) -> str:
    if pid is None:
        return comm or ""
    return f"{comm or '?'}[{pid}]"


def listener_problem(r: ListenerRow) -> Problem | None:
    parts, severity, score, kind = [], None, 0.0, ""
    if r.drops or r.syn_drops:
        severity, kind = CRIT, "listener dropping"
        score = 1e6 + r.drops_per_s
        parts.append(f"{fmt_rate(r.drops_per_s)} drops/s ({r.drops:,} conn, {r.syn_drops:,} SYN); "
                     f"accept queue peak {r.queue_peak}/{r.backlog_max}")
    fill = r.queue_peak / r.backlog_max if r.backlog_max else 0.0
    if fill >= QUEUE_NEAR_FULL and not parts:
        severity, kind, score = WARN, "accept queue near full", 1e3 * fill
        parts.append(f"accept queue peak {r.queue_peak}/{r.backlog_max} ({fill:.0%})")
    if r.accept_wait_p99_us is not None and r.accept_wait_p99_us >= SLOW_ACCEPT_US:
        if severity is None:
            severity, kind, score = WARN, "slow accept", r.accept_wait_p99_us / 1e3
        parts.append(f"accept wait p99 {fmt_us(r.accept_wait_p99_us)} (app slow to accept)")
    if r.drops_total and severity is None:
        severity, kind, score = WARN, "listener dropped", float(r.drops_total)
        parts.append(f"{r.drops_total:,} dropped since start (none this interval)")
    if severity is None:
        return None
    subject = f"{r.label} {_who(r.pid, r.comm)}".strip()
    return Problem(severity, score, kind, subject, "; ".join(parts), "listeners",
                   (r.family, r.laddr, r.lport))


def _connect_aspects(r: ConnectRow) -> list[tuple[str, str, float]]:
    """(severity, kind, score) of everything wrong with a destination, in the
    order they are told; no text is built, so sorting 10,000 rows by it is cheap."""
    out = []
    failures = r.failures
    if failures:
        ratio = failures / r.attempts if r.attempts else 1.0
        # a timeout costs the caller seconds; weigh it above a quick refusal
        out.append((CRIT if r.timeouts or ratio >= FAILING_RATIO else WARN, "connects failing",
                    1e5 * ratio + 10 * r.timeouts + failures))
    age = r.oldest_pending_s or 0.0
    hanging = bool(r.pending) and age >= HANGING_S
    if hanging:
        out.append((CRIT if age >= BLACKHOLE_S else WARN, "connects hanging", 1e4 * age))
    if r.p99_us is not None and r.p99_us >= SLOW_P99_US:
        out.append((CRIT if r.p99_us >= VERY_SLOW_P99_US else WARN, "slow connects",
                    r.p99_us / 1e3))
    if r.syn_retransmits:
        out.append((WARN, "SYN retransmits", float(r.syn_retransmits)))
    if r.rate == 0 and not hanging:
        # nothing is going there now: history, not an emergency
        out = [(WARN, kind, score) for _, kind, score in out]
    return out


def connect_badness(r: ConnectRow) -> tuple:
    """Sort key, worst first: the same order the Overview gives its problems."""
    aspects = _connect_aspects(r)
    if not aspects:
        return (len(SEVERITY_ORDER), 0.0)
    severity, _, score = min(aspects, key=lambda a: SEVERITY_ORDER[a[0]])
    return (SEVERITY_ORDER[severity], -score)


def connect_problem(r: ConnectRow, view_key: str = "dest") -> Problem | None:
    aspects = _connect_aspects(r)
    if not aspects:
        return None
    severity, kind, score = min(aspects, key=lambda a: SEVERITY_ORDER[a[0]])
    parts = []
    for _, aspect, _ in aspects:
        if aspect == "connects failing":
            failures = r.failures
            ratio = failures / r.attempts if r.attempts else 1.0
            gave_up = f" ({r.abandoned:,} given up by the application)" if r.abandoned else ""
            what = ", ".join(f"{n:,} {name}" for n, name in
                             ((r.refused, "refused"), (r.timeouts, f"timed out{gave_up}"),
                              (r.errors, "failed")) if n)
            parts.append(f"{what} of {r.attempts:,} ({ratio:.0%})")
        elif aspect == "connects hanging":
            parts.append(f"{r.pending:,} pending, oldest {r.oldest_pending_s:.1f}s "
                         f"(SYNs unanswered)")
        elif aspect == "slow connects":
            parts.append(f"p99 {fmt_us(r.p99_us)} (p50 {fmt_us(r.p50_us)}, "
                         f"max {fmt_us(r.max_us)})")
        else:
            parts.append(f"{r.syn_retransmits:,} SYN retransmits")
    if r.rate == 0 and kind != "connects hanging":
        parts.append("no attempts this interval")
    return Problem(severity, score, kind, r.label, "; ".join(parts), "connects", (view_key, r.key))


def process_problem(p: ProcessRow) -> Problem | None:
    parts, severity, score, kind = [], None, 0.0, ""
    ratio = p.fd_ratio
    if ratio is not None and ratio > FD_WARN:
        severity = CRIT if ratio >= FD_CRIT else WARN
        kind, score = "near fd limit", 1e3 * ratio
        parts.append(f"{p.fds:,}/{p.fd_limit:,} fds ({ratio:.0%})")
    if p.close_wait >= CLOSE_WAIT_LEAK:
        if severity is None:
            severity, kind, score = WARN, "CLOSE_WAIT pile-up", float(p.close_wait)
        parts.append(f"{p.close_wait:,} sockets in CLOSE_WAIT (peer closed, app did not)")
    proj = p.memory_projection()
    if proj is not None and proj.severity is not None:
        if severity is None or (proj.severity == CRIT and severity != CRIT):
            severity, kind, score = proj.severity, "memory per connection", 1e3 * proj.share
            parts.insert(0, proj.text("it"))
        else:
            parts.append(proj.text("it"))
    if tcp_memory.not_reading(p.unread_intervals):
        if severity is None:
            severity, kind, score = WARN, "not reading", float(p.rx_queue_bytes)
        parts.append(tcp_memory.not_reading_text("it", p.rx_queue_bytes, p.unread_intervals))
    if p.churning:
        if severity is None:
            severity, kind, score = WARN, "connection churn", p.opened_per_s
        parts.append(f"opens {fmt_rate(p.opened_per_s)}/s, closes {fmt_rate(p.closed_per_s)}/s "
                     f"(not pooling?)")
    if severity is None:
        return None
    return Problem(severity, score, kind, _who(p.pid, p.comm), "; ".join(parts), "processes",
                   (p.pid,))


def find_problems(s: Snapshot) -> list[Problem]:
    out: list[Problem] = []
    if s.lost_events:
        # crit, but after the problems themselves: it qualifies every number, it is
        # rarely the incident (the status line shows it in red as well)
        out.append(Problem(CRIT, -1.0, "events lost", "tracer",
                           f"{s.lost_events:,} events lost since start: every count here is "
                           f"a lower bound", "log", None))
    if s.missed_runs:
        # the kernel did not run our program for these (another BPF program
        # was running on that CPU): each may have been an event
        out.append(Problem(WARN, -1.0, "probe runs skipped", "tracer",
                           f"{skipped_runs_text(dict(s.missed_by))} (BPF recursion): each may "
                           f"have been an event, so counts may be low", "log", None))
    if s.recording_warning:
        out.append(Problem(CRIT, 1e12, "recording", s.header.recording_path or "recording",
                           s.recording_warning, "log", None))
    for r in s.listeners:
        p = listener_problem(r)
        if p:
            out.append(p)
    for r in s.destinations:
        p = connect_problem(r)
        if p:
            out.append(p)
    for r in s.processes:
        p = process_problem(r)
        if p:
            out.append(p)
    m = s.tcp_memory
    if m is not None and (m.state in (tcp_memory.PRESSURE, tcp_memory.LIMIT, tcp_memory.NEAR)
                          or m.memory_pressures or m.rcvq_drops):
        crit = m.state != tcp_memory.NEAR or m.memory_pressures or m.rcvq_drops
        out.append(Problem(CRIT if crit else WARN, float(m.used_bytes or 0), "TCP memory", "host",
                           tcp_memory.finding_text(m.used_bytes or 0, m.pressure_bytes or 0,
                                                   m.max_bytes or 0, m.memory_pressures,
                                                   m.rcvq_drops, m.pruned), "log", None))
    out.sort(key=lambda p: p.rank)
    return out


# What to check, shown under the Overview when a problem is selected.
HINTS = {
    "events lost": "The kernel's ring buffer overflowed before connscope read it: every number "
                   "is a lower bound. Narrow the trace (--pid, --port) or check CPU starvation.",
    "recording": "The recording is not keeping up; the live view is still right. Free disk "
                 "space or point --record elsewhere.",
    "listener dropping": "The accept queue is full: the application accepts too slowly or its "
                         "backlog is too small. Is the app stuck (CPU, GC, locks)? Backlog is "
                         "min(listen() argument, net.core.somaxconn); `ss -ltn` shows Recv-Q/Send-Q.",
    "accept queue near full": "Close to dropping connections: the app is barely keeping up with "
                              "accept(). Check its worker pool and the listen() backlog.",
    "slow accept": "Connections wait in the accept queue before the app takes them: the app's "
                   "accept loop is busy or starved.",
    "listener dropped": "This listener dropped connections earlier; it is not dropping now.",
    "connects failing": "refused: nothing listens on that port, or its queue overflowed with "
                        "tcp_abort_on_overflow=1. timed out: SYNs unanswered (host down, "
                        "firewall drop, SYN queue full), whether the kernel gave up or the "
                        "application's own connect timeout did (given up). failed: no route or "
                        "an ICMP error (unreachable: errno 101/113, check routes and the "
                        "namespace's interfaces), or connect() itself (errno 99: no local port "
                        "left, see ip_local_port_range; 13/1: a route or policy forbids it).",
    "connects hanging": "Connects wait with no answer at all: the host is down or a firewall "
                        "drops SYNs. They will time out after minutes (tcp_syn_retries); "
                        "callers are stuck meanwhile.",
    "slow connects": "The handshake is slow: network round trip, SYN retransmits (each adds "
                     ">= 1 s), or a server whose SYN queue is full.",
    "SYN retransmits": "SYNs were lost or dropped and sent again; each retransmit adds >= 1 s "
                       "to the connect.",
    "near fd limit": "At the limit accept() and connect() fail with EMFILE. Raise LimitNOFILE / "
                     "ulimit -n, or find the descriptor leak.",
    "CLOSE_WAIT pile-up": "The peer closed these connections but the application never called "
                          "close(): a leak in its connection handling.",
    "memory per connection": "Resident memory divided by the connections held, the "
                             "process's baseline included (an upper bound), projected to "
                             "1,000 connections or its listen backlog, against its cgroup's "
                             "memory limit or the host's RAM. Past it the OOM killer ends the "
                             "process: cut per-connection buffers and state, or give it more.",
    "TCP memory": "All TCP sockets of the host share net.ipv4.tcp_mem (pages: low, pressure, "
                  "max). In pressure the kernel shrinks buffers and prunes receive queues; at "
                  "max it drops data and aborts connections. Find who holds the memory (the "
                  "processes' socket mem: receive queues of applications that do not read) "
                  "or raise tcp_mem.",
    "not reading": "Data waits in the process's receive queues and never drains: it is "
                   "stuck (a lock, a full worker pool) or ignores those sockets. The kernel "
                   "keeps the memory charged and the peers' windows close.",
    "connection churn": "A new connection per request: each costs a handshake and leaves a "
                        "TIME_WAIT socket. Use a connection pool or keep-alive.",
}
