"""A dead recorder's files, finalized by whoever reads the recording next.

After `kill -9` (an OOM kill, a host crash) a recording's last rows are in
journals (`*.inprogress`) that DuckDB, pyarrow and `report` cannot read.
`report`, `replay` and `connscope recover` call `finalize_dead_recorder`,
which runs the recorder's own recovery (parquet_writer.recover: DIR opened as
a trusted directory, under its lock, every rule of trusted_dir.py and
recovery.py kept) when no recorder holds the lock.

It never raises for what a reader cannot help: a live recorder (nothing to
do: its files are finalized as it goes), a directory the caller may not
change (not root, or not the owner: the rows stay where they are and one
line says who can finalize them), a directory connscope will not trust as
root (the same line says why). Readers then read what is readable.
"""
from __future__ import annotations

import errno
from dataclasses import dataclass, field

from tracer.safe_text import printable


@dataclass
class Finalized:
    lines: list[str] = field(default_factory=list)  # one per file handled (recovery's own words)
    refused: str | None = None                       # why nothing was done, one line
    busy: bool = False                                # a recorder is writing right now

    @property
    def changed(self) -> bool:
        return bool(self.lines)


def finalize_dead_recorder(directory, unfinished: int = 0) -> Finalized:
    """Recover `directory` if its recorder is dead; see the module docstring.

    `unfinished`: how many `*.inprogress` files the caller saw there (for the
    refusal line only)."""
    from tracer.sinks.parquet_writer import RecordingBusy, RecordingError, recover

    shown = printable(str(directory))
    what = (f"{unfinished} file(s) a stopped recorder left unfinished in {shown}"
            if unfinished else f"a stopped recorder's files in {shown}")
    try:
        return Finalized(lines=recover(directory))
    except RecordingBusy:
        return Finalized(busy=True)
    except PermissionError:
        return Finalized(refused=_needs_owner(what, directory))
    except RecordingError as e:
        cause = e.__cause__ or e.__context__
        if isinstance(cause, OSError) and cause.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return Finalized(refused=_needs_owner(what, directory))
        if "Permission denied" in str(e) or "Read-only file system" in str(e):
            return Finalized(refused=_needs_owner(what, directory))
        return Finalized(refused=f"{what} not finalized: {printable(str(e))}")
    except FileNotFoundError:
        return Finalized()


def _needs_owner(what: str, directory) -> str:
    return (f"{what} not finalized (their rows are not in this report): that needs "
            f"the owner of the recording: run 'sudo connscope recover {printable(str(directory))}'")
