"""`connscope report`: read, summarize, print; optionally write the HTML file.

Kept out of tracer/cli.py so the click command stays a thin shell and the
whole path can be called (and tested) without click's runner.
"""

from __future__ import annotations

import sys

import click

from tracer.report.html import render_html
from tracer.report import MAX_REPORT_ROWS
from tracer.report.reader import ReportError, read_recording
from tracer.report.summary import summarize
from tracer.report.text import render_text

PROGRESS_MIN_FILES = 20     # fewer files read in a blink: a bar would only flicker


class _ProgressBar:
    """A click progress bar on stderr, opened once we know there are many files."""

    def __init__(self):
        self._bar = None
        self._done = 0

    def __call__(self, done: int, total: int) -> None:
        if total <= PROGRESS_MIN_FILES:
            return
        if self._bar is None:
            self._bar = click.progressbar(length=total, label="reading", file=sys.stderr)
            self._bar.__enter__()
        self._bar.update(done - self._done)
        self._done = done

    def close(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)


def write_html(path, page: str) -> None:
    """Write `page` to `path` whole, or raise ReportError (never a half-written
    file, never through a symbolic link planted at `path`: see replace_file)."""
    from tracer.sinks.trusted_dir import UnsafeDirectory, replace_file

    try:
        replace_file(path, page.encode("utf-8"))
    except UnsafeDirectory as e:
        raise ReportError(f"cannot write {path}: {e}") from None
    except OSError as e:
        raise ReportError(f"cannot write {path}: {e.strerror or e}") from None


def report(directory, html_path=None, max_rows: int = MAX_REPORT_ROWS) -> None:
    """Print the text report of `directory`; with `html_path`, also write the HTML report.
    Files that would take the rows read past `max_rows` are skipped and named."""
    bar = _ProgressBar()
    try:
        data = read_recording(directory, progress=bar, max_rows=max_rows, finalize=True)
    finally:
        bar.close()
    for line in data.recovery:   # a dead recorder's journals finalized first, or why not
        click.echo(f"connscope: {line}", err=True)
    summary = summarize(data)
    source = str(directory)
    if html_path is not None:
        write_html(html_path, render_html(summary, source))
    click.echo(render_text(summary, source), nl=False)
    if html_path is not None:
        click.echo(f"wrote {html_path}", err=True)
