"""Accept queues against the kernel's own counters (/proc/net/netstat
ListenOverflows, ListenDrops), `ss`, and timestamps the test takes."""
import itertools
import os
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest
from contextlib import contextmanager

from tests.kernel.netlab import netns_counters, socket_in

pytestmark = pytest.mark.kernel


def netstat():
    lines = open("/proc/net/netstat").read().splitlines()
    for head, vals in zip(lines[::2], lines[1::2]):
        if head.startswith("TcpExt:"):
            d = dict(zip(head.split()[1:], map(int, vals.split()[1:])))
            return d["ListenOverflows"], d["ListenDrops"]
    raise AssertionError("no TcpExt in /proc/net/netstat")


def flood(addr, port, n, family=socket.AF_INET, threads=5):
    """n non-blocking connects from several threads; sockets kept open (and
    returned) so that their SYN retransmits keep arriving at the full queue."""
    return flood_in(None, addr, port, n, family, threads)


def ss_recv_q(port):
    out = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True,
                         timeout=10).stdout.split()
    return int(out[1])


def listener(addr="127.0.0.1", backlog=4, family=socket.AF_INET):
    s = socket.socket(family)
    s.bind((addr, 0))
    s.listen(backlog)
    return s, s.getsockname()[1]


@contextmanager
def private_netns():
    """A network namespace of our own: its ListenOverflows and ListenDrops
    count only this test's traffic, whatever else runs on the machine."""
    name = f"cs-lst-{os.getpid()}-{next(_ns_seq)}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=10)
    try:
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"],
                       check=True, timeout=10)
        yield name, os.stat(f"/run/netns/{name}").st_ino
    finally:
        subprocess.run(["ip", "netns", "del", name], timeout=10)


_ns_seq = itertools.count()


def ns_netstat(ns):
    c = netns_counters(ns)
    return c["TcpExt.ListenOverflows"], c["TcpExt.ListenDrops"]


def flood_in(ns, addr, port, n, family=socket.AF_INET, threads=5):
    socks, lock = [], threading.Lock()

    def work(k):
        mine = []
        for _ in range(k):
            s = socket_in(ns, family)
            s.setblocking(False)
            s.connect_ex((addr, port))
            mine.append(s)
        with lock:
            socks.extend(mine)

    ts = [threading.Thread(target=work, args=(n // threads,)) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(10)
    return socks


def drops_from_sk_drops(info) -> bool:
    """The tracepoint backend where skb:kfree_skb lacks rx_sk or the
    TCP_LISTEN_OVERFLOW reason (before 6.15): its drops come from sk_drops,
    which counts an ACK-time overflow twice and a SYN-time one once, and
    every drop counts as a SYN drop (doctor: NOT exact)."""
    return info.backend == "tracepoint" and not info.drop_split


def test_overflow_matches_listen_overflows_and_drops(probe_session, collector_run):
    with private_netns() as (ns, inode):
        srv = socket_in(ns)
        srv.bind(("127.0.0.1", 0))
        srv.listen(4)
        port = srv.getsockname()[1]
        before = ns_netstat(ns)
        with collector_run(0.5) as run:
            socks = flood_in(ns, "127.0.0.1", port, 50)
            time.sleep(3.2)       # SYN retransmits at 1, 2, 3 s keep hitting the full queue
            recv_q = int(subprocess.run(["ip", "netns", "exec", ns, "ss", "-ltnH",
                                         f"sport = :{port}"], capture_output=True, text=True,
                                        timeout=10).stdout.split()[1])
            for s in socks:       # no more SYN retransmits after this...
                s.close()
            time.sleep(0.6)       # ...and one more interval sees the last drops
        after = ns_netstat(ns)
        srv.close()
    rows = [r for r in run.listener_rows(port) if r.netns == inode]
    assert rows, "listener never reported"
    drops = sum(r.drops for r in rows)
    syn_drops = sum(r.syn_drops for r in rows)
    overflows, listen_drops = after[0] - before[0], after[1] - before[1]
    assert overflows > 0, "the test did not overflow the queue"
    # The namespace is ours alone, so the whole delta is this listener's.
    if drops_from_sk_drops(probe_session.info):
        # 144 for 138 once in a guest, when some handshakes finished into
        # the full queue.
        assert overflows <= drops + syn_drops <= 2 * overflows, (drops, syn_drops, overflows)
    else:
        assert drops + syn_drops == overflows
        assert drops + syn_drops == listen_drops
    # The kernel's limit is backlog + 1 = 5. Its fullness check is not taken
    # under the queue's lock, so handshakes finishing on several CPUs at once
    # can each pass it: seen once in the 2-CPU guest, a queue of 6 that `ss`
    # then showed too. So: at least the limit, at most one extra per other
    # CPU, and the tracer agrees with `ss` at rest.
    peak = max(r.queue_peak for r in rows)
    assert 5 <= peak <= 4 + (os.cpu_count() or 1)
    assert {r.backlog_max for r in rows} == {4}
    assert rows[-1].queue_len == recv_q
    assert recv_q >= 5 and peak >= recv_q


def test_two_listeners_only_one_overflowing(collector_run):
    busy, busy_port = listener(backlog=2)
    calm, calm_port = listener(backlog=64)
    with collector_run(0.5) as run:
        a = flood("127.0.0.1", busy_port, 20)
        b = flood("127.0.0.1", calm_port, 20)
        time.sleep(2.0)
    for s in a + b:
        s.close()
    busy_rows, calm_rows = run.listener_rows(busy_port), run.listener_rows(calm_port)
    assert sum(r.drops + r.syn_drops for r in busy_rows) > 0
    assert sum(r.drops + r.syn_drops for r in calm_rows) == 0
    assert max(r.queue_peak for r in calm_rows) == 20
    busy.close()
    calm.close()


def test_ipv6_listener_overflow(probe_session, collector_run):
    with private_netns() as (ns, inode):
        srv = socket_in(ns, socket.AF_INET6)
        srv.bind(("::1", 0))
        srv.listen(3)
        port = srv.getsockname()[1]
        before = ns_netstat(ns)
        with collector_run(0.5) as run:
            socks = flood_in(ns, "::1", port, 30, family=socket.AF_INET6)
            time.sleep(2.5)
            for s in socks:
                s.close()
            time.sleep(0.6)
        after = ns_netstat(ns)
        srv.close()
    rows = [r for r in run.listener_rows(port) if r.netns == inode]
    assert rows and all(r.family == 6 and r.laddr == "::1" for r in rows)
    counted, overflows = sum(r.drops + r.syn_drops for r in rows), after[0] - before[0]
    assert overflows > 0, "the test did not overflow the queue"
    if drops_from_sk_drops(probe_session.info):
        # sk_drops counts a handshake finished into the full queue twice: 62
        # for 56 in the bullseye guest (CI of ff7600b), as the IPv4 test allows
        assert overflows <= counted <= 2 * overflows, (counted, overflows)
    else:
        assert counted == overflows


def test_queue_wait_is_time_spent_in_the_queue(collector_run):
    srv, port = listener(backlog=16)
    connected_at = {}
    with collector_run(0.5) as run:
        early = []
        for _ in range(3):
            c = socket.create_connection(("127.0.0.1", port))
            connected_at[c.getsockname()[1]] = time.monotonic_ns()
            early.append(c)
        time.sleep(2.0)
        accepted_at = {}
        for _ in range(3):
            conn, peer = srv.accept()
            accepted_at[peer[1]] = time.monotonic_ns()
            conn.close()
        # Later connections are accepted as soon as they arrive.
        late = []
        for _ in range(3):
            c = socket.create_connection(("127.0.0.1", port))
            conn, peer = srv.accept()
            accepted_at[peer[1]] = time.monotonic_ns()
            connected_at[peer[1]] = connected_at.get(peer[1], accepted_at[peer[1]])
            late.append(c)
            conn.close()
        time.sleep(0.7)
    early_ports = [c.getsockname()[1] for c in early]
    late_ports = [c.getsockname()[1] for c in late]
    for c in early + late:
        c.close()
    srv.close()
    accepts = {e.rport: e for e in run.events if getattr(e, "lport", None) == port
               and hasattr(e, "queue_wait_us")}
    assert len(accepts) == 6
    for sport in early_ports:
        ev = accepts[sport]
        expected_us = (accepted_at[sport] - connected_at[sport]) / 1000
        assert ev.pid == os.getpid()
        assert ev.queue_wait_us == pytest.approx(expected_us, abs=20_000)
        assert ev.queue_wait_us > 1_900_000
    for sport in late_ports:
        assert accepts[sport].queue_wait_us < 20_000
    assert accepts[early_ports[0]].backlog_len == 3
    assert {e.backlog_max for e in accepts.values()} == {16}


@pytest.mark.parametrize("addr", ["127.0.0.1", "::1"], ids=["ipv4", "ipv6"])
def test_accept_of_a_connection_reset_in_the_queue_keeps_its_port(collector_run, addr):
    # A client that gives up (here: an RST, SO_LINGER 0) while its connection
    # waits in the accept queue leaves the child in CLOSE, and CLOSE gives the
    # port back: the kernel zeroes the child's skc_num. accept() still returns
    # it, and getsockname() still says the listener's port. Read from skc_num,
    # these accepts had port 0 (82 of 189,328 in a ceiling step at 48,000/s
    # asked) and made a listener ":0" of their own in the live view.
    srv, port = listener(addr, backlog=16, family=socket.AF_INET6 if ":" in addr else socket.AF_INET)
    n = 5
    with collector_run(0.5) as run:
        clients = [socket.create_connection((addr, port), timeout=5) for _ in range(n)]
        reset_ports = {c.getsockname()[1] for c in clients}
        for c in clients:
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            c.close()
        time.sleep(0.2)
        # And one that is still connected when it is accepted, for contrast.
        live = socket.create_connection((addr, port), timeout=5)
        srv.settimeout(5)
        accepted = [srv.accept() for _ in range(n + 1)]
        time.sleep(1.2)
    names = {peer[1]: conn.getsockname()[1] for conn, peer in accepted}
    for conn, _ in accepted:
        conn.close()
    live_port = live.getsockname()[1]
    live.close()
    srv.close()
    # Ground truth: the kernel's own answer for each accepted socket.
    assert set(names) == reset_ports | {live_port}
    assert set(names.values()) == {port}
    accepts = [e for e in run.events if hasattr(e, "queue_wait_us")
               and e.rport in names and e.pid == os.getpid()]
    assert len(accepts) == n + 1
    assert {e.lport for e in accepts} == {port}, sorted((e.rport, e.lport) for e in accepts)
    assert {e.laddr for e in accepts} == {addr}
    rows = run.listener_rows(port)
    assert sum(r.accepts for r in rows) == n + 1
    assert not [r for s in run.snapshots for r in s.listeners if r.lport == 0 and r.family]


CHILD_LISTENER = r"""
import socket, sys, time
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(8)
print(s.getsockname()[1], flush=True)
sys.stdin.readline()
"""

EXEC_LISTENER = r"""
import os, socket, sys
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(8)
os.set_inheritable(s.fileno(), True)
print(s.getsockname()[1], flush=True)
# exec keeps the pid and the socket: the owner must still be this pid
os.execv("/bin/sleep", ["sleep", "30"])
"""


def test_owner_of_listener_opened_by_child_and_kept_across_exec(collector_run):
    child = subprocess.Popen([sys.executable, "-c", CHILD_LISTENER], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    exe = subprocess.Popen([sys.executable, "-c", EXEC_LISTENER], stdout=subprocess.PIPE,
                           text=True)
    try:
        child_port = int(child.stdout.readline())
        exec_port = int(exe.stdout.readline())
        time.sleep(0.3)
        with collector_run(0.5) as run:
            time.sleep(1.2)
        [c_row] = run.listener_rows(child_port)[-1:]
        [e_row] = run.listener_rows(exec_port)[-1:]
        assert c_row.pid == child.pid
        assert c_row.comm == open(f"/proc/{child.pid}/comm").read().strip()
        assert e_row.pid == exe.pid
        assert e_row.comm == "sleep"
    finally:
        child.kill()
        exe.kill()
        child.wait(5)
        exe.wait(5)


def test_listener_closed_and_reopened_and_backlog_over_somaxconn(collector_run):
    somaxconn = int(open("/proc/sys/net/core/somaxconn").read())
    with collector_run(0.4) as run:
        srv, port = listener(backlog=somaxconn * 4)
        time.sleep(0.9)
        srv.close()
        time.sleep(0.9)
        srv = socket.socket()
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("127.0.0.1", port))
        srv.listen(7)
        time.sleep(0.9)
    srv.close()
    rows = run.listener_rows(port)
    assert rows[0].backlog_max == somaxconn       # the effective value
    assert rows[-1].backlog_max == 7
    gap = [s for s in run.snapshots if not any(r.lport == port for r in s.listeners)]
    assert gap, "closed listener kept being reported"


@pytest.mark.parametrize("client_family", [4, 6])
def test_dual_stack_listener_overflows_counted_once(probe_session, client_family):
    # SYNs all arrive before the first ACK (50 ms each way), so the queue
    # overflows when the handshakes complete: ACK-time drops, with a request
    # socket or a SYN cookie. For IPv4 clients tcp_v6_syn_recv_sock() calls
    # tcp_v4_syn_recv_sock(): both hooked, the drop must count once.
    from tests.kernel.netlab import delayed_link, socket_in

    backend = probe_session.info.backend
    if backend == "tracepoint":
        pytest.skip("reads the BPF drop-point counters; the tracepoint backend takes SYN-time drops "
                    "from sk_drops instead (tested through the collector above)")

    def bpf_drops(port):
        return sum(c.ack_overflows + c.cookie_overflows + c.syn_overflows
                   for c in probe_session.listener_counters() if c.lport == port)

    with delayed_link(delay_ms=50) as link:
        srv = socket_in(link.ns_server, socket.AF_INET6)
        srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        srv.bind(("::", 0))
        srv.listen(1)
        port = srv.getsockname()[1]
        before_kernel = link.counters(link.ns_server)["TcpExt.ListenOverflows"]
        before_bpf = bpf_drops(port)
        fam = socket.AF_INET if client_family == 4 else socket.AF_INET6
        addr = link.server_ip4 if client_family == 4 else link.server_ip6
        clients = []
        for _ in range(10):
            c = socket_in(link.ns_client, fam)
            c.setblocking(False)
            c.connect_ex((addr, port))
            clients.append(c)
        time.sleep(0.6)          # before the first SYN-ACK retransmit (1 s)
        kernel = link.counters(link.ns_server)["TcpExt.ListenOverflows"] - before_kernel
        counted = bpf_drops(port) - before_bpf
        for c in clients:
            c.close()
        srv.close()
    assert kernel > 0, "the test did not overflow the queue"
    assert counted == kernel


def test_every_accept_seen_with_many_threads_blocked_in_accept(tracer):
    # Each thread blocked in accept() holds a kretprobe instance until it
    # returns: with the kernel's default maxactive only ~10 of 40 come out
    # (measured in the 6.1 guest); program.KRETPROBE_MAXACTIVE covers it.
    # Tracepoints and fexit have no such limit.
    n = 40
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(128)
    port = srv.getsockname()[1]
    tids, conns = set(), []

    def acceptor():
        tids.add(threading.get_native_id())
        conn, _ = srv.accept()
        conns.append(conn)

    threads = [threading.Thread(target=acceptor) for _ in range(n)]
    for t in threads:
        t.start()
    time.sleep(1.0)                 # all of them blocked in accept()
    clients = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(n)]
    for t in threads:
        t.join(10)
    seen = tracer.wait_for(lambda ev: len([e for e in ev if getattr(e, "lport", None) == port]) >= n)
    accepts = [e for e in seen if getattr(e, "lport", None) == port and hasattr(e, "queue_wait_us")]
    client_ports = {c.getsockname()[1] for c in clients}
    for s in clients + conns + [srv]:
        s.close()
    assert len(conns) == n
    assert len(accepts) == n, f"{len(accepts)} of {n} accepts seen ({tracer.lost()})"
    assert {e.tid for e in accepts} == tids
    assert {e.rport for e in accepts} == client_ports
