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

import mmap
import os
from typing import Callable, Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from tracer.schema import schema
from tracer.sinks.durable_files import create_file, fsync_dir, write_via
from tracer.sinks.names import JOURNAL_SUFFIX, PARQUET_SUFFIX, PARQUET_TMP_SUFFIX
from tracer.sinks.trusted_dir import Dir

# Extra file metadata, so a salvaged journal can be credited to its run.
RUN_ID_KEY = "connscope.run_id"
HOST_KEY = "connscope.host"

# Row groups are sized for readers, not per flush: a quiet table flushed every
# 2 s would otherwise get thousands of tiny row groups a day. And for the
# writer's memory: a row group is held decoded until it is encoded (~170
# bytes a connects row), and 64k-row groups raised the tracer's peak RSS by
# 25-32 MB each time a minute's rows were compacted (BENCHMARKS.md section 28).
ROW_GROUP_ROWS = 1 << 14

# A journal rotates at 64 MiB by default; one far larger was not written by us
# and is not read back (recovery quarantines it instead).
JOURNAL_MAX_BYTES = 1 << 30

# lz4 costs little CPU and shrinks the journal ~2x; Parquet gets zstd.
# Arrow's thread pool is not used: for the tracer's batches of a few thousand
# rows its hand-offs cost more CPU than they spread (BENCHMARKS.md section 22),
# and the tracer's CPU is taken from the server it watches.
_IPC_OPTIONS = pa.ipc.IpcWriteOptions(compression="lz4", use_threads=False)
_IPC_READ = pa.ipc.IpcReadOptions(use_threads=False)


def parquet_options(sch: pa.Schema) -> dict:
    """How each column of a table of schema `sch` is encoded in Parquet.

    Dictionaries only for text: names, addresses and outcomes repeat, while
    times, ports and ids are mostly distinct, and a dictionary for them is
    built and then abandoned in every row group. Integers and times are
    delta-encoded (DELTA_BINARY_PACKED; DuckDB, pyarrow and polars read it,
    tests/unit/test_parquet_encoding.py): rows come in time order, so
    consecutive values differ little. The event tables are then 2.5-4x
    smaller and a third cheaper to encode (BENCHMARKS.md section 17), and
    every row is encoded twice (published, then compacted)."""
    text = [f.name for f in sch if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]
    delta = {f.name: "DELTA_BINARY_PACKED" for f in sch
             if pa.types.is_integer(f.type) or pa.types.is_timestamp(f.type)}
    return {"compression": "zstd", "write_statistics": True, "use_dictionary": text,
            "column_encoding": delta}


class Journal:
    """One open Arrow IPC stream in partition `part`; becomes one Parquet file at rotation."""

    def __init__(self, part: Dir, base: str, sch: pa.Schema, opened_at: float):
        self.part = part
        self.base = base
        self.name = base + JOURNAL_SUFFIX
        self.opened_at = opened_at
        self.rows = 0
        self.batches = 0
        self.bytes = 0
        self._file = os.fdopen(create_file(part.fd, self.name), "wb")
        try:
            self._writer = pa.ipc.new_stream(self._file, sch, options=_IPC_OPTIONS)
            fsync_dir(part.fd)
        except BaseException:
            self.abandon()
            try:
                part.unlink(self.name)
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


def read_journal(part: Dir, name: str, *, every_value: bool = True
                 ) -> tuple[pa.Schema | None, list[pa.RecordBatch], bool]:
    """(schema, every complete batch, whether the stream ended cleanly).

    Each batch is checked, every value of it (offsets, UTF-8) unless
    `every_value` is False: for the writer's own journal, written by this
    process moments ago into the recording's trusted directory, the check of
    its structure is enough, and the full one was a fifth of the CPU of
    turning rows into Parquet (BENCHMARKS.md section 22). Recovery reads
    the journals of other runs, and checks everything.

    Raises NotRegular for a journal that is not a regular file of sane size."""
    fd, st = part.open_regular(name, JOURNAL_MAX_BYTES)
    try:
        if st.st_size == 0:
            return None, [], False
        # mapped through our descriptor: what we checked is what we read
        data = pa.py_buffer(mmap.mmap(fd, 0, prot=mmap.PROT_READ))
    finally:
        os.close(fd)
    try:
        reader = pa.ipc.open_stream(pa.BufferReader(data), options=_IPC_READ)
    except (pa.ArrowException, OSError, ValueError):
        return None, [], False
    batches = []
    while True:
        try:
            batch = reader.read_next_batch()
            batch.validate(full=every_value)
        except StopIteration:
            return reader.schema, batches, True
        except (pa.ArrowException, OSError, ValueError):
            # a batch cut short by the crash (or garbage): keep what came before
            return reader.schema, batches, False
        batches.append(batch)


def foreign_columns(table: str, sch: pa.Schema) -> str | None:
    """Why `sch` is not the schema connscope writes for `table`, or None if it is."""
    want = schema(table)
    missing = [f.name for f in want if f.name not in sch.names]
    if missing:
        return f"no column {', '.join(missing)}"
    for f in want:
        got = sch.field(f.name).type
        if got != f.type:
            return f"column {f.name} is {got}, not {f.type}"
    extra = [n for n in sch.names if n not in want.names]
    if extra:
        return f"unknown column {', '.join(extra)}"
    return None


def parquet_name(journal: str) -> str:
    return journal[: -len(JOURNAL_SUFFIX)] + PARQUET_SUFFIX


def write_parquet(part: Dir, name: str, table: pa.Table, row_group_rows: int) -> int:
    """Write `table` to `name` in `part` via a temporary name, durably; return the file size."""
    return write_parquet_parts(part, name, table.schema, [table], row_group_rows)[1]


def write_parquet_parts(part: Dir, name: str, sch: pa.Schema, tables: Iterable[pa.Table],
                        row_group_rows: int, between: Callable[[], object] | None = None
                        ) -> tuple[int, int]:
    """Write the rows of `tables` (of schema `sch`, read one at a time, in
    order) to `name` in `part` via a temporary name, durably, holding no more
    than one table and a row group at once; row groups are `row_group_rows`
    rows but for the last. `between` is called after each write of whole row
    groups (a long write lets other work in). Returns (rows, file size)."""
    tmp = name[: -len(PARQUET_SUFFIX)] + PARQUET_TMP_SUFFIX

    def write(f) -> tuple[int, int]:
        rows = 0
        with pq.ParquetWriter(f, sch, **parquet_options(sch)) as w:
            pending: list[pa.Table] = []
            held = 0
            for t in tables:
                pending.append(t)
                held += t.num_rows
                rows += t.num_rows
                if held >= row_group_rows:
                    joined = pa.concat_tables(pending)
                    whole = held - held % row_group_rows
                    w.write_table(joined.slice(0, whole), row_group_size=row_group_rows)
                    pending, held = [joined.slice(whole)], held - whole
                    if between is not None:
                        between()
            if held or not rows:
                w.write_table(pa.concat_tables(pending) if pending else sch.empty_table(),
                              row_group_size=row_group_rows)
        return rows, f.tell()
    return write_via(part.fd, tmp, name, write)


def journal_to_parquet(part: Dir, journal: str, row_group_rows: int = ROW_GROUP_ROWS, *,
                       own: bool = False, read: tuple | None = None
                       ) -> tuple[str, int, int, pa.Table] | None:
    """Convert a closed or abandoned journal to `<name>.parquet` and delete it.
    `own`: the caller wrote it (read_journal's every_value). `read`: the
    (schema, batches) the caller has already read of it with read_journal
    (recovery, which looks at them first), so it is not read twice.

    Returns (parquet name, rows, file size, the rows as a Table), or None, leaving
    the journal alone, if it holds no complete batch.
    """
    sch, batches = read if read is not None else read_journal(
        part, journal, every_value=not own)[:2]
    if not batches:
        return None
    table = pa.Table.from_batches(batches, schema=sch)
    final = parquet_name(journal)
    size = write_parquet(part, final, table, row_group_rows)
    part.unlink(journal)
    fsync_dir(part.fd)
    return final, table.num_rows, size, table
