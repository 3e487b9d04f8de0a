"""The journal: how rows of an open file survive a crash until they become Parquet.

A Parquet file is unreadable until its footer is written, so a file being
recorded is an Arrow IPC *stream* instead (`<name>.arrows.inprogress`): one
record batch per flush, fsynced after each. A stream cut short by a crash still
yields every batch before the cut. At rotation (or at recovery) the journal is
rewritten as `<name>.parquet.inprogress`, fsynced, renamed to `<name>.parquet`,
and only then deleted, so some complete copy of the rows is on disk at every
moment.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from tracer.sinks.durable_files import create_file, fsync_dir, write_via

JOURNAL_SUFFIX = ".arrows.inprogress"
PARQUET_TMP_SUFFIX = ".parquet.inprogress"

# Extra file metadata, so a salvaged journal can be credited to its run.
RUN_ID_KEY = "connscope.run_id"
HOST_KEY = "connscope.host"

# Row groups are sized for readers, not per flush: a quiet table flushed every
# 2 s would otherwise get thousands of tiny row groups a day.
ROW_GROUP_ROWS = 1 << 16

# lz4 costs little CPU and shrinks the journal ~2x; Parquet gets zstd.
_IPC_OPTIONS = pa.ipc.IpcWriteOptions(compression="lz4")


class Journal:
    """One open Arrow IPC stream; becomes one Parquet file at rotation."""

    def __init__(self, base: Path, sch: pa.Schema, opened_at: float):
        self.base = base
        self.path = base.with_name(base.name + JOURNAL_SUFFIX)
        self.opened_at = opened_at
        self.rows = 0
        self.batches = 0
        self.bytes = 0
        self._file = os.fdopen(create_file(self.path), "wb")
        try:
            self._writer = pa.ipc.new_stream(self._file, sch, options=_IPC_OPTIONS)
            fsync_dir(self.path.parent)
        except BaseException:
            self.abandon()
            try:
                os.unlink(self.path)
            except OSError:
                pass
            raise

    def append(self, batch: pa.RecordBatch) -> None:
        self._writer.write_batch(batch)
        self._file.flush()
        os.fsync(self._file.fileno())
        self.rows += batch.num_rows
        self.batches += 1
        self.bytes = self._file.tell()

    def close(self) -> None:
        self._writer.close()  # end-of-stream marker
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()

    def abandon(self) -> None:
        """Drop the handles after a write error; what reached the disk stays for salvage."""
        try:
            self._file.close()
        except OSError:
            pass


def read_journal(path: Path) -> tuple[pa.Schema | None, list[pa.RecordBatch], bool]:
    """(schema, every complete batch, whether the stream ended cleanly)."""
    try:
        reader = pa.ipc.open_stream(pa.memory_map(str(path)))
    except (pa.ArrowException, OSError, ValueError):
        return None, [], False
    batches = []
    while True:
        try:
            batch = reader.read_next_batch()
            batch.validate(full=True)
        except StopIteration:
            return reader.schema, batches, True
        except (pa.ArrowException, OSError, ValueError):
            # a batch cut short by the crash (or garbage): keep what came before
            return reader.schema, batches, False
        batches.append(batch)


def parquet_path(journal: Path) -> Path:
    return journal.with_name(journal.name[: -len(JOURNAL_SUFFIX)] + ".parquet")


def write_parquet(path: Path, table: pa.Table, row_group_rows: int) -> int:
    """Write `table` to `path` via a temporary name, durably; return the file size."""
    tmp = path.with_name(path.name[: -len(".parquet")] + PARQUET_TMP_SUFFIX)

    def write(f) -> int:
        pq.write_table(table, f, row_group_size=row_group_rows, compression="zstd",
                       write_statistics=True)
        return f.tell()
    return write_via(tmp, path, write)


def journal_to_parquet(journal: Path, row_group_rows: int = ROW_GROUP_ROWS
                       ) -> tuple[Path, int, int, pa.Table] | None:
    """Convert a closed or abandoned journal to `<name>.parquet` and delete it.

    Returns (parquet path, rows, file size, the rows as a Table), or None, leaving
    the journal alone, if it holds no complete batch.
    """
    sch, batches, _ = read_journal(journal)
    if not batches:
        return None
    table = pa.Table.from_batches(batches, schema=sch)
    final = parquet_path(journal)
    size = write_parquet(final, table, row_group_rows)
    os.unlink(journal)
    fsync_dir(journal.parent)
    return final, table.num_rows, size, table
