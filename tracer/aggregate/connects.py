"""Connect statistics per destination and per process, per interval and
since start. Pure state: fed decoded events, asked for snapshots."""
from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field

from tracer.aggregate.histogram import Histogram
from tracer.domain import addresses
from tracer.domain import outcomes
from tracer.domain.containers import HOST
from tracer.events import Connect

HISTORY = 300  # intervals of p99 history kept per key (5 min at 1 s)


# the counter of each outcome ConnectStats only counts (no time kept); any
# other outcome it does not know is an error
_COUNTED_AS = {outcomes.REFUSED: "refused", outcomes.TIMEOUT: "timeout",
               outcomes.UNREACHABLE: "unreachable"}


@dataclass
class ConnectStats:
    """Counts per outcome (tracer/domain/outcomes.py). The latency histogram
    is of handshakes only (established); the time abandoned connects waited
    is kept apart (its longest, `waited_max_us`): the caller's timeout, not the peer's."""

    attempts: int = 0
    established: int = 0
    refused: int = 0
    timeout: int = 0          # the kernel gave up
    abandoned: int = 0        # the application gave up
    unreachable: int = 0
    error: int = 0            # connect() itself failed (or an unknown outcome)
    syn_retransmits: int = 0
    latency: Histogram = field(default_factory=Histogram)
    waited_max_us: float = 0.0

    def add(self, ev: Connect) -> None:
        self.attempts += 1
        self.syn_retransmits += ev.syn_retransmits
        outcome = ev.outcome
        if outcome == outcomes.ESTABLISHED:
            self.established += 1
            latency = ev.latency_us       # (None: the end unknown, no handshake time)
            if latency is not None:
                self.latency.add(latency)
        elif outcome == outcomes.ABANDONED:
            self.abandoned += 1
            waited = ev.latency_us
            if waited is not None and waited > self.waited_max_us:
                self.waited_max_us = waited
        else:
            name = _COUNTED_AS.get(outcome, "error")
            setattr(self, name, getattr(self, name) + 1)

    def add_sums(self, syn_retransmits: int, by_outcome: dict) -> None:
        """add() of a poll's connects of one key at once: their SYN
        retransmits summed, and {outcome: [n, their latency_us but None]}
        in the order they came (tracer/aggregate/tally.py)."""
        self.syn_retransmits += syn_retransmits
        for outcome, (n, latencies) in by_outcome.items():
            self.attempts += n
            if outcome == outcomes.ESTABLISHED:
                self.established += n
                self.latency.add_all(latencies)
            elif outcome == outcomes.ABANDONED:
                self.abandoned += n
                waited = max(latencies, default=None)
                if waited is not None and waited > self.waited_max_us:
                    self.waited_max_us = waited
            else:
                name = _COUNTED_AS.get(outcome, "error")
                setattr(self, name, getattr(self, name) + n)

    def merge(self, o: "ConnectStats") -> None:
        # (spelled out: merged for every key active in an interval, and for
        # every key evicted)
        self.attempts += o.attempts
        self.established += o.established
        self.refused += o.refused
        self.timeout += o.timeout
        self.abandoned += o.abandoned
        self.unreachable += o.unreachable
        self.error += o.error
        self.syn_retransmits += o.syn_retransmits
        if o.latency.count:
            self.latency.merge(o.latency)
        if o.waited_max_us > self.waited_max_us:
            self.waited_max_us = o.waited_max_us

    @property
    def failures(self) -> int:
        return self.attempts - self.established


@dataclass(frozen=True)
class ConnectRow:
    """One line of a connects view: immutable, safe to hand to another thread."""

    key: tuple
    label: str
    attempts: int
    rate: float            # attempts per second over the last interval
    established: int
    refused: int
    timeout: int           # the kernel gave up (ETIMEDOUT)
    error: int             # connect() itself failed
    syn_retransmits: int
    p50_us: float | None
    p95_us: float | None
    p99_us: float | None
    max_us: float | None
    p99_history: tuple     # last HISTORY interval p99s (None where no sample)
    pending: int = 0       # connects still waiting for an answer
    oldest_pending_s: float | None = None
    abandoned: int = 0     # the application gave up (closed while SYN_SENT)
    unreachable: int = 0   # no route (connect()'s own error), or an ICMP error answered the SYN
    abandoned_max_wait_us: float | None = None   # longest an abandoned connect waited
    # where the connects came from: a container's label (tracer.domain.containers
    # group_label), SEVERAL for a destination reached from more than one (the host
    # counts as one), None for the host or where containers are not resolved
    container: str | None = None

    # Where failures are summarised (TUI columns, report findings): an
    # abandoned connect is a timeout the application chose, and counts as one.
    @property
    def timeouts(self) -> int:
        return self.timeout + self.abandoned

    @property
    def errors(self) -> int:
        return self.unreachable + self.error

    @property
    def failures(self) -> int:
        return self.refused + self.timeouts + self.errors


# Keys are chosen by other processes (any user can connect to 100,000
# destinations a minute), so each view is bounded: a key idle for as long as
# its history is shown is let go, and past MAX_KEYS the least recently active
# go first. What a key held is folded into the "other" row, so the rows still
# add up to every connect seen; each key folded is counted (`evicted`).
MAX_KEYS = 4096
BATCH_MAX = 4096   # connects grouped before they are summed into the views (add)
IDLE_INTERVALS = HISTORY
# The "other" rows' keys, shaped like the keys of their views (pid 0 as in
# tracer/aggregate/sockets.py), so code that reads a key's shape still works.
OTHER_DESTINATION = (0, "other", 0)
OTHER_PROCESS = (0,)
OTHER_CONTAINER = ("other",)
SEVERAL = "(several)"
_UNSEEN = object()


class _Keyed:
    """Per-key totals, rates and p99 history. Each interval costs O(keys
    active in it), plus O(keys kept) to build rows: never O(keys ever seen)."""

    def __init__(self, other_key: tuple, max_keys: int | None = None,
                 idle_intervals: int | None = None):
        self.other_key = other_key
        self.max_keys = max_keys or MAX_KEYS
        self.idle_intervals = idle_intervals or IDLE_INTERVALS
        self.total: OrderedDict[tuple, ConnectStats] = OrderedDict()  # least recently active first
        self.window: dict[tuple, ConnectStats] = {}
        self.rate: dict[tuple, float] = {}        # keys active in the last interval only
        self.history: dict[tuple, deque] = {}
        self.last: dict[tuple, int] = {}          # interval a key was last active in
        self.interval = 0
        self.other = ConnectStats()               # what evicted keys held
        self.other_window = ConnectStats()        # events that found the window full
        self.other_history: deque = deque(maxlen=HISTORY)
        self.other_rate = 0.0
        self.evicted = 0   # keys folded into "other" (+ events that found the window full)

    def __len__(self) -> int:
        return len(self.total)

    def add(self, key: tuple, ev: Connect) -> bool:
        """Count ev for key; False if it went to the "other" row instead."""
        s = self.window.get(key)
        if s is None:
            if len(self.window) >= self.max_keys:   # a flood within one interval
                self.other_window.add(ev)
                self.evicted += 1
                return False
            s = self.window[key] = ConnectStats()
        s.add(ev)
        return True

    def add_stats(self, key: tuple, part: ConnectStats, n: int) -> bool:
        """As add(), for n connects summed in `part` (not kept: merged)."""
        s = self.window.get(key)
        if s is None:
            if len(self.window) >= self.max_keys:
                self.other_window.merge(part)
                self.evicted += n
                return False
            s = self.window[key] = ConnectStats()
        s.merge(part)
        return True

    def roll(self, seconds: float) -> list[tuple]:
        """Close the interval; returns the keys evicted."""
        self.interval = n = self.interval + 1
        total, history, last = self.total, self.history, self.last
        per_s = 1 / seconds if seconds > 0 else 0.0
        self.rate = {}
        for key, w in self.window.items():
            t = total.get(key)
            if t is None:
                total[key] = w   # (the window's stats are not used again)
                hist = history[key] = deque(maxlen=HISTORY)
            else:
                total.move_to_end(key)
                t.merge(w)
                hist = history[key]
                # the intervals it was idle in, written now rather than each interval
                hist.extend((None,) * min(n - last[key] - 1, HISTORY))
            last[key] = n
            self.rate[key] = w.attempts * per_s
            hist.append(w.latency.percentile(99))
        self.window = {}
        ow = self.other_window
        self.other_rate = ow.attempts * per_s
        self.other_history.append(ow.latency.percentile(99) if ow.attempts else None)
        if ow.attempts:
            self.other.merge(ow)
            self.other_window = ConnectStats()
        evicted = []
        idle_before = n - self.idle_intervals
        while total:
            key = next(iter(total))
            if len(total) <= self.max_keys and last[key] > idle_before:
                break
            evicted.append(key)
            self.other.merge(total.pop(key))
            del history[key], last[key]
        self.evicted += len(evicted)
        return evicted

    def _history(self, key: tuple) -> tuple:
        hist = self.history.get(key)
        if hist is None:
            return ()
        idle = min(self.interval - self.last[key], HISTORY)
        if not idle:
            return tuple(hist)
        return (tuple(hist) + (None,) * idle)[-HISTORY:]

    def rows(self, label, pending=None, where=None) -> list[ConnectRow]:
        """where: key -> ConnectRow.container (None: no container column)."""
        pending = pending or {}
        where = where or (lambda key: None)
        out = []
        # Connects still in flight are bounded by the kernel's map (65,536),
        # but a row each is more than a view holds: past the room left, the
        # longest waiting keep their rows and the rest are summed into "other".
        waiting = [k for k in pending if k not in self.total]
        room = max(0, self.max_keys - len(self.total))
        if len(waiting) > room:
            waiting.sort(key=lambda k: -(pending[k][1] or 0))
            other_n = sum(pending[k][0] for k in waiting[room:])
            other_age = max((pending[k][1] or 0) for k in waiting[room:])
            waiting = waiting[:room]
        else:
            other_n, other_age = 0, None
        for key in waiting:
            n, age = pending[key]
            out.append(_row(key, label(key), ConnectStats(), 0.0, (), n, age))
        for key, s in self.total.items():
            n, age = pending.get(key, (0, None))
            out.append(_row(key, label(key), s, self.rate.get(key, 0.0), self._history(key),
                            n, age, where(key)))
        if self.other.attempts or other_n:
            out.append(_row(self.other_key, "other", self.other, self.other_rate,
                            tuple(self.other_history), other_n, other_age))
        return out


def _row(key, label, s: ConnectStats, rate, history, pending, oldest,
         container=None) -> ConnectRow:
    h = s.latency
    return ConnectRow(
        key=key, label=label, attempts=s.attempts, rate=rate, established=s.established,
        refused=s.refused, timeout=s.timeout, error=s.error, syn_retransmits=s.syn_retransmits,
        p50_us=h.percentile(50), p95_us=h.percentile(95), p99_us=h.percentile(99),
        max_us=h.max if h.count else None, p99_history=history, pending=pending,
        oldest_pending_s=oldest, abandoned=s.abandoned, unreachable=s.unreachable,
        abandoned_max_wait_us=s.waited_max_us if s.abandoned else None, container=container)


def destination_label(key: tuple) -> str:
    return addresses.destination(key)


class ConnectTable:
    """Per-destination and per-process connect statistics, bounded (see
    MAX_KEYS): `evicted` counts what was folded into the "other" rows."""

    def __init__(self, max_keys: int | None = None, idle_intervals: int | None = None):
        self._pending: dict = {}
        self._dest = _Keyed(OTHER_DESTINATION, max_keys, idle_intervals)
        self._proc = _Keyed(OTHER_PROCESS, max_keys, idle_intervals)
        # by container (its label), only fed where containers are resolved
        self._cont = _Keyed(OTHER_CONTAINER, max_keys, idle_intervals)
        self._comm: dict[int, str] = {}   # only of pids with a row
        # the container column (where resolved), only of keys with a row
        self._proc_where: dict[int, str | None] = {}
        self._dest_where: dict[tuple, str | None] = {}
        self.events = 0
        # connects not yet in the views (add): (family, daddr, dport, pid,
        # container) -> [Connect, ...] in arrival order; pid -> its last comm
        self._batch: dict[tuple, list] = {}
        self._batch_comm: dict[int, str] = {}
        self._batch_where: dict[int, str] = {}      # pid -> its last container
        self._batched = 0

    def add(self, ev: Connect, container: str | None = None) -> None:
        """Count ev; `container`: the group of the process's container
        (tracer.domain.containers.group_label), None where containers are not resolved.

        Connects are grouped by (destination, pid, container) until the
        table is read (or BATCH_MAX are waiting): each group is summed once
        and merged into the three views, instead of each connect being
        added three times. The views come out the same: a key gets its slot
        in a full window at its first connect as before (groups keep the
        order of their first connects), and all merged fields are counts,
        maxima or histogram buckets (only the latency histograms' float
        `total`, which no view reads, is summed in another order)."""
        self.events += 1
        key = (ev.family, ev.daddr, ev.dport, ev.pid, container)
        evs = self._batch.get(key)
        if evs is None:
            self._batch[key] = [ev]
        else:
            evs.append(ev)
        self._batch_comm[ev.pid] = ev.comm
        if container is not None:
            self._batch_where[ev.pid] = container   # its last connect's, as the comm
        self._batched += 1
        if self._batched >= BATCH_MAX:
            self._flush()

    def _flush(self) -> None:
        if not self._batch:
            return
        batch, self._batch = self._batch, {}
        comms, self._batch_comm = self._batch_comm, {}
        wheres, self._batch_where = self._batch_where, {}
        self._batched = 0
        dest, proc, cont = self._dest, self._proc, self._cont
        counted = set()     # pids with a row of their own (all or none of an interval's)
        for (family, daddr, dport, pid, container), evs in batch.items():
            dkey = (family, daddr, dport)
            if len(evs) == 1:    # (a lone connect: added, as cheap as a merge)
                ev = evs[0]
                in_dest = dest.add(dkey, ev)
                in_proc = proc.add((pid,), ev)
                if container is not None:
                    cont.add((container,), ev)
            else:
                part = ConnectStats()
                for ev in evs:
                    part.add(ev)
                n = len(evs)
                in_dest = dest.add_stats(dkey, part, n)
                in_proc = proc.add_stats((pid,), part, n)
                if container is not None:
                    cont.add_stats((container,), part, n)
            if in_proc:
                counted.add(pid)
            if container is not None and in_dest:
                where = None if container == HOST else container
                had = self._dest_where.get(dkey, _UNSEEN)
                if had is _UNSEEN:
                    self._dest_where[dkey] = where
                elif had != where:
                    self._dest_where[dkey] = SEVERAL
        for pid in counted:
            self._comm[pid] = comms[pid]    # its last connect's, as add() kept
            container = wheres.get(pid)
            if container is not None:
                self._proc_where[pid] = None if container == HOST else container

    def roll(self, seconds: float) -> None:
        """Close the current interval (call once per interval)."""
        self._flush()
        for key in self._dest.roll(seconds):
            self._dest_where.pop(key, None)
        for (pid,) in self._proc.roll(seconds):
            self._comm.pop(pid, None)
            self._proc_where.pop(pid, None)
        self._cont.roll(seconds)

    @property
    def evicted(self) -> dict[str, int]:
        self._flush()
        out = {"destinations": self._dest.evicted, "processes": self._proc.evicted}
        if self._cont.evicted:
            out["containers"] = self._cont.evicted
        return out

    def set_pending(self, pending: dict) -> None:
        """{(family, daddr, dport): (count, oldest age in seconds)} right now."""
        self._pending = pending

    def by_destination(self) -> list[ConnectRow]:
        self._flush()
        return self._dest.rows(destination_label, self._pending, self._dest_where.get)

    def by_process(self) -> list[ConnectRow]:
        self._flush()
        return self._proc.rows(lambda k: f"{k[0]} {self._comm.get(k[0], '?')}",
                               where=lambda k: self._proc_where.get(k[0]))

    def by_container(self) -> list[ConnectRow]:
        """Rows per container label; empty where containers are not resolved."""
        self._flush()
        return self._cont.rows(lambda k: k[0])
