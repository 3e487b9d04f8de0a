"""Pool advice against clients whose concurrency is known, through the real
collector: `pgbench -C -c 8` (a new connection per transaction, 8 clients)
against a PostgreSQL this test starts, and `ab -c 50` (a new connection per
request, 50 at a time) against a healthy nginx. Each holds exactly its -c
connections open at once (from connect() to close), so the advice must be
that many with the headroom: 8-12 for pgbench, 50-65 for ab. (A keep-alive
client using 5 connections, reported as pooled: test_sockets.py's
test_churning_and_pooled_clients_are_told_apart.)

Everything listens on 127.0.0.1 on a port the kernel picked; every client and
server runs with a timeout and is stopped at the end.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.kernel.workloads import nginx_conf, run_to_end

pytestmark = pytest.mark.kernel

INTERVAL = 0.5
RUN_S = 5               # each client runs this long: 10 intervals
# Debian installs each major version under its own directory: the newest here
PG_BIN = max(Path("/usr/lib/postgresql").glob("*/bin"),
             key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
             default=Path("/usr/lib/postgresql/15/bin"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port} after {timeout_s} s")


def stop(proc: subprocess.Popen, sig=signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def busiest_advice(run, pid: int, destination: str, start_wall: float, end_wall: float):
    """The client's advice in the last snapshot taken while it ran (at least
    2 s in, so the window holds whole intervals of it)."""
    during = [s for s in run.snapshots
              if start_wall * 1e6 + 2e6 <= s.ts_us <= end_wall * 1e6]
    assert during, f"no snapshot between 2 s into the client and its end ({len(run.snapshots)})"
    snap = during[-1]
    rows = [r for r in snap.processes if r.pid == pid]
    assert rows, f"no process row for the client {pid}"
    found = [a for a in rows[0].advice if a.destination == destination]
    assert found, f"no advice for {destination}: {rows[0].advice}"
    return rows[0], found[0]


def drive(collector_run, cmd: list[str], timeout_s: float):
    """Run a client under the collector, starting right after an interval
    closes; returns (run, client pid, its output, start and end wall time)."""
    run = collector_run(INTERVAL)
    with run:
        seen, deadline = len(run.snapshots), time.monotonic() + 10
        while len(run.snapshots) == seen and time.monotonic() < deadline:
            time.sleep(0.005)
        start = time.time()
        client, out = run_to_end(cmd, timeout_s)
        end = time.time()
        time.sleep(INTERVAL * 1.5)
    return run, client.pid, out, start, end


# ---------------------------------------------------------------- PostgreSQL

@pytest.fixture
def postgres():
    """A PostgreSQL 15 cluster of its own in a temporary directory owned by
    the postgres user, on 127.0.0.1 and a free port; pgbench tables made."""
    if not (PG_BIN / "postgres").exists() or shutil.which("pgbench") is None:
        pytest.skip("PostgreSQL 15 and pgbench are not installed (./run installs them)")
    data = Path(tempfile.mkdtemp(prefix="connscope-pg-"))
    shutil.chown(data, "postgres", "postgres")
    as_pg = ["runuser", "-u", "postgres", "--"]
    subprocess.run([*as_pg, str(PG_BIN / "initdb"), "-D", str(data / "db"), "-A", "trust",
                    "-U", "postgres"], check=True, capture_output=True, timeout=120)
    port = free_port()
    server = subprocess.Popen(
        [*as_pg, str(PG_BIN / "postgres"), "-D", str(data / "db"), "-p", str(port),
         "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={data}",
         "-c", "max_connections=40", "-c", "fsync=off"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        deadline = time.monotonic() + 30
        while subprocess.run([str(PG_BIN / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)],
                             capture_output=True, timeout=10).returncode != 0:
            assert time.monotonic() < deadline, "PostgreSQL did not become ready in 30 s"
            time.sleep(0.2)
        subprocess.run(["pgbench", "-i", "-q", "-s", "1", "-h", "127.0.0.1", "-p", str(port),
                        "-U", "postgres", "postgres"], check=True, capture_output=True,
                       timeout=120)
        yield port
    finally:
        stop(server, signal.SIGINT)     # a fast shutdown
        shutil.rmtree(data, ignore_errors=True)


def sessions(port: int) -> int:
    """pg_stat_database.sessions: connections the server counted."""
    out = subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-Atc",
                          "select sum(sessions) from pg_stat_database"], capture_output=True,
                         text=True, timeout=30, check=True).stdout
    return int(out.strip())


def test_pgbench_with_a_connection_per_transaction_needs_a_pool_of_8_to_12(collector_run,
                                                                          postgres):
    port = postgres
    before = sessions(port)
    run, pid, out, start, end = drive(collector_run, [
        "pgbench", "-C", "-c", "8", "-j", "1", "-S", "-T", str(RUN_S), "-h", "127.0.0.1",
        "-p", str(port), "-U", "postgres", "postgres"], RUN_S + 60)
    served = sessions(port) - before - 1        # this query's own session
    done = int(re.search(r"number of transactions actually processed: (\d+)", out).group(1))
    clients = int(re.search(r"number of clients: (\d+)", out).group(1))
    row, a = busiest_advice(run, pid, f"127.0.0.1:{port}", start, end)
    print(f"\npgbench: {clients} clients, {done} transactions, server counted {served} "
          f"sessions; connscope: {a.arrival_per_s:.0f} new/s, held {a.hold_s * 1000:.2f} ms, "
          f"concurrency {a.concurrency_mean:.2f} (p99 held {a.concurrency_p99}), "
          f"recommended {a.recommended}; {a.verdict!r}")
    # -C: a session per transaction (and the few cut off when -T ran out);
    # the psql sessions asking are counted or not depending on when they flush
    assert clients == 8 and done > 0 and done - 2 <= served <= done + clients + 2, \
        (done, served)
    assert a.verdict.startswith("churning") and row.churning, a
    assert 8 <= a.recommended <= 12, a


# ---------------------------------------------------------------- nginx + ab

@pytest.fixture
def nginx():
    if shutil.which("nginx") is None or shutil.which("ab") is None:
        pytest.skip("nginx and ab are not installed (./run installs nginx-light, apache2-utils)")
    d = Path(tempfile.mkdtemp(prefix="connscope-nginx-"))
    port = free_port()
    (d / "nginx.conf").write_text(nginx_conf(d, f"127.0.0.1:{port} backlog=4096"))
    server = subprocess.Popen(["nginx", "-p", str(d), "-c", str(d / "nginx.conf"),
                               "-g", "daemon off;"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    try:
        wait_port(port)
        yield port
    finally:
        stop(server, signal.SIGQUIT)    # graceful
        shutil.rmtree(d, ignore_errors=True)


def test_ab_with_50_concurrent_requests_needs_a_pool_of_50_to_65(collector_run, nginx):
    port = nginx
    run, pid, out, start, end = drive(collector_run, [
        "ab", "-q", "-t", str(RUN_S), "-n", "2000000", "-c", "50", "-s", "10",
        f"http://127.0.0.1:{port}/"], RUN_S + 60)
    done = int(re.search(r"Complete requests:\s+(\d+)", out).group(1))
    failed = int(re.search(r"Failed requests:\s+(\d+)", out).group(1))
    level = int(re.search(r"Concurrency Level:\s+(\d+)", out).group(1))
    row, a = busiest_advice(run, pid, f"127.0.0.1:{port}", start, end)
    print(f"\nab: concurrency {level}, {done} requests, {failed} failed; connscope: "
          f"{a.arrival_per_s:.0f} new/s, held {a.hold_s * 1000:.2f} ms, concurrency "
          f"{a.concurrency_mean:.2f} (p99 held {a.concurrency_p99}), recommended "
          f"{a.recommended}; {a.verdict!r}")
    assert level == 50 and done > 0 and failed == 0, out[-2000:]
    assert a.verdict.startswith("churning") and row.churning, a
    assert 50 <= a.recommended <= 65, a
