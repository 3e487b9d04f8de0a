"""The sock_diag netlink parser, fed hand-built datagrams: every test runs
with the compiled parser (tracer/_fastpath.c diag_messages) and with the
pure-Python one, and random, damaged datagrams must get the same answer,
sockets or error, from both.

The byte layouts here are written out from the kernel's UAPI headers
(linux/netlink.h, linux/inet_diag.h, linux/sock_diag.h) independently of
the module's own struct formats, so a wrong offset in either shows up.
"""

from __future__ import annotations
import errno
import random
import socket
import struct

import pytest

from tracer import fastpath
from tracer.probes import sock_diag as sd

SEQ = 7


@pytest.fixture(autouse=True, params=["compiled", "python"])
def parser(request, monkeypatch):
    if request.param == "compiled":
        if fastpath.native is None:
            pytest.skip(f"no compiled parser here: {fastpath.STATUS}")
    else:
        monkeypatch.setattr(sd, "_native", None)
    return request.param
NLM_F_MULTI = 0x2


def nlmsg(mtype, payload, seq=SEQ, flags=NLM_F_MULTI):
    # struct nlmsghdr { u32 len; u16 type; u16 flags; u32 seq; u32 pid; }, padded to 4
    msg = struct.pack("<IHHII", 16 + len(payload), mtype, flags, seq, 4242) + payload
    return msg + b"\0" * (-len(msg) % 4)


def nla(atype, payload):
    attr = struct.pack("<HH", 4 + len(payload), atype) + payload
    return attr + b"\0" * (-len(attr) % 4)


def diag_msg(af, state, src, sport, dst, dport, *, cookie=0, rqueue=0, wqueue=0,
             uid=0, inode=0, attrs=b""):
    # struct inet_diag_msg: 4 x u8, inet_diag_sockid (be16 sport, be16 dport,
    # be32 src[4], be32 dst[4], u32 if, u32 cookie[2]), then 5 x u32.
    def addr(text):
        raw = socket.inet_pton(af, text)
        return raw + b"\0" * (16 - len(raw))
    body = bytes([af, state, 0, 0])
    body += sport.to_bytes(2, "big") + dport.to_bytes(2, "big")
    body += addr(src) + addr(dst)
    body += struct.pack("<III", 0, cookie & 0xFFFFFFFF, cookie >> 32)
    body += struct.pack("<IIIII", 0, rqueue, wqueue, uid, inode)
    assert len(body) == 72  # sizeof(struct inet_diag_msg)
    return nlmsg(sd.SOCK_DIAG_BY_FAMILY, body + attrs)


def skmeminfo(rmem=0, rcvbuf=131072, wmem_alloc=0, sndbuf=16384, fwd=0, wmem_queued=0,
              optmem=0, backlog=0, drops=0):
    return nla(7, struct.pack("<9I", rmem, rcvbuf, wmem_alloc, sndbuf, fwd, wmem_queued,
                              optmem, backlog, drops))


def done(err=0):
    return nlmsg(3, struct.pack("<i", err))


def error(err):
    # struct nlmsgerr { int error; struct nlmsghdr msg; }
    return nlmsg(2, struct.pack("<i", err) + struct.pack("<IHHII", 72, 20, 0x301, SEQ, 0), flags=0)


def parse(data):
    out = []
    finished = sd.parse_datagram(data, SEQ, out)
    return out, finished


def test_ipv4_established_with_memory_and_shutdown():
    data = diag_msg(socket.AF_INET, 1, "10.1.2.3", 8080, "192.168.7.9", 51234,
                    cookie=0x0000_0001_8000_0002, rqueue=100, wqueue=7, uid=1000, inode=424242,
                    attrs=nla(8, b"\x01") + skmeminfo(rmem=2304, wmem_queued=4608, drops=3))
    (s,), finished = parse(data)
    assert not finished
    assert s == sd.TcpSocket(family=4, state=1, saddr="10.1.2.3", sport=8080,
                             daddr="192.168.7.9", dport=51234, inode=424242, uid=1000,
                             cookie=(1 << 32) | 0x8000_0002, rqueue=100, wqueue=7, drops=3,
                             rmem_alloc=2304, wmem_queued=4608, shutdown=1)
    assert s.state_name == "ESTABLISHED"


def test_listener_queue_fields_and_ipv6_wildcard():
    data = diag_msg(socket.AF_INET6, 10, "::", 443, "::", 0, rqueue=5, wqueue=4,
                    inode=9, attrs=skmeminfo(drops=12))
    (s,), _ = parse(data)
    assert (s.family, s.state_name, s.saddr, s.sport, s.daddr, s.dport) == (6, "LISTEN", "::", 443, "::", 0)
    assert (s.rqueue, s.wqueue, s.drops) == (5, 4, 12)


def test_ipv4_mapped_ipv6_addresses_are_text_like_ss():
    data = diag_msg(socket.AF_INET6, 8, "::ffff:127.0.0.1", 40000, "::ffff:127.0.0.1", 5000)
    (s,), _ = parse(data)
    assert (s.family, s.saddr, s.daddr) == (6, "::ffff:127.0.0.1", "::ffff:127.0.0.1")
    assert s.state_name == "CLOSE_WAIT"


def test_time_wait_without_attributes_has_no_memory_fields():
    (s,), _ = parse(diag_msg(socket.AF_INET, 6, "127.0.0.1", 1, "127.0.0.1", 2))
    assert (s.inode, s.drops, s.rmem_alloc, s.wmem_queued, s.shutdown) == (0, None, None, None, None)


def test_short_skmeminfo_from_an_old_kernel_gives_no_drops():
    # Kernels before SK_MEMINFO_DROPS sent 8 values.
    attr = nla(7, struct.pack("<8I", 1, 2, 3, 4, 5, 6, 7, 8))
    (s,), _ = parse(diag_msg(socket.AF_INET, 1, "1.1.1.1", 1, "2.2.2.2", 2, attrs=attr))
    assert (s.rmem_alloc, s.wmem_queued, s.drops) == (1, 6, None)


def test_unknown_and_nested_flagged_attributes_are_skipped():
    attrs = nla(4, b"cubic\0") + nla(0x8000 | 7, struct.pack("<9I", *range(9)))
    (s,), _ = parse(diag_msg(socket.AF_INET, 1, "1.1.1.1", 1, "2.2.2.2", 2, attrs=attrs))
    assert s.drops == 8  # NLA_F_NESTED stripped, the attribute still read


def test_multipart_dump_ends_only_at_done():
    first = diag_msg(socket.AF_INET, 10, "0.0.0.0", 22, "0.0.0.0", 0) + \
        diag_msg(socket.AF_INET, 1, "127.0.0.1", 22, "127.0.0.1", 5555)
    out = []
    assert sd.parse_datagram(first, SEQ, out) is False
    assert sd.parse_datagram(diag_msg(socket.AF_INET, 1, "127.0.0.1", 22, "127.0.0.1", 6666) + done(),
                             SEQ, out) is True
    assert [s.dport for s in out] == [0, 5555, 6666]


def test_messages_of_another_request_are_ignored():
    stale = nlmsg(sd.SOCK_DIAG_BY_FAMILY, diag_msg(socket.AF_INET, 1, "1.1.1.1", 1, "2.2.2.2", 2)[16:], seq=SEQ - 1)
    out, finished = parse(stale + done())
    assert out == [] and finished


def test_nlmsg_error_raises_with_the_errno_text():
    with pytest.raises(sd.SockDiagError, match="Operation not permitted"):
        parse(error(-errno.EPERM))


def test_missing_tcp_diag_module_says_how_to_fix():
    with pytest.raises(sd.SockDiagError, match="modprobe tcp_diag"):
        parse(error(-errno.ENOENT))


def test_error_zero_is_an_ack_not_a_failure():
    out, finished = parse(error(0) + done())
    assert out == [] and finished


def test_done_carrying_an_error_raises():
    with pytest.raises(sd.SockDiagError, match="Interrupted system call"):
        parse(done(-errno.EINTR))


def test_interrupted_dump_raises():
    msg = bytearray(diag_msg(socket.AF_INET, 1, "1.1.1.1", 1, "2.2.2.2", 2))
    struct.pack_into("<H", msg, 6, NLM_F_MULTI | 0x10)  # NLM_F_DUMP_INTR
    with pytest.raises(sd.SockDiagError, match="DUMP_INTR"):
        parse(bytes(msg))


@pytest.mark.parametrize("cut", [20, 60])
def test_truncated_message_raises(cut):
    msg = bytearray(diag_msg(socket.AF_INET, 1, "1.1.1.1", 1, "2.2.2.2", 2)[:16 + cut])
    struct.pack_into("<I", msg, 0, len(msg))
    with pytest.raises(sd.SockDiagError, match="truncated"):
        parse(bytes(msg))


def test_length_past_the_datagram_raises():
    msg = bytearray(diag_msg(socket.AF_INET, 1, "1.1.1.1", 1, "2.2.2.2", 2))
    struct.pack_into("<I", msg, 0, len(msg) + 40)
    with pytest.raises(sd.SockDiagError, match="malformed"):
        parse(bytes(msg))


def test_attribute_length_past_the_message_raises():
    bad = struct.pack("<HH", 200, 7) + b"\0" * 8
    with pytest.raises(sd.SockDiagError, match="malformed attribute"):
        parse(diag_msg(socket.AF_INET, 1, "1.1.1.1", 1, "2.2.2.2", 2, attrs=bad))


def test_request_layout():
    req = sd.build_request(6, sd.state_mask(sd.LISTEN), seq=99)
    assert len(req) == 16 + 56  # nlmsghdr + inet_diag_req_v2
    length, mtype, flags, seq, pid = struct.unpack_from("<IHHII", req)
    assert (length, mtype, flags, seq, pid) == (72, 20, 0x301, 99, 0)  # REQUEST | DUMP
    family, proto, ext, pad, states = struct.unpack_from("<BBBBI", req, 16)
    assert (family, proto, pad) == (socket.AF_INET6, socket.IPPROTO_TCP, 0)
    assert ext == 1 << (7 - 1)  # INET_DIAG_SKMEMINFO
    assert states == 1 << 10
    assert req[24:] == b"\0" * 48  # no socket id: dump everything


def test_request_for_both_families_layout():
    req = sd.build_request_both(sd.state_mask(sd.ESTABLISHED, sd.LISTEN), seq=98)
    assert len(req) == 16 + 60  # nlmsghdr + inet_diag_req
    length, mtype, flags, seq, pid = struct.unpack_from("<IHHII", req)
    assert (length, mtype, flags, seq, pid) == (76, 18, 0x301, 98, 0)  # TCPDIAG_GETSOCK
    family, src_len, dst_len, ext = struct.unpack_from("<BBBB", req, 16)
    assert (family, src_len, dst_len) == (socket.AF_UNSPEC, 0, 0)  # no family: both
    assert ext == 1 << (7 - 1)  # INET_DIAG_SKMEMINFO
    assert req[20:68] == b"\0" * 48  # no socket id: dump everything
    assert struct.unpack_from("<II", req, 68) == ((1 << 1) | (1 << 10), 0)  # states, dbs


def test_replies_to_the_old_request_parse_alike():
    msg = diag_msg(socket.AF_INET6, 1, "::1", 80, "::1", 5000, inode=9, attrs=skmeminfo())
    old = msg[:4] + struct.pack("<H", 18) + msg[6:]   # the same body, type TCPDIAG_GETSOCK
    assert parse(old + done()) == parse(msg + done())
    assert parse(old)[0][0].sport == 80


def test_state_mask_adds_request_sockets_to_syn_recv():
    assert sd.state_mask(sd.SYN_RECV) == (1 << 3) | (1 << 12)
    assert sd.ALL_STATES & (1 << sd.BOUND_INACTIVE) == 0
    assert all(sd.ALL_STATES & (1 << s) for s in range(1, 13))


def test_bad_family_is_refused_before_any_io():
    with pytest.raises(sd.SockDiagError, match="family must be 4 or 6"):
        sd.tcp_sockets(families=(5,))


def _random_message(rng: random.Random) -> bytes:
    af = rng.choice([socket.AF_INET, socket.AF_INET6, socket.AF_INET6, 0, 7])
    body = bytes([af, rng.randrange(256), rng.randrange(256), rng.randrange(256)])
    body += rng.randbytes(4) + rng.randbytes(32)                     # ports, addresses
    body += struct.pack("<III", rng.randrange(4), rng.getrandbits(32), rng.getrandbits(32))
    body += struct.pack("<5I", *(rng.getrandbits(32) for _ in range(5)))
    attrs = b""
    for _ in range(rng.randrange(4)):
        kind = rng.randrange(5)
        if kind == 0:       # sk_meminfo of any length, an old kernel's or a future one's
            n = rng.randrange(13)
            attrs += nla(7 | rng.choice([0, 0x8000, 0x4000]),
                         struct.pack(f"<{n}I", *(rng.getrandbits(32) for _ in range(n))))
        elif kind == 1:
            attrs += nla(8, rng.randbytes(rng.randrange(3)))          # shutdown, maybe empty
        elif kind == 2:
            attrs += nla(rng.randrange(1, 40), rng.randbytes(rng.randrange(20)))
        elif kind == 3:     # a length that lies
            attrs += struct.pack("<HH", rng.randrange(12), 7) + rng.randbytes(rng.randrange(8))
        else:
            attrs += rng.randbytes(rng.randrange(1, 6))               # a stray tail
    mtype = rng.choice([sd.SOCK_DIAG_BY_FAMILY] * 6 + [sd.TCPDIAG_GETSOCK] * 3 + [1, 2, 3, 4, 99])
    seq = SEQ if rng.random() < 0.9 else SEQ + 1
    flags = NLM_F_MULTI | (sd.NLM_F_DUMP_INTR if rng.random() < 0.03 else 0)
    if mtype in (2, 3):
        return nlmsg(mtype, struct.pack("<i", rng.choice([0, -1, -2, -22])), seq=seq, flags=flags)
    payload = body + attrs
    if rng.random() < 0.05:
        payload = payload[:rng.randrange(len(payload))]               # a truncated message
    return nlmsg(mtype, payload, seq=seq, flags=flags)


def _outcome(data: bytes, native) -> tuple:
    saved, sd._native = sd._native, native
    out: list = []
    try:
        done = sd.parse_datagram(data, SEQ, out)
        return ("done" if done else "more", repr(out))
    except sd.SockDiagError as e:
        return (type(e).__name__, str(e), repr(out))
    finally:
        sd._native = saved


def test_random_and_damaged_datagrams_parse_alike(parser):
    """Sockets of both families and none, every attribute length, lengths
    that lie, truncated messages and datagrams, other requests' messages,
    errors, ends and unknown types, then bytes flipped at random: the
    compiled parser must give what the Python one gives, error text included."""
    if parser == "python":
        pytest.skip("compares the two parsers: run once, as the compiled case")
    rng = random.Random(20261206)
    kinds = set()
    for case in range(3000):
        data = b"".join(_random_message(rng) for _ in range(rng.randrange(1, 6)))
        if case % 3 == 1:
            data = data[:rng.randrange(len(data) + 1)]
        elif case % 3 == 2:
            damaged = bytearray(data)
            for _ in range(rng.randrange(1, 4)):
                damaged[rng.randrange(len(damaged))] = rng.randrange(256)
            data = bytes(damaged)
        got, want = _outcome(data, fastpath.native), _outcome(data, None)
        assert got == want, (case, data.hex())
        kinds.add(want[0])
    # the cases reached every ending: complete, partial and each error
    assert kinds >= {"done", "more", "SockDiagError", "SockDiagRefused"}
