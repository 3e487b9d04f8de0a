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
import sys
import tempfile
import threading
import time

import pyarrow as pa
import pytest

from tests.kernel.netlab import delayed_link, netns_counters, socket_in
from tests.kernel.test_listeners import drops_from_sk_drops, flood_in, private_netns
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


def settled_overflows(ns, quiet_s=1.0, limit_s=6.0):
    """ListenOverflows in ns once it has not moved for quiet_s (at most
    limit_s of waiting)."""
    value, since, deadline = overflows_in(ns), time.monotonic(), time.monotonic() + limit_s
    while time.monotonic() - since < quiet_s and time.monotonic() < deadline:
        time.sleep(0.1)
        now = overflows_in(ns)
        if now != value:
            value, since = now, time.monotonic()
    return value


def ss_listeners(ns, port):
    out = subprocess.run(["ip", "netns", "exec", ns, "ss", "-ltnH", f"sport = :{port}"],
                         capture_output=True, text=True, timeout=10).stdout
    return [line.split() for line in out.splitlines() if line.strip()]


def skip_unless_drop_totals_exact(info):
    if drops_from_sk_drops(info):
        pytest.skip("the tracepoint backend counts drops exactly only where skb:kfree_skb has "
                    "rx_sk and the kernel the TCP_LISTEN_OVERFLOW reason (6.15+); here they "
                    "come from sk_drops, which counts an ACK-time overflow twice (doctor: NOT "
                    "exact)")


def test_reuseport_group_reloaded_drops_equal_listen_overflows(probe_session, collector_run):
    info = probe_session.info
    skip_unless_drop_totals_exact(info)   # bookworm 6.1 tracepoint: 779 for 764
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
    counted = sum(r.drops + r.syn_drops for r in rows)
    if info.backend == "kprobe":
        # kprobe runs the kernel skips under load lose their drop, uncounted
        # (doctor: NOT exact): 20 short in both trixie runs (3,932 of 3,952,
        # 2,501 of 2,521), none in bookworm or bullseye. Never more.
        # And a SYN-time drop is told by the listener's sk_drops, which another
        # CPU can move during the call (doctor: a rare race), on kprobe as on
        # fentry: 1,018 against 1,017 once in bullseye (kprobe), 842 against
        # 841 once in bookworm (fentry); every other run equal. The skipped
        # kprobe runs are not counted per program before 6.7: 1,484 of 1,552
        # once in bookworm (CI of 9e4a00b), hence 0.9.
        assert kernel * 0.9 <= counted <= kernel + max(2, kernel * 0.005)
    elif info.backend == "fentry":
        assert abs(counted - kernel) <= max(2, kernel * 0.005)
    else:
        assert counted == kernel
    # one key, one row per interval: the members are summed, never listed apart
    per_interval = [sum(1 for r in s.listeners if r.lport == port and r.netns == inode)
                    for s in run.snapshots]
    assert max(per_interval) == 1


def test_two_namespaces_on_one_address_stay_two_listeners(probe_session, collector_run):
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
            # Closed with a reset: a FIN from a client whose handshake was
            # dropped at ACK time would overflow the full queue again, and its
            # retransmits keep doing so after the collector stops (38 seen,
            # 39 counted once in a CI guest).
            for c in socks + calm:
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                c.close()
            settled = settled_overflows(ns_a)
            time.sleep(0.7)     # an interval reads the listener's last counters
        after = overflows_in(ns_a), overflows_in(ns_b)
        assert after[0] == settled, f"overflows went on after the clients reset: {settled} -> {after[0]}"
        for s in servers:
            s.close()
    rows = [r for s in run.snapshots for r in s.listeners if r.lport == 8080]
    live = {}
    for r in rows:
        live[r.netns] = live.get(r.netns, 0) + r.drops + r.syn_drops
    assert set(live) >= {ino_a, ino_b}
    overflows = after[0] - before[0]
    if drops_from_sk_drops(probe_session.info):
        # sk_drops counts a handshake that finished into the full queue twice
        # (37 for 34 once in the bookworm guest): the same bound as
        # test_listeners' overflow test
        assert 0 < overflows <= live[ino_a] <= 2 * overflows, (live, overflows)
    else:
        assert live[ino_a] == overflows > 0
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
def test_ack_time_and_syn_time_drops_split_as_the_kernel_did(probe_session, collector_run,
                                                             syncookies):
    """Three waves of 4 connects (50 ms each way) to a listen(4) socket. The
    first fills the queue to 4; the second's handshakes (a request socket
    each, or a SYN cookie each) finish into it: one fits, the rest overflow
    at ACK time, exactly the clients `ss` does not show queued. The third
    meets the full queue with its SYNs: SYN-time drops, the rest of
    ListenOverflows. The listener closes before any retransmit, so nothing
    else happens. On the tracepoint backend the split comes from sk_drops,
    which counts a request-socket overflow twice and a cookie one once:
    passing one kind as the other fails here."""
    info = probe_session.info
    if drops_from_sk_drops(info):
        pytest.skip("the tracepoint backend tells ACK-time from SYN-time drops only where "
                    "skb:kfree_skb has rx_sk and the kernel the TCP_LISTEN_OVERFLOW reason "
                    "(6.15+); here every drop counts as a SYN drop (doctor: NOT exact)")
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


def test_drops_of_a_listener_closed_before_its_last_read(probe_session, collector_run):
    """Issue 14 item 6 (410 of 411): a listener that closes between two reads
    of the socket table takes its last SYN drops with it, unless they are
    kept when it closes. Here every drop falls in that gap: one long
    interval, the listener closed inside it."""
    skip_unless_drop_totals_exact(probe_session.info)   # bullseye 5.10 tracepoint: 56 for 54
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
n = int(sys.argv[1]) if len(sys.argv) > 1 else 1
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(8)
print(s.getsockname()[1], flush=True)
held = []
for _ in range(n):
    c, _ = s.accept()        # the first one blocked here before the tracer starts
    held.append(c)
    print("accepted", flush=True)
sys.stdin.readline()
"""


def _session(filters):
    from tracer.probes import startup
    return startup.start(os.environ.get("CONNSCOPE_TEST_BACKEND", "auto"), filters)


NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def _blocked_acceptor(accepts=1, as_user=()):
    """A process whose thread is blocked in accept() (accept4 in CPython)
    before any tracer starts; it accepts `accepts` times. Returns (proc, port)."""
    proc = subprocess.Popen([*as_user, sys.executable, "-c", BLOCKED_ACCEPTOR, str(accepts)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd="/")
    port = int(proc.stdout.readline())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:     # until the kernel says it is blocked there
        try:
            with open(f"/proc/{proc.pid}/syscall") as f:
                if f.read().split()[0] in ("43", "288", "202", "242"):
                    break
        except (OSError, IndexError):
            pass
        time.sleep(0.05)
    time.sleep(0.2)
    return proc, port


def _accepts_on(session, port, want, timeout_s=5.0, settle_s=1.5):
    """Accept events for port until `want` are seen, then settle_s more (a
    double count would show in it)."""
    seen, deadline = [], time.monotonic() + timeout_s
    while time.monotonic() < deadline and len(seen) < want:
        seen += [e for e in session.poll(50) if getattr(e, "lport", None) == port
                 and hasattr(e, "queue_wait_us")]
    end = time.monotonic() + settle_s
    while time.monotonic() < end:
        seen += [e for e in session.poll(50) if getattr(e, "lport", None) == port
                 and hasattr(e, "queue_wait_us")]
    return seen


def _stop(proc):
    proc.kill()
    proc.wait(5)


def test_accept_blocked_since_before_start_is_seen():
    proc, port = _blocked_acceptor()
    try:
        session = _session(Filters())
        try:
            c = socket.create_connection(("127.0.0.1", port), timeout=5)
            client_port = c.getsockname()[1]
            assert proc.stdout.readline().strip() == "accepted"
            seen = _accepts_on(session, port, 1, settle_s=0.3)
            c.close()
        finally:
            session.close()
        assert len(seen) == 1, "the accept of a thread blocked before start was dropped"
        assert seen[0].pid == proc.pid
        assert seen[0].rport == client_port
    finally:
        _stop(proc)


def test_blocked_thread_accepting_twice_is_two_accepts():
    """The first accept returns through the syscall exit only (the call began
    before the kretprobe/fexit), the second through both while the exit
    tracepoints are still attached: each is one row, as the server and ss
    count them."""
    proc, port = _blocked_acceptor(accepts=2)
    clients = []
    try:
        session = _session(Filters())
        try:
            for _ in range(2):
                clients.append(socket.create_connection(("127.0.0.1", port), timeout=5))
                assert proc.stdout.readline().strip() == "accepted"
            seen = _accepts_on(session, port, 2)
            server_side = subprocess.run(["ss", "-tnH", "state", "established",
                                          f"sport = :{port}"], capture_output=True, text=True,
                                         timeout=10).stdout.splitlines()
        finally:
            session.close()
        print(f"accept rows {len(seen)}, clients {len(clients)}, server accepted 2, "
              f"ss established {len(server_side)}")
        assert len(server_side) == len(clients) == 2
        assert len(seen) == 2, f"{len(seen)} accept rows for 2 accepts"
        assert sorted(e.rport for e in seen) == sorted(c.getsockname()[1] for c in clients)
        assert {e.pid for e in seen} == {proc.pid}
    finally:
        for c in clients:
            c.close()
        _stop(proc)


@pytest.mark.parametrize("port_matches,comm_matches,rows", [
    (True, True, 1), (True, False, 0), (False, True, 0)])
def test_filters_apply_to_the_accept_of_a_thread_blocked_before_start(port_matches, comm_matches,
                                                                      rows):
    """--port and --comm decide for that accept as for any other (one flag
    set for the three cases: one compile)."""
    proc, port = _blocked_acceptor()
    try:
        with open(f"/proc/{proc.pid}/comm") as f:
            comm = f.read().rstrip("\n")
        session = _session(Filters(ports=frozenset({port if port_matches else port + 1}),
                                   comm=comm if comm_matches else comm[:-1] + "~"))
        try:
            c = socket.create_connection(("127.0.0.1", port), timeout=5)
            assert proc.stdout.readline().strip() == "accepted"
            seen = _accepts_on(session, port, 1, timeout_s=2.0, settle_s=0.5)
            c.close()
        finally:
            session.close()
        assert len(seen) == rows
    finally:
        _stop(proc)


def _attached_tracepoints(session) -> set:
    """Kernel truth: the tracepoints that have one of this session's programs
    attached, asked of the kernel for every fd of this process
    (BPF_TASK_FD_QUERY, what `bpftool perf` shows)."""
    import ctypes
    import struct

    from tracer.probes import bpf_syscall as sc
    ours = set()
    for fd in session._prog.prog_fds.values():
        ours.add(struct.unpack_from("<I", sc.obj_info(fd), 4)[0])   # bpf_prog_info.id
    names = set()
    for name in os.listdir("/proc/self/fd"):
        buf = ctypes.create_string_buffer(128)
        attr = ctypes.create_string_buffer(48)
        struct.pack_into("<IIIIQ", attr, 0, os.getpid(), int(name), 0, len(buf),
                         ctypes.addressof(buf))
        try:
            sc.bpf(20, attr)       # BPF_TASK_FD_QUERY
        except OSError:
            continue               # not a BPF attachment
        prog_id, fd_type = struct.unpack_from("<II", attr, 24)
        # BPF_FD_TYPE_RAW_TRACEPOINT, BPF_FD_TYPE_TRACEPOINT (the shared
        # tracepoints are raw ones where the kernel has BTF)
        if fd_type in (0, 1) and prog_id in ours:
            names.add(buf.value.decode())
    return names


SYS_EXITS = {"sys_exit_accept", "sys_exit_accept4"}


def _function_hook_backend():
    backend = os.environ.get("CONNSCOPE_TEST_BACKEND", "auto")
    if backend not in ("kprobe", "fentry"):
        pytest.skip("the tracepoint backend's accept hooks are the syscall tracepoints: "
                    "they stay attached (this is about kprobe and fentry)")


def test_syscall_tracepoints_only_while_a_blocked_thread_remains():
    _function_hook_backend()
    # Nobody of ours blocked: they are never attached.
    session = _session(Filters(pids=frozenset({os.getpid()})))
    try:
        assert session.blocked_accepts.found == 0
        assert not _attached_tracepoints(session) & SYS_EXITS
    finally:
        session.close()
    proc, port = _blocked_acceptor()
    try:
        session = _session(Filters())
        try:
            b = session.blocked_accepts
            assert b.found >= 1 and b.attached
            assert _attached_tracepoints(session) >= SYS_EXITS
            c = socket.create_connection(("127.0.0.1", port), timeout=5)
            assert proc.stdout.readline().strip() == "accepted"
            deadline = time.monotonic() + 10
            while b.attached and time.monotonic() < deadline:
                session.poll(50)
            after = _attached_tracepoints(session)
            c.close()
            print(f"blocked at start {b.found}, attached for "
                  f"{(b.detached_at or 0) - (b.attached_at or 0):.2f} s, then {b.detached_because}")
        finally:
            session.close()
        assert not b.attached and b.detached_because == "returned"
        assert not after & SYS_EXITS, f"still attached after the blocked thread returned: {after}"
        assert after, "the session's other tracepoints should still be attached"
    finally:
        _stop(proc)


def test_call_seen_by_the_return_probe_is_not_counted_again_at_syscall_exit():
    """A seeded thread whose call passes the kretprobe/fexit (its pre-start
    call returned between the scan and the attach, or its tid was reused):
    the syscall exit must not count that call a second time. Seeded here by
    hand, as the race would leave it, while the exit tracepoints are attached
    for another thread blocked since before start."""
    import struct
    _function_hook_backend()
    keeper, _ = _blocked_acceptor()          # keeps the exit tracepoints attached
    try:
        session = _session(Filters())
        late = None
        try:
            assert session.blocked_accepts.attached
            late, port = _blocked_acceptor()   # blocked after start: through the kprobe entry
            session._prog.maps["blocked_accepts"].update(struct.pack("<I", late.pid), b"\1")
            c = socket.create_connection(("127.0.0.1", port), timeout=5)
            assert late.stdout.readline().strip() == "accepted"
            seen = _accepts_on(session, port, 1)
            still = session.blocked_accepts.attached
            c.close()
        finally:
            session.close()
            if late is not None:
                _stop(late)
        assert still, "the exit tracepoints went before the test was done"
        assert len(seen) == 1, f"{len(seen)} accept rows for one accept"
    finally:
        _stop(keeper)


def test_thread_blocked_too_long_is_given_up_on_and_counted():
    """An idle listener's acceptor, here another user's (anyone can park a
    thread in accept()): after max_wait_s the exit tracepoints go anyway, so
    nobody keeps their cost on every syscall; its next accept is then not
    seen, and that is counted."""
    _function_hook_backend()
    if not shutil.which("setpriv"):
        pytest.skip("setpriv is not installed (Debian package util-linux)")
    proc, port = _blocked_acceptor(as_user=NOBODY)
    try:
        with open(f"/proc/{proc.pid}/status") as f:
            assert "Uid:\t65534\t" in f.read()
        session = _session(Filters(pids=frozenset({proc.pid})))
        try:
            b = session.blocked_accepts
            assert b.found == 1 and b.attached
            before = session.counters()["untracked_accepts"]
            b.max_wait_s = 0.5
            deadline = time.monotonic() + 10
            while b.attached and time.monotonic() < deadline:
                session.poll(50)
            assert b.detached_because == "gave up" and b.unseen == 1
            assert not _attached_tracepoints(session) & SYS_EXITS
            assert session.counters()["untracked_accepts"] == before + 1
            c = socket.create_connection(("127.0.0.1", port), timeout=5)
            assert proc.stdout.readline().strip() == "accepted"
            seen = _accepts_on(session, port, 1, timeout_s=1.0, settle_s=0.5)
            c.close()
        finally:
            session.close()
        assert seen == [], "counted as unseen, so it must be unseen"
    finally:
        _stop(proc)


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
