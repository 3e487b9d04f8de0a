"""One table of a recording: rows in, rotating journals and Parquet files out.

`rows_to_batch` turns what the decoders hand over (dicts, columns or Arrow)
into a batch of the one schema; `TableWriter` buffers batches, journals them
per UTC date partition and rotates the journals into Parquet
(tracer/sinks/journal.py). `Recording` (parquet_writer.py) runs one per table.

Live readers (DuckDB on a recording still being written) see rows within
seconds: a journal is published as a small Parquet file every
`publish_age_s`; at rotation (`rotate_age_s`, rows, bytes) the small files of
a partition are compacted into one, `<prefix>-<first>-<last>.parquet`, which
is published before they are deleted (a reader may see both for the moment in
between; a crash there is undone by recovery and the report reader), so the
file count stays at one per rotation plus the small files of the last one.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from datetime import date, datetime, timedelta, timezone
from typing import Callable, Iterable, Iterator, Mapping, Sequence, Union

import pyarrow as pa
import pyarrow.parquet as pq

from tracer.fastpath import native
from tracer.schema import schema
from tracer.sinks.journal import (
    HOST_KEY,
    ROW_GROUP_ROWS,
    RUN_ID_KEY,
    Journal,
    journal_to_parquet,
    write_parquet,
    write_parquet_parts,
)
from tracer.sinks.names import (
    JOURNAL_SUFFIX,
    PARQUET_SUFFIX,
    PARQUET_TMP_SUFFIX,
    EMPTY_SEQ,
    compacted_name,
    data_seqs,
    file_prefix,
    safe_name,
)
from tracer.sinks.trusted_dir import Dir

_US_PER_DAY = 86_400_000_000
_EPOCH = date(1970, 1, 1)

Rows = Union[Sequence[Mapping], Mapping[str, Sequence], pa.RecordBatch, pa.Table]


# ---------------------------------------------------------------- rows to Arrow

def rows_to_batch(table: str, rows: Rows, *, host: str, run_id: str) -> pa.RecordBatch:
    """Convert rows of `table` to one RecordBatch with the recording schema.

    `rows` is a list of dicts, a dict of columns, or a RecordBatch/Table. Missing
    nullable columns become null; `host` and `run_id` are filled in where absent.
    `ts` is int microseconds since the epoch (UTC) or a datetime (naive = UTC).
    Raises ValueError for unknown columns or a missing required value.
    """
    sch = schema(table)
    if isinstance(rows, (pa.RecordBatch, pa.Table)):
        _check_names(table, rows.schema.names)
        n = rows.num_rows
        cols = []
        for f in sch:
            if f.name in rows.schema.names:
                col = rows.column(f.name)
                if isinstance(col, pa.ChunkedArray):
                    col = col.combine_chunks()
                cols.append(col if col.type == f.type else col.cast(f.type))
            else:
                cols.append(pa.nulls(n, f.type))
        batch = pa.RecordBatch.from_arrays(cols, schema=sch)
    elif isinstance(rows, Mapping):
        _check_names(table, rows.keys())
        lengths = {len(v) for v in rows.values()}
        if len(lengths) > 1:
            raise ValueError(f"{table}: columns have different lengths {sorted(lengths)}")
        n = lengths.pop() if lengths else 0
        batch = pa.RecordBatch.from_arrays(
            [_column(rows[f.name], f.type) if f.name in rows else pa.nulls(n, f.type)
             for f in sch],
            schema=sch)
    else:
        rows = list(rows)
        _check_names(table, set().union(*rows) if rows else ())
        batch = pa.RecordBatch.from_pylist(rows, schema=sch)

    batch = _fill_constant(batch, "host", host)
    batch = _fill_constant(batch, "run_id", run_id)
    for i, f in enumerate(sch):
        missing = batch.column(i).null_count
        if missing and not f.nullable:
            raise ValueError(f"{table}.{f.name} is required but {missing} of "
                             f"{batch.num_rows} rows have no value")
    return batch


def columns_of_rows(table: str, fields: Sequence[str], rows: list) -> dict:
    """Rows of `table` as tuples in `fields` order (the recorder's event
    rows) turned into {field: column}, for rows_to_batch. The compiled path
    (tracer/_fastpath.c arrow_columns) writes each column's Arrow buffers
    straight from the tuples, a tenth of pa.array's time on Python lists;
    pa.array stays the reference, and does every column the compiled path
    leaves to it (a value of another type, out of range; and all of them
    without it). tests/unit/test_arrow_columns.py holds both to the same
    arrays."""
    sch = schema(table)
    types = [sch.field(f).type for f in fields]
    built = native.arrow_columns(rows, "".join(_KIND.get(t, "?") for t in types)) \
        if native is not None and all(t in _KIND for t in types) else [None] * len(fields)
    out = {}
    for i, (name, type_, cols) in enumerate(zip(fields, types, built)):
        if cols is None:
            out[name] = pa.array([r[i] for r in rows], type=type_)
            continue
        nulls, valid, data, offsets = cols
        bufs = [pa.py_buffer(valid) if valid is not None else None]
        if offsets is not None:
            bufs.append(pa.py_buffer(offsets))
        bufs.append(pa.py_buffer(data))
        out[name] = pa.Array.from_buffers(type_, len(rows), bufs, null_count=nulls)
    return out


# Arrow types arrow_columns writes, by its letter for each
_KIND = {pa.int8(): "b", pa.int32(): "i", pa.int64(): "q", pa.float64(): "d", pa.string(): "s",
         pa.timestamp("us", tz="UTC"): "q"}


def _column(values, type_: pa.DataType) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if isinstance(values, pa.Array):
        return values if values.type == type_ else values.cast(type_)
    return pa.array(values, type=type_)


def _check_names(table: str, names: Iterable[str]) -> None:
    unknown = set(names) - set(schema(table).names)
    if unknown:
        raise ValueError(f"{table} has no column {', '.join(sorted(unknown))}")


def _fill_constant(batch: pa.RecordBatch, name: str, value: str) -> pa.RecordBatch:
    i = batch.schema.get_field_index(name)
    col = batch.column(i)
    if not col.null_count:
        return batch
    field = batch.schema.field(i)
    if col.null_count == len(col):
        filled = pa.repeat(pa.scalar(value, field.type), len(col))
    else:
        filled = pa.array([value if v is None else v for v in col.to_pylist()], field.type)
    return batch.set_column(i, field, filled)


def ts_bounds(table: pa.RecordBatch | pa.Table) -> tuple[int, int] | None:
    """(earliest, latest) `ts` of the rows, int microseconds since the epoch;
    None for no rows. Read from the column's buffers: the tracer process
    does without pyarrow.compute (~9 MB of RSS, BENCHMARKS.md section 20)."""
    col = table.column("ts")
    chunks = col.chunks if isinstance(col, pa.ChunkedArray) else [col]
    lo = hi = None
    for chunk in chunks:
        if not len(chunk):
            continue
        if chunk.null_count:
            values = [v for v in chunk.view(pa.int64()).to_pylist() if v is not None]
            if not values:
                continue
        else:
            data = chunk.buffers()[1]
            values = memoryview(data).cast("q")[chunk.offset:chunk.offset + len(chunk)]
        a, b = min(values), max(values)
        lo = a if lo is None or a < lo else lo
        hi = b if hi is None or b > hi else hi
    return None if lo is None else (lo, hi)


def _by_day(table: pa.Table) -> list[tuple[int, pa.Table]]:
    """The rows of `table` by UTC day (days since 1970-01-01), in day order.
    One day, every flush but one over midnight, is known from the ts
    bounds alone; only rows of several days import pyarrow.compute to be
    split, which the tracer process otherwise does without."""
    bounds = ts_bounds(table)
    if bounds is None:
        return []
    lo, hi = bounds[0] // _US_PER_DAY, bounds[1] // _US_PER_DAY
    if lo == hi:
        return [(lo, table)]
    import pyarrow.compute as pc

    us = table.column("ts").cast(pa.int64())
    # floor division so a (nonsensical) pre-1970 ts still lands on a real day
    days = pc.floor(pc.divide(pc.cast(us, pa.float64()), float(_US_PER_DAY))).cast(pa.int64())
    return [(d, table.filter(pc.equal(days, d))) for d in sorted(pc.unique(days).to_pylist())]


def _day_name(day: int) -> str:
    return (_EPOCH + timedelta(days=day)).isoformat()

# ---------------------------------------------------------------- one table

# (at 30,000 connections/s: a flush about every half second, a small file a
# second; 64k-row pieces, the row group size, held the writer's peak RSS
# 25-30 MB above its steady state; BENCHMARKS.md section 16)
FLUSH_ROWS = 1 << 14
PUBLISH_ROWS = 1 << 15


# Compaction reads the small files back COMPACT_READ_ROWS rows at a time
# (it read a small file's whole row group, tens of thousands of rows).
COMPACT_READ_ROWS = 1 << 12


def _pieces(part: Dir, name: str, rows: int) -> Iterator[pa.Table]:
    """The rows of one of our Parquet files, read `rows` at a time."""
    fd, _ = part.open_regular(name, 1 << 40)
    with os.fdopen(fd, "rb") as f:
        pf = pq.ParquetFile(f)
        sch = pf.schema_arrow
        # (one thread: Arrow's pool cost more CPU than it spread, journal.py)
        for batch in pf.iter_batches(batch_size=rows, use_threads=False):
            yield pa.Table.from_batches([batch], sch)


class TableWriter:
    """Buffers the rows of one table and writes them as rotating Parquet files.

    `write()` only converts and buffers (it never touches the disk); `flush()`
    appends the buffer to the journals, one batch per date partition, fsynced;
    `tick()` flushes when the oldest buffered row is `flush_interval_s` old and
    rotates journals older than `rotate_age_s`. Rotation also happens after
    `rotate_rows` rows or `rotate_bytes` journal bytes. Storage errors propagate
    as OSError after the writer has put itself back in a state where the next
    flush can try again.
    """

    def __init__(self, root: Dir, table: str, *, host: str, run_id: str, run_start: datetime,
                 flush_interval_s: float = 2.0, rotate_rows: int = 1_000_000,
                 rotate_bytes: int = 64 << 20, rotate_age_s: float = 60.0,
                 max_buffer_rows: int = 1 << 18, row_group_rows: int = ROW_GROUP_ROWS,
                 flush_rows: int = FLUSH_ROWS, publish_rows: int = PUBLISH_ROWS,
                 clock: Callable[[], float] = time.monotonic,
                 on_file: Callable[[str, str, str, int, int], None] | None = None,
                 publish_age_s: float | None = None,
                 on_compacted: Callable[[str, str, list[str]], None] | None = None,
                 on_busy: Callable[[], object] | None = None,
                 run_token: str = ""):
        self.root = root          # the recording directory, held open by Recording
        self.table = table
        self.schema = schema(table)
        self.host = host
        self.run_id = run_id
        self.flush_interval_s = flush_interval_s
        self.rotate_rows = rotate_rows
        self.rotate_bytes = rotate_bytes
        self.rotate_age_s = rotate_age_s
        self.max_buffer_rows = max_buffer_rows
        self.row_group_rows = row_group_rows
        self.compact_read_rows = min(row_group_rows, COMPACT_READ_ROWS)
        # Rows buffered, and rows journaled, that are flushed or published
        # whatever their age: each becomes Arrow and then Parquet in one piece,
        # so these sizes, not the rate, set the writer's peak memory
        self.flush_rows = flush_rows
        self.publish_rows = publish_rows
        self._clock = clock
        self._on_file = on_file
        self._on_compacted = on_compacted
        # called between the row groups of a compaction (a minute's rows at
        # a high rate: seconds of work holding this writer's I/O lock, on the
        # thread that flushes every table), so flushes that fall due go on
        self._on_busy = on_busy
        # a journal older than this is published as a small file (None: only at rotation)
        self.publish_age_s = (rotate_age_s if publish_age_s is None
                              else min(publish_age_s, rotate_age_s))
        self.run_start = run_start
        self._file_prefix = file_prefix(host, run_start, run_token)
        self._journal_schema = self.schema.with_metadata(
            {**self.schema.metadata, RUN_ID_KEY.encode(): run_id.encode(),
             HOST_KEY.encode(): host.encode()})

        self._lock = threading.Lock()      # guards the buffer (write() vs flush())
        self._io_lock = threading.RLock()  # one flush/rotate/close at a time
        self._buffer: list[pa.RecordBatch] = []
        self._buffered = 0
        self._buffer_since: float | None = None
        self._journals: dict[int, Journal] = {}  # by UTC day number
        self._parts: dict[str, Dir] = {}          # open date= partitions, by folder name
        self._pending: list[tuple[Dir, str]] = []  # journals abandoned after an error
        self._seq = 0
        self._closed = False
        # small files published since the last compaction, per partition folder:
        # [(name, rows, size)], and when the first of them was published
        self._groups: dict[str, list[tuple[str, int, int]]] = {}
        self._group_since: dict[str, float] = {}

        self.rows = 0            # rows given to write(), including any dropped
        self.rows_finalized = 0  # rows in finalized Parquet files
        self.dropped_rows = 0    # rows lost to storage errors or a full buffer
        self.files: list[str] = []   # "<date=...>/<name>" of each finalized file
        self.bytes_finalized = 0

    # -- buffering

    def write(self, rows: Rows) -> int:
        """Buffer rows (see `rows_to_batch`); return how many were accepted."""
        if self._closed:
            raise RuntimeError(f"{self.table}: write after close")
        batch = rows_to_batch(self.table, rows, host=self.host, run_id=self.run_id)
        n = batch.num_rows
        if not n:
            return 0
        with self._lock:
            self.rows += n
            if self._buffered + n > self.max_buffer_rows:
                # nobody is flushing (or the disk refuses): bound memory, count the loss
                self.dropped_rows += n
                return 0
            self._buffer.append(batch)
            self._buffered += n
            if self._buffer_since is None:
                self._buffer_since = self._clock()
        return n

    @property
    def buffered_rows(self) -> int:
        return self._buffered

    @property
    def journal_bytes(self) -> int:
        return sum(j.bytes for j in list(self._journals.values()))

    def flush_due(self, now: float | None = None) -> bool:
        since = self._buffer_since
        if since is None:
            return False
        if self._buffered >= self.flush_rows:
            return True     # memory, not time, is the limit
        now = self._clock() if now is None else now
        return now - since >= self.flush_interval_s

    # -- disk

    def flush(self) -> bool:
        """Append the buffer to the journals and fsync; return whether anything was written."""
        with self._io_lock:
            with self._lock:
                batches, self._buffer = self._buffer, []
                self._buffered, self._buffer_since = 0, None
            try:
                wrote = self._finalize_pending()
            except OSError:
                # the disk refuses: these rows are lost, the next flush tries again
                with self._lock:
                    self.dropped_rows += sum(b.num_rows for b in batches)
                raise
            if batches:
                self._append(pa.Table.from_batches(batches, schema=self.schema))
                wrote = True
            for day, j in list(self._journals.items()):
                if j.rows >= self.rotate_rows or j.bytes >= self.rotate_bytes:
                    self._rotate(day)
            return wrote

    def tick(self, flush: bool = False) -> bool:
        """Flush if due (or if `flush`), rotate journals old enough; return whether anything was written."""
        with self._io_lock:
            now = self._clock()
            due = flush or self.flush_due(now) or self._pending
            wrote = self.flush() if due else False
            for day, j in list(self._journals.items()):
                # Published by age for live readers, and by size: the journal is
                # read whole to become Parquet, so its size is our peak RSS
                if now - j.opened_at >= self.publish_age_s or j.rows >= self.publish_rows:
                    self._rotate(day)
                    wrote = True
            self._compact_due(now)
            return wrote

    def rotate(self) -> bool:
        """Finalize every open journal now and compact the small files; return
        whether any journal was finalized."""
        with self._io_lock:
            days = list(self._journals)
            for day in days:
                self._rotate(day)
            self._compact_due(self._clock(), force=True)
            return bool(days)

    def close(self) -> None:
        """Flush and finalize everything. Idempotent; storage errors propagate (once)."""
        with self._io_lock:
            if self._closed:
                return
            self._closed = True
            try:
                self.flush()
                self.rotate()
            finally:
                self._groups.clear()
                # whatever is still open is left on disk for `recover`
                for j in self._journals.values():
                    j.abandon()
                self._journals.clear()
                for part in self._parts.values():
                    part.close()
                self._parts.clear()

    def _append(self, table: pa.Table) -> None:
        done = 0
        try:
            for day, part in _by_day(table):
                j = self._journals.get(day) or self._open(day)
                j.append(part.combine_chunks().to_batches(max_chunksize=part.num_rows or 1)[0])
                done += part.num_rows
        except OSError:
            with self._lock:
                self.dropped_rows += table.num_rows - done
            self._abandon_all()
            raise

    def _part(self, folder: str) -> Dir:
        part = self._parts.get(folder)
        if part is None:
            self._close_idle_parts()
            part = self.root.walk(self.table, folder, create=True)
            self._parts[folder] = part
        return part

    def _close_idle_parts(self) -> None:
        """Close partitions no open or pending journal is in (one a day would pile up)."""
        used = {id(j.part) for j in self._journals.values()}
        used |= {id(part) for part, _ in self._pending}
        for folder, part in list(self._parts.items()):
            if id(part) not in used:
                part.close()
                del self._parts[folder]

    def _open(self, day: int) -> Journal:
        part = self._part(f"date={_day_name(day)}")
        j = Journal(part, self._free_base(part), self._journal_schema, self._clock())
        self._journals[day] = j
        return j

    def _free_base(self, part: Dir) -> str:
        """The next `<prefix>-<seq>` not taken in `part`: names can repeat when
        two runs start in the same second, and a compacted file of the other run
        takes its whole range."""
        taken = set()
        for name in part.names():
            for suffix in (PARQUET_SUFFIX, JOURNAL_SUFFIX, PARQUET_TMP_SUFFIX):
                seqs = data_seqs(name, suffix)
                if seqs and seqs[0] == self._file_prefix:
                    taken.update(range(seqs[1], min(seqs[2], seqs[1] + 1_000_000) + 1))
        while True:
            self._seq += 1     # from 1: EMPTY_SEQ (0) is the empty file's
            if self._seq not in taken:
                return f"{self._file_prefix}-{self._seq:04d}"

    def _rotate(self, day: int) -> None:
        j = self._journals.pop(day)
        try:
            j.close()
        except OSError:
            j.abandon()
            self._pending.append((j.part, j.name))
            raise
        self._pending.append((j.part, j.name))
        self._finalize_pending()

    def _abandon_all(self) -> None:
        for j in self._journals.values():
            j.abandon()
            self._pending.append((j.part, j.name))
        self._journals.clear()

    def _finalize_pending(self) -> bool:
        wrote = False
        while self._pending:
            part, name = self._pending[0]
            if not part.exists(name):
                self._pending.pop(0)
                continue
            result = journal_to_parquet(part, name, self.row_group_rows, own=True)
            self._pending.pop(0)
            if result is None:
                # not one complete batch reached the disk: nothing to keep
                part.unlink(name)
                continue
            final, rows, size, _ = result
            self.rows_finalized += rows
            folder = part.path.rsplit("/", 1)[-1]
            self.files.append(f"{folder}/{final}")
            self.bytes_finalized += size
            wrote = True
            self._groups.setdefault(folder, []).append((final, rows, size))
            self._group_since.setdefault(folder, self._clock())
            if self._on_file:
                self._on_file(self.table, folder, final, rows, size)
        return wrote

    # -- compaction: the small files published for live readers, merged at rotation

    def _compact_due(self, now: float, force: bool = False) -> None:
        for folder, group in list(self._groups.items()):
            rows = sum(r for _, r, _ in group)
            size = sum(b for *_, b in group)
            if not (force or now - self._group_since[folder] >= self.rotate_age_s
                    or rows >= self.rotate_rows or size >= self.rotate_bytes):
                continue
            del self._groups[folder]
            del self._group_since[folder]
            if len(group) > 1:
                self._compact(folder, group)

    def _compact(self, folder: str, group: list[tuple[str, int, int]]) -> None:
        """Merge the small files of `group` into one compacted file, published
        before they are deleted. On a storage error they are left as they are
        (their rows are safe; only the file count grows)."""
        seqs = [data_seqs(name) for name, _, _ in group]
        prefix = seqs[0][0]
        first, last = min(s[1] for s in seqs), max(s[2] for s in seqs)
        target = compacted_name(prefix, first, last)
        names = {name for name, _, _ in group}
        with self.root.walk(self.table, folder) as part:
            for other in part.names():
                o = data_seqs(other)
                # another run's file inside our range (two runs started in the same
                # second): compacting would hide it, so the small files stay
                if other == target or (o and o[0] == prefix and other not in names
                                       and o[1] <= last and o[2] >= first):
                    return
            # A few thousand rows in memory at a time (COMPACT_READ_ROWS): the
            # group can hold a minute of rows (rotate_rows), which read whole
            # was the tracer's peak RSS. ParquetFile, not read_table: the
            # dataset layer read_table goes through maps ~50 MB more of
            # Arrow's libraries into the process.
            # (the small files are this writer's journals, of its journal schema)
            rows, size = write_parquet_parts(
                part, target, self._journal_schema,
                itertools.chain.from_iterable(_pieces(part, n, self.compact_read_rows)
                                              for n in sorted(names)),
                self.row_group_rows, between=self._on_busy)
            for name in names:
                part.unlink(name)
            part.fsync()
        old = {f"{folder}/{name}" for name in names}
        self.files = [f for f in self.files if f not in old] + [f"{folder}/{target}"]
        self.bytes_finalized += size - sum(b for *_, b in group)
        if self._on_compacted:
            self._on_compacted(self.table, folder, sorted(names))
        if self._on_file:
            self._on_file(self.table, folder, target, rows, size)

    def write_empty(self) -> str:
        """Write an empty file of this table (schema only) in the partition of
        the run's start, so that queries find a file; return its folder/name."""
        with self._io_lock:
            folder = f"date={self.run_start.astimezone(timezone.utc):%Y-%m-%d}"
            with self.root.walk(self.table, folder, create=True) as part:
                # sequence 0, which no journal gets: `--max-size` leaves it alone
                name = f"{self._file_prefix}-{EMPTY_SEQ:04d}{PARQUET_SUFFIX}"
                if part.lstat(name) is not None:
                    return f"{folder}/{name}"   # a run of the same second made it
                write_parquet(part, name, self.schema.empty_table(), self.row_group_rows)
            self.files.append(f"{folder}/{name}")
            return f"{folder}/{name}"

