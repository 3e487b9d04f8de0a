"""A running set of probes: load, poll the event buffer, count losses, close.

Decoding happens in the buffer callback (tracer/events.py); what comes out of
`poll()` is plain Python objects, so nothing past this module knows bcc.
"""
from __future__ import annotations

import ctypes
import time
from dataclasses import dataclass, field

from tracer import events
from tracer.events import C
from tracer.filters import Filters
from tracer.probes import program


MAX_BATCH = 16384   # events decoded per poll at most
POLL_SLEEP_MS = 50  # how stale an event may get before we read it


class ProbeError(Exception):
    """Loading or attaching failed; the message says why, in one line."""


@dataclass
class LoadInfo:
    backend: str
    transport: str           # "ring buffer" or "perf buffer"
    offsets_from: str
    headers: str
    load_seconds: float
    notes: list[str] = field(default_factory=list)


class ProbeSession:
    def __init__(self, backend: str, filters: Filters, *, ringbuf: bool, offset_flags: list[str],
                 env: dict[str, str], offsets_from: str = "", headers: str = ""):
        self._opts = program.BuildOptions(backend=backend, filters=filters, ringbuf=ringbuf)
        self._offset_flags = offset_flags
        self._env = env
        self._bpf = None
        self._pending: list = []
        self._perf_lost = 0
        self.decode_errors = 0
        self.info = LoadInfo(backend, "ring buffer" if ringbuf else "perf buffer",
                             offsets_from, headers, 0.0)

    def open(self) -> "ProbeSession":
        t0 = time.monotonic()
        try:
            self._bpf, notes = program.load(self._opts, self._offset_flags, self._env)
            self.info.notes.extend(notes)
        except Exception as e:  # bcc raises bare Exception for compile/attach failures
            raise ProbeError(f"cannot load the {self._opts.backend} programs: {_first_line(e)}") from e
        if self._opts.ringbuf:
            self._bpf[b"events"].open_ring_buffer(self._on_event)
        else:
            self._bpf[b"events"].open_perf_buffer(self._on_event, page_cnt=256,
                                                 lost_cb=self._on_perf_lost)
        self.info.load_seconds = time.monotonic() - t0
        return self

    def _on_event(self, *args):
        # ring buffer: (ctx, data, size); perf buffer: (cpu, data, size)
        data, size = args[1], args[2]
        buf = ctypes.string_at(data, size)
        decoder = events.DECODERS.get(events.record_type(buf))
        if decoder is None:
            self.decode_errors += 1
            return 0
        self._pending.append(decoder(buf))
        # libbpf keeps consuming while the kernel keeps producing; under a
        # flood that would never return and grow this list without bound.
        # A negative return ends this poll; the rest waits in the ring.
        return -1 if len(self._pending) >= MAX_BATCH else 0

    def _on_perf_lost(self, lost):
        self._perf_lost += lost

    def poll(self, timeout_ms: int = 100) -> list:
        """Wait up to timeout_ms for events; return those decoded since the last call."""
        if self._opts.ringbuf:
            # The kernel side submits without waking us (BPF_RB_NO_WAKEUP):
            # one wake-up per event cost a quarter of our CPU. So sleep, then
            # take what has accumulated; 4 MiB of ring holds ~40k events.
            if timeout_ms:
                time.sleep(min(timeout_ms, POLL_SLEEP_MS) / 1000.0)
            self._bpf.ring_buffer_consume()
        else:
            self._bpf.perf_buffer_poll(timeout_ms)
        out, self._pending = self._pending, []
        return out

    def counters(self) -> dict[str, int]:
        """Kernel-side loss counters, summed over CPUs."""
        table = self._bpf[b"counters"]
        def total(slot):
            return sum(table[ctypes.c_int(slot)])
        return {
            "lost_events": total(C["CTR_LOST_EVENTS"]) + self._perf_lost,
            "untracked_connects": total(C["CTR_INFLIGHT_FULL"]),
            "untracked_accept_waits": total(C["CTR_HANDSHAKES_FULL"]),
            "untracked_listeners": total(C["CTR_LISTENERS_FULL"]),
            "untracked_lifetimes": total(C["CTR_OWNED_FULL"]),
            "decode_errors": self.decode_errors,
        }

    def listener_counters(self) -> list:
        """Cumulative per-listener counters; entries of closed listeners are
        removed once read (their last counts are in this result)."""
        table = self._bpf[b"listeners"]
        out = []
        for key, value in list(table.items()):
            rec = events.decode_listener(key, value)
            out.append(rec)
            if rec.closed:
                try:
                    del table[key]
                except KeyError:
                    pass
        return out

    def take_listener_peaks(self) -> dict:
        """{(netns, family, laddr, lport): peak accept queue} since the last call."""
        table = self._bpf[b"listener_peak"]
        out = {}
        for key, value in list(table.items()):
            fam = key.family
            out[(key.netns, 4 if fam == events.AF_INET else 6,
                 events.format_addr(fam, bytes(key.addr)), key.port)] = value.value
            try:
                del table[key]
            except KeyError:
                pass
        return out

    def inflight(self) -> int:
        return len(self._bpf[b"inflight"])

    def pending_connects(self) -> dict:
        """{(family, daddr, dport): (count, oldest start ns)} of connects still
        waiting for an answer: a black-holed destination shows here long
        before its connects time out."""
        table = self._bpf[b"inflight"]
        try:
            items = table.items_lookup_batch()
        except Exception:   # kernels without batch map ops
            items = table.items()
        out: dict = {}
        for _, v in items:
            if not v.have_dest:
                continue
            fam = v.family
            key = (4 if fam == events.AF_INET else 6, events.format_addr(fam, bytes(v.daddr)),
                   v.dport)
            n, oldest = out.get(key, (0, v.ts_ns))
            out[key] = (n + 1, min(oldest, v.ts_ns))
        return out

    def close(self) -> None:
        if self._bpf is not None:
            bpf, self._bpf = self._bpf, None
            bpf.cleanup()


def _first_line(e: Exception) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]
