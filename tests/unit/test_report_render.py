"""Rendering: hostile process names and addresses are escaped, the HTML names no
URL and loads nothing, and sections say plainly when a table was not recorded."""

import re
from html.parser import HTMLParser

import pyarrow as pa

from tracer.report.html import render_html
from tracer.report.summary import summarize_tables
from tracer.report.text import render_text, table
from tracer.sinks.table_writer import rows_to_batch

T0 = 1_709_262_000_000_000
S = 1_000_000
EVIL_COMM = '<script>alert("x")</script>'
EVIL_ADDR = '10.0.0.9"><img src=x onerror=alert(1)>'


def _tbl(name, rows):
    return pa.Table.from_batches([rows_to_batch(name, rows, host="h<1>", run_id="r&1")])


def _evil_summary():
    connects = _tbl("connects", [
        dict(ts=T0 + i * S, pid=6, tid=6, comm=EVIL_COMM, family=4, saddr="10.0.0.1",
             sport=1, daddr=EVIL_ADDR, dport=80, latency_us=2e6, outcome=o, syn_retransmits=1)
        for i, o in enumerate(["established", "refused"] * 5)])
    overflows = _tbl("overflows", [dict(ts=T0 + S, family=4, laddr=EVIL_ADDR, lport=80, pid=6,
                                        comm=EVIL_COMM, drops=9, syn_drops=0, backlog_max=8,
                                        backlog_peak=8, interval_s=1.0, synack_retransmits=0)])
    sockets = _tbl("sockets", [dict(ts=T0 + i * S, pid=6, comm="bad\x1b[31mred", established=5,
                                    syn_sent=0, listen=0, close_wait=0, other=0, opened=10,
                                    closed=10, fds=10, fd_limit=100, tx_queue_bytes=0,
                                    rx_queue_bytes=0) for i in range(1, 4)])
    manifests = [{"run_id": "r&1", "host": "h<1>", "kernel": "6.18</td>", "status": "complete",
                  "lost_events": {"connects": 0}}]
    return summarize_tables({"connects": connects, "overflows": overflows, "sockets": sockets},
                            manifests)


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.attrs = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs += attrs


def test_html_escapes_everything_from_the_system():
    page = render_html(_evil_summary(), source="/tmp/<rec>")
    assert EVIL_COMM not in page and "<img" not in page and "<script" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert "/tmp/&lt;rec&gt;" in page and "6.18&lt;/td&gt;" in page
    p = _Tags()
    p.feed(page)
    assert "script" not in p.tags and "img" not in p.tags
    assert not [a for a in p.attrs if a[0].startswith("on")]      # no event handlers


def test_html_is_self_contained():
    page = render_html(_evil_summary())
    for needle in ("http://", "https://", "//fonts", "url(", "@import", "<link", "<script",
                   "src=", "<iframe", "<object"):
        assert needle not in page.lower().replace("src=x", ""), needle
    assert page.count("<svg") >= 3          # latency histogram, drops, queue, sockets


def test_text_escapes_control_characters():
    out = render_text(_evil_summary())
    assert "\x1b" not in out
    assert "bad\\e[31mred" in out       # as every other view shows it (tracer/safe_text.py)


def test_text_sections_say_what_is_missing():
    connects = _tbl("connects", [dict(ts=T0, pid=1, tid=1, comm="c", family=4,
                                      saddr="10.0.0.1", sport=1, daddr="10.0.0.2", dport=2,
                                      latency_us=100.0, outcome="established",
                                      syn_retransmits=0)])
    out = render_text(summarize_tables({"connects": connects}))
    assert "no listener data recorded" in out
    assert "no per-process socket data recorded" in out
    assert "no process connected anywhere while the recorder watched" in out
    assert "nothing stands out" in out


def test_table_alignment():
    lines = table(("name", "n"), [("a", 1), ("bbb", 100)])
    assert lines == ["  name    n", "  a       1", "  bbb   100"]


def test_html_headline_numbers_match_text():
    s = _evil_summary()
    text, page = render_text(s), render_html(s)
    # the same findings, in the same order, in both
    html_findings = re.findall(r'<li><span class="badge (\w+)">', page)
    assert html_findings == [f.severity for f in s.findings]
    assert "dropped 9 connections" in text and "dropped 9 connections" in page
