"""Host-wide TCP memory against its limits, one definition for the live
view, the `tcp_memory` table, the report and doctor.

The kernel charges every TCP socket's buffers to one host-wide counter (the
`mem` of /proc/net/sockstat's TCP line, in pages) and compares it with
net.ipv4.tcp_mem's three thresholds (pages): below `low` it never limits;
above `pressure` it is in memory pressure (buffers shrink, receive queues
are pruned, TCPMemoryPressures counts each entry); at `max` new buffer
memory is refused (data is dropped, TCPRcvQDrop; sockets aborted,
TCPAbortOnMemory).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

# TcpExt counters of /proc/net/netstat that say TCP ran short of memory
COUNTERS = ("TCPMemoryPressures", "TCPMemoryPressuresChrono", "TCPRcvQDrop", "PruneCalled",
            "RcvPruned", "OfoPruned", "TCPAbortOnMemory")
NEAR_PRESSURE = 0.8      # of the pressure threshold: warn before it is reached
NORMAL, NEAR, PRESSURE, LIMIT = "normal", "near pressure", "pressure", "at the limit"


@dataclass(frozen=True)
class TcpMemory:
    """One reading: bytes charged now, the thresholds in bytes, the counters
    (cumulative since boot); any None if unreadable."""
    used: Optional[int]
    low: Optional[int]
    pressure: Optional[int]
    maximum: Optional[int]
    counters: dict


def state(used: Optional[int], pressure: Optional[int], maximum: Optional[int]) -> Optional[str]:
    """normal, near pressure, pressure or at the limit; None if unknown."""
    if used is None or not pressure or not maximum:
        return None
    if used >= maximum:
        return LIMIT
    if used > pressure:
        return PRESSURE
    return NEAR if used >= NEAR_PRESSURE * pressure else NORMAL


def deltas(now: dict, before: Optional[dict]) -> dict:
    """What each counter added since `before` (a counter that went down,
    or was missing: 0; the first reading: 0, history before us is not ours)."""
    if before is None:
        return {k: 0 for k in now}
    return {k: max(0, v - before.get(k, v)) for k, v in now.items()}


def finding_text(used: int, pressure: int, maximum: int, pressures: int, rcvq_drops: int,
                 pruned: int) -> str:
    """"TCP memory 1.20 GB, past the pressure threshold 1.10 GB (max 1.65 GB);
    3 entries into pressure, 120 packets dropped, 40 pruned"."""
    from tracer.domain.memory import size

    s = state(used, pressure, maximum) or "?"
    return (f"host TCP memory {size(used)} ({s}; pressure at {size(pressure)}, max "
            f"{size(maximum)}: net.ipv4.tcp_mem); {pressures:,} entries into memory pressure "
            f"(TCPMemoryPressures), {rcvq_drops:,} packets dropped for want of receive memory "
            f"(TCPRcvQDrop), {pruned:,} receive queues pruned (RcvPruned + OfoPruned)")


# A process whose receive queues hold data at this many interval ends in a
# row, never less than the time before, is not reading (the socket memory
# stays charged, and its peers' windows close).
STUCK_INTERVALS = 5


def unread_streak(streak: int, previous_rx: Optional[int], rx: int) -> int:
    """Interval ends in a row with unread data that never shrank, after
    one more scan showing `rx` bytes unread (previous_rx: the scan before)."""
    if rx <= 0:
        return 0
    if previous_rx is None or rx < previous_rx:
        return 1
    return streak + 1


def not_reading(streak: int) -> bool:
    return streak >= STUCK_INTERVALS


def not_reading_text(who: str, rx: int, streak: int, interval_s: float | None = None) -> str:
    from tracer.domain.memory import size

    span = f" (~{streak * interval_s:.0f} s)" if interval_s else ""
    return (f"{who} leaves {size(rx)} unread in its TCP receive queues, never less, for "
            f"{streak} interval ends{span}: it is not reading, and its peers' windows close")
