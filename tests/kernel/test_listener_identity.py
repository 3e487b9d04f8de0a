"""Listener identity and drop exactness against the kernel's own counters:
SO_REUSEPORT groups (nginx, reloaded), two namespaces on one address, the
ACK-time / SYN-time split, accepts begun before the tracer, and the
handshakes map that must not keep entries for connections it will never see
accepted."""
import os
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time

import pyarrow as pa
import pytest

from tests.kernel.netlab import delayed_link, netns_counters, socket_in
from tests.kernel.test_listeners import flood_in, private_netns
from tests.kernel.workloads import nginx_conf
from tracer.domain.listeners import key_of_row
from tracer.filters import Filters
from tracer.replay.rows import listener_rows
from tracer.report.listeners import listener_stats
from tracer.schema import schema
from tracer.sinks.recorder import listener_row, overflow_row

pytestmark = pytest.mark.kernel

def _write(path, text):
    with open(path, "w") as f:   # net sysctls belong to the opener's namespace
        f.write(text)


def overflows_in(ns):
    c = netns_counters(ns)
    return c["TcpExt.ListenOverflows"]


def ss_listeners(ns, port):
    out = subprocess.run(["ip", "netns", "exec", ns, "ss", "-ltnH", f"sport = :{port}"],
                         capture_output=True, text=True, timeout=10).stdout
    return [line.split() for line in out.splitlines() if line.strip()]


def test_reuseport_group_reloaded_drops_equal_listen_overflows(collector_run):
    if not shutil.which("nginx") and not os.path.exists("/usr/sbin/nginx"):
        pytest.skip("nginx is not installed (Debian package nginx-light)")
    if not shutil.which("ab"):
        pytest.skip("ab is not installed (Debian package apache2-utils)")
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    port = 8080
    with private_netns() as (ns, inode), tempfile.TemporaryDirectory() as d:
        conf = os.path.join(d, "nginx.conf")
        with open(conf, "w") as f:
            f.write(nginx_conf(d, f"127.0.0.1:{port} reuseport backlog=8", connections=2048))

        def ctl(*args):
            subprocess.run(["ip", "netns", "exec", ns, nginx, "-c", conf, "-p", d, *args],
                           check=True, timeout=20, capture_output=True)

        def ab():
            # bounded: 3000 requests, 5 s per request at most, 60 s in all
            subprocess.run(["ip", "netns", "exec", ns, "ab", "-q", "-r", "-s", "5",
                            "-c", "500", "-n", "3000", f"http://127.0.0.1:{port}/"],
                           capture_output=True, timeout=60)

        ctl()
        try:
            deadline = time.monotonic() + 5
            while len(ss_listeners(ns, port)) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert len(ss_listeners(ns, port)) == 2, "nginx did not open a reuseport group of 2"
            before = overflows_in(ns)
            with collector_run(0.5) as run:
                ab()
                time.sleep(1.0)
                ctl("-s", "reload")
                time.sleep(1.5)        # the old workers go, the group is re-made
                ab()
                time.sleep(1.5)        # SYN retransmits of the last clients are over
            after = overflows_in(ns)
        finally:
            try:
                ctl("-s", "stop")
            except subprocess.SubprocessError:
                pass
            time.sleep(0.5)
    rows = [r for s in run.snapshots for r in s.listeners if r.lport == port and r.netns == inode]
    assert rows, "listener never reported"
    kernel = after - before
    assert kernel > 0, "ab did not overflow the accept queues"
    print(f"reuseport: ListenOverflows moved by {kernel}, overflow rows sum to "
          f"{sum(r.drops + r.syn_drops for r in rows)}")
    assert all(r.drops >= 0 and r.syn_drops >= 0 for r in rows)
    assert sum(r.drops + r.syn_drops for r in rows) == kernel
    # one key, one row per interval: the members are summed, never listed apart
    per_interval = [sum(1 for r in s.listeners if r.lport == port and r.netns == inode)
                    for s in run.snapshots]
    assert max(per_interval) == 1


def test_two_namespaces_on_one_address_stay_two_listeners(collector_run):
    """Live, the recorded rows, replay and report: one address in two
    namespaces is two listeners, and the drops stay with the one that had
    them."""
    with private_netns() as (ns_a, ino_a), private_netns() as (ns_b, ino_b):
        servers = []
        for ns in (ns_a, ns_b):
            s = socket_in(ns)
            s.bind(("127.0.0.1", 8080))
            s.listen(2)
            servers.append(s)
        before = overflows_in(ns_a), overflows_in(ns_b)
        with collector_run(0.5) as run:
            socks = flood_in(ns_a, "127.0.0.1", 8080, 20)
            calm = [socket_in(ns_b) for _ in range(2)]
            for c in calm:
                c.connect(("127.0.0.1", 8080))
            time.sleep(2.2)
            for c in socks + calm:
                c.close()
            time.sleep(0.7)
        after = overflows_in(ns_a), overflows_in(ns_b)
        for s in servers:
            s.close()
    rows = [r for s in run.snapshots for r in s.listeners if r.lport == 8080]
    live = {}
    for r in rows:
        live[r.netns] = live.get(r.netns, 0) + r.drops + r.syn_drops
    assert set(live) >= {ino_a, ino_b}
    assert live[ino_a] == after[0] - before[0] > 0
    assert live[ino_b] == after[1] - before[1] == 0

    # As recorded, then replayed and reported.
    ts = 1_700_000_000_000_000
    lis_rows, ovf_rows = [], []
    for i, snap in enumerate(run.snapshots):
        for r in snap.listeners:
            if r.lport != 8080:
                continue
            lis_rows.append(dict(listener_row(r, ts + i * 500_000), host="h", run_id="r"))
            if r.drops or r.syn_drops:
                ovf_rows.append(dict(overflow_row(r, ts + i * 500_000, 0.5), host="h",
                                     run_id="r"))
    replayed = listener_rows(lis_rows, ovf_rows, [], 0.5, {})
    assert {r.netns for r in replayed} == {ino_a, ino_b}
    assert len({key_of_row(r) for r in replayed}) == 2
    # and the labels every view shows tell them apart, live and replayed
    both = [[r for r in s.listeners if r.lport == 8080] for s in run.snapshots]
    both = [rs for rs in both if {r.netns for r in rs} == {ino_a, ino_b}]
    assert both and all(len({r.label for r in rs}) == 2 for rs in both)
    assert {r.label for r in replayed} == {f"127.0.0.1:8080 netns {ino_a}",
                                           f"127.0.0.1:8080 netns {ino_b}"}
    tables = {}
    for name, rs in (("listeners", lis_rows), ("overflows", ovf_rows), ("accepts", [])):
        sch = schema(name)
        tables[name] = pa.Table.from_pylist(
            [{f.name: r.get(f.name) for f in sch} for r in rs], schema=sch)
    report = {s.netns: s for s in listener_stats(tables["listeners"], tables["overflows"],
                                                  tables["accepts"], 60_000_000)}
    assert set(report) == {ino_a, ino_b}
    assert report[ino_a].total_drops == live[ino_a]
    assert report[ino_b].total_drops == 0
    assert report[ino_a].label != report[ino_b].label     # the namespace tells them apart


@pytest.mark.parametrize("syncookies", [0, 2], ids=["request-socket", "syn-cookie"])
def test_ack_time_and_syn_time_drops_split_as_the_kernel_did(collector_run, syncookies):
    """Three waves of 4 connects (50 ms each way) to a listen(4) socket. The
    first fills the queue to 4; the second's handshakes (a request socket
    each, or a SYN cookie each) finish into it: one fits, the rest overflow
    at ACK time, exactly the clients `ss` does not show queued. The third
    meets the full queue with its SYNs: SYN-time drops, the rest of
    ListenOverflows. The listener closes before any retransmit, so nothing
    else happens. On the tracepoint backend the split comes from sk_drops,
    which counts a request-socket overflow twice and a cookie one once:
    passing one kind as the other fails here."""
    # The third wave must reach the listener (50 ms) before it closes at
    # 0.9 s; in a slow guest (TCG) the `ss` and counter reads between the
    # waves can take most of that. A run that missed the timing proves
    # nothing either way: it is run again, three times at most.
    for attempt in range(3):
        late, got = _split_run(collector_run, syncookies)
        if not late:
            break
        print(f"attempt {attempt + 1}: third wave sent {late:.2f} s after the first; again")
    else:
        pytest.fail("the third wave could not be sent in time in three attempts")
    ack_time, queued, total, drops, syn_drops, cookie_drops = got
    assert ack_time == 8 - queued > 0, "the second wave did not overflow at ACK time"
    assert total > ack_time, "the third wave's SYNs were not dropped"
    assert (drops, syn_drops) == (ack_time, total - ack_time)
    assert cookie_drops == (ack_time if syncookies == 2 else 0)


def accept_queue_length(listener: socket.socket) -> int:
    """The kernel's accept-queue length of a listening socket (sk_ack_backlog,
    ss's Recv-Q), from TCP_INFO: a listener's tcpi_unacked holds it. Read
    in-process because a forked `ss` took a good part of the split test's
    0.9 s budget in TCG guests."""
    info = listener.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    return struct.unpack_from("<8B5I", info)[12]


def test_accept_queue_length_is_what_ss_shows():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    port = srv.getsockname()[1]
    clients = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(3)]
    try:
        out = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True,
                             text=True, timeout=10).stdout.split()
        assert accept_queue_length(srv) == int(out[1]) == 3
    finally:
        for s in clients + [srv]:
            s.close()


def _split_run(collector_run, syncookies):
    """One run of the three waves: (seconds late, or 0 if the third wave
    left in time; the kernel's and connscope's figures)."""
    with delayed_link(delay_ms=50) as link:
        link.run_in(link.ns_server, _write, "/proc/sys/net/ipv4/tcp_syncookies", str(syncookies))
        srv = socket_in(link.ns_server)
        srv.bind((link.server_ip4, 0))
        srv.listen(4)
        port = srv.getsockname()[1]
        clients = []

        def wave():
            for _ in range(4):
                c = socket_in(link.ns_client)
                c.setblocking(False)
                c.connect_ex((link.server_ip4, port))
                clients.append(c)

        before = link.counters(link.ns_server)["TcpExt.ListenOverflows"]
        with collector_run(0.5) as run:
            t0 = time.monotonic()
            wave()
            time.sleep(0.2)
            wave()
            time.sleep(0.25)          # its handshakes are done
            queued = accept_queue_length(srv)     # what `ss` shows as Recv-Q, no fork
            ack_time = link.counters(link.ns_server)["TcpExt.ListenOverflows"] - before
            sent = time.monotonic() - t0
            wave()
            time.sleep(max(0.0, 0.9 - (time.monotonic() - t0)))
            srv.close()               # before the first retransmit (SYN-ACK or SYN, 1 s)
            time.sleep(0.2)
            total = link.counters(link.ns_server)["TcpExt.ListenOverflows"] - before
            for c in clients:
                c.close()
            time.sleep(0.7)
    rows = [r for s in run.snapshots for r in s.listeners if r.lport == port]
    figures = (ack_time, queued, total, sum(r.drops for r in rows),
               sum(r.syn_drops for r in rows), sum(r.cookie_drops for r in rows))
    # the third wave's SYNs need 50 ms to arrive, and some margin before 0.9 s
    return (sent if sent > 0.7 else 0.0), figures


def test_drops_of_a_listener_closed_before_its_last_read(collector_run):
    """Issue 14 item 6 (410 of 411): a listener that closes between two reads
    of the socket table takes its last SYN drops with it, unless they are
    kept when it closes. Here every drop falls in that gap: one long
    interval, the listener closed inside it."""
    with private_netns() as (ns, inode):
        srv = socket_in(ns)
        srv.bind(("127.0.0.1", 0))
        srv.listen(2)
        port = srv.getsockname()[1]
        before = overflows_in(ns)
        with collector_run(5.0) as run:
            socks = flood_in(ns, "127.0.0.1", port, 30)
            time.sleep(1.3)            # the first SYN retransmits hit the full queue too
            srv.close()
            time.sleep(0.2)
            after = overflows_in(ns)
            for c in socks:
                c.close()
    rows = [r for s in run.snapshots for r in s.listeners if r.lport == port and r.netns == inode]
    assert after - before > 0
    assert sum(r.drops + r.syn_drops for r in rows) == after - before


BLOCKED_ACCEPTOR = r"""
import socket, sys
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(8)
print(s.getsockname()[1], flush=True)
c, _ = s.accept()            # blocked here before the tracer starts
print("accepted", flush=True)
sys.stdin.readline()
"""


def _session(filters):
    from tracer.probes import startup
    return startup.start(os.environ.get("CONNSCOPE_TEST_BACKEND", "auto"), filters)


def test_accept_blocked_since_before_start_is_seen():
    import sys
    proc = subprocess.Popen([sys.executable, "-c", BLOCKED_ACCEPTOR], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline())
        time.sleep(0.3)                     # blocked in accept()
        session = _session(Filters())
        if session.info.backend != "tracepoint":
            session.close()
            pytest.skip("kretprobe and fexit are armed when the function is entered: a call "
                        "already blocked when they attach returns through neither (measured "
                        "in the 6.1 guest); only the syscall tracepoints see its return")
        try:
            c = socket.create_connection(("127.0.0.1", port), timeout=5)
            client_port = c.getsockname()[1]
            assert proc.stdout.readline().strip() == "accepted"
            seen, deadline = [], time.monotonic() + 5
            while time.monotonic() < deadline and not seen:
                seen = [e for e in session.poll(50) if getattr(e, "lport", None) == port
                        and hasattr(e, "queue_wait_us")]
            c.close()
        finally:
            session.close()
        assert len(seen) == 1, "the accept of a thread blocked before start was dropped"
        assert seen[0].pid == proc.pid
        assert seen[0].rport == client_port
    finally:
        proc.kill()
        proc.wait(5)


def test_handshake_entries_do_not_outlive_accepts_of_filtered_out_processes():
    """--pid selects someone else: our accepts are not traced, but the
    handshake entries of our connections must still go when we accept them
    (they used to stay as long as the connection: 64k long-lived inbound
    connections and accept waits were lost for everyone)."""
    other = subprocess.Popen(["sleep", "30"])
    session = _session(Filters(pids=frozenset({other.pid})))
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(256)
    port = srv.getsockname()[1]
    clients, conns = [], []
    try:
        for _ in range(200):
            clients.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        for _ in range(200):
            conns.append(srv.accept()[0])
        time.sleep(0.2)
        left = len(session._prog.maps["handshakes"])
        assert left < 20, f"{left} handshake entries left for 200 accepted connections"
    finally:
        for s in clients + conns + [srv]:
            s.close()
        session.close()
        other.kill()
        other.wait(5)
