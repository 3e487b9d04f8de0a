"""The Map view (key 6): the connection map as a ranked edge list, the
selected edge's chain in the panel, the same in replay of a recording."""
from dataclasses import replace

from textual.widgets import DataTable, Static

from tests.tui import synthetic
from tests.tui.test_app_keys import live_app, rows, screen_text, text
from tracer.aggregate.edges import EdgeTable
from tracer.tui.screens import DetailScreen

SIZE = (120, 40)


async def test_map_ranks_edges_and_follows_the_chain():
    snap = synthetic.last()
    app = live_app(snap)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("6")
        await pilot.pause()
        assert app.active == "map"
        shown = rows(app, "map")
        # busiest first: api-gw's 40/s, then haproxy's 30/s into the overflowing nginx
        assert shown[0].startswith("api-gw (1001) → 10.0.0.30:443")
        front = next(r for r in shown if r.startswith("haproxy (600) → 127.0.0.1:8080 → nginx (812)"))
        back = next(r for r in shown if r.startswith("nginx (812) → 127.0.0.1:5432 → postgres (700)"))
        assert front.split()[-1] == "69"          # the listener's 57 + 12 drops
        assert back.split()[-1] == "0" and " 12 " in back   # 12 held to postgres
        assert len(shown) == len(snap.edges)
        # select the front edge: the panel follows it down the chain
        table = app.query_one("#map-table", DataTable)
        for _ in range(shown.index(front)):
            await pilot.press("j")
        await pilot.pause()
        panel = text(app, "#map-panel")
        assert "listener 0.0.0.0:8080: 69 dropped" in panel
        assert "chain: haproxy (600) ─30/s 2 failed 69 dropped→ nginx (812) ─15/s→ postgres (700)" \
            in panel, panel
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, DetailScreen)
        assert "chain: haproxy (600)" in screen_text(app.screen)
        assert table is app.query_one("#map-table", DataTable)


async def test_map_filter_and_hostile_names():
    t = EdgeTable()
    evil = "\x1b[31m[/x]<b>"
    snap = synthetic.last()
    from tracer.events import Connect
    t.add(Connect(ts_start_ns=0, ts_end_ns=1000, pid=66, tid=66, comm=evil, family=4,
                  saddr="127.0.0.1", sport=1, daddr="127.0.0.1", dport=8080,
                  outcome="established", err=0, syn_retransmits=0))
    edges = t.roll(1.0, snap.listeners, None)
    app = live_app(replace(snap, edges=snap.edges + tuple(edges)))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("6", "slash", *"66")
        await pilot.pause()
        (row,) = rows(app, "map")
        assert row.startswith("\\e[31m[/x]<b> (66) → 127.0.0.1:8080 → nginx (812)")
        assert "1 of" in text(app, "#map-caption")
