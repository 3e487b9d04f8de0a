"""Connect tracing on the running kernel, against ground truth: the client's
own timings and errnos, the kernel's retransmit counter, and pids we know."""
import ctypes
import errno
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

import pytest

from tests.kernel.netlab import delayed_link, socket_in
from tests.kernel.workloads import tcp_server

pytestmark = pytest.mark.kernel

PR_SET_NAME = 15

# Under emulation (the TCG test guest, CONNSCOPE_VM=1) the client wakes up
# late after the kernel has seen the answer, and the delaying relay runs
# late too: seen up to 9.5 ms apart and RTTs up to 124 ms there. The host
# values are the real claim; these only keep the guest run meaningful.
CLIENT_AGREEMENT_US = 25_000 if os.environ.get("CONNSCOPE_VM") else 2000   # median
CLIENT_SAMPLE_US = 60_000 if os.environ.get("CONNSCOPE_VM") else 20_000     # any one connect
# (the link's 100 ms plus scheduling; under QEMU TCG a guest stalls now and then:
# one connect took 249 ms in a CI run, and the client timed it the same; the
# client's own timing is the exact check, this only says the link was crossed)
RTT_CEILING_US = 400_000 if os.environ.get("CONNSCOPE_VM") else 130_000


def set_thread_name(name: str) -> None:
    ctypes.CDLL(None).prctl(PR_SET_NAME, name.encode(), 0, 0, 0)


def closed_port(addr="127.0.0.1", family=socket.AF_INET) -> int:
    """A port nothing listens on (bound then released; nothing else here binds it)."""
    s = socket.socket(family)
    s.bind((addr, 0))
    port = s.getsockname()[1]
    s.close()
    return port


@contextmanager
def realtime():
    """Run the calling thread at SCHED_FIFO, so that the client's own timing
    measures the network and not how late the scheduler woke it up on a busy
    2-core machine (seen: 3.5 ms late under load)."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(20))
    except OSError:
        yield
        return
    try:
        yield
    finally:
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))


def timed_connects(addr, port, n, *, ns=None, family=socket.AF_INET):
    """n blocking connects; [(sport, elapsed_us, errno)] measured by the client."""
    with realtime():
        return _timed_connects(addr, port, n, ns, family)


def _timed_connects(addr, port, n, ns, family):
    out = []
    for _ in range(n):
        s = socket_in(ns, family, socket.SOCK_STREAM)
        try:
            t0 = time.perf_counter_ns()
            err = s.connect_ex((addr, port))
            t1 = time.perf_counter_ns()
            sport = s.getsockname()[1]
        finally:
            s.close()
        out.append((sport, (t1 - t0) / 1000.0, err))
    return out


# The client runs as its own process at SCHED_FIFO: in the test process it
# would share the GIL with the thread polling the tracer, and waiting for the
# GIL after connect() returns showed up as tens of milliseconds of "latency".
TIMED_CLIENT = r"""
import os, socket, sys, time
addr, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
family = socket.AF_INET6 if ":" in addr else socket.AF_INET
try:
    os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(20))
except OSError:
    pass
for _ in range(n):
    s = socket.socket(family)
    t0 = time.perf_counter_ns()
    err = s.connect_ex((addr, port))
    t1 = time.perf_counter_ns()
    print(s.getsockname()[1], (t1 - t0) / 1000.0, err, flush=True)
    s.close()
"""


@pytest.mark.parametrize("family", [4, 6])
def test_latency_matches_client_through_50ms_link(tracer, family):
    n = 23  # prime: an off-by-some in the tracer cannot match it by accident
    with delayed_link(delay_ms=50) as link:
        server_ip = link.server_ip4 if family == 4 else link.server_ip6
        with tcp_server(link.ns_server, server_ip) as srv:
            proc = link.popen(link.ns_client, [sys.executable, "-c", TIMED_CLIENT, server_ip,
                                               str(srv.port), str(n)],
                              stdout=subprocess.PIPE, text=True)
            out, _ = proc.communicate(timeout=60)
            client = [(int(a), float(b), int(c)) for a, b, c in
                      (line.split() for line in out.splitlines())]
            client_pid = proc.pid
            events = tracer.wait_for(lambda ev: len(tracer.connects_to(srv.port, server_ip)) >= n)
            mine = tracer.connects_to(srv.port, server_ip)
    assert all(err == 0 for _, _, err in client)
    assert len(mine) == n, f"expected exactly {n} connects rows, got {len(mine)} ({tracer.lost()})"
    by_sport = {e.sport: e for e in mine}
    assert len(by_sport) == n
    gaps = []
    for sport, elapsed_us, _ in client:
        ev = by_sport[sport]
        assert ev.outcome == "established"
        assert ev.family == family
        assert ev.pid == client_pid
        assert ev.syn_retransmits == 0
        # One RTT is 100 ms; the tracer sees it from inside the kernel, the
        # client around the syscall (same clock): the kernel's span lies
        # inside the client's, and what the client adds is its own syscall
        # and scheduling time.
        assert ev.latency_us <= elapsed_us + 50, (sport, ev.latency_us, elapsed_us)
        assert elapsed_us - ev.latency_us < CLIENT_SAMPLE_US, (sport, ev.latency_us, elapsed_us)
        assert 100_000 <= ev.latency_us < RTT_CEILING_US
        gaps.append(elapsed_us - ev.latency_us)
    # A client descheduled once on a busy machine is late by milliseconds;
    # typically the two agree within 2 ms (on the host).
    assert statistics.median(gaps) < CLIENT_AGREEMENT_US, sorted(gaps)
    assert events  # the tracer saw the run


def test_refused_loopback(tracer):
    port = closed_port()
    [(sport, elapsed_us, err)] = timed_connects("127.0.0.1", port, 1)
    assert err == errno.ECONNREFUSED
    tracer.wait_for(lambda ev: tracer.connects_to(port))
    [ev] = tracer.connects_to(port)
    assert ev.outcome == "refused"
    assert ev.err == errno.ECONNREFUSED
    assert ev.syn_retransmits == 0
    assert ev.latency_us is not None and ev.latency_us <= elapsed_us + 50
    assert ev.sport == sport


def test_refused_ipv6_loopback(tracer):
    port = closed_port("::1", socket.AF_INET6)
    [(_, _, err)] = timed_connects("::1", port, 1, family=socket.AF_INET6)
    assert err == errno.ECONNREFUSED
    tracer.wait_for(lambda ev: tracer.connects_to(port))
    [ev] = tracer.connects_to(port)
    assert (ev.family, ev.daddr, ev.saddr, ev.outcome) == (6, "::1", "::1", "refused")


def test_established_ipv6_loopback(tracer):
    with tcp_server(None, "::1") as srv:
        client = timed_connects("::1", srv.port, 3, family=socket.AF_INET6)
        tracer.wait_for(lambda ev: len(tracer.connects_to(srv.port)) >= 3)
    mine = tracer.connects_to(srv.port)
    assert sorted(e.sport for e in mine) == sorted(c[0] for c in client)
    assert all(e.outcome == "established" and e.family == 6 and e.daddr == "::1" for e in mine)


def test_timeout_counts_syn_retransmits(tracer):
    with delayed_link(delay_ms=0) as link:
        port = 4099
        link.set_drop_syn_ports({port})
        before = link.counters(link.ns_client)["Tcp.RetransSegs"]
        s = socket_in(link.ns_client, socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_SYNCNT, 1)
        t0 = time.monotonic()
        err = s.connect_ex((link.server_ip4, port))
        waited = time.monotonic() - t0
        s.close()
        after = link.counters(link.ns_client)["Tcp.RetransSegs"]
        tracer.wait_for(lambda ev: tracer.connects_to(port, link.server_ip4))
    assert err == errno.ETIMEDOUT
    [ev] = tracer.connects_to(port, link.server_ip4)
    assert ev.outcome == "timeout"
    assert ev.err == errno.ETIMEDOUT
    assert abs(ev.latency_us / 1e6 - waited) < 0.05   # the time the caller waited
    assert after - before >= 1
    assert ev.syn_retransmits == after - before   # the kernel's own count
    assert abs((ev.ts_end_ns - ev.ts_start_ns) / 1e9 - waited) < 0.05


def test_application_closes_before_answer(tracer):
    with delayed_link(delay_ms=50) as link:
        with tcp_server(link.ns_server, link.server_ip4) as srv:
            s = socket_in(link.ns_client, socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            assert s.connect_ex((link.server_ip4, srv.port)) == errno.EINPROGRESS
            time.sleep(0.01)
            s.close()   # 10 ms in, the SYN-ACK is 90 ms away
            tracer.wait_for(lambda ev: tracer.connects_to(srv.port, link.server_ip4))
    [ev] = tracer.connects_to(srv.port, link.server_ip4)
    assert ev.outcome == "abandoned"   # the application gave up, not the kernel
    assert 10_000 <= ev.latency_us < 90_000   # closed 10 ms in, before the answer
    assert ev.err == 0


def test_pid_and_comm_of_thread(tracer):
    with tcp_server(None, "127.0.0.1") as srv:
        seen = {}

        def worker():
            set_thread_name("cs-thread")
            seen["tid"] = threading.get_native_id()
            timed_connects("127.0.0.1", srv.port, 1)

        t = threading.Thread(target=worker)
        t.start()
        t.join(10)
        tracer.wait_for(lambda ev: tracer.connects_to(srv.port))
    [ev] = tracer.connects_to(srv.port)
    assert ev.pid == os.getpid()
    assert ev.tid == seen["tid"] != os.getpid()
    assert ev.comm == "cs-thread"


CHILD = r"""
import ctypes, socket, sys
ctypes.CDLL(None).prctl(15, b"cs-child", 0, 0, 0)
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5)
s.close()
"""


def test_pid_and_comm_of_child_process_same_host_server(tracer):
    # Client and server on the same host: the row belongs to the client,
    # never to the server whose softirq completes the handshake.
    with tcp_server(None, "127.0.0.1") as srv:
        child = subprocess.run([sys.executable, "-c", CHILD, str(srv.port)], timeout=20)
        assert child.returncode == 0
        tracer.wait_for(lambda ev: tracer.connects_to(srv.port))
        server_pid = srv.pid
    [ev] = tracer.connects_to(srv.port)
    assert ev.comm == "cs-child"
    assert ev.pid not in (os.getpid(), server_pid)
    assert ev.outcome == "established"


def test_v4_mapped_connect_from_an_ipv6_socket(tracer):
    # tcp_v6_connect() hands a v4-mapped destination to tcp_v4_connect():
    # one row, in the socket's own family, as the tracepoint backend sees it.
    import ipaddress

    with tcp_server(None, "::") as srv:      # dual-stack (net.ipv6.bindv6only=0)
        s = socket.socket(socket.AF_INET6)
        s.connect(("::ffff:127.0.0.1", srv.port))
        sport = s.getsockname()[1]
        s.close()
        tracer.wait_for(lambda ev: tracer.connects_to(srv.port))
    [ev] = tracer.connects_to(srv.port)
    mapped = ipaddress.ip_address("::ffff:127.0.0.1")
    assert (ev.family, ev.sport, ev.outcome, ev.pid) == (6, sport, "established", os.getpid())
    assert ipaddress.ip_address(ev.saddr) == ipaddress.ip_address(ev.daddr) == mapped
