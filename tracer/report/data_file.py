"""One Parquet file of a recording, read as hostile input.

The directory may belong to someone else and every file in it may be
anything: a link to /dev/zero, a FIFO, a directory named like a file, bytes
that only look like Parquet, a valid file whose columns hold the wrong types
or values no connscope writes (timestamps near ±2^62, an infinite latency),
or a small file that decompresses to millions of rows. Each of these is a
`Skip` with a one-line reason, never an exception for the caller.

Memory is bounded: the file is opened without following links and must be a
regular file; its footer must promise no more than MAX_FILE_ROWS rows and
MAX_FILE_BYTES uncompressed; it is read in batches of BATCH_ROWS with only
the schema's columns, each batch checked and cast on its own, and the count
is enforced while reading (the footer may lie). `Budget` caps the rows all the
files of one report may hold together: the summary works on whole tables.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tracer.schema import SCHEMA_VERSION, TABLE_KEY, VERSION_KEY, schema
from tracer.trusted_fs import Trust

PARQUET_MAGIC = b"PAR1"
BATCH_ROWS = 65_536
# The writer rotates at 1M rows (plus at most one buffer of 256K): four times
# that is not a file connscope wrote.
MAX_FILE_ROWS = 4_000_000
MAX_FILE_BYTES = 2 << 30            # uncompressed, as the footer states it
MAX_DISK_BYTES = 1 << 30            # on disk; the writer rotates at 64 MiB
MAX_FOOTER_BYTES = 16 << 20         # ours are a few KB; the footer is read whole
MAX_TEXT = 4096                     # characters in one string value (a comm is 15 bytes)
# Timestamps a report can do arithmetic on and print: 1970 to 2200. Beyond,
# datetime overflows (year 10000) and differences overflow int64 (±2^62).
TS_MIN_US = 0
TS_MAX_US = 7_258_118_400_000_000   # 2200-01-01T00:00:00Z
# Counts, ports, pids, sizes: non-negative and exact in a float.
INT_MAX = 1 << 53
# Latencies, rates, hold times: finite, non-negative, below ~31 years in µs.
FLOAT_MAX = 1e15

# Columns report and replay group, sort or count by: a file without one is
# not read. Other columns a file lacks (an older connscope) are read as nulls.
# `pools` came with every column at once, so all of them.
KEY_COLUMNS = {
    "connects": ("family", "pid", "comm", "daddr", "dport", "outcome"),
    "accepts": ("family", "pid", "comm", "laddr", "lport"),
    "overflows": ("family", "laddr", "lport"),
    "listeners": ("family", "laddr", "lport"),
    "sockets": ("pid", "comm", "established", "syn_sent", "listen", "close_wait", "other"),
    "pools": tuple(f.name for f in schema("pools") if not f.nullable),
}

# What pyarrow raises on bytes it cannot make sense of (it is not consistent).
_ARROW_ERRORS = (pa.ArrowException, ValueError, OSError, TypeError, IndexError, KeyError,
                 OverflowError, EOFError)


class Skip(Exception):
    """Why one file is not read; becomes a problem line."""


# A recording being reported on may be anyone's: nothing in it is trusted
# (no directory is opened with these rules), and a file is read only if it
# is a regular one, in the report's words.
ANYONES = Trust(
    owners=frozenset, sticky_owners=frozenset, relative_ok=True, parent_mode=None,
    give_to_sudo_user=False, check_entries=False,
    file_error=lambda shown, reason: Skip(reason),
    says={
        "file_link": "a symbolic link; not followed",
        "file_dir": "a directory, not a file",
        "file_kind": "not a regular file (a FIFO, socket or device); not read",
        "file_size": "{size:,} bytes, more than the {cap:,} allowed",
        "file_grew": "more than the {cap:,} bytes allowed",
        "file_changed": "changed while it was opened; not read",
    })


# What the summary makes one Python object or more for: one per destination,
# listener or process (and per process and destination, for pool advice).
# Each costs about as much memory as KEY_COST rows (~2.7 KB against ~400 B,
# BENCHMARKS.md), so a file is charged for its distinct keys too: 5 million
# distinct destinations must not pass for 5 million ordinary rows. The
# charge is the largest count of any key set; for connects, the process and
# destination pair is at least as many as either alone.
SUMMARY_KEYS = {
    "connects": (("host", "pid", "comm", "daddr", "dport"),),
    "accepts": (("host", "netns", "laddr", "lport"),),
    "overflows": (("host", "netns", "laddr", "lport"),),
    "listeners": (("host", "netns", "laddr", "lport"),),
    "sockets": (("host", "pid", "comm"),),
}
KEY_COST = 8


@dataclass
class Budget:
    """Rows (plus KEY_COST per distinct key) every file of one report may add
    up to: the summary costs about 400 MB per million ordinary rows."""
    max_rows: int
    used_rows: int = 0

    def take(self, rows: int, what: str) -> None:
        if self.used_rows + rows > self.max_rows:
            raise Skip(f"its {what} would take the report past its limit of "
                       f"{self.max_rows:,} rows (--max-rows); not read. Report a narrower "
                       f"directory (one host, one date= folder) or raise --max-rows")
        self.used_rows += rows


def open_regular(path: Path, max_bytes: int | None = None):
    """A binary file object for `path`, which must be a regular file, not a link
    (tracer/trusted_fs.py: nothing else is opened, a FIFO never waited on)."""
    try:
        fd, _ = ANYONES.open_regular(path, max_bytes)
    except OSError as e:
        raise Skip(f"cannot read ({e.strerror or e})") from None
    return os.fdopen(fd, "rb")


def read_file(path: Path, table: str, budget: Budget) -> pa.Table:
    """The rows of one data file with exactly the current schema of `table`."""
    with open_regular(path, MAX_DISK_BYTES) as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            raise Skip("empty file")
        if f.read(4) != PARQUET_MAGIC:
            raise Skip("not a Parquet file (magic bytes not found)")
        if size >= 12:
            f.seek(size - 8)
            footer = int.from_bytes(f.read(4), "little")
            if footer > MAX_FOOTER_BYTES:
                raise Skip(f"a Parquet footer of {footer:,} bytes, more than the "
                           f"{MAX_FOOTER_BYTES:,} allowed; not read")
        f.seek(0)
        try:
            pf = pq.ParquetFile(f)
            meta = pf.schema_arrow.metadata or {}
            rows = pf.metadata.num_rows
            unpacked = sum(pf.metadata.row_group(i).total_byte_size
                           for i in range(pf.metadata.num_row_groups))
            names = set(pf.schema_arrow.names)
        except _ARROW_ERRORS:
            raise Skip(f"truncated or corrupt (no readable Parquet footer; {size} bytes)") from None
        _check_metadata(meta, table)
        if rows > MAX_FILE_ROWS:
            raise Skip(f"holds {rows:,} rows, more than the {MAX_FILE_ROWS:,} a connscope file "
                       f"ever has; not read")
        if unpacked > MAX_FILE_BYTES:
            raise Skip(f"expands to {unpacked:,} bytes, more than the {MAX_FILE_BYTES:,} "
                       f"allowed; not read")
        sch = schema(table)
        for required in ("ts", "host", "run_id", *KEY_COLUMNS.get(table, ())):
            if required not in names:
                raise Skip(f"no {required} column; not a connscope {table} file")
        wanted = [f.name for f in sch if f.name in names]
        if not rows:
            # no batch will be conformed: check the column types all the same
            # (every table has an empty file from the start of a recording)
            try:
                conform(pa.RecordBatch.from_pylist([], schema=pf.schema_arrow), table)
            except _ARROW_ERRORS as e:
                raise Skip(f"corrupt ({first_line(e)})") from None
        budget.take(rows, f"{rows:,} rows")   # the footer's count, enforced below: it may lie
        try:
            out = pa.Table.from_batches(list(_batches(pf, wanted, rows, table)), schema=sch)
        except BaseException:
            budget.used_rows -= rows
            raise
    keys = max((out.group_by(list(k), use_threads=False).aggregate([]).num_rows
                for k in SUMMARY_KEYS.get(table, ())), default=0)
    try:
        budget.take(KEY_COST * keys, f"{keys:,} distinct destinations, listeners or "
                                     f"processes (each counts as {KEY_COST} rows)")
    except Skip:
        budget.used_rows -= rows
        raise
    return out


def _batches(pf: pq.ParquetFile, columns: list[str], rows: int, table: str):
    n = 0
    try:
        for raw in pf.iter_batches(batch_size=BATCH_ROWS, columns=columns, use_threads=True):
            n += raw.num_rows
            if n > rows:
                raise Skip(f"holds more rows than its footer says ({rows:,}); not read")
            yield conform(raw, table)
    except _ARROW_ERRORS as e:
        raise Skip(f"corrupt ({first_line(e)})") from None


def _check_metadata(meta: dict, table: str) -> None:
    version = meta.get(VERSION_KEY.encode())
    if version is None:
        raise Skip(f"not a connscope file (no {VERSION_KEY} metadata)")
    version = version.decode(errors="replace")
    if not (version.isascii() and version.isdigit()) or len(version) > 9:
        raise Skip(f"unknown schema version {version[:40]!r}")
    if int(version) > int(SCHEMA_VERSION):
        raise Skip(f"schema version {version} is newer than this connscope "
                   f"({SCHEMA_VERSION}); read it with a newer connscope")
    holds = meta.get(TABLE_KEY.encode(), table.encode()).decode(errors="replace")
    if holds != table:
        raise Skip(f"holds {holds[:40]!r} rows but lies in the {table} folder"
                   if len(holds) > 40 or not holds.isprintable()
                   else f"holds {holds} rows but lies in the {table} folder")


def conform(raw: pa.RecordBatch, table: str) -> pa.RecordBatch:
    """`raw` with exactly the current schema: cast by name, missing columns
    null; Skip if a value is of a type or range no connscope writes."""
    sch = schema(table)
    cols = []
    for f in sch:
        i = raw.schema.get_field_index(f.name)
        if i < 0:
            cols.append(pa.nulls(raw.num_rows, f.type))
            continue
        col = raw.column(i)
        if col.type != f.type:
            try:
                col = col.cast(f.type)
            except _ARROW_ERRORS:
                raise Skip(f"column {f.name} is {col.type}, cannot be read as {f.type}") from None
        _check_column(f, col)
        cols.append(col)
    return pa.RecordBatch.from_arrays(cols, schema=sch)


def _check_column(f: pa.Field, col: pa.Array) -> None:
    try:
        col.validate(full=True)         # e.g. strings that are not UTF-8
    except _ARROW_ERRORS as e:
        raise Skip(f"column {f.name} holds invalid values ({first_line(e)})") from None
    if col.null_count and not f.nullable:
        raise Skip(f"column {f.name} has empty (null) values")
    if not len(col) or col.null_count == len(col):
        return
    t = f.type
    if pa.types.is_timestamp(t):
        lo, hi = _min_max(col.cast(pa.int64()))
        if lo < TS_MIN_US or hi >= TS_MAX_US:
            raise Skip(f"column {f.name} holds a time outside 1970..2199 "
                       f"({lo if lo < TS_MIN_US else hi} µs)")
    elif pa.types.is_floating(t):
        if not pc.all(pc.is_finite(col)).as_py():
            raise Skip(f"column {f.name} holds nan or infinity")
        lo, hi = _min_max(col)
        if lo < 0 or hi > FLOAT_MAX:
            raise Skip(f"column {f.name} holds {lo if lo < 0 else hi}, outside 0..{FLOAT_MAX:g}")
    elif pa.types.is_integer(t):
        lo, hi = _min_max(col)
        if lo < 0 or hi > INT_MAX:
            raise Skip(f"column {f.name} holds {lo if lo < 0 else hi}, outside 0..2^53")
    elif pa.types.is_string(t):
        longest = pc.max(pc.utf8_length(col)).as_py()
        if longest is not None and longest > MAX_TEXT:
            raise Skip(f"column {f.name} holds a value of {longest:,} characters")


def _min_max(col: pa.Array) -> tuple:
    mm = pc.min_max(col)
    return mm["min"].as_py(), mm["max"].as_py()


def first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__
