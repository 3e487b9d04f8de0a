"""The compiled event path (tracer/_fastpath.c) against the pure-Python one,
its reference: the same ring-buffer bytes walked by both must give the same
events, the same joined-close tallies, the same tables of open connections
and early closes, the same decode-error count and the same positions.

The records are made with the decoders' own struct layouts (parsed from
bpf/event.h) and include what another user can put in them: any 15 bytes of
comm (invalid UTF-8, escapes, control bytes), any address and port, unknown
outcome codes and families, records too short for their type, unknown
types, discarded and still-busy records, records wrapping the ring's end,
closes before their opens and closes of sockets never seen open."""
from __future__ import annotations

import os
import random
import struct
import sys
from pathlib import Path

import pytest

from tracer import events as e
from tracer import fastpath, lifetimes
from tracer.filters import Filters
from tracer.probes import buffers
from tracer.probes import session as sess

C = e.C
native = fastpath.native
needs_native = pytest.mark.skipif(native is None, reason=f"event path: {fastpath.STATUS}")
REPO = Path(__file__).resolve().parents[2]


def session() -> sess.ProbeSession:
    return sess.ProbeSession("tracepoint", Filters(), ringbuf=True, offset_flags=[], env={})


def pack(layout, names, **fields) -> bytes:
    return layout.pack(*(fields[f] for f in names._fields))


def connect(rng: random.Random, sk: int, t: int, *, outcome=None, comm=None, family=None,
            **fields) -> bytes:
    """`fields`: values of the record's fields instead of random ones."""
    fam = family if family is not None else rng.choice([2, 2, 2, 10, 0, 255])
    return pack(e._CONNECT, e._ConnectT, **{**dict(type=C["EV_CONNECT"], pid=rng.choice([1, 4242, 2**32 - 1]),
                tid=rng.randrange(2**32), err=rng.choice([0, 111, -1, 2**31 - 1, -2**31]),
                ts_start_ns=t, ts_end_ns=t + rng.choice([0, 1, 123_456, -5]),
                sk=sk, saddr=rng.randbytes(16), daddr=rng.choice([bytes([127, 0, 0, 1]) + bytes(12),
                                                                  rng.randbytes(16)]),
                sport=rng.randrange(65536), dport=rng.choice([0, 80, 65535]),
                syn_retransmits=rng.randrange(65536), family=fam,
                outcome=outcome if outcome is not None else rng.choice([0, 0, 0, 1, 2, 3, 4, 5, 9, 255]),
                comm=comm if comm is not None else rng.choice(HOSTILE_COMMS),
                netns=rng.randrange(2**32), pad=bytes(4), cgroup_id=rng.choice([0, 2**64 - 1, 77])),
                                               **fields})


def accept(rng: random.Random, sk: int, t: int, *, handshake=None, **fields) -> bytes:
    """`fields`: values of the record's fields instead of random ones."""
    return pack(e._ACCEPT, e._AcceptT, **{**dict(type=C["EV_ACCEPT"], pid=rng.choice([2, 9999]),
                tid=rng.randrange(2**32), backlog_len=rng.randrange(2**32),
                ts_ns=t, ts_handshake_ns=handshake if handshake is not None else rng.choice([0, t - 10, t + 10]),
                sk=sk, laddr=rng.randbytes(16), raddr=rng.randbytes(16), lport=rng.randrange(65536),
                rport=rng.randrange(65536), backlog_max=rng.randrange(2**32),
                netns=rng.randrange(2**32), family=rng.choice([2, 10, 7]), pad=bytes(3),
                comm=rng.choice(HOSTILE_COMMS)), **fields})


def close(sk: int, t: int) -> bytes:
    return pack(e._CLOSE, e._CloseT, type=C["EV_CLOSE"], oldstate=1, ts_ns=t, sk=sk)


HOSTILE_COMMS = [b"nginx".ljust(16, b"\0"), b"\xff\xfe\x1b[31mred\x00junk\xc3", bytes(16),
                 b"\x1b]0;title\x07ab\0\0\0\0\0", "наш-процесс".encode()[:15] + b"\0",
                 b"a\tb\nc\rd\x7f\x80\x9f\0\0\0\0\0", b"x" * 16]


def stream(seed: int, n: int) -> list[tuple[bytes, int]]:
    """(record, flags) in ring order: opens and closes interleaved as the
    kernel writes them, with the rare shapes mixed in."""
    rng = random.Random(seed)
    out, open_sks, t = [], [], 1_000_000
    for i in range(n):
        t += rng.randrange(1, 50_000)
        roll = rng.random()
        sk = rng.choice(open_sks) if open_sks and rng.random() < 0.05 else 0xffff_8000_0000_0000 + i * 64
        if roll < 0.30:
            out.append((connect(rng, sk, t), 0))
            open_sks.append(sk)
        elif roll < 0.50:
            out.append((accept(rng, sk, t), 0))
            open_sks.append(sk)
        elif roll < 0.80 and open_sks:     # a close of something opened (or about to be)
            out.append((close(open_sks.pop(rng.randrange(len(open_sks))), t + rng.choice([0, 5, -5])), 0))
        elif roll < 0.86:                  # a close whose open comes next (accept raced it)
            out.append((close(sk, t), 0))
            out.append((accept(rng, sk, t + 3, handshake=rng.choice([t - 1, t + 1, 0])), 0))
        elif roll < 0.90:                  # a close of a socket never seen open
            out.append((close(rng.randrange(2**64), t), 0))
        elif roll < 0.93:                  # too short for its type
            rec = rng.choice([connect(rng, sk, t), accept(rng, sk, t), close(sk, t)])
            out.append((rec[:rng.randrange(0, len(rec))], 0))
        elif roll < 0.95:                  # unknown type, or longer than its type
            out.append((struct.pack("<I", rng.choice([0, 4, 2**32 - 1])) + rng.randbytes(rng.randrange(0, 130)), 0))
        elif roll < 0.97:
            out.append((close(sk, t) + rng.randbytes(rng.randrange(1, 40)), 0))
        else:                              # dropped by the program after reserving
            out.append((connect(rng, sk, t), buffers.RINGBUF_DISCARD))
    return out


def framed(records) -> bytes:
    parts = []
    for rec, flags in records:
        hdr = struct.pack("<II", len(rec) | flags, 0)
        parts.append(hdr + rec + bytes(-(len(rec) + len(hdr)) % 8))
    return b"".join(parts)


def state(s: sess.ProbeSession) -> dict:
    o = s._open
    closes = s.take_closes()
    return {"events": s._pending, "active": closes.active, "passive": closes.passive,
            "peaks": closes.peaks, "open": o._open, "live": o._live, "early": o._early,
            "early_prev": o._early_prev, "untracked": o.untracked,
            "decode_errors": s.decode_errors}


def walk_both(data: bytes, reads: list[int], mask: int = (1 << 62) - 1, end: int | None = None,
              start: int = 0):
    """Walk `data` from position `start` with each path in reads of at most
    reads[i] records, an end_read() after each, as poll() does; returns each
    path's final state, with ("steps") what each read returned and the
    closes waiting for their opens after it."""
    end = len(data) if end is None else end
    out = []
    for compiled in (False, True):
        s = session()
        view, cons, steps = memoryview(data), start, []
        for limit in reads:
            if compiled:
                cons, n = s._walk_compiled(view, mask, cons, lambda: end, limit)
            else:
                cons, n = buffers.read_ring(view, mask, cons, lambda: end, s._on_record, limit)
            steps.append((cons, n, len(s._pending), s.decode_errors, dict(s._open._early)))
            s._open.end_read()
        st = state(s)
        st["steps"] = steps
        out.append(st)
    return out


@needs_native
@pytest.mark.parametrize("seed", range(12))
def test_the_compiled_path_gives_what_the_python_path_gives(seed):
    records = stream(seed, 3000)
    rng = random.Random(seed)
    reads = [rng.choice([1, 7, 100, 1000]) for _ in range(40)] + [10**6]
    py, c = walk_both(framed(records), reads)
    assert py["steps"][-1][0] == len(framed(records))          # all of it was read
    # every shape was there: events, errors, joined closes of both kinds,
    # connections still open, closes waiting for their open
    assert py["events"] and py["decode_errors"] and py["open"]
    assert py["active"] and py["passive"] and py["peaks"]
    assert any(step[-1] for step in py["steps"])
    for k in py:
        assert c[k] == py[k], k


@needs_native
def test_text_fields_are_the_python_paths_text_hostile_bytes_included():
    rng = random.Random(5)
    recs = [(connect(rng, 64 * i, 1000 + i, comm=comm, family=2), 0)
            for i, comm in enumerate(HOSTILE_COMMS)]
    py, c = walk_both(framed(recs), [100])
    # faithful text (tracer/safe_text.py): valid UTF-8 as is, other bytes as
    # \xNN, up to the first NUL; escaping for a terminal is the display's job
    assert [ev.comm for ev in c["events"]] == [
        comm.split(b"\0", 1)[0].decode("utf-8", "backslashreplace") for comm in HOSTILE_COMMS]
    assert c["events"] == py["events"]


def _sharing_a_slot(slot, family: int, head: bytes, tail: bytes) -> tuple[bytes, bytes]:
    """Two 16-byte values head + 2 bytes (no NUL) + tail in one slot."""
    seen = {}
    for a in range(1, 256):
        for b in range(1, 256):
            raw = head + bytes([a, b]) + tail
            other = seen.setdefault(slot(family, raw), raw)
            if other != raw:
                return other, raw
    raise AssertionError("no two values share a slot")


@needs_native
def test_the_front_cache_of_texts_gives_the_dict_paths_texts(monkeypatch):
    """The compiled walk keeps the last text of each of 1024 slots of raw
    address and comm bytes in front of events.py's dicts: with 3,000
    distinct addresses and comms, repeating, across families (the same
    bytes in another family are another address), the dicts emptied at a
    lower bound and configure() called again half-way, every text is the
    Python path's."""
    monkeypatch.setattr(e, "_CACHE_MAX", 700)      # the dicts emptied as they fill
    rng = random.Random(9)
    addrs = [rng.randbytes(16) for _ in range(3000)] + [bytes([127, 0, 0, 1]) + bytes(12)]
    comms = [rng.randbytes(15) + b"\0" for _ in range(3000)] + HOSTILE_COMMS
    recs = []
    for i in range(6000):
        a = rng.choice(addrs[:40] if rng.random() < 0.5 else addrs)
        recs.append((connect(rng, 64 * i, 1000 + i, family=rng.choice([2, 10, 0]), daddr=a,
                             saddr=rng.choice(addrs), comm=rng.choice(comms)), 0))
    # and, met one after the other, raw values that share a slot: the same
    # bytes in two families, bytes that differ only in their last two
    slot = native.front_slot
    same_bytes = next(a for a in iter(lambda: rng.randbytes(16), None)
                      if slot(2, a) == slot(10, a))
    twins = _sharing_a_slot(slot, 10, rng.randbytes(14), b"")
    comm_twins = _sharing_a_slot(slot, 0, rng.randbytes(13), b"\0")
    for k in range(40):
        recs.insert(rng.randrange(len(recs)), (connect(
            rng, 64 * (6000 + k), 9000 + k, family=10, daddr=same_bytes if k % 3 else twins[0],
            saddr=twins[k % 2], comm=comm_twins[k % 2]), 0))
        recs.insert(rng.randrange(len(recs)), (connect(
            rng, 64 * (7000 + k), 9500 + k, family=2, daddr=same_bytes, saddr=twins[1]), 0))
    for half in (recs[:3000], recs[3000:]):
        py, c = walk_both(framed(half), [500] * 7)
        assert [(ev.comm, ev.saddr, ev.daddr, ev.family) for ev in c["events"]] == [
            (ev.comm, ev.saddr, ev.daddr, ev.family) for ev in py["events"]]
        assert c["events"] == py["events"]
        fastpath.configure(native)      # empties the front cache


@needs_native
def test_a_record_across_the_rings_end_and_a_busy_record():
    size, start = 512, 256          # the reader is half-way round the ring
    rng = random.Random(1)
    done = framed([(close(1, 5), 0)] * 3 + [(connect(rng, 9, 100, outcome=0), 0)] * 2)
    busy = framed([(connect(rng, 10, 200), buffers.RINGBUF_BUSY)])
    written = done + busy           # 96 + 240 + 120 bytes from 256: the second connect wraps
    area = bytearray(size)
    for i, b in enumerate(written):
        area[(start + i) % size] = b
    twice = bytes(area) * 2         # mapped twice over, as the kernel maps it
    py, c = walk_both(twice, [100], mask=size - 1, end=start + len(written), start=start)
    assert py["steps"][0][:2] == (start + len(done), 5)   # stopped at the busy one
    assert len(py["events"]) == 2 and c == py


@needs_native
def test_early_closes_are_bounded_alike():
    n = lifetimes._EARLY_MAX + 100
    data = framed([(close(i, 1000), 0) for i in range(n)])
    py, c = walk_both(data, [n])
    assert len(py["early_prev"]) == lifetimes._EARLY_MAX == len(c["early_prev"])
    assert c == py


@needs_native
def test_a_full_table_of_open_connections_lets_the_oldest_go_alike(monkeypatch):
    """Past MAX_OPEN the oldest opens are let go (OpenConnections._opened,
    which the compiled path hands that case to) and counted."""
    monkeypatch.setattr(lifetimes, "MAX_OPEN", 64)
    fastpath.configure(native)
    try:
        rng = random.Random(8)
        recs = [(connect(rng, 64 * i, 1000 + i, outcome=0, family=2), 0) for i in range(150)]
        recs += [(accept(rng, 64 * (1000 + i), 5000 + i), 0) for i in range(50)]
        recs += [(close(64 * i, 9000 + i), 0) for i in range(0, 150, 3)]
        py, c = walk_both(framed(recs), [37, 1000])
    finally:
        monkeypatch.undo()
        fastpath.configure(native)
    assert py["untracked"] > 0 and len(py["open"]) <= 64
    assert c == py


@needs_native
def test_a_record_past_the_buffer_is_an_error_not_a_read_out_of_bounds():
    data = framed([(close(1, 2), 0)])
    bad = struct.pack("<II", 4096, 0) + data[8:]       # says 4 KiB, holds 24 bytes
    s = session()
    with pytest.raises(ValueError, match="past the buffer"):
        s._walk_compiled(memoryview(bad), (1 << 62) - 1, 0, lambda: len(bad), 10)
    with pytest.raises(ValueError, match="outside the buffer"):
        s._walk_compiled(memoryview(data), (1 << 62) - 1, 0, lambda: len(data) + 64, 10)


def test_the_readme_install_built_the_compiled_path():
    """`./run` installs a compiler and Python's headers so that its venv has the
    compiled path; a venv of its making must not fall back unnoticed."""
    if Path(sys.prefix).resolve() != (REPO / ".venv").resolve():
        pytest.skip(f"not the venv ./run makes ({sys.prefix}): it may lack a compiler")
    assert native is not None, fastpath.STATUS


def test_pure_python_is_chosen_by_the_environment_and_said():
    import subprocess

    out = subprocess.run([sys.executable, "-c", "from tracer import fastpath as f; print(f.native, f.STATUS)"],
                         env={**os.environ, "CONNSCOPE_PURE_PYTHON": "1"}, capture_output=True,
                         text=True, check=True, cwd=REPO).stdout
    assert out.strip() == "None pure Python (CONNSCOPE_PURE_PYTHON=1)"


@needs_native
@pytest.mark.skipif(sys.version_info < (3, 10), reason="Python 3.9's dataclasses have no "
                    "__slots__: the compiled path calls the classes there")
def test_events_are_made_by_filling_their_slots_and_are_ordinary_instances():
    """The compiled path allocates Connect and Accept and fills their slots
    (no __init__ run); what it makes equals, prints, copies and is garbage
    collected as an instance the class made."""
    import copy
    import dataclasses
    import gc

    assert native.slots_filled() == (True, True)
    rng = random.Random(21)
    recs = [(connect(rng, 64 * i, 1000 + i, outcome=0, family=2), 0) for i in range(40)]
    recs += [(accept(rng, 64 * (100 + i), 5000 + i), 0) for i in range(40)]
    py, c = walk_both(framed(recs), [1000])
    assert c["events"] == py["events"] and len(c["events"]) == 80
    for mine, ref in zip(c["events"], py["events"]):
        assert type(mine) is type(ref)
        assert repr(mine) == repr(ref) and dataclasses.astuple(mine) == dataclasses.astuple(ref)
        twin = copy.copy(mine)
        twin.pid = -1                               # slots stay writable, per instance
        assert twin.pid == -1 and mine.pid == ref.pid
        assert set(map(id, gc.get_referents(mine))) >= {id(mine.comm), id(mine.pid)}
    # an event the walk made is freed when let go (no reference leaked or lost)
    comm = c["events"][0].comm
    before = sys.getrefcount(comm)
    del c["events"][0]
    assert sys.getrefcount(comm) == before - 1


@needs_native
def test_a_class_with_more_to_do_at_construction_is_called(monkeypatch):
    """A class whose instances are not just their fields (here a __post_init__)
    is called, as the Python path calls it, not filled slot by slot."""
    import dataclasses

    from tracer.compat import SLOTS

    made = []
    fields = [(f.name, f.type, f) for f in dataclasses.fields(e.Connect)]
    Checked = dataclasses.make_dataclass(
        "Checked", [(n, t, dataclasses.field(default=f.default)) if f.default is not
                    dataclasses.MISSING else (n, t) for n, t, f in fields],
        namespace={"__post_init__": lambda self: made.append(self.pid)}, **SLOTS)
    monkeypatch.setattr(e, "Connect", Checked)
    fastpath.configure(native)
    try:
        assert native.slots_filled()[0] is False
        rng = random.Random(5)
        s = session()
        data = framed([(connect(rng, 64 * i, 1000 + i, outcome=0, family=2), 0) for i in range(5)])
        s._walk_compiled(memoryview(data), (1 << 62) - 1, 0, lambda: len(data), 100)
        assert [type(ev) for ev in s._pending] == [Checked] * 5
        assert made == [ev.pid for ev in s._pending]
    finally:
        monkeypatch.undo()
        fastpath.configure(native)
    assert native.slots_filled()[0] is (sys.version_info >= (3, 10))
