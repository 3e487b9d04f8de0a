"""`connscope recover DIR`: a dead recorder's files finalized, and said so.

The work is parquet_writer.recover (the recorder's own start-up recovery, with
every guarantee of trusted_dir.py and recovery.py); this only words it."""
from __future__ import annotations

import os

from tracer.safe_text import printable
from tracer.sinks.parquet_writer import RecordingError, recover


def recover_directory(directory) -> list[str]:
    """Lines for the terminal. Raises RecordingError (one line) if DIR is
    missing, being recorded (RecordingBusy), or not ours to change."""
    shown = printable(str(directory))
    if not os.path.lexists(directory):
        raise RecordingError(f"{shown} does not exist; pass the directory given to "
                             f"'connscope record --out'")
    try:
        lines = recover(directory)
    except PermissionError as e:
        raise RecordingError(f"cannot recover {shown}: {e.strerror or e}: "
                             f"that needs the owner of the recording (or root)") from None
    except RecordingError as e:
        if "Permission denied" in str(e):
            raise RecordingError(f"{e}: that needs the owner of the recording (or root)") from None
        raise
    if not lines:
        return [f"{shown}: nothing to recover (no recorder died while writing here)"]
    rows = sum(_rows_in(line) for line in lines if line.startswith("recovered "))
    return [*lines, f"{shown}: {rows} rows recovered; every row journaled is now in "
                    f"{shown}/<table>/date=*/*.parquet"]


def _rows_in(line: str) -> int:
    # "recovered <file>: <rows> rows from a journal of run ..."
    try:
        return int(line.split(": ", 1)[1].split(" ", 1)[0])
    except (IndexError, ValueError):
        return 0
