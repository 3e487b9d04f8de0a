"""One poll's events fed to the live tables: an event at a time, or a key at
a time from sums made in C.

feed_each() is the definition (Collector._drain's loop): each Connect to the
connect views (when kept), the edge table, the notable log when
NotableLog.wants_connect says so, and, when established, to the process
table; each Accept to the listener table, the address owners and the
process table.

feed_summed() does the same but for the connect views (fed after it by
feed_connect_views()) from tally() (tracer/_fastpath.c), which sums a
poll's events per key of each table in one pass in C: under load a poll holds
hundreds of connections to a handful of keys, and each Python call a
connection costs the tracer CPU (BENCHMARKS.md section 25). Each table takes
its sums only where the result is the one feed_each() leaves, value for value
and in the same order (a histogram's total is a float sum), and otherwise
says no, and that table alone is fed the poll's events one at a time: a key
that could be evicted, a listener not resolved yet, two keys of one listener.
tests/unit/test_tally.py holds the two paths to the same tables, field by
field, on streams shaped like another user's traffic and with the bounds
lowered so that every refusal is taken.
"""
from __future__ import annotations

from tracer.aggregate.notable import SLOW_CONNECT_US
from tracer.domain.outcomes import ESTABLISHED
from tracer.events import Accept, Connect

SLOW_NS = SLOW_CONNECT_US * 1000     # NotableLog.wants_connect's bound, as tally() takes it


def feed_each(c, events: list, connects_add=None, group=None) -> None:
    """The events into c's tables one at a time (c: a Collector)."""
    edges_add = c.edges.add
    opened_by = c.processes.opened_by
    accept_add, edges_accept = c.listeners.add_accept, c.edges.add_accept
    log = c.log
    wants_connect = log.wants_connect
    for ev in events:
        if isinstance(ev, Connect):
            if connects_add is not None:
                connects_add(ev, None if group is None else group(ev.pid, ev.cgroup_id))
            edges_add(ev)
            if wants_connect(ev):
                log.connect(ev, c.clock.wall_us(ev.ts_end_ns))
        elif isinstance(ev, Accept):
            accept_add(ev)
            edges_accept(ev)
        opened_by(ev)


def sums_of(tally, events: list):
    """tally(events, ...) (tracer._fastpath.tally): (edges, listeners, notes,
    opened, flows, notable, pids, cgroup_ids), the last two as the collector
    hands them to the container cache (every event's pid, every connect's
    cgroup id); None when it cannot sum them (an event of a subclass of
    Connect or Accept: feed_each() then)."""
    return tally(events, ESTABLISHED, SLOW_NS)


def feed_summed(c, events: list, sums) -> None:
    """The events into c's tables a key at a time, from sums_of(events)."""
    edges, listeners, notes, opened, flows, notable = sums[:6]
    if not c.edges.add_sums(edges):
        add = c.edges.add
        for ev in _of(events, Connect):
            add(ev)
    if not c.edges.owners.note_all(notes):
        note = c.edges.add_accept
        for ev in _of(events, Accept):
            note(ev)
    if not c.listeners.add_accept_sums(listeners):
        add = c.listeners.add_accept
        for ev in _of(events, Accept):
            add(ev)
    if not c.processes.opened_sums(opened, flows):
        opened_by = c.processes.opened_by
        for ev in events:
            opened_by(ev)
    log = c.log
    for ev in notable:
        log.connect(ev, c.clock.wall_us(ev.ts_end_ns))


def feed_connect_views(connects_add, events: list, group=None) -> None:
    """feed_each()'s part for the connect views (ConnectTable.add, which
    batches a poll's connects per key itself), after feed_summed()."""
    for ev in events:
        if isinstance(ev, Connect):
            connects_add(ev, None if group is None else group(ev.pid, ev.cgroup_id))


def _of(events: list, kind: type) -> list:
    return [ev for ev in events if isinstance(ev, kind)]
