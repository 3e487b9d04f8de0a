"""Events and interval snapshots as rows of the Parquet tables (tracer/schema.py)."""
from __future__ import annotations

from tracer.aggregate.snapshot import ListenerRow, Snapshot
from tracer.clock import Clock
from tracer.domain import containers, outcomes
from tracer.events import Accept, Connect


CONNECT_FIELDS = ("ts", "pid", "tid", "comm", "family", "saddr", "sport", "daddr", "dport",
                  "latency_us", "outcome", "syn_retransmits", "errno", "netns",
                  *containers.COLUMNS)
ACCEPT_FIELDS = ("ts", "pid", "comm", "family", "laddr", "lport", "raddr", "rport",
                 "queue_wait_us", "backlog_len", "backlog_max", "listener_pid", "netns",
                 *containers.COLUMNS)
_NO_CONTAINER = containers.values(None)


def _no_container(pid: int, cgroup_id: int = 0) -> tuple:
    return _NO_CONTAINER


def connect_values(ev: Connect, clock: Clock, where=_NO_CONTAINER) -> tuple:
    """A connects row, in CONNECT_FIELDS order (tuples: cheaper than dicts
    at tens of thousands a second, and turned into columns in one zip);
    `where`: containers.values() of the process."""
    return (
        clock.wall_us(ev.ts_start_ns),   # SPEC: when connect() was called
        ev.pid, ev.tid, ev.comm, ev.family, ev.saddr, ev.sport, ev.daddr, ev.dport,
        ev.latency_us, ev.outcome, ev.syn_retransmits,
        None if ev.outcome == outcomes.ESTABLISHED else ev.err, ev.netns or None,
        *where,
    )


def accept_values(ev: Accept, clock: Clock, where=_NO_CONTAINER) -> tuple:
    return (clock.wall_us(ev.ts_ns), ev.pid, ev.comm, ev.family, ev.laddr, ev.lport, ev.raddr,
            ev.rport, ev.queue_wait_us, ev.backlog_len, ev.backlog_max, None, ev.netns or None,
            *where)


def connect_row(ev: Connect, clock: Clock, where=_NO_CONTAINER) -> dict:
    return dict(zip(CONNECT_FIELDS, connect_values(ev, clock, where)))


def _where(r) -> dict:
    """The container columns of an interval row (ListenerRow, ProcessRow)."""
    return dict(zip(containers.COLUMNS, containers.values(r.container)))


def listener_row(r: ListenerRow, ts_us: int) -> dict:
    return {
        "ts": ts_us, "family": r.family, "laddr": r.laddr, "lport": r.lport, "netns": r.netns, "pid": r.pid,
        "comm": r.comm, "backlog_max": r.backlog_max, "queue_len": r.queue_len,
        "queue_peak": r.queue_peak, "overflows_total": r.drops_total,
        "syn_queue_len": r.syn_queue_len, "drops": r.drops + r.syn_drops,
        "accepts": r.accepts, "accept_wait_p99_us": r.accept_wait_p99_us, **_where(r),
    }


def overflow_row(r: ListenerRow, ts_us: int, interval_s: float) -> dict:
    return {
        "ts": ts_us, "family": r.family, "laddr": r.laddr, "lport": r.lport, "netns": r.netns, "pid": r.pid,
        "comm": r.comm, "drops": r.drops, "syn_drops": r.syn_drops,
        "cookie_drops": r.cookie_drops,
        "backlog_max": r.backlog_max, "backlog_peak": r.queue_peak, "interval_s": interval_s,
        "synack_retransmits": r.synack_retransmits, **_where(r),
    }


def socket_row(r, ts_us: int) -> dict:
    return {
        "ts": ts_us, "pid": r.pid, "comm": r.comm, "established": r.established,
        "syn_sent": r.syn_sent, "listen": r.listen, "close_wait": r.close_wait, "other": r.other,
        "opened": r.opened, "closed": r.closed, "fds": r.fds, "fd_limit": r.fd_limit,
        "tx_queue_bytes": r.tx_queue_bytes, "rx_queue_bytes": r.rx_queue_bytes,
        "rss_bytes": r.rss_bytes, "memory_per_connection_bytes": r.memory_per_connection,
        "cgroup_memory_bytes": r.cgroup_memory_bytes, "memory_limit_bytes": r.memory_limit_bytes,
        "memory_limit_from": r.memory_limit_from, "listen_backlog": r.listen_backlog,
        "socket_rmem_bytes": r.socket_rmem_bytes, "socket_wmem_bytes": r.socket_wmem_bytes,
        **_where(r),
    }


def pool_rows(r, ts_us: int) -> list[dict]:
    return [{
        "ts": ts_us, "pid": r.pid, "comm": r.comm, "destination": a.destination,
        "arrival_per_s": a.arrival_per_s, "hold_s": a.hold_s,
        "concurrency_mean": a.concurrency_mean, "concurrency_p99": a.concurrency_p99,
        "concurrency_peak": a.concurrency_peak, "recommended": a.recommended,
        "in_use": a.in_use, "verdict": a.verdict, "window_s": a.window_s, **where,
    } for a in r.advice for where in (_where(r),)]


def edge_row(e, ts_us: int, interval_s: float) -> dict:
    return {
        "ts": ts_us, "pid": e.pid, "comm": e.comm, "family": e.family, "daddr": e.daddr,
        "dport": e.dport, "netns": e.netns, "connects": e.attempts, "connects_per_s": e.rate,
        "interval_s": interval_s, "connected": e.connected, "refused": e.refused,
        "timeout": e.timeout, "abandoned": e.abandoned, "unreachable": e.unreachable,
        "error": e.error, "connect_p50_us": e.p50_us, "connect_p99_us": e.p99_us,
        "established": e.established, "server_pid": e.server_pid, "server_comm": e.server_comm,
        "listener": e.listener, "server_netns": e.server_netns,
        "listener_drops": e.listener_drops, **_where(e),
        **dict(zip(containers.SERVER_COLUMNS, containers.values(e.server_container))),
    }


def compiled_rows():
    """tracer/_fastpath.c event_rows, or None on the pure-Python path."""
    from tracer import fastpath
    return getattr(fastpath.native, "event_rows", None)


BATCH_ROWS = 4096   # rows per table handed to the writer at once


class RecordSink:
    """Feeds a tracer.sinks.parquet_writer.Recording.

    Event rows are gathered and handed over once per interval (or per
    BATCH_ROWS): turning rows into Arrow costs ~60 us a call whatever the
    size, which per poll was most of our CPU at a few thousand connects/s."""

    uses_connect_views = False   # (tracer/collector.py Sink)

    def __init__(self, recording, clock: Clock, containers=None):
        self.recording = recording
        self.clock = clock
        # (pid, cgroup id) -> container columns (tracer.probes.cgroups.ContainerCache.
        # columns_of); the collector has resolved this poll's pids and ids before on_events
        self._container = containers.columns_of if containers is not None else _no_container
        self._rows: dict[str, list] = {"connects": [], "accepts": []}
        # the loop of on_events in C (tracer/_fastpath.c event_rows: the same
        # rows, tests/unit/test_event_rows.py), for a Clock whose wall_us is Clock's
        self._compiled_rows = compiled_rows() if type(clock).wall_us is Clock.wall_us else None
        self._fields = {"connects": CONNECT_FIELDS, "accepts": ACCEPT_FIELDS}

    def _hand_over(self, table: str) -> None:
        rows = self._rows[table]
        if rows:
            # (imported here: pyarrow comes after the probes load, run.py)
            from tracer.sinks.table_writer import columns_of_rows
            self._rows[table] = []
            self.recording.write(table, columns_of_rows(table, self._fields[table], rows))

    def on_events(self, events) -> None:
        connects, accepts = self._rows["connects"], self._rows["accepts"]
        container = self._container
        if self._compiled_rows is not None and type(events) is list:
            self._compiled_rows(events, self.clock.offset_ns, container, connects, accepts,
                                outcomes.ESTABLISHED)
        else:
            clock = self.clock
            for ev in events:
                kind = type(ev)
                if kind is Connect:
                    connects.append(connect_values(ev, clock, container(ev.pid, ev.cgroup_id)))
                elif kind is Accept:
                    accepts.append(accept_values(ev, clock, container(ev.pid, 0)))
        for table, rows in self._rows.items():
            if len(rows) >= BATCH_ROWS:
                self._hand_over(table)

    def _interval(self, status, snap: Snapshot) -> None:
        for table in self._rows:
            self._hand_over(table)
        listeners = [listener_row(r, snap.ts_us) for r in snap.listeners]
        overflows = [overflow_row(r, snap.ts_us, snap.interval_s) for r in snap.listeners
                     if r.drops or r.syn_drops]
        if listeners:
            self.recording.write("listeners", listeners)
        if overflows:
            self.recording.write("overflows", overflows)
        sockets = [socket_row(r, snap.ts_us) for r in snap.processes]
        pools = [row for r in snap.processes for row in pool_rows(r, snap.ts_us)]
        if sockets:
            self.recording.write("sockets", sockets)
        if pools:
            self.recording.write("pools", pools)
        m = snap.tcp_memory
        if m is not None:
            self.recording.write("tcp_memory", [{
                "ts": snap.ts_us, "used_bytes": m.used_bytes, "low_bytes": m.low_bytes,
                "pressure_bytes": m.pressure_bytes, "max_bytes": m.max_bytes,
                "memory_pressures": m.memory_pressures, "rcvq_drops": m.rcvq_drops,
                "pruned": m.pruned, "aborts_on_memory": m.aborts_on_memory}])
        edges = [edge_row(e, snap.ts_us, snap.interval_s) for e in snap.edges]
        if edges:
            self.recording.write("edges", edges)
        # Every lost kernel event may have been any kind of row: say so on each.
        self.recording.set_lost({"connects": status.lost_total, "accepts": status.lost_total})
        # Live-view rows folded into "other" (no event row is missing for them)
        self.recording.set_evicted(getattr(status, "evicted_by", {}))
        # Runs of our programs the kernel skipped: any may have been a row
        self.recording.set_missed_runs(getattr(status, "missed_by", {}))

    def on_interval(self, status, snapshot: Snapshot) -> None:
        self._interval(status, snapshot)
        self.recording.interval_tick()

    def close(self, status, snapshot: Snapshot) -> None:
        self._interval(status, snapshot)
        self.recording.close()
