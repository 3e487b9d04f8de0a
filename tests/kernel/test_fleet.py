"""Many hosts, one analysis, on real recordings: `connscope record` run twice
for real, each in a UTS namespace of its own with another host name (what
socket.gethostname() returns there is what a recording calls its host) and
in a network namespace the test creates, each watching real traffic there: connects to a
listener that accepts, and a flood of a listener that never does (accept-queue
overflow). The two recordings are copied into one tree, as a fleet ships
them, and read as one dataset:

- `connscope report` of the tree has a HOSTS row per host equal to the report
  of that host's recording alone, and a total row that is their sum;
- the README's fleet query (DuckDB, run as written) and per-host DuckDB
  counts equal the parts' and the ground truth: the connects the test made,
  and each namespace's own TcpExt ListenOverflows (nothing else runs there);
- `replay --host` keeps one host.

Run under the kernel lock: flock /tmp/connscope-kernel.lock ..."""

import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import duckdb
import pytest

from tests.kernel.netlab import netns_counters, run_in_netns, socket_in
from tests.unit.test_fleet import FLEET_QUERY, sql_block
from tracer.report.reader import read_recording
from tracer.report.summary import summarize

pytestmark = pytest.mark.kernel

ROOT = Path(__file__).resolve().parents[2]
# A host: a network namespace (its listeners are the recorder's own, where the
# tracepoint backend counts SYN-time drops exactly: README "What is exact") and
# a UTS namespace with its own host name. nsenter (not `ip netns exec`, which
# remounts /sys and would hide tracefs), unshare(CLONE_NEWUTS), sethostname,
# then exec connscope (the same pid throughout: SIGINT reaches it).
RECORD_AS = ("import os, socket, sys; socket.sethostname(sys.argv[1]); "
             "os.execv(sys.executable, [sys.executable, '-m', 'tracer', *sys.argv[2:]])")
# host name -> (connects to the listener that accepts, connects flooding the
# one that never accepts, its backlog)
HOSTS = {"fleet-a": (20, 40, 4), "fleet-b": (7, 25, 2)}
_seq = itertools.count()


class Namespace:
    def __init__(self):
        self.name = f"cs-fleet-{os.getpid()}-{next(_seq)}"
        subprocess.run(["ip", "netns", "add", self.name], check=True, timeout=10)
        subprocess.run(["ip", "netns", "exec", self.name, "ip", "link", "set", "lo", "up"],
                       check=True, timeout=10)

    def overflows(self) -> int:
        c = netns_counters(self.name)
        return c["TcpExt.ListenOverflows"]

    def close(self):
        subprocess.run(["ip", "netns", "del", self.name], timeout=10)


def listen(ns, backlog):
    srv = socket_in(ns.name)
    srv.bind(("127.0.0.1", 0))
    srv.listen(backlog)
    return srv, srv.getsockname()[1]


def accept_all(srv, stop):
    srv.settimeout(0.1)
    while not stop.is_set():
        try:
            a, _ = srv.accept()
            a.close()
        except socket.timeout:
            pass


def connect_once(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.close()


def record_host(host, out, ns, n_ok, n_flood, backlog):
    """One host's recording of its traffic; returns the ground truth:
    {connects made to each port, ListenOverflows of the namespace}."""
    ok, ok_port = listen(ns, 128)
    full, full_port = listen(ns, backlog)
    proc = subprocess.Popen(
        ["nsenter", f"--net=/run/netns/{ns.name}", "unshare", "--uts", "--", sys.executable,
         "-c", RECORD_AS, host, "record", "--out",
         str(out), "--interval", "0.5", "--port", str(ok_port), "--port", str(full_port)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        line = ""
        while time.monotonic() < deadline and "recording to" not in line:
            line = proc.stderr.readline()
            if not line:
                break
        assert "recording to" in line, line + proc.stderr.read()
        # a listener's drops count from the first time the recorder reads it
        # (sock_diag, once an interval): flood only after that
        time.sleep(1.2)
        before = ns.overflows()
        stop = threading.Event()
        acceptor = threading.Thread(target=accept_all, args=(ok, stop), daemon=True)
        acceptor.start()
        for _ in range(n_ok):
            run_in_netns(ns.name, connect_once, ok_port)
        flood = []
        for _ in range(n_flood):
            s = socket_in(ns.name)
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", full_port))
            flood.append(s)
        time.sleep(3.2)     # SYN retransmits at 1, 2, 3 s keep hitting the full queue
        for s in flood:
            s.close()
        stop.set()
        acceptor.join(5)
        time.sleep(1.2)     # two more intervals see the last drops
        dropped = ns.overflows() - before
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        ok.close()
        full.close()
    assert proc.returncode == 0, err
    assert dropped > 0, "the test did not overflow the queue"
    return {"connects": {ok_port: n_ok, full_port: n_flood}, "dropped": dropped,
            "listener": full_port, "netns": os.stat(f"/run/netns/{ns.name}").st_ino}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    base = tmp_path_factory.mktemp("fleet")
    truth = {}
    for host, (n_ok, n_flood, backlog) in HOSTS.items():
        ns = Namespace()
        try:
            truth[host] = record_host(host, base / "own" / host, ns, n_ok, n_flood, backlog)
        finally:
            ns.close()
    for host in HOSTS:          # shipped: one directory per host, and merged into one
        shutil.copytree(base / "own" / host, base / "fleet" / host)
        shutil.copytree(base / "own" / host, base / "flat", dirs_exist_ok=True)
    return base, truth


def test_each_recording_is_its_hosts(fleet):
    base, truth = fleet
    for host in HOSTS:
        [m] = [json.loads(p.read_text()) for p in (base / "own" / host / "runs").glob("*.json")]
        assert (m["host"], m["status"]) == (host, "complete")
        hosts = duckdb.sql(f"select distinct host from read_parquet("
                           f"'{base}/own/{host}/*/*/*.parquet', union_by_name = true)").fetchall()
        assert hosts == [(host,)]


def host_rows(text):
    """The HOSTS section of a text report: {host: [numbers]}."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("HOSTS ("))
    rows = {}
    for line in lines[start + 2:]:
        if not line.strip():
            break
        name, *numbers = line.rsplit(None, 12)     # host, then 12 numbers
        rows[name.strip()] = [int(n.replace(",", "")) for n in numbers]
    return rows


def run_cli(*args):
    p = subprocess.run([sys.executable, "-m", "tracer", *args], capture_output=True, text=True,
                       timeout=120, cwd=ROOT, stdin=subprocess.DEVNULL)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    return p.stdout


def test_report_per_host_rows_are_the_parts_and_add_up(fleet):
    base, truth = fleet
    for layout in ("fleet", "flat"):
        rows = host_rows(run_cli("report", str(base / layout)))
        assert set(rows) == {*HOSTS, "all hosts"}
        for host, t in truth.items():
            # runs, connects, established, refused, timeout, error, listeners,
            # dropped, SYNs dropped, accepts, lost events, unwritten
            runs, connects, *_, dropped, syn_dropped, _accepts, lost, _ = rows[host]
            [alone] = summarize(read_recording(base / "own" / host)).hosts
            assert rows[host] == [alone.runs, alone.connects, alone.established, alone.refused,
                                  alone.timeout, alone.error, alone.listeners, alone.drops,
                                  alone.syn_drops, alone.accepts, alone.lost_events,
                                  alone.dropped_rows]
            assert (runs, lost) == (1, 0)
            assert connects == sum(t["connects"].values())      # every connect() the test made
            assert dropped + syn_dropped == t["dropped"]         # the namespace's ListenOverflows
        assert rows["all hosts"] == [sum(c) for c in zip(*(rows[h] for h in HOSTS))]


def test_duckdb_fleet_figures_are_the_sum_of_the_parts(fleet, monkeypatch):
    base, truth = fleet
    q = ("select host, count(*) from read_parquet('{}/**/connects/*/*.parquet', "
         "union_by_name = true) group by host order by host")
    parts = {}
    for host in HOSTS:
        parts.update(dict(duckdb.sql(q.format(base / "own" / host)).fetchall()))
    assert parts == {h: sum(t["connects"].values()) for h, t in truth.items()}
    for layout in ("fleet", "flat"):
        assert dict(duckdb.sql(q.format(base / layout)).fetchall()) == parts
        # the README's query, as written, where 'fleet/' is this layout
        where = base / f"run-{layout}"
        where.mkdir(exist_ok=True)
        if not (where / "fleet").exists():
            (where / "fleet").symlink_to(base / layout)
        monkeypatch.chdir(where)
        rows = duckdb.sql(sql_block(FLEET_QUERY)).fetchall()
        got = {(h, netns, port): d + s for h, netns, _, port, _, d, s, *_ in rows}
        assert got == {(h, t["netns"], t["listener"]): t["dropped"] for h, t in truth.items()}
        worst = max(truth, key=lambda h: truth[h]["dropped"])
        assert rows[0][0] == worst


def test_replay_host_keeps_one_host(fleet):
    from tracer.replay import load

    base, truth = fleet
    for host, t in truth.items():
        timeline = load(base / "fleet", host)
        assert timeline.header.host == host
        rows = sum(r.tables["connects"].table.num_rows for r in timeline.runs)
        assert rows == sum(t["connects"].values())
