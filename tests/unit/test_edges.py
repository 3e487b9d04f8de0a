"""EdgeTable: the connection map per interval (client -> destination -> server)."""

from tracer.aggregate.edges import EdgeTable, ranked
from tracer.aggregate.snapshot import ListenerRow
from tracer.aggregate.sockets import Holding
from tracer.domain.listeners import is_loopback, listener_key, listener_of_connect
from tracer.events import Connect

T0 = 5_000_000_000
NS = 4026531840


def connect(pid=100, comm="client", daddr="127.0.0.1", dport=8080, outcome="established",
            latency_us=1000.0, saddr="127.0.0.1", family=4, netns=NS):
    return Connect(ts_start_ns=T0, ts_end_ns=T0 + int(latency_us * 1000), pid=pid, tid=pid,
                   comm=comm, family=family, saddr=saddr, sport=40000, daddr=daddr, dport=dport,
                   outcome=outcome, err=0, syn_retransmits=0, netns=netns)


def listener(port, pid, comm, laddr="0.0.0.0", drops=0, syn_drops=0, netns=NS, family=4):
    return ListenerRow(family=family, laddr=laddr, lport=port, pid=pid, comm=comm,
                       backlog_max=128, queue_len=0, queue_peak=0, syn_queue_len=0, drops=drops,
                       syn_drops=syn_drops, drops_total=drops + syn_drops,
                       drops_per_s=float(drops + syn_drops), accepts=0,
                       accept_wait_p50_us=None, accept_wait_p99_us=None, synack_retransmits=0,
                       netns=netns)


def by_label(rows):
    return {r.label: r for r in rows}


def test_chain_joins_local_destinations_to_their_servers():
    t = EdgeTable()
    for _ in range(10):
        t.add(connect(pid=100, comm="ab", dport=8080, latency_us=100))
    for i in range(10):
        t.add(connect(pid=200, comm="api", dport=5432, latency_us=200 + i))
    t.add(connect(pid=200, comm="api", dport=5432, outcome="refused"))
    t.add(connect(pid=200, comm="api", daddr="10.9.9.9", dport=443, saddr="10.0.0.2"))
    listeners = [listener(8080, 200, "api", drops=3, syn_drops=1),
                 listener(5432, 300, "postgres", laddr="127.0.0.1"),
                 listener(443, 999, "local-https")]
    holdings = {200: Holding("api", by_remote={(4, "127.0.0.1", 5432): 4})}
    rows = by_label(t.roll(2.0, listeners, holdings))
    assert set(rows) == {"ab (100) → 127.0.0.1:8080 → api (200)",
                         "api (200) → 127.0.0.1:5432 → postgres (300)",
                         "api (200) → 10.9.9.9:443"}
    front = rows["ab (100) → 127.0.0.1:8080 → api (200)"]
    assert (front.attempts, front.rate, front.connected, front.failures) == (10, 5.0, 10, 0)
    assert front.listener == "0.0.0.0:8080" and front.listener_drops == 4
    assert front.established == 0           # the socket table has none of ab's left
    db = rows["api (200) → 127.0.0.1:5432 → postgres (300)"]
    assert (db.attempts, db.connected, db.refused, db.established) == (11, 10, 1, 4)
    assert 200 <= db.p50_us <= db.p99_us <= 210 and db.listener_drops == 0
    remote = rows["api (200) → 10.9.9.9:443"]
    # a wildcard listener on 443 here is not what a remote 443 reaches
    assert remote.server_pid is None and remote.listener_drops is None and not remote.local


def test_interval_resets_and_held_only_edges_appear():
    t = EdgeTable()
    t.add(connect())
    assert len(t.roll(1.0, [listener(8080, 7, "srv")], None)) == 1
    # nothing connected, but the client still holds two connections
    rows = t.roll(1.0, [listener(8080, 7, "srv")],
                  {100: Holding("client", by_remote={(4, "127.0.0.1", 8080): 2})})
    assert [(r.label, r.attempts, r.established) for r in rows] == [
        ("client (100) → 127.0.0.1:8080 → srv (7)", 0, 2)]
    assert t.roll(1.0, [], {}) == []


def test_socket_table_not_read_leaves_established_unknown():
    t = EdgeTable()
    t.add(connect())
    (row,) = t.roll(1.0, [], None)
    assert row.established is None and row.server is None


def test_namespaces_keep_same_address_listeners_apart():
    t = EdgeTable()
    t.add(connect(pid=1, comm="a", netns=111))
    t.add(connect(pid=2, comm="b", netns=222))
    rows = by_label(t.roll(1.0, [listener(8080, 10, "srv-a", netns=111),
                                 listener(8080, 20, "srv-b", netns=222)], None))
    assert set(rows) == {"a (1) → 127.0.0.1:8080 → srv-a (10)",
                         "b (2) → 127.0.0.1:8080 → srv-b (20)"}


def test_bounded_with_other_edge_and_eviction_count():
    t = EdgeTable(max_edges=3)
    for port in range(10):
        t.add(connect(dport=1000 + port))
    rows = t.roll(1.0, [], {100: Holding("client", by_remote={(4, "10.1.1.1", 1): 5})})
    assert len(rows) == 4 and rows[-1].label == "other"
    assert rows[-1].attempts == 7 and rows[-1].established == 5
    assert sum(r.attempts for r in rows) == 10
    assert t.evicted == {"edges": 8, "edge_addresses": 0}    # 7 connects that found no room, 1 held-only edge


def test_hostile_comm_stays_text_and_ranking_puts_busy_first():
    t = EdgeTable()
    t.add(connect(pid=5, comm="<b>x</b>"))
    for _ in range(3):
        t.add(connect(pid=6, comm="busy", dport=9))
    rows = ranked(t.roll(1.0, [], None))
    assert [r.comm for r in rows] == ["busy", "<b>x</b>"]


def test_listener_of_connect():
    known = {listener_key(NS, 4, "0.0.0.0", 80), listener_key(NS, 6, "::", 443),
             listener_key(NS, 4, "10.0.0.5", 22)}
    assert listener_of_connect(known, NS, 4, "127.0.0.1", 80) == listener_key(NS, 4, "0.0.0.0", 80)
    assert listener_of_connect(known, NS, 4, "10.0.0.5", 80) is None        # maybe remote
    assert listener_of_connect(known, NS, 4, "10.0.0.5", 80, "10.0.0.5") is not None
    assert listener_of_connect(known, NS, 4, "10.0.0.5", 22) == listener_key(NS, 4, "10.0.0.5", 22)
    assert listener_of_connect(known, NS, 4, "127.0.0.1", 443) == listener_key(NS, 6, "::", 443)
    assert listener_of_connect(known, NS + 1, 4, "127.0.0.1", 80) is None   # other namespace
    assert is_loopback("::1") and is_loopback("::ffff:127.0.0.1") and not is_loopback("x")


def test_recorded_edges_replay_as_the_live_rows(tmp_path):
    """The live rows -> `edges` table -> replay gives the same rows back;
    a recording made before the table (no edges rows) replays with none."""
    from dataclasses import replace

    from tests.tui.synthetic import last
    from tracer.clock import Clock
    from tracer.replay.timeline import RecordingTimeline
    from tracer.report.reader import read_recording
    from tracer.sinks.parquet_writer import Recording
    from tracer.sinks.recorder import RecordSink

    t = EdgeTable()
    for _ in range(4):
        t.add(connect(pid=100, comm="ab", latency_us=150))
    t.add(connect(pid=100, comm="ab", outcome="refused", dport=9))
    edges = tuple(t.roll(1.0, [listener(8080, 200, "api", drops=2)],
                         {100: Holding("ab", by_remote={(4, "127.0.0.1", 8080): 3})}))
    assert len(edges) == 2
    for directory, recorded in ((tmp_path / "new", edges), (tmp_path / "old", ())):
        snap = replace(last(), edges=recorded)
        with Recording(directory, host="h1", run_id="r1") as rec:
            RecordSink(rec, Clock())._interval(
                type("S", (), {"lost_total": 0, "evicted_by": {}})(), snap)
        timeline = RecordingTimeline(read_recording(directory), directory)
        replayed = timeline.snapshot(len(timeline) - 1)
        assert sorted(replayed.edges, key=lambda e: e.label) == \
            sorted(recorded, key=lambda e: e.label)


def test_filters_keep_edges_with_connects_and_matching_held_ones():
    from tracer.filters import Filters

    t = EdgeTable()
    t.add(connect(pid=100, comm="client", dport=8080))     # passed the kernel's filter
    rows = t.roll(1.0, [], {100: Holding("client", by_remote={(4, "127.0.0.1", 8080): 1}),
                            200: Holding("other", by_remote={(4, "127.0.0.1", 5432): 1,
                                                             (6, "::1", 8080): 1})})
    kept = lambda f: sorted((r.pid, r.dport, r.family) for r in rows if f.keeps_edge(r))
    assert kept(Filters()) == [(100, 8080, 4), (200, 5432, 4), (200, 8080, 6)]
    assert kept(Filters.build(ports=[8080])) == [(100, 8080, 4), (200, 8080, 6)]
    assert kept(Filters.build(ipv4=True)) == [(100, 8080, 4), (200, 5432, 4)]
    assert kept(Filters.build(comm="client")) == [(100, 8080, 4)]


def test_edges_name_the_containers_of_both_ends_and_keep_them_through_a_recording(tmp_path):
    """The serving process's container is its listener row's; the client's
    (set by the collector) and the kernel's cgroup id of its connects are
    kept; both reach the table, replay, the report's labels and graph."""
    from dataclasses import replace

    from tests.tui.synthetic import last
    from tracer.clock import Clock
    from tracer.domain.containers import Attribution
    from tracer.replay.timeline import RecordingTimeline
    from tracer.report.html import render_html
    from tracer.report.reader import read_recording
    from tracer.report.summary import summarize
    from tracer.report.text import render_text
    from tracer.sinks.parquet_writer import Recording
    from tracer.sinks.recorder import RecordSink

    client_ct = Attribution(1111, "/docker/" + "a" * 64, "docker", "a" * 64)
    server_ct = Attribution(2222, "/kubepods/pod" + "1" * 8, "cri", "b" * 64,
                            pod_namespace="shop", pod_name="api-0", container_name="api")
    t = EdgeTable()
    for _ in range(3):
        t.add(replace(connect(pid=100, comm="client"), cgroup_id=1111))
    t.add(connect(pid=101, comm="plain", dport=9))
    lst = replace(listener(8080, 200, "api"), container=server_ct)
    rows = {r.pid: r for r in t.roll(1.0, [lst], None)}
    assert rows[100].cgroup_id == 1111 and rows[101].cgroup_id is None
    assert rows[100].server_container == server_ct and rows[101].server_container is None
    # (the collector's attribution of the client)
    edges = (replace(rows[100], container=client_ct), rows[101])
    e = edges[0]
    assert e.label == (f"client (100) in docker:{'a' * 12} → 127.0.0.1:8080 → "
                       "api (200) in shop/api-0/api")
    assert edges[1].label == "plain (101) → 127.0.0.1:9"

    snap = replace(last(), edges=edges)
    with Recording(tmp_path, host="h1", run_id="r1") as rec:
        RecordSink(rec, Clock())._interval(
            type("S", (), {"lost_total": 0, "evicted_by": {}})(), snap)
    data = read_recording(tmp_path)
    (row,) = [r for r in data.tables["edges"].to_pylist() if r["pid"] == 100]
    assert (row["cgroup_id"], row["container_id"], row["server_cgroup_id"],
            row["server_pod_name"], row["server_container_name"]) == \
        (1111, "a" * 64, 2222, "api-0", "api")
    timeline = RecordingTimeline(data, tmp_path)
    replayed = timeline.snapshot(len(timeline) - 1).edges
    assert sorted(replayed, key=lambda e: e.label) == sorted(edges, key=lambda e: e.label)
    s = summarize(data)
    (stats,) = [x for x in s.edges if x.pid == 100]
    assert (stats.client, stats.server) == (f"client (100) in docker:{'a' * 12}",
                                             "api (200) in shop/api-0/api")
    assert f"client (100) in docker:{'a' * 12}" in render_text(s)
    assert "api (200) in shop/api-0/api" in render_html(s)


def _accept(netns, laddr, lport=8080, family=4):
    from tracer.events import Accept

    return Accept(ts_ns=T0, ts_handshake_ns=T0, pid=300, tid=300, comm="srv", family=family,
                  laddr=laddr, lport=lport, raddr="10.0.0.1", rport=40000, backlog_len=0,
                  backlog_max=128, netns=netns)


def test_a_destination_in_another_namespace_joins_the_listener_of_the_namespace_owning_it():
    """The host connects to a container's address (a veth peer): the
    container's wildcard listener is found through the namespace its
    accepts show owns that address; two namespaces owning it and both
    listening: no join (a guess); loopback and wildcard are never learned."""
    ns2, ns3 = NS + 2, NS + 3
    t = EdgeTable()
    t.add(connect(pid=100, daddr="10.0.0.2", saddr="10.0.0.1"))
    t.add_accept(_accept(ns2, "10.0.0.2"))
    t.add_accept(_accept(ns2, "127.0.0.1"))
    t.add_accept(_accept(ns3, "0.0.0.0"))
    srv = listener(8080, 300, "srv", netns=ns2)
    host = listener(8080, 1, "host-srv", netns=NS)       # the host's own wildcard on 8080
    (row,) = t.roll(1.0, [srv, host])
    assert (row.server_pid, row.server_comm, row.server_netns) == (300, "srv", ns2)
    assert t.owners.of(4, "127.0.0.1") == () and t.owners.of(4, "0.0.0.0") == ()
    # learned once, kept: the next interval's connects join without new accepts
    t.add(connect(pid=100, daddr="10.0.0.2", saddr="10.0.0.1"))
    (row,) = t.roll(1.0, [srv, host])
    assert row.server_pid == 300
    # a second namespace owns the same address (another bridge) and listens: ambiguous
    t.add_accept(_accept(ns3, "10.0.0.2"))
    t.add(connect(pid=100, daddr="10.0.0.2", saddr="10.0.0.1"))
    (row,) = t.roll(1.0, [srv, host, listener(8080, 301, "other", netns=ns3)])
    assert row.server_pid is None and row.server_netns is None
    # a listener bound to the address is its namespace's too; v4 on a dual-stack socket
    t2 = EdgeTable()
    t2.add(connect(pid=100, daddr="10.0.0.7", dport=9000, saddr="10.0.0.1"))
    t2.add(connect(pid=100, daddr="10.0.0.9", dport=9000, saddr="10.0.0.1"))
    t2.add_accept(_accept(ns3, "::ffff:10.0.0.9", 9000, family=6))
    rows = {r.daddr: r for r in t2.roll(1.0, [
        listener(9000, 400, "bound", laddr="10.0.0.7", netns=ns2),
        listener(9000, 401, "dual", laddr="::", netns=ns3, family=6)])}
    assert (rows["10.0.0.7"].server_pid, rows["10.0.0.7"].server_netns) == (400, ns2)
    assert (rows["10.0.0.9"].server_pid, rows["10.0.0.9"].server_netns) == (401, ns3)


def test_address_owners_are_bounded_and_count_what_they_let_go():
    from tracer.aggregate.edges import MAX_OWNERS, _AddressOwners

    o = _AddressOwners(max_addresses=3)
    for i in range(5):
        o.note(NS, 4, f"10.1.0.{i}")
    assert o.evicted == 2 and o.of(4, "10.1.0.0") == () and o.of(4, "10.1.0.4") == (NS,)
    for n in range(MAX_OWNERS + 3):
        o.note(NS + n, 4, "10.1.0.4")
    assert len(o.of(4, "10.1.0.4")) == MAX_OWNERS
    assert o.of(4, "10.1.0.4")[0] == NS + MAX_OWNERS + 2      # most recent first
