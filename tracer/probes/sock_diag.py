"""The kernel's own table of TCP sockets, read over NETLINK_SOCK_DIAG (what
`ss` uses), without BPF.

The tracer sees only what happens after it starts; this is how it learns the
listeners and connections that already existed, reconciles its tables every
few seconds, and checks itself against ground truth.

What the kernel reports, per state:
- LISTEN: `rqueue` is the current accept-queue length (sk_ack_backlog) and
  `wqueue` the backlog given to listen(), capped by net.core.somaxconn
  (sk_max_ack_backlog); the queue holds backlog + 1 before it overflows.
  `drops` is the listener's sk_drops, the `d<N>` of `ss -ltm`. Measured on
  6.18: it moves with TcpExt ListenDrops (one per SYN dropped for a full
  SYN or accept queue, one per cookie ACK dropped for a full accept queue),
  plus one more for each ACK that finds the queue full
  while a request socket exists (kfree_skb reason TCP_LISTEN_OVERFLOW):
  Δsk_drops = ΔListenDrops(this listener) + #TCP_LISTEN_OVERFLOW. Every
  count is a packet, not a client: a client's retransmitted SYNs count again.
- other full sockets: `rqueue`/`wqueue` are bytes not yet read by the
  application / not yet acknowledged by the peer (a received FIN counts as
  one byte of rqueue, as in `ss`).
- SYN_RECV (request sockets) and TIME_WAIT: no owner, so inode and uid are 0,
  queues 0, and the memory fields None.

Addresses are text as `ss` prints them: an IPv6 socket talking IPv4 shows
"::ffff:127.0.0.1" and has family 6.
"""
from __future__ import annotations

import ctypes
import functools
import itertools
import os
import socket
import struct
import threading
from typing import Iterable, NamedTuple, Optional

from tracer import fastpath


NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
# The older request (inet_diag_req): its dump has no family, so one walk of
# the kernel's socket hash tables answers for IPv4 and IPv6 together. A
# walk costs the same whatever it finds (~10 ms at 260k hash buckets and 40k
# TIME_WAIT sockets here, BENCHMARKS.md section 19), so both families at once
# cost half of one request per family. Replies carry this type too.
TCPDIAG_GETSOCK = 18
_INET_DIAG_REPLIES = (SOCK_DIAG_BY_FAMILY, TCPDIAG_GETSOCK)

NLMSG_NOOP, NLMSG_ERROR, NLMSG_DONE, NLMSG_OVERRUN = 1, 2, 3, 4
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300  # NLM_F_ROOT | NLM_F_MATCH
NLM_F_DUMP_INTR = 0x10
NLA_TYPE_MASK = 0x3FFF  # strips NLA_F_NESTED / NLA_F_NET_BYTEORDER

INET_DIAG_SKMEMINFO = 7
INET_DIAG_SHUTDOWN = 8  # always sent for full sockets; costs nothing to parse
# sk_meminfo slots (linux/sock_diag.h SK_MEMINFO_*)
_SKMEM_RMEM_ALLOC, _SKMEM_WMEM_QUEUED, _SKMEM_DROPS = 0, 5, 8

STATE_NAMES = {
    1: "ESTABLISHED",
    2: "SYN_SENT",
    3: "SYN_RECV",
    4: "FIN_WAIT1",
    5: "FIN_WAIT2",
    6: "TIME_WAIT",
    7: "CLOSE",
    8: "CLOSE_WAIT",
    9: "LAST_ACK",
    10: "LISTEN",
    11: "CLOSING",
    12: "NEW_SYN_RECV",
    13: "BOUND_INACTIVE",
}
ESTABLISHED, SYN_SENT, SYN_RECV, TIME_WAIT, CLOSE_WAIT, LISTEN = 1, 2, 3, 6, 8, 10
NEW_SYN_RECV, BOUND_INACTIVE = 12, 13

# Every state a connection or listener can be in. Request sockets are asked
# for with the NEW_SYN_RECV bit but reported as SYN_RECV (3). BOUND_INACTIVE
# (bound, never listened or connected; 6.5+) is left out: not a connection,
# and `ss -ta` leaves it out too. Ask for it with state_mask(BOUND_INACTIVE);
# the kernel then reports those sockets with state CLOSE (7).
ALL_STATES = sum(1 << s for s in range(ESTABLISHED, NEW_SYN_RECV + 1))

_FAMILY_AF = {4: socket.AF_INET, 6: socket.AF_INET6}
_AF_FAMILY = {socket.AF_INET: 4, socket.AF_INET6: 6}

_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
# inet_diag_req_v2: family, protocol, ext, pad, states, then inet_diag_sockid
# (sport, dport, src[16], dst[16], if, cookie[2]); all zero = no match on id.
_REQ = struct.Struct("=BBBBI48x")
# inet_diag_req: family (0: any), src_len, dst_len, ext, inet_diag_sockid
# (zero: no match on id), states, dbs
_REQ_V1 = struct.Struct("=BBBB48xII")
# inet_diag_msg: family, state, timer, retrans, id (ports big-endian, read as
# raw bytes), expires, rqueue, wqueue, uid, inode.
_MSG = struct.Struct("=BBBB2s2s16s16sIIIIIIII")
_NLA = struct.Struct("=HH")
_ERR = struct.Struct("=i")
_RECV_BUF = 64 * 1024  # the kernel fills at most ~32 KiB per dump datagram

CLONE_NEWNET = 0x40000000
_seq = itertools.count(1)
# tracer/_fastpath.c diag_messages: this file's parser in C, ~10x faster a
# socket (BENCHMARKS.md section 19); None: pure Python (tests set it so)
_native = fastpath.native
# True once a kernel refused TCPDIAG_GETSOCK (none is known to: the request
# per family is the fallback for one that would)
_one_walk_refused = False


class SockDiagError(RuntimeError):
    """The kernel refused or garbled a sock_diag request."""


class SockDiagRefused(SockDiagError):
    """The kernel answered the request with an error (NLMSG_ERROR)."""


class TcpSocket(NamedTuple):
    # (a named tuple: made ~6x faster than a frozen dataclass, and a dump
    # makes one per socket, thousands an interval on a busy host)
    family: int  # 4 or 6 (the socket's family, not the address's)
    state: int  # TCP state number, see STATE_NAMES
    saddr: str
    sport: int
    daddr: str
    dport: int
    inode: int  # 0 for SYN_RECV and TIME_WAIT
    uid: int
    cookie: int  # the socket cookie, as bpf_get_socket_cookie() gives it
    rqueue: int  # LISTEN: accept-queue length; else unread bytes
    wqueue: int  # LISTEN: backlog maximum; else unacknowledged bytes
    drops: Optional[int]  # sk_drops; None where the kernel sends no meminfo
    rmem_alloc: Optional[int]
    wmem_queued: Optional[int]
    shutdown: Optional[int] = None  # sk_shutdown: 1 read side, 2 write side

    @property
    def state_name(self) -> str:
        return STATE_NAMES.get(self.state, str(self.state))


def state_mask(*states: int) -> int:
    """The idiag_states bitmask for these TCP states (SYN_RECV includes
    request sockets)."""
    mask = 0
    for s in states:
        mask |= 1 << s
        if s == SYN_RECV:
            mask |= 1 << NEW_SYN_RECV
    return mask


def tcp_sockets(states: int = ALL_STATES, families: Iterable[int] = (4, 6),
                netns_fd: Optional[int] = None) -> list[TcpSocket]:
    """Every TCP socket in the given states (a state_mask) of the caller's
    network namespace, or of the one netns_fd refers to (an fd of
    /run/netns/NAME or /proc/PID/ns/net)."""
    global _one_walk_refused
    families = tuple(families)
    for family in families:
        if family not in _FAMILY_AF:
            raise SockDiagError(f"family must be 4 or 6, not {family!r}")
    sock = _open_socket(netns_fd)
    try:
        if sorted(families) == [4, 6] and not _one_walk_refused:
            seq = next(_seq)
            try:
                found = _dump_request(sock, build_request_both(states, seq), seq)
            except SockDiagRefused:
                _one_walk_refused = True   # and ask per family from now on
            else:
                # in the order a request per family gives: one family after
                # the other, each in the kernel's walk order (a stable sort)
                return sorted(found, key=lambda s: families.index(s.family))
        out: list[TcpSocket] = []
        for family in families:
            out += _dump(sock, family, states)
        return out
    finally:
        sock.close()


def listeners(netns_fd: Optional[int] = None) -> list[TcpSocket]:
    """The listening TCP sockets (IPv4 and IPv6): rqueue is the accept-queue
    length, wqueue the backlog, drops the listener's sk_drops."""
    return tcp_sockets(state_mask(LISTEN), netns_fd=netns_fd)


def build_request(family: int, states: int, seq: int) -> bytes:
    """A SOCK_DIAG_BY_FAMILY dump request for TCP sockets of family (4|6)."""
    ext = 1 << (INET_DIAG_SKMEMINFO - 1)
    body = _REQ.pack(_FAMILY_AF[family], socket.IPPROTO_TCP, ext, 0, states & 0xFFFFFFFF)
    flags = NLM_F_REQUEST | NLM_F_DUMP
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), SOCK_DIAG_BY_FAMILY, flags, seq, 0) + body


def build_request_both(states: int, seq: int) -> bytes:
    """A TCPDIAG_GETSOCK dump request: TCP sockets of both families."""
    ext = 1 << (INET_DIAG_SKMEMINFO - 1)
    body = _REQ_V1.pack(0, 0, 0, ext, states & 0xFFFFFFFF, 0)
    flags = NLM_F_REQUEST | NLM_F_DUMP
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), TCPDIAG_GETSOCK, flags, seq, 0) + body


def parse_datagram(data, seq: int, out: list[TcpSocket]) -> bool:
    """Append the sockets in one netlink datagram (bytes or memoryview) to
    out; True once the dump is complete (NLMSG_DONE). Raises SockDiagError
    on NLMSG_ERROR, an interrupted dump or a malformed message."""
    view = memoryview(data)
    end = len(view)
    # The compiled parser takes the sockets, up to the first message that is
    # not one (the end, an error, anything malformed): from there on, this.
    off = _native.diag_messages(view, seq, out, TcpSocket) if _native is not None else 0
    while off + _NLMSGHDR.size <= end:
        length, mtype, flags, mseq, _ = _NLMSGHDR.unpack_from(view, off)
        if length < _NLMSGHDR.size or off + length > end:
            raise SockDiagError(f"sock_diag: malformed netlink message (length {length} at offset {off} of {end})")
        body = off + _NLMSGHDR.size
        next_off = off + ((length + 3) & ~3)
        if mseq != seq:  # a late answer to an earlier request on this socket
            off = next_off
            continue
        if flags & NLM_F_DUMP_INTR:
            raise SockDiagError("sock_diag: the socket table changed during the dump (NLM_F_DUMP_INTR); retry")
        if mtype == NLMSG_DONE:
            if length >= _NLMSGHDR.size + _ERR.size:
                (err,) = _ERR.unpack_from(view, body)
                if err < 0:
                    raise SockDiagError(f"sock_diag: dump ended with error: {os.strerror(-err)}")
            return True
        if mtype == NLMSG_ERROR:
            (err,) = _ERR.unpack_from(view, body)
            if err == 0:  # an acknowledgement, not an error
                off = next_off
                continue
            hint = " (is the tcp_diag module loaded? modprobe tcp_diag)" if -err == 2 else ""
            raise SockDiagRefused(f"sock_diag: kernel refused the request: {os.strerror(-err)}{hint}")
        if mtype == NLMSG_OVERRUN:
            raise SockDiagError("sock_diag: netlink overrun, data lost; retry")
        if mtype in _INET_DIAG_REPLIES:
            if length < _NLMSGHDR.size + _MSG.size:
                raise SockDiagError(f"sock_diag: truncated inet_diag_msg ({length} bytes)")
            out.append(_parse_diag_msg(view, body, off + length))
        off = next_off
    return False


def _parse_diag_msg(view: memoryview, off: int, end: int) -> TcpSocket:
    (af, state, _timer, _retrans, sport, dport, src, dst, _if, cookie_lo, cookie_hi,
     _expires, rqueue, wqueue, uid, inode) = _MSG.unpack_from(view, off)
    if af == socket.AF_INET:
        src, dst = src[:4], dst[:4]
    elif af != socket.AF_INET6:
        raise SockDiagError(f"sock_diag: unexpected address family {af}")
    drops = rmem_alloc = wmem_queued = shutdown = None
    attr = off + _MSG.size
    while attr + 4 <= end:
        alen, atype = _NLA.unpack_from(view, attr)
        if alen < 4 or attr + alen > end:
            raise SockDiagError(f"sock_diag: malformed attribute (length {alen})")
        atype &= NLA_TYPE_MASK
        if atype == INET_DIAG_SKMEMINFO:
            mem = _u32_array(alen - 4).unpack_from(view, attr + 4)
            n = len(mem)
            rmem_alloc = mem[_SKMEM_RMEM_ALLOC] if n > _SKMEM_RMEM_ALLOC else None
            wmem_queued = mem[_SKMEM_WMEM_QUEUED] if n > _SKMEM_WMEM_QUEUED else None
            drops = mem[_SKMEM_DROPS] if n > _SKMEM_DROPS else None
        elif atype == INET_DIAG_SHUTDOWN and alen > 4:
            shutdown = view[attr + 4]
        attr += (alen + 3) & ~3
    # Positional, in field order: ~20% faster than keywords at 20k sockets.
    return TcpSocket(
        _AF_FAMILY[af], state,
        _ntop(af, src), int.from_bytes(sport, "big"),
        _ntop(af, dst), int.from_bytes(dport, "big"),
        inode, uid, cookie_lo | (cookie_hi << 32), rqueue, wqueue,
        drops, rmem_alloc, wmem_queued, shutdown,
    )


@functools.lru_cache(maxsize=4096)
def _ntop(af: int, raw: bytes) -> str:
    # Many sockets share a few addresses (loopback, the host's own).
    return socket.inet_ntop(af, raw)


@functools.lru_cache(maxsize=16)
def _u32_array(nbytes: int) -> struct.Struct:
    return struct.Struct(f"={nbytes // 4}I")


def _dump(sock: socket.socket, family: int, states: int) -> list[TcpSocket]:
    seq = next(_seq)
    return _dump_request(sock, build_request(family, states, seq), seq)


def _dump_request(sock: socket.socket, request: bytes, seq: int) -> list[TcpSocket]:
    sock.send(request)
    buf = bytearray(_RECV_BUF)
    view = memoryview(buf)
    out: list[TcpSocket] = []
    while True:
        n, _, flags, _ = sock.recvmsg_into([buf])
        if flags & socket.MSG_TRUNC:
            raise SockDiagError(f"sock_diag: a reply did not fit in {_RECV_BUF} bytes")
        if n == 0:
            raise SockDiagError("sock_diag: the kernel closed the dump without NLMSG_DONE")
        if parse_datagram(view[:n], seq, out):
            return out


def _new_socket() -> socket.socket:
    try:
        return socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC,
                             NETLINK_SOCK_DIAG)
    except OSError as exc:
        raise SockDiagError(f"sock_diag: cannot open a NETLINK_SOCK_DIAG socket: {exc.strerror}"
                            " (kernel without CONFIG_INET_DIAG?)") from exc


def _open_socket(netns_fd: Optional[int]) -> socket.socket:
    if netns_fd is None:
        return _new_socket()
    # A netlink socket answers for the namespace it was created in, whichever
    # thread uses it later; so only a short-lived thread ever changes
    # namespace, and it goes back before exiting.
    box: dict = {}
    thread = threading.Thread(target=_open_in_netns, args=(netns_fd, box),
                              name="sock_diag-netns", daemon=True)
    thread.start()
    thread.join(timeout=10)
    if thread.is_alive():
        raise SockDiagError("sock_diag: entering the network namespace did not finish within 10 s")
    if "error" in box:
        raise box["error"]
    return box["sock"]


def _open_in_netns(netns_fd: int, box: dict) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    try:
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        box["error"] = SockDiagError(f"sock_diag: cannot open this thread's network namespace: {exc.strerror}")
        return
    try:
        if libc.setns(netns_fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            box["error"] = SockDiagError(f"sock_diag: cannot enter network namespace fd {netns_fd}: {os.strerror(err)}")
            return
        try:
            box["sock"] = _new_socket()
        except SockDiagError as exc:
            box["error"] = exc
        finally:
            libc.setns(home, CLONE_NEWNET)
    finally:
        os.close(home)
