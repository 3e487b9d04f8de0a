"""What every view renders: an immutable picture of aggregate state at the
end of one interval. The collector builds one per interval; the TUI, the plain
console view and replay all read only this, never the live aggregators, so a
render can never block collection or see half-updated state."""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from tracer.aggregate.connects import ConnectRow
from tracer.aggregate.edges import EdgeRow
from tracer.domain import memory, tcp_memory
from tracer.domain.containers import Attribution
from tracer.domain.hooks import backend_text
from tracer.domain.addresses import endpoint
from tracer.domain.listeners import spans_namespaces, with_netns


@dataclass(frozen=True)
class ListenerRow:
    family: int                 # 4 or 6
    laddr: str
    lport: int
    pid: int | None             # owner (None if unknown)
    comm: str | None
    backlog_max: int            # effective: min(listen() backlog, somaxconn)
    queue_len: int              # accept queue now
    queue_peak: int             # highest seen in the interval
    syn_queue_len: int | None   # half-open connections now (None if unknown)
    drops: int                  # accept-queue-full drops in the interval (ACK time)
    syn_drops: int              # SYNs dropped for a full queue in the interval
    drops_total: int            # drops + syn_drops since start
    drops_per_s: float
    accepts: int                # in the interval
    accept_wait_p50_us: float | None
    accept_wait_p99_us: float | None
    synack_retransmits: int     # in the interval
    netns: int | None = None    # network namespace inode (None: unknown)
    cookie_drops: int = 0       # of `drops`: SYN-cookie handshakes dropped (client thinks it is connected)
    netns_in_label: bool = False  # the rows shown with it span namespaces (spans_namespaces)
    container: Attribution | None = None  # the owner's cgroup, container, pod (None: unknown)

    @property
    def label(self) -> str:
        # family 0: the listeners past the table's bound, summed
        return with_netns(endpoint(self.laddr, self.lport, self.family), self.netns,
                          self.netns_in_label)


def label_namespaces(rows: list[ListenerRow]) -> list[ListenerRow]:
    """One interval's listener rows, each label naming its namespace when
    they span several (live and replay both call this on the rows they show)."""
    if not spans_namespaces(rows):
        return rows
    return [replace(r, netns_in_label=True) if r.netns else r for r in rows]


@dataclass(frozen=True)
class PoolAdvice:
    destination: str            # "addr:port" (tracer.domain.addresses.endpoint)
    arrival_per_s: float        # new connections per second
    hold_s: float               # mean time each connection is held, connect() to close
    concurrency_mean: float     # observed
    concurrency_p99: float
    concurrency_peak: int
    recommended: int            # Little's law with headroom
    in_use: int                 # what the process appears to hold now
    verdict: str                # "pooled", "churning (no pooling)", ...
    window_s: float = 0.0       # seconds the rate and hold time are measured over


@dataclass(frozen=True)
class ProcessRow:
    pid: int
    comm: str
    established: int
    syn_sent: int
    listen: int
    close_wait: int
    other: int
    opened_per_s: float
    closed_per_s: float
    fds: int | None
    fd_limit: int | None        # soft RLIMIT_NOFILE
    tx_queue_bytes: int
    rx_queue_bytes: int
    churning: bool              # opens many short-lived connections: not pooling
    advice: tuple[PoolAdvice, ...] = ()
    opened: int = 0             # connections opened in the interval (connect + accept)
    closed: int = 0             # connections it opened that closed in the interval
    rss_bytes: int | None = None            # resident memory (VmRSS); None: unknown
    cgroup_memory_bytes: int | None = None  # its memory cgroup's use; None: root cgroup or unknown
    memory_limit_bytes: int | None = None   # available to it: cgroup limit, else MemTotal
    memory_limit_from: str | None = None    # "cgroup" or "host" (tracer.domain.memory)
    listen_backlog: int = 0                 # backlog maxima of its listeners, summed
    socket_rmem_bytes: int | None = None    # charged to its TCP sockets' receive queues (ss -tm r)
    socket_wmem_bytes: int | None = None    # ... and send queues (ss -tm w)
    unread_intervals: int = 0               # scans in a row with unread data never shrinking
    container: Attribution | None = None    # its cgroup, container, pod (None: unknown)

    @property
    def sockets(self) -> int:
        return self.established + self.syn_sent + self.listen + self.close_wait + self.other

    @property
    def connections(self) -> int:
        return memory.row_connections(self)

    @property
    def memory_per_connection(self) -> float | None:
        return memory.row_per_connection(self)

    def memory_projection(self) -> memory.Projection | None:
        return memory.row_projection(self)

    @property
    def fd_ratio(self) -> float | None:
        if self.fds is None or not self.fd_limit:
            return None
        return self.fds / self.fd_limit


@dataclass(frozen=True)
class TcpMemoryRow:
    """Host-wide TCP memory at the end of an interval (tracer/domain/tcp_memory.py)."""
    used_bytes: int | None
    low_bytes: int | None
    pressure_bytes: int | None
    max_bytes: int | None
    memory_pressures: int = 0       # entries into memory pressure in the interval
    rcvq_drops: int = 0             # packets dropped for want of receive memory
    pruned: int = 0                 # receive queues pruned (RcvPruned + OfoPruned)
    aborts_on_memory: int = 0       # connections aborted for want of memory

    @property
    def state(self) -> str | None:
        return tcp_memory.state(self.used_bytes, self.pressure_bytes, self.max_bytes)


@dataclass(frozen=True)
class Notable:
    """A line for the event log: something a person should notice."""

    ts_us: int                  # wall clock, microseconds since the epoch
    severity: str               # "info", "warn", "crit"
    kind: str                   # "drop burst", "slow connect", "refused", "timeout", "lost events", ...
    text: str


@dataclass(frozen=True)
class Header:
    host: str
    kernel: str
    backend: str
    blind_spots: tuple[str, ...] = ()   # what this backend cannot see here
    recording_path: str | None = None
    source: str = "live"                # "live" or "replay <dir>"
    filters: str = ""                   # --pid/--comm/--port/-4/-6 in words; "" if none
    passed_over: tuple[str, ...] = ()   # `auto`: better backends that failed to load here
    hooks: str = ""                     # BTF, raw or classic tracepoint hooks (domain.hooks); "" unknown

    @property
    def backend_text(self) -> str:
        """The backend as the live view and replay show it: with its hooks where known."""
        return backend_text(self.backend, self.hooks)


@dataclass(frozen=True)
class Snapshot:
    ts_us: int                          # end of the interval, wall clock
    interval_s: float
    header: Header
    events_total: int
    events_per_s: float
    lost_events: int                    # total since start: ring buffer full, maps full
    evicted: int = 0                    # rows folded into "other" since start: tables full
    # ((program, runs), ...) since start: runs of our BPF programs the kernel
    # skipped because another BPF program was running on that CPU. Each may
    # have been an event: shown next to the losses, by program.
    missed_by: tuple[tuple[str, int], ...] = ()
    destinations: tuple[ConnectRow, ...] = ()
    processes_connects: tuple[ConnectRow, ...] = ()
    containers_connects: tuple[ConnectRow, ...] = ()   # by container label; () if unresolved
    listeners: tuple[ListenerRow, ...] = ()
    processes: tuple[ProcessRow, ...] = ()
    notable: tuple[Notable, ...] = ()   # newest last; bounded
    recording_bytes: int | None = None
    recording_warning: str | None = None  # e.g. "disk full: writing paused"
    extra: dict = field(default_factory=dict)
    tcp_memory: TcpMemoryRow | None = None   # host-wide; None where not read (replay of old data)
    edges: tuple[EdgeRow, ...] = ()          # the connection map (tracer/aggregate/edges.py)

    @property
    def missed_runs(self) -> int:
        return sum(n for _, n in self.missed_by)
