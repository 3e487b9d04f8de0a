"""The postmortem summary: the tables of a recording in, plain dataclasses out.

Pure: no files, no printing. text.py and html.py render a Summary; the
arithmetic lives in the modules named after what they summarize
(destinations, listeners, processes); what the recorder already aggregated
(the `pools` table) is read as recorded, never recomputed; every percentile
is nearest-rank (arrow_stats.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from tracer.report.arrow_stats import nice_bucket_us, typical_interval_us
from tracer.report.containers import ContainerStats, container_stats
from tracer.report.destinations import (
    ConnectingProcess,
    DestinationStats,
    connecting_processes,
    destination_stats,
    with_histograms,
    worst_by_failures,
    worst_by_p99,
)
from tracer.report.edges import EdgeStats, edge_stats
from tracer.report.findings import Finding, findings
from tracer.report.hosts import HostStats, host_stats
from tracer.report.listeners import KEY as LISTENER_KEY, ListenerStats, listener_stats, troubled
from tracer.report.overview import Overview, summarize_overview
from tracer.report.pool import PoolAdvice, pool_advice
from tracer.report.processes import ProcessStats, by_churn, process_stats
from tracer.report.reader import RecordingData
from tracer.report.tcp_memory import HostTcpMemory, host_tcp_memory
from tracer.schema import TABLES, schema

TOP = 10        # rows per ranked table
TOP_EDGES = 30  # edges in the connection map's table and graph
CHARTED = 6     # destinations, listeners and processes that get a chart


@dataclass(frozen=True)
class ConnectTotals:
    attempts: int
    established: int
    refused: int
    timeout: int
    error: int
    retransmitted: int
    destinations: int


@dataclass(frozen=True)
class Summary:
    overview: Overview
    findings: tuple[Finding, ...]
    connects: ConnectTotals
    slowest: tuple[DestinationStats, ...]           # by p99, histograms filled for the top CHARTED
    failing: tuple[DestinationStats, ...]           # by failures, then SYN retransmits
    connecting: tuple[ConnectingProcess, ...]       # by connect attempts
    listeners: tuple[ListenerStats, ...]            # that dropped or came close
    listeners_seen: int
    by_sockets: tuple[ProcessStats, ...]
    by_churn: tuple[ProcessStats, ...]
    processes_seen: int
    pool: tuple[PoolAdvice, ...]
    bucket_us: int                                  # width of the timeline buckets
    tcp_memory: tuple[HostTcpMemory, ...] = ()      # per host, where recorded
    edges: tuple[EdgeStats, ...] = ()               # the connection map, busiest first (TOP_EDGES)
    edges_seen: int = 0
    hosts: tuple[HostStats, ...] = ()               # per host; they add up to the totals
    containers: tuple[ContainerStats, ...] = ()     # by container or pod; () if none named

    @property
    def tables_present(self) -> set[str]:
        return {t for t, n in self.overview.rows.items() if n}


def _totals(dests: list[DestinationStats]) -> ConnectTotals:
    return ConnectTotals(
        attempts=sum(d.attempts for d in dests), established=sum(d.established for d in dests),
        refused=sum(d.refused for d in dests), timeout=sum(d.timeout for d in dests),
        error=sum(d.error for d in dests), retransmitted=sum(d.retransmitted for d in dests),
        destinations=len(dests))


def summarize_tables(tables: dict[str, pa.Table], manifests: list[dict] = (),
                     problems: list[str] = (), files_read: int = 0) -> Summary:
    tables = {t: tables.get(t, schema(t).empty_table()) for t in TABLES}
    ov = summarize_overview(tables, list(manifests), list(problems), files_read)
    span_us = (ov.last_us - ov.first_us) if ov.first_us is not None else 0
    default_interval = int(ov.interval_s * 1e6)
    interval_us = typical_interval_us(tables["sockets"], ["host", "pid", "comm"],
                                      default_interval)
    bucket_us = nice_bucket_us(span_us, floor_us=max(interval_us, 1_000_000))

    connects = tables["connects"]
    dests = destination_stats(connects)
    slowest = worst_by_p99(dests, TOP)
    slowest = with_histograms(connects, slowest[:CHARTED]) + slowest[CHARTED:]
    failing = worst_by_failures(dests, TOP)
    connecting = connecting_processes(connects, max(span_us / 1e6, ov.interval_s), TOP)

    listener_interval = typical_interval_us(tables["listeners"], LISTENER_KEY,
                                            default_interval)
    all_listeners = listener_stats(tables["listeners"], tables["overflows"], tables["accepts"],
                                   max(bucket_us, listener_interval))
    listeners = troubled(all_listeners)

    procs = process_stats(tables["sockets"], interval_us, bucket_us)
    churn = by_churn(procs, TOP)
    advice = pool_advice(tables["pools"], TOP)

    # findings look at every destination, not only the ones the tables show
    hosts_tcp = host_tcp_memory(tables["tcp_memory"])
    edges = edge_stats(tables["edges"], connects)
    found = findings(ov, worst_by_failures(dests, len(dests)), worst_by_p99(dests, len(dests)),
                     listeners, procs, advice, hosts_tcp)
    return Summary(
        overview=ov, findings=tuple(found), connects=_totals(dests), slowest=tuple(slowest),
        failing=tuple(failing), connecting=tuple(connecting), listeners=tuple(listeners[:TOP]),
        listeners_seen=len(all_listeners), by_sockets=tuple(procs[:TOP]),
        by_churn=tuple(churn), processes_seen=len(procs), pool=tuple(advice),
        bucket_us=bucket_us, tcp_memory=tuple(hosts_tcp), edges=tuple(edges[:TOP_EDGES]),
        edges_seen=len(edges), hosts=tuple(host_stats(connects, all_listeners, ov.runs)),
        containers=tuple(container_stats(tables)[:TOP]))


def summarize(data: RecordingData) -> Summary:
    """The summary of everything `read_recording` found."""
    return summarize_tables(data.tables, data.manifests, data.problems, data.files_read)
