"""A backlog in the event buffer is read at once, not slept on (issue 17:
at 24,000 connections/s the ring overflowed while the tracer used under
half a core, each read stopped at MAX_BATCH and a 50 ms sleep followed), and
the end of a run takes everything the buffer holds, not one batch."""
from __future__ import annotations

from tracer import events as e
from tracer.collector import Collector
from tracer.filters import Filters
from tracer.probes import buffers
from tracer.probes import session as sess


def close_records(n: int) -> bytes:
    """A ring buffer's data area holding n close records (8-byte headers,
    8-aligned) of sockets never seen opening (joined with nothing)."""
    C = e.C
    out = []
    for i in range(n):
        rec = e._CLOSE.pack(*(dict(type=C["EV_CLOSE"], oldstate=1, ts_ns=1000 + i,
                                   sk=0xffff000000000000 + i)[f] for f in e._CloseT._fields))
        pad = (-(len(rec) + buffers.RINGBUF_HDR)) % 8
        out.append(len(rec).to_bytes(4, "little") + bytes(buffers.RINGBUF_HDR - 4) + rec
                   + bytes(pad))
    return b"".join(out)


class Ring:
    """Records in memory (a ring's data area, as close_records makes it),
    read by the real ring walker."""

    def __init__(self, data: bytes):
        self.data = memoryview(data)
        self.cons = 0
        self.lost = 0

    def read(self, handle, limit: int, walk=None) -> int:
        end = len(self.data)
        if walk is None:
            self.cons, n = buffers.read_ring(self.data, (1 << 62) - 1, self.cons, lambda: end,
                                             handle, limit)
        else:   # the compiled path, when this install has it
            self.cons, n = walk(self.data, (1 << 62) - 1, self.cons, lambda: end, limit)
        return n

    @property
    def empty(self) -> bool:
        return self.cons == len(self.data)


class Session(sess.ProbeSession):
    """The decoding and polling of a real session; no kernel maps."""

    def __init__(self, ring: Ring):
        super().__init__("tracepoint", Filters(), ringbuf=True, offset_flags=[], env={})
        self._buffer = ring

    def pending_connects(self, now_ns=None):
        return {}

    def listener_counters(self):
        return []

    def take_listener_peaks(self):
        return {}

    def counters(self):
        return {"lost_events": 0, "untracked_connects": 0, "decode_errors": 0}

    def missed_runs_by(self):
        return {}

    def inflight(self):
        return 0


def test_a_read_that_stops_at_the_batch_limit_is_followed_at_once(monkeypatch):
    slept = []
    monkeypatch.setattr(sess.time, "sleep", slept.append)
    ring = Ring(close_records(2 * sess.MAX_BATCH + sess.MAX_BATCH // 2))
    s = Session(ring)
    s.poll(100)
    assert len(slept) == 1 and s.behind          # a full batch: more is waiting
    s.poll(100)
    assert len(slept) == 1 and s.behind          # read without sleeping
    s.poll(100)
    assert len(slept) == 1 and not s.behind and ring.empty
    s.poll(100)
    assert len(slept) == 2                       # caught up: back to the poll period
    assert s.decode_errors == 0


def test_the_end_of_a_run_reads_every_batch_the_buffer_holds(monkeypatch):
    monkeypatch.setattr(sess.time, "sleep", lambda s: None)
    ring = Ring(close_records(3 * sess.MAX_BATCH + 7))
    c = Collector(Session(ring), [], header=None)
    c.run(lambda: True)          # stopped at once: only the final drain runs
    assert ring.empty


def test_the_final_drain_can_empty_a_full_ring_of_the_smallest_records():
    """The end of a run reads at most FINAL_DRAIN_BATCHES batches: enough for
    the ring buffer the build asks for, full of the smallest record there is
    (a close), and as much again written meanwhile."""
    from tracer.collector import FINAL_DRAIN_BATCHES
    from tracer.probes import bpf_syscall, program

    pages = program.BuildOptions(backend="tracepoint", filters=Filters()).ringbuf_pages
    ring = pages * bpf_syscall.PAGE_SIZE
    slot = (e.CLOSE_SIZE + buffers.RINGBUF_HDR + 7) & ~7
    batches_in_a_full_ring = -(-ring // slot) // sess.MAX_BATCH
    assert 2 * batches_in_a_full_ring <= FINAL_DRAIN_BATCHES, (ring, slot, batches_in_a_full_ring)
