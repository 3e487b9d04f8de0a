"""Reading the kernel's event buffers straight from their shared memory.

A BPF ring buffer (5.8+) is mapped as a consumer page (ours to write), a
producer page and the data area twice over, so a record that wraps is still
contiguous. A perf buffer (older kernels) is one mapped ring per CPU. Records
are handed to `handle(view, offset, size)` without a copy, and the consumer
position moves on once per batch. No callbacks through ctypes, no wake-ups:
the caller reads on its own clock.
"""
from __future__ import annotations

import ctypes
import os
import struct

from tracer.probes import bpf_syscall as sc

RINGBUF_BUSY = 1 << 31
RINGBUF_DISCARD = 1 << 30
RINGBUF_HDR = 8
_U32 = struct.Struct("<I").unpack_from
_PERF_HDR = struct.Struct("<IHH").unpack_from
_U64 = struct.Struct("<Q").unpack_from
PERF_RECORD_LOST, PERF_RECORD_SAMPLE = 2, 9


def _bytes_at(addr: int, length: int) -> memoryview:
    return memoryview((ctypes.c_ubyte * length).from_address(addr)).cast("B")


def read_ring(data, mask: int, cons: int, producer, handle, limit: int) -> tuple[int, int]:
    """Walk BPF ring buffer records from position `cons` up to the producer
    position (`producer()` reads it). Returns (new consumer position, records
    handed over). `data` is the data area mapped twice, so a record that
    wraps is contiguous. Stops at a record still being written (busy bit)."""
    prod = producer()
    n = 0
    while cons < prod and n < limit:
        off = cons & mask
        hdr = _U32(data, off)[0]
        if hdr & RINGBUF_BUSY:
            break          # being written: the next read takes it
        length = hdr & ~(RINGBUF_BUSY | RINGBUF_DISCARD)
        if not hdr & RINGBUF_DISCARD:
            handle(data, off + RINGBUF_HDR, length)
            n += 1
        cons += (length + RINGBUF_HDR + 7) & ~7
        if cons >= prod:
            prod = producer()
    return cons, n


class RingBuffer:
    def __init__(self, map_fd: int, size: int):
        if size & (size - 1):
            raise ValueError(f"ring buffer size {size} is not a power of two")
        self.size, self._mask = size, size - 1
        page = sc.PAGE_SIZE
        self._maps = [(sc.mmap(map_fd, page, sc.PROT_READ | sc.PROT_WRITE, 0), page)]
        self._maps.append((sc.mmap(map_fd, page + 2 * size, sc.PROT_READ, page), page + 2 * size))
        self._consumer = ctypes.c_uint64.from_address(self._maps[0][0])
        self._producer = ctypes.c_uint64.from_address(self._maps[1][0])
        self._data = _bytes_at(self._maps[1][0] + page, 2 * size)
        self.lost = 0   # the kernel side counts its own drops (counters map)

    def read(self, handle, limit: int, walk=None) -> int:
        """Hand up to `limit` records to handle(view, offset, size); returns how
        many. `walk`, when given, does read_ring's and handle's work in one
        call: walk(data, mask, cons, producer, limit) -> (cons, n)
        (tracer/fastpath.py)."""
        producer = lambda: self._producer.value   # noqa: E731
        if walk is None:
            cons, n = read_ring(self._data, self._mask, self._consumer.value, producer, handle,
                                limit)
        else:
            cons, n = walk(self._data, self._mask, self._consumer.value, producer, limit)
        self._consumer.value = cons
        return n

    def close(self) -> None:
        self._data.release()
        for addr, length in self._maps:
            sc.munmap(addr, length)
        self._maps = []


def read_perf_ring(data, size: int, tail: int, head: int, handle, limit: int) -> tuple[int, int, int]:
    """Walk one CPU's perf ring from `tail` to `head`: samples go to
    handle(view, offset, size), PERF_RECORD_LOST adds to the lost count.
    Returns (new tail, samples handed over, lost). The ring is mapped once,
    so a record that wraps is copied out whole."""
    n = lost = 0
    while tail < head and n < limit:
        off = tail % size
        rtype, _misc, rsize = _PERF_HDR(data, off)
        if rsize == 0:
            break
        if off + rsize > size:
            view, base = memoryview(bytes(data[off:]) + bytes(data[:off + rsize - size])), 0
        else:
            view, base = data, off
        if rtype == PERF_RECORD_SAMPLE:
            handle(view, base + 12, _U32(view, base + 8)[0])
            n += 1
        elif rtype == PERF_RECORD_LOST:
            lost += _U64(view, base + 16)[0]
        tail += rsize
    return tail, n, lost


class PerfBuffer:
    """BPF_PERF_OUTPUT: one ring per online CPU, its fd stored in the map."""

    def __init__(self, events_map, pages: int = 64):
        self.lost = 0
        self._rings = []
        page = sc.PAGE_SIZE
        self._size = pages * page
        try:
            for cpu in sc.online_cpus():
                fd = sc.perf_event_open(sc.PERF_TYPE_SOFTWARE, sc.PERF_COUNT_SW_BPF_OUTPUT, cpu=cpu,
                                        sample_type=sc.PERF_SAMPLE_RAW, wakeup_events=1 << 16)
                addr = sc.mmap(fd, page + self._size, sc.PROT_READ | sc.PROT_WRITE, 0)
                self._rings.append((fd, addr))
                sc.ioctl(fd, sc.PERF_EVENT_IOC_ENABLE, 0)
                events_map.update(struct.pack("<I", cpu), struct.pack("<I", fd))
        except BaseException:
            self.close()
            raise

    def read(self, handle, limit: int, walk=None) -> int:
        """As RingBuffer.read; `walk` is for ring buffers only (not used)."""
        n = 0
        size, page = self._size, sc.PAGE_SIZE
        for _fd, addr in self._rings:
            head_v = ctypes.c_uint64.from_address(addr + 1024)
            tail_v = ctypes.c_uint64.from_address(addr + 1032)
            head, tail = head_v.value, tail_v.value
            data = _bytes_at(addr + page, size)
            tail, got, lost = read_perf_ring(data, size, tail, head, handle, limit - n)
            n += got
            self.lost += lost
            tail_v.value = tail
            data.release()
        return n

    def close(self) -> None:
        for fd, addr in self._rings:
            sc.munmap(addr, sc.PAGE_SIZE + self._size)
            try:
                os.close(fd)
            except OSError:
                pass
        self._rings = []
