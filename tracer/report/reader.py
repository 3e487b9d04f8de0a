"""Read a recording directory (or many, copied into one) into Arrow tables.

A recording may hold several hosts and runs, and may be nested: a fleet's
recordings copied into subdirectories of one directory. Every file is read on
its own so one bad file (cut short by a full disk, foreign, from a newer
connscope) costs a line in `problems`, not the report. Rows are cast to the
schema of this connscope; columns a file lacks become nulls.

Files still being written (`*.inprogress`) are not read, and neither is
`quarantine/`, where crash recovery sets aside what it could not read. With
`finalize=True` (report, replay) the journals a dead recorder left are first
finalized through the recorder's own recovery (tracer/sinks/crashed.py), when
no recorder holds the directory and the caller may change it; otherwise
`recovery` says in one line why their rows are not read.

A compacted file (`<prefix>-<first>-<last>.parquet`, tracer/sinks/names.py)
holds the rows of the small files `<prefix>-<first>` to `<prefix>-<last>` of
its partition: those still there (a recorder killed while compacting) are
not read twice.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pyarrow as pa

from tracer.report import MAX_REPORT_ROWS, ReportError
from tracer.report.data_file import Budget, Skip, open_regular, read_file
from tracer.report.run_manifest import problem as manifest_problem
from tracer.safe_text import printable
from tracer.schema import TABLES, schema
from tracer.sinks.manifest import MANIFEST_MAX_BYTES, read_manifest
from tracer.sinks.names import covered_by_compaction, is_empty_placeholder

QUARANTINE_DIR = "quarantine"   # as in tracer/sinks/recovery.py
RUNS_DIR = "runs"               # as in tracer/sinks/manifest.py
EVENT_TABLES = ("connects", "accepts")   # one row per event; the others one per interval
MAX_DEPTH = 16                  # DIR/<fleet copies>/<table>/date=.../file: a few levels

Progress = Callable[[int, int], None]


class RecordingNotFound(ReportError):
    pass


class EmptyRecording(ReportError):
    pass


class UnknownHost(ReportError):
    pass


@dataclass
class RecordingData:
    tables: dict[str, pa.Table]     # every table of schema.TABLES; empty (with schema) if no data
    manifests: list[dict] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)   # "<path>: <why>", one per skipped file
    files_read: int = 0
    recovery: list[str] = field(default_factory=list)   # what finalizing a dead recorder did, or why not
    unfinished: int = 0             # *.inprogress data files left unread


def read_recording(directory, *, progress: Progress | None = None,
                   max_rows: int = MAX_REPORT_ROWS, finalize: bool = False) -> RecordingData:
    """Read every connscope Parquet file and run manifest under `directory`.

    `progress(done, total)` is called after each data file. Raises
    RecordingNotFound if `directory` does not exist, EmptyRecording if it holds
    neither a readable data file nor a manifest. Files that would take the
    total past `max_rows` are skipped, each named in `problems`. With
    `finalize`, a dead recorder's journals are finalized first (module docstring).
    """
    root = Path(directory)
    try:
        readable = (not stat.S_ISDIR(os.stat(root).st_mode)
                    or os.access(root, os.R_OK | os.X_OK))
    except PermissionError:
        readable = False
    except OSError:
        readable = True     # missing: said below
    if not readable:
        raise RecordingNotFound(f"cannot read {printable(root)}: Permission denied (the "
                                f"recording belongs to its owner: run this as root, with sudo)")
    if not root.exists():
        raise RecordingNotFound(f"{root} does not exist; pass the directory given to "
                                f"'connscope record --out'")
    if not root.is_dir():
        raise RecordingNotFound(f"{root} is not a directory; pass the directory given to "
                                f"'connscope record --out'")
    data_files, manifest_files, skipped, unfinished = _scan(root)
    recovery: list[str] = []
    if finalize and unfinished:
        from tracer.sinks.crashed import finalize_dead_recorder

        changed = False
        # DIR/<table>/date=.../<file>: each recording (a fleet may hold several)
        for rec_root in sorted({p.parent.parent.parent for p in unfinished}):
            n = sum(1 for p in unfinished if p.parent.parent.parent == rec_root)
            done = finalize_dead_recorder(rec_root, n)
            recovery += [f"{printable(rec_root)}: {line}" for line in done.lines]
            if done.refused:
                recovery.append(done.refused)
            changed = changed or done.changed
        if changed:
            data_files, manifest_files, skipped, unfinished = _scan(root)
    # The per-interval tables (listeners, overflows, sockets, pools) are small
    # and say most about an incident: read first, so that a recording past
    # --max-rows loses event rows, never them.
    data_files.sort(key=lambda tp: tp[0] in EVENT_TABLES)
    problems = [f"{path}: {why}" for path, why in skipped]

    manifests = _read_manifests(manifest_files, problems)

    parts: dict[str, list[pa.Table]] = {t: [] for t in TABLES}
    seen: dict[tuple, Path] = {}
    budget = Budget(max_rows)
    files_read = 0
    total = len(data_files)
    for done, (table, path) in enumerate(data_files, 1):
        try:
            key = (table, path.parent.name, path.name, path.lstat().st_size)
            # empty files (no rows) of two hosts' runs of the same second are
            # alike; only files with rows are worth a line
            if (key in seen and not is_empty_placeholder(path.name)
                    and _same_bytes(seen[key], path)):
                raise Skip(f"same file as {seen[key]} (copied twice?); read once")
            seen[key] = path
            parts[table].append(read_file(path, table, budget))
            files_read += 1
        except Skip as why:
            problems.append(f"{path}: {why}")
        except OSError as e:
            problems.append(f"{path}: cannot read ({e.strerror or e})")
        if progress is not None:
            progress(done, total)

    if not files_read and not manifests:
        message = _empty_message(root, total, problems)
        if recovery:
            message += f"; {recovery[-1]}"
        raise EmptyRecording(message)

    tables = {t: _concat(t, parts[t]) for t in TABLES}
    return RecordingData(tables=tables, manifests=manifests, problems=problems,
                         files_read=files_read, recovery=recovery, unfinished=len(unfinished))


def hosts_in(data: RecordingData) -> list[str]:
    """Every host name in the rows and manifests of `data`, sorted."""
    import pyarrow.compute as pc

    hosts = {m.get("host") for m in data.manifests}
    for t in data.tables.values():
        if t.num_rows:
            hosts.update(pc.unique(t.column("host")).to_pylist())
    return sorted(h for h in hosts if isinstance(h, str) and h)


def only_host(data: RecordingData, host: str, source) -> RecordingData:
    """`data` cut down to the rows and manifests of `host` (exactly as
    recorded), or UnknownHost naming the hosts there are."""
    import pyarrow.compute as pc

    from tracer.report.hosts import hosts_text

    present = hosts_in(data)
    if host not in present:
        # names others chose, bounded: main() escapes them (safe_text)
        raise UnknownHost(f"no host {host!r} in {source}; hosts present: "
                          f"{hosts_text(present) or 'none'}")
    tables = {name: t.filter(pc.equal(t.column("host"), host)) if t.num_rows else t
              for name, t in data.tables.items()}
    return RecordingData(tables=tables,
                         manifests=[m for m in data.manifests if m.get("host") == host],
                         problems=data.problems, files_read=data.files_read,
                         recovery=data.recovery, unfinished=data.unfinished)


# ---------------------------------------------------------------- finding files

def _scan(root: Path) -> tuple[list[tuple[str, Path]], list[Path], list[tuple[Path, str]],
                               list[Path]]:
    """Data files as (table, path), manifest paths, (path, why) for what
    cannot be searched or looks like ours but cannot be (directories too deep
    or unlistable, directories named like data files or manifests), and the
    unfinished data files (`*.inprogress`). Small files a compacted file of
    the same partition holds are left out.

    Iterative, and never into a link: a tree 10,000 directories deep or a link
    to / is a line in the report, not a RecursionError or a walk of the host."""
    data, manifests, skipped, unfinished = [], [], [], []
    stack = [(root, 0)]
    while stack:
        here, depth = stack.pop()
        try:
            with os.scandir(here) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            skipped.append((here, f"cannot list directory ({e.strerror or e})"))
            continue
        is_runs = here.name == RUNS_DIR
        is_data = here.name.startswith("date=") and here.parent.name in TABLES
        suffix = ".json" if is_runs else ".parquet" if is_data else None
        subdirs = []
        covered = covered_by_compaction([e.name for e in entries]) if is_data else set()
        for e in entries:
            try:
                real_dir = e.is_dir(follow_symlinks=False)
            except OSError:
                real_dir = False
            if suffix and e.name.endswith(suffix):
                if real_dir:
                    skipped.append((Path(e.path), "a directory, not a file; not read"))
                elif is_runs:
                    manifests.append(Path(e.path))
                elif e.name not in covered:
                    data.append((here.parent.name, Path(e.path)))
            elif is_data and e.name.endswith(".inprogress") and not real_dir:
                unfinished.append(Path(e.path))
            elif real_dir and e.name != QUARANTINE_DIR:    # recovery's leftovers are not data
                subdirs.append(Path(e.path))
        if subdirs and depth >= MAX_DEPTH:
            skipped.append((here, f"more than {MAX_DEPTH} directories deep; not searched"))
            continue
        # reversed onto the stack: popped in name order, so reports are reproducible
        stack += [(d, depth + 1) for d in reversed(subdirs)]
    return data, manifests, skipped, unfinished


def _same_bytes(a: Path, b: Path) -> bool:
    """Whether two files named and sized alike hold the same bytes: a run
    copied twice does, two hosts of one name whose runs started in the same
    second (recorded before file names had a run token) do not."""
    import hashlib

    digests = []
    for path in (a, b):
        h = hashlib.sha256()
        with open_regular(path) as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        digests.append(h.digest())
    return digests[0] == digests[1]


def _read_manifests(paths: list[Path], problems: list[str]) -> list[dict]:
    by_run: dict[str, dict] = {}
    for path in paths:
        try:
            # a link, FIFO or device is refused before read_manifest opens it
            with open_regular(path, MANIFEST_MAX_BYTES):
                pass
            m = read_manifest(path)
        except Skip as why:
            problems.append(f"{path}: {why}")
            continue
        except OSError as e:
            problems.append(f"{path}: cannot read ({e.strerror or e})")
            continue
        except (ValueError, RecursionError):
            problems.append(f"{path}: not a valid JSON run manifest")
            continue
        why = manifest_problem(m)
        if why:
            problems.append(f"{path}: {why}")
            continue
        old = by_run.get(m["run_id"])
        # the same run copied twice: keep the copy that got further
        if old is None or _progress_of(m) > _progress_of(old):
            by_run[m["run_id"]] = m
    return sorted(by_run.values(), key=lambda m: (str(m.get("start") or ""), m["run_id"]))


def _progress_of(m: dict) -> tuple:
    return (m.get("status") != "running", sum((m.get("rows") or {}).values()))


def _concat(table: str, parts: list[pa.Table]) -> pa.Table:
    if not parts:
        return schema(table).empty_table()
    return pa.concat_tables(parts).combine_chunks()


def _empty_message(root: Path, total: int, problems: list[str]) -> str:
    # one line on the terminal: names in the directory are someone else's choice
    if total:
        first = problems[0] if problems else ""
        return (f"no readable connscope data in {printable(root)}: none of its {total} Parquet "
                f"files could be read (first: {printable(first)})")
    if problems:
        return (f"no readable connscope recording in {printable(root)}: {len(problems)} "
                f"thing(s) skipped (first: {printable(problems[0])})")
    return (f"no connscope recording in {printable(root)}: no <table>/date=*/*.parquet files "
            f"and no runs/*.json manifests")
