"""The one Parquet schema of a connscope recording.

Every table, column, type and description lives here and nowhere else: the
writer, the readers (replay, report) and the README (via `describe_markdown`)
all take it from this module. SPEC.md fixes the names and types of the
required columns; the rest are ours and may grow (bump SCHEMA_VERSION when a
change would surprise an existing reader: a rename, a removal, a new type).
"""

from __future__ import annotations

from typing import NamedTuple

import pyarrow as pa

from tracer.domain import containers, outcomes

SCHEMA_VERSION = "1"

# File metadata keys; readers check the version before trusting column meanings.
VERSION_KEY = "connscope.schema_version"
TABLE_KEY = "connscope.table"


class Column(NamedTuple):
    name: str
    type: pa.DataType
    description: str
    nullable: bool = False


TS = pa.timestamp("us", tz="UTC")
_I8, _I32, _I64, _F64, _STR = pa.int8(), pa.int32(), pa.int64(), pa.float64(), pa.string()


def _common(ts_meaning: str) -> list[Column]:
    return [
        Column("ts", TS, f"{ts_meaning} (UTC, microseconds)"),
        Column("host", _STR, "host name of the machine that was traced"),
        Column("run_id", _STR, "recording run; names the manifest `DIR/runs/<run_id>.json`"),
    ]


def _process(owner_known: bool = True) -> list[Column]:
    unknown = "" if owner_known else "; null if unknown"
    return [
        Column("pid", _I32, f"process id (the thread group id){unknown}", not owner_known),
        Column("comm", _STR, "process name (task comm: up to 15 bytes the process chose; a "
                             f"byte that is not UTF-8 is kept as the text `\\xNN`){unknown}",
               not owner_known),
    ]


_FAMILY = Column("family", _I8, "address family: 4 or 6")


def _endpoint(addr: str, port: str, who: str) -> list[Column]:
    return [
        Column(addr, _STR, f"{who} address (IPv4 dotted or IPv6 text)"),
        Column(port, _I32, f"{who} port"),
    ]


def _containers(whose: str) -> list[Column]:
    """Where the process runs (tracer/domain/containers.py); all null when unknown."""
    return [
        Column("cgroup_id", _I64, f"cgroup v2 id of {whose} (inode of its cgroup directory; what "
               "bpf_get_current_cgroup_id() returns); null without cgroup v2 or if unknown",
               True),
        Column("cgroup", _STR, f"cgroup path of {whose} (v2; on a v1-only host, or where v2 "
               "names nothing, the v1 path that names a container; at most 512 characters, a "
               "longer one keeps its end after `...`); null if unknown", True),
        Column("container_runtime", _STR, "what the cgroup path says made it: `docker`, "
               "`containerd`, `cri-o`, `podman`, `conmon` (a container's monitor), `cri` (a "
               "Kubernetes container whose runtime the path does not say), `systemd` (a "
               "service); null if none", True),
        Column("container_id", _STR, "container id (64 hex digits) from the cgroup path; for "
               "`systemd`, the service's unit name; null if none", True),
        Column("pod_namespace", _STR, "Kubernetes namespace of the pod, from the kubelet's "
               "/var/log/pods directory names; null if none or unknown", True),
        Column("pod_name", _STR, "Kubernetes pod name (as pod_namespace)", True),
        Column("pod_uid", _STR, "Kubernetes pod uid, from the kubepods cgroup path (systemd "
               "or cgroupfs driver); null if not in a pod", True),
        Column("container_name", _STR, "Kubernetes container name, from /var/log/containers "
               "(by container id) or the pod's only container directory in /var/log/pods; "
               "null if unknown", True),
    ]


def _server_containers() -> list[Column]:
    """_containers of an edge's serving process, each name prefixed `server_`."""
    return [c._replace(name=containers.SERVER_PREFIX + c.name)
            for c in _containers("the serving process (server_pid)")]


_TABLE_ROWS = {
    "connects": "one row per outgoing connect attempt, written when it resolves",
    "accepts": "one row per connection accepted by an application, also one its client had "
               "already closed or reset while it waited in the accept queue (queue_wait_us then "
               "says how long the server kept it waiting)",
    "overflows": "one row per listening socket and interval with at least one drop",
    "listeners": "one row per listening socket and interval",
    "sockets": "one row per process and interval",
    "pools": "one row per process, remote endpoint and interval with connection activity: "
             "the pool sizing advice (Little's law) behind the live view",
    "tcp_memory": "one row per interval: the host's TCP memory against net.ipv4.tcp_mem, and "
                  "what the TcpExt memory counters of /proc/net/netstat added",
    "edges": "one row per edge of the connection map and interval: a client process and a "
             "destination it connected to in the interval or holds connections to, and for a "
             "destination that is a listener of this host, the process serving it; where each "
             "runs: the client's container columns (by its pid, or by the cgroup id of its "
             "connects if it was gone before it was read) and the serving process's, prefixed "
             "`server_` (null where the destination is not a listener of this host)",
}

_NETNS = Column("netns", _I64, "network namespace (inode of /proc/PID/ns/net): tells apart "
                "containers listening on the same address; null if unknown", True)

_COLUMNS: dict[str, list[Column]] = {
    "connects": [
        *_common("when connect() was called"),
        *_process(),
        Column("tid", _I32, "thread id that called connect()"),
        _FAMILY,
        *_endpoint("saddr", "sport", "local (source)"),
        *_endpoint("daddr", "dport", "remote (destination)"),
        Column("latency_us", _F64,
               "connect() call to the socket leaving SYN_SENT, microseconds: the time to the "
               "answer (established, refused, unreachable), the time the caller waited (timeout, "
               "abandoned), the time inside connect() (error, and unreachable for lack of a route, "
               "syn_retransmits 0); filter on outcome = 'established' "
               "for handshake latency; null only in recordings older than these outcomes "
               "(timeout and error rows had none)", True),
        Column("outcome", _STR, outcomes.schema_description()),
        Column("syn_retransmits", _I32, "SYN retransmissions before the attempt resolved"),
        Column("errno", _I32,
               "error of a failed attempt: the socket's (111 ECONNREFUSED, 110 ETIMEDOUT, "
               "113 EHOSTUNREACH, ...) or connect()'s own (101 ENETUNREACH, 13 EACCES, "
               "99 EADDRNOTAVAIL, ...); 0 if abandoned; "
               "null if established", True),
        Column("netns", _I64, "network namespace of the socket (inode of /proc/PID/ns/net of "
               "the process that connected); null if unknown (older recordings)", True),
        *_containers("the process that connected"),
    ],
    "accepts": [
        *_common("when accept() returned"),
        *_process(),
        _FAMILY,
        _endpoint("laddr", "lport", "local (listening)")[0],
        Column("lport", _I32, "local (listening) port; in recordings older than 2026-12-06, 0 for "
               "a connection its client reset while it waited in the accept queue"),
        *_endpoint("raddr", "rport", "remote (client)"),
        Column("queue_wait_us", _F64,
               "handshake done to accept() returned, microseconds; null if unknown", True),
        Column("backlog_len", _I32, "accept queue length seen at accept"),
        Column("backlog_max", _I32, "accept queue limit (listen() backlog, capped by somaxconn)"),
        Column("listener_pid", _I32,
               "process that owns the listening socket, if not the acceptor; null if unknown",
               True),
        _NETNS,
        *_containers("the process that accepted"),
    ],
    "overflows": [
        *_common("end of the interval"),
        _FAMILY,
        *_endpoint("laddr", "lport", "listening"),
        _NETNS,
        *_process(owner_known=False),
        Column("drops", _I64,
               "connections dropped in the interval because the accept queue was full"),
        Column("syn_drops", _I64,
               "SYNs dropped in the interval for a full SYN or accept queue"),
        Column("cookie_drops", _I64,
               "of `drops`, handshakes completed with a SYN cookie and then dropped: the client "
               "believes it is connected, the server has nothing; null where not recorded", True),
        Column("backlog_max", _I32, "accept queue limit"),
        Column("backlog_peak", _I32, "highest accept queue length seen in the interval"),
        Column("interval_s", _F64, "length of the interval, seconds"),
        Column("synack_retransmits", _I64, "SYN-ACK retransmissions in the interval"),
        *_containers("the owner (pid)"),
    ],
    "listeners": [
        *_common("end of the interval"),
        _FAMILY,
        *_endpoint("laddr", "lport", "listening"),
        _NETNS,
        *_process(owner_known=False),
        Column("backlog_max", _I32, "accept queue limit"),
        Column("queue_len", _I32, "accept queue length at the end of the interval"),
        Column("queue_peak", _I32, "highest accept queue length in the interval: as accept() found it (the queue only grows at handshakes and only shrinks at accept), at drops, and at the end of the interval"),
        Column("overflows_total", _I64,
               "accept-queue overflows of this socket since the recording started"),
        Column("syn_queue_len", _I32,
               "half-open connections (SYN queue) when last seen by a hook; null if never seen",
               True),
        Column("drops", _I64, "connections and SYNs dropped for a full accept queue in the "
               "interval (overflows.drops + overflows.syn_drops)"),
        Column("accepts", _I64, "connections accepted in the interval"),
        Column("accept_wait_p99_us", _F64,
               "99th percentile of handshake done to accept() in the interval, microseconds; "
               "null if nothing was accepted", True),
        *_containers("the owner (pid)"),
    ],
    "sockets": [
        *_common("end of the interval"),
        *_process(),
        Column("established", _I32, "ESTABLISHED TCP sockets held at the end of the interval"),
        Column("syn_sent", _I32, "SYN_SENT TCP sockets held at the end of the interval"),
        Column("listen", _I32, "LISTEN TCP sockets held at the end of the interval"),
        Column("close_wait", _I32, "CLOSE_WAIT TCP sockets held at the end of the interval"),
        Column("other", _I32, "TCP sockets in any other state at the end of the interval"),
        Column("opened", _I64, "TCP sockets opened in the interval"),
        Column("closed", _I64, "TCP sockets closed in the interval"),
        Column("fds", _I32, "open file descriptors at the end of the interval; null if unreadable",
               True),
        Column("fd_limit", _I64, "file descriptor limit (RLIMIT_NOFILE soft limit); null if "
               "unlimited or unreadable", True),
        Column("tx_queue_bytes", _I64,
               "bytes in the send queues of its TCP sockets at the end of the interval"),
        Column("rx_queue_bytes", _I64,
               "bytes in the receive queues of its TCP sockets at the end of the interval"),
        Column("rss_bytes", _I64, "resident memory of the process (VmRSS, /proc/PID/statm) at "
               "the end of the interval, bytes; null if unreadable or recorded before this "
               "column", True),
        Column("memory_per_connection_bytes", _F64,
               "rss_bytes divided by the TCP connections it holds (every TCP socket but its "
               "listeners: established + syn_sent + close_wait + other), bytes; the baseline "
               "of the process is in every share; null if it holds none or rss_bytes is null",
               True),
        Column("cgroup_memory_bytes", _I64,
               "memory charged to the process's memory cgroup (v1 memory.usage_in_bytes, v2 "
               "memory.current; other processes of that cgroup included), bytes; null in the "
               "root cgroup, or if unreadable", True),
        Column("memory_limit_bytes", _I64,
               "memory available to the process: its memory cgroup's limit (the smallest on "
               "the path to the root) if set and below the host's RAM, else the host's "
               "MemTotal, bytes; null if unknown", True),
        Column("memory_limit_from", _STR,
               "where memory_limit_bytes comes from: `cgroup` or `host`; null if unknown", True),
        Column("listen_backlog", _I64,
               "backlog maxima of the listening sockets it holds, summed (a projection of its "
               "memory is made for the larger of this and 1,000 connections); null if recorded "
               "before this column", True),
        Column("socket_rmem_bytes", _I64,
               "memory the kernel charged to the receive queues of its TCP sockets (sum of "
               "`ss -tm` skmem `r`, rmem_alloc: data received and not yet read, with its "
               "buffer overhead), bytes; null if the kernel gave no socket memory figures or "
               "recorded before this column", True),
        Column("socket_wmem_bytes", _I64,
               "memory the kernel charged to the send queues of its TCP sockets (sum of "
               "`ss -tm` skmem `w`, wmem_queued: data written and not yet acknowledged), "
               "bytes; null as socket_rmem_bytes", True),
        *_containers("the process"),
    ],
    "pools": [
        *_common("end of the interval"),
        *_process(),
        Column("destination", _STR, "remote endpoint the process connects to (addr:port, "
               "[v6]:port)"),
        Column("arrival_per_s", _F64, "new connections per second to it, over window_s"),
        Column("hold_s", _F64, "mean time each of those connections was held, connect() to "
               "close, seconds (0 if none closed)"),
        Column("concurrency_mean", _F64, "connections in use on average: the larger of "
               "arrival x hold (Little's law) and the mean held at interval ends"),
        Column("concurrency_p99", _F64, "99th percentile (nearest rank) of connections held "
               "at interval ends"),
        Column("concurrency_peak", _I32, "most connections held at once in the window (from "
               "its connects and closes, and the interval-end counts)"),
        Column("recommended", _I32, "pool size: 25 % above the larger of concurrency_mean and "
               "concurrency_p99, and at least concurrency_peak"),
        Column("in_use", _I32, "connections held at the end of the interval"),
        Column("verdict", _STR, "pooled, churning (no pooling), or mixed or idle, with the "
               "figures and their window"),
        Column("window_s", _F64, "seconds the rate and hold time cover: the last 30 intervals, "
               "or since the process first connected there; null in recordings made before "
               "this column", True),
        *_containers("the process"),
    ],
    "tcp_memory": [
        *_common("end of the interval"),
        Column("used_bytes", _I64, "memory charged to all TCP sockets of the host "
               "(/proc/net/sockstat TCP `mem`, pages x page size); null if unreadable", True),
        Column("low_bytes", _I64, "net.ipv4.tcp_mem low threshold: below it TCP memory is never "
               "limited; null if unreadable", True),
        Column("pressure_bytes", _I64, "net.ipv4.tcp_mem pressure threshold: above it the host "
               "is in TCP memory pressure (buffers shrink, queues are pruned)", True),
        Column("max_bytes", _I64, "net.ipv4.tcp_mem maximum: no more socket buffer memory is "
               "given (packets dropped, connections aborted)", True),
        Column("memory_pressures", _I64, "entries into TCP memory pressure in the interval "
               "(TcpExt TCPMemoryPressures)"),
        Column("rcvq_drops", _I64, "packets dropped in the interval for want of receive memory "
               "(TcpExt TCPRcvQDrop)"),
        Column("pruned", _I64, "receive queues pruned in the interval to free memory (TcpExt "
               "RcvPruned + OfoPruned)"),
        Column("aborts_on_memory", _I64, "connections aborted in the interval for want of memory "
               "(TcpExt TCPAbortOnMemory)"),
    ],
    "edges": [
        *_common("end of the interval"),
        *_process(),
        _FAMILY,
        *_endpoint("daddr", "dport", "destination"),
        Column("netns", _I64, "network namespace of the client's connects (the listener is "
               "looked up in it); null if unknown", True),
        Column("connects", _I64, "connect attempts on the edge in the interval (every outcome)"),
        Column("connects_per_s", _F64, "connects divided by interval_s"),
        Column("interval_s", _F64, "length of the interval, seconds"),
        Column("connected", _I64, "of connects, established"),
        *[Column(o, _I64, f"of connects, {o} ({outcomes.DESCRIPTIONS[o]})")
          for o in outcomes.FAILURES],
        Column("connect_p50_us", _F64, "median handshake latency of the interval's established "
               "connects, microseconds; null if none", True),
        Column("connect_p99_us", _F64, "99th percentile of the same; null if none", True),
        Column("established", _I32, "ESTABLISHED connections the client holds to the "
               "destination at the end of the interval (the socket table); null if the socket "
               "table was not read", True),
        Column("server_pid", _I32, "owner of the listener of this host the destination reached "
               "(a loopback address, the connect's own source address, or a listener bound to "
               "the address, in the client's network namespace; else a listener in the one "
               "other namespace that owns the address: server_netns); null if the destination "
               "is not local or its owner is unknown", True),
        Column("server_comm", _STR, "that owner's name (as `comm`); null as server_pid", True),
        Column("listener", _STR, "the listener reached (addr:port as bound, e.g. 0.0.0.0:80); "
               "null if the destination is not a listener of this host", True),
        Column("server_netns", _I64, "network namespace of that listener: the client's, or "
               "for a destination in another namespace (a container reached at its address) "
               "the namespace owning the address, as its accepted connections' local addresses "
               "and its bound listeners show (joined only when exactly one such namespace "
               "listens on the port); null if not local", True),
        Column("listener_drops", _I64, "that listener's drops and SYN drops in the interval "
               "(listeners.drops: shared by every edge to it); null if not local", True),
        *_containers("the client"),
        *_server_containers(),
    ],
}

TABLES: tuple[str, ...] = tuple(_COLUMNS)


def _build(table: str) -> pa.Schema:
    fields = [
        pa.field(c.name, c.type, nullable=c.nullable,
                 metadata={"description": c.description})
        for c in _COLUMNS[table]
    ]
    return pa.schema(fields, metadata={
        VERSION_KEY: SCHEMA_VERSION,
        TABLE_KEY: table,
        "connscope.description": _TABLE_ROWS[table],
    })


# Built once: pyarrow schemas are immutable, so every caller can share them.
_SCHEMAS = {table: _build(table) for table in TABLES}


class UnknownTable(ValueError):
    def __init__(self, table: str):
        super().__init__(f"unknown table {table!r}; the tables are {', '.join(TABLES)}")


def schema(table: str) -> pa.Schema:
    """The Arrow schema of `table`, with field descriptions and version metadata."""
    try:
        return _SCHEMAS[table]
    except KeyError:
        raise UnknownTable(table) from None


def _type_name(t: pa.DataType) -> str:
    # str(pa.float64()) is "double"; SPEC.md and numpy users say float64.
    return "float64" if t == _F64 else str(t)


def describe_markdown() -> str:
    """Every table's columns, types and descriptions, as Markdown for the README."""
    out = [
        f"Schema version {SCHEMA_VERSION} (file metadata key `{VERSION_KEY}`; "
        f"`{TABLE_KEY}` names the table).",
        "",
    ]
    for table in TABLES:
        out += [f"### `{table}`", "", _TABLE_ROWS[table][0].upper() + _TABLE_ROWS[table][1:] + ".",
                "", "| column | type | null | description |", "|---|---|---|---|"]
        for c in _COLUMNS[table]:
            out.append(f"| `{c.name}` | {_type_name(c.type)} | {'yes' if c.nullable else ''} "
                       f"| {c.description} |")
        out.append("")
    return "\n".join(out)
