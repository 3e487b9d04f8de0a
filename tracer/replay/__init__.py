"""`connscope replay DIR`: a recording turned back into the Snapshots the live
view showed (timeline.py, from rows.py and latency.py), moved through with
play, pause, step, speed and jump to the worst moment (controller.py), shown
by the same TUI as `top`.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from tracer.replay.controller import SPEEDS, ReplayController, ReplayError
from tracer.replay.rows import connect_from_row

__all__ = ["SPEEDS", "RecordingTimeline", "ReplayController", "ReplayError", "connect_from_row",
           "load", "run"]


def __getattr__(name: str):
    # timeline.py reads Parquet (pyarrow, ~0.1 s to import): imported on first
    # use, so that catching ReplayError (tracer/errors.py) costs `record` nothing.
    if name == "RecordingTimeline":
        from tracer.replay.timeline import RecordingTimeline

        return RecordingTimeline
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _parquet_bytes(directory: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(directory):
        for f in files:
            if f.endswith(".parquet"):
                try:
                    total += os.path.getsize(os.path.join(root, f))
                except OSError:
                    pass
    return total


def load(directory, host: str | None = None) -> RecordingTimeline:
    """Read a recording (only `host`'s rows and runs, if given). A missing or
    empty directory, or a host it does not hold, raises the reader's one-line
    errors; unreadable files, and what finalizing a dead recorder's files did
    (or why it could not), become lines in the log, not failures."""
    from tracer.replay.timeline import RecordingTimeline
    from tracer.report.reader import only_host, read_recording

    # a dead recorder's journals are finalized first (or a line says why not)
    data = read_recording(directory, finalize=True)
    if host is not None:
        data = only_host(data, host, directory)
    data.problems[:0] = data.recovery
    return RecordingTimeline(data, directory, recording_bytes=_parquet_bytes(Path(directory)))


def run(directory, host: str | None = None) -> None:
    timeline = load(directory, host)
    # textual reads keys from stdin and draws on stderr (stdout may be piped)
    if not (sys.stdin.isatty() and sys.stderr.isatty()):
        raise ReplayError("replay needs a terminal; for text output use: "
                          f"connscope report {directory}")
    from tracer.tui.app import build_app

    build_app(timeline.header, replay=ReplayController(timeline)).run()
