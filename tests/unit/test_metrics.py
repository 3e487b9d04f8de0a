"""The Prometheus endpoint's pure parts: address parsing, label escaping and
capping, counters that only grow, and the exposition text the official
client library renders from them (parsed back with the library's parser)."""
import socket
import subprocess
from dataclasses import replace as dc_replace
import sys
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tracer.aggregate.snapshot import Header, ListenerRow, PoolAdvice, ProcessRow, Snapshot
from tracer.events import Accept, Connect
from tracer.sinks.metrics_address import MetricsError, parse_address
from tracer.sinks.metrics_endpoint import ConnscopeCollector, MetricsSink, families
from tracer.domain import containers
from tracer.domain.containers import Attribution
from tracer.sinks.metrics_state import (DURATION_BUCKETS, LABEL_MAX, OTHER, Caps, MetricsState,
                                        label_text, where_of, where_of_attribution)

ROOT = Path(__file__).resolve().parents[2]


def connect(comm="curl", daddr="10.0.0.1", dport=80, outcome="established", us=1000,
            retrans=0, family=4):
    return Connect(ts_start_ns=1_000_000, ts_end_ns=1_000_000 + int(us * 1000), pid=42, tid=42,
                   comm=comm, family=family, saddr="10.0.0.2", sport=40000, daddr=daddr,
                   dport=dport, outcome=outcome, err=0, syn_retransmits=retrans)


def accept(lport=80, wait_us=500, netns=4026531840):
    return Accept(ts_ns=2_000_000 + int(wait_us * 1000), ts_handshake_ns=2_000_000, pid=7,
                  tid=7, comm="nginx", family=4, laddr="0.0.0.0", lport=lport, raddr="10.0.0.3",
                  rport=5555, backlog_len=0, backlog_max=511, netns=netns)


def listener(lport=80, drops=0, syn_drops=0, synack=0, queue_len=0, family=4, laddr="0.0.0.0",
             netns=4026531840, comm="nginx"):
    return ListenerRow(family=family, laddr=laddr, lport=lport, pid=7, comm=comm, backlog_max=511,
                       queue_len=queue_len, queue_peak=queue_len, syn_queue_len=None,
                       drops=drops, syn_drops=syn_drops, drops_total=0, drops_per_s=0.0,
                       accepts=0, accept_wait_p50_us=None, accept_wait_p99_us=None,
                       synack_retransmits=synack, netns=netns)


def process(pid=42, comm="curl", established=1, opened=0, closed=0, advice=()):
    return ProcessRow(pid=pid, comm=comm, established=established, syn_sent=0, listen=0,
                      close_wait=0, other=0, opened_per_s=0.0, closed_per_s=0.0, fds=10,
                      fd_limit=1024, tx_queue_bytes=0, rx_queue_bytes=0, churning=False,
                      advice=advice, opened=opened, closed=closed)


def snapshot(listeners=(), processes=(), lost=0, evicted=0, events=0, missed=()):
    return Snapshot(ts_us=0, interval_s=1.0, header=Header(host="h", kernel="k",
                                                           backend="tracepoint"),
                    events_total=events, events_per_s=0.0, lost_events=lost, evicted=evicted,
                    missed_by=missed, listeners=tuple(listeners), processes=tuple(processes))


def scrape(state: MetricsState) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ConnscopeCollector(state))
    return generate_latest(registry).decode()


def samples(text: str) -> dict:
    """{(sample name, frozenset of labels): value} parsed by the client library."""
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def total(text: str, name: str, **labels) -> float:
    return sum(v for (n, ls), v in samples(text).items()
               if n == name and all((k, w) in ls for k, w in labels.items()))


# -- HOST:PORT ------------------------------------------------------------------

@pytest.mark.parametrize("text,expected", [
    ("127.0.0.1:9464", ("127.0.0.1", 9464)),
    ("0.0.0.0:1", ("0.0.0.0", 1)),
    ("[::1]:9464", ("::1", 9464)),
    ("localhost:65535", ("localhost", 65535)),
])
def test_addresses_accepted(text, expected):
    assert parse_address(text) == expected


@pytest.mark.parametrize("text", [
    "", "9464", ":9464", "127.0.0.1:", "127.0.0.1:0", "127.0.0.1:65536", "127.0.0.1:http",
    "::1:9464", "[::1:9464", "[nothost]:9464", "a b:9464", "host;rm:9464", "127.0.0.1:-1",
])
def test_addresses_refused(text):
    with pytest.raises(MetricsError):
        parse_address(text)


# -- labels ----------------------------------------------------------------------

HOSTILE = 'x"} 1\nconnscope_lost_events_total 0\n\x1b[2J\\'


def test_label_text_escapes_controls_and_caps_length():
    assert label_text("nginx") == "nginx"
    s = label_text(HOSTILE)
    assert "\n" not in s and "\x1b" not in s
    assert label_text("é" * 200).endswith("...") and len(label_text("é" * 200)) == LABEL_MAX


def test_hostile_comm_cannot_add_a_line_or_a_label():
    state = MetricsState()
    state.on_connect(connect(comm=HOSTILE))
    state.on_snapshot(snapshot(processes=[process(comm=HOSTILE)]))
    text = scrape(state)
    # every line is a comment or one of ours: nothing injected
    for line in text.splitlines():
        assert line.startswith("# ") or line.startswith("connscope_"), line
    # the lost-events line is ours alone, with our value
    assert [l for l in text.splitlines() if l.startswith("connscope_lost_events_total")] == \
        ["connscope_lost_events_total 0.0"]
    # the value read back is the escaped name, whole
    got = {dict(ls)["process"] for (n, ls), _ in samples(text).items()
           if n == "connscope_connect_attempts_total"}
    assert got == {label_text(HOSTILE)}


# -- names ------------------------------------------------------------------------

def test_names_follow_prometheus_conventions():
    state = MetricsState()
    state.on_connect(connect())
    state.on_accept(accept())
    state.on_snapshot(snapshot(listeners=[listener()], processes=[process(
        advice=(PoolAdvice("10.0.0.1:80", 1.0, 0.1, 0.1, 1.0, 1, 2, 1, "pooled"),))],
        missed=(("connect", 1),)))
    fams = list(text_string_to_metric_families(scrape(state)))
    assert fams
    for f in fams:
        assert f.name.startswith("connscope_"), f.name
        if f.type == "counter":
            assert all(s.name.endswith("_total") for s in f.samples), f.name
        if f.type == "histogram":
            assert f.name.endswith("_seconds"), f.name
    # every family the README lists is there
    names = {f.name for f in fams}
    readme = (ROOT / "README.md").read_text()
    for n in names:
        assert f"`{n}" in readme, f"{n} missing from README's Metrics section"


# -- histograms -------------------------------------------------------------------

def test_histogram_buckets_are_cumulative_and_le_inclusive():
    state = MetricsState()
    for us in (100, 100.5, 2_000_000, 1e9):   # 100 µs is exactly the first bound
        state.on_connect(connect(us=us))
    state.on_snapshot(snapshot())
    s = samples(scrape(state))
    key = frozenset({"process": "curl", "container": "", "pod": "", "namespace": "",
                     "destination": "10.0.0.1:80", "outcome": "established"}.items())

    def bucket(le):
        return s[("connscope_connect_duration_seconds_bucket", key | {("le", le)})]
    assert bucket("0.0001") == 1
    assert bucket("0.00025") == 2
    assert bucket("2.5") == 3
    assert bucket("+Inf") == 4 == s[("connscope_connect_duration_seconds_count", key)]
    assert s[("connscope_connect_attempts_total", key)] == 4
    assert s[("connscope_connect_duration_seconds_sum", key)] == pytest.approx(
        (100 + 100.5 + 2e6 + 1e9) / 1e6)
    assert len(DURATION_BUCKETS) + 1 == sum(1 for (n, ls) in s if n.endswith("_bucket")
                                            and "duration" in n)


# -- caps ---------------------------------------------------------------------------

def test_processes_and_destinations_capped_rest_under_other():
    state = MetricsState(Caps(processes=2, destinations=3, listeners=1))
    for p in ("a", "b", "c", "d"):
        for d in range(5):
            state.on_connect(connect(comm=p, daddr=f"10.0.0.{d}"))
    state.on_accept(accept(lport=80))
    state.on_accept(accept(lport=81))
    state.on_snapshot(snapshot())
    text = scrape(state)
    s = samples(text)
    series = [dict(ls) for (n, ls) in s if n == "connscope_connect_attempts_total"]
    assert {x["process"] for x in series} == {"a", "b", OTHER}
    for p in ("a", "b"):
        assert {x["destination"] for x in series if x["process"] == p} == \
            {"10.0.0.0:80", "10.0.0.1:80", "10.0.0.2:80", OTHER}
    assert {x["destination"] for x in series if x["process"] == OTHER} == {OTHER}
    assert total(text, "connscope_connect_attempts_total") == 20      # nothing lost
    assert total(text, "connscope_connect_attempts_total", process=OTHER) == 10
    assert total(text, "connscope_connect_attempts_total", process="a", destination=OTHER) == 2
    assert total(text, "connscope_accepts_total") == 2
    assert total(text, "connscope_accepts_total", listener=OTHER) == 1


def test_a_name_called_other_cannot_take_a_place():
    state = MetricsState(Caps(processes=1))
    state.on_connect(connect(comm=OTHER))
    state.on_connect(connect(comm="real"))
    state.on_snapshot(snapshot())
    text = scrape(state)
    assert total(text, "connscope_connect_attempts_total", process="real") == 1


# -- monotonic ------------------------------------------------------------------------

def test_counters_never_go_down_when_an_idle_label_gives_its_place_back():
    state = MetricsState(Caps(processes=1, destinations=1, listeners=1), idle=3)
    seen: list[dict] = []
    plan = [("a", "10.0.0.1"), ("a", "10.0.0.1"), None, None, None, None,
            ("b", "10.0.0.2"), ("a", "10.0.0.3"), None, None, None, None, ("a", "10.0.0.1")]
    for step in plan:
        if step:
            state.on_connect(connect(comm=step[0], daddr=step[1]))
            state.on_accept(accept(lport=80 if step[0] == "a" else 81))
        state.on_snapshot(snapshot(listeners=[listener(drops=1)] if step else []))
        seen.append(samples(scrape(state)))
    events = sum(1 for s in plan if s)
    for name in ("connscope_connect_attempts_total", "connscope_accepts_total",
                 "connscope_listen_overflows_total"):
        sums = [sum(v for (n, _), v in s.items() if n == name) for s in seen]
        assert sums == sorted(sums), (name, sums)           # the sum never goes down
        assert sums[-1] == events, (name, sums)             # and nothing is lost
    assert state.view.folded >= 2
    # each series, while it exists, never goes down either
    for before, after in zip(seen, seen[1:]):
        for key, v in before.items():
            if key[0].endswith("_total") and key in after:
                assert after[key] >= v, key


def test_tracer_totals_are_never_lowered():
    state = MetricsState()
    state.on_snapshot(snapshot(lost=5, evicted=3, events=100, missed=(("connect", 2),)))
    state.on_snapshot(snapshot(lost=4, evicted=3, events=90, missed=(("connect", 1),)))
    text = scrape(state)
    assert total(text, "connscope_lost_events_total") == 5
    assert total(text, "connscope_events_total") == 100
    assert total(text, "connscope_skipped_probe_runs_total", program="connect") == 2


def test_listener_and_process_counters_sum_the_intervals():
    state = MetricsState()
    for i in range(3):
        state.on_snapshot(snapshot(
            listeners=[listener(drops=2, syn_drops=1, synack=3, queue_len=i),
                       listener(family=0, laddr="other", lport=0, drops=1, netns=None)],
            processes=[process(opened=4, closed=1)]))
    text = scrape(state)
    assert total(text, "connscope_listen_overflows_total", listener="0.0.0.0:80") == 6
    assert total(text, "connscope_listen_overflows_total", listener=OTHER) == 3
    assert total(text, "connscope_listen_syn_drops_total") == 3
    assert total(text, "connscope_listen_synack_retransmits_total") == 9
    assert total(text, "connscope_listen_queue_length", listener="0.0.0.0:80") == 2   # latest
    assert total(text, "connscope_connections_opened_total", process="curl") == 12
    assert total(text, "connscope_connections_closed_total", process="curl") == 3
    assert total(text, "connscope_process_sockets", state="established") == 1


def test_the_view_a_scrape_reads_is_a_copy():
    state = MetricsState()
    state.on_connect(connect())
    state.on_snapshot(snapshot())
    view = state.view
    state.on_connect(connect())     # the collector thread goes on: the old view does not move
    assert sum(c for _, c, _ in view.connects.values()) == 1
    assert families(view)


# -- the endpoint ---------------------------------------------------------------------

def test_sink_serves_what_it_was_fed_over_http():
    sink = MetricsSink("127.0.0.1", 0)   # any free port
    try:
        sink.on_events([connect(), connect(outcome="refused"), accept()])
        sink.on_interval(None, snapshot())
        host, port = sink.address[:2]
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
        assert total(text, "connscope_connect_attempts_total") == 2
        assert total(text, "connscope_connect_attempts_total", outcome="refused") == 1
        assert total(text, "connscope_accepts_total") == 1
        assert total(text, "connscope_cpu_seconds_total") > 0
    finally:
        sink.close()


def _connscope(*args):
    return subprocess.run([sys.executable, "-m", "tracer", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)


@pytest.mark.parametrize("command", ["record", "top", "serve"])
def test_port_in_use_is_one_error_line(tmp_path, command):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        extra = {"record": ["--out", str(tmp_path / "rec")], "top": ["--plain"],
                 "serve": []}[command]
        r = _connscope(command, *extra, "--metrics", f"127.0.0.1:{port}")
    assert r.returncode == 1
    assert r.stderr == f"Error: --metrics 127.0.0.1:{port}: cannot listen there: " \
                       "Address already in use\n"
    assert not (tmp_path / "rec").exists()      # refused before anything was made


def test_bad_address_is_a_usage_error(tmp_path):
    r = _connscope("record", "--out", str(tmp_path / "rec"), "--metrics", ":9464")
    assert r.returncode == 2
    assert "Error: Invalid value for '--metrics': ':9464': expected HOST:PORT" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "rec").exists()


def test_serve_without_metrics_is_a_usage_error():
    r = _connscope("serve")
    assert r.returncode == 2
    assert r.stderr.endswith("Error: serve needs --metrics HOST:PORT "
                             "(e.g. --metrics 127.0.0.1:9464)\n")


def test_prometheus_client_is_a_runtime_dependency():
    text = (ROOT / "pyproject.toml").read_text()
    deps = text.split("dependencies = [", 1)[1].split("]", 1)[0]
    assert "prometheus_client" in deps


# -- containers and pods ------------------------------------------------------------

POD_ID, DOCKER_ID = "ab" * 32, "cd" * 32
POD = Attribution(11, f"/kubepods/pod{'1' * 8}-1111-1111-1111-{'1' * 12}/{POD_ID}", "cri",
                  POD_ID, f"{'1' * 8}-1111-1111-1111-{'1' * 12}", "shop", "web-7d4b9c-xk2p",
                  "nginx")
DOCKER = Attribution(12, f"/system.slice/docker-{DOCKER_ID}.scope", "docker", DOCKER_ID)
SERVICE = Attribution(13, "/system.slice/cron.service", "systemd", "cron.service")


def _where_by_pid(by_pid: dict):
    """What ContainerCache.columns_of gives: the columns of a pid's attribution."""
    return lambda pid, cgroup_id: containers.values(by_pid.get(pid))


def test_where_labels_name_the_container_pod_and_namespace():
    assert where_of(containers.values(POD)) == ("nginx", "web-7d4b9c-xk2p", "shop")
    assert where_of(containers.values(DOCKER)) == (DOCKER_ID[:12], "", "")
    assert where_of(containers.values(SERVICE)) == ("cron.service", "", "")
    assert where_of(containers.values(None)) == where_of(None) == ("", "", "")
    assert where_of_attribution(POD) == ("nginx", "web-7d4b9c-xk2p", "shop")


def test_connects_carry_their_processs_container_and_the_same_name_elsewhere_is_another():
    state = MetricsState(where=_where_by_pid({1: POD, 2: DOCKER}))
    for pid in (1, 1, 2, 3):
        ev = connect(comm="nginx")
        state.on_connect(dc_replace(ev, pid=pid, tid=pid))
    state.on_snapshot(snapshot())
    text = scrape(state)
    got = {(x["container"], x["pod"], x["namespace"]): v for (n, ls), v in samples(text).items()
           if n == "connscope_connect_attempts_total" for x in [dict(ls)]}
    assert got == {("nginx", "web-7d4b9c-xk2p", "shop"): 2, (DOCKER_ID[:12], "", ""): 1,
                   ("", "", ""): 1}


def test_the_process_cap_counts_a_name_in_each_container_once():
    state = MetricsState(Caps(processes=2), where=_where_by_pid({1: POD, 2: DOCKER}))
    for pid in (1, 2, 3):
        ev = connect(comm="nginx")
        state.on_connect(dc_replace(ev, pid=pid, tid=pid))
    state.on_snapshot(snapshot())
    text = scrape(state)
    series = {(x["process"], x["container"]) for (n, ls) in samples(text)
              if n == "connscope_connect_attempts_total" for x in [dict(ls)]}
    assert series == {("nginx", "nginx"), ("nginx", DOCKER_ID[:12]), (OTHER, "")}
    assert total(text, "connscope_connect_attempts_total") == 3


def test_idle_containers_fold_into_other_and_sums_never_go_down():
    by_pid = {1: POD}
    state = MetricsState(Caps(processes=1), idle=2, where=_where_by_pid(by_pid))
    sums = []
    for step in range(6):
        pid = 1 if step < 2 else 2
        by_pid[2] = DOCKER
        ev = connect(comm="nginx")
        state.on_connect(dc_replace(ev, pid=pid, tid=pid))
        state.on_snapshot(snapshot())
        sums.append(total(scrape(state), "connscope_connect_attempts_total"))
    assert sums == [1, 2, 3, 4, 5, 6]
    text = scrape(state)
    assert total(text, "connscope_connect_attempts_total", container=DOCKER_ID[:12]) >= 1
    assert state.view.folded >= 1


def test_process_gauges_pool_and_counters_carry_the_container():
    advice = PoolAdvice(destination="10.0.0.1:5432", arrival_per_s=10.0, hold_s=0.5,
                        concurrency_mean=2.0, concurrency_p99=3.0, concurrency_peak=3,
                        recommended=8, in_use=3, verdict="pooled")
    rows = [dc_replace(process(pid=1, comm="nginx", opened=2, advice=(advice,)), container=POD),
            process(pid=2, comm="cron", opened=1)]
    state = MetricsState()
    state.on_snapshot(snapshot(processes=rows,
                               listeners=[dc_replace(listener(), container=DOCKER)]))
    s = samples(scrape(state))
    sock = {dict(ls)["pid"]: dict(ls) for (n, ls) in s if n == "connscope_process_sockets"}
    assert (sock["1"]["container"], sock["1"]["pod"], sock["1"]["namespace"]) == (
        "nginx", "web-7d4b9c-xk2p", "shop")
    assert (sock["2"]["container"], sock["2"]["pod"]) == ("", "")
    (pool,) = [dict(ls) for (n, ls) in s if n == "connscope_pool_recommended_connections"]
    assert pool["pod"] == "web-7d4b9c-xk2p" and pool["destination"] == "10.0.0.1:5432"
    opened = {dict(ls)["container"]: v for (n, ls), v in s.items()
              if n == "connscope_connections_opened_total"}
    assert opened == {"nginx": 2, "": 1}
    (q,) = [dict(ls) for (n, ls) in s if n == "connscope_listen_queue_length"]
    assert q["container"] == DOCKER_ID[:12]
