"""The kernel's own counters, for ground truth (global to the machine: other
traffic moves them too, which the reports say)."""
from __future__ import annotations

from pathlib import Path


def netstat(path: str = "/proc/net/netstat") -> dict[str, int]:
    """TcpExt and IpExt counters, 'TcpExt:ListenOverflows' -> value."""
    out = {}
    lines = Path(path).read_text().splitlines()
    for names, values in zip(lines[::2], lines[1::2]):
        prefix, names = names.split(":", 1)
        _, values = values.split(":", 1)
        for n, v in zip(names.split(), values.split()):
            out[f"{prefix}:{n}"] = int(v)
    return out


def snmp_tcp() -> dict[str, int]:
    return {k: v for k, v in netstat("/proc/net/snmp").items() if k.startswith("Tcp:")}


def listen_overflows() -> int:
    return netstat()["TcpExt:ListenOverflows"]


def listen_drops() -> int:
    return netstat()["TcpExt:ListenDrops"]
