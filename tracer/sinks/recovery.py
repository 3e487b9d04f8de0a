"""What a crashed recorder left behind, finalized or set aside at the next start.

Per journal: already published as Parquet (crash between rename and unlink):
delete it; otherwise convert every complete batch to Parquet; not one readable
batch: move it to DIR/quarantine/. A `.parquet.inprogress` without a journal is
published if its footer is intact, else quarantined. Manifests still "running"
are marked "crashed" and credited with the rows salvaged for their run.

The caller must hold the directory lock (see parquet_writer.recover).
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tracer.schema import TABLES
from tracer.sinks.durable_files import fsync_dir, make_dirs, publish
from tracer.sinks.journal import (
    JOURNAL_SUFFIX,
    PARQUET_TMP_SUFFIX,
    RUN_ID_KEY,
    journal_to_parquet,
    parquet_path,
    read_journal,
)
from tracer.sinks.manifest import RUNS_DIR, iso_utc, running_manifests, write_manifest

QUARANTINE_DIR = "quarantine"


def _quarantine(directory: Path, path: Path) -> Path:
    dest = directory / QUARANTINE_DIR / path.relative_to(directory)
    make_dirs(dest.parent)
    n = 0
    while dest.exists():
        n += 1
        dest = dest.with_name(f"{path.name}.{n}")
    os.rename(path, dest)
    fsync_dir(path.parent)
    return dest


def _parquet_is_complete(path: Path) -> bool:
    try:
        pq.read_metadata(path)
        return True
    except (pa.ArrowException, OSError, ValueError):
        return False


def recover_locked(directory: Path) -> list[str]:
    """Handle every leftover in `directory`; return one human-readable line per file."""
    lines: list[str] = []
    salvaged: dict[str, dict[str, int]] = {}  # run_id -> table -> rows
    last_ts: dict[str, datetime] = {}
    for table in TABLES:
        table_dir = directory / table
        if not table_dir.is_dir():
            continue
        # a temporary Parquet next to its journal is redone from the journal
        for tmp in sorted(table_dir.glob(f"date=*/*{PARQUET_TMP_SUFFIX}")):
            journal = tmp.with_name(tmp.name[: -len(PARQUET_TMP_SUFFIX)] + JOURNAL_SUFFIX)
            if journal.exists():
                os.unlink(tmp)
        for journal in sorted(table_dir.glob(f"date=*/*{JOURNAL_SUFFIX}")):
            rel = journal.relative_to(directory)
            final = parquet_path(journal)
            if final.exists():
                if _parquet_is_complete(final):
                    # crashed between publishing the Parquet file and deleting its journal
                    os.unlink(journal)
                    lines.append(f"removed {rel}: already finalized as {final.name}")
                    continue
                lines.append(f"quarantined {final.relative_to(directory)}: unreadable "
                             f"(moved to {_quarantine(directory, final).relative_to(directory)})")
            sch, batches, clean = read_journal(journal)
            if not batches:
                dest = _quarantine(directory, journal)
                lines.append(f"quarantined {rel}: no readable record batch "
                             f"(moved to {dest.relative_to(directory)})")
                continue
            final, rows, _, tbl = journal_to_parquet(journal)
            meta = sch.metadata or {}
            run_id = meta.get(RUN_ID_KEY.encode(), b"").decode() or "unknown"
            salvaged.setdefault(run_id, {}).setdefault(table, 0)
            salvaged[run_id][table] += rows
            newest = pc.max(tbl.column("ts")).as_py()
            if newest is not None and (run_id not in last_ts or newest > last_ts[run_id]):
                last_ts[run_id] = newest
            how = "" if clean else "; the last batch was cut short and is lost"
            lines.append(f"recovered {final.relative_to(directory)}: {rows} rows from a "
                         f"journal of run {run_id}{how}")
        # no journal: a complete file was only not renamed; anything else is quarantined
        for tmp in sorted(table_dir.glob(f"date=*/*{PARQUET_TMP_SUFFIX}")):
            rel = tmp.relative_to(directory)
            if _parquet_is_complete(tmp):
                final = tmp.with_name(tmp.name[: -len(PARQUET_TMP_SUFFIX)] + ".parquet")
                publish(tmp, final)
                lines.append(f"finalized {rel} as {final.name}")
            else:
                dest = _quarantine(directory, tmp)
                lines.append(f"quarantined {rel}: incomplete Parquet file "
                             f"(moved to {dest.relative_to(directory)})")

    for stale in sorted((directory / RUNS_DIR).glob("*.tmp")):  # manifest half-replaced
        os.unlink(stale)
    for path, m in running_manifests(directory):
        run_id = m.get("run_id", path.stem)
        rows = salvaged.get(run_id, {})
        m["status"] = "crashed"
        if run_id in last_ts and m.get("end") is None:
            m["end"] = iso_utc(last_ts[run_id])
        m["recovered_rows"] = rows
        for table, n in rows.items():
            m.setdefault("rows", {})[table] = m.get("rows", {}).get(table, 0) + n
        write_manifest(directory, m)
        lines.append(f"marked run {run_id} as crashed (recovered "
                     f"{sum(rows.values())} rows)")
    return lines
