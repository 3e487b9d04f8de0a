"""Kernel timestamps (bpf_ktime_get_ns: CLOCK_MONOTONIC) to wall-clock time."""
from __future__ import annotations

import time


class Clock:
    def __init__(self):
        # Sample both clocks back to back; the pair with the smallest gap
        # bounds the offset error to well under a microsecond.
        best = None
        for _ in range(5):
            m0 = time.monotonic_ns()
            w = time.time_ns()
            m1 = time.monotonic_ns()
            if best is None or m1 - m0 < best[0]:
                best = (m1 - m0, w - (m0 + m1) // 2)
        self.offset_ns = best[1]

    def wall_us(self, mono_ns: int) -> int:
        """Microseconds since the epoch, UTC."""
        return (mono_ns + self.offset_ns) // 1000
