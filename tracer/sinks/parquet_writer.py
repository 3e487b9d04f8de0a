"""Streaming Parquet recording: one writer per table, rotation, crash safety, disk limits.

Layout (SPEC.md "Parquet recordings"):

    DIR/<table>/date=YYYY-MM-DD/<host>-<run start>-<seq>.parquet
    DIR/runs/<run_id>.json

One TableWriter per table (tracer/sinks/table_writer.py) buffers rows in
memory and flushes them every `flush_interval_s` (default 2 s) to a journal,
one fsynced Arrow IPC batch per flush (tracer/sinks/journal.py);
rotation (rows, bytes, age; default 1M rows, 64 MiB, 60 s) turns the journal
into a Parquet file under its final name. Readers never see a partial file.

Crash bound: a recorder killed with kill -9 (or a power cut) loses only the
rows not yet flushed, i.e. at most one flush interval plus one tick of the
caller or of the background flusher. The next start (`recover`, run by every
`Recording`) turns the journals left behind into Parquet and quarantines what
cannot be read (tracer/sinks/recovery.py).

Partitioning follows each row's own `ts`, so `date=` always agrees with `ts`
even for rows that arrive just after midnight.

Live readers: every `publish_age_s` (default 5 s) the journal is published as
a small Parquet file, so DuckDB on a recording being written sees rows within
about 10 s (one collector interval, one flush, one publish); at rotation the
small files of a partition are compacted into one (table_writer.py).

Every table has a file from the moment the recording starts: a table without
rows has an empty file with its schema (`<prefix>-0000.parquet`), so a query
on it returns nothing instead of failing with "No files found".

Disk full or unwritable: the Recording stops writing, says why in
`paused_reason`, counts the rows it drops and retries on every flush; files
already finalized are never touched.

DIR is opened once, as a directory that only root or the sudo user can change
(tracer/sinks/trusted_dir.py), and everything in it is reached through that
descriptor: nothing another user plants in or around DIR is followed.
"""

from __future__ import annotations

import errno
import fcntl
import os
import secrets
import socket
import stat
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Mapping

from tracer import __version__
from tracer.sinks.durable_files import FILE_MODE, own
from tracer.sinks.manifest import iso_utc, new_manifest, write_manifest
from tracer.sinks.names import LOCK_FILE, RUNS_DIR, manifest_name
from tracer.sinks.trusted_dir import (
    O_READ,
    Dir,
    UnsafeDirectory,
    kind,
    open_trusted,
    trusted_owners,
    who,
)

# Everything that needs pyarrow (schema, recovery, table_writer; ~0.1 s to
# import) is imported where it is used, so that the errors and the directory
# check cost `connscope record` nothing before its probes are attached.

__all__ = ["Recording", "RecordingBusy", "RecordingError", "RecordingIncomplete",
           "TableWriter", "check_directory", "recover", "rows_to_batch"]


def __getattr__(name: str):
    if name in ("TableWriter", "rows_to_batch"):   # re-exported from table_writer
        from tracer.sinks import table_writer

        return getattr(table_writer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")



class RecordingError(Exception):
    """A recording cannot start or could not be completed; the message is one line."""


class RecordingBusy(RecordingError):
    pass


class RecordingIncomplete(RecordingError):
    pass


# ---------------------------------------------------------------- directory lock, recovery

def _open_lock(root: Dir, flags: int) -> int:
    """Open DIR/.connscope.lock without following a link or waiting on a FIFO,
    and only if it is a regular file with one name that root or the sudo user
    owns: anything else is refused, never opened for writing, chmod-ed,
    chown-ed or truncated. Refusing (rather than removing what is there) keeps
    connscope from deleting what it did not make; the message says what to do."""
    shown = root.child(LOCK_FILE)
    try:
        fd = os.open(LOCK_FILE, flags | O_READ, FILE_MODE, dir_fd=root.fd)
    except OSError as e:
        # a link (O_NOFOLLOW), a directory (O_CREAT), a socket: said below, as refused
        if e.errno not in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
            raise
        fd = -1
        st = os.stat(LOCK_FILE, dir_fd=root.fd, follow_symlinks=False)
    else:
        st = os.fstat(fd)
    problem = None
    if not stat.S_ISREG(st.st_mode):
        problem = f"is {kind(st.st_mode)}"
    elif st.st_nlink != 1:
        problem = f"has {st.st_nlink} names (a hard link to another file)"
    elif st.st_uid not in trusted_owners():
        problem = f"is owned by {who(st.st_uid)}"
    if problem:
        if fd >= 0:
            os.close(fd)
        raise UnsafeDirectory(f"{shown} {problem}, not a lock file connscope made: "
                              f"remove it, or choose another directory")
    return fd


def _lock_directory(root: Dir) -> int:
    # held read-only: an fd open for writing would stop a remount read-only, and
    # flock does not need one
    fd = _open_lock(root, os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
        holder = holder if holder.isdigit() else "unknown"
        os.close(fd)
        raise RecordingBusy(f"{root.path} is being recorded by another connscope "
                            f"(pid {holder}); choose another directory") from None
    try:
        st = os.fstat(fd)
        if stat.S_IMODE(st.st_mode) != FILE_MODE:
            os.fchmod(fd, FILE_MODE)
        own(fd)
        # the pid, for the message above; written through a second descriptor
        # of the same file (checked to be the one we locked)
        wfd = _open_lock(root, os.O_WRONLY)
        try:
            w = os.fstat(wfd)
            if (w.st_dev, w.st_ino) != (st.st_dev, st.st_ino):
                raise UnsafeDirectory(f"{root.child(LOCK_FILE)} was replaced while "
                                      f"connscope locked it; try again")
            os.ftruncate(wfd, 0)
            os.write(wfd, f"{os.getpid()}\n".encode())
        finally:
            os.close(wfd)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _unlock_directory(fd: int) -> None:
    os.close(fd)  # closing the only descriptor releases the flock


def open_directory(directory, *, create: bool) -> Dir:
    """DIR as a trusted directory descriptor, or RecordingError saying why not."""
    try:
        return open_trusted(directory, create=create)
    except UnsafeDirectory as e:
        raise RecordingError(f"cannot record to {directory}: {e}") from None
    except OSError as e:
        if isinstance(e, FileNotFoundError) and not create:
            raise   # nothing recorded there: recover() has nothing to do
        raise RecordingError(f"cannot write to {directory}: {e.strerror or e}") from None


def _locked(root: Dir, what: str) -> int:
    try:
        return _lock_directory(root)
    except UnsafeDirectory as e:
        raise RecordingError(f"cannot record to {root.path}: {e}") from None
    except OSError as e:
        raise RecordingError(f"{what} {root.path}: {e.strerror or e}") from None


def check_directory(directory) -> bool:
    """Raise the RecordingError that Recording(directory) would raise for a
    directory it cannot write to or that another connscope is recording to,
    without opening a recording (nor importing pyarrow), so that `record` can
    fail fast before loading its probes and open the recording after.

    Returns whether a crashed run left files that opening it will recover.
    """
    with open_directory(directory, create=True) as root:
        fd = _locked(root, "cannot write to")
        try:
            from tracer.sinks.recovery import leftovers

            return leftovers(root)
        except UnsafeDirectory as e:
            raise RecordingError(f"cannot record to {directory}: {e}") from None
        finally:
            _unlock_directory(fd)


def recover(directory) -> list[str]:
    """Finalize or quarantine what a crashed recorder left in `directory`.

    Returns one human-readable line per file handled. Raises RecordingBusy if a
    recorder is writing to `directory` right now, RecordingError if the
    directory cannot be written.
    """
    try:
        root = open_directory(directory, create=False)
    except FileNotFoundError:
        return []
    with root:
        fd = _locked(root, "cannot recover")
        from tracer.sinks.recovery import recover_locked

        try:
            return recover_locked(root)
        except UnsafeDirectory as e:
            raise RecordingError(f"cannot recover {directory}: {e}") from None
        except OSError as e:
            raise RecordingError(f"cannot recover {directory}: {e.strerror or e}") from None
        finally:
            _unlock_directory(fd)


# ---------------------------------------------------------------- a whole recording

_STORAGE_WORDS = {
    errno.ENOSPC: "disk full on",
    errno.EDQUOT: "disk quota exceeded on",
    errno.EROFS: "read-only file system at",
    errno.EACCES: "permission denied on",
    errno.EPERM: "permission denied on",
}


class Recording:
    """All tables of one recording run in DIR, plus its manifest.

    Call `write(table, rows)` as rows arrive; `write` flushes when due unless
    `background_flush=True`, in which case a thread calls `tick()`. Call
    `tick()` at least every second or so when no rows arrive, and `close()`
    at the end (or use `with`).

    Rows buffered but not yet flushed are what a kill -9 loses: at most
    `flush_interval_s` plus one tick (see the module docstring).
    """

    def __init__(self, directory, *, host: str | None = None, run_id: str | None = None,
                 backend: str = "unknown", version: str = __version__,
                 options: Mapping | None = None, start: datetime | None = None, flush_interval_s: float = 2.0,
                 rotate_rows: int = 1_000_000, rotate_bytes: int = 64 << 20,
                 rotate_age_s: float = 60.0, publish_age_s: float = 5.0,
                 max_bytes: int | None = None,
                 max_buffer_rows: int = 1 << 18,
                 clock: Callable[[], float] = time.monotonic,
                 background_flush: bool = False):
        from tracer.schema import SCHEMA_VERSION, TABLES
        from tracer.sinks.recovery import recover_locked
        from tracer.sinks.names import file_prefix, new_run_token
        from tracer.sinks.table_writer import TableWriter

        self.directory = Path(directory)
        self.host = host or socket.gethostname()
        start = start or datetime.now(timezone.utc)
        if start.tzinfo is None:
            start = start.replace(tzinfo=timezone.utc)  # naive means UTC, as for ts
        self.start = start.astimezone(timezone.utc)
        # in every data file's name: same-named hosts starting in the same
        # second still write different names (tracer/sinks/names.py)
        self.run_token = new_run_token()
        self.run_id = run_id or file_prefix(self.host, self.start, self.run_token)
        manifest_name(self.run_id)   # ValueError unless a safe file name
        self.max_bytes = max_bytes
        self.flush_interval_s = flush_interval_s
        self._clock = clock
        self._io_lock = threading.RLock()
        self._closed = False
        self._cause: str | None = None
        self._abandoned: str | None = None
        self._background_error: BaseException | None = None
        self._next_tick = clock() + flush_interval_s
        self._manifest_dirty = False
        self.deleted_files = 0
        self.deleted_bytes = 0
        self.lost_events = {t: 0 for t in TABLES}
        self.evicted: dict[str, int] = {}   # live-view rows folded into "other"
        self.missed_runs: dict[str, int] = {}   # {program: runs the kernel skipped}

        self._root = open_directory(directory, create=True)
        self._runs: Dir | None = None
        try:
            self._lock_fd = _locked(self._root, "cannot write to")
        except BaseException:
            self._root.close()
            raise
        try:
            self.recovered = recover_locked(self._root)
            self._finalized = self._scan_finalized()
            self.manifest = new_manifest(
                run_id=self.run_id, host=self.host, backend=backend, version=version,
                schema_version=SCHEMA_VERSION, start=self.start,
                options=dict(options or {}), tables=TABLES)
            self._runs = self._root.sub(RUNS_DIR, create=True)
            write_manifest(self._runs, self.manifest)
        except UnsafeDirectory as e:
            self._release()
            raise RecordingError(f"cannot record to {self.directory}: {e}") from None
        except OSError as e:
            self._release()
            raise RecordingError(f"cannot write to {self.directory}: "
                                 f"{e.strerror or e}") from None
        except BaseException:
            self._release()
            raise

        self._writers = {
            t: TableWriter(self._root, t, host=self.host, run_id=self.run_id,
                           run_start=self.start, flush_interval_s=flush_interval_s,
                           rotate_rows=rotate_rows, rotate_bytes=rotate_bytes,
                           rotate_age_s=rotate_age_s, max_buffer_rows=max_buffer_rows,
                           clock=clock, on_file=self._file_finalized,
                           publish_age_s=publish_age_s, on_compacted=self._files_compacted,
                           on_busy=self._flush_due_writers, run_token=self.run_token)
            for t in TABLES
        }
        try:
            self._every_table_exists()
        except OSError as e:
            self._pause(e)   # a full disk at start: said like any other storage error
        self._stop = threading.Event()
        self._thread = None
        if background_flush:
            self._thread = threading.Thread(target=self._flush_loop, name="connscope-parquet",
                                            daemon=True)
            self._thread.start()

    # -- API

    def write(self, table: str, rows: Rows) -> int:
        """Buffer rows for `table`; return how many were accepted (0 if dropped)."""
        self._raise_background_error()
        try:
            writer = self._writers[table]
        except KeyError:
            from tracer.schema import UnknownTable

            raise UnknownTable(table) from None
        n = writer.write(rows)
        if self._thread is None and self._clock() >= self._next_tick:
            self.tick()
        return n

    def add_lost(self, table: str, count: int) -> None:
        """Count events of `table` the kernel dropped before we read them."""
        if table not in self.lost_events:
            from tracer.schema import UnknownTable

            raise UnknownTable(table)
        self.lost_events[table] += count

    def set_lost(self, totals: Mapping[str, int]) -> None:
        """Set the running totals of lost events, e.g. {"connects": 12}."""
        for table, count in totals.items():
            if table not in self.lost_events:
                from tracer.schema import UnknownTable

                raise UnknownTable(table)
            self.lost_events[table] = count

    def set_evicted(self, totals: Mapping[str, int]) -> None:
        """Set the running totals of rows the live tables folded into "other"
        (tracer/aggregate), e.g. {"destinations": 12}: kept in the manifest."""
        self.evicted = {str(k): int(v) for k, v in totals.items()}

    def set_missed_runs(self, totals: Mapping[str, int]) -> None:
        """Set the running totals of runs of our BPF programs the kernel
        skipped (BPF recursion), by program: kept in the manifest, since any
        of them may have been an event of any table."""
        self.missed_runs = {str(k): int(v) for k, v in totals.items() if v}

    def set_backend(self, backend: str, tracepoint_hooks: str = "") -> None:
        """Record the backend actually used (known only after the probes
        load), and which kind of hook it put on the shared tracepoints and
        why (ProbeSession.info.tracepoint_hooks: BTF, raw or classic ones,
        after any fall-back; what its skipped runs mean depends on it)."""
        with self._io_lock:
            self.manifest["backend"] = backend
            if tracepoint_hooks:
                self.manifest["tracepoint_hooks"] = tracepoint_hooks
            try:
                write_manifest(self._runs, self.manifest)
            except OSError as e:
                self._pause(e)
                self._manifest_dirty = True

    def abandon(self, reason: str) -> None:
        """Close a run that failed to start: status "abandoned" with `reason` in the manifest.

        Best effort: storage errors are not raised, because the caller is already
        handling the failure that matters.
        """
        self._abandoned = reason
        try:
            self.close()
        except RecordingIncomplete:
            pass

    def tick(self) -> None:
        """Do what is due: flushes, age rotations, retries after a storage error."""
        self._each_writer(lambda w: w.tick())

    def interval_tick(self) -> None:
        """The caller's tick once an interval: tick() when no background
        flusher runs; when one does, only raise what it ran into. It does
        the due work four times a flush interval, fsyncs and Parquet
        conversions under the I/O lock: the caller (the collector, which
        reads the kernel's ring buffer) waiting for that lock was a stall
        of up to a fifth of a second an interval under load, records
        arriving into the ring all the while (BENCHMARKS.md section 27)."""
        thread = self._thread
        if thread is not None and thread.is_alive():
            self._raise_background_error()
            return
        self.tick()

    def flush(self) -> None:
        """Flush every table's buffer to its journal now, and do what `tick` would."""
        self._each_writer(lambda w: w.tick(flush=True))

    def rotate(self) -> None:
        """Finalize every open file now (readers then see all rows flushed so far)."""
        self._each_writer(lambda w: w.flush() | w.rotate())

    @property
    def paused_reason(self) -> str | None:
        if self._cause is None:
            return None
        return f"{self._cause}: writing paused, {self.dropped_rows} rows dropped"

    @property
    def dropped_rows(self) -> int:
        return sum(w.dropped_rows for w in self._writers.values())

    def status(self) -> dict:
        ws = self._writers.values()
        return {
            "run_id": self.run_id,
            "directory": str(self.directory),
            "rows": {w.table: w.rows for w in ws},
            "rows_finalized": {w.table: w.rows_finalized for w in ws},
            "buffered_rows": sum(w.buffered_rows for w in ws),
            "dropped_rows": {w.table: w.dropped_rows for w in ws},
            "lost_events": dict(self.lost_events),
            "evicted": dict(self.evicted),
            "missed_runs": dict(self.missed_runs),
            "files_written": sum(len(w.files) for w in ws),
            "bytes_written": sum(w.bytes_finalized for w in ws),
            "journal_bytes": sum(w.journal_bytes for w in ws),
            "paused_reason": self.paused_reason,
            "deleted_files": self.deleted_files,
            "deleted_bytes": self.deleted_bytes,
            "recovered": list(self.recovered),
        }

    def close(self) -> None:
        """Finalize every file and the manifest. Idempotent.

        Raises RecordingIncomplete if storage errors kept rows from being
        finalized (what is on disk stays for the next start to recover).
        """
        if self._closed:
            return
        self._closed = True
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
        try:
            with self._io_lock:
                failed = None
                for w in self._writers.values():
                    try:
                        w.close()
                    except OSError as e:
                        failed = failed or e
                        self._pause(e)
                if failed is None:
                    self._cause = None  # everything reached the disk in the end
                try:
                    if self._abandoned is None:
                        self._every_table_exists()
                    self._enforce_max_bytes()
                    self._update_manifest(final=True)
                    write_manifest(self._runs, self.manifest)
                except OSError as e:
                    failed = failed or e
                    self._pause(e)
            self._raise_background_error()
            if failed is not None:
                raise RecordingIncomplete(
                    f"{self.paused_reason}; files still being written stay in "
                    f"{self.directory} for the next start to recover")
        finally:
            self._release()

    def _release(self) -> None:
        _unlock_directory(self._lock_fd)
        if self._runs is not None:
            self._runs.close()
        self._root.close()

    def __enter__(self) -> "Recording":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- internals

    def _each_writer(self, action: Callable[[TableWriter], object]) -> None:
        self._raise_background_error()
        with self._io_lock:
            if self._closed:
                return
            self._next_tick = self._clock() + self.flush_interval_s
            wrote, failed = False, False
            for w in self._writers.values():
                try:
                    wrote = bool(action(w)) or wrote
                except OSError as e:
                    failed = True
                    self._pause(e)
            try:
                if self._manifest_dirty:
                    self._update_manifest(final=False)
                    write_manifest(self._runs, self.manifest)
                    self._manifest_dirty = False
                self._enforce_max_bytes()
            except OSError as e:
                failed = True
                self._pause(e)
            if wrote and not failed:
                self._cause = None  # the disk took data again

    def _flush_due_writers(self) -> None:
        """Flush every table whose flush is due, as a tick would: called by a
        writer between the row groups of a compaction, which at a high rate
        is seconds of work on the flusher's thread. Without it the rows of
        every table piled up in memory meanwhile (60,000 buffered where a
        flush keeps 16,384: +17 MB of RSS at 36,000 connections/s;
        BENCHMARKS.md section 28). Every caller holds self._io_lock."""
        for w in self._writers.values():
            if w.flush_due():
                try:
                    w.flush()
                except OSError as e:
                    self._pause(e)

    def _pause(self, e: OSError) -> None:
        words = None if isinstance(e, UnsafeDirectory) else _STORAGE_WORDS.get(e.errno)
        if words:
            self._cause = f"{words} {self.directory}"
        else:
            self._cause = f"cannot write to {self.directory}: {e.strerror or e}"

    def _file_finalized(self, table: str, folder: str, name: str, rows: int,
                        size: int) -> None:
        self._finalized.append((table, folder, name, size))
        self._manifest_dirty = True

    def _has_files(self) -> set[str]:
        """Tables with at least one file in DIR (this run's or an earlier one's)."""
        from tracer.schema import TABLES
        from tracer.sinks.names import PARQUET_SUFFIX, data_base
        from tracer.sinks.recovery import partitions

        have = {table for table, *_ in self._finalized}
        for table in set(TABLES) - have:
            for _, part in partitions(self._root, table, []):
                if any(data_base(n, PARQUET_SUFFIX) for n in part.names()):
                    have.add(table)
        return have

    def _files_compacted(self, table: str, folder: str, names: list[str]) -> None:
        gone = {(table, folder, name) for name in names}
        self._finalized = [f for f in self._finalized if f[:3] not in gone]

    def _every_table_exists(self) -> None:
        """An empty file for each table that has none in DIR (module docstring)."""
        have = self._has_files()
        for w in self._writers.values():
            if w.table not in have:
                w.write_empty()

    def _update_manifest(self, final: bool) -> None:
        m = self.manifest
        m["rows"] = {w.table: w.rows_finalized for w in self._writers.values()}
        m["dropped_rows"] = {w.table: w.dropped_rows for w in self._writers.values()}
        m["lost_events"] = dict(self.lost_events)
        m["evicted"] = dict(self.evicted)
        m["missed_runs"] = dict(self.missed_runs)
        m["files"] = sum(len(w.files) for w in self._writers.values())
        m["deleted_files"] = self.deleted_files
        if final:
            m["end"] = iso_utc(datetime.now(timezone.utc))
            m["status"] = "complete" if self._cause is None else "incomplete"
            if self._abandoned is not None:
                m["status"], m["reason"] = "abandoned", self._abandoned

    def _scan_finalized(self) -> list[tuple[str, str, str, int]]:
        """(table, date folder, name, size) of the finalized files already in DIR,
        oldest first: only regular files with the recorder's names in real
        (not linked) partitions, which is all `--max-size` may delete."""
        from tracer.schema import TABLES
        from tracer.sinks.names import PARQUET_SUFFIX, data_base, is_empty_placeholder
        from tracer.sinks.recovery import partitions

        found = []
        for table in TABLES:
            for folder, part in partitions(self._root, table, []):
                for name in part.names():
                    st = part.lstat(name)
                    if (data_base(name, PARQUET_SUFFIX) and st is not None
                            and not is_empty_placeholder(name)
                            and stat.S_ISREG(st.st_mode)):
                        found.append((st.st_mtime, table, folder, name, st.st_size))
        found.sort()
        return [(table, folder, name, size) for _, table, folder, name, size in found]

    def _enforce_max_bytes(self) -> None:
        """Delete the oldest finalized files until DIR fits in max_bytes (open journals count too)."""
        if self.max_bytes is None:
            return
        total = sum(size for *_, size in self._finalized)
        total += sum(w.journal_bytes for w in self._writers.values())
        while total > self.max_bytes and self._finalized:
            table, folder, name, size = self._finalized.pop(0)
            try:
                # reached again from DIR's descriptor, never through a link
                with self._root.walk(table, folder) as part:
                    part.unlink(name)
                    self.deleted_files += 1
                    self.deleted_bytes += size
                    emptied = not part.names()
                if emptied:
                    with self._root.sub(table) as tdir:
                        try:
                            tdir.rmdir(folder)   # an emptied date= partition
                        except OSError:
                            pass                 # not empty after all: kept
            except FileNotFoundError:
                pass   # gone already: its space is free
            except UnsafeDirectory:
                continue   # a partition that is no longer ours: left alone, still counted
            total -= size

    def _raise_background_error(self) -> None:
        err, self._background_error = self._background_error, None
        if err is not None:
            raise err

    def _flush_loop(self) -> None:
        # ticks are cheap when nothing is due; a quarter interval keeps the loss bound tight
        period = max(0.05, self.flush_interval_s / 4)
        while not self._stop.wait(period):
            try:
                self.tick()
            except BaseException as e:  # a bug, not a storage error: hand it to the caller
                self._background_error = e
                return
