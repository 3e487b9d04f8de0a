"""The collection loop: poll the probes, feed aggregation, and once per
--interval build a Snapshot and hand it to every sink.

Single-threaded on purpose: the poll has a short timeout, so a stop request
(SIGINT/SIGTERM set a flag) is seen within ~100 ms, and there is one exit
path that closes every sink. (The TUI runs this loop in a worker thread and
receives the snapshots; it never calls into the loop.)
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Callable, Protocol

from tracer.aggregate.connects import ConnectTable
from tracer.aggregate.edges import EdgeTable
from tracer.aggregate.listeners import ListenerTable
from tracer.aggregate.notable import NotableLog
from tracer.aggregate.sockets import ProcessTable
from tracer.aggregate.snapshot import Header, Snapshot, TcpMemoryRow
from tracer.aggregate.tally import feed_connect_views, feed_each, feed_summed, sums_of
from tracer import fastpath
from tracer.clock import Clock
from tracer.domain import tcp_memory
from tracer.events import Connect
from tracer.filters import Filters

# At the end of a run, batches read at most to empty the buffer (the 8 MiB ring
# holds at most 16 of them; the kernel may still be writing meanwhile)
FINAL_DRAIN_BATCHES = 32


@dataclass(frozen=True)
class Status:
    elapsed_s: float
    events_total: int
    events_per_s: float      # over the last interval
    lost_events: int         # ring/perf buffer full (kernel counter)
    untracked_connects: int  # outcome not seen: in-flight map full, or swept as stale
    decode_errors: int
    inflight: int
    untracked_other: int = 0  # handshake or listener maps full
    # Runs of our programs the kernel skipped because another BPF program
    # was running on that CPU (bpf_prog_info.recursion_misses). Most fall on
    # state changes that make no event; any may have been one, so shown.
    missed_runs: int = 0
    missed_by: dict = field(default_factory=dict)   # {program: skipped runs}
    # Rows of the live views folded into "other" because their tables were
    # full or idle (tracer/aggregate): {table: count} since start. Nothing is
    # missing from the recording's event rows, but the live views lost
    # detail: shown like lost events, never silent.
    evicted_by: dict = field(default_factory=dict)

    @property
    def evicted(self) -> int:
        return sum(self.evicted_by.values())

    @property
    def lost_total(self) -> int:
        return self.lost_events + self.untracked_connects + self.decode_errors + self.untracked_other


class Sink(Protocol):
    # A sink that never reads the snapshot's connect views (destinations,
    # processes_connects, containers_connects) says so with
    # `uses_connect_views = False`; a sink that does not say is assumed to.
    def on_events(self, events: list) -> None: ...
    def on_interval(self, status: Status, snapshot: Snapshot) -> None: ...
    def close(self, status: Status, snapshot: Snapshot) -> None: ...


def no_kernel_view():
    """(listening sockets, {inode: (pid, comm)}, {pid: Holding}, scan time)
    when there is no socket table to read (tests of the loop itself)."""
    return [], {}, {}, None


class Collector:
    def __init__(self, session, sinks: list, interval: float = 1.0, *, header: Header,
                 limits: dict | None = None,
                 clock: Clock | None = None,
                 kernel_view: Callable[[], tuple[list, dict, dict, float | None]] = no_kernel_view,
                 drop_points_hooked: bool = False,
                 recording_status: Callable[[], dict] | None = None,
                 filters: Filters | None = None,
                 host_view: Callable[[], object] | None = None,
                 containers=None):
        self.session = session
        # applied to the rows read from the socket table (the kernel filters events)
        self.filters = filters or Filters()
        self.sinks = sinks
        self.interval = interval
        self.header = header
        self.clock = clock or Clock()
        self.kernel_view = kernel_view
        # host-wide TCP memory (tracer.probes.tcp_memory.read), None: not read
        self.host_view = host_view
        # pid -> cgroup, container, pod (tracer.probes.cgroups.ContainerCache): resolved
        # per poll for the pids in it, before any sink sees the events; None: not read
        self.containers = containers
        self._tcp_counters: dict | None = None
        self.recording_status = recording_status
        # limits: the tables' bounds ({"max_keys": n, ...}), lowered by tests
        limits = limits or {}
        self.connects = ConnectTable(limits.get("max_keys"), limits.get("idle_intervals"))
        self.listeners = ListenerTable(drop_points_hooked, limits.get("max_listeners"))
        self.edges = EdgeTable(limits.get("max_edges"))
        self.processes = ProcessTable(limits.get("max_flows"), limits.get("max_processes"))
        # The connect views (ConnectTable: per destination, process and
        # container) are kept only when a sink reads them (top, top --plain):
        # for `record` and `serve` alone they were rows made for no one, and
        # three latency histograms a connect (BENCHMARKS.md section 18).
        self.connect_views = any(getattr(s, "uses_connect_views", True) for s in sinks)
        self.log = NotableLog()
        # the poll's events summed a key at a time in C (tracer/aggregate/tally.py;
        # the connect views batch their own); None: fed one at a time
        self._tally = getattr(fastpath.native, "tally", None)
        self._events_total = 0
        self._events_at_tick = 0
        self._lost_at_tick = 0
        self._evicted_at_tick = 0
        self.kernel_view_error: str | None = None
        self.primed = False   # starting values taken: what happens from now on is counted

    def _status(self, started: float, seconds: float) -> Status:
        c = self.session.counters()
        missed_by = self.session.missed_runs_by()
        rate = (self._events_total - self._events_at_tick) / seconds if seconds > 0 else 0.0
        return Status(
            elapsed_s=time.monotonic() - started, events_total=self._events_total,
            events_per_s=rate, lost_events=c["lost_events"],
            untracked_connects=c["untracked_connects"] + c.get("stale_connects", 0),
            decode_errors=c["decode_errors"],
            inflight=self.session.inflight(),
            untracked_other=(c.get("untracked_accept_waits", 0) + c.get("untracked_listeners", 0)
                             + c.get("untracked_lifetimes", 0) + c.get("untracked_accepts", 0)
                             # connect() calls not watched for their own error (most
                             # then send a SYN and are tracked all the same)
                             + c.get("untracked_connect_calls", 0)),
            missed_runs=sum(missed_by.values()),
            missed_by=missed_by,
            evicted_by=self.evicted_by(),
        )

    def evicted_by(self) -> dict[str, int]:
        out = {**self.connects.evicted, **self.processes.evicted, **self.listeners.evicted,
               **self.edges.evicted}
        if self.containers is not None:
            # pids let go of by the bounded container cache (read again if seen again)
            out["container_cache"] = self.containers.evicted
        return out

    def _drain(self, timeout_ms: int) -> None:
        events = self.session.poll(timeout_ms)
        closes = self.session.take_closes()
        self._events_total += len(closes)
        self.processes.add_closes(closes)
        if not events:
            return
        self._events_total += len(events)
        sums = sums_of(self._tally, events) if self._tally is not None else None
        group = None
        if self.containers is not None:
            if sums is not None:
                self.containers.note(sums[6], sums[7])
            else:
                self.containers.note([ev.pid for ev in events],
                                     [ev.cgroup_id for ev in events if type(ev) is Connect])
            group = self.containers.group_of
        connects_add = self.connects.add if self.connect_views else None
        if sums is None:
            feed_each(self, events, connects_add, group)
        else:
            feed_summed(self, events, sums)
            if connects_add is not None:
                feed_connect_views(connects_add, events, group)
        for sink in self.sinks:
            sink.on_events(events)

    def _snapshot(self, seconds: float, status: Status) -> Snapshot:
        now_us = time.time_ns() // 1000
        self.connects.roll(seconds)
        now_ns = time.monotonic_ns()
        self.connects.set_pending({k: (n, (now_ns - oldest) / 1e9)
                                   for k, (n, oldest) in self.session.pending_connects().items()})
        try:
            diag, owners, holdings, scanned_at = self.kernel_view()
            self.kernel_view_error = None
        except OSError as e:   # the kernel's socket table adds to BPF, never fatal
            diag, owners, holdings, scanned_at = [], {}, {}, None
            self.kernel_view_error = f"socket table unreadable: {e}"
        listener_rows = self.listeners.update(
            seconds, diag, self.session.listener_counters(), self.session.take_listener_peaks(),
            owners)
        process_rows = self.processes.update(seconds, holdings, scanned_at)
        if self.containers is not None:
            listener_rows, process_rows = self._attribute(listener_rows, process_rows)
        # (joined with every listener, shown or not: a filter picks edges, not servers)
        edge_rows = self.edges.roll(seconds, listener_rows,
                                    holdings if scanned_at is not None else None)
        if self.containers is not None:
            of = self.containers.attribution_of
            edge_rows = [replace(e, container=of(e.pid, e.cgroup_id or 0)) if e.family else e
                         for e in edge_rows]
        if self.filters.active:
            listener_rows = [r for r in listener_rows if self.filters.keeps_listener(r)]
            process_rows = [p for p in process_rows if self.filters.keeps_process(p)]
            edge_rows = [e for e in edge_rows if self.filters.keeps_edge(e)]
        self.log.listeners(listener_rows, now_us)
        self.log.lost_events(status.lost_total - self._lost_at_tick, now_us)
        self._lost_at_tick = status.lost_total
        evicted = sum(self.evicted_by().values())
        self.log.evicted(evicted - self._evicted_at_tick, now_us)
        self._evicted_at_tick = evicted
        return Snapshot(
            tcp_memory=self._tcp_memory(),
            ts_us=now_us, interval_s=seconds, header=self.header,
            events_total=status.events_total, events_per_s=status.events_per_s,
            lost_events=status.lost_total,
            evicted=sum(self.evicted_by().values()),
            missed_by=tuple(sorted(status.missed_by.items())),
            destinations=tuple(self.connects.by_destination()),
            processes_connects=tuple(self.connects.by_process()),
            containers_connects=tuple(self.connects.by_container()),
            listeners=tuple(listener_rows),
            processes=tuple(process_rows),
            edges=tuple(edge_rows),
            notable=self.log.roll(now_us),
            **self._recording_fields(),
        )

    def _attribute(self, listener_rows, process_rows):
        """Each row with its process's container (pid reuse checked first)."""
        cache = self.containers
        cache.revalidate()
        listener_rows = [replace(r, container=cache.get(r.pid)) if r.pid else r
                         for r in listener_rows]
        process_rows = [replace(p, container=cache.get(p.pid)) if p.pid else p
                        for p in process_rows]
        return listener_rows, process_rows

    def _tcp_memory(self) -> TcpMemoryRow | None:
        """This interval's host TCP memory and what its counters added."""
        if self.host_view is None:
            return None
        try:
            m = self.host_view()
        except OSError:
            return None
        d = tcp_memory.deltas(m.counters, self._tcp_counters)
        self._tcp_counters = dict(m.counters)
        return TcpMemoryRow(
            used_bytes=m.used, low_bytes=m.low, pressure_bytes=m.pressure, max_bytes=m.maximum,
            memory_pressures=d.get("TCPMemoryPressures", 0), rcvq_drops=d.get("TCPRcvQDrop", 0),
            pruned=d.get("RcvPruned", 0) + d.get("OfoPruned", 0),
            aborts_on_memory=d.get("TCPAbortOnMemory", 0))

    def _recording_fields(self) -> dict:
        if self.recording_status is None:
            return {}
        rec = self.recording_status()
        return {"recording_bytes": rec.get("bytes_written", 0) + rec.get("journal_bytes", 0),
                "recording_warning": rec.get("paused_reason")}

    def _tick(self, started: float, last_tick: float, now: float) -> None:
        seconds = now - last_tick
        status = self._status(started, seconds)
        snapshot = self._snapshot(seconds, status)
        status = replace(status, evicted_by=self.evicted_by())   # with this interval's
        self._events_at_tick = self._events_total
        for sink in self.sinks:
            sink.on_interval(status, snapshot)

    def _prime(self) -> None:
        if self.host_view is not None:
            self._tcp_memory()      # counters from now on are this run's
        try:
            diag, _, _, _ = self.kernel_view()
        except OSError:
            diag = []
        self.listeners.prime(diag, self.session.listener_counters())
        self.session.take_listener_peaks()

    def run(self, should_stop: Callable[[], bool], duration: float | None = None) -> Status:
        self._prime()
        self.primed = True
        started = last_tick = time.monotonic()
        deadline = started + duration if duration else None
        try:
            # Intervals fall due on a grid from the start (a late tick does
            # not push the next ones later), and one that is due is closed
            # before the deadline is looked at: a --duration of N intervals
            # prints and records N, however early a poll returned or late
            # this thread ran.
            next_tick = started + self.interval
            while not should_stop():
                now = time.monotonic()
                if now >= next_tick:
                    self._tick(started, last_tick, now)
                    last_tick = now
                    # after a stall of more than an interval: the next slot
                    next_tick = started + self.interval * ((now - started) // self.interval + 1)
                if deadline is not None and now >= deadline:
                    break
                wait = min(next_tick, deadline or next_tick) - now
                self._drain(max(0, min(100, int(wait * 1000))))
        finally:
            # Events already in the buffer belong to this run: take them all
            # (a read stops at a batch; bounded, as the kernel may go on
            # writing), and close the last (partial) interval so
            # per-interval tables have it.
            self._drain(0)
            for _ in range(FINAL_DRAIN_BATCHES):
                if not getattr(self.session, "behind", False):
                    break
                self._drain(0)
            seconds = max(time.monotonic() - last_tick, 1e-9)
            status = self._status(started, seconds)
            snapshot = self._snapshot(seconds, status)
            status = replace(status, evicted_by=self.evicted_by())
            errors = []
            for sink in self.sinks:
                try:
                    sink.close(status, snapshot)
                except Exception as e:  # close every sink, then report
                    errors.append(e)
            if errors:
                raise errors[0]
        return status
