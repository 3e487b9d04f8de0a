"""The connection map: who connects to whom on this host, per interval.

An edge is a client process and a destination (pid, family, daddr, dport).
Per interval it has the connects made on it (from connect events: rate,
outcomes, handshake latency), the connections the client holds to that
destination now (the kernel's socket table, as tracer/aggregate/sockets.py
tallies it: `Holding.by_remote`), and, when the destination is a listener of
this host, the process serving it and that listener's drops in the interval
(the listener rows of the same interval, joined with
tracer/domain/listeners.listener_of_connect). Pure state.

A destination in another network namespace (a container's address reached
over a veth or a bridge) is joined through the namespaces that own its
address: learned from what only an owner does, accept a connection whose
local address it is, or bind a listener to it (`_AddressOwners`). The join
is made only when exactly one such namespace has a listener for the port.

Where each end runs: the serving process's container is its listener row's
(attributed before the join); the client's is set by the collector from the
pid, or from the cgroup id the kernel gave its connects when the pid is
gone (`cgroup_id` here), as the connects table does.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from tracer.aggregate.connects import ConnectStats
from tracer.domain.addresses import endpoint
from tracer.domain.containers import Attribution, in_container
from tracer.domain.listeners import is_loopback, listener_key, listener_of_connect, wildcard
from tracer.events import Accept, Connect

# Edges are keyed by what other processes choose (any user can connect to
# thousands of destinations): past this many in an interval the rest are
# summed into one "other" edge, each counted in `evicted`.
MAX_EDGES = 4096
# Addresses whose owning namespaces are remembered (any user can add
# addresses in a namespace of their own): least recently seen out first,
# counted; and namespaces kept per address (two bridges may reuse a subnet).
MAX_ADDRESSES = 4096
MAX_OWNERS = 4


@dataclass(frozen=True)
class EdgeRow:
    """One edge in one interval: immutable, safe to hand to another thread."""

    pid: int                       # client (0: the "other" edge)
    comm: str
    family: int                    # 4 or 6 (0: the "other" edge)
    daddr: str
    dport: int
    attempts: int                  # connects in the interval
    rate: float                    # connects per second
    connected: int                 # of which established
    refused: int
    timeout: int
    abandoned: int
    unreachable: int
    error: int
    p50_us: float | None           # handshake latency of the interval's established connects
    p99_us: float | None
    established: int | None        # held by the client at the interval's end; None: not read
    netns: int | None = None       # the client's network namespace; None: unknown
    server_pid: int | None = None  # owner of the local listener reached; None: remote/unknown
    server_comm: str | None = None
    listener: str | None = None    # that listener's addr:port (e.g. 0.0.0.0:80)
    listener_drops: int | None = None  # its drops + SYN drops in the interval; None: not local
    cgroup_id: int | None = None   # the client's cgroup v2 id, from its connects' events
    container: Attribution | None = None         # the client's (collector); None: unknown/none
    server_container: Attribution | None = None  # the listener owner's; None: unknown/none
    server_netns: int | None = None  # the listener's namespace (another one than the client's
                                     # for a container reached at its address); None: not local

    @property
    def failures(self) -> int:
        return self.refused + self.timeout + self.abandoned + self.unreachable + self.error

    @property
    def local(self) -> bool:
        return self.listener is not None

    @property
    def client(self) -> str:
        return "other" if self.family == 0 else in_container(f"{self.comm} ({self.pid})",
                                                             self.container)

    @property
    def destination(self) -> str:
        return endpoint(self.daddr, self.dport, self.family)

    @property
    def server(self) -> str | None:
        if self.server_comm is None and self.server_pid is None:
            return None
        return in_container(
            f"{self.server_comm or '?'} ({self.server_pid if self.server_pid else '?'})",
            self.server_container)

    @property
    def label(self) -> str:
        if self.family == 0:
            return "other"
        server = self.server
        return (f"{self.client} → {self.destination}"
                + (f" → {server}" if server else ""))


@dataclass
class _Window:
    comm: str
    netns: int
    own_source: bool               # some connect's source address was the destination
    stats: ConnectStats
    cgroup_id: int = 0

    @classmethod
    def first(cls, ev: Connect) -> "_Window":
        """The window of an edge, opened by its first connect of the interval."""
        return cls(ev.comm, ev.netns, False, ConnectStats(), ev.cgroup_id)


class _AddressOwners:
    """Which network namespaces own which (non-loopback) addresses, kept
    across intervals, bounded: MAX_ADDRESSES (least recently seen out first,
    counted in `evicted`), MAX_OWNERS namespaces each (most recent first)."""

    def __init__(self, max_addresses: int = MAX_ADDRESSES):
        self.max_addresses = max_addresses
        self._owners: OrderedDict[tuple[int, str], tuple[int, ...]] = OrderedDict()
        self.evicted = 0

    def note_all(self, notes) -> bool:
        """note() of each (netns, family, addr) of a poll's accepts, each
        once, in the order each was last seen (tracer/aggregate/tally.py):
        what note() of every accept leaves, unless one is evicted on the
        way; False, and nothing done, when one could be."""
        if len(self._owners) + len(notes) > self.max_addresses:
            return False
        note = self.note
        for netns, family, addr in notes:
            note(netns, family, addr)
        return True

    def note(self, netns: int, family: int, addr: str) -> None:
        if not netns or not family:
            return
        if family == 6 and addr.startswith("::ffff:") and "." in addr:
            family, addr = 4, addr[7:]      # a v4 connection on a dual-stack socket
        key = (family, addr)
        got = self._owners.get(key)
        if got is not None and got[0] == netns:
            self._owners.move_to_end(key)
            return
        if addr == wildcard(family) or is_loopback(addr):
            return                          # every namespace has these
        self._owners[key] = (netns, *(n for n in got or () if n != netns))[:MAX_OWNERS]
        self._owners.move_to_end(key)
        if len(self._owners) > self.max_addresses:
            self._owners.popitem(last=False)
            self.evicted += 1

    def of(self, family: int, addr: str) -> tuple[int, ...]:
        return self._owners.get((family, addr), ())


class _ListenerIndex:
    """This interval's listener rows by key, for the join."""

    def __init__(self, listener_rows, owners: _AddressOwners | None = None):
        self.rows = {}
        self.namespaces = set()
        self.owners = owners or _AddressOwners()
        for r in listener_rows:
            if not r.family:
                continue            # the listeners' "other" row: no address to join on
            key = listener_key(r.netns, r.family, r.laddr, r.lport)
            self.rows[key] = r
            self.namespaces.add(key.netns)
            self.owners.note(key.netns, key.family, key.laddr)  # bound: ours (or wildcard)

    def find(self, netns: int | None, family: int, daddr: str, dport: int, own_source: bool):
        saddr = daddr if own_source else None
        if netns:
            key = listener_of_connect(self.rows, netns, family, daddr, dport, saddr)
            if key is None:
                key = self._elsewhere(netns, family, daddr, dport)
            return self.rows[key] if key is not None else None
        # The client's namespace is unknown (an edge seen only in the socket
        # table): joined only when one namespace has such a listener.
        found = [k for ns in self.namespaces
                 if (k := listener_of_connect(self.rows, ns, family, daddr, dport, saddr))]
        return self.rows[found[0]] if len(found) == 1 else None

    def _elsewhere(self, netns: int, family: int, daddr: str, dport: int):
        """The listener of another namespace that owns daddr, if exactly one
        such namespace listens on dport (daddr is local there: a wildcard
        listener is reached)."""
        found = {k for ns in self.owners.of(family, daddr) if ns != netns
                 if (k := listener_of_connect(self.rows, ns, family, daddr, dport, daddr))}
        return found.pop() if len(found) == 1 else None


class EdgeTable:
    """Edges of the current interval, bounded (MAX_EDGES); `evicted` counts
    the edges summed into "other"."""

    def __init__(self, max_edges: int | None = None):
        self.max_edges = max_edges or MAX_EDGES
        self._window: dict[tuple, _Window] = {}
        self._other = ConnectStats()
        self.evicted_edges = 0
        self.owners = _AddressOwners()

    @property
    def evicted(self) -> dict[str, int]:
        return {"edges": self.evicted_edges, "edge_addresses": self.owners.evicted}

    def add_accept(self, ev: Accept) -> None:
        """An accepted connection's local address belongs to the acceptor's
        namespace: a connect to it from another namespace reaches it there."""
        self.owners.note(ev.netns, ev.family, ev.laddr)

    def add(self, ev: Connect) -> None:
        key = (ev.pid, ev.family, ev.daddr, ev.dport)
        w = self._window.get(key)
        if w is None:
            if len(self._window) >= self.max_edges:
                self._other.add(ev)
                self.evicted_edges += 1
                return
            w = self._window[key] = _Window.first(ev)
        # (per event: only what can change within an interval is looked at)
        w.stats.add(ev)
        if not w.own_source and ev.saddr == ev.daddr:
            w.own_source = True
        if ev.netns and not w.netns:
            w.netns = ev.netns

    def add_sums(self, sums: dict) -> bool:
        """add() of a poll's connects, a key at a time: {key: [its first
        connect, SYN retransmits, {outcome: [n, latencies]}, whether a
        source was the destination, its first namespace]}, keys in the order
        first seen (tracer/aggregate/tally.py). False, and nothing done, when
        a new key could be evicted (the events are then add()ed)."""
        window = self._window
        if len(window) + len(sums) > self.max_edges:
            return False
        for key, (ev, syn_retransmits, by_outcome, own_source, netns) in sums.items():
            w = window.get(key)
            if w is None:
                w = window[key] = _Window.first(ev)
            w.stats.add_sums(syn_retransmits, by_outcome)
            if own_source:
                w.own_source = True
            if netns and not w.netns:
                w.netns = netns
        return True

    def roll(self, seconds: float, listener_rows=(), holdings=None) -> list[EdgeRow]:
        """Close the interval: one row per edge with connects in it or
        connections held now. holdings: {pid: Holding} of this interval's
        socket table scan; None when it was not read (established unknown)."""
        per_s = 1 / seconds if seconds > 0 else 0.0
        index = _ListenerIndex(listener_rows, self.owners)
        held: dict[tuple, tuple[str, int]] = {}
        if holdings:
            for pid, h in holdings.items():
                for (family, raddr, rport), n in h.by_remote.items():
                    if n:
                        held[(pid, family, raddr, rport)] = (h.comm, n)
        window, self._window = self._window, {}
        # a pid's namespace, for its edges seen only in the socket table
        netns_of = {key[0]: w.netns for key, w in window.items() if w.netns}
        keys = list(window)
        only_held = [k for k in held if k not in window]
        room = self.max_edges - len(keys)
        other_held = 0
        if len(only_held) > room:
            # the most connections keep their rows; the rest are summed
            only_held.sort(key=lambda k: -held[k][1])
            other_held = sum(held[k][1] for k in only_held[room:])
            self.evicted_edges += len(only_held) - max(room, 0)
            only_held = only_held[:max(room, 0)]
        rows = []
        for key in keys + only_held:
            pid, family, daddr, dport = key
            w = window.get(key)
            s = w.stats if w else ConnectStats()
            comm = w.comm if w else held[key][0]
            netns = (w.netns if w else 0) or netns_of.get(pid) or None
            n_held = held.get(key, (None, 0))[1] if holdings is not None else None
            lst = index.find(netns, family, daddr, dport, bool(w and w.own_source))
            rows.append(_row(pid, comm, family, daddr, dport, s, per_s, n_held, netns, lst,
                             (w.cgroup_id if w else 0) or None))
        if self._other.attempts or other_held:
            rows.append(_row(0, "other", 0, "other", 0, self._other, per_s,
                             other_held if holdings is not None else None, None, None))
            self._other = ConnectStats()
        return rows


def _row(pid, comm, family, daddr, dport, s: ConnectStats, per_s, held, netns, lst,
         cgroup_id=None) -> EdgeRow:
    h = s.latency
    return EdgeRow(
        pid=pid, comm=comm, family=family, daddr=daddr, dport=dport, attempts=s.attempts,
        rate=s.attempts * per_s, connected=s.established, refused=s.refused, timeout=s.timeout,
        abandoned=s.abandoned, unreachable=s.unreachable, error=s.error,
        p50_us=h.percentile(50), p99_us=h.percentile(99), established=held, netns=netns,
        server_pid=lst.pid if lst is not None else None,
        server_comm=lst.comm if lst is not None else None,
        listener=lst.label if lst is not None else None,
        listener_drops=lst.drops + lst.syn_drops if lst is not None else None,
        cgroup_id=cgroup_id,
        server_container=getattr(lst, "container", None) if lst is not None else None,
        server_netns=(lst.netns or None) if lst is not None else None)


def ranked(rows) -> list[EdgeRow]:
    """Busiest first: connects per second, then failures and drops, then
    connections held (where connections pile up comes first)."""
    return sorted(rows, key=lambda r: (-r.rate, -(r.failures + (r.listener_drops or 0)),
                                       -(r.established or 0), r.label))
