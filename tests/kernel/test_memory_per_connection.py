"""Memory per connection against a server that holds a known amount per
connection: a child process that accepts 200 loopback connections and for
each allocates and touches 2,000,000 bytes, in a memory cgroup of its own
limited to 1 GiB. The reported memory per connection must be within 10 % of
2 MB plus the server's baseline share (its own resident memory before the
first accept, divided by 200), in the live aggregate rows, the `sockets`
Parquet table (DuckDB), replay and the report; and the report finds that
1,000 such connections would not fit in that cgroup.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from tests.kernel.test_record_cli import start_recorder, wait_started
from tracer.aggregate.sockets import ProcessTable
from tracer.replay.timeline import RecordingTimeline
from tracer.report.reader import read_recording
from tracer.report.summary import summarize
from tracer.report.text import render_text
from tracer.run import kernel_view

pytestmark = pytest.mark.kernel

CONNECTIONS = 200
PER_CONNECTION = 2_000_000
LIMIT = 1 << 30
TOLERANCE = 0.10

SERVER = r"""
import os, socket, sys, time
PAGE = os.sysconf("SC_PAGE_SIZE")
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE
n, size = int(sys.argv[1]), int(sys.argv[2])
srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen(n + 16)
held, buffers = [], []
held.append(None); buffers.append(None); held.clear(); buffers.clear()
sys.stdout.write(f"{srv.getsockname()[1]}\n"); sys.stdout.flush()
sys.stdin.readline()                      # moved into its cgroup: start
baseline = rss()
sys.stdout.write(f"{baseline}\n"); sys.stdout.flush()
srv.settimeout(30)
for _ in range(n):
    c, _ = srv.accept()
    held.append(c)
    buffers.append(b"\xa5" * size)        # written, so resident
sys.stdout.write(f"ready {rss()}\n"); sys.stdout.flush()
deadline = time.monotonic() + 90
while time.monotonic() < deadline and sys.stdin.readline():
    pass
"""


def _own_memory_cgroup() -> Path | None:
    with open("/proc/self/cgroup") as f:
        for line in f:
            hid, controllers, path = line.rstrip("\n").split(":", 2)
            if "memory" in controllers.split(","):
                return Path("/sys/fs/cgroup/memory" + path)
    return None


def _v2_memory_root() -> Path | None:
    """The cgroup v2 mount when it holds the memory controller (a v2-only host
    such as the Debian guests), else None."""
    root = Path("/sys/fs/cgroup")
    try:
        if "memory" not in (root / "cgroup.controllers").read_text().split():
            return None
    except OSError:
        return None
    return root


@pytest.fixture
def memory_cgroup():
    """A memory cgroup limited to LIMIT, removed afterwards: v1 under ours
    (hybrid hosts like this one), else v2 under the root, the one cgroup
    exempt from v2's rule that a cgroup whose children have controllers
    holds no processes."""
    parent, limit_file = _own_memory_cgroup(), "memory.limit_in_bytes"
    if parent is None or not (parent / limit_file).exists():
        parent, limit_file = _v2_memory_root(), "memory.max"
        if parent is None:
            pytest.skip("no memory cgroup controller here, neither v1 nor v2")
        if "memory" not in (parent / "cgroup.subtree_control").read_text().split():
            (parent / "cgroup.subtree_control").write_text("+memory")
    cg = parent / f"connscope-memtest-{os.getpid()}"
    cg.mkdir()
    try:
        (cg / limit_file).write_text(str(LIMIT))
        yield cg
    finally:
        for _ in range(50):
            try:
                cg.rmdir()
                break
            except OSError:        # the server is still leaving
                time.sleep(0.1)


def within(value, expected, tolerance=TOLERANCE) -> bool:
    return value is not None and abs(value - expected) <= tolerance * expected


def test_memory_per_connection_of_a_server_holding_2mb_each(tmp_path, memory_cgroup):
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(CONNECTIONS),
                               str(PER_CONNECTION)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    clients, proc = [], None
    try:
        port = int(server.stdout.readline())
        (memory_cgroup / "cgroup.procs").write_text(str(server.pid))
        server.stdin.write("go\n")
        server.stdin.flush()
        baseline = int(server.stdout.readline())
        for _ in range(CONNECTIONS):
            clients.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        ready = server.stdout.readline()
        assert ready.startswith("ready"), ready
        expected = PER_CONNECTION + baseline / CONNECTIONS

        out = tmp_path / "rec"
        proc = start_recorder(out, "--interval", "0.5", "--duration", "3",
                              "--pid", str(server.pid))
        wait_started(proc)

        # live: the collector's kernel view and process table, as `top` runs them
        table, read = ProcessTable(), kernel_view()
        _, _, holdings, scanned_at = read()
        (live,) = [r for r in table.update(1.0, holdings, scanned_at) if r.pid == server.pid]
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    finally:
        for c in clients:
            c.close()
        server.stdin.close()
        server.wait(10)
        if proc is not None and proc.poll() is None:
            proc.kill()

    assert live.connections == CONNECTIONS and live.listen == 1
    assert within(live.memory_per_connection, expected), (live, expected)
    assert (live.memory_limit_bytes, live.memory_limit_from) == (LIMIT, "cgroup")
    assert live.cgroup_memory_bytes >= CONNECTIONS * PER_CONNECTION

    # the Parquet table, read by DuckDB
    rows = duckdb.sql(
        f"select established, rss_bytes, memory_per_connection_bytes, memory_limit_bytes, "
        f"memory_limit_from, cgroup_memory_bytes, listen_backlog from read_parquet("
        f"'{out}/sockets/**/*.parquet', hive_partitioning=true) where pid = {server.pid} "
        f"order by ts").fetchall()
    assert rows, "no sockets rows for the server"
    for est, rss, per, limit, source, cg, backlog in rows:
        assert est == CONNECTIONS and within(per, expected), (rows, expected)
        assert per == rss / CONNECTIONS
        assert (limit, source, backlog) == (LIMIT, "cgroup", CONNECTIONS + 16)

    # socket memory and host TCP memory went into the same recording
    (n, rmem, maximum), = duckdb.sql(
        f"select count(*), max(socket_rmem_bytes), max(t.max_bytes) from read_parquet("
        f"'{out}/sockets/**/*.parquet', hive_partitioning=true) s, read_parquet("
        f"'{out}/tcp_memory/**/*.parquet', hive_partitioning=true) t "
        f"where s.pid = {server.pid}").fetchall()
    page = os.sysconf("SC_PAGE_SIZE")
    tcp_mem = [int(x) for x in Path("/proc/sys/net/ipv4/tcp_mem").read_text().split()]
    assert n and rmem is not None and maximum == tcp_mem[2] * page

    # the report: the sentence, the figure, and the finding
    data = read_recording(out)
    s = summarize(data)
    (p,) = [p for p in s.by_sockets if p.pid == server.pid]
    assert p.memory_per_connection == rows[-1][2]
    text = render_text(s)
    assert f"holds {CONNECTIONS} connections at " in p.memory_sentence
    assert p.memory_sentence in text
    proj = p.memory_projection
    assert proj.target == 1000 and proj.source == "cgroup" and proj.severity == "crit"
    assert any(f.text == proj.text(p.label) and f.severity == "crit" for f in s.findings)

    # replay shows what was recorded
    timeline = RecordingTimeline(data, out)
    last = timeline.snapshot(len(timeline) - 1)
    (shown,) = [r for r in last.processes if r.pid == server.pid]
    assert shown.memory_per_connection == rows[-1][2]
    (manifest,) = [json.loads(m.read_text()) for m in (out / "runs").glob("*.json")]
    print(f"\nbaseline {baseline:,} B, expected {expected:,.0f} B/connection; live "
          f"{live.memory_per_connection:,.0f}, parquet {rows[-1][2]:,.0f}, report "
          f"{p.memory_per_connection:,.0f}; cgroup uses {live.cgroup_memory_bytes:,} of "
          f"{LIMIT:,}; {p.memory_sentence}; finding: {proj.text(p.label)}; "
          f"run {manifest['run_id']}")
