"""Container attribution from the aggregate rows to the recording and back
(replay), and in the views: grouping, details, older recordings."""
from dataclasses import replace

from tests.unit.test_connect_table import connect
from tracer.aggregate.connects import ConnectTable
from tracer.aggregate.snapshot import ListenerRow, ProcessRow
from tracer.clock import Clock
from tracer.domain import containers
from tracer.domain.containers import HOST, Attribution, from_row, group_label, group_of_row
from tracer.replay.rows import listener_rows, process_rows
from tracer.sinks import recorder
from tracer.tui import details

ID = "cd" * 32
UID = "6b4f1c2e-8a3d-4e5f-9a1b-2c3d4e5f6a7b"
POD = Attribution(4242, f"/kubepods/burstable/pod{UID}/{ID}", "cri", ID, UID, "shop", "web-1",
                  "nginx")
DOCKER = Attribution(77, f"/docker/{ID}", "docker", ID)


def _listener(**kw) -> ListenerRow:
    base = dict(family=4, laddr="127.0.0.1", lport=8080, pid=10, comm="nginx", backlog_max=128,
                queue_len=3, queue_peak=9, syn_queue_len=None, drops=2, syn_drops=1,
                drops_total=3, drops_per_s=3.0, accepts=5, accept_wait_p50_us=10.0,
                accept_wait_p99_us=20.0, synack_retransmits=0, netns=4026531840)
    return ListenerRow(**{**base, **kw})


def _process(**kw) -> ProcessRow:
    base = dict(pid=10, comm="nginx", established=1, syn_sent=0, listen=1, close_wait=0,
                other=0, opened_per_s=1.0, closed_per_s=1.0, fds=10, fd_limit=1024,
                tx_queue_bytes=0, rx_queue_bytes=0, churning=False)
    return ProcessRow(**{**base, **kw})


def test_connects_grouped_by_container():
    t = ConnectTable()
    t.add(connect(pid=1), group_label(POD))
    t.add(connect(pid=2), group_label(POD))
    t.add(connect(pid=3, outcome="refused"), group_label(DOCKER))
    t.add(connect(pid=4), group_label(None))
    t.roll(1.0)
    rows = {r.label: (r.attempts, r.refused) for r in t.by_container()}
    assert rows == {"shop/web-1/nginx": (2, 0), f"docker:{ID[:12]}": (1, 1), HOST: (1, 0)}


def test_no_container_groups_where_containers_are_not_resolved():
    t = ConnectTable()
    t.add(connect(pid=1))
    t.roll(1.0)
    assert t.by_container() == [] and "containers" not in t.evicted


def test_interval_rows_round_trip_through_the_recording_columns():
    rows = [{**recorder.listener_row(_listener(container=POD), 1_000_000), "host": "h",
             "run_id": "r"}]
    ovf = [recorder.overflow_row(_listener(container=POD), 1_000_000, 1.0)]
    (back,) = listener_rows(rows, ovf, [], 1.0, {})
    assert back.container == POD
    sockets = [recorder.socket_row(_process(container=DOCKER), 1_000_000)]
    (p,) = process_rows(sockets, [], 1.0)
    assert p.container == DOCKER


def test_connect_rows_carry_the_container_columns():
    row = recorder.connect_row(connect(pid=5), Clock(), containers.values(POD))
    assert {c: row[c] for c in containers.COLUMNS} == {
        "cgroup_id": 4242, "cgroup": POD.cgroup, "container_runtime": "cri",
        "container_id": ID, "pod_namespace": "shop", "pod_name": "web-1", "pod_uid": UID,
        "container_name": "nginx"}
    assert group_of_row(row) == "shop/web-1/nginx"


def test_older_recordings_without_the_columns():
    old = recorder.listener_row(_listener(), 1_000_000)
    for c in containers.COLUMNS:
        old.pop(c)
    (back,) = listener_rows([old], [], [], 1.0, {})
    assert back.container is None
    assert from_row({}) is None and group_of_row({"pid": 1}) is None
    assert group_of_row({"container_id": None}) == HOST


def test_details_show_the_pod_and_escape_what_others_named():
    t = details.listener_summary(_listener(container=POD))
    assert f"shop/web-1 uid {UID}" in t.plain and "nginx" in t.plain and "id 4242" in t.plain
    hostile = replace(DOCKER, cgroup="/evil\x1b[2J/x")
    t = details.process_summary(_process(container=hostile))
    assert "\x1b" not in t.plain and "\\e[2J" in t.plain
    assert details.process_summary(_process()).plain.count("cgroup") == 0


def test_filter_finds_rows_by_pod():
    from tracer.tui import table_views

    rows = [_listener(container=POD), _listener(lport=9090)]
    shown, matched = table_views.visible(table_views.LISTENERS, rows, "web-1")
    assert matched == 1 and shown[0].lport == 8080
    t = ConnectTable()
    t.add(connect(pid=1), group_label(POD))
    t.roll(1.0)
    (row,) = table_views.CONNECTS_BY_CONTAINER.items(
        replace(_snapshot(), containers_connects=tuple(t.by_container())))
    assert table_views.CONNECTS_BY_CONTAINER.cells(row)[0] == "shop/web-1/nginx"


def _snapshot():
    from tracer.aggregate.snapshot import Header, Snapshot

    return Snapshot(ts_us=0, interval_s=1.0, header=Header("h", "k", "tracepoint"),
                    events_total=0, events_per_s=0.0, lost_events=0)


def _table(name, rows):
    from tracer.sinks.table_writer import rows_to_batch
    import pyarrow as pa

    return pa.Table.from_batches([rows_to_batch(name, rows, host="h1", run_id="r")])


def test_report_by_container():
    from tracer.report.summary import summarize_tables
    from tracer.report.text import render_text

    where = dict(zip(containers.COLUMNS, containers.values(POD)))
    docker = dict(zip(containers.COLUMNS, containers.values(DOCKER)))
    c = lambda pid, outcome, w: {**recorder.connect_row(connect(pid=pid, outcome=outcome),
                                                        Clock()), **w}
    connects = _table("connects", [c(1, "established", docker), c(1, "refused", docker),
                                   c(2, "established", docker), c(3, "established", {})])
    overflows = _table("overflows", [recorder.overflow_row(_listener(container=POD), 10**12,
                                                           1.0)] * 2)
    s = summarize_tables({"connects": connects, "overflows": overflows})
    got = {(x.label, x.connects, x.connect_failures, x.drops, x.processes) for x in s.containers}
    assert got == {(f"docker:{ID[:12]}", 3, 1, 0, 2), ("shop/web-1/nginx", 0, 0, 6, 0),
                   (HOST, 1, 0, 0, 1)}
    text = render_text(s)
    assert "BY CONTAINER OR POD" in text and "shop/web-1/nginx" in text
    from tracer.report.html import render_html

    html = render_html(s)
    assert 'id="containers"' in html and "shop/web-1/nginx" in html


def test_report_without_containers_says_so():
    from tracer.report.summary import summarize_tables
    from tracer.report.text import render_text

    s = summarize_tables({"connects": _table("connects", [recorder.connect_row(connect(),
                                                                               Clock())])})
    assert s.containers == ()
    assert "no row names a container or pod" in render_text(s)
