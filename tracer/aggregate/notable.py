"""The event log: things a person should notice, one line each, bounded."""
from __future__ import annotations

from collections import deque

from tracer.aggregate.snapshot import ListenerRow, Notable
from tracer.domain.addresses import endpoint
from tracer.domain.durations import duration
from tracer.domain import outcomes

SLOW_CONNECT_US = 1_000_000     # a connect over 1 s is worth a line of its own
MAX_LINES = 500
MAX_PER_INTERVAL = 20           # a storm of failures must not flood the log


class NotableLog:
    def __init__(self, max_lines: int = MAX_LINES):
        self.lines: deque[Notable] = deque(maxlen=max_lines)
        self._window: list[Notable] = []
        self._suppressed = 0

    def _add(self, n: Notable, always: bool = False) -> None:
        # (always: what the tracer itself lost, which a storm of failures,
        # the very thing that causes it, must not crowd out)
        if always or len(self._window) < MAX_PER_INTERVAL:
            self._window.append(n)
        else:
            self._suppressed += 1

    @staticmethod
    def wants_connect(ev) -> bool:
        """Cheap test first: most connects are fast and successful."""
        return ev.outcome != outcomes.ESTABLISHED or ev.ts_end_ns - ev.ts_start_ns >= SLOW_CONNECT_US * 1000

    def connect(self, ev, ts_us: int) -> None:
        dest = endpoint(ev.daddr, ev.dport, ev.family)
        who = f"{ev.comm}[{ev.pid}]"
        if ev.outcome == outcomes.REFUSED:
            self._add(Notable(ts_us, "warn", "refused", f"{who} -> {dest} refused"))
        elif ev.outcome == outcomes.TIMEOUT:
            self._add(Notable(ts_us, "crit", "timeout",
                              f"{who} -> {dest} timed out after {ev.syn_retransmits} SYN retransmits"))
        elif ev.outcome == outcomes.ABANDONED:
            # a timeout the application chose: a timeout all the same
            waited = f" after {duration(ev.latency_us)}" if ev.latency_us is not None else ""
            self._add(Notable(ts_us, "crit", "timeout",
                              f"{who} -> {dest} given up by the application{waited} "
                              f"({ev.syn_retransmits} SYN retransmits)"))
        elif ev.outcome != outcomes.ESTABLISHED:
            self._add(Notable(ts_us, "warn", "connect failed",
                              f"{who} -> {dest} {ev.outcome}"
                              + (f" ({outcomes.errno_text(ev.err)})" if ev.err else "")))
        elif ev.latency_us and ev.latency_us >= SLOW_CONNECT_US:
            self._add(Notable(ts_us, "warn", "slow connect",
                              f"{who} -> {dest} took {duration(ev.latency_us)}"
                              f" ({ev.syn_retransmits} SYN retransmits)"))

    def listeners(self, rows: list[ListenerRow], ts_us: int) -> None:
        for r in rows:
            lost = r.drops + r.syn_drops
            if lost:
                owner = f" ({r.comm}[{r.pid}])" if r.pid else ""
                self._add(Notable(ts_us, "crit", "drop burst",
                                  f"{r.label}{owner} dropped {lost} (accept queue "
                                  f"{r.queue_peak}/{r.backlog_max}: {r.drops} at handshake, "
                                  f"{r.syn_drops} SYNs)"))

    def lost_events(self, new_lost: int, ts_us: int) -> None:
        if new_lost > 0:
            self._add(Notable(ts_us, "crit", "lost events",
                              f"{new_lost} kernel events lost this interval: counts are low"),
                      always=True)

    def evicted(self, new_evicted: int, ts_us: int) -> None:
        if new_evicted > 0:
            self._add(Notable(ts_us, "warn", "evicted",
                              f"{new_evicted} rows folded into \"other\" this interval: "
                              f"more destinations, processes or listeners than the tables hold"),
                      always=True)

    def roll(self, ts_us: int) -> tuple[Notable, ...]:
        self.lines.extend(self._window)
        if self._suppressed:
            self.lines.append(Notable(ts_us, "info", "suppressed",
                                      f"{self._suppressed} more notable events this interval"))
        self._window, self._suppressed = [], 0
        return tuple(self.lines)
