"""Screenshots of every view at a fixed size, compared with the SVGs under
__snapshots__/ (pytest-textual-snapshot). Deterministic by construction: the
data is synthetic with a fixed clock and host, the app shows only snapshot
times, nothing animates, and the replay starts paused.

After an intended change of the screen: look at the report, then
    .venv/bin/python -m pytest tests/tui/test_screens.py --snapshot-update
"""
from dataclasses import replace

import pytest

from tests.tui import recorded, synthetic
from tracer.replay import ReplayController, load
from tracer.tui.app import build_app

SIZE = (120, 40)


@pytest.fixture(scope="module")
def snap():
    return synthetic.last()


def live(snapshot):
    app = build_app(synthetic.HEADER)
    app.post_snapshot(snapshot)
    return app


@pytest.mark.parametrize("keys", [
    pytest.param((), id="overview"),
    pytest.param(("2",), id="connects"),
    pytest.param(("2", "j", "j"), id="connects-slow-destination"),
    pytest.param(("2", "g"), id="connects-by-process"),
    pytest.param(("3",), id="listeners"),
    pytest.param(("4",), id="processes"),
    pytest.param(("4", "j"), id="processes-pool-advice"),
    pytest.param(("5",), id="log"),
    pytest.param(("2", "j", "j", "enter"), id="detail"),
    pytest.param(("question_mark",), id="help"),
    pytest.param(("2", "slash", "6", "3"), id="filter-typing"),
    pytest.param(("2", "s", "s"), id="connects-sorted-by-rate"),
    pytest.param(("p",), id="paused"),
    pytest.param(("6",), id="map"),
])
def test_live_views(snap_compare, snap, keys):
    assert snap_compare(live(snap), press=keys, terminal_size=SIZE)


@pytest.mark.parametrize("keys", [
    pytest.param((), id="overview"),
    pytest.param(("2",), id="connects"),
    pytest.param(("3",), id="listeners"),
    pytest.param(("4",), id="processes"),
    pytest.param(("6",), id="map"),
])
def test_views_at_80x24(snap_compare, snap, keys):
    """An on-call's ssh window: the columns that matter stay, the rest fold
    (named in the caption, all in the detail pane)."""
    assert snap_compare(live(snap), press=keys, terminal_size=(80, 24))


def test_filter_that_matches_nothing(snap_compare):
    """--pid of a process that never connects: every view says so."""
    header = replace(synthetic.HEADER, filters="pid 999999")
    app = build_app(header)
    app.post_snapshot(synthetic.empty(header))
    assert snap_compare(app, press=("3",), terminal_size=SIZE)


def test_nothing_wrong(snap_compare):
    assert snap_compare(live(synthetic.quiet()), terminal_size=SIZE)


def test_replay_at_the_worst_moment(snap_compare, tmp_path):
    timeline = load(recorded.write_recording(tmp_path / "rec"))
    timeline.recording_bytes = None            # file sizes are not the point here
    header = replace(timeline.header, recording_path="/var/tmp/rec", source="replay /var/tmp/rec")
    app = build_app(header, replay=ReplayController(timeline))
    assert snap_compare(app, press=("w", "3"), terminal_size=SIZE)
