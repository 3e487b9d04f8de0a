"""Memory per connection and what it projects to: one definition for the
live view, the `sockets` table, replay and the report.

A process's memory per connection is its resident memory (VmRSS, what
/proc/PID/statm counts resident) divided by the TCP connections it holds:
every TCP socket but its listeners (established, connecting, closing). That
average carries the process's baseline (code, heap it keeps whatever the
load) in every share: with few connections it is mostly baseline, so a
projection is only made from MIN_CONNECTIONS connections up, and it is an
upper bound (a baseline is not paid again per connection).

The projection asks the question of the 1,000-users article: at
max(USERS, what its listen backlogs could hand it) connections, does the
process still fit in the memory available to it? Available is its memory
cgroup's limit (the smallest on the path to the root) where one is set,
else the host's MemTotal. What the rest of its cgroup uses stays used.

Sizes are written in decimal units (kB, MB, GB): "1,000 connections at
5.1 MB each: 5.1 GB" reads right only in powers of ten.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

USERS = 1_000            # the load every projection is made for, at least
MIN_CONNECTIONS = 50     # fewer: the average is mostly the process's baseline
WARN_SHARE = 0.8         # a projection above this share of what is available: warn
CGROUP, HOST = "cgroup", "host"


def connections(established: int, syn_sent: int, close_wait: int, other: int) -> int:
    """The TCP connections a process holds: every TCP socket but its listeners."""
    return (established or 0) + (syn_sent or 0) + (close_wait or 0) + (other or 0)


def per_connection(rss_bytes: Optional[int], held: int) -> Optional[float]:
    """Resident bytes per connection held; None if either is unknown or zero."""
    if rss_bytes is None or rss_bytes <= 0 or not held or held <= 0:
        return None
    return rss_bytes / held


def target(backlog: int = 0) -> int:
    """Connections a projection is made for: USERS, or more if the process's
    listen backlogs (summed) could queue more at once."""
    return max(USERS, backlog or 0)


def available(cgroup_limit: Optional[int], mem_total: Optional[int]) -> tuple[Optional[int], str]:
    """(bytes available to a process, where that limit comes from): its
    memory cgroup's limit if set and below the host's RAM, else MemTotal."""
    if cgroup_limit is not None and cgroup_limit > 0 and (mem_total is None
                                                           or cgroup_limit < mem_total):
        return cgroup_limit, CGROUP
    return mem_total, HOST


@dataclass(frozen=True)
class Projection:
    held: int                   # connections held now
    per_connection: float       # bytes
    target: int                 # connections projected to
    projected: float            # bytes the process (and the rest of its cgroup) would use
    others: int                 # bytes the rest of its cgroup uses, counted in `projected`
    available: int              # bytes
    source: str                 # CGROUP or HOST

    @property
    def share(self) -> float:
        return self.projected / self.available

    @property
    def severity(self) -> Optional[str]:
        """crit when it would not fit, warn when it would fill WARN_SHARE."""
        if self.share > 1.0:
            return "crit"
        return "warn" if self.share >= WARN_SHARE else None

    def text(self, who: str) -> str:
        """"api[12] holds 200 connections at 2.1 MB each: 1,000 would need
        2.1 GB, more than the 1.1 GB its cgroup allows"."""
        others = f" (with {size(self.others)} the rest of its cgroup uses)" if self.others else ""
        limit = ("its cgroup allows" if self.source == CGROUP else "the host has (MemTotal)")
        verb = "more than" if self.share > 1.0 else f"{self.share:.0%} of"
        return (f"{holds(who, self.held, self.per_connection)}; "
                f"{self.target:,} would need {size(self.projected)}{others}, "
                f"{verb} the {size(self.available)} {limit}")


def projection(rss_bytes: Optional[int], held: int, backlog: int = 0,
               cgroup_bytes: Optional[int] = None, cgroup_limit: Optional[int] = None,
               mem_total: Optional[int] = None) -> Optional[Projection]:
    """What the process would need at target(backlog) connections, against
    what is available to it; None when there is too little to go on (fewer
    than MIN_CONNECTIONS held, memory unknown, no limit known) or the process
    already holds that many."""
    per = per_connection(rss_bytes, held)
    avail, source = available(cgroup_limit, mem_total)
    n = target(backlog)
    if per is None or held < MIN_CONNECTIONS or not avail or held >= n:
        return None
    others = 0
    if source == CGROUP and cgroup_bytes is not None and cgroup_bytes > rss_bytes:
        others = cgroup_bytes - rss_bytes
    return Projection(held=held, per_connection=per, target=n, projected=per * n + others,
                      others=others, available=avail, source=source)


def size(n: Optional[float]) -> str:
    """Bytes in decimal units, three significant digits: 812 B, 5.1 kB,
    2.10 MB, 512 MB, 5.10 GB; "-" for None."""
    if n is None:
        return "-"
    for unit, scale in (("B", 1), ("kB", 1e3), ("MB", 1e6), ("GB", 1e9), ("TB", 1e12)):
        x = n / scale
        if x < 999.5 or unit == "TB":
            if unit == "B":
                return f"{x:.0f} B"
            return f"{x:.2f} {unit}" if x < 9.995 else (
                f"{x:.1f} {unit}" if x < 99.95 else f"{x:.0f} {unit}")
    return f"{n:.0f} B"  # pragma: no cover - the loop always returns


def holds(who: str, held: int, per: Optional[float]) -> str:
    """"api holds 1,000 connections at 5.10 MB each: 5.10 GB"."""
    noun = "connection" if held == 1 else "connections"
    if per is None:
        return f"{who} holds {held:,} {noun}"
    return f"{who} holds {held:,} {noun} at {size(per)} each: {size(per * held)}"


def _getter(row):
    return row.get if isinstance(row, dict) else (lambda name: getattr(row, name, None))


def row_connections(row) -> int:
    """connections() of a `sockets` row (a dict) or a live ProcessRow."""
    get = _getter(row)
    return connections(get("established"), get("syn_sent"), get("close_wait"), get("other"))


def row_per_connection(row) -> Optional[float]:
    """per_connection() of a `sockets` row or a ProcessRow."""
    return per_connection(_getter(row)("rss_bytes"), row_connections(row))


def row_projection(row) -> Optional[Projection]:
    """projection() of a `sockets` row or a ProcessRow, from what the row
    holds: memory_limit_bytes and memory_limit_from say what was available."""
    get = _getter(row)
    limit, source = get("memory_limit_bytes"), get("memory_limit_from")
    return projection(get("rss_bytes"), row_connections(row), get("listen_backlog") or 0,
                      get("cgroup_memory_bytes"), limit if source == CGROUP else None,
                      limit if source != CGROUP else None)
