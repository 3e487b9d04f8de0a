"""A real Prometheus server (Debian's `prometheus`) scrapes `connscope record
--metrics` every second during an ab run against nginx on loopback and a
burst that overflows a listener that never accepts. Once the traffic has
stopped and Prometheus has scraped the same values twice, the counters it
holds (PromQL through its HTTP API) must equal what the recording of the same
run holds: connects by outcome, accepts, ACK-time and SYN-time drops.
Prometheus also saw the counters grow while the traffic ran (it scraped
during the run, not only at its end), and never go down.

Every process started here is bounded in time and killed in `finally`.
"""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import duckdb
import pytest

from tests.kernel.test_pool_advice import free_port, stop, wait_port
from tests.kernel.workloads import connect_many, nginx_conf, run_to_end, tcp_server

pytestmark = pytest.mark.kernel

ROOT = Path(__file__).resolve().parents[2]
SCRAPE_S = 1
REQUESTS = 3000
ROUNDS = 5


def prometheus_config(target: str) -> str:
    return (f"global:\n  scrape_interval: {SCRAPE_S}s\n  scrape_timeout: {SCRAPE_S}s\n"
            f"scrape_configs:\n  - job_name: connscope\n    static_configs:\n"
            f"      - targets: ['{target}']\n")


def api(web: int, path: str, **params) -> dict:
    url = f"http://127.0.0.1:{web}/api/v1/{path}?" + urllib.parse.urlencode(params)
    with urllib.request.urlopen(url, timeout=10) as r:
        body = json.load(r)
    assert body["status"] == "success", body
    return body["data"]


def promql(web: int, query: str) -> dict[str, float]:
    """{label text: value} of an instant query now."""
    out = {}
    for r in api(web, "query", query=query)["result"]:
        out[",".join(f"{k}={v}" for k, v in sorted(r["metric"].items()))] = float(r["value"][1])
    return out


def scalar(web: int, query: str) -> float:
    got = promql(web, query)
    return sum(got.values())


def wait_until(predicate, timeout_s: float, what: str, step_s: float = 0.25):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except OSError:     # not listening yet (urllib's URLError is one)
            value = None
        if value:
            return value
        time.sleep(step_s)
    raise AssertionError(f"{what}: not within {timeout_s} s")


@pytest.fixture
def workdir():
    d = Path(tempfile.mkdtemp(prefix="connscope-prom-"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_prometheus_scrapes_equal_the_recording(workdir):
    for tool in ("prometheus", "nginx", "ab"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (./run test installs prometheus, nginx-light, "
                        "apache2-utils)")
    web_port, metrics_port, nginx_port = free_port(), free_port(), free_port()
    procs: list[subprocess.Popen] = []
    drop_server = None
    try:
        (workdir / "nginx").mkdir()
        (workdir / "nginx" / "nginx.conf").write_text(
            nginx_conf(workdir / "nginx", f"127.0.0.1:{nginx_port} backlog=16", workers=1))
        nginx = subprocess.Popen(["nginx", "-p", str(workdir / "nginx"), "-c",
                                  str(workdir / "nginx" / "nginx.conf"), "-g", "daemon off;"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(nginx)
        wait_port(nginx_port)
        drop_server = tcp_server(None, "127.0.0.1", backlog=1, accept=False, lifetime_s=120)

        rec = workdir / "rec"
        recorder = subprocess.Popen(
            [sys.executable, "-m", "tracer", "record", "--out", str(rec), "--interval", "1",
             "--duration", "120", "--port", str(nginx_port), "--port", str(drop_server.port),
             "--metrics", f"127.0.0.1:{metrics_port}"],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        procs.append(recorder)
        line = recorder.stderr.readline()
        assert "recording to" in line, line + (recorder.stderr.read() if recorder.poll() is not None
                                               else "")

        (workdir / "prometheus.yml").write_text(prometheus_config(f"127.0.0.1:{metrics_port}"))
        prometheus = subprocess.Popen(
            ["prometheus", f"--config.file={workdir / 'prometheus.yml'}",
             f"--storage.tsdb.path={workdir / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{web_port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(prometheus)
        wait_until(lambda: scalar(web_port, 'up{job="connscope"}') == 1 and
                   scalar(web_port, "count(connscope_events_total)") == 1, 30,
                   "Prometheus scraping connscope")

        t_start = time.time()
        # in rounds a few scrapes apart (one ab run is over in under a second)
        for _ in range(ROUNDS):
            run_to_end(["ab", "-q", "-n", str(REQUESTS // ROUNDS), "-c", "100", "-s", "20",
                        f"http://127.0.0.1:{nginx_port}/"], 60)
            time.sleep(1.5 * SCRAPE_S)
        # a burst at a queue of 1 that is never accepted: ACK-time and SYN-time drops,
        # SYN retransmits, timeouts (TCP_SYNCNT 1: each gives up after ~3 s)
        burst = connect_many("127.0.0.1", drop_server.port, 24, concurrent=True, syncnt=1,
                             timeout_s=8)
        assert any(not r.ok for r in burst), burst
        drop_server.stop()
        drop_server = None
        t_traffic_end = time.time()

        # settled: two scrapes at least SCRAPE_S apart, after the traffic, agree
        queries = ("sum by (outcome) (connscope_connect_attempts_total)",
                   "sum(connscope_accepts_total)", "sum(connscope_listen_overflows_total)",
                   "sum(connscope_listen_syn_drops_total)")

        def settled():
            first = [promql(web_port, q) for q in queries]
            time.sleep(2.5 * SCRAPE_S)
            again = [promql(web_port, q) for q in queries]
            return again if again == first else None

        time.sleep(3)    # one interval for the last events, one scrape
        final = wait_until(settled, 30, "the scraped counters settling", step_s=0)
        by_outcome, accepts, overflows, syn_drops = (
            final[0], sum(final[1].values()), sum(final[2].values()), sum(final[3].values()))

        # Prometheus scraped during the run: the attempts it held rose in steps, never down
        series = api(web_port, "query_range", query="sum(connscope_connect_attempts_total)",
                     start=f"{t_start:.3f}", end=f"{time.time():.3f}", step="1")["result"]
        values = [float(v) for _, v in series[0]["values"]]
        assert values == sorted(values), values
        assert len(set(values)) >= ROUNDS, values   # seen mid-run, not only at its end
        assert sum(by_outcome.values()) in values

        # the gauges of the listener still there: nginx's backlog=16, as the kernel has it
        limit = promql(web_port, f'connscope_listen_queue_limit{{listener="127.0.0.1:{nginx_port}"}}')
        assert list(limit.values()) == [16.0], limit

        stop(recorder, signal.SIGINT)
        assert recorder.returncode == 0, recorder.stderr.read()
    finally:
        if drop_server is not None:
            drop_server.stop()
        for p in reversed(procs):
            stop(p, signal.SIGQUIT if p.args[0] == "nginx" else signal.SIGTERM)

    def parquet(table, sql):
        return duckdb.sql(sql.replace("T", f"read_parquet('{rec}/{table}/**/*.parquet', "
                                           "hive_partitioning=true, union_by_name=true)")).fetchall()

    recorded_outcomes = dict(parquet("connects", "select outcome, count(*) from T group by 1"))
    got_outcomes = {k.removeprefix("outcome="): int(v) for k, v in by_outcome.items()}
    print(f"scraped: {got_outcomes}, accepts {accepts}, drops {overflows}/{syn_drops}; "
          f"traffic {t_traffic_end - t_start:.1f} s")
    assert got_outcomes == recorded_outcomes
    assert recorded_outcomes.get("established", 0) >= REQUESTS       # ab's, and the burst's
    assert recorded_outcomes.get("timeout", 0) >= 1
    [(recorded_accepts,)] = parquet("accepts", "select count(*) from T")
    assert accepts == recorded_accepts >= REQUESTS
    [(drops, syns)] = parquet("overflows", "select coalesce(sum(drops), 0), "
                                           "coalesce(sum(syn_drops), 0) from T")
    assert (overflows, syn_drops) == (drops, syns)
    assert drops + syns > 0


# A process name another user chose: quotes, a newline, an ESC sequence and a
# backslash, 12 bytes (a comm holds 15).
HOSTILE_COMM = b'a"}\n1 \x1b[2J\\z'
SET_COMM_AND_CONNECT = r"""
import ctypes, socket, sys
libc = ctypes.CDLL(None, use_errno=True)
assert libc.prctl(15, ctypes.c_char_p(bytes.fromhex(sys.argv[1])), 0, 0, 0) == 0   # PR_SET_NAME
for _ in range(3):
    socket.create_connection(("127.0.0.1", int(sys.argv[2])), timeout=5).close()
"""


def test_a_hostile_process_name_adds_no_line_and_no_label(workdir):
    """An unprivileged process names itself with a quote, a newline and an
    ESC sequence and connects; the scrape (text and OpenMetrics) holds its
    name escaped in one label value, and nothing else."""
    from prometheus_client.openmetrics.parser import \
        text_string_to_metric_families as openmetrics_families
    from prometheus_client.parser import text_string_to_metric_families

    from tracer.safe_text import faithful_text
    from tracer.sinks.metrics_state import label_text

    metrics_port = free_port()
    server = tcp_server(None, "127.0.0.1", lifetime_s=60)
    recorder = None
    try:
        recorder = subprocess.Popen(
            [sys.executable, "-m", "tracer", "record", "--out", str(workdir / "rec"),
             "--interval", "0.5", "--duration", "60", "--port", str(server.port),
             "--metrics", f"127.0.0.1:{metrics_port}"],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        line = recorder.stderr.readline()
        assert "recording to" in line, line
        subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                        sys.executable, "-c", SET_COMM_AND_CONNECT, HOSTILE_COMM.hex(),
                        str(server.port)], check=True, timeout=30)
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        want = label_text(faithful_text(HOSTILE_COMM))

        def scrape(accept=None):
            req = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.read().decode()

        # as the text format writes a label value: backslash and quote escaped
        written = want.replace("\\", "\\\\").replace('"', '\\"')

        def scraped_with_it():
            t = scrape()
            return t if f'process="{written}"' in t else None

        text = wait_until(scraped_with_it, 15, "the hostile process's connects in a scrape")
        om = scrape("application/openmetrics-text; version=1.0.0")
    finally:
        server.stop()
        if recorder is not None:
            stop(recorder, signal.SIGINT)

    for body in (text, om):
        assert "\x1b" not in body
        for ln in body.splitlines():
            assert ln.startswith("# ") or ln.startswith("connscope_"), ln
    for fams in (text_string_to_metric_families(text), openmetrics_families(om)):
        names = set()
        for f in fams:
            assert f.name.startswith("connscope_"), f.name
            for s in f.samples:
                if (f.name == "connscope_connect_attempts"
                        and s.labels.get("destination") == f"127.0.0.1:{server.port}"):
                    names.add(s.labels["process"])
                    assert set(s.labels) == {"process", "container", "pod", "namespace",
                                             "destination", "outcome"}
        assert names == {want}, names


def test_serve_counts_the_connects_made_and_stops_on_sigint():
    """`serve` (no recording): N connects to a listener of ours are N
    established attempts and N accepts in a scrape; SIGINT ends it with 0."""
    metrics_port = free_port()
    server = tcp_server(None, "127.0.0.1", lifetime_s=60)
    proc = None
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tracer", "serve", "--interval", "0.5", "--duration", "60",
             "--port", str(server.port), "--metrics", f"127.0.0.1:{metrics_port}"],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        line = proc.stderr.readline()
        assert f"serving metrics at http://127.0.0.1:{metrics_port}/metrics" in line, line
        made = connect_many("127.0.0.1", server.port, 7)
        assert all(r.ok for r in made), made
        assert server.wait_accepted(7) == 7

        def counts():
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics",
                                        timeout=5) as r:
                text = r.read().decode()
            from prometheus_client.parser import text_string_to_metric_families

            got = {"attempts": 0.0, "accepts": 0.0}
            for f in text_string_to_metric_families(text):
                for s in f.samples:
                    if s.name == "connscope_connect_attempts_total" and \
                            s.labels["outcome"] == "established":
                        got["attempts"] += s.value
                    elif s.name == "connscope_accepts_total":
                        got["accepts"] += s.value
            return got if got == {"attempts": 7, "accepts": 7} else None

        wait_until(counts, 10, "7 established connects and 7 accepts in a scrape")
        stop(proc, signal.SIGINT)
        assert proc.returncode == 0, proc.stderr.read()
    finally:
        server.stop()
        if proc is not None:
            stop(proc, signal.SIGKILL)
