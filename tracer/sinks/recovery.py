"""What a crashed recorder left behind, finalized or set aside at the next start.

Per journal: already published as Parquet (crash between rename and unlink):
delete it; otherwise convert every complete batch to Parquet; not one readable
batch, or not the columns of its table: move it to DIR/quarantine/. A
`.parquet.inprogress` without a journal is published if its footer is intact,
else quarantined. Manifests still "running" are marked "crashed" and credited
with the rows salvaged for their run.

Only names that connscope itself writes are touched (tracer/sinks/names.py):
the tables of tracer/schema.py, `date=YYYY-MM-DD` folders, the recorder's file
names, `runs/<run_id>.json`. Everything is reached through directory
descriptors without following a symbolic link; what is not what connscope
would have written there (a link, a FIFO, a manifest naming another run) is
skipped or quarantined with its name and the reason, and a manifest is written
back only to the name it was read from.

The caller must hold the directory lock (see parquet_writer.recover).
"""

from __future__ import annotations

import json
import os
import stat
from datetime import datetime, timedelta, timezone
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from tracer.safe_text import printable
from tracer.schema import TABLES
from tracer.sinks.durable_files import publish
from tracer.sinks.journal import (
    RUN_ID_KEY,
    foreign_columns,
    journal_to_parquet,
    parquet_name,
    read_journal,
)
from tracer.sinks.manifest import iso_utc, read_manifest, write_manifest
from tracer.sinks.names import (
    JOURNAL_SUFFIX,
    MANIFEST_SUFFIX,
    MANIFEST_TMP_SUFFIX,
    PARQUET_SUFFIX,
    PARQUET_TMP_SUFFIX,
    QUARANTINE_DIR,
    RUNS_DIR,
    covered_by_compaction,
    data_base,
    is_date_dir,
    is_run_id,
    manifest_run_id,
)
from tracer.sinks.table_writer import ts_bounds
from tracer.sinks.trusted_dir import Dir, NotRegular, UnsafeDirectory, kind

_EPOCH_UTC = datetime(1970, 1, 1, tzinfo=timezone.utc)

# Only a Parquet file's footer is read to check it, whatever its size.
_ANY_SIZE = 1 << 50


def _sub(d: Dir, name: str, lines: list[str], rel: str) -> Dir | None:
    """Subdirectory `name` of `d`, or None (with a line saying why) if it is not one we made."""
    try:
        return d.sub(name)
    except FileNotFoundError:
        return None
    except UnsafeDirectory as e:
        lines.append(f"skipped {printable(rel)}: {e.reason or e}")   # reason: our own words
        return None


def partitions(root: Dir, table: str, lines: list[str]) -> Iterator[tuple[str, Dir]]:
    """(`date=` folder name, open Dir) of each partition of `table`; links and
    odd entries are skipped (and named in `lines`)."""
    tdir = _sub(root, table, lines, table)
    if tdir is None:
        return
    with tdir:
        for folder in tdir.names():
            if not is_date_dir(folder):
                continue
            part = _sub(tdir, folder, lines, f"{table}/{folder}")
            if part is None:
                continue
            with part:
                yield folder, part


def _quarantine(root: Dir, part: Dir, rel_dir: tuple[str, ...], name: str) -> str:
    """Move `name` of `part` to quarantine/<rel_dir>/; return where it went (relative).

    A Parquet file is renamed `<name>.quarantined`: under quarantine/ it sits
    at `<table>/date=.../`, where a fleet's glob (`fleet/**/connects/*/*.parquet`,
    README "Fleets") would otherwise match it and fail on what could not be read."""
    base = name + ".quarantined" if name.endswith(PARQUET_SUFFIX) else name
    with root.walk(QUARANTINE_DIR, *rel_dir, create=True) as q:
        dest, n = base, 0
        while q.exists(dest):
            n += 1
            dest = f"{base}.{n}"
        part.rename_to(name, q, dest)
        q.fsync()
    part.fsync()
    return "/".join((QUARANTINE_DIR, *rel_dir, dest))


def _parquet_problem(part: Dir, name: str, table: str) -> str | None:
    """Why `name` is not a complete Parquet file of `table`, or None if it is."""
    try:
        fd, _ = part.open_regular(name, _ANY_SIZE)
    except NotRegular as e:
        return str(e)
    try:
        with os.fdopen(fd, "rb") as f:
            sch = pq.read_schema(f)
    except (pa.ArrowException, OSError, ValueError):
        return "incomplete Parquet file"
    foreign = foreign_columns(table, sch)
    return f"not a {table} file ({foreign})" if foreign else None


def _skip_odd(part: Dir, name: str) -> str | None:
    """Why an entry with one of our names is not something to act on, or None."""
    st = part.lstat(name)
    if st is None:
        return "gone"
    if not stat.S_ISREG(st.st_mode):
        return f"{kind(st.st_mode)}, not a file connscope wrote"
    return None


def recover_locked(root: Dir) -> list[str]:
    """Handle every leftover in the recording directory `root`; return one
    human-readable line per file handled or skipped (names shown via printable)."""
    lines: list[str] = []
    salvaged: dict[str, dict[str, int]] = {}  # run_id -> table -> rows
    last_ts: dict[str, datetime] = {}
    for table in TABLES:
        for folder, part in partitions(root, table, lines):
            rel_dir = (table, folder)
            _recover_partition(root, part, table, rel_dir, lines, salvaged, last_ts)
    crashed = _recover_manifests(root, lines, salvaged, last_ts)
    if crashed:
        _every_table_exists(root, crashed[0], lines)
    return lines


def _every_table_exists(root: Dir, manifest: dict, lines: list[str]) -> None:
    """An empty Parquet file (with the schema) for each table that has no file
    at all, as `Recording.close` leaves one: queries on a quiet table of a
    crashed recording then return no rows instead of failing ("No files found")."""
    from tracer.schema import schema
    from tracer.sinks.journal import ROW_GROUP_ROWS, write_parquet
    from tracer.sinks.names import safe_name

    try:
        start = datetime.strptime(str(manifest.get("start")), "%Y-%m-%dT%H:%M:%S.%fZ")
    except ValueError:
        start = datetime.utcnow()
    # sequence 0: the empty file's, as TableWriter.write_empty names it
    base = f"{safe_name(str(manifest.get('host') or 'host'))}-{start:%Y%m%dT%H%M%SZ}-0000"
    for table in TABLES:
        has_file = False
        for _, part in partitions(root, table, []):
            if any(data_base(n, PARQUET_SUFFIX) for n in part.names()):
                has_file = True
        if has_file:
            continue
        with root.walk(table, f"date={start:%Y-%m-%d}", create=True) as part:
            name = base + PARQUET_SUFFIX
            if part.lstat(name) is None:
                write_parquet(part, name, schema(table).empty_table(), ROW_GROUP_ROWS)
                lines.append(f"created {table}/date={start:%Y-%m-%d}/{printable(name)}: "
                             f"no rows, so that queries on {table} find a file")


def _recover_partition(root: Dir, part: Dir, table: str, rel_dir: tuple[str, str],
                       lines: list[str], salvaged, last_ts) -> None:
    def rel(name: str) -> str:
        return printable("/".join((*rel_dir, name)))

    def quarantine(name: str, why: str) -> None:
        lines.append(f"quarantined {rel(name)}: {why} "
                     f"(moved to {printable(_quarantine(root, part, rel_dir, name))})")

    names = part.names()
    # a temporary Parquet next to its journal is redone from the journal
    for name in names:
        base = data_base(name, PARQUET_TMP_SUFFIX)
        if base and part.is_regular(name) and part.is_regular(base + JOURNAL_SUFFIX):
            part.unlink(name)
    for journal in names:
        if data_base(journal, JOURNAL_SUFFIX) is None:
            continue
        odd = _skip_odd(part, journal)
        if odd:
            lines.append(f"skipped {rel(journal)}: {odd}")
            continue
        final = parquet_name(journal)
        if part.lstat(final) is not None:
            problem = _parquet_problem(part, final, table)
            if problem is None:
                # crashed between publishing the Parquet file and deleting its journal
                part.unlink(journal)
                part.fsync()
                lines.append(f"removed {rel(journal)}: already finalized as {printable(final)}")
                continue
            if _skip_odd(part, final):
                lines.append(f"skipped {rel(journal)}: {printable(final)} is in the way "
                             f"({_skip_odd(part, final)})")
                continue
            quarantine(final, "unreadable")
        try:
            sch, batches, clean = read_journal(part, journal)
        except NotRegular as e:
            quarantine(journal, str(e))
            continue
        if not batches:
            quarantine(journal, "no readable record batch")
            continue
        foreign = foreign_columns(table, sch)
        if foreign:
            quarantine(journal, f"not a {table} journal ({foreign})")
            continue
        final, rows, _, tbl = journal_to_parquet(part, journal, read=(sch, batches))
        meta = sch.metadata or {}
        run_id = meta.get(RUN_ID_KEY.encode(), b"").decode(errors="replace") or "unknown"
        salvaged.setdefault(run_id, {}).setdefault(table, 0)
        salvaged[run_id][table] += rows
        bounds = ts_bounds(tbl)
        newest = _EPOCH_UTC + timedelta(microseconds=bounds[1]) if bounds is not None else None
        if newest is not None and (run_id not in last_ts or newest > last_ts[run_id]):
            last_ts[run_id] = newest
        how = "" if clean else "; the last batch was cut short and is lost"
        lines.append(f"recovered {rel(final)}: {rows} rows from a "
                     f"journal of run {printable(run_id)}{how}")
    # no journal: a complete file was only not renamed; anything else is quarantined
    for tmp in part.names():
        base = data_base(tmp, PARQUET_TMP_SUFFIX)
        if base is None:
            continue
        odd = _skip_odd(part, tmp)
        if odd:
            lines.append(f"skipped {rel(tmp)}: {odd}")
            continue
        problem = _parquet_problem(part, tmp, table)
        final = base + PARQUET_SUFFIX
        if problem is None and part.lstat(final) is None:
            publish(part.fd, tmp, final)
            lines.append(f"finalized {rel(tmp)} as {printable(final)}")
        else:
            quarantine(tmp, problem or f"{printable(final)} exists already")
    # a compaction cut short: its small files are still there next to the
    # compacted file that holds their rows (published first, so never lost)
    for name in sorted(covered_by_compaction(part.names())):
        if part.is_regular(name):
            part.unlink(name)
            part.fsync()
            lines.append(f"removed {rel(name)}: its rows are in the compacted file next to it")


def _recover_manifests(root: Dir, lines: list[str], salvaged, last_ts) -> list[dict]:
    """Mark the manifests still "running" as crashed; return them."""
    crashed: list[dict] = []
    runs = _sub(root, RUNS_DIR, lines, RUNS_DIR)
    if runs is None:
        return crashed
    with runs:
        for name in runs.names():
            rel = printable(f"{RUNS_DIR}/{name}")
            if name.endswith(MANIFEST_TMP_SUFFIX):   # a manifest half-replaced
                if manifest_run_id(name[: -len(".tmp")]) and runs.is_regular(name):
                    runs.unlink(name)
                continue
            if not name.endswith(MANIFEST_SUFFIX):
                continue
            file_run_id = manifest_run_id(name)
            if file_run_id is None:
                lines.append(f"skipped {rel}: not a name connscope gives a manifest")
                continue
            try:
                m = read_manifest(name, dir_fd=runs.fd)
            except NotRegular as e:
                lines.append(f"skipped {rel}: {printable(str(e))}")
                continue
            except OSError as e:
                lines.append(f"skipped {rel}: cannot read ({printable(e.strerror or e)})")
                continue
            except ValueError:
                lines.append(f"skipped {rel}: not a valid JSON run manifest")
                continue
            if m.get("status") != "running":
                continue
            run_id = m.get("run_id")
            if not is_run_id(run_id) or run_id != file_run_id:
                shown = printable(json.dumps(run_id))[:80]
                dest = _quarantine(root, runs, (RUNS_DIR,), name)
                lines.append(f"quarantined {rel}: its run_id {shown} is not its file name "
                             f"(moved to {printable(dest)})")
                continue
            rows = salvaged.get(run_id, {})
            m["status"] = "crashed"
            if run_id in last_ts and m.get("end") is None:
                m["end"] = iso_utc(last_ts[run_id])
            m["recovered_rows"] = rows
            old = m.get("rows") if isinstance(m.get("rows"), dict) else {}
            m["rows"] = old
            for table, n in rows.items():
                before = old.get(table)
                old[table] = (before if isinstance(before, int) else 0) + n
            write_manifest(runs, m, name)
            crashed.append(m)
            lines.append(f"marked run {printable(run_id)} as crashed (recovered "
                         f"{sum(rows.values())} rows)")
    return crashed


def leftovers(root: Dir) -> bool:
    """Whether a crashed run left journals or temporary files that recovery would handle."""
    sink: list[str] = []
    for table in TABLES:
        for _, part in partitions(root, table, sink):
            if any(data_base(n, JOURNAL_SUFFIX) or data_base(n, PARQUET_TMP_SUFFIX)
                   for n in part.names()):
                return True
    return False

