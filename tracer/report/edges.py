"""The connection map over a recording: the `edges` table summed per edge
(host, client pid and comm, destination), with the serving process of a
local destination as the recorder joined it, and the handshake percentiles
of the edge's established connects from the `connects` table (exact,
nearest rank, as tracer/report/destinations.py computes them)."""
from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from tracer.domain import outcomes as oc
from tracer.domain.addresses import endpoint
from tracer.domain.containers import (COLUMNS, SERVER_COLUMNS, SERVER_PREFIX, Attribution,
                                      from_row, in_container)
from tracer.report.arrow_stats import quantiles_by, sums_by

KEY = ["host", "pid", "comm", "family", "daddr", "dport"]


@dataclass(frozen=True)
class EdgeStats:
    host: str
    pid: int
    comm: str
    family: int
    daddr: str
    dport: int
    connects: int
    per_s: float                 # connects per second over the intervals it was seen in
    peak_per_s: float            # its busiest interval
    refused: int
    timeout: int                 # timed out, whoever gave up (kernel or application)
    error: int                   # unreachable, or connect() itself failed
    established_peak: int | None  # most connections held at an interval's end; None: unknown
    p50_us: float | None
    p99_us: float | None
    server_pid: int | None       # the listener's owner (last known); None: not local
    server_comm: str | None
    listener: str | None
    listener_drops: int | None   # drops of that listener in the intervals the edge was seen
    container: Attribution | None = None          # the client's (last known); None: none/unknown
    server_container: Attribution | None = None   # the listener owner's (last known)

    @property
    def failures(self) -> int:
        return self.refused + self.timeout + self.error

    @property
    def troubled(self) -> bool:
        return bool(self.failures or self.listener_drops)

    @property
    def client(self) -> str:
        return "other" if self.family == 0 else in_container(f"{self.comm or '?'} ({self.pid})",
                                                             self.container)

    @property
    def destination(self) -> str:
        return endpoint(self.daddr, self.dport, self.family)

    @property
    def server(self) -> str | None:
        if self.server_pid is None and self.server_comm is None:
            return None
        return in_container(
            f"{self.server_comm or '?'} ({self.server_pid if self.server_pid else '?'})",
            self.server_container)


def edge_stats(edges: pa.Table, connects: pa.Table) -> list[EdgeStats]:
    """Every edge of the recording, busiest first (connects per second, then
    failures and drops, then connections held)."""
    if not edges.num_rows:
        return []
    t = edges.sort_by("ts")
    aggs = [("connects", "sum"), ("connects_per_s", "max"), ("interval_s", "sum"),
            ("refused", "sum"), ("timeout", "sum"), ("abandoned", "sum"),
            ("unreachable", "sum"), ("error", "sum"), ("established", "max"),
            ("server_pid", "last"), ("server_comm", "last"), ("listener", "last"),
            ("listener_drops", "sum"), ("listener", "count"),
            *((c, "last") for c in (*COLUMNS, *SERVER_COLUMNS))]
    established = connects.filter(pc.equal(connects.column("outcome"), oc.ESTABLISHED))
    quant = quantiles_by(established, ["host", "pid", "family", "daddr", "dport"],
                         "latency_us", (0.5, 0.99))
    out = []
    for r in sums_by(t, KEY, aggs):
        seconds = r["interval_s_sum"] or 0.0
        _, (p50, p99) = quant.get((r["host"], r["pid"], r["family"], r["daddr"], r["dport"]),
                                  (0, [None, None]))
        local = r["listener_count"] > 0
        out.append(EdgeStats(
            host=r["host"], pid=r["pid"], comm=r["comm"], family=r["family"], daddr=r["daddr"],
            dport=r["dport"], connects=r["connects_sum"] or 0,
            per_s=(r["connects_sum"] or 0) / seconds if seconds > 0 else 0.0,
            peak_per_s=r["connects_per_s_max"] or 0.0, refused=r["refused_sum"] or 0,
            timeout=(r["timeout_sum"] or 0) + (r["abandoned_sum"] or 0),
            error=(r["unreachable_sum"] or 0) + (r["error_sum"] or 0),
            established_peak=r["established_max"], p50_us=p50, p99_us=p99,
            server_pid=r["server_pid_last"], server_comm=r["server_comm_last"],
            listener=r["listener_last"],
            listener_drops=(r["listener_drops_sum"] or 0) if local else None,
            container=from_row({c: r[f"{c}_last"] for c in COLUMNS}),
            server_container=from_row({c: r[f"{SERVER_PREFIX}{c}_last"] for c in COLUMNS})))
    # (a damaged file's row may hold a null anywhere: the key compares text)
    out.sort(key=lambda e: (-e.per_s, -(e.failures + (e.listener_drops or 0)),
                            -(e.established_peak or 0),
                            *(str(v) for v in (e.host, e.pid, e.daddr, e.dport))))
    return out


def graph_of(edges: list[EdgeStats], several_hosts: bool):
    """Nodes and links for the drawn map: a client is its process, a local
    destination its serving process (so a -> b -> db is a chain), a remote one
    its endpoint. Returns ([(node id, label)], [(from id, to id, edge)])."""
    labels: dict[tuple, str] = {}
    links = []

    def host_part(e: EdgeStats) -> str:
        return f"{e.host}: " if several_hosts else ""

    for e in edges:
        src = ("p", e.host, e.pid) if e.family else ("other",)
        labels.setdefault(src, host_part(e) + e.client)
        if e.server_pid:
            dst = ("p", e.host, e.server_pid)
            labels.setdefault(dst, host_part(e) + (e.server or ""))
        else:
            dst = ("d", e.host, e.daddr, e.dport)
            labels.setdefault(dst, host_part(e) + e.destination)
        links.append((src, dst, e))
    return list(labels.items()), links
