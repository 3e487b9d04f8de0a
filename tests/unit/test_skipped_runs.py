"""Runs of our BPF programs the kernel skipped (BPF recursion: another BPF
program was running on that CPU). Each may have been an event, so the count
is shown wherever losses are, by program: the status line, the TUI's health
line and problems, the run manifest, replay and the report, all through
tracer/domain/hooks.py."""
import json
from datetime import datetime, timezone

from tracer.domain.hooks import (NESTED_COPY, hook_label, missed_runs_from, skipped_runs_text,
                                  unhandled_misses)
from tracer.probes.loader import kernel_name

MISSED = {"tracepoint__sock__inet_sock_set_state": 1100, "tracepoint__tcp__tcp_destroy_sock": 60,
          "raw_tracepoint__kfree_skb": 5, "kfunc__vmlinux__tcp_v4_connect": 2}


def test_hook_labels_name_the_kind_and_target():
    assert hook_label("tracepoint__sock__inet_sock_set_state") == "tracepoint sock:inet_sock_set_state"
    assert hook_label("tracepoint__syscalls__sys_exit_accept4") == "tracepoint syscalls:sys_exit_accept4"
    assert hook_label("raw_tracepoint__inet_sock_set_state") == "raw tracepoint inet_sock_set_state"
    assert hook_label("kfunc__vmlinux__tcp_v4_connect") == "fentry tcp_v4_connect"
    assert hook_label("kfunc__inet_csk_accept") == "fentry inet_csk_accept"
    assert hook_label("kretfunc__inet_csk_accept") == "fexit inet_csk_accept"
    assert hook_label("kp_tcp_conn_request") == "kprobe tcp_conn_request"
    assert hook_label("kretp_inet_csk_accept") == "kretprobe inet_csk_accept"
    assert hook_label("something_else") == "something_else"
    assert hook_label("tracepoint__") == "tracepoint__"


def test_skipped_runs_name_the_worst_programs_first():
    text = skipped_runs_text(MISSED)
    assert text == ("1,167 probe runs skipped by the kernel (tracepoint sock:inet_sock_set_state "
                    "1,100, tracepoint tcp:tcp_destroy_sock 60, raw tracepoint kfree_skb 5, "
                    "1 more)")
    assert skipped_runs_text({"kp_x": 1}) == "1 probe run skipped by the kernel (kprobe x 1)"


def test_a_manifest_value_is_hostile_input():
    assert missed_runs_from(None) == {}
    assert missed_runs_from([1, 2]) == {}
    assert missed_runs_from({"a": 3, "b": -1, "c": "9", "d": True, "e": 0, 7: 4, "f": 2.5}) == {"a": 3}
    many = {f"p{i}": 1 for i in range(10_000)}
    assert len(missed_runs_from(many)) == 64
    assert missed_runs_from({"x" * 10_000: 1}) == {}
    # only C function names, as all our programs are: nothing a terminal acts on
    assert missed_runs_from({"kp_\x1b]0;pwned\x07": 5, "kp ok": 1, "kp_ok": 2}) == {"kp_ok": 2}


def test_the_manifest_keeps_them_by_program(tmp_path):
    from tracer.sinks.parquet_writer import Recording

    rec = Recording(tmp_path / "rec", host="h", run_id="r1", backend="tracepoint",
                    version="0", options={}, start=datetime.now(timezone.utc))
    rec.set_missed_runs({"kp_a": 3, "kp_b": 0})
    assert rec.status()["missed_runs"] == {"kp_a": 3}
    rec.close()
    m = json.loads((tmp_path / "rec" / "runs" / "r1.json").read_text())
    assert m["missed_runs"] == {"kp_a": 3}


def test_tui_health_line_and_problems_show_them():
    from dataclasses import replace

    from tracer.tui.problems import find_problems
    from tracer.tui.status import health_line
    from tests.tui.synthetic import HEADER, scenario

    snap = scenario(3)[-1]
    assert "skipped" not in health_line(HEADER, snap).plain
    assert not [p for p in find_problems(snap) if p.kind == "probe runs skipped"]
    hit = replace(snap, missed_by=tuple(sorted(MISSED.items())))
    assert "1,167 probe runs skipped" in health_line(HEADER, hit).plain
    (p,) = [p for p in find_problems(hit) if p.kind == "probe runs skipped"]
    assert "tracepoint sock:inet_sock_set_state 1,100" in p.detail


def test_report_and_replay_show_the_same_count(tmp_path):
    """One truth: the manifests' counts, summed over runs, in the text report,
    the HTML report and every replayed interval."""
    from tests.report.synthetic import write_incident
    from tracer.replay.timeline import RecordingTimeline
    from tracer.report.html import render_html
    from tracer.report.reader import read_recording
    from tracer.report.summary import summarize
    from tracer.report.text import render_text

    write_incident(tmp_path)
    for name, missed in (("run-web-1.json", {"kp_a": 1000}), ("run-web-2.json", {"kp_a": 100,
                                                                                  "kp_b": 67})):
        path = tmp_path / "runs" / name
        m = json.loads(path.read_text())
        m["missed_runs"] = missed
        path.write_text(json.dumps(m))
    data = read_recording(tmp_path)
    s = summarize(data)
    assert s.overview.missed_runs == 1167
    expected = "1,167 probe runs skipped by the kernel (kprobe a 1,100, kprobe b 67)"
    assert expected in render_text(s, str(tmp_path))
    assert expected in render_html(s, str(tmp_path))
    timeline = RecordingTimeline(data, tmp_path)
    shown = {timeline.snapshot(i).missed_runs for i in range(0, len(timeline), 50)}
    # each run's intervals carry that run's count (replay plays one run at a time)
    assert shown == {1000, 167}


def test_runs_the_nested_copy_handled_are_not_lost():
    first = "raw_tracepoint__inet_sock_set_state"
    copy = first + NESTED_COPY
    missed = {first: 44, copy: 3, "raw_tracepoint__tcp_destroy_sock": 2}
    # 40 of the first's 44 skipped runs were handled by its copy: 4 lost;
    # the copy's own 3 are runs the first made (or counted there)
    assert unhandled_misses(missed, {first: 40}) == {first: 4, "raw_tracepoint__tcp_destroy_sock": 2}
    assert unhandled_misses(missed, {first: 44}) == {"raw_tracepoint__tcp_destroy_sock": 2}
    # read in that order, handled never exceeds missed; if it did, nothing is negative
    assert unhandled_misses({first: 1}, {first: 5}) == {}
    assert unhandled_misses(missed, {}) == {first: 44, "raw_tracepoint__tcp_destroy_sock": 2}


def test_the_copy_has_its_own_kernel_name():
    first = "raw_tracepoint__inet_sock_set_state"
    assert kernel_name(first) == "sock_set_state"
    assert kernel_name(first + NESTED_COPY) == "sock_set_state2"
    assert len(kernel_name("raw_tracepoint__a_very_long_tracepoint_name" + NESTED_COPY)) == 15


def test_report_replay_and_live_view_name_the_same_tracepoint_hooks(tmp_path):
    """One truth on which tracepoint hooks a run used (what its skipped-run
    counts mean depends on them): the runs tables of both reports, the
    replay's header and its run line, and the live view's status line and
    help all show "tracepoint (BTF hooks)" through tracer/domain/hooks.py,
    from the manifest's sentence or the session's."""
    from dataclasses import replace
    from types import SimpleNamespace

    from tests.report.synthetic import write_incident
    from tracer.probes.session import LoadInfo
    from tracer.replay.timeline import RecordingTimeline
    from tracer.report.html import render_html
    from tracer.report.reader import read_recording
    from tracer.report.summary import summarize
    from tracer.report.text import render_text
    from tracer.run import header_for
    from tracer.tui.status import source_line

    sentence = "BTF tracepoints (tp_btf: fields read by plain loads at BTF offsets)"
    write_incident(tmp_path)
    for path in (tmp_path / "runs").glob("run-*.json"):
        m = json.loads(path.read_text())
        m["backend"], m["tracepoint_hooks"] = "tracepoint", sentence
        path.write_text(json.dumps(m))
    data = read_recording(tmp_path)
    s = summarize(data)
    shown = "tracepoint (BTF hooks)"
    assert shown in render_text(s, str(tmp_path)) and shown in render_html(s, str(tmp_path))
    timeline = RecordingTimeline(data, tmp_path)
    assert (timeline.header.backend, timeline.header.hooks) == ("tracepoint", "BTF")
    snap = timeline.snapshot(0)
    assert any(f"backend {shown}," in n.text for n in snap.notable if n.kind == "run")
    assert f"backend {shown}" in source_line(timeline.header, snap).plain
    info = LoadInfo(backend="tracepoint", transport="ring buffer", offsets_from="kernel BTF",
                    headers="", load_seconds=0.0, tracepoint_hooks=sentence)
    live = header_for(SimpleNamespace(info=info))
    assert live.hooks == "BTF"
    assert f"backend {shown}" in source_line(live, replace(snap, header=live)).plain
    # a session that has not said (LoadInfo's default): the backend alone
    assert header_for(SimpleNamespace(info=replace(info, tracepoint_hooks=""))).hooks == ""
