"""The join of close records with the opens of the same socket
(tracer/lifetimes.py): the kernel sends only (sk, time) on close."""
import ctypes
import struct

import pytest

from tracer import events, lifetimes
from tracer.events import C, Accept, Closes, Connect

SK = 0xFFFF888800001000
T0 = 5_000_000_000

# close_event by hand: type, oldstate, ts_ns, sk
CLOSE_LAYOUT = "=IIQQ"


def close_record(sk=SK, ts=T0 + 2_500_000, oldstate=5) -> memoryview:
    return memoryview(struct.pack(CLOSE_LAYOUT, C["EV_CLOSE"], oldstate, ts, sk))


def connect(sk=SK, pid=7, daddr="10.0.0.5", dport=5432, ts_end=T0) -> Connect:
    return Connect(ts_start_ns=ts_end - 300_000, ts_end_ns=ts_end, pid=pid, tid=pid, comm="client",
                   family=4, saddr="10.0.0.1", sport=40000, daddr=daddr, dport=dport,
                   outcome="established", err=0, syn_retransmits=0, sk=sk)


def accept(sk=SK, pid=9, ts=T0, ts_handshake=T0 - 1000) -> Accept:
    return Accept(ts_ns=ts, ts_handshake_ns=ts_handshake, pid=pid, tid=pid, comm="server",
                  family=4, laddr="10.0.0.1", lport=80, raddr="10.0.0.7", rport=50000,
                  backlog_len=1, backlog_max=128, sk=sk)


def test_hand_packed_close_is_the_record():
    assert struct.calcsize(CLOSE_LAYOUT) == ctypes.sizeof(events.CloseRecord) == events.CLOSE_SIZE
    r = events.CLOSE_UNPACK(close_record(), 0)
    assert (r[events.CLOSE_SK], r[events.CLOSE_TS]) == (SK, T0 + 2_500_000)


def test_connect_then_close_gives_its_lifetime_by_destination():
    o, closes = lifetimes.OpenConnections(), Closes()
    o.connected(connect(), closes)
    o.connected(connect(sk=SK + 64, daddr="fd00::9", dport=443), closes)
    assert len(o) == 2 and len(closes) == 0
    o.closed_at(close_record(), 0, closes)
    o.closed_at(close_record(sk=SK + 64, ts=T0 + 10_000), 0, closes)
    # from connect() (300 µs before the handshake ended) to close
    assert closes.active == {(7, 4, "10.0.0.5", 5432): [2800.0], (7, 4, "fd00::9", 443): [310.0]}
    assert closes.passive == {} and len(o) == 0


def test_accept_then_close_counts_for_the_acceptor():
    o, closes = lifetimes.OpenConnections(), Closes()
    o.accepted(accept(), closes)
    o.closed_at(close_record(), 0, closes)
    assert closes.passive == {9: 1} and closes.active == {}


def test_close_of_a_socket_never_seen_opened_is_let_go():
    o, closes = lifetimes.OpenConnections(), Closes()
    o.closed_at(close_record(), 0, closes)
    o.end_read()
    o.end_read()
    # the address is reused by a connection opened later: not closed by that record
    o.connected(connect(ts_end=T0 + 9_000_000), closes)
    assert len(closes) == 0 and len(o) == 1


def test_a_close_written_before_the_accept_is_joined_when_the_accept_comes():
    """The peer reset the connection while it sat in the accept queue: the
    close record comes first, the accept event in the next read."""
    o, closes = lifetimes.OpenConnections(), Closes()
    o.closed_at(close_record(ts=T0 - 500), 0, closes)
    o.end_read()
    o.accepted(accept(ts=T0, ts_handshake=T0 - 1000), closes)
    assert closes.passive == {9: 1} and len(o) == 0


def test_an_earlier_sockets_close_at_the_same_address_does_not_close_a_new_one():
    o, closes = lifetimes.OpenConnections(), Closes()
    # unknown socket, same address, closed before the new one's connect() began
    o.closed_at(close_record(ts=T0 - 350_000), 0, closes)
    o.connected(connect(ts_end=T0), closes)                 # new connection: still open
    assert len(closes) == 0 and len(o) == 1
    o.closed_at(close_record(ts=T0 + 1_000_000), 0, closes)
    assert closes.active == {(7, 4, "10.0.0.5", 5432): [1300.0]}


def test_a_connection_is_held_from_connect_not_from_the_handshakes_end():
    """Little's law counts the handshake wait: a 1 s SYN retransmit holds a
    pool slot for that second too."""
    o, closes = lifetimes.OpenConnections(), Closes()
    ev = Connect(ts_start_ns=T0 - 1_000_000_000, ts_end_ns=T0, pid=7, tid=7, comm="client",
                 family=4, saddr="10.0.0.1", sport=40000, daddr="10.0.0.5", dport=5432,
                 outcome="established", err=0, syn_retransmits=1, sk=SK)
    o.connected(ev, closes)
    o.closed_at(close_record(ts=T0 + 5_000_000), 0, closes)
    assert closes.active == {(7, 4, "10.0.0.5", 5432): [1_005_000.0]}


def test_a_failed_connect_is_not_opened():
    """The session opens only established connects; a failed one's socket
    may still reach CLOSE from another state later (it is not ours)."""
    o, closes = lifetimes.OpenConnections(), Closes()
    o.closed_at(close_record(), 0, closes)
    assert len(closes) == 0


def test_a_full_table_lets_the_oldest_go_and_counts_them(monkeypatch):
    monkeypatch.setattr(lifetimes, "MAX_OPEN", 2)
    o, closes = lifetimes.OpenConnections(), Closes()
    for i in range(4):
        o.connected(connect(sk=SK + 64 * i), closes)
    assert len(o) == 2 and o.untracked == 2
    o.connected(connect(sk=SK + 64 * 3), closes)   # an address already in it is replaced
    assert o.untracked == 2
    # the newest are the ones kept: their closes are joined, the oldest's not
    o.closed_at(close_record(sk=SK + 64 * 3), 0, closes)
    o.closed_at(close_record(sk=SK), 0, closes)
    assert sum(len(v) for v in closes.active.values()) == 1 and len(o) == 1


def test_a_full_table_lets_a_sixteenth_go_at_a_time(monkeypatch):
    monkeypatch.setattr(lifetimes, "MAX_OPEN", 64)
    o, closes = lifetimes.OpenConnections(), Closes()
    for i in range(64 + 1):
        o.connected(connect(sk=SK + 64 * i), closes)
    assert o.untracked == 4 and len(o) == 61
    assert SK not in o._open and SK + 64 * 4 in o._open


@pytest.mark.parametrize("first", ["open", "close"])
def test_perf_buffer_order_either_way_gives_the_same_tally(first):
    """Per-CPU perf buffers are read one CPU after another: the close may be
    read before the open it follows."""
    o, closes = lifetimes.OpenConnections(), Closes()
    steps = [lambda: o.connected(connect(), closes), lambda: o.closed_at(close_record(), 0, closes)]
    for step in (steps if first == "open" else steps[::-1]):
        step()
    assert closes.active == {(7, 4, "10.0.0.5", 5432): [2800.0]}


def test_peaks_count_the_connections_a_flow_has_open_at_once():
    """8 clients reconnecting: at most 8 open at once, whatever the order of
    opens and closes; eviction and a reused address keep the count honest."""
    o, closes = lifetimes.OpenConnections(), Closes()
    key = (7, 4, "10.0.0.5", 5432)
    for i in range(8):
        o.connected(connect(sk=SK + 64 * i, ts_end=T0 + i), closes)
    assert closes.peaks == {key: 8}
    for rnd in range(3):   # each client closes, then reconnects
        for i in range(8):
            o.closed_at(close_record(sk=SK + 64 * i, ts=T0 + 10_000_000 * (rnd + 1)), 0, closes)
            o.connected(connect(sk=SK + 64 * i, ts_end=T0 + 10_000_000 * (rnd + 1) + 1), closes)
    assert closes.peaks == {key: 8} and len(o) == 8
    # a new connect at an address whose close was never seen replaces it
    fresh = Closes()
    o.connected(connect(sk=SK, ts_end=T0 + 50_000_000), fresh)
    assert fresh.peaks == {key: 8}
    o.connected(connect(sk=SK + 64 * 8, ts_end=T0 + 50_000_001), fresh)
    assert fresh.peaks == {key: 9}
    for i in range(9):
        o.closed_at(close_record(sk=SK + 64 * i, ts=T0 + 60_000_000), 0, fresh)
    assert o._live == {} and len(o) == 0


def test_peaks_forget_connections_let_go_from_a_full_table(monkeypatch):
    monkeypatch.setattr(lifetimes, "MAX_OPEN", 2)
    o, closes = lifetimes.OpenConnections(), Closes()
    for i in range(4):
        o.connected(connect(sk=SK + 64 * i), closes)
    assert closes.peaks == {(7, 4, "10.0.0.5", 5432): 2} and o.untracked == 2
