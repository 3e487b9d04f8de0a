"""The Prometheus / OpenMetrics endpoint (`--metrics HOST:PORT`), with the
official client library.

The collector thread feeds a MetricsState (tracer/sinks/metrics_state.py)
and, once per interval, replaces its frozen View. The client library's HTTP
server answers scrapes from a thread of its own: `ConnscopeCollector.collect`
reads that one View (an attribute read, no lock) and turns it into metric
families, so a scrape never waits for tracing and tracing never waits for a
scrape. The text format (and OpenMetrics, when the scraper asks for it) is
the library's, with its escaping of label values.
"""
from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                    HistogramMetricFamily)

from tracer.events import Accept, Connect
from tracer.sinks.metrics_address import MetricsError
from tracer.sinks.metrics_state import (DURATION_BUCKETS, SOCKET_STATES, WHERE, Caps,
                                        MetricsState, View)

_LE = tuple(repr(b) for b in DURATION_BUCKETS) + ("+Inf",)
PROCESS = ["process", *WHERE]       # a process's labels: its name, container, pod, namespace


def _histogram(name, doc, labels, series: dict) -> HistogramMetricFamily:
    h = HistogramMetricFamily(name, doc, labels=labels)
    for key, (cum, _count, total) in series.items():
        h.add_metric(list(key), list(zip(_LE, cum)), total)
    return h


def families(view: View, cpu_seconds: float | None = None) -> list:
    """The metric families of one View (pure: unit-tested on its text)."""
    out = []
    attempts = CounterMetricFamily(
        "connscope_connect_attempts", "Outgoing connect attempts by how they ended "
        "(established, refused, timeout, abandoned, unreachable, error)",
        labels=[*PROCESS, "destination", "outcome"])
    for key, (_, count, _) in view.connects.items():
        attempts.add_metric(list(key), count)
    out.append(attempts)
    out.append(_histogram(
        "connscope_connect_duration_seconds", "connect() to the answer (or, for a timeout or "
        "an abandoned connect, to when the caller stopped waiting)",
        [*PROCESS, "destination", "outcome"], view.connects))
    syn = CounterMetricFamily("connscope_connect_syn_retransmits",
                              "SYN retransmissions of outgoing connects",
                              labels=[*PROCESS, "destination"])
    for key, n in view.syn_retransmits.items():
        syn.add_metric(list(key), n)
    out.append(syn)

    accepts = CounterMetricFamily("connscope_accepts", "Connections taken from an accept "
                                  "queue by an application", labels=["listener", "netns"])
    for key, (_, count, _) in view.accepts.items():
        accepts.add_metric(list(key), count)
    out.append(accepts)
    out.append(_histogram("connscope_accept_wait_seconds", "Handshake done to accept(): time "
                          "spent waiting in the accept queue", ["listener", "netns"],
                          view.accepts))
    names = (("connscope_listen_overflows", "Connections dropped at ACK time for a full accept "
              "queue (the per-listener part of node_netstat_TcpExt_ListenOverflows)"),
             ("connscope_listen_syn_drops", "SYNs dropped for a full SYN or accept queue"),
             ("connscope_listen_synack_retransmits", "SYN-ACK retransmissions of a listener"))
    for i, (name, doc) in enumerate(names):
        f = CounterMetricFamily(name, doc, labels=["listener", "netns"])
        for key, values in view.listener_counters.items():
            f.add_metric(list(key), values[i])
        out.append(f)
    qlen = GaugeMetricFamily("connscope_listen_queue_length", "Accept queue length at the end "
                             "of the interval", labels=["listener", "netns", *PROCESS])
    qmax = GaugeMetricFamily("connscope_listen_queue_limit", "Accept queue limit: "
                             "min(listen() backlog, net.core.somaxconn)",
                             labels=["listener", "netns", *PROCESS])
    for key, length, limit in view.listener_gauges:
        qlen.add_metric(list(key), length)
        qmax.add_metric(list(key), limit)
    out += [qlen, qmax]

    opened = CounterMetricFamily("connscope_connections_opened", "TCP connections a process "
                                 "opened (connect or accept)", labels=PROCESS)
    closed = CounterMetricFamily("connscope_connections_closed", "TCP connections a process "
                                 "opened that closed", labels=PROCESS)
    for process, (o, c) in view.process_counters.items():
        opened.add_metric(list(process), o)
        closed.add_metric(list(process), c)
    out += [opened, closed]
    sockets = GaugeMetricFamily("connscope_process_sockets", "TCP sockets a process holds, "
                                "by state", labels=["pid", *PROCESS, "state"])
    fds = GaugeMetricFamily("connscope_process_fds", "Open file descriptors",
                            labels=["pid", *PROCESS])
    fd_limit = GaugeMetricFamily("connscope_process_fd_limit", "Soft RLIMIT_NOFILE",
                                 labels=["pid", *PROCESS])
    for (pid, *process), states, n_fds, limit in view.process_gauges:
        labels = [str(pid), *process]
        for state in SOCKET_STATES:
            sockets.add_metric([*labels, state], states[state])
        if n_fds is not None:
            fds.add_metric(labels, n_fds)
        if limit is not None:
            fd_limit.add_metric(labels, limit)
    out += [sockets, fds, fd_limit]
    rec = GaugeMetricFamily("connscope_pool_recommended_connections", "Connections a pool "
                            "to this destination should hold (Little's law with headroom)",
                            labels=["pid", *PROCESS, "destination"])
    in_use = GaugeMetricFamily("connscope_pool_in_use_connections", "Connections to this "
                               "destination the process holds now",
                               labels=["pid", *PROCESS, "destination"])
    hold = GaugeMetricFamily("connscope_pool_hold_seconds", "Mean time a connection to this "
                             "destination is held, connect() to close",
                             labels=["pid", *PROCESS, "destination"])
    for (pid, *process_dest), recommended, n, hold_s in view.pool:
        labels = [str(pid), *process_dest]
        rec.add_metric(labels, recommended)
        in_use.add_metric(labels, n)
        hold.add_metric(labels, hold_s)
    out += [rec, in_use, hold]

    t = view.tracer
    for name, key, doc in (
            ("connscope_events", "events", "Events the tracer decoded"),
            ("connscope_lost_events", "lost_events", "Events lost: buffer full, maps full, "
             "undecodable"),
            ("connscope_evicted_rows", "evicted_rows", "Rows of the live tables folded into "
             "'other' because the tables were full or idle"),
            ("connscope_metrics_folded_labels", None, "Label values of this endpoint given "
             "back after being idle; what they counted moved to 'other'")):
        out.append(CounterMetricFamily(name, doc, value=view.folded if key is None
                                       else t.get(key, 0)))
    skipped = CounterMetricFamily("connscope_skipped_probe_runs", "Runs of connscope's BPF "
                                  "programs the kernel skipped (another BPF program was "
                                  "running on that CPU); each may have been an event",
                                  labels=["program"])
    for program, runs in view.skipped_runs.items():
        skipped.add_metric([program], runs)
    out.append(skipped)
    if cpu_seconds is not None:
        out.append(CounterMetricFamily("connscope_cpu_seconds", "CPU time of the connscope "
                                       "process, user and system", value=cpu_seconds))
    return out


class ConnscopeCollector:
    """A custom collector for the client library's registry."""

    def __init__(self, state: MetricsState):
        self.state = state

    def collect(self):
        t = os.times()
        yield from families(self.state.view, t.user + t.system)


class MetricsSink:
    """A sink of the collection loop (tracer/collector.py), serving what it
    is fed at http://HOST:PORT/metrics until closed."""

    uses_connect_views = False   # (tracer/collector.py Sink)

    def __init__(self, host: str, port: int, caps: Caps = Caps()):
        self.state = MetricsState(caps)     # set_containers() adds the WHERE labels
        registry = CollectorRegistry(auto_describe=False)
        registry.register(ConnscopeCollector(self.state))
        try:
            self._server, self._thread = start_http_server(port, addr=host, registry=registry)
        except OSError as e:   # in use, not an address of this host, unresolvable name
            why = e.strerror or str(e)
            raise MetricsError(f"--metrics {host}:{port}: cannot listen there: {why}") from None
        self.address = self._server.server_address

    def set_containers(self, containers) -> None:
        """Label connects with their process's container (a ContainerCache:
        made after the endpoint listens; the collector resolves each poll's
        pids before the sinks see its events)."""
        self.state.columns_of = containers.columns_of if containers is not None else None

    def on_events(self, events) -> None:
        on_connect, on_accept = self.state.on_connect, self.state.on_accept
        for ev in events:
            kind = type(ev)
            if kind is Connect:
                on_connect(ev)
            elif kind is Accept:
                on_accept(ev)

    def on_interval(self, status, snapshot) -> None:
        self.state.on_snapshot(snapshot)

    def close(self, status=None, snapshot=None) -> None:
        """The last interval is published; the server stops (scrapes then
        find nothing, as when the process is gone)."""
        if snapshot is not None:
            self.state.on_snapshot(snapshot)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
