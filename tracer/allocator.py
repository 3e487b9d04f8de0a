"""How the tracer's process gets its memory: Arrow on the C library's
malloc, and malloc told to give large blocks back to the system.

Arrow's default allocator (mimalloc in the pyarrow wheels) kept the
tracer's peak RSS under ab -c 1000 at 148-160 MB; with the C library's
malloc it was 111 MB (jemalloc: 112). The tracer makes small batches once a
second: allocator speed does not show. The pool is read when pyarrow makes
its first one, so it is chosen before that; a user's own choice is kept.

glibc's malloc serves a block of 128 KiB or more with its own mapping, but
raises that threshold to the size of each such block freed (up to 32 MiB):
from then on the Parquet writer's column buffers, Arrow batches of a few MB
and the lists of a second's rows come from the heap, and what they leave
behind is kept, not returned. At 16,000 connections/s that was 35 MB of
RSS held for nothing (BENCHMARKS.md, "Peak RSS"). A fixed threshold keeps
every block that large in a mapping of its own, unmapped when freed.

Python's cycle collector runs its youngest generation every 700 net
allocations of container objects by default: under load several times a
poll, each time walking every event, row tuple and list of the poll still
alive, and promoting them so that older generations are walked again. None
of the event path's objects are in cycles; they die by reference count. At
GC_YOUNG_THRESHOLD the collector still runs (cycles are collected, a
little later) and the event path costs 8-13 % less CPU (BENCHMARKS.md
section 17).
"""
from __future__ import annotations

import ctypes
import gc
import os

ARROW_POOL = ("ARROW_DEFAULT_MEMORY_POOL", "system")

M_MMAP_THRESHOLD = -3          # glibc malloc.h
MMAP_THRESHOLD = 128 << 10     # glibc's own starting value, kept fixed
# glibc's environment names for the same settings: a user's choice wins
GLIBC_TUNABLES_SET = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_TRIM_THRESHOLD_")


GC_YOUNG_THRESHOLD = 50_000


def configure_gc() -> tuple:
    """Raise the cycle collector's youngest threshold to GC_YOUNG_THRESHOLD
    (older generations as they were); a collector turned off (threshold 0:
    whoever embeds us chose that), or set higher, is left alone. Returns
    the thresholds now in force."""
    young, *older = gc.get_threshold()
    if 0 < young < GC_YOUNG_THRESHOLD:
        gc.set_threshold(GC_YOUNG_THRESHOLD, *older)
    return gc.get_threshold()


def configure() -> str:
    """Choose Arrow's pool and fix malloc's mapping threshold. Returns what
    was done with malloc: "fixed", "kept" (the user set it) or "not glibc"."""
    os.environ.setdefault(*ARROW_POOL)
    if any(name in os.environ for name in GLIBC_TUNABLES_SET) or \
            "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return "kept"
    try:
        libc = ctypes.CDLL(None)
        # gnu_get_libc_version: glibc's own; musl's mallopt does nothing
        libc.gnu_get_libc_version
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return "not glibc"
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return "fixed" if mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 else "not glibc"
