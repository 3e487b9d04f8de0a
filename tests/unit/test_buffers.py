"""Walking BPF ring-buffer and perf-buffer records, on buffers laid out as
the kernel lays them out (include/uapi/linux/bpf.h BPF_RINGBUF_*_BIT,
include/uapi/linux/perf_event.h perf_event_header)."""
import struct

from tracer.probes.buffers import (PERF_RECORD_LOST, PERF_RECORD_SAMPLE, RINGBUF_BUSY,
                                   RINGBUF_DISCARD, read_perf_ring, read_ring)

SIZE = 64   # bytes of ring data; a power of two as the kernel requires


class Ring:
    """A ring of SIZE bytes, kept mapped twice over like the kernel's."""

    def __init__(self):
        self.area = bytearray(SIZE)
        self.prod = 0

    def put(self, payload: bytes, flags: int = 0) -> None:
        rec = struct.pack("<II", len(payload) | flags, 0) + payload
        rec += b"\0" * (-len(rec) % 8)
        for i, b in enumerate(rec):
            self.area[(self.prod + i) % SIZE] = b
        self.prod += len(rec)

    def view(self) -> memoryview:
        return memoryview(bytes(self.area) * 2)


def collect(ring: Ring, cons: int, limit: int = 100):
    got = []
    cons, n = read_ring(ring.view(), SIZE - 1, cons, lambda: ring.prod,
                        lambda v, off, size: got.append(bytes(v[off:off + size])), limit)
    return cons, n, got


def test_reads_records_in_order_and_skips_discarded():
    r = Ring()
    r.put(b"one")
    r.put(b"two-two", flags=RINGBUF_DISCARD)
    r.put(b"three")
    cons, n, got = collect(r, 0)
    assert got == [b"one", b"three"] and n == 2
    assert cons == r.prod == 8 + 8 + 8 + 8 + 8 + 8


def test_a_record_across_the_end_of_the_ring_is_whole():
    r = Ring()
    r.put(b"a" * 40)            # 48 bytes
    cons, _, _ = collect(r, 0)
    r.put(b"wrapped-record!!")  # 24 bytes starting at 48: wraps
    cons2, n, got = collect(r, cons)
    assert got == [b"wrapped-record!!"] and n == 1 and cons2 == 72


def test_stops_at_a_record_still_being_written():
    r = Ring()
    r.put(b"done")
    r.put(b"busy", flags=RINGBUF_BUSY)
    cons, n, got = collect(r, 0)
    assert got == [b"done"] and cons == 16


def test_limit_leaves_the_rest_for_the_next_read():
    r = Ring()
    for i in range(5):
        r.put(bytes([i]) * 4)
    cons, n, got = collect(r, 0, limit=2)
    assert n == 2 and cons == 32
    cons, n, got = collect(r, cons)
    assert [g[0] for g in got] == [2, 3, 4] and cons == r.prod


def perf_sample(payload: bytes) -> bytes:
    body = struct.pack("<I", len(payload)) + payload
    body += b"\0" * (-(len(body) + 8) % 8)
    return struct.pack("<IHH", PERF_RECORD_SAMPLE, 0, 8 + len(body)) + body


def perf_lost(count: int) -> bytes:
    return struct.pack("<IHHQQ", PERF_RECORD_LOST, 0, 24, 7, count)


def test_perf_ring_samples_lost_records_and_wrap():
    size = 128
    stream = perf_sample(b"x" * 20) + perf_lost(5) + perf_sample(b"y" * 12)
    start = 64                      # the last sample runs from 120 to 144: it wraps
    area = bytearray(size)
    for i, b in enumerate(stream):
        area[(start + i) % size] = b
    got = []
    tail, n, lost = read_perf_ring(memoryview(bytes(area)), size, start, start + len(stream),
                                   lambda v, off, sz: got.append(bytes(v[off:off + sz])), 100)
    assert got == [b"x" * 20, b"y" * 12]
    assert (tail, n, lost) == (start + len(stream), 2, 5)
