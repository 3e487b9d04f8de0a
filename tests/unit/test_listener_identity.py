"""One listener key everywhere (tracer/domain/listeners.py), and SO_REUSEPORT
groups summed per key without negative or restarted counts."""
from tracer.aggregate.listeners import ListenerTable
from tracer.domain.listeners import (ListenerKey, key_of_row, listener_key, listener_label,
                                     listener_of_accept, member_delta, wildcard)
from tracer.events import Accept, ListenerCounters
from tracer.replay.rows import listener_rows
from tests.unit.test_listener_table import NS, Diag

NS2 = NS + 1


def member(sk, *, ack=0, cookie=0, syn=0, closed=False, final=0, cookie_id=0, port=80,
           netns=NS, laddr="0.0.0.0", family=4, pid=42):
    return ListenerCounters(family=family, laddr=laddr, lport=port, ack_overflows=ack,
                            cookie_overflows=cookie, syn_overflows=syn, synack_retransmits=0,
                            accepts=0, backlog_max=8, syn_queue_len=0, pid=pid,
                            comm="nginx" if pid else None,
                            closed=closed, netns=netns, sk=sk, cookie=cookie_id,
                            drops_at_close=final)


def diag(cookie, drops, rqueue=0, netns=NS, port=80):
    return (netns, Diag(4, "0.0.0.0", port, rqueue, 8, drops=drops, inode=cookie,
                        cookie=cookie))


# ------------------------------------------------------------------ domain

def test_key_keeps_the_namespace_and_treats_null_as_unknown():
    assert listener_key(None, 4, "0.0.0.0", 80) == (0, 4, "0.0.0.0", 80)
    assert key_of_row({"netns": NS, "family": 4, "laddr": "0.0.0.0", "lport": 80}) != \
        key_of_row({"netns": NS2, "family": 4, "laddr": "0.0.0.0", "lport": 80})
    assert key_of_row({"family": 6, "laddr": "::", "lport": 80}).netns == 0


def test_wildcard_of_each_family():
    assert wildcard(4) == "0.0.0.0"
    assert wildcard(6) == "::"


def test_accepts_find_the_wildcard_listener_of_their_own_family_and_namespace():
    known = {listener_key(NS, 6, "::", 443), listener_key(NS, 4, "0.0.0.0", 443),
             listener_key(NS2, 4, "0.0.0.0", 80)}
    assert listener_of_accept(known, NS, 6, "::1", 443) == (NS, 6, "::", 443)
    assert listener_of_accept(known, NS, 4, "127.0.0.1", 443) == (NS, 4, "0.0.0.0", 443)
    # another namespace's wildcard is not ours
    assert listener_of_accept(known, NS, 4, "127.0.0.1", 80) == (NS, 4, "127.0.0.1", 80)


def test_label_names_the_namespace_only_when_it_tells_listeners_apart():
    k = ListenerKey(NS, 6, "::1", 80)
    assert listener_label(k, [NS]) == "[::1]:80"
    assert listener_label(k, [NS, NS2]) == f"[::1]:80 netns {NS}"


def test_a_counter_that_goes_down_is_a_new_start_never_negative():
    assert member_delta(10, 4) == 6
    assert member_delta(3, 9) == 3
    assert member_delta(5, None) == 5


# ------------------------------------------------------------------ live

def test_reuseport_members_are_summed_and_a_replaced_member_restarts_nothing():
    t = ListenerTable(drop_points_hooked=True)
    t.prime([], [member(1, syn=100), member(2, syn=50)])
    [r] = t.update(1.0, [], [member(1, syn=110), member(2, syn=55)])
    assert r.syn_drops == 15
    # member 2 closes (a reload): its last counts are read once...
    [r] = t.update(1.0, [], [member(1, syn=112), member(2, syn=60, closed=True)])
    assert r.syn_drops == 2 + 5
    # ...and its replacement (a new entry, maybe at a reused address) counts from 0
    [r] = t.update(1.0, [], [member(1, syn=112), member(3, syn=4), member(2, syn=1)])
    assert r.syn_drops == 4 + 1
    assert r.drops_total == 15 + 7 + 5


def test_sk_drops_of_every_member_and_of_one_closed_before_its_last_read():
    t = ListenerTable(drop_points_hooked=False)
    t.prime([diag(11, 1000), diag(12, 500)], [member(1), member(2)])
    [r] = t.update(1.0, [diag(11, 1010, rqueue=3), diag(12, 520, rqueue=9)],
                   [member(1), member(2)], {(NS, 4, "0.0.0.0", 80): 5})
    assert (r.drops, r.syn_drops) == (0, 30)
    assert r.queue_len == 9 and r.queue_peak == 9   # the fullest member, at the end
    # member 12 closed after 7 more drops; sock_diag no longer lists it
    [r] = t.update(1.0, [diag(11, 1011)],
                   [member(1), member(2, closed=True, final=527, cookie_id=12)])
    assert r.syn_drops == 1 + 7
    # a member opened and closed within one interval, never listed by sock_diag
    [r] = t.update(1.0, [diag(11, 1011)], [member(1), member(5, closed=True, final=4)])
    assert r.syn_drops == 4
    assert "listeners closed unread" not in t.evicted


def test_a_listener_sock_diag_never_lists_has_only_its_unreported_syn_drops_added_at_close():
    """Its namespace is out of the socket table's sight (held by sockets
    alone, or by one thread of a process that lives elsewhere): its intervals
    count what BPF saw, and at close its sk_drops says how many SYNs it
    dropped in its whole life. Those, and not the ACK-time overflows already
    reported (each twice in sk_drops), are the closing interval's: the kernel
    test saw 6 ACK-time drops (ListenOverflows 6) recorded as 6 + 12 SYN."""
    t = ListenerTable(drop_points_hooked=False)
    t.prime([], [])
    [r] = t.update(1.0, [], [member(1, ack=3)])        # listen() seen: pid known
    assert (r.drops, r.syn_drops) == (3, 0)
    [r] = t.update(1.0, [], [member(1, ack=6)])
    assert (r.drops, r.syn_drops) == (3, 0)
    # closed after 1 more ACK-time and 2 SYN-time drops: sk_drops 2 * 7 + 2
    [r] = t.update(1.0, [], [member(1, ack=7, closed=True, final=2 * 7 + 2)])
    assert (r.drops, r.syn_drops) == (1, 2)
    assert r.drops_total == 7 + 2


def test_a_listener_known_only_from_its_drops_leaves_its_sk_drops_alone_at_close():
    """Opened before we started, in a namespace sock_diag cannot read: BPF
    made its entry at its first drop (listen() not seen, no owner), so its
    sk_drops at close holds drops from before: only what BPF saw counts."""
    t = ListenerTable(drop_points_hooked=False)
    t.prime([], [])
    [r] = t.update(1.0, [], [member(1, ack=3, pid=0)])
    assert (r.drops, r.syn_drops) == (3, 0)
    [r] = t.update(1.0, [], [member(1, ack=6, pid=0, closed=True, final=100 + 2 * 6)])
    assert (r.drops, r.syn_drops) == (3, 0)
    # the same, opened and closed within the one interval
    [r] = t.update(1.0, [], [member(2, ack=2, pid=0, closed=True, final=100 + 2 * 2)])
    assert (r.drops, r.syn_drops) == (2, 0)


def test_a_member_gone_without_its_last_value_is_counted_where_the_user_sees_it():
    t = ListenerTable(drop_points_hooked=False)
    t.prime([diag(11, 0), diag(12, 0)], [])
    t.update(1.0, [diag(11, 0), diag(12, 0)], [])
    t.update(1.0, [diag(11, 0)], [])
    assert t.evicted["listeners closed unread"] == 1


def test_cookie_overflows_are_not_request_socket_overflows():
    # 2 cookie ACK-time overflows (once each in sk_drops) and 6 SYN drops
    t = ListenerTable(drop_points_hooked=False)
    t.prime([diag(11, 0)], [member(1)])
    [r] = t.update(1.0, [diag(11, 2 + 6)], [member(1, cookie=2)])
    assert (r.drops, r.syn_drops, r.cookie_drops) == (2, 6, 2)
    # 2 request-socket ones (twice each) and 6 SYN drops
    [r] = t.update(1.0, [diag(11, 8 + 4 + 6)], [member(1, cookie=2, ack=2)])
    assert (r.drops, r.syn_drops, r.cookie_drops) == (2, 6, 0)


def test_peak_includes_the_queue_at_the_end_of_the_interval():
    t = ListenerTable(drop_points_hooked=False)
    t.prime([diag(11, 0)], [])
    [r] = t.update(1.0, [diag(11, 0, rqueue=7)], [], {})
    assert r.queue_peak == 7


def test_two_namespaces_on_one_address_stay_apart_live_and_in_replay():
    t = ListenerTable(drop_points_hooked=False)
    t.prime([diag(11, 0), diag(21, 0, netns=NS2)], [])
    t.add_accept(Accept(ts_ns=2, ts_handshake_ns=1, pid=1, tid=1, comm="a", family=4,
                        laddr="10.0.0.1", lport=80, raddr="10.0.0.2", rport=5000,
                        backlog_len=1, backlog_max=8, netns=NS2))
    rows = t.update(1.0, [diag(11, 5), diag(21, 0, netns=NS2)], [])
    by_ns = {r.netns: r for r in rows}
    assert set(by_ns) == {NS, NS2}
    assert (by_ns[NS].syn_drops, by_ns[NS].accepts) == (5, 0)
    assert (by_ns[NS2].syn_drops, by_ns[NS2].accepts) == (0, 1)

    lis = [{"ts": 1, "family": 4, "laddr": "0.0.0.0", "lport": 80, "netns": ns,
            "drops": d, "queue_peak": 0, "accepts": None} for ns, d in ((NS, 5), (NS2, 0))]
    ovf = [{"ts": 1, "family": 4, "laddr": "0.0.0.0", "lport": 80, "netns": NS, "drops": 3,
            "syn_drops": 2, "cookie_drops": 3}]
    acc = [{"family": 4, "laddr": "10.0.0.1", "lport": 80, "netns": NS2,
            "queue_wait_us": 10.0}]
    out = {r.netns: r for r in listener_rows(lis, ovf, acc, 1.0, {})}
    assert set(out) == {NS, NS2}
    assert (out[NS].drops, out[NS].syn_drops, out[NS].cookie_drops) == (3, 2, 3)
    assert (out[NS2].drops, out[NS2].accepts) == (0, 1)
    # every view shows the label: live and replayed, it names the namespace
    assert {r.label for r in rows} == {r.label for r in out.values()} == {
        f"0.0.0.0:80 netns {NS}", f"0.0.0.0:80 netns {NS2}"}


def test_listeners_of_one_namespace_are_labelled_by_address_alone():
    t = ListenerTable(drop_points_hooked=False)
    t.prime([diag(11, 0)], [])
    rows = t.update(1.0, [diag(11, 0)], [])
    assert [r.label for r in rows] == ["0.0.0.0:80"]


def test_an_overflow_between_the_two_reads_is_counted_once_over_two_intervals():
    # The BPF counter saw the request-socket overflow in interval 1, sk_drops
    # (read before it) only in interval 2: 1 SYN drop + 1 overflow in all.
    t = ListenerTable(drop_points_hooked=False)
    t.prime([diag(11, 0)], [member(1)])
    [r1] = t.update(1.0, [diag(11, 1)], [member(1, ack=1)])
    [r2] = t.update(1.0, [diag(11, 3)], [member(1, ack=1)])
    assert (r1.drops + r2.drops, r1.syn_drops + r2.syn_drops) == (1, 1)
    assert r2.drops_total == 2
