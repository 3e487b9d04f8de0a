"""The report's connection map: the edges table summed per edge, as text,
as an HTML table and as an inline SVG graph, with hostile names escaped."""

import re

import pyarrow as pa

from tracer.report.html import render_html
from tracer.report.summary import summarize_tables
from tracer.report.text import render_text
from tracer.sinks.table_writer import rows_to_batch

T0 = 1_709_262_000_000_000
S = 1_000_000
EVIL = '<script>x</script>\x1b'


def _tbl(name, rows):
    return pa.Table.from_batches([rows_to_batch(name, rows, host="h1", run_id="r1")])


def _edge(i, pid, comm, dport, connects, server=None, drops=None, refused=0, held=0):
    return dict(ts=T0 + i * S, pid=pid, comm=comm, family=4, daddr="127.0.0.1", dport=dport,
                netns=1, connects=connects, connects_per_s=float(connects), interval_s=1.0,
                connected=connects - refused, refused=refused, timeout=0, abandoned=0,
                unreachable=0, error=0, connect_p50_us=None, connect_p99_us=None,
                established=held, server_pid=server[0] if server else None,
                server_comm=server[1] if server else None,
                listener="0.0.0.0:%d" % dport if server else None, listener_drops=drops)


def _summary():
    edges = [_edge(i, 10, "ab", 8080, 20, (20, "api"), drops=0) for i in range(1, 4)]
    edges += [_edge(i, 20, "api", 5432, 5, (30, EVIL), drops=2, refused=1, held=3)
              for i in range(1, 4)]
    edges += [_edge(2, 20, "api", 443, 1)]
    connects = _tbl("connects", [
        dict(ts=T0 + S, pid=20, tid=20, comm="api", family=4, saddr="127.0.0.1", sport=5,
             daddr="127.0.0.1", dport=5432, latency_us=float(100 + k), outcome="established",
             syn_retransmits=0) for k in range(100)])
    return summarize_tables({"edges": _tbl("edges", edges), "connects": connects})


def test_edges_are_summed_and_ranked():
    s = _summary()
    assert s.edges_seen == 3
    front, db, remote = s.edges
    assert (front.client, front.server, front.connects, front.per_s) == \
        ("ab (10)", "api (20)", 60, 20.0)
    assert (db.client, db.server, db.connects, db.refused, db.listener_drops,
            db.established_peak) == ("api (20)", f"{EVIL} (30)", 15, 3, 6, 3)
    assert db.p50_us == 149.0 and db.p99_us == 198.0          # nearest rank over 100..199
    assert remote.server is None and remote.listener_drops is None


def test_text_and_html_show_the_map_escaped():
    s = _summary()
    text = render_text(s, "rec")
    assert "CONNECTION MAP" in text and "ab (10)" in text and "127.0.0.1:5432" in text
    html = render_html(s, "rec")
    section = html[html.index('<section id="edges">'):]
    section = section[:section.index("</section>")]
    assert EVIL not in html and "&lt;script&gt;x&lt;/script&gt;\\e (30)" in section
    svg = section[section.index("<svg"):section.index("</svg>")]
    # nodes: ab, api, the db's server, the remote 443; three links, the db's red
    assert len(re.findall(r"<rect ", svg)) == 4
    assert len(re.findall(r"<path ", svg)) == 3
    assert len(re.findall(r'class="edge-red"', svg)) == 1
    # ab -> api -> db reads left to right: api's node is right of ab's, db's right of api's
    xs = {m.group(2): float(m.group(1)) for m in re.finditer(
        r'<rect x="([\d.]+)"[^>]*/><text[^>]*><title>([^<]*)</title>', svg)}
    assert xs["ab (10)"] < xs["api (20)"] < xs["&lt;script&gt;x&lt;/script&gt;\\e (30)"]


def test_no_edges_table_says_so():
    s = summarize_tables({})
    assert s.edges == () and "no edges recorded" in render_text(s, "rec")
    assert "No edges recorded" in render_html(s, "rec")
