"""Connect statistics per destination and per process, per interval and
since start. Pure state: fed decoded events, asked for snapshots."""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from tracer.aggregate.histogram import Histogram
from tracer.events import Connect

HISTORY = 300  # intervals of p99 history kept per key (5 min at 1 s)


@dataclass
class ConnectStats:
    attempts: int = 0
    established: int = 0
    refused: int = 0
    timeout: int = 0
    error: int = 0
    syn_retransmits: int = 0
    latency: Histogram = field(default_factory=Histogram)

    def add(self, ev: Connect) -> None:
        self.attempts += 1
        self.syn_retransmits += ev.syn_retransmits
        outcome = ev.outcome
        if outcome == "established":
            self.established += 1
            self.latency.add((ev.ts_end_ns - ev.ts_start_ns) / 1000.0)
        elif outcome == "refused":
            self.refused += 1
        elif outcome == "timeout":
            self.timeout += 1
        else:
            self.error += 1

    def merge(self, o: "ConnectStats") -> None:
        for name in ("attempts", "established", "refused", "timeout", "error", "syn_retransmits"):
            setattr(self, name, getattr(self, name) + getattr(o, name))
        self.latency.merge(o.latency)

    @property
    def failures(self) -> int:
        return self.refused + self.timeout + self.error


@dataclass(frozen=True)
class ConnectRow:
    """One line of a connects view: immutable, safe to hand to another thread."""

    key: tuple
    label: str
    attempts: int
    rate: float            # attempts per second over the last interval
    established: int
    refused: int
    timeout: int
    error: int
    syn_retransmits: int
    p50_us: float | None
    p95_us: float | None
    p99_us: float | None
    max_us: float | None
    p99_history: tuple     # last HISTORY interval p99s (None where no sample)
    pending: int = 0       # connects still waiting for an answer
    oldest_pending_s: float | None = None


class _Keyed:
    def __init__(self):
        self.total: dict[tuple, ConnectStats] = {}
        self.window: dict[tuple, ConnectStats] = {}
        self.rate: dict[tuple, float] = {}
        self.history: dict[tuple, deque] = {}

    def add(self, key: tuple, ev: Connect) -> None:
        s = self.window.get(key)
        if s is None:
            s = self.window[key] = ConnectStats()
        s.add(ev)

    def roll(self, seconds: float) -> None:
        for key in set(self.total) | set(self.window):
            w = self.window.get(key)
            hist = self.history.setdefault(key, deque(maxlen=HISTORY))
            if w is None:
                self.rate[key] = 0.0
                hist.append(None)
                continue
            self.total.setdefault(key, ConnectStats()).merge(w)
            self.rate[key] = w.attempts / seconds if seconds > 0 else 0.0
            hist.append(w.latency.percentile(99))
        self.window = {}

    def rows(self, label, pending=None) -> list[ConnectRow]:
        pending = pending or {}
        out = []
        for key in pending.keys() - self.total.keys():
            n, age = pending[key]
            out.append(ConnectRow(key=key, label=label(key), attempts=0, rate=0.0, established=0,
                                  refused=0, timeout=0, error=0, syn_retransmits=0, p50_us=None,
                                  p95_us=None, p99_us=None, max_us=None, p99_history=(),
                                  pending=n, oldest_pending_s=age))
        for key, s in self.total.items():
            h = s.latency
            out.append(ConnectRow(
                key=key, label=label(key), attempts=s.attempts, rate=self.rate.get(key, 0.0),
                established=s.established, refused=s.refused, timeout=s.timeout, error=s.error,
                syn_retransmits=s.syn_retransmits, p50_us=h.percentile(50), p95_us=h.percentile(95),
                p99_us=h.percentile(99), max_us=h.max if h.count else None,
                p99_history=tuple(self.history.get(key, ())),
                pending=pending.get(key, (0, None))[0],
                oldest_pending_s=pending.get(key, (0, None))[1],
            ))
        return out


def destination_label(key: tuple) -> str:
    family, daddr, dport = key
    return f"[{daddr}]:{dport}" if family == 6 else f"{daddr}:{dport}"


class ConnectTable:
    """Per-destination and per-process connect statistics."""

    def __init__(self):
        self._pending: dict = {}
        self._dest = _Keyed()
        self._proc = _Keyed()
        self._comm: dict[int, str] = {}
        self.events = 0

    def add(self, ev: Connect) -> None:
        self.events += 1
        self._dest.add((ev.family, ev.daddr, ev.dport), ev)
        self._proc.add((ev.pid,), ev)
        self._comm[ev.pid] = ev.comm

    def roll(self, seconds: float) -> None:
        """Close the current interval (call once per interval)."""
        self._dest.roll(seconds)
        self._proc.roll(seconds)

    def set_pending(self, pending: dict) -> None:
        """{(family, daddr, dport): (count, oldest age in seconds)} right now."""
        self._pending = pending

    def by_destination(self) -> list[ConnectRow]:
        return self._dest.rows(destination_label, self._pending)

    def by_process(self) -> list[ConnectRow]:
        return self._proc.rows(lambda k: f"{k[0]} {self._comm.get(k[0], '?')}")
