"""Closes that arrive before their open (tracer/lifetimes.py): kept for the
read they came in and the one after, then let go.

Every close here is either after both of its connect's times (start and
end) or before both, so the tests hold whichever of them is the open time.
They count joins, not hold times, for the same reason."""
import pytest

from tests.unit.test_lifetimes import SK, T0, accept, close_record, connect
from tracer import lifetimes
from tracer.events import Closes

LATER = T0 + 2_500_000        # after the connect's start (T0 - 300 µs) and end (T0)
EARLIER = T0 - 5_000_000      # before both: an earlier socket at the same address


def joined(closes: Closes) -> int:
    return sum(len(v) for v in closes.active.values()) + sum(closes.passive.values())


def opened(o, kind, closes, sk=SK):
    if kind == "connect":
        o.connected(connect(sk=sk), closes)
    else:
        o.accepted(accept(sk=sk, ts=T0, ts_handshake=T0 - 1000), closes)


KINDS = ["connect", "accept"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("reads_between,joins", [(0, True), (1, True), (2, False), (3, False)])
def test_a_close_waits_for_its_open_one_read_and_no_longer(kind, reads_between, joins):
    o, closes = lifetimes.OpenConnections(), Closes()
    o.closed_at(close_record(ts=LATER), 0, closes)
    for _ in range(reads_between):
        o.end_read()
    opened(o, kind, closes)
    if joins:
        assert joined(closes) == 1 and len(o) == 0
    else:
        # expired: the open is not closed by it, and stays open until its own close
        assert joined(closes) == 0 and len(o) == 1
        o.closed_at(close_record(ts=LATER + 1000), 0, closes)
        assert joined(closes) == 1 and len(o) == 0


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("reads_between", [0, 1])
def test_an_earlier_sockets_close_is_not_joined_while_it_waits(kind, reads_between):
    """Kernel addresses are reused within microseconds: a close from before
    the open is another socket's, even while it is still kept."""
    o, closes = lifetimes.OpenConnections(), Closes()
    o.closed_at(close_record(ts=EARLIER), 0, closes)
    for _ in range(reads_between):
        o.end_read()
    opened(o, kind, closes)
    assert joined(closes) == 0 and len(o) == 1


def test_an_early_close_joins_one_open_only():
    o, closes = lifetimes.OpenConnections(), Closes()
    o.closed_at(close_record(ts=LATER), 0, closes)
    o.connected(connect(), closes)
    assert joined(closes) == 1
    o.connected(connect(ts_end=T0 + 1000), closes)   # the address reused, same read
    assert joined(closes) == 1 and len(o) == 1


def test_early_closes_of_several_sockets_wait_independently():
    o, closes = lifetimes.OpenConnections(), Closes()
    o.closed_at(close_record(sk=SK, ts=LATER), 0, closes)          # read 1
    o.end_read()
    o.closed_at(close_record(sk=SK + 64, ts=LATER), 0, closes)     # read 2
    o.end_read()
    # read 3: SK's close has expired, SK + 64's is one read old
    o.connected(connect(sk=SK), closes)
    o.connected(connect(sk=SK + 64), closes)
    assert joined(closes) == 1 and len(o) == 1 and SK in o._open


def test_waiting_closes_are_bounded(monkeypatch):
    monkeypatch.setattr(lifetimes, "_EARLY_MAX", 2)
    o, closes = lifetimes.OpenConnections(), Closes()
    for i in range(3):
        o.closed_at(close_record(sk=SK + 64 * i, ts=LATER), 0, closes)
    for i in range(3):
        o.connected(connect(sk=SK + 64 * i), closes)
    assert joined(closes) == 2 and len(o) == 1 and SK + 128 in o._open


def test_an_evicted_open_is_counted_and_its_close_not_joined(monkeypatch):
    """MAX_OPEN: the oldest opens are let go and counted as untracked; the
    close of one of them then finds nothing, waits, and expires unjoined."""
    monkeypatch.setattr(lifetimes, "MAX_OPEN", 16)
    o, closes = lifetimes.OpenConnections(), Closes()
    for i in range(17):
        o.connected(connect(sk=SK + 64 * i), closes)
    assert o.untracked == 1 and len(o) == 16 and SK not in o._open
    for i in range(17):
        o.closed_at(close_record(sk=SK + 64 * i, ts=LATER), 0, closes)
    o.end_read()
    o.end_read()
    assert joined(closes) == 16 and len(o) == 0
    assert o.untracked + joined(closes) == 17     # every open: joined or counted
    o.connected(connect(sk=SK), closes)   # its close (after this open) has expired
    assert joined(closes) == 16 and len(o) == 1
