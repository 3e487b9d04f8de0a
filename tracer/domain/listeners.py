"""The identity of a listening socket, one definition for the live view,
replay, the report and the Parquet sinks.

A listener is (netns, family, address, port): two containers may both
listen on 0.0.0.0:80, and they are two listeners with two accept queues.
The members of an SO_REUSEPORT group are separate sockets with the same
key: counted per socket in the kernel, summed per key here.

`netns` is the inode of the network namespace; 0 stands for unknown (rows
recorded before the column existed, or a null), so such rows still group
with each other and never with a known namespace.
"""
from __future__ import annotations

import ipaddress
from functools import lru_cache
from typing import Iterable, NamedTuple, Optional

from tracer.domain.addresses import endpoint


class ListenerKey(NamedTuple):
    netns: int
    family: int      # 4 or 6
    laddr: str
    lport: int


def listener_key(netns: Optional[int], family: int, laddr: str, lport: int) -> ListenerKey:
    return ListenerKey(int(netns or 0), int(family), laddr, int(lport))


def key_of_row(row) -> ListenerKey:
    """The key of a recorded row (a dict) or of a live row (an object with
    netns, family, laddr, lport): a null netns is 0."""
    get = row.get if isinstance(row, dict) else (lambda name: getattr(row, name, None))
    return listener_key(get("netns"), get("family"), get("laddr"), get("lport"))


def wildcard(family: int) -> str:
    """The address a socket bound to every address of its family shows."""
    return "0.0.0.0" if family == 4 else "::"


def listener_of_accept(known, netns: Optional[int], family: int, laddr: str,
                       lport: int) -> ListenerKey:
    """The listener that accepted a connection whose local end is laddr:lport.
    A listener bound to the wildcard hands out children with a specific local
    address: the exact key if it is known (in `known`, a container of keys),
    else the wildcard of the same family and namespace if that is known, else
    the exact key."""
    exact = listener_key(netns, family, laddr, lport)
    if exact in known:
        return exact
    wild = exact._replace(laddr=wildcard(family))
    return wild if wild in known else exact


def listener_label(key: ListenerKey, namespaces: Iterable[int] = ()) -> str:
    """addr:port, with the namespace when it tells this listener apart: when
    `namespaces` (the namespaces of the listeners shown together) holds more
    than one, or always if it is not given and the namespace is known."""
    ns = set(namespaces)
    return with_netns(endpoint(key.laddr, key.lport), key.netns, len(ns) > 1 or not ns)


def with_netns(label: str, netns: Optional[int], shown: bool) -> str:
    """A listener's label, with its namespace when that tells it apart."""
    return f"{label} netns {netns}" if shown and netns else label


def spans_namespaces(rows) -> bool:
    """Listeners shown together come from more than one network namespace:
    then each label names its namespace (two containers on 0.0.0.0:80)."""
    first = None
    for r in rows:
        if r.netns:
            if first is None:
                first = r.netns
            elif r.netns != first:
                return True
    return False


def member_delta(current: int, previous: Optional[int]) -> int:
    """What a cumulative per-socket counter added since it was last read. A
    counter that went down belongs to a new socket (an address reused, a
    group member replaced): it started again from zero, never a negative
    count. previous None: first sight, everything counts."""
    if previous is None or current < previous:
        return max(0, current)
    return current - previous


# Asked for every accepted connection's local address (the edges' address
# owners): parsing it each time cost ~3 µs an accept on loopback. Peers'
# addresses are few and any user can make many: a bounded cache.
@lru_cache(maxsize=4096)
def is_loopback(addr: str) -> bool:
    """127.0.0.0/8, ::1, or a v4-mapped loopback address."""
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


def listener_of_connect(known, netns: Optional[int], family: int, daddr: str, dport: int,
                        saddr: Optional[str] = None) -> Optional[ListenerKey]:
    """The listener of this host a connect to daddr:dport reached, or None
    (a remote destination, or nothing listening there that we know of).
    `known` holds the listeners' keys. A listener bound to one address is
    on that address (ours); a wildcard one is reached only when the
    destination is ours: a loopback address, or the connect's own source
    address (the kernel routes to a local address from that address). A v4
    destination with no v4 listener may reach a dual-stack `::` listener."""
    exact = listener_key(netns, family, daddr, dport)
    if exact in known:
        return exact
    if not (is_loopback(daddr) or (saddr is not None and daddr == saddr)):
        return None
    wild = exact._replace(laddr=wildcard(family))
    if wild in known:
        return wild
    if family == 4:
        dual = exact._replace(family=6, laddr=wildcard(6))
        if dual in known:
            return dual
    return None
