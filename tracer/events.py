"""Decoding of kernel records into Python objects.

The layout of every record is defined once, in bpf/event.h; this module
parses that header (fixed-size integers and arrays only, see its comment) into
ctypes structures, so kernel and user space cannot drift apart.
"""
from __future__ import annotations

import ctypes
import re
import socket
import struct
from collections import namedtuple
from dataclasses import dataclass
from functools import lru_cache
from operator import itemgetter
from pathlib import Path

from tracer.compat import SLOTS
from tracer.domain import outcomes
from tracer.safe_text import faithful_text

BPF_DIR = Path(__file__).resolve().parent / "bpf"
EVENT_HEADER = BPF_DIR / "event.h"

_CTYPES = {
    "__u8": ctypes.c_uint8, "__s8": ctypes.c_int8, "char": ctypes.c_char,
    "__u16": ctypes.c_uint16, "__s16": ctypes.c_int16,
    "__u32": ctypes.c_uint32, "__s32": ctypes.c_int32,
    "__u64": ctypes.c_uint64, "__s64": ctypes.c_int64,
}
_STRUCT_RE = re.compile(r"struct\s+(\w+)\s*\{(.*?)\};", re.S)
_MEMBER_RE = re.compile(r"^\s*(\w+)\s+(\w+)\s*(?:\[(\d+)\])?\s*;")
_DEFINE_RE = re.compile(r"^#define\s+(\w+)\s+(-?\d+)\b", re.M)


class HeaderError(Exception):
    pass


def _strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


@lru_cache(maxsize=None)
def parse_header(path: Path = EVENT_HEADER) -> tuple[dict[str, type], dict[str, int]]:
    """Return ({struct name: ctypes.Structure}, {#define name: int})."""
    text = _strip_comments(path.read_text())
    constants = {m.group(1): int(m.group(2)) for m in _DEFINE_RE.finditer(text)}
    structs: dict[str, type] = {}
    for m in _STRUCT_RE.finditer(text):
        name, body = m.group(1), m.group(2)
        fields = []
        for line in body.split(";"):
            if not line.strip():
                continue
            mm = _MEMBER_RE.match(line + ";")
            if not mm or mm.group(1) not in _CTYPES:
                raise HeaderError(f"{path}: struct {name}: cannot decode member {line.strip()!r}")
            ctype = _CTYPES[mm.group(1)]
            if mm.group(3):
                ctype = ctype * int(mm.group(3))
            fields.append((mm.group(2), ctype))
        structs[name] = type(name, (ctypes.Structure,), {"_fields_": fields})
    return structs, constants


_STRUCTS, C = parse_header()
ConnectRecord = _STRUCTS["connect_event"]
AcceptRecord = _STRUCTS["accept_event"]
CloseRecord = _STRUCTS["close_event"]
ListenerKey = _STRUCTS["listener_key"]
ListenerStatsRecord = _STRUCTS["listener_stats"]
InflightRecord = _STRUCTS["inflight_connect"]
ConnectCallRecord = _STRUCTS["connect_call"]

# kernel code (bpf/event.h) -> outcome name (tracer/domain/outcomes.py)
OUTCOMES = {
    C["OUTCOME_ESTABLISHED"]: outcomes.ESTABLISHED,
    C["OUTCOME_REFUSED"]: outcomes.REFUSED,
    C["OUTCOME_TIMEOUT"]: outcomes.TIMEOUT,
    C["OUTCOME_ERROR"]: outcomes.ERROR,
    C["OUTCOME_ABANDONED"]: outcomes.ABANDONED,
    C["OUTCOME_UNREACHABLE"]: outcomes.UNREACHABLE,
}
AF_INET, AF_INET6 = 2, 10


_ADDR_CACHE: dict = {}
_COMM_CACHE: dict = {}
_CACHE_MAX = 65536   # distinct peers and names are few; a scan of many is bounded


def format_addr(family: int, raw: bytes) -> str:
    """Address text; peers repeat, so each raw address is formatted once."""
    key = (family, bytes(raw[:4] if family == AF_INET else raw[:16]))
    text = _ADDR_CACHE.get(key)
    if text is None:
        if len(_ADDR_CACHE) >= _CACHE_MAX:
            _ADDR_CACHE.clear()
        text = socket.inet_ntop(socket.AF_INET if family == AF_INET else socket.AF_INET6, key[1])
        _ADDR_CACHE[key] = text
    return text


# (family, the record's whole 16-byte address field) -> format_addr's text:
# the decoders' look-up, one dict get with no slicing (bounded as _ADDR_CACHE)
_ADDR_BY_RAW: dict = {}


def _addr_by_raw(family: int, raw: bytes) -> str:
    if len(_ADDR_BY_RAW) >= _CACHE_MAX:
        _ADDR_BY_RAW.clear()
    text = _ADDR_BY_RAW[(family, raw)] = format_addr(family, raw)
    return text


def comm_text(raw: bytes) -> str:
    """The comm of a record (NUL-padded), decoded once per distinct value."""
    text = _COMM_CACHE.get(raw)
    if text is None:
        if len(_COMM_CACHE) >= _CACHE_MAX:
            _COMM_CACHE.clear()
        text = faithful_text(raw.split(b"\0", 1)[0])
        _COMM_CACHE[raw] = text
    return text


_STRUCT_CODES = {
    ctypes.c_uint8: "B", ctypes.c_int8: "b", ctypes.c_char: "c", ctypes.c_uint16: "H",
    ctypes.c_int16: "h", ctypes.c_uint32: "I", ctypes.c_int32: "i", ctypes.c_uint64: "Q",
    ctypes.c_int64: "q",
}


def unpacker(record: type) -> tuple[struct.Struct, type]:
    """A struct.Struct and a namedtuple with the fields of a ctypes record
    parsed from event.h: arrays come out as bytes. One definition, two
    readers: ctypes for maps, this for the event stream (3x faster)."""
    codes = []
    for name, ctype in record._fields_:
        if hasattr(ctype, "_length_"):
            codes.append(f"{ctype._length_}s")
        else:
            codes.append(_STRUCT_CODES[ctype])
    layout = struct.Struct("<" + "".join(codes))
    if layout.size > ctypes.sizeof(record):
        raise HeaderError(f"{record.__name__}: packed layout larger than the C struct")
    return layout, namedtuple(record.__name__, [n for n, _ in record._fields_])


@dataclass(**SLOTS)
class Connect:
    """One resolved outgoing connect attempt."""

    ts_start_ns: int          # CLOCK_MONOTONIC, as the kernel took it
    ts_end_ns: int
    pid: int
    tid: int
    comm: str
    family: int               # 4 or 6
    saddr: str
    sport: int
    daddr: str
    dport: int
    outcome: str              # tracer/domain/outcomes.py
    err: int                  # errno when it failed, else 0
    syn_retransmits: int
    sk: int = 0               # kernel socket address: joins its close record
    netns: int = 0            # network namespace inode; 0 if unknown
    cgroup_id: int = 0        # caller's cgroup v2 id at connect(); 0 if unknown

    @property
    def latency_us(self) -> float | None:
        """connect() to the socket leaving SYN_SENT: the time to the answer,
        or, for a timeout or an abandoned connect, the time the caller waited.
        None only when the end is unknown (an old recording's row)."""
        if self.ts_end_ns < self.ts_start_ns:
            return None
        return (self.ts_end_ns - self.ts_start_ns) / 1000.0


_CONNECT, _ConnectT = unpacker(ConnectRecord)


_CONNECT_UNPACK = _CONNECT.unpack_from
# the record's fields in the order Connect takes them (one C call, no namedtuple)
_CONNECT_PICK = itemgetter(*(_ConnectT._fields.index(n) for n in (
    "ts_start_ns", "ts_end_ns", "pid", "tid", "comm", "family", "saddr", "sport", "daddr",
    "dport", "outcome", "err", "syn_retransmits", "sk", "netns", "cgroup_id")))


def decode_connect_at(view, offset: int) -> Connect:
    """Decode one connect_event record at `offset` of a buffer. (Once per
    connect: positional arguments and cache look-ups inline; the same
    values as format_addr and comm_text give.)"""
    (ts_start, ts_end, pid, tid, comm, fam, saddr, sport, daddr, dport, outcome, err, syn, sk,
     netns, cgroup_id) = _CONNECT_PICK(_CONNECT_UNPACK(view, offset))
    return Connect(
        ts_start, ts_end, pid, tid, _COMM_CACHE.get(comm) or comm_text(comm),
        4 if fam == AF_INET else 6,
        _ADDR_BY_RAW.get((fam, saddr)) or _addr_by_raw(fam, saddr), sport,
        _ADDR_BY_RAW.get((fam, daddr)) or _addr_by_raw(fam, daddr), dport,
        OUTCOMES.get(outcome, outcomes.ERROR), err, syn, sk, netns, cgroup_id)


def decode_connect(buf) -> Connect:
    """Decode one connect_event record (bytes-like)."""
    return decode_connect_at(buf, 0)


@dataclass(**SLOTS)
class Accept:
    """One connection taken from an accept queue by an application."""

    ts_ns: int                # accept() returned, CLOCK_MONOTONIC
    ts_handshake_ns: int      # handshake completed; 0 if before the tracer started
    pid: int
    tid: int
    comm: str
    family: int
    laddr: str
    lport: int
    raddr: str
    rport: int
    backlog_len: int
    backlog_max: int
    netns: int = 0
    sk: int = 0               # kernel socket address: joins its close record

    @property
    def queue_wait_us(self) -> float | None:
        """Handshake done to accept() returned: time spent waiting in the queue."""
        if not self.ts_handshake_ns or self.ts_handshake_ns > self.ts_ns:
            return None
        return (self.ts_ns - self.ts_handshake_ns) / 1000.0


_ACCEPT, _AcceptT = unpacker(AcceptRecord)


_ACCEPT_UNPACK = _ACCEPT.unpack_from
_ACCEPT_PICK = itemgetter(*(_AcceptT._fields.index(n) for n in (
    "ts_ns", "ts_handshake_ns", "pid", "tid", "comm", "family", "laddr", "lport", "raddr",
    "rport", "backlog_len", "backlog_max", "netns", "sk")))


def decode_accept_at(view, offset: int) -> Accept:
    """(As decode_connect_at.)"""
    (ts, ts_handshake, pid, tid, comm, fam, laddr, lport, raddr, rport, backlog_len, backlog_max,
     netns, sk) = _ACCEPT_PICK(_ACCEPT_UNPACK(view, offset))
    return Accept(
        ts, ts_handshake, pid, tid, _COMM_CACHE.get(comm) or comm_text(comm),
        4 if fam == AF_INET else 6,
        _ADDR_BY_RAW.get((fam, laddr)) or _addr_by_raw(fam, laddr), lport,
        _ADDR_BY_RAW.get((fam, raddr)) or _addr_by_raw(fam, raddr), rport,
        backlog_len, backlog_max, netns, sk)


def decode_accept(buf) -> Accept:
    return decode_accept_at(buf, 0)


@dataclass(frozen=True, **SLOTS)
class ListenerCounters:
    """Cumulative counters of one listening socket, from the kernel's
    `listeners` map (one entry per socket: SO_REUSEPORT members apart)."""

    family: int
    laddr: str
    lport: int
    ack_overflows: int        # with a request socket: sk_drops counts these twice
    cookie_overflows: int     # SYN-cookie handshakes: sk_drops counts these once
    syn_overflows: int
    synack_retransmits: int
    accepts: int
    backlog_max: int
    syn_queue_len: int
    pid: int | None
    comm: str | None
    closed: bool
    netns: int = 0
    sk: int = 0               # the socket's kernel address: identity of the member
    cookie: int = 0           # its socket cookie when it closed (0: unknown)
    drops_at_close: int = 0   # its sk_drops when it closed

    @property
    def key(self) -> tuple:
        return (self.netns, self.family, self.laddr, self.lport)


def decode_listener(value) -> ListenerCounters:
    fam = value.family
    return ListenerCounters(
        family=4 if fam == AF_INET else 6, laddr=format_addr(fam, bytes(value.addr)),
        lport=value.port, ack_overflows=value.ack_overflows,
        cookie_overflows=value.cookie_overflows, syn_overflows=value.syn_overflows,
        synack_retransmits=value.synack_retransmits, accepts=value.accepts,
        backlog_max=value.backlog_max,
        syn_queue_len=value.syn_queue_len, pid=value.pid or None,
        comm=comm_text(bytes(value.comm)) if value.pid else None,
        closed=bool(value.closed), netns=value.netns, sk=value.sk, cookie=value.cookie,
        drops_at_close=value.drops_at_close,
    )


@dataclass(**SLOTS)
class Close:
    """A connection we saw opened is finished (its socket reached CLOSE):
    a close record joined with the open of the same socket
    (tracer.lifetimes.OpenConnections)."""

    ts_ns: int
    ts_open_ns: int
    pid: int                  # who opened it
    family: int
    raddr: str
    rport: int
    passive: bool             # accepted (True) or connected (False)

    @property
    def lifetime_us(self) -> float:
        return max(0, self.ts_ns - self.ts_open_ns) / 1000.0


_CLOSE, _CloseT = unpacker(CloseRecord)
CLOSE_UNPACK = _CLOSE.unpack_from   # (view, offset) -> the fields, in order
CLOSE_TS, CLOSE_SK = (_CloseT._fields.index(n) for n in ("ts_ns", "sk"))


class Closes:
    """Closes of one interval, tallied, never made into objects: half of
    all events, and only counts (per process) and hold times (per process
    and destination, for the connections it opened) are wanted of them.

    active:  {(pid, family, raddr, rport): [lifetime µs, ...]}
    passive: {pid: number of accepted connections that closed}
    peaks:   {(pid, family, raddr, rport): most connections it had open at once}
    """

    __slots__ = ("active", "passive", "peaks")

    def __init__(self):
        self.active: dict = {}
        self.passive: dict = {}
        self.peaks: dict = {}

    def add_active(self, key: tuple, lifetime_us: float) -> None:
        lifetimes = self.active.get(key)
        if lifetimes is None:
            lifetimes = self.active[key] = []
        lifetimes.append(lifetime_us)

    def add_passive(self, pid: int) -> None:
        self.passive[pid] = self.passive.get(pid, 0) + 1

    def add(self, ev: Close) -> None:
        """One joined Close (tests, replay)."""
        if ev.passive:
            self.add_passive(ev.pid)
        else:
            self.add_active((ev.pid, ev.family, ev.raddr, ev.rport), ev.lifetime_us)

    def __len__(self) -> int:
        return sum(self.passive.values()) + sum(len(v) for v in self.active.values())


_TYPE = struct.Struct("<I").unpack_from


def record_type(buf, offset: int = 0) -> int:
    return _TYPE(buf, offset)[0]


# record type -> (decoder of bytes, decoder at an offset of a buffer, record size)
DECODERS = {C["EV_CONNECT"]: decode_connect, C["EV_ACCEPT"]: decode_accept}
DECODERS_AT = {C["EV_CONNECT"]: (decode_connect_at, _CONNECT.size),
               C["EV_ACCEPT"]: (decode_accept_at, _ACCEPT.size)}
CLOSE_SIZE = _CLOSE.size   # closes are joined, not decoded (tracer.lifetimes)
