"""Per-process sockets: tally() joining a hand-built socket table with
hand-built /proc holders, and ProcessTable's windows (rates, hold times,
scan samples, advice, forgetting), against figures worked out by hand."""
import pytest

from tracer.aggregate.sockets import WINDOW, ProcessTable, tally
from tracer.events import Close, Closes
from tracer.probes.sock_diag import TcpSocket

# TCP state numbers (include/net/tcp_states.h)
ESTABLISHED, SYN_SENT, SYN_RECV, FIN_WAIT1, FIN_WAIT2, TIME_WAIT = 1, 2, 3, 4, 5, 6
CLOSE_WAIT, LAST_ACK, LISTEN, CLOSING = 8, 9, 10, 11

LOCAL = "10.0.0.2"
DB = (4, "10.0.0.9", 5432)


def sock(state, inode, sport=40000, daddr="10.0.0.9", dport=5432, family=4,
         rqueue=0, wqueue=0, saddr=LOCAL):
    return TcpSocket(family=family, state=state, saddr=saddr, sport=sport, daddr=daddr,
                     dport=dport, inode=inode, uid=0, cookie=inode, rqueue=rqueue,
                     wqueue=wqueue, drops=None, rmem_alloc=None, wmem_queued=None)


def counts(h):
    return (h.established, h.syn_sent, h.listen, h.close_wait, h.other)


# ------------------------------------------------------------------- tally

def test_tally_counts_every_state_for_the_holder():
    sockets = [
        sock(LISTEN, 1, sport=8080, daddr="0.0.0.0", dport=0, rqueue=3, wqueue=128),
        sock(ESTABLISHED, 2, sport=40001),
        sock(ESTABLISHED, 3, sport=40002, daddr="10.0.0.10", dport=80),
        sock(SYN_SENT, 4, sport=40003),
        sock(CLOSE_WAIT, 5, sport=40004),
        sock(FIN_WAIT1, 6, sport=40005),
        sock(FIN_WAIT2, 7, sport=40006),
        sock(LAST_ACK, 8, sport=40007),
        sock(CLOSING, 9, sport=40008),
    ]
    holders = {i: (100,) for i in range(1, 10)}
    out = tally(sockets, holders, {100: "api"}, {100: 12}, {100: 1024})
    h = out[100]
    assert counts(h) == (2, 1, 1, 1, 4)
    assert (h.comm, h.fds, h.fd_limit) == ("api", 12, 1024)
    assert h.by_remote == {(4, "10.0.0.9", 5432): 1, (4, "10.0.0.10", 80): 1}


def test_tally_queue_bytes_leave_out_listeners():
    sockets = [
        sock(LISTEN, 1, sport=8080, daddr="0.0.0.0", dport=0, rqueue=3, wqueue=128),
        sock(ESTABLISHED, 2, rqueue=10, wqueue=2000),
        sock(CLOSE_WAIT, 3, sport=40001, rqueue=1, wqueue=0),   # the FIN counts as one byte
    ]
    h = tally(sockets, {1: (7,), 2: (7,), 3: (7,)}, {7: "x"}, {}, {})[7]
    assert (h.tx_queue_bytes, h.rx_queue_bytes) == (2000, 11)


def test_tally_after_fork_counts_the_socket_for_both_processes():
    sockets = [sock(ESTABLISHED, 11), sock(LISTEN, 12, sport=9000, daddr="0.0.0.0", dport=0)]
    holders = {11: (100, 101), 12: (100, 101)}
    out = tally(sockets, holders, {100: "parent", 101: "child"}, {100: 6, 101: 6}, {})
    assert set(out) == {100, 101}
    for pid in (100, 101):
        assert counts(out[pid]) == (1, 0, 1, 0, 0)
    assert (out[100].comm, out[101].comm) == ("parent", "child")


def test_tally_dup_counts_the_socket_once():
    # /proc lists the pid once per inode however many of its fds point at it
    # (ProcScanner keeps a set per pid); the extra fd shows only in fds.
    out = tally([sock(ESTABLISHED, 11)], {11: (100,)}, {100: "x"}, {100: 5}, {})
    assert counts(out[100]) == (1, 0, 0, 0, 0)
    assert out[100].fds == 5


def test_tally_sockets_without_inode_are_nobodys():
    # TIME_WAIT and SYN_RECV have no struct socket: inode 0, no holder, even
    # if something claimed inode 0.
    sockets = [sock(TIME_WAIT, 0), sock(SYN_RECV, 0, sport=8080), sock(ESTABLISHED, 11)]
    out = tally(sockets, {0: (100,), 11: (100,)}, {100: "x"}, {}, {})
    assert counts(out[100]) == (1, 0, 0, 0, 0)


def test_tally_sockets_nobody_holds_and_processes_without_tcp_are_left_out():
    out = tally([sock(ESTABLISHED, 11), sock(FIN_WAIT2, 12)], {11: (100,)},
                {100: "x", 200: "idle"}, {100: 4, 200: 9}, {})
    assert set(out) == {100}
    assert counts(out[100]) == (1, 0, 0, 0, 0)


def test_tally_accepted_connections_are_no_pool():
    """A server's accepted connections have its listener's port as local
    port: they count as established but are not destinations it opened."""
    sockets = [
        sock(LISTEN, 1, sport=8080, daddr="0.0.0.0", dport=0),
        sock(ESTABLISHED, 2, sport=8080, daddr="10.0.0.50", dport=51000),
        sock(ESTABLISHED, 3, sport=8080, daddr="10.0.0.51", dport=51001),
        sock(ESTABLISHED, 4, sport=40000),                  # to the database: a pool
    ]
    h = tally(sockets, {i: (100,) for i in (1, 2, 3, 4)}, {100: "api"}, {}, {})[100]
    assert h.established == 3
    assert h.by_remote == {DB: 1}


# ------------------------------------------------------------ ProcessTable

T0 = 1_000_000_000_000


def close(pid=100, lifetime_s=0.1, remote=DB, passive=False):
    family, raddr, rport = remote
    return Close(ts_ns=T0 + int(lifetime_s * 1e9), ts_open_ns=T0, pid=pid,
                 family=family, raddr=raddr, rport=rport, passive=passive)


def holding(pid, established_to_db, comm="client"):
    """What a scan sees: pid holding n established connections to DB."""
    sockets = [sock(ESTABLISHED, 1000 + i, sport=40000 + i) for i in range(established_to_db)]
    return tally(sockets, {s.inode: (pid,) for s in sockets}, {pid: comm}, {}, {})


def row(rows, pid):
    (r,) = [r for r in rows if r.pid == pid]
    return r


def churn_interval(t, seconds=1.0, rate=40, hold_s=0.1, held=4, pid=100):
    """One interval of a client opening `rate` connections a second to DB,
    each held hold_s: the opens, the closes, and a scan seeing `held`."""
    n = round(rate * seconds)
    for _ in range(n):
        t.opened(pid, "client", DB, connect_us=500.0)
        t.closed(close(pid, hold_s))
    return t.update(seconds, holding(pid, held))


def test_opened_and_closed_are_per_interval():
    t = ProcessTable()
    for _ in range(6):
        t.opened(100, "client", DB)
    t.opened(100, "client", None)                 # accepted: counted, no flow
    for _ in range(3):
        t.closed(close(100))
    r = row(t.update(0.5, {}), 100)
    assert (r.opened, r.closed) == (7, 3)
    assert r.opened_per_s == pytest.approx(14.0)
    assert r.closed_per_s == pytest.approx(6.0)
    assert r.comm == "client"
    assert counts(r) == (0, 0, 0, 0, 0)
    assert r.fds is None
    r = row(t.update(0.5, holding(100, 2)), 100)   # nothing happened: counts reset
    assert (r.opened, r.closed, r.opened_per_s, r.closed_per_s) == (0, 0, 0.0, 0.0)
    assert r.established == 2


def test_a_process_that_exited_still_gets_its_closes():
    t = ProcessTable()
    t.update(1.0, holding(100, 3))
    t.closed(close(100))
    r = row(t.update(1.0, {}), 100)
    assert r.closed == 1 and r.sockets == 0


def test_churning_client_advice_matches_littles_law():
    t = ProcessTable()
    for _ in range(5):
        rows = churn_interval(t)
    r = row(rows, 100)
    (a,) = r.advice
    assert a.destination == "10.0.0.9:5432"
    assert a.arrival_per_s == pytest.approx(40.0)
    assert a.hold_s == pytest.approx(0.1)
    assert a.concurrency_mean == pytest.approx(4.0)      # 40/s x 0.1 s, and the scans
    assert (a.concurrency_p99, a.concurrency_peak, a.in_use) == (4.0, 4, 4)
    assert a.recommended == 5
    assert r.churning
    assert a.window_s == 5.0
    assert a.verdict == ("churning: 40 new connections/s over 5.00s, median held 100ms; a pool "
                         "of 5 would serve it; connecting alone costs 0.02 connections' worth "
                         "of time")


def test_concurrency_is_the_larger_of_littles_law_and_the_scans():
    # Scans between bursts see nothing held: Little's law still sees 4.
    t = ProcessTable()
    for _ in range(3):
        rows = churn_interval(t, held=0)
    (a,) = row(rows, 100).advice
    assert a.concurrency_mean == pytest.approx(4.0)
    assert a.in_use == 0
    # Connections opened and held without closing: the scans see them.
    t = ProcessTable()
    t.opened(100, "client", DB)
    for held in (6, 8, 10):
        rows = t.update(1.0, holding(100, held))
    (a,) = row(rows, 100).advice
    assert a.concurrency_mean == pytest.approx(8.0)
    assert (a.concurrency_peak, a.in_use) == (10, 10)
    assert a.hold_s == 0.0                                   # nothing closed yet


def test_pooled_client_seen_only_by_the_scan():
    t = ProcessTable()
    for _ in range(4):
        rows = t.update(1.0, holding(100, 5))
    r = row(rows, 100)
    (a,) = r.advice
    assert (a.arrival_per_s, a.concurrency_mean, a.in_use) == (0.0, 5.0, 5)
    assert a.recommended == 7
    assert a.verdict == "pooled: 5 connections held, 0.0 new connections/s over 4.00s"
    assert not r.churning


def test_rate_is_over_the_window():
    t = ProcessTable()
    for _ in range(10):
        t.opened(100, "client", DB)
    t.update(0.5, holding(100, 1))
    (a,) = row(t.update(1.5, holding(100, 1)), 100).advice
    assert a.arrival_per_s == pytest.approx(10 / 2.0)
    for _ in range(WINDOW - 2):
        rows = t.update(1.0, holding(100, 1))
    (a,) = row(rows, 100).advice
    assert a.arrival_per_s == pytest.approx(10 / (2.0 + WINDOW - 2))
    (a,) = row(t.update(1.0, holding(100, 1)), 100).advice   # the opens leave the window
    assert a.arrival_per_s == 0.0


def test_hold_times_are_over_the_window_too():
    """A client that held connections 10 s and now churns at 0.1 s: the hold
    multiplied with today's rate must be today's, not an all-time mean."""
    t = ProcessTable()
    for _ in range(50):
        t.opened(100, "client", DB)
        t.closed(close(100, lifetime_s=10.0))
    t.update(1.0, holding(100, 50))
    for _ in range(WINDOW + 1):
        rows = churn_interval(t)
    (a,) = row(rows, 100).advice
    assert a.hold_s == pytest.approx(0.1)
    assert a.concurrency_mean == pytest.approx(4.0)


def test_median_hold_decides_churn():
    t = ProcessTable()
    for _ in range(3):
        for _ in range(20):
            t.opened(100, "client", DB)
            t.closed(close(100, lifetime_s=0.05))
        for _ in range(10):      # a third of them long: the mean is 2 s, the median 50 ms
            t.opened(100, "client", DB)
            t.closed(close(100, lifetime_s=5.9))
        rows = t.update(1.0, holding(100, 2))
    r = row(rows, 100)
    (a,) = r.advice
    assert a.hold_s == pytest.approx((20 * 0.05 + 10 * 5.9) / 30)
    assert r.churning
    assert "median held 50.0ms" in a.verdict


def test_accepted_connections_make_no_flow():
    t = ProcessTable()
    for _ in range(100):
        t.opened(200, "server", None)
        t.closed(close(200, lifetime_s=0.01, remote=(4, "10.0.0.50", 51000), passive=True))
    r = row(t.update(1.0, {}), 200)
    assert r.advice == () and not r.churning
    assert (r.opened, r.closed) == (100, 100)


def test_advice_is_per_destination_busiest_first_at_most_ten():
    t = ProcessTable()
    for port in range(1, 13):
        for _ in range(port):
            t.opened(100, "client", (4, "10.0.0.9", port))
    (r,) = t.update(1.0, {})
    assert [a.destination for a in r.advice] == [f"10.0.0.9:{p}" for p in range(12, 2, -1)]
    assert [a.arrival_per_s for a in r.advice] == [float(p) for p in range(12, 2, -1)]


def test_ipv6_destination_label():
    t = ProcessTable()
    t.opened(100, "client", (6, "fd00::9", 443))
    (r,) = t.update(1.0, {})
    assert r.advice[0].destination == "[fd00::9]:443"


@pytest.mark.parametrize("idle, rate, hold_s", [
    # the old interval is still in the window: its opens and lifetimes count
    (WINDOW - 2, 11 / WINDOW, (10 * 10.0 + 0.2) / 11),
    # it has just left the window: the flow is still there, with a window of idle
    (WINDOW - 1, 1 / WINDOW, 0.2),
    # a whole window of nothing: the flow was forgotten and starts afresh
    (WINDOW, 1.0, 0.2),
])
def test_flows_are_forgotten_after_a_window_of_nothing(idle, rate, hold_s):
    t = ProcessTable()
    for _ in range(10):
        t.opened(100, "client", DB)
        t.closed(close(100, lifetime_s=10.0))
    t.update(1.0, {})
    for _ in range(idle):
        assert t.update(1.0, {}) == []    # no holdings, no events: no row
    t.opened(100, "client", DB)
    t.closed(close(100, lifetime_s=0.2))
    (r,) = t.update(1.0, {})
    (a,) = r.advice
    assert a.arrival_per_s == pytest.approx(rate)
    assert a.hold_s == pytest.approx(hold_s)


def test_a_held_connection_keeps_its_flow():
    t = ProcessTable()
    t.opened(100, "client", DB)
    for _ in range(WINDOW * 2):
        rows = t.update(1.0, holding(100, 1))
    (a,) = row(rows, 100).advice
    assert (a.arrival_per_s, a.in_use) == (0.0, 1)
    assert a.verdict == f"pooled: 1 connection held, 0.0 new connections/s over {WINDOW}.0s"


def test_a_reused_scan_adds_no_sample_of_what_is_held():
    """SocketTable reuses an expensive scan: the same picture seen again is
    no new observation (here it predates the pool, and would pull the mean
    from 5 towards 0)."""
    t = ProcessTable()
    t.update(1.0, {}, scanned_at=10.0)
    for _ in range(5):
        t.opened(100, "client", DB)
    t.update(1.0, {}, scanned_at=10.0)                   # reused: taken before the opens
    for at in (12.0, 12.0, 14.0, 14.0):
        rows = t.update(1.0, holding(100, 5), scanned_at=at)
    (a,) = row(rows, 100).advice
    assert (a.concurrency_mean, a.concurrency_p99, a.in_use) == (5.0, 5.0, 5)
    assert a.arrival_per_s == pytest.approx(5 / 5.0)      # rates still count every interval
    # Without scan times every update is a fresh scan.
    t = ProcessTable()
    t.opened(100, "client", DB)
    t.update(1.0, {})
    (a,) = row(t.update(1.0, holding(100, 4)), 100).advice
    assert a.concurrency_mean == pytest.approx(2.0)


def test_tallied_closes_count_as_closes_one_by_one():
    from tracer.events import Closes

    one, tallied = ProcessTable(), ProcessTable()
    evs = [close(100, 0.1), close(100, 0.3), close(200, 0.01, remote=(4, "10.0.0.50", 51000),
                                                 passive=True)]
    closes = Closes()
    for ev in evs:
        one.closed(ev)
        closes.add(ev)
    tallied.add_closes(closes)
    a, b = one.update(1.0, holding(100, 1)), tallied.update(1.0, holding(100, 1))
    assert sorted((r.pid, r.closed, r.advice) for r in a) == sorted((r.pid, r.closed, r.advice) for r in b)
    assert row(b, 100).closed == 2 and row(b, 200).closed == 1


def test_peaks_from_the_events_set_the_advice():
    t = ProcessTable()
    closes = Closes()
    for _ in range(20):
        t.opened(100, "client", DB)
    closes.peaks[(100, *DB)] = 8
    t.add_closes(closes)
    rows = t.update(1.0, holding(100, 3))
    (a,) = row(rows, 100).advice
    # 20 opens in 1 s, none closed: the scan's 3 with headroom is 4; the peak 8
    assert (a.concurrency_peak, a.concurrency_p99, a.in_use, a.recommended) == (8, 3.0, 3, 8)
