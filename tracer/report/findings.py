""""What to look at first": the problems of a recording, worst first.

Each rule turns one kind of trouble into a Finding with a severity and a score
within that severity (drops, failures, seconds of latency...), so that the list
reads the same way whatever the recording: data you cannot trust first, then
lost connections, then slow ones, then resource trouble, then advice.
"""

from __future__ import annotations

from dataclasses import dataclass

from tracer.domain import outcomes as oc, tcp_memory
from tracer.domain.hooks import skipped_runs_text
from tracer.report.destinations import DestinationStats
from tracer.report.listeners import NEAR_FULL, ListenerStats
from tracer.report.overview import Overview
from tracer.report.pool import PoolAdvice, window
from tracer.report.processes import FD_WARN, ProcessStats
from tracer.report.timefmt import clock, duration, iso_stamp, rate

SEVERITY_ORDER = {"crit": 0, "warn": 1, "info": 2}
SLOW_WARN_US = 100_000      # a connect handshake over 100 ms is slow on any network we trace
SLOW_CRIT_US = 1_000_000    # over 1 s usually means a SYN was retransmitted
MAX_FINDINGS = 10
PER_SECTION = 3
FAILING_CRIT = 0.05         # a destination failing 5 % of connects is an outage for someone
MORE = {"overview": "see Recording", "listeners": "see Listeners", "destinations":
        "see Failing destinations", "latency": "see Slowest destinations",
        "processes": "see Processes", "pool": "see Pool advice"}
# within one severity: untrustworthy data, lost connections, failing, slow, resources, advice
SECTION_ORDER = {"overview": 0, "listeners": 1, "destinations": 2, "latency": 3, "processes": 4,
                 "pool": 5}


@dataclass(frozen=True)
class Finding:
    severity: str   # crit, warn, info
    section: str    # where the details are: a key of SECTION_ORDER
    text: str       # one line
    score: float = 0.0  # bigger is worse, compared within one severity and section

    @property
    def rank(self) -> tuple:
        return (SEVERITY_ORDER[self.severity], SECTION_ORDER.get(self.section, 9), -self.score)


def _data_findings(ov: Overview) -> list[Finding]:
    out = []
    if ov.lost_events:
        tables = ", ".join(f"{n} {t}" for t, n in sorted(ov.lost_by_table.items()))
        out.append(Finding("crit", "overview",
                           f"{ov.lost_events} events LOST by the kernel ({tables}): every count "
                           f"below is a lower bound", 3.0))
    if ov.missed_runs:
        out.append(Finding("warn", "overview",
                           f"{skipped_runs_text(ov.missed_runs_by)} (BPF recursion): each may "
                           f"have been an event, so counts may be low by as many", 2.5))
    if ov.dropped_rows:
        out.append(Finding("crit", "overview", f"{ov.dropped_rows} rows were not written "
                           f"(disk full or unwritable): the recording has gaps", 2.0))
    for r in ov.crashed:
        out.append(Finding("warn", "overview", f"run {r.run_id} on {r.host} {r.status} at "
                           f"{iso_stamp(r.end)}: nothing from it after that", 1.0))
    for r in ov.unfinished:
        out.append(Finding("warn", "overview", f"run {r.run_id} on {r.host} is still marked "
                           f"running: it is recording now, or it died and no recorder has "
                           f"recovered its last files since", 0.8))
    if ov.problems:
        out.append(Finding("warn", "overview", f"{len(ov.problems)} files could not be read "
                           f"and were skipped (listed under Data problems)", 0.5))
    return out


def _listener_findings(listeners: list[ListenerStats]) -> list[Finding]:
    out = []
    for s in listeners:
        owner = f" ({s.comm})" if s.comm else ""
        if s.total_drops:
            peak = s.peak_minute
            when = (f"; worst minute {clock(peak[0])[:5]}Z with {peak[1]:,}" if peak else "")
            queue = (f"; queue peaked {s.queue_peak}/{s.backlog_max}"
                     if s.queue_peak is not None and s.backlog_max else "")
            out.append(Finding("crit", "listeners",
                               f"{s.label}{owner} on {s.host} dropped {s.total_drops:,} "
                               f"connections (accept queue full){when}{queue}",
                               s.total_drops))
        elif (s.fill or 0) >= NEAR_FULL:
            out.append(Finding("warn", "listeners",
                               f"{s.label}{owner} on {s.host}: accept queue reached "
                               f"{s.queue_peak}/{s.backlog_max}, close to dropping",
                               s.fill * 100))
    return out


def _destination_findings(failing: list[DestinationStats],
                          slow: list[DestinationStats]) -> list[Finding]:
    out, slow_labels = [], set()
    for d in slow:
        if d.p99_us is None or d.p99_us < SLOW_WARN_US:
            continue
        slow_labels.add(d.label)
        sev = "crit" if d.p99_us >= SLOW_CRIT_US else "warn"
        why = (f"; {d.retransmitted} of {d.attempts} needed SYN retransmits (a second or "
               f"more each)" if d.retransmitted else "")
        out.append(Finding(sev, "latency",
                           f"connects to {d.label} are slow: p99 {duration(d.p99_us)}, "
                           f"median {duration(d.p50_us)} over {d.samples}{why}", d.p99_us / 1e3))
    for d in failing:
        if d.failures:
            parts = _failure_parts(d)
            sev = "crit" if d.failure_ratio >= FAILING_CRIT else "warn"
            out.append(Finding(sev, "destinations",
                               f"connects to {d.label}: {', '.join(parts)} of {d.attempts:,} "
                               f"({d.failure_ratio:.0%}), from {', '.join(d.comms)}",
                               d.failures))
        elif d.retransmitted and d.label not in slow_labels:
            out.append(Finding("warn", "destinations",
                               f"connects to {d.label}: {d.retransmitted} of {d.attempts} "
                               f"needed SYN retransmits (each adds a second or more)",
                               d.retransmitted))
    return out


def _failure_parts(d: DestinationStats) -> list[str]:
    """"3 refused", "5 timed out (4 given up by the application after up to
    2.0 ms)", "11 failed (errno 99 EADDRNOTAVAIL)": the words of
    tracer/domain/outcomes.py, timeouts counted whoever gave up."""
    parts = [f"{d.refused:,} refused"] if d.refused else []
    if d.timeout:
        text = f"{d.timeout:,} timed out"
        if d.abandoned:
            waited = (f" after up to {duration(d.abandoned_max_wait_us)}"
                      if d.abandoned_max_wait_us is not None else "")
            text += f" ({d.abandoned:,} given up by the application{waited})"
        parts.append(text)
    if d.error:
        codes = ", ".join(oc.errno_text(e) for e, _ in d.errnos[:3] if e)
        parts.append(f"{d.error:,} failed" + (f" ({codes})" if codes else ""))
    return parts


def _process_findings(procs: list[ProcessStats], advice: list[PoolAdvice]) -> list[Finding]:
    out = []
    for p in procs:
        ratio = p.fd_ratio
        if ratio is not None and ratio >= FD_WARN:
            sev = "crit" if ratio >= 0.95 else "warn"
            out.append(Finding(sev, "processes",
                               f"{p.label} used {p.peak_fds} of {p.fd_limit} file descriptors "
                               f"({ratio:.0%}): new connections will fail at the limit",
                               ratio * 100))
        proj = p.memory_projection
        if proj is not None and proj.severity is not None:
            out.append(Finding(proj.severity, "processes", proj.text(p.label),
                               proj.share * 100))
        streak, unread = p.unread
        if tcp_memory.not_reading(streak):
            out.append(Finding("warn", "processes",
                               tcp_memory.not_reading_text(p.label, unread, streak),
                               float(streak)))
        if p.close_wait_leak:
            out.append(Finding("warn", "processes",
                               f"{p.label}: {p.last_close_wait} sockets in CLOSE_WAIT at the "
                               f"end (from {p.first_close_wait}): it does not close "
                               f"connections its peers closed", p.last_close_wait))
    for a in advice:
        if a.churning:
            held = (f"each held {duration(a.hold_s * 1e6)} on average" if a.hold_s
                    else "none closed yet")
            out.append(Finding("info", "pool",
                               f"{a.comm} ({a.pid}) on {a.host} opens new connections to "
                               f"{a.destination} at {rate(a.arrival_per_s)} (over the "
                               f"{window(a)}), {held}: a pool of "
                               f"{a.recommended} would do", a.arrival_per_s))
    return out


def _capped(found: list[Finding]) -> list[Finding]:
    """At most PER_SECTION findings of one section; the rest become one line pointing there."""
    kept, extra = [], {}
    seen: dict[str, int] = {}
    for f in found:
        seen[f.section] = seen.get(f.section, 0) + 1
        if seen[f.section] <= PER_SECTION:
            kept.append(f)
        else:
            n, worst = extra.get(f.section, (0, f))
            extra[f.section] = (n + 1, worst)
    for section, (n, worst) in extra.items():
        kept.append(Finding(worst.severity, section,
                            f"... and {n} more like the above ({MORE[section]})", -1.0))
    kept.sort(key=lambda f: (f.rank, f.text))
    return kept


def findings(ov: Overview, failing: list[DestinationStats], slow: list[DestinationStats],
             listeners: list[ListenerStats], procs: list[ProcessStats],
             advice: list[PoolAdvice], tcp_memory=()) -> list[Finding]:
    found = (_data_findings(ov) + _listener_findings(listeners)
             + _destination_findings(failing, slow) + _process_findings(procs, advice)
             + [Finding("crit", "processes", h.text, float(h.memory_pressures + h.rcvq_drops))
                for h in tcp_memory if h.troubled])
    found.sort(key=lambda f: (f.rank, f.text))
    return _capped(found)[:MAX_FINDINGS]
