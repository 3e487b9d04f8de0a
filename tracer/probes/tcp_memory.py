"""Host-wide TCP memory from /proc (no BPF): /proc/net/sockstat's TCP `mem`,
net.ipv4.tcp_mem and the TcpExt counters of /proc/net/netstat that say TCP
ran short of memory (tracer/domain/tcp_memory.py says what they mean).
Read by the collector once per interval: three small files, ~50 µs."""
from __future__ import annotations

import os
from typing import Optional

from tracer.domain.tcp_memory import COUNTERS, TcpMemory

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def _text(path: str) -> Optional[str]:
    try:
        with open(path, "rb") as f:
            return f.read(65536).decode("ascii", "replace")
    except OSError:
        return None


def sockstat_pages(text: Optional[str]) -> Optional[int]:
    """The `mem` of the TCP line ("TCP: inuse 5 orphan 0 tw 2 alloc 9 mem 3")."""
    for line in (text or "").splitlines():
        if line.startswith("TCP:"):
            f = line.split()[1:]
            pairs = dict(zip(f[::2], f[1::2]))
            v = pairs.get("mem", "")
            return int(v) if v.isdigit() else None
    return None


def tcp_mem_pages(text: Optional[str]) -> tuple[Optional[int], Optional[int], Optional[int]]:
    f = (text or "").split()
    if len(f) != 3 or not all(x.isdigit() for x in f):
        return None, None, None
    return int(f[0]), int(f[1]), int(f[2])


def netstat_counters(text: Optional[str], names=COUNTERS) -> dict:
    """The named TcpExt counters (a header line of names, then one of values)."""
    lines = (text or "").splitlines()
    out = {}
    for head, values in zip(lines, lines[1:]):
        if head.startswith("TcpExt:") and values.startswith("TcpExt:"):
            for k, v in zip(head.split()[1:], values.split()[1:]):
                if k in names and v.isdigit():
                    out[k] = int(v)
    return out


def read(proc: str = "/proc") -> TcpMemory:
    pages = sockstat_pages(_text(f"{proc}/net/sockstat"))
    low, pressure, maximum = tcp_mem_pages(_text(f"{proc}/sys/net/ipv4/tcp_mem"))

    def b(p):
        return None if p is None else p * PAGE_SIZE
    return TcpMemory(used=b(pages), low=b(low), pressure=b(pressure), maximum=b(maximum),
                     counters=netstat_counters(_text(f"{proc}/net/netstat")))
