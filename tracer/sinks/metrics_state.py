"""What the Prometheus endpoint exports, as pure state: counters that only
grow, gauges of the latest snapshot, and the caps that bound how many label
values there are. No prometheus_client here (tracer/sinks/metrics_endpoint.py
renders a `View` of this into metric families at scrape time).

Where each figure comes from (one definition of each thing):
- connects and accepts: the decoded events every sink gets (`on_events`), the
  same ones the Parquet `connects` and `accepts` rows are; outcomes are
  tracer/domain/outcomes.py's, a connect's duration is `Connect.latency_us`,
  an accept's wait `Accept.queue_wait_us`;
- listener drops, SYN-ACK retransmits, queues, sockets, fds, opened/closed and
  pool advice: the interval's Snapshot (the rows the TUI shows and `record`
  writes), summed interval by interval;
- the tracer's own losses, evictions and skipped runs: the Snapshot's totals.

Label values are chosen by other users (a process name is any 15 bytes), so
there are at most `caps.processes` processes (a name in one container, pod
and namespace: `WHERE` labels, empty on the host), `caps.destinations`
destinations per process and `caps.listeners` listeners with a label of
their own; the rest are counted under "other". A label idle for
IDLE_INTERVALS gives its place back, and what it counted moves to "other" of
the same level, so the sum over a metric's labels never goes down.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass

from tracer.domain.addresses import endpoint
from tracer.domain.containers import COLUMNS
from tracer.safe_text import printable

OTHER = "other"
# Longest label value taken from what another user chose (escaped first:
# printable() shows a control byte as 4 characters, a comm is 15 bytes)
LABEL_MAX = 64
IDLE_INTERVALS = 300     # as the live tables' (tracer/aggregate/connects.py)
CACHE_MAX = 8192         # raw keys remembered per interval (a flood of new ones is not cached)

# Upper bounds of the duration histograms' buckets, seconds (+Inf is added).
# From 100 µs (loopback, a LAN) to the kernel's SYN retry limit (~127 s).
DURATION_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                    0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 130.0)
SOCKET_STATES = ("established", "syn_sent", "listen", "close_wait", "other")
# Where a process runs, after its name in every per-process series: its
# container (Kubernetes container name, else the id's first 12 digits, a
# service's unit name), pod and pod namespace; "" where none or unknown.
WHERE = ("container", "pod", "namespace")
HOST_WHERE = ("", "", "")
OTHER_PROCESS = (OTHER, *HOST_WHERE)
_RUNTIME, _ID, _NAMESPACE, _POD, _NAME = (COLUMNS.index(c) for c in (
    "container_runtime", "container_id", "pod_namespace", "pod_name", "container_name"))


@dataclass(frozen=True)
class Caps:
    processes: int = 20
    destinations: int = 10      # per process
    listeners: int = 50


def where_of(columns: tuple | None) -> tuple[str, str, str]:
    """WHERE label values from container columns (tracer.domain.containers
    COLUMNS order, as ContainerCache.columns_of gives them); None: the host."""
    if not columns or columns[_ID] is None and columns[_POD] is None:
        return HOST_WHERE
    cid = columns[_ID]
    container = columns[_NAME] or (
        (cid if columns[_RUNTIME] == "systemd" else cid[:12]) if cid else "")
    return (label_text(container) if container else "",
            label_text(columns[_POD]) if columns[_POD] else "",
            label_text(columns[_NAMESPACE]) if columns[_NAMESPACE] else "")


def where_of_attribution(a) -> tuple[str, str, str]:
    """where_of for a row's Attribution (None: the host or unknown)."""
    if a is None:
        return HOST_WHERE
    from tracer.domain.containers import values
    return where_of(values(a))


def label_text(text: object) -> str:
    """A label value from text another user chose: every control character
    escaped (tracer.safe_text.printable), at most LABEL_MAX characters.
    (The client library escapes backslash, quote and newline on top: a
    value can never end its line or its quotes.)"""
    s = printable(text) or "?"
    return s if len(s) <= LABEL_MAX else s[:LABEL_MAX - 3] + "..."


class Slots:
    """Which names keep a label of their own: at most `cap`, first come; a
    name idle for `idle` intervals gives its place back (`expire`)."""

    def __init__(self, cap: int, idle: int = IDLE_INTERVALS):
        self.cap = cap
        self.idle = idle
        self.last: dict[str, int] = {}

    def admit(self, name: str, now: int) -> bool:
        last = self.last
        if name in last:
            last[name] = now
            return True
        if len(last) < self.cap:
            last[name] = now
            return True
        return False

    def expire(self, now: int) -> list[str]:
        gone = [n for n, t in self.last.items() if t <= now - self.idle]
        for n in gone:
            del self.last[n]
        return gone


class Series:
    """A histogram's buckets (not cumulative; the last is +Inf), count and sum."""

    __slots__ = ("buckets", "count", "sum")

    def __init__(self, n: int):
        self.buckets = [0] * n
        self.count = 0
        self.sum = 0.0

    def observe(self, seconds: float | None, bounds=DURATION_BUCKETS) -> None:
        self.count += 1
        if seconds is not None:
            self.sum += seconds
            # bisect_left: a value equal to a bound is in that bound's bucket (le)
            self.buckets[bisect.bisect_left(bounds, seconds)] += 1
        else:   # no duration known: counted, in no bucket but +Inf
            self.buckets[-1] += 1

    def merge(self, o: "Series") -> None:
        for i, n in enumerate(o.buckets):
            self.buckets[i] += n
        self.count += o.count
        self.sum += o.sum

    def frozen(self) -> tuple:
        """(cumulative bucket counts, count, sum)."""
        cum, run = [], 0
        for n in self.buckets:
            run += n
            cum.append(run)
        return tuple(cum), self.count, self.sum


def _fold(table: dict, match, to_other) -> None:
    """Move every entry whose key `match`es to the key `to_other(key)`,
    adding (ints) or merging (Series)."""
    for key in [k for k in table if match(k)]:
        value = table.pop(key)
        dest = to_other(key)
        if isinstance(value, Series):
            table.setdefault(dest, Series(len(value.buckets))).merge(value)
        else:
            table[dest] = table.get(dest, 0) + value


@dataclass(frozen=True)
class View:
    """What one scrape renders: copies, never the live dicts."""

    # (a process is its name and WHERE: (process, container, pod, namespace))
    connects: dict          # (*process, destination, outcome) -> (cum buckets, count, sum)
    syn_retransmits: dict   # (*process, destination) -> int
    accepts: dict           # (listener, netns) -> (cum buckets, count, sum)
    listener_counters: dict  # (listener, netns) -> (drops, syn_drops, synack_retransmits)
    listener_gauges: tuple  # ((listener, netns, owner's *process), queue_len, backlog_max), ...
    process_counters: dict  # process -> (opened, closed)
    process_gauges: tuple   # ((pid, *process), {state: n}, fds, fd_limit), ...
    pool: tuple             # ((pid, *process, destination), recommended, in_use, hold_s), ...
    tracer: dict            # name -> value (events, lost, evicted)
    skipped_runs: dict      # program -> runs
    folded: int             # label values given back (idle), their counts moved to "other"


EMPTY_VIEW = View({}, {}, {}, {}, (), {}, (), (), {}, {}, 0)


class MetricsState:
    """Fed by the collector thread only; `view` is replaced, never changed,
    once per interval, so a scrape reads it without a lock."""

    def __init__(self, caps: Caps = Caps(), idle: int = IDLE_INTERVALS, where=None):
        """where: (pid, cgroup id) -> container columns of an event's process
        (tracer.probes.cgroups.ContainerCache.columns_of), None: no WHERE labels."""
        self.caps = caps
        self.columns_of = where
        self._wheres: dict[tuple, tuple] = {}     # columns -> WHERE values, bounded below
        self.interval = 0
        self.procs = Slots(caps.processes, idle)
        self.dests: dict[tuple, Slots] = {}          # per process
        self.listener_slots = Slots(caps.listeners, idle)
        self.idle = idle
        self.connects: dict[tuple, Series] = {}
        self.syn_retransmits: dict[tuple, int] = {}
        self.accepts: dict[tuple, Series] = {}
        self.listener_counters: dict[tuple, list] = {}
        self.process_counters: dict[tuple, list] = {}
        self.tracer: dict[str, int] = {}
        self.skipped_runs: dict[str, int] = {}
        self.folded = 0
        # the latest snapshot's gauges, as the View holds them
        self._listener_gauges: tuple = ()
        self._process_gauges: tuple = ()
        self._pool: tuple = ()
        self._names: dict[str, str] = {}   # comm -> label, bounded below
        # raw event fields -> their series, for this interval only (labels
        # are given back and folded between intervals: on_snapshot empties them)
        self._connect_keys: dict[tuple, tuple] = {}
        self._accept_keys: dict[tuple, Series] = {}
        self.view = EMPTY_VIEW

    # -- labels ---------------------------------------------------------------
    def _name(self, comm: str) -> str:
        name = self._names.get(comm)
        if name is None:
            if len(self._names) > 4096:   # comms are chosen by others
                self._names.clear()
            name = self._names[comm] = label_text(comm)
        return name

    def _where(self, pid: int, cgroup_id: int) -> tuple:
        if self.columns_of is None:
            return HOST_WHERE
        cols = self.columns_of(pid, cgroup_id)
        got = self._wheres.get(cols)
        if got is None:
            if len(self._wheres) > 4096:   # containers come and go
                self._wheres.clear()
            got = self._wheres[cols] = where_of(cols)
        return got

    def process_label(self, comm: str, where: tuple = HOST_WHERE) -> tuple:
        """(process, container, pod, namespace), or OTHER_PROCESS past the cap."""
        name = self._name(comm)
        proc = (name, *where)
        return proc if name != OTHER and self.procs.admit(proc, self.interval) else OTHER_PROCESS

    def destination_label(self, process: tuple, dest: str) -> str:
        if process == OTHER_PROCESS:
            return OTHER
        slots = self.dests.get(process)
        if slots is None:
            slots = self.dests[process] = Slots(self.caps.destinations, self.idle)
        return dest if slots.admit(dest, self.interval) else OTHER

    def listener_label(self, name: str, netns: int | None) -> tuple[str, str]:
        ns = str(netns) if netns else ""
        key = f"{name} {ns}"
        if name != OTHER and self.listener_slots.admit(key, self.interval):
            return name, ns
        return OTHER, ""

    # -- events (every poll) ---------------------------------------------------
    def on_connect(self, ev) -> None:
        # The labels of a (comm, destination, outcome) are worked out once an
        # interval (which also keeps its place, Slots.admit); then a dict look-up.
        where = self._where(ev.pid, ev.cgroup_id)
        raw = (ev.comm, where, ev.family, ev.daddr, ev.dport, ev.outcome)
        hit = self._connect_keys.get(raw)
        if hit is None:
            process = self.process_label(ev.comm, where)
            dest = self.destination_label(process, endpoint(ev.daddr, ev.dport, ev.family))
            key = (*process, dest, ev.outcome)
            s = self.connects.get(key)
            if s is None:
                s = self.connects[key] = Series(len(DURATION_BUCKETS) + 1)
            hit = (s, (*process, dest))
            if len(self._connect_keys) < CACHE_MAX:
                self._connect_keys[raw] = hit
        s, pd = hit
        us = ev.latency_us
        s.observe(us / 1e6 if us is not None else None)
        if ev.syn_retransmits:
            self.syn_retransmits[pd] = self.syn_retransmits.get(pd, 0) + ev.syn_retransmits

    def on_accept(self, ev) -> None:
        raw = (ev.family, ev.laddr, ev.lport, ev.netns)
        s = self._accept_keys.get(raw)
        if s is None:
            key = self.listener_label(endpoint(ev.laddr, ev.lport, ev.family), ev.netns)
            s = self.accepts.get(key)
            if s is None:
                s = self.accepts[key] = Series(len(DURATION_BUCKETS) + 1)
            if len(self._accept_keys) < CACHE_MAX:
                self._accept_keys[raw] = s
        us = ev.queue_wait_us
        s.observe(us / 1e6 if us is not None else None)

    # -- snapshots (every interval) --------------------------------------------
    def on_snapshot(self, snap) -> None:
        self.interval += 1
        self._connect_keys = {}
        self._accept_keys = {}
        self._listeners(snap.listeners)
        self._processes(snap.processes)
        # totals since start already: kept as they are, never lower
        for name, value in (("events", snap.events_total), ("lost_events", snap.lost_events),
                            ("evicted_rows", snap.evicted)):
            self.tracer[name] = max(self.tracer.get(name, 0), value)
        for program, runs in snap.missed_by:
            self.skipped_runs[program] = max(self.skipped_runs.get(program, 0), runs)
        self._expire()
        self.view = self._freeze()

    def _listeners(self, rows) -> None:
        gauges = []
        for r in rows:
            name = endpoint(r.laddr, r.lport, r.family)   # family 0: the summed row, "other"
            key = self.listener_label(name, r.netns)
            c = self.listener_counters.setdefault(key, [0, 0, 0])
            c[0] += r.drops
            c[1] += r.syn_drops
            c[2] += r.synack_retransmits
            if key[0] != OTHER:
                owner = self._name(r.comm) if r.comm is not None else ""
                gauges.append(((key[0], key[1], owner,
                                *where_of_attribution(getattr(r, "container", None))),
                               r.queue_len, r.backlog_max))
        self._listener_gauges = tuple(gauges)

    def _processes(self, rows) -> None:
        wheres = {id(r): where_of_attribution(r.container) for r in rows}
        for r in rows:
            process = (OTHER_PROCESS if r.pid == 0
                       else self.process_label(r.comm, wheres[id(r)]))
            c = self.process_counters.setdefault(process, [0, 0])
            c[0] += r.opened
            c[1] += r.closed
        # gauges: the processes holding most sockets, each with its own pid
        top = sorted((r for r in rows if r.pid and r.sockets), key=lambda r: r.sockets,
                     reverse=True)[:self.caps.processes]
        self._process_gauges = tuple(
            ((r.pid, self._name(r.comm), *wheres[id(r)]),
             {"established": r.established, "syn_sent": r.syn_sent, "listen": r.listen,
              "close_wait": r.close_wait, "other": r.other}, r.fds, r.fd_limit)
            for r in top)
        self._pool = tuple(
            ((r.pid, self._name(r.comm), *wheres[id(r)], a.destination), a.recommended,
             a.in_use, a.hold_s)
            for r in top for a in r.advice[:self.caps.destinations])

    def _expire(self) -> None:
        """Labels idle for `idle` intervals give their place back; what they
        counted moves to "other" of the same level."""
        now = self.interval
        n = len(OTHER_PROCESS)
        for process in self.procs.expire(now):
            self.dests.pop(process, None)
            _fold(self.connects, lambda k: k[:n] == process,
                  lambda k: (*OTHER_PROCESS, OTHER, k[-1]))
            _fold(self.syn_retransmits, lambda k: k[:n] == process,
                  lambda k: (*OTHER_PROCESS, OTHER))
            pc = self.process_counters.pop(process, None)
            if pc:
                o = self.process_counters.setdefault(OTHER_PROCESS, [0, 0])
                o[0] += pc[0]
                o[1] += pc[1]
            self.folded += 1
        for process, slots in self.dests.items():
            for dest in slots.expire(now):
                _fold(self.connects, lambda k: k[:n] == process and k[n] == dest,
                      lambda k: (*process, OTHER, k[-1]))
                _fold(self.syn_retransmits, lambda k: k == (*process, dest),
                      lambda k: (*process, OTHER))
                self.folded += 1
        for key in self.listener_slots.expire(now):
            name, _, ns = key.rpartition(" ")
            _fold(self.accepts, lambda k: k == (name, ns), lambda k: (OTHER, ""))
            lc = self.listener_counters.pop((name, ns), None)
            if lc:
                o = self.listener_counters.setdefault((OTHER, ""), [0, 0, 0])
                for i, n in enumerate(lc):
                    o[i] += n
            self.folded += 1

    def _freeze(self) -> View:
        return View(
            connects={k: s.frozen() for k, s in self.connects.items()},
            syn_retransmits=dict(self.syn_retransmits),
            accepts={k: s.frozen() for k, s in self.accepts.items()},
            listener_counters={k: tuple(v) for k, v in self.listener_counters.items()},
            listener_gauges=self._listener_gauges,
            process_counters={k: tuple(v) for k, v in self.process_counters.items()},
            process_gauges=self._process_gauges,
            pool=self._pool,
            tracer=dict(self.tracer),
            skipped_runs=dict(self.skipped_runs),
            folded=self.folded,
        )
