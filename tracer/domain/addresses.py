"""How an address and an endpoint are written, everywhere.

An endpoint is `addr:port` for IPv4 and `[addr]:port` for IPv6 (RFC 3986),
so the port can never be read as part of a v6 address. Rows that sum what
did not fit a bounded table have family 0 and a name instead of an address
("other"): that name is the whole label.
"""
from __future__ import annotations


def is_v6(addr: str, family: int | None = None) -> bool:
    """family 6, or, where no family is stored (report rows), a colon in the text."""
    return family == 6 if family else ":" in addr


def endpoint(addr: str | None, port: int | None, family: int | None = None) -> str:
    """`10.0.0.1:80`, `[::1]:80`; family 0 (a summed row) is its name alone."""
    if family == 0:
        return addr or "?"
    addr = addr or "?"
    return f"[{addr}]:{port}" if is_v6(addr, family) else f"{addr}:{port}"


def destination(key: tuple) -> str:
    """The label of a (family, addr, port) key."""
    family, addr, port = key
    return endpoint(addr, port, family)
