"""Read a recording directory (or many, copied into one) into Arrow tables.

A recording may hold several hosts and runs, and may be nested: a fleet's
recordings copied into subdirectories of one directory. Every file is read on
its own so one bad file (cut short by a full disk, foreign, from a newer
connscope) costs a line in `problems`, not the report. Rows are cast to the
schema of this connscope; columns a file lacks become nulls.

Files still being written (`*.inprogress`) are ignored, and so is
`quarantine/`, where crash recovery sets aside what it could not read.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.parquet as pq

from tracer.report import ReportError
from tracer.schema import SCHEMA_VERSION, TABLE_KEY, TABLES, VERSION_KEY, schema

QUARANTINE_DIR = "quarantine"   # as in tracer/sinks/recovery.py
RUNS_DIR = "runs"               # as in tracer/sinks/manifest.py
PARQUET_MAGIC = b"PAR1"

Progress = Callable[[int, int], None]


class RecordingNotFound(ReportError):
    pass


class EmptyRecording(ReportError):
    pass


@dataclass
class RecordingData:
    tables: dict[str, pa.Table]     # every table of schema.TABLES; empty (with schema) if no data
    manifests: list[dict] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)   # "<path>: <why>", one per skipped file
    files_read: int = 0


class _Skip(Exception):
    """Why one file is not read; becomes a problem line."""


def read_recording(directory, *, progress: Progress | None = None) -> RecordingData:
    """Read every connscope Parquet file and run manifest under `directory`.

    `progress(done, total)` is called after each data file. Raises
    RecordingNotFound if `directory` does not exist, EmptyRecording if it holds
    neither a readable data file nor a manifest.
    """
    root = Path(directory)
    if not root.exists():
        raise RecordingNotFound(f"{root} does not exist; pass the directory given to "
                                f"'connscope record --out'")
    if not root.is_dir():
        raise RecordingNotFound(f"{root} is not a directory; pass the directory given to "
                                f"'connscope record --out'")
    data_files, manifest_files, unreadable_dirs = _scan(root)
    problems = [f"{d}: cannot list directory ({why})" for d, why in unreadable_dirs]

    manifests = _read_manifests(manifest_files, problems)

    parts: dict[str, list[pa.Table]] = {t: [] for t in TABLES}
    seen: dict[tuple, Path] = {}
    files_read = 0
    total = len(data_files)
    for done, (table, path) in enumerate(data_files, 1):
        try:
            key = (table, path.parent.name, path.name, path.stat().st_size)
            if key in seen:
                raise _Skip(f"same file as {seen[key]} (copied twice?); read once")
            seen[key] = path
            parts[table].append(_read_file(path, table))
            files_read += 1
        except _Skip as why:
            problems.append(f"{path}: {why}")
        except OSError as e:
            problems.append(f"{path}: cannot read ({e.strerror or e})")
        if progress is not None:
            progress(done, total)

    if not files_read and not manifests:
        raise EmptyRecording(_empty_message(root, total, problems))

    tables = {t: _concat(t, parts[t]) for t in TABLES}
    return RecordingData(tables=tables, manifests=manifests, problems=problems,
                         files_read=files_read)


# ---------------------------------------------------------------- finding files

def _scan(root: Path) -> tuple[list[tuple[str, Path]], list[Path], list[tuple[Path, str]]]:
    """Data files as (table, path), manifest paths, and directories we could not list."""
    data, manifests, unreadable = [], [], []

    def onerror(e: OSError) -> None:
        unreadable.append((Path(e.filename), e.strerror or str(e)))

    for dirpath, dirnames, filenames in os.walk(root, onerror=onerror):
        # recovery's leftovers are not data; sorted so reports are reproducible
        dirnames[:] = sorted(d for d in dirnames if d != QUARANTINE_DIR)
        here = Path(dirpath)
        if here.name == RUNS_DIR:
            manifests += [here / f for f in sorted(filenames) if f.endswith(".json")]
            continue
        if not here.name.startswith("date=") or here.parent.name not in TABLES:
            continue
        data += [(here.parent.name, here / f) for f in sorted(filenames)
                 if f.endswith(".parquet")]
    return data, manifests, unreadable


def _read_manifests(paths: list[Path], problems: list[str]) -> list[dict]:
    by_run: dict[str, dict] = {}
    for path in paths:
        try:
            with open(path, "rb") as f:
                m = json.load(f)
        except OSError as e:
            problems.append(f"{path}: cannot read ({e.strerror or e})")
            continue
        except ValueError:
            problems.append(f"{path}: not a valid JSON run manifest")
            continue
        if not isinstance(m, dict) or "run_id" not in m:
            problems.append(f"{path}: not a connscope run manifest (no run_id)")
            continue
        old = by_run.get(m["run_id"])
        # the same run copied twice: keep the copy that got further
        if old is None or _progress_of(m) > _progress_of(old):
            by_run[m["run_id"]] = m
    return sorted(by_run.values(), key=lambda m: (str(m.get("start") or ""), str(m["run_id"])))


def _progress_of(m: dict) -> tuple:
    rows = m.get("rows") if isinstance(m.get("rows"), dict) else {}
    return (m.get("status") != "running", sum(v for v in rows.values() if isinstance(v, int)))


# ---------------------------------------------------------------- one file

def _read_file(path: Path, table: str) -> pa.Table:
    size = path.stat().st_size
    if size == 0:
        raise _Skip("empty file")
    with open(path, "rb") as f:
        head = f.read(4)
    if head != PARQUET_MAGIC:
        raise _Skip("not a Parquet file (magic bytes not found)")
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, ValueError):
        raise _Skip(f"truncated (no Parquet footer; {size} bytes)") from None
    meta = pf.schema_arrow.metadata or {}
    version = meta.get(VERSION_KEY.encode())
    if version is None:
        raise _Skip(f"not a connscope file (no {VERSION_KEY} metadata)")
    version = version.decode(errors="replace")
    if not version.isdigit():
        raise _Skip(f"unknown schema version {version!r}")
    if int(version) > int(SCHEMA_VERSION):
        raise _Skip(f"schema version {version} is newer than this connscope "
                    f"({SCHEMA_VERSION}); read it with a newer connscope")
    holds = meta.get(TABLE_KEY.encode(), table.encode()).decode(errors="replace")
    if holds != table:
        raise _Skip(f"holds {holds} rows but lies in the {table} folder")
    try:
        raw = pf.read()
    except (pa.ArrowException, ValueError, OSError) as e:
        raise _Skip(f"corrupt ({_first_line(e)})") from None
    return _conform(raw, table)


def _conform(raw: pa.Table, table: str) -> pa.Table:
    """`raw` with exactly the current schema: cast by name, missing columns null."""
    sch = schema(table)
    cols = []
    for f in sch:
        if f.name not in raw.column_names:
            cols.append(pa.nulls(raw.num_rows, f.type))
            continue
        col = raw.column(f.name)
        if col.type != f.type:
            try:
                col = col.cast(f.type)
            except (pa.ArrowException, ValueError):
                raise _Skip(f"column {f.name} is {col.type}, cannot be read as {f.type}") from None
        cols.append(col)
    return pa.Table.from_arrays(cols, schema=sch)


def _concat(table: str, parts: list[pa.Table]) -> pa.Table:
    if not parts:
        return schema(table).empty_table()
    return pa.concat_tables(parts).combine_chunks()


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def _empty_message(root: Path, total: int, problems: list[str]) -> str:
    if total:
        first = problems[0] if problems else ""
        return (f"no readable connscope data in {root}: none of its {total} Parquet files "
                f"could be read (first: {first})")
    return (f"no connscope recording in {root}: no <table>/date=*/*.parquet files and no "
            f"runs/*.json manifests")
