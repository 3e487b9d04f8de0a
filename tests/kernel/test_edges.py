"""The connection map against a real chain on loopback: a client A that
makes bounded requests to a server B (listening on the wildcard address),
which for each request opens a connection to a server C (listening on
127.0.0.1). Each process names itself (prctl) and counts what it did:
A its connects, B its connects to C, C its accepts. `connscope record`
runs meanwhile; the recorded edges A -> B and B -> C must have exactly
those connect counts, the serving processes B and C, and A's connections
held to B at interval ends equal to the ones A held open; the report shows
both edges, in text and as a drawn graph; replay gives the rows back.
"""
from __future__ import annotations

import re
import signal
import subprocess
import sys
import time

import pytest

from tests.kernel.test_record_cli import start_recorder, wait_started
from tracer.replay.timeline import RecordingTimeline
from tracer.report.html import render_html
from tracer.report.reader import read_recording
from tracer.report.summary import summarize
from tracer.report.text import render_text

pytestmark = pytest.mark.kernel

REQUESTS = 40
HOLD = 3            # connections A keeps open to B while the recorder watches
HOLD_S = 2.0        # four interval ends at 0.5 s

_NAME = "import ctypes; ctypes.CDLL(None).prctl(15, NAME, 0, 0, 0)\n"

# A server that stops (printing its counters) when stdin closes.
_SERVE = r"""
import socket, sys, threading
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((BIND, 0))
srv.listen(64)
srv.settimeout(0.2)
counts = {"accepted": 0, "upstream": 0}
lock = threading.Lock()
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
print(srv.getsockname()[1], flush=True)
def serve(c):
    with c:
        c.settimeout(15)
        f = c.makefile("rb")
        first = f.readline()
        if not first:
            return                       # a held connection, closed by the client
        while HTTP and f.readline() not in (b"\r\n", b"\n", b""):
            pass                         # the request's headers: read, so no RST
        if UPSTREAM:
            with socket.create_connection(("127.0.0.1", UPSTREAM), timeout=10) as u:
                with lock:
                    counts["upstream"] += 1
                u.sendall(b"q\n")
                assert u.makefile("rb").readline() == b"ok\n"
        c.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nok\n" if HTTP else b"ok\n")
while not stop.is_set():
    try:
        c, _ = srv.accept()
    except socket.timeout:
        continue
    with lock:
        counts["accepted"] += 1
    threading.Thread(target=serve, args=(c,), daemon=True).start()
print(counts["accepted"], counts["upstream"], flush=True)
"""

_CLIENT = r"""
import socket, sys, time
port, n, hold, hold_s = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
made = ok = 0
held = []
for _ in range(hold):
    held.append(socket.create_connection(("127.0.0.1", port), timeout=10))
    made += 1
for _ in range(n):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        made += 1
        s.sendall(b"q\n")
        ok += s.makefile("rb").readline() == b"ok\n"
print(made, ok, flush=True)
time.sleep(hold_s)
for s in held:
    s.close()
"""


def _server(name: bytes, bind: str, upstream: int, http: bool = False
            ) -> tuple[subprocess.Popen, int]:
    code = (f"NAME = {name!r}\n{_NAME}BIND = {bind!r}\nUPSTREAM = {upstream}\nHTTP = {http}\n"
            f"{_SERVE}")
    p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    return p, int(p.stdout.readline())


def _stop(p: subprocess.Popen) -> tuple[int, int]:
    out, _ = p.communicate(timeout=15)
    accepted, upstream = out.split()
    return int(accepted), int(upstream)


def test_recorded_chain_has_the_clients_counts_and_the_servers(tmp_path):
    out = tmp_path / "rec"
    rec = start_recorder(out, "--interval", "0.5", "--duration", "60")
    procs = []
    try:
        wait_started(rec)
        c, c_port = _server(b"cs-edge-c", "127.0.0.1", 0)
        procs.append(c)
        b, b_port = _server(b"cs-edge-b", "0.0.0.0", c_port)
        procs.append(b)
        time.sleep(1.2)     # an interval end or two: the listeners' owners are scanned
        a = subprocess.Popen([sys.executable, "-c", f"NAME = b'cs-edge-a'\n{_NAME}{_CLIENT}",
                              str(b_port), str(REQUESTS), str(HOLD), str(HOLD_S)],
                             stdout=subprocess.PIPE, text=True)
        procs.append(a)
        a_out, _ = a.communicate(timeout=60)
        a_made, a_ok = map(int, a_out.split())
        b_accepted, b_connects = _stop(b)
        c_accepted, _ = _stop(c)
        time.sleep(1.2)     # the closing intervals
        rec.send_signal(signal.SIGINT)
        _, err = rec.communicate(timeout=60)
        assert rec.returncode == 0, err
    finally:
        for p in (*procs, rec):
            if p.poll() is None:
                p.kill()
                p.wait(10)

    # the processes' own counts agree with each other
    assert (a_made, a_ok) == (REQUESTS + HOLD, REQUESTS)
    assert b_accepted == a_made and b_connects == c_accepted == REQUESTS

    data = read_recording(out)
    edges = data.tables["edges"].to_pylist()
    ab = [r for r in edges if r["pid"] == a.pid and r["dport"] == b_port]
    bc = [r for r in edges if r["pid"] == b.pid and r["dport"] == c_port]
    assert ab and bc, [r for r in edges if r["pid"] in (a.pid, b.pid)]
    # every connect, counted once, in some interval
    assert sum(r["connects"] for r in ab) == sum(r["connected"] for r in ab) == a_made
    assert sum(r["connects"] for r in bc) == sum(r["connected"] for r in bc) == b_connects
    assert {r["comm"] for r in ab} == {"cs-edge-a"} and {r["comm"] for r in bc} == {"cs-edge-b"}
    # the serving processes, joined through their listeners (B's on the wildcard)
    assert {(r["server_pid"], r["server_comm"], r["listener"]) for r in ab} == \
        {(b.pid, "cs-edge-b", f"0.0.0.0:{b_port}")}
    assert {(r["server_pid"], r["server_comm"], r["listener"]) for r in bc} == \
        {(c.pid, "cs-edge-c", f"127.0.0.1:{c_port}")}
    assert all(r["listener_drops"] == 0 for r in ab + bc)
    # A holds HOLD connections through the hold (4 interval ends), never more
    # than those and the one request it has open at a time
    held = [r["established"] for r in ab]
    assert held.count(HOLD) >= 2 and max(held) <= HOLD + 1, held
    p99 = [r["connect_p99_us"] for r in ab if r["connect_p99_us"] is not None]
    assert p99 and all(0 < v < 1_000_000 for v in p99)

    # the report: both edges, ranked, in text and in the drawn graph
    s = summarize(data)
    by = {(e.pid, e.dport): e for e in s.edges}
    e_ab, e_bc = by[(a.pid, b_port)], by[(b.pid, c_port)]
    assert (e_ab.connects, e_ab.server, e_ab.established_peak) == \
        (a_made, f"cs-edge-b ({b.pid})", max(held))
    assert (e_bc.connects, e_bc.server) == (b_connects, f"cs-edge-c ({c.pid})")
    text = render_text(s)
    assert re.search(rf"cs-edge-a \({a.pid}\)\s+\S+\s+127\.0\.0\.1:{b_port}\s+"
                     rf"cs-edge-b \({b.pid}\)", text), text
    html = render_html(s)
    svg = html[html.index('<section id="edges">'):]
    svg = svg[svg.index("<svg"):svg.index("</svg>")]
    for name, pid in (("a", a.pid), ("b", b.pid), ("c", c.pid)):
        assert f"cs-edge-{name} ({pid})" in svg
    assert f"cs-edge-a ({a.pid}) -&gt; 127.0.0.1:{b_port} -&gt; cs-edge-b ({b.pid})" in svg

    # replay: the same rows in the snapshots of those intervals
    timeline = RecordingTimeline(data, out)
    replayed = sum(e.attempts for i in range(len(timeline))
                   for e in timeline.snapshot(i).edges if e.pid == a.pid)
    assert replayed == a_made
    print(f"\nA made {a_made} connects (B accepted {b_accepted}), B made {b_connects} "
          f"(C accepted {c_accepted}); recorded A->B {sum(r['connects'] for r in ab)} in "
          f"{len(ab)} intervals, B->C {sum(r['connects'] for r in bc)} in {len(bc)}; "
          f"A held {held}")


_FULL = r"""
import socket, sys
srv = socket.socket()
srv.bind(("0.0.0.0", 0))
srv.listen(1)                            # a tiny backlog, never accepted from
print(srv.getsockname()[1], flush=True)
sys.stdin.read()
"""

_BURST = r"""
import socket, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
socks = []
for _ in range(n):
    s = socket.socket()
    s.setblocking(False)
    s.connect_ex(("127.0.0.1", port))
    socks.append(s)
time.sleep(1.5)                          # the SYN (and SYN-ACK) retransmits come and go
for s in socks:
    s.close()
print(len(socks), flush=True)
"""


def _listen_drops() -> int:
    with open("/proc/net/netstat") as f:
        head, values = [line.split() for line in f if line.startswith("TcpExt:")][:2]
    return int(dict(zip(head, values))["ListenDrops"])


def test_drops_show_on_the_edge_into_the_full_listener(tmp_path):
    """A listener with backlog 1 that never accepts, and a client that opens
    BURST connects to it at once: its edge carries the listener's drops (as
    the listeners table has them, and the kernel's ListenDrops moved), and
    the report draws it red."""
    burst = 12
    out = tmp_path / "rec"
    rec = start_recorder(out, "--interval", "0.5", "--duration", "60")
    procs = []
    try:
        wait_started(rec)
        full = subprocess.Popen([sys.executable, "-c", f"NAME = b'cs-edge-full'\n{_NAME}{_FULL}"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        procs.append(full)
        port = int(full.stdout.readline())
        time.sleep(1.2)     # its owner is scanned
        before = _listen_drops()
        client = subprocess.Popen([sys.executable, "-c",
                                   f"NAME = b'cs-edge-burst'\n{_NAME}{_BURST}", str(port),
                                   str(burst)], stdout=subprocess.PIPE, text=True)
        procs.append(client)
        made = int(client.communicate(timeout=30)[0])
        time.sleep(1.2)
        dropped = _listen_drops() - before
        full.communicate(timeout=10)
        rec.send_signal(signal.SIGINT)
        _, err = rec.communicate(timeout=60)
        assert rec.returncode == 0, err
    finally:
        for p in (*procs, rec):
            if p.poll() is None:
                p.kill()
                p.wait(10)

    assert made == burst and dropped > 0
    data = read_recording(out)
    edge = [r for r in data.tables["edges"].to_pylist()
            if r["pid"] == client.pid and r["dport"] == port]
    assert sum(r["connects"] for r in edge) == burst
    assert {(r["server_pid"], r["server_comm"]) for r in edge} == {(full.pid, "cs-edge-full")}
    listener = {r["ts"]: r["drops"] for r in data.tables["listeners"].to_pylist()
                if r["lport"] == port}
    on_edge = sum(r["listener_drops"] for r in edge)
    # the edge's drops are its listener's, interval by interval
    assert all(r["listener_drops"] == listener[r["ts"]] for r in edge), (edge, listener)
    assert 0 < on_edge <= dropped, (on_edge, dropped)
    s = summarize(data)
    (e,) = [e for e in s.edges if e.pid == client.pid and e.dport == port]
    assert e.troubled and e.listener_drops == on_edge
    html = render_html(s)
    svg = html[html.index('<section id="edges">'):]
    svg = svg[svg.index("<svg"):svg.index("</svg>")]
    red = re.findall(r'<path [^>]*class="edge-red"><title>([^<]*)</title>', svg)
    assert any(f"cs-edge-burst ({client.pid})" in t for t in red), red
    print(f"\n{burst} connects into a backlog of 1: ListenDrops moved {dropped}, the edge "
          f"carries {on_edge} over {len(edge)} intervals")


def test_ab_nginx_service_chain_against_the_servers_counters(tmp_path):
    """The issue's chain with real servers: ab -> nginx (proxying, a new
    upstream connection per request) -> a Python service that queries a
    Python backend per request. The edges ab -> nginx, nginx -> service and
    service -> backend have the connect counts the servers themselves count
    (nginx's stub_status accepts, the service's and the backend's accepts)."""
    import shutil

    from tests.kernel.test_pool_advice import free_port
    from tests.kernel.test_server_counters import stub_status
    from tests.kernel.workloads import nginx_conf, run_to_end

    if shutil.which("nginx") is None or shutil.which("ab") is None:
        pytest.skip("nginx and ab are not installed (./run installs nginx-light, apache2-utils)")
    requests = 30
    out = tmp_path / "rec"
    d = tmp_path / "nginx"
    d.mkdir()
    procs = []
    rec = start_recorder(out, "--interval", "0.5", "--duration", "90")
    try:
        wait_started(rec)
        backend, backend_port = _server(b"cs-edge-db", "127.0.0.1", 0)
        procs.append(backend)
        service, service_port = _server(b"cs-edge-svc", "127.0.0.1", backend_port, http=True)
        procs.append(service)
        port = free_port()
        conf = nginx_conf(d, f"127.0.0.1:{port}").replace(
            'location / { return 200 "ok\\n"; }',
            f"location = /status {{ stub_status; }}\n"
            f"        location / {{ proxy_pass http://127.0.0.1:{service_port}; }}")
        assert "proxy_pass" in conf
        (d / "nginx.conf").write_text(conf)
        nginx = subprocess.Popen(["nginx", "-p", str(d), "-c", str(d / "nginx.conf"),
                                  "-g", "daemon off;"], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
        procs.append(nginx)     # (stopped with SIGQUIT: workers finish and leave)
        deadline = time.monotonic() + 10
        while True:
            try:
                before, _ = stub_status(port)
                break
            except OSError:
                assert time.monotonic() < deadline, "nginx did not start"
                time.sleep(0.1)
        time.sleep(1.2)     # an interval end: the listeners' owners are scanned
        ab, ab_out = run_to_end(["ab", "-q", "-n", str(requests), "-c", "1", "-s", "10",
                                 f"http://127.0.0.1:{port}/"], 60)
        after, _ = stub_status(port)
        served = after - before - 1          # less the second status request's own
        svc_accepted, svc_upstream = _stop(service)
        db_accepted, _ = _stop(backend)
        time.sleep(1.2)
        rec.send_signal(signal.SIGINT)
        _, err = rec.communicate(timeout=60)
        assert rec.returncode == 0, err
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGQUIT if p.args[0] == "nginx" else signal.SIGKILL)
                p.wait(10)
        if rec.poll() is None:
            rec.kill()
            rec.wait(10)

    done = int(re.search(r"Complete requests:\s+(\d+)", ab_out).group(1))
    assert done == requests and "Non-2xx" not in ab_out, ab_out[-1500:]
    assert svc_accepted == svc_upstream == db_accepted == requests

    edges = read_recording(out).tables["edges"].to_pylist()
    front = [r for r in edges if r["pid"] == ab.pid and r["dport"] == port]
    middle = [r for r in edges if r["comm"] == "nginx" and r["dport"] == service_port]
    back = [r for r in edges if r["pid"] == service.pid and r["dport"] == backend_port]
    assert sum(r["connects"] for r in front) == served, front
    assert sum(r["connects"] for r in middle) == svc_accepted, middle
    assert sum(r["connects"] for r in back) == db_accepted, back
    assert {r["server_comm"] for r in front} == {"nginx"}
    assert {(r["server_pid"], r["server_comm"]) for r in middle} == {(service.pid, "cs-edge-svc")}
    assert {(r["server_pid"], r["server_comm"]) for r in back} == {(backend.pid, "cs-edge-db")}
    print(f"\nab {done} requests, nginx accepted {served}, service {svc_accepted}, backend "
          f"{db_accepted}; edges: ab->nginx {sum(r['connects'] for r in front)}, "
          f"nginx->service {sum(r['connects'] for r in middle)} from "
          f"{len({r['pid'] for r in middle})} workers, service->backend "
          f"{sum(r['connects'] for r in back)}")


# A Python HTTP service in front of PostgreSQL: one thread, listen(BACKLOG),
# a slow handler, and a new database connection per request (a minimal
# PostgreSQL wire-protocol client: trust authentication, one simple query),
# counting the connections it accepted and the ones it opened to the database.
_PG_SERVICE = r"""
import socket, struct, sys, threading, time
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", 0))
srv.listen(BACKLOG)
srv.settimeout(0.2)
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
print(srv.getsockname()[1], flush=True)
accepted = db_connects = 0

def query(sql):
    global db_connects
    with socket.create_connection(("127.0.0.1", PG_PORT), timeout=10) as s:
        db_connects += 1
        f = s.makefile("rb")
        def message():
            kind, (n,) = f.read(1), struct.unpack("!i", f.read(4))
            body = f.read(n - 4)
            assert kind != b"E", body
            return kind, body
        params = b"user\0postgres\0database\0postgres\0application_name\0cs-edge-svc\0\0"
        s.sendall(struct.pack("!ii", 8 + len(params), 196608) + params)
        while message()[0] != b"Z":
            pass                                   # authentication ok, parameters
        s.sendall(b"Q" + struct.pack("!i", 5 + len(sql)) + sql + b"\0")
        value = None
        while (m := message())[0] != b"Z":
            if m[0] == b"D":                       # one row, one column
                (n,) = struct.unpack("!i", m[1][2:6])
                value = m[1][6:6 + n]
        s.sendall(b"X\0\0\0\4")
        return value

while not stop.is_set():
    try:
        c, _ = srv.accept()
    except socket.timeout:
        continue
    accepted += 1
    with c:
        c.settimeout(15)
        f = c.makefile("rb")
        while f.readline() not in (b"\r\n", b"\n", b""):
            pass                                   # the request and its headers
        time.sleep(SLOW_S)                         # slow: the accept queue fills
        body = query(b"select 40 + 2") + b"\n"
        c.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
print(accepted, db_connects, flush=True)
"""


def _netstat(name: str) -> int:
    with open("/proc/net/netstat") as f:
        head, values = [line.split() for line in f if line.startswith("TcpExt:")][:2]
    return int(dict(zip(head, values))[name])


class _Postgres:
    """A PostgreSQL cluster of its own (as test_pool_advice's fixture: a
    temporary directory owned by postgres, 127.0.0.1, a free port) that logs
    every connection it authorizes: its own count of the service's sessions."""

    def __init__(self, tmp_path):
        from tests.kernel.test_pool_advice import PG_BIN, free_port, wait_port

        if not (PG_BIN / "postgres").exists():
            pytest.skip("PostgreSQL is not installed (./run installs postgresql)")
        import shutil
        import tempfile
        from pathlib import Path

        self.data = Path(tempfile.mkdtemp(prefix="connscope-pg-"))
        shutil.chown(self.data, "postgres", "postgres")
        as_pg = ["runuser", "-u", "postgres", "--"]
        subprocess.run([*as_pg, str(PG_BIN / "initdb"), "-D", str(self.data / "db"), "-A",
                        "trust", "-U", "postgres"], check=True, capture_output=True, timeout=120)
        self.port = free_port()
        self.log = tmp_path / "postgres.log"
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                [*as_pg, str(PG_BIN / "postgres"), "-D", str(self.data / "db"), "-p",
                 str(self.port), "-c", "listen_addresses=127.0.0.1",
                 "-c", f"unix_socket_directories={self.data}", "-c", "max_connections=40",
                 "-c", "fsync=off", "-c", "log_connections=on"],
                stdout=subprocess.DEVNULL, stderr=log)
        try:
            wait_port(self.port)
        except BaseException:
            self.close()
            raise

    def sessions(self, application: str) -> int:
        """Connections PostgreSQL authorized for this application_name."""
        return sum(f"application_name={application}" in line and "connection authorized" in line
                   for line in self.log.read_text().splitlines())

    def close(self):
        import shutil

        from tests.kernel.test_pool_advice import stop

        stop(self.proc, signal.SIGINT)      # a fast shutdown
        shutil.rmtree(self.data, ignore_errors=True)


def test_ab_nginx_service_postgres_chain_with_a_tiny_backlog_in_the_middle(tmp_path):
    """The issue's verification chain: ab -> nginx (one worker, a new upstream
    connection per request) -> a Python service (listen(1), one request at a
    time, slowly) -> PostgreSQL (a new session per request). The edges carry
    the connects each server counted itself (nginx's stub_status, the
    service's accepts and database connects, PostgreSQL's authorized
    connections in its log), the right serving processes, and the middle
    service's accept-queue drops on the nginx -> service edge only (those of
    every interval the edge has a row in), and on its listener as many as the
    kernel's ListenOverflows moved."""
    import shutil

    from tests.kernel.test_pool_advice import free_port
    from tests.kernel.test_server_counters import stub_status
    from tests.kernel.workloads import nginx_conf, run_to_end

    if shutil.which("nginx") is None or shutil.which("ab") is None:
        pytest.skip("nginx and ab are not installed (./run installs nginx-light, apache2-utils)")
    requests, concurrency = 40, 10
    out = tmp_path / "rec"
    d = tmp_path / "nginx"
    d.mkdir()
    procs = []
    pg = _Postgres(tmp_path)
    rec = start_recorder(out, "--interval", "0.5", "--duration", "150")
    try:
        wait_started(rec)
        code = (f"NAME = b'cs-edge-svc'\n{_NAME}BACKLOG = 1\nSLOW_S = 0.05\n"
                f"PG_PORT = {pg.port}\n{_PG_SERVICE}")
        service = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, text=True)
        procs.append(service)
        service_port = int(service.stdout.readline())
        port = free_port()
        conf = nginx_conf(d, f"127.0.0.1:{port}", workers=1).replace(
            'location / { return 200 "ok\\n"; }',
            f"location = /status {{ stub_status; }}\n"
            f"        location / {{ proxy_pass http://127.0.0.1:{service_port}; }}")
        assert "proxy_pass" in conf
        (d / "nginx.conf").write_text(conf)
        nginx = subprocess.Popen(["nginx", "-p", str(d), "-c", str(d / "nginx.conf"),
                                  "-g", "daemon off;"], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
        procs.append(nginx)
        deadline = time.monotonic() + 10
        while True:
            try:
                before, _ = stub_status(port)
                break
            except OSError:
                assert time.monotonic() < deadline, "nginx did not start"
                time.sleep(0.1)
        time.sleep(1.2)     # interval ends: the listeners' owners and sk_drops are read
        overflows = _netstat("ListenOverflows")
        sessions = pg.sessions("cs-edge-svc")
        ab, ab_out = run_to_end(["ab", "-q", "-n", str(requests), "-c", str(concurrency),
                                 "-s", "60", f"http://127.0.0.1:{port}/"], 120)
        after, _ = stub_status(port)
        served = after - before - 1          # less the second status request's own
        svc_accepted, svc_db = map(int, service.communicate("", timeout=30)[0].split())
        time.sleep(1.2)     # the closing intervals (the listener's last sk_drops)
        overflows = _netstat("ListenOverflows") - overflows
        sessions = pg.sessions("cs-edge-svc") - sessions
        rec.send_signal(signal.SIGINT)
        _, err = rec.communicate(timeout=60)
        assert rec.returncode == 0, err
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGQUIT if p.args[0] == "nginx" else signal.SIGKILL)
                p.wait(10)
        if rec.poll() is None:
            rec.kill()
            rec.wait(10)
        pg.close()

    done = int(re.search(r"Complete requests:\s+(\d+)", ab_out).group(1))
    assert done == requests and "Non-2xx" not in ab_out, ab_out[-1500:]
    # the servers' own counts agree with each other; the backlog overflowed
    assert served == svc_accepted == svc_db == sessions == requests, \
        (served, svc_accepted, svc_db, sessions)
    assert overflows > 0

    data = read_recording(out)
    edges = data.tables["edges"].to_pylist()
    front = [r for r in edges if r["pid"] == ab.pid and r["dport"] == port]
    middle = [r for r in edges if r["comm"] == "nginx" and r["dport"] == service_port]
    back = [r for r in edges if r["pid"] == service.pid and r["dport"] == pg.port]
    assert sum(r["connects"] for r in front) == served, front
    assert sum(r["connects"] for r in middle) == svc_accepted, middle
    assert sum(r["connects"] for r in back) == sessions, back
    assert {r["server_comm"] for r in front} == {"nginx"}
    assert {(r["server_pid"], r["server_comm"]) for r in middle} == {(service.pid, "cs-edge-svc")}
    assert {r["server_comm"] for r in back} == {"postgres"}
    # the drops: on the edge into the tiny backlog, interval by interval as
    # its listener has them, in all as many as the kernel counted; none on the
    # edges into nginx and PostgreSQL
    listener = {}
    for r in data.tables["listeners"].to_pylist():
        if r["lport"] == service_port:
            listener[r["ts"]] = listener.get(r["ts"], 0) + r["drops"]
    assert len({r["pid"] for r in middle}) == 1      # one worker: one edge per interval
    assert all(r["listener_drops"] == listener[r["ts"]] for r in middle), (middle, listener)
    on_edge = sum(r["listener_drops"] for r in middle)
    # An edge has a row in an interval only with connects made or connections
    # held in it; drops in an interval with neither are the listener's, on no
    # edge (once in CI: 2 of 25, in the interval after the edge's last row).
    # The listener has every one the kernel counted, and the edge every one
    # of the intervals it has a row in.
    off_edge = {ts: n for ts, n in listener.items() if n and ts not in {r["ts"] for r in middle}}
    assert sum(listener.values()) == overflows, (listener, overflows)
    assert 0 < on_edge == overflows - sum(off_edge.values()), (on_edge, off_edge, overflows)
    assert all(r["listener_drops"] == 0 for r in front + back), front + back
    print(f"\nab {done} requests (-c {concurrency}), nginx accepted {served}, the service "
          f"{svc_accepted} and made {svc_db} database connects, PostgreSQL authorized "
          f"{sessions}; edges: ab->nginx {sum(r['connects'] for r in front)}, nginx->service "
          f"{sum(r['connects'] for r in middle)} with {on_edge} drops ({sum(off_edge.values())} in "
          f"intervals without its row; ListenOverflows moved "
          f"{overflows}), service->postgres {sum(r['connects'] for r in back)}")
