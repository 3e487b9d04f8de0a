"""Replay of real recording directories written by the Parquet sink.

Ground truth is the Connect events and per-interval rows the recording was
made from (tests/tui/recorded.py): replay must give back the tables a live
ConnectTable fed those events, rolled once per interval, would have shown.
(Live, an event lands in the interval in which it resolves; a recording keeps
when connect() was called, so replay groups by that. The events here resolve
in the interval they start in, as nearly all connects do.)
"""
import json
from dataclasses import replace
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tui import recorded
from tracer.aggregate.connects import ConnectTable
from tracer.replay import ReplayController, ReplayError, connect_from_row, load
from tracer.report.reader import EmptyRecording, RecordingNotFound

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def rec(tmp_path_factory):
    return recorded.write_recording(tmp_path_factory.mktemp("rec") / "rec")


@pytest.fixture(scope="module")
def timeline(rec):
    return load(rec)


def test_connects_rows_come_back_as_the_events_that_were_recorded():
    events = [ev for evs in recorded.connect_events() for ev in evs]
    rows = recorded.connect_rows()
    assert len(events) == len(rows)
    for ev, row in zip(events, rows):
        back = connect_from_row(row)
        assert (back.pid, back.comm, back.daddr, back.dport, back.outcome, back.err,
                back.syn_retransmits, back.latency_us) == \
               (ev.pid, ev.comm, ev.daddr, ev.dport, ev.outcome, ev.err, ev.syn_retransmits,
                ev.latency_us)


def test_intervals_are_the_live_run_ticks(timeline):
    assert len(timeline) == recorded.INTERVALS
    ends = [timeline.snapshot(i).ts_us for i in range(len(timeline))]
    assert ends == [recorded.T0_US + (i + 1) * recorded.INTERVAL_US
                    for i in range(recorded.INTERVALS)]
    assert all(timeline.snapshot(i).interval_s == 1.0 for i in (0, 5, 19))


def test_replay_gives_the_tables_of_the_live_run(timeline):
    live = ConnectTable()
    for i, evs in enumerate(recorded.connect_events()):
        for ev in evs:
            live.add(ev)
        live.roll(1.0)
        snap = timeline.snapshot(i)
        assert snap.destinations == tuple(live.by_destination()), i
        assert snap.processes_connects == tuple(live.by_process()), i


def test_listeners_and_processes_come_back_per_interval(timeline):
    s = timeline.snapshot(recorded.DROP_PEAK)
    (web,) = s.listeners
    assert (web.label, web.pid, web.comm) == ("0.0.0.0:8080", 812, "nginx")
    assert (web.drops, web.syn_drops, web.drops_per_s) == (40, 2, 42.0)
    assert (web.queue_len, web.queue_peak, web.backlog_max) == (128, 128, 128)
    assert web.drops_total == 10 + 40            # overflows_total as recorded
    assert web.accepts == 50 and web.accept_wait_p99_us == 900.0
    assert web.accept_wait_p50_us == pytest.approx(200.0, rel=1 / 32)   # from accepts rows
    assert web.synack_retransmits == 1
    quiet = timeline.snapshot(0).listeners[0]
    assert (quiet.drops, quiet.syn_drops, quiet.queue_len) == (0, 0, 3)
    (orders,) = s.processes
    assert (orders.pid, orders.fds, orders.fd_limit) == (200, 40 + recorded.DROP_PEAK, 1024)
    assert (orders.opened, orders.closed, orders.opened_per_s) == (12, 12, 12.0)


def test_the_log_holds_what_the_live_log_would(timeline):
    kinds = [(n.kind, n.ts_us) for n in timeline.snapshot(19).notable]
    assert kinds[0][0] == "run"
    assert ("drop burst", recorded.T0_US + (recorded.DROP_PEAK + 1) * 1_000_000) in kinds
    assert sum(k == "refused" for k, _ in kinds) == 5        # intervals 0, 4, 8, 12, 16
    assert sum(k == "timeout" for k, _ in kinds) == 1
    assert sum(k == "slow connect" for k, _ in kinds) == 1   # the 1.2 s one


def test_worst_moment_is_the_largest_drop_burst(timeline):
    assert timeline.worst_index == recorded.DROP_PEAK
    assert "42 dropped" in timeline.worst_reason


def test_worst_moment_without_drops_is_the_largest_p99(tmp_path):
    t = load(recorded.write_recording(tmp_path / "rec", with_interval_tables=False))
    assert len(t) == recorded.INTERVALS     # the nominal 1 s grid from the run start
    assert t.worst_index == recorded.SPIKE
    assert "10.0.0.10:5432" in t.worst_reason and "1.20s" in t.worst_reason
    c = ReplayController(t)
    assert c.jump_to_worst() and c.snapshot().ts_us == recorded.T0_US + 13 * 1_000_000


def same(x, y) -> bool:
    """Equal Snapshots; the latency lookups are compared by their answers."""
    keys = [("dest", r.key) for r in x.destinations] + [("proc", r.key)
                                                          for r in x.processes_connects]
    bx, by = x.extra["latency_buckets"], y.extra["latency_buckets"]
    return (replace(x, extra={}) == replace(y, extra={})
            and [bx.get(k) for k in keys] == [by.get(k) for k in keys])


def test_going_back_rebuilds_the_same_snapshot(rec, monkeypatch):
    from tracer.replay import timeline as tl

    monkeypatch.setattr(tl, "CACHE_ROWS", 0)      # keep only the few built last
    a, b = load(rec), load(rec)
    late = a.snapshot(19)
    early = a.snapshot(1)          # not cached: the run is rebuilt from its start
    assert same(early, b.snapshot(1))
    assert same(a.snapshot(19), late)
    assert same(a.snapshot(18), b.snapshot(18))


def test_two_runs_replay_one_after_the_other(tmp_path):
    d = tmp_path / "rec"
    recorded.write_recording(d, intervals=5, run_id="run-1")
    recorded.write_recording(d, intervals=4, run_id="run-2",
                             start_us=recorded.T0_US + 3_600_000_000)
    t = load(d)
    assert len(t) == 9
    first, second = t.snapshot(4), t.snapshot(5)
    assert second.ts_us == recorded.T0_US + 3_601_000_000
    # the second run starts from nothing, as its live view did
    api = next(r for r in second.destinations if r.label == "10.0.0.30:443")
    assert api.attempts == 10
    assert next(r for r in first.destinations if r.label == "10.0.0.30:443").attempts == 50
    assert [n.text for n in second.notable if n.kind == "run"][0].startswith("run run-2")


def test_unreadable_files_are_listed_in_the_log_and_the_rest_replays(tmp_path):
    d = recorded.write_recording(tmp_path / "rec")
    bad = d / "connects" / "date=2026-01-01" / "cut-short.parquet"
    bad.write_bytes(b"PAR1 this file lost its footer")
    t = load(d)
    assert len(t) == recorded.INTERVALS
    lines = [n.text for n in t.snapshot(0).notable if n.kind == "unreadable"]
    assert len(lines) == 1 and "cut-short.parquet" in lines[0]


def test_lost_events_of_the_run_are_shown(tmp_path):
    d = recorded.write_recording(tmp_path / "rec")
    manifest = d / "runs" / f"{recorded.RUN_ID}.json"
    m = json.loads(manifest.read_text())
    m["lost_events"] = {"connects": 7, "accepts": 3}
    manifest.write_text(json.dumps(m))
    s = load(d).snapshot(3)
    assert s.lost_events == 10
    assert any(n.kind == "lost events" and "10 kernel events" in n.text for n in s.notable)


def test_missing_and_empty_directories_raise_one_line_errors(tmp_path):
    with pytest.raises(RecordingNotFound):
        load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EmptyRecording):
        load(tmp_path / "empty")
    # a manifest but no rows: nothing to replay
    only = tmp_path / "only-manifest"
    (only / "runs").mkdir(parents=True)
    (only / "runs" / "r.json").write_text(json.dumps({"run_id": "r"}))
    with pytest.raises(ReplayError, match="no rows"):
        load(only)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "tracer", *args], capture_output=True,
                          text=True, timeout=60, cwd=ROOT, stdin=subprocess.DEVNULL,
                          env={**os.environ, "TERM": "xterm"})


@pytest.mark.parametrize("case", ["missing", "empty", "no-terminal"])
def test_cli_errors_are_one_error_line(tmp_path, rec, case):
    target = {"missing": tmp_path / "nope", "empty": tmp_path,
              "no-terminal": rec}[case]
    p = _cli("replay", str(target))
    assert p.returncode == 1 and "Traceback" not in p.stderr
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), p.stderr
    expect = {"missing": "does not exist", "empty": "no connscope recording",
              "no-terminal": "replay needs a terminal"}[case]
    assert expect in lines[0]


def test_a_cancelled_build_returns_nothing_and_the_next_one_works(rec):
    t = load(rec)
    assert t.snapshot(10, cancelled=lambda: True) is None
    assert t.cached(10) is None and t.cost(10) > 0
    assert t.snapshot(10).ts_us == recorded.T0_US + 11 * 1_000_000
    assert t.cost(10) == 0
