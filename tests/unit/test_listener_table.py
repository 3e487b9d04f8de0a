"""Per-interval listener aggregation and the sk_drops double-count correction."""
from dataclasses import dataclass

from tracer.aggregate.listeners import ListenerTable, split_drops
from tracer.events import Accept, ListenerCounters

NS = 4026531833


@dataclass
class Diag:          # what sock_diag reports for a listener
    family: int
    saddr: str
    sport: int
    rqueue: int
    wqueue: int
    drops: int
    inode: int = 7
    cookie: int = 0

    def __post_init__(self):
        if not self.cookie:      # one socket per inode unless told otherwise
            self.cookie = 1000 + self.inode


def counters(ack=0, cookie=0, syn=0, synack=0, closed=False, port=80):
    return ListenerCounters(family=4, laddr="0.0.0.0", lport=port, ack_overflows=ack,
                            cookie_overflows=cookie, syn_overflows=syn,
                            synack_retransmits=synack, accepts=0, backlog_max=4,
                            syn_queue_len=0, pid=42, comm="srv", closed=closed, netns=NS)


def test_split_drops_request_socket_overflows_count_twice_cookies_once():
    # 10 SYN drops, 3 request-socket ACK overflows (6 in sk_drops), 2 cookie ones (2)
    assert split_drops(10 + 6 + 2, 3, 2) == (5, 10)
    assert split_drops(45, 0, 0) == (0, 45)           # loopback: all SYN-time
    assert split_drops(0, 0, 0) == (0, 0)
    assert split_drops(3, 5, 0) == (5, 0)             # never negative


def test_interval_deltas_from_sk_drops_and_counters():
    t = ListenerTable(drop_points_hooked=False)
    t.prime([(NS, Diag(4, "0.0.0.0", 80, 0, 4, drops=100))], [counters(ack=1)])
    rows = t.update(1.0, [(NS, Diag(4, "0.0.0.0", 80, 5, 4, drops=100 + 30 + 2 * 4))],
                    [counters(ack=1 + 4, synack=3)], {(NS, 4, "0.0.0.0", 80): 5},
                    {7: (42, "srv")})
    [r] = rows
    assert (r.drops, r.syn_drops, r.cookie_drops) == (4, 30, 0)
    assert r.drops_total == 34 and r.drops_per_s == 34.0
    assert (r.queue_len, r.queue_peak, r.backlog_max) == (5, 5, 4)
    assert (r.pid, r.comm, r.netns) == (42, "srv", NS)
    assert r.synack_retransmits == 3
    # nothing new: zero, totals kept
    [r] = t.update(1.0, [(NS, Diag(4, "0.0.0.0", 80, 5, 4, drops=138))], [counters(ack=5, synack=3)])
    assert (r.drops, r.syn_drops, r.drops_total, r.synack_retransmits) == (0, 0, 34, 0)


def test_drop_points_hooked_take_counters_as_they_are():
    t = ListenerTable(drop_points_hooked=True)
    t.prime([], [counters()])
    [r] = t.update(2.0, [], [counters(ack=2, cookie=1, syn=7)])
    assert (r.drops, r.cookie_drops, r.syn_drops, r.drops_per_s) == (3, 1, 7, 5.0)


def test_listener_opened_after_start_counts_from_zero():
    t = ListenerTable(drop_points_hooked=False)
    t.prime([], [])
    [r] = t.update(1.0, [(NS, Diag(4, "127.0.0.1", 8080, 5, 4, drops=45))], [])
    assert r.syn_drops == 45


def test_listener_opened_after_start_seen_by_bpf_too_counts_from_zero():
    # The usual case: BPF saw listen() and the first overflows in the same
    # interval in which sock_diag first lists the listener (bench: ~3 % of
    # the drops of a flood were lost to this interval).
    t = ListenerTable(drop_points_hooked=False)
    t.prime([], [])
    [r] = t.update(1.0, [(NS, Diag(4, "0.0.0.0", 80, 4, 4, drops=30 + 2 * 5))], [counters(ack=5)])
    assert (r.drops, r.syn_drops, r.drops_total) == (5, 30, 35)


def test_listener_opened_after_start_first_seen_through_an_accept_counts_from_zero():
    # The application accepted (an event, before the interval closes) while
    # the flood overflowed its queue: the entry exists, its sk_drops do not.
    t = ListenerTable(drop_points_hooked=False)
    t.prime([], [])
    t.add_accept(Accept(ts_ns=2, ts_handshake_ns=1, pid=42, tid=42, comm="srv", family=4,
                        laddr="127.0.0.1", lport=8080, raddr="127.0.0.1", rport=50000,
                        backlog_len=8, backlog_max=8, netns=NS))
    [r] = t.update(1.0, [(NS, Diag(4, "127.0.0.1", 8080, 8, 8, drops=40))], [])
    assert (r.syn_drops, r.drops_total, r.accepts) == (40, 40, 1)


def test_accept_waits_found_through_wildcard_listener():
    t = ListenerTable(drop_points_hooked=False)
    t.prime([(NS, Diag(4, "0.0.0.0", 80, 0, 128, drops=0))], [])
    for wait_ms in (1, 2, 2000):
        t.add_accept(Accept(ts_ns=10**10, ts_handshake_ns=10**10 - wait_ms * 10**6, pid=1,
                            tid=1, comm="srv", family=4, laddr="10.0.0.1", lport=80,
                            raddr="10.0.0.2", rport=5555, backlog_len=1, backlog_max=128,
                            netns=NS))
    [r] = t.update(1.0, [(NS, Diag(4, "0.0.0.0", 80, 0, 128, drops=0))], [])
    assert r.accepts == 3
    assert 1900_000 < r.accept_wait_p99_us <= 2000_000
    assert r.accept_wait_p50_us < 3000


def test_closed_listener_reported_once_then_gone():
    t = ListenerTable(drop_points_hooked=False)
    t.prime([], [counters(port=81)])
    assert [r.lport for r in t.update(1.0, [], [counters(port=81, closed=True)])] == [81]
    assert t.update(1.0, [], []) == []


def test_accept_resolution_cache_follows_listeners_that_come_and_go():
    # add_accept remembers which listener an accept's address resolved to;
    # the answer changes when the table gains or loses a key, and so must it.
    def accept():
        return Accept(ts_ns=2, ts_handshake_ns=1, pid=42, tid=42, comm="srv", family=4,
                      laddr="10.0.0.1", lport=80, raddr="10.0.0.2", rport=5555,
                      backlog_len=0, backlog_max=128, netns=NS)

    t = ListenerTable(drop_points_hooked=False)
    t.prime([], [])
    t.add_accept(accept())                 # nothing known: the exact key, made now
    rows = t.update(1.0, [(NS, Diag(4, "0.0.0.0", 80, 0, 128, drops=0))], [])
    assert sorted((r.laddr, r.accepts) for r in rows) == [("0.0.0.0", 0), ("10.0.0.1", 1)]
    # the exact key was not seen by sock_diag: gone; the wildcard one stays
    t.add_accept(accept())
    t.add_accept(accept())
    rows = t.update(1.0, [(NS, Diag(4, "0.0.0.0", 80, 0, 128, drops=0))], [])
    assert [(r.laddr, r.accepts) for r in rows] == [("0.0.0.0", 2)]
    # a listener on the exact address appears: accepts go to it from then on
    t.update(1.0, [(NS, Diag(4, "0.0.0.0", 80, 0, 128, drops=0)),
                   (NS, Diag(4, "10.0.0.1", 80, 0, 16, drops=0, inode=8))], [])
    t.add_accept(accept())
    rows = t.update(1.0, [(NS, Diag(4, "0.0.0.0", 80, 0, 128, drops=0)),
                          (NS, Diag(4, "10.0.0.1", 80, 0, 16, drops=0, inode=8))], [])
    assert sorted((r.laddr, r.accepts) for r in rows) == [("0.0.0.0", 0), ("10.0.0.1", 1)]
    # same, when the exact key is made by a counters entry within the interval
    t2 = ListenerTable(drop_points_hooked=False)
    t2.prime([(NS, Diag(4, "0.0.0.0", 80, 0, 128, drops=0))], [])
    t2.add_accept(accept())
    t2._get((NS, 4, "10.0.0.1", 80))      # as update() does for a new listener
    t2.add_accept(accept())
    rows = t2.update(1.0, [(NS, Diag(4, "0.0.0.0", 80, 0, 128, drops=0)),
                           (NS, Diag(4, "10.0.0.1", 80, 0, 16, drops=0, inode=8))], [])
    assert sorted((r.laddr, r.accepts) for r in rows) == [("0.0.0.0", 1), ("10.0.0.1", 1)]
    # a listener that closes (no key made in that update): its accepts' address
    # resolves to the wildcard from then on
    t3 = ListenerTable(drop_points_hooked=False)
    both = [(NS, Diag(4, "0.0.0.0", 80, 0, 128, drops=0)),
            (NS, Diag(4, "10.0.0.1", 80, 0, 16, drops=0, inode=8))]
    t3.prime(both, [])
    t3.add_accept(accept())
    rows = t3.update(1.0, both, [])
    assert sorted((r.laddr, r.accepts) for r in rows) == [("0.0.0.0", 0), ("10.0.0.1", 1)]
    t3.update(1.0, both[:1], [])           # 10.0.0.1:80 closed
    t3.add_accept(accept())
    assert [(r.laddr, r.accepts) for r in t3.update(1.0, both[:1], [])] == [("0.0.0.0", 1)]
