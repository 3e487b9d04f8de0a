"""Seeded fuzzing of `report` and of replay's loading path: a valid recording
written by the real writer, broken one seeded way per case (bits flipped,
files cut short, columns of the wrong type or with values no connscope
writes, hostile manifests, links, FIFOs, directories named like files), then
read as a user would.

Every case must end in exit 0 (what could be read) or exit 1 (one `Error:`
line, nothing readable), never exit 2 ("internal error") or a traceback, and
every file the case certainly broke must be named in the output. A failure
prints its seed: `FUZZ_SEED=<n> pytest tests/report/test_report_fuzz.py`
replays that one case.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.report.hostile import mutate, run_cli, write_base
from tracer.errors import USER_ERRORS
from tracer.safe_text import printable

REPORT_CASES = 300      # ~20 s here; the suite has 90 minutes, this stays well under one
REPLAY_CASES = 80
FIRST_SEED = int(os.environ.get("FUZZ_SEED_BASE", "1000"))


def _seeds(n: int) -> list[int]:
    one = os.environ.get("FUZZ_SEED")
    return [int(one)] if one else list(range(FIRST_SEED, FIRST_SEED + n))


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    d = tmp_path_factory.mktemp("base") / "rec"
    write_base(d)
    return d


@pytest.fixture
def broken(base, tmp_path):
    def make(seed: int) -> tuple[Path, str, list[Path]]:
        d = tmp_path / f"case-{seed}"
        shutil.copytree(base, d, symlinks=True)
        what, bad = mutate(seed, d)
        return d, what, bad
    return make


def test_base_recording_is_clean(base):
    code, out, err = run_cli("report", str(base))
    # more than 20 files (8 tables' empty start files among them): a progress bar, nothing else
    assert code == 0 and all(line.startswith("reading") for line in err.split("\r")
                             if line.strip()), err
    assert "DATA PROBLEMS" not in out and "24 read, 0 skipped" in out.replace("files     ", "")


@pytest.mark.parametrize("seed", _seeds(REPORT_CASES))
def test_report_survives(broken, seed):
    d, what, bad = broken(seed)
    html = d.parent / f"report-{seed}.html"
    # every fourth case also renders the charts of the HTML report
    code, out, err = run_cli("report", str(d), *(["--html", str(html)] if seed % 4 == 0 else []))
    case = f"seed {seed} ({what}): exit {code}\nstdout:\n{out[-3000:]}\nstderr:\n{err[-3000:]}"
    assert code in (0, 1), case
    assert "Traceback" not in out + err and "internal error" not in err, case
    if code == 1:
        assert len([line for line in err.splitlines() if line.startswith("Error:")]) == 1, case
    else:
        assert "connscope report:" in out, case
        if seed % 4 == 0:
            assert "\x1b" not in html.read_text(encoding="utf-8"), case
    shown = out + err
    for path in bad:
        assert printable(path) in shown or printable(path.name) in shown, f"not named: {case}"
    assert "\x1b" not in shown, case


@pytest.mark.parametrize("seed", _seeds(REPLAY_CASES))
def test_replay_loads_without_crashing(broken, seed):
    """Replay's loading path, headless: the timeline and the controller, every
    interval's Snapshot built, no TUI."""
    from tracer import replay

    d, what, bad = broken(seed)
    case = f"seed {seed} ({what})"
    try:
        timeline = replay.load(d)
        controller = replay.ReplayController(timeline)
    except USER_ERRORS as e:
        assert "\n" not in str(e), case
        return
    for i in range(len(timeline)):
        assert timeline.snapshot(i) is not None, case
    controller.jump_to_worst()
    controller.play()
    controller.advance(3.0)
    for path in bad:
        assert any(str(path) in p for p in timeline.problems), f"not named: {case}"
