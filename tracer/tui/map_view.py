"""The Map view: the connection map as a ranked edge list (client ->
destination -> serving process), and the panel that follows the selected
edge up and down its chain (who connects to its client, whom its server
connects to), so a -> b -> db shows where connections pile up. Pure
functions of a Snapshot, like tracer/tui/table_views.py."""
from __future__ import annotations

from rich.text import Text

from tracer.aggregate.edges import EdgeRow
from tracer.safe_text import printable
from tracer.tui.table_views import Col, Sort, TableSpec, _count, _latency, num
from tracer.tui.units import fmt_count, fmt_rate

CHAIN_HOPS = 4      # edges shown before and after the selected one


def _established(e: EdgeRow) -> Text:
    return num("-" if e.established is None else fmt_count(e.established),
               "dim" if not e.established else "")


def _drops(e: EdgeRow) -> Text:
    if e.listener_drops is None:
        return num("-", "dim")
    return _count(e.listener_drops)


def _cells(e: EdgeRow) -> tuple:
    return (e.label, num(fmt_rate(e.rate)), _established(e), _latency(e.p50_us),
            _latency(e.p99_us), _count(e.refused), _count(e.timeout + e.abandoned),
            _count(e.unreachable + e.error), _drops(e))


MAP = TableSpec(
    name="map",
    columns=(Col("EDGE  client → destination → server", 0, False), Col("CONN/s", 6),
             Col("ESTAB", 6), Col("p50", 6), Col("p99", 6), Col("REFUSED", 7),
             Col("TIMEOUT", 7), Col("ERR", 3), Col("DROPS", 6)),
    sorts=(
        Sort("busiest", lambda e: (-e.rate, -(e.failures + (e.listener_drops or 0)),
                                   -(e.established or 0), e.label)),
        Sort("failures+drops", lambda e: (-(e.failures + (e.listener_drops or 0)), -e.rate,
                                          e.label)),
        Sort("established", lambda e: (-(e.established or 0), -e.rate, e.label)),
        Sort("p99", lambda e: (-(e.p99_us or -1.0), e.label)),
        Sort("name", lambda e: e.label),
    ),
    items=lambda s: s.edges,
    row_key=lambda e: ("edge", e.pid, e.family, e.daddr, e.dport),
    cells=_cells,
    search_text=lambda e: f"{e.label} {e.listener or ''}",
)


def _hop(t: Text, e: EdgeRow) -> None:
    t.append(f" ─{fmt_rate(e.rate)}/s", style="bold red" if e.failures or e.listener_drops
             else "cyan")
    if e.failures:
        t.append(f" {e.failures:,} failed", style="bold red")
    if e.listener_drops:
        t.append(f" {e.listener_drops:,} dropped", style="bold red")
    t.append("→ ")


def chain(e: EdgeRow, edges) -> Text:
    """The selected edge with the edges into its client and out of its
    server (the busiest of each, up to CHAIN_HOPS hops)."""
    by_client: dict[int, list[EdgeRow]] = {}
    by_server: dict[int, list[EdgeRow]] = {}
    for x in edges:
        if x.family:
            by_client.setdefault(x.pid, []).append(x)
            if x.server_pid:
                by_server.setdefault(x.server_pid, []).append(x)
    before, seen = [], {e.pid}
    at = e
    for _ in range(CHAIN_HOPS):
        into = [x for x in by_server.get(at.pid, ()) if x.pid not in seen]
        if not into:
            break
        at = max(into, key=lambda x: x.rate)
        seen.add(at.pid)
        before.insert(0, at)
    after, at = [], e
    for _ in range(CHAIN_HOPS):
        if not at.server_pid or at.server_pid in seen:
            break
        seen.add(at.server_pid)
        out = by_client.get(at.server_pid, ())
        if not out:
            break
        at = max(out, key=lambda x: x.rate)
        after.append(at)
    t = Text()
    for x in (*before, e, *after):
        if not t:
            t.append(printable(x.client), style="bold" if x is e else "")
        _hop(t, x)
        end = x.server or x.destination
        t.append(printable(end), style="bold" if x is e else "")
    return t


def edge_summary(e: EdgeRow, edges=()) -> Text:
    t = Text()
    t.append(printable(e.label), style="bold cyan")
    t.append("\n")
    t.append(f"{fmt_rate(e.rate)} connects/s ({e.attempts:,} this interval, "
             f"{e.connected:,} established); held now: "
             f"{'-' if e.established is None else f'{e.established:,}'}\n")
    if e.failures:
        t.append(f"failed: {e.refused:,} refused, {e.timeout + e.abandoned:,} timed out, "
                 f"{e.unreachable + e.error:,} errors\n", style="bold red")
    if e.listener is not None:
        t.append(f"listener {printable(e.listener)}: {e.listener_drops or 0:,} dropped this "
                 f"interval (for every client of it)\n",
                 style="bold red" if e.listener_drops else "dim")
        if e.server_netns and e.netns and e.server_netns != e.netns:
            t.append(f"in another network namespace ({e.server_netns}) than the client's "
                     f"({e.netns}): the one that owns {printable(e.daddr)}\n", style="dim")
    else:
        t.append("not a listener of this host (or its owner is not known)\n", style="dim")
    t.append("chain: ", style="dim")
    t.append_text(chain(e, edges))
    return t
