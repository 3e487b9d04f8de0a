"""A recording as a timeline of the live run's intervals, each turned back
into the Snapshot the live view showed.

Rows are grouped into the live run's own intervals and fed to the live
aggregation code: Connect events into a ConnectTable and the NotableLog,
rolled once per interval; per-interval rows back into ListenerRows and
ProcessRows (rows.py). A ConnectTable only moves forward, so Snapshots are
built in order on demand; the last few are cached and going further back
rebuilds the run from its start. Holding every Snapshot would cost gigabytes:
each row carries its p99 history.
"""
from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tracer.aggregate.connects import ConnectTable, destination_label
from tracer.aggregate.notable import NotableLog
from tracer.aggregate.snapshot import Header, Notable, Snapshot
from tracer.domain.containers import group_of_row
from tracer.domain.durations import duration
from tracer.domain.hooks import backend_text, hooks_kind, missed_runs_from, skipped_runs_text
from tracer.replay.controller import ReplayError
from tracer.replay.latency import ConnectIndex, LatencyAt
from tracer.replay.rows import (connect_from_row, edge_rows, listener_rows, process_rows,
                                tcp_memory_row)
from tracer.report.hosts import hosts_text

EVENT_TABLES = ("connects", "accepts")
INTERVAL_TABLES = ("listeners", "sockets", "overflows", "pools", "tcp_memory", "edges")
MAX_INTERVALS = 5_000_000   # a row with a ts far in the future must not eat the memory
CACHE_ROWS = 200_000        # rows (all views) of the Snapshots kept for stepping back
BUILD_AHEAD = 4             # Snapshots built before the one asked for, so "," is instant


def fmt_clock(ts_us: int) -> str:
    return datetime.fromtimestamp(ts_us / 1e6, timezone.utc).strftime("%H:%M:%S")


def _ts_us(table: pa.Table) -> np.ndarray:
    col = table.column("ts")
    if pa.types.is_timestamp(col.type):
        col = pc.cast(col, pa.timestamp("us", tz=col.type.tz)).cast(pa.int64())
    return np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.int64)


def _iso_to_us(text: str | None) -> int | None:
    if not text:
        return None
    try:
        return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1e6)
    except ValueError:
        return None


def _grid(start: int, n: int, step: int) -> np.ndarray:
    if n > MAX_INTERVALS:
        raise ReplayError(f"the recording spans {n:,} intervals; too long to replay")
    return start + step * np.arange(1, n + 1, dtype=np.int64)


def interval_ends(interval_ts: np.ndarray, event_ts: np.ndarray, interval_us: int,
                  start_us: int | None) -> np.ndarray:
    """End times (µs) of the intervals of one run.

    The per-interval tables were written at the live run's own ticks, so their
    distinct `ts` values are the interval ends the live view used; events before
    the first or after the last tick get intervals of the nominal length. With
    no per-interval rows, the grid starts at the run start."""
    lo = int(event_ts.min()) if event_ts.size else None
    hi = int(event_ts.max()) if event_ts.size else None
    ticks = np.unique(interval_ts)
    if ticks.size == 0:
        if lo is None:
            return ticks
        first = start_us if start_us is not None and start_us <= lo else lo
        return _grid(first, max(1, math.ceil((hi - first + 1) / interval_us)), interval_us)
    before = after = np.empty(0, dtype=np.int64)
    if lo is not None and lo <= ticks[0] - interval_us:
        n = math.ceil((ticks[0] - lo) / interval_us)
        before = _grid(ticks[0] - n * interval_us, n - 1, interval_us)
    if hi is not None and hi > ticks[-1]:
        after = _grid(int(ticks[-1]), math.ceil((hi - ticks[-1]) / interval_us), interval_us)
    return np.concatenate([before, ticks, after])


@dataclass
class _Binned:
    """A table's rows sorted by interval: offsets[i]:offsets[i+1] are interval i's."""
    table: pa.Table
    offsets: np.ndarray

    def rows(self, i: int) -> list[dict]:
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        return self.table.slice(a, b - a).to_pylist() if b > a else []

    def count(self, i: int) -> int:
        return int(self.offsets[i + 1] - self.offsets[i])


def _bin(table: pa.Table, ends: np.ndarray) -> _Binned:
    ts = _ts_us(table)
    idx = np.searchsorted(ends, ts, side="left")    # interval i holds (ends[i-1], ends[i]]
    order = np.argsort(idx, kind="stable")
    if table.num_rows:
        table = table.take(pa.array(order))
    table = table.set_column(table.schema.get_field_index("ts"), "ts",
                             pa.array(ts[order], pa.int64()))
    offsets = np.searchsorted(idx[order], np.arange(len(ends) + 1), side="left")
    return _Binned(table, offsets)


@dataclass
class _Run:
    run_id: str
    manifest: dict
    ends: np.ndarray           # µs, one per interval
    seconds: np.ndarray        # interval lengths
    tables: dict[str, _Binned]
    connects: ConnectIndex
    first: int                 # global index of its first interval

    def __len__(self) -> int:
        return len(self.ends)


class _Cursor:
    """One run's sequential state, positioned before interval `next`. Per
    interval it does what the live collector does: ConnectTable.add and
    NotableLog.connect per event, NotableLog.listeners, roll, one Snapshot."""

    def __init__(self, timeline: "RecordingTimeline", run: _Run):
        self.run = run
        self.header = timeline.header
        self.recording_bytes = timeline.recording_bytes
        self.next = 0
        self.connects = ConnectTable()
        self.log = NotableLog()
        self.drops_total: dict = {}
        self.events_total = 0
        m = run.manifest
        start = int(run.ends[0]) if len(run) else 0
        # facts about the whole run go straight into the log, before its first interval
        backend = backend_text(str(m.get("backend", "?")), hooks_kind(m.get("tracepoint_hooks")))
        notes = [("info", "run", f"run {run.run_id}: host {m.get('host', '?')}, backend "
                                 f"{backend}, {len(run)} intervals")]
        self.lost = sum(v for v in (m.get("lost_events") or {}).values() if isinstance(v, int))
        if self.lost:
            notes.append(("crit", "lost events",
                          f"this run lost {self.lost:,} kernel events (when is not recorded): "
                          f"counts are low"))
        self.missed_by = tuple(sorted(missed_runs_from(m.get("missed_runs")).items()))
        if self.missed_by:
            notes.append(("warn", "skipped runs",
                          f"{skipped_runs_text(dict(self.missed_by))} (BPF recursion; when is "
                          f"not recorded): each may have been an event"))
        if run.first == 0:
            notes += [("warn", "unreadable", problem) for problem in timeline.problems]
            if len(timeline.hosts) > 1:
                notes.append(("info", "hosts", f"{len(timeline.hosts):,} hosts: their runs "
                                               f"play one after another; --host NAME "
                                               f"replays one"))
        self.log.lines.extend(Notable(start, *n) for n in notes)

    def advance(self, materialize: bool) -> Snapshot | None:
        run, i = self.run, self.next
        self.next += 1
        seconds = float(run.seconds[i])
        end_us = int(run.ends[i])
        for row in run.tables["connects"].rows(i):
            ev = connect_from_row(row)
            self.connects.add(ev, group_of_row(row))
            # the live log stamps a connect when it resolved
            self.log.connect(ev, row["ts"] + int(ev.latency_us or 0))
        self.connects.roll(seconds)
        n_events = run.tables["connects"].count(i) + run.tables["accepts"].count(i)
        self.events_total += n_events
        listeners = listener_rows(run.tables["listeners"].rows(i), run.tables["overflows"].rows(i),
                                  run.tables["accepts"].rows(i), seconds, self.drops_total)
        self.log.listeners(listeners, end_us)
        notable = self.log.roll(end_us)
        if not materialize:
            return None
        processes = process_rows(run.tables["sockets"].rows(i), run.tables["pools"].rows(i),
                                 seconds)
        return Snapshot(
            ts_us=end_us, interval_s=seconds, header=self.header,
            events_total=self.events_total,
            events_per_s=n_events / seconds if seconds > 0 else 0.0, lost_events=self.lost,
            evicted=sum(self.connects.evicted.values()),
            missed_by=self.missed_by,
            destinations=tuple(self.connects.by_destination()),
            processes_connects=tuple(self.connects.by_process()),
            containers_connects=tuple(self.connects.by_container()),
            listeners=tuple(listeners), processes=tuple(processes), notable=notable,
            recording_bytes=self.recording_bytes,
            tcp_memory=tcp_memory_row(run.tables["tcp_memory"].rows(i)),
            edges=tuple(edge_rows(run.tables["edges"].rows(i))),
            extra={"run_id": run.run_id, "interval": run.first + i,
                   "latency_buckets": LatencyAt(run.connects, i)})


def _rows_in(s: Snapshot) -> int:
    return (len(s.destinations) + len(s.processes_connects) + len(s.listeners)
            + len(s.processes) + len(s.edges) + 1)


class RecordingTimeline:
    """Every interval of a recording (all its runs, oldest first), as Snapshots
    built on demand. `data` is what tracer.report.reader.read_recording returns.

    `snapshot` builds; call it from one thread at a time. `cached` and `cost`
    may be called from any thread."""

    def __init__(self, data, directory, recording_bytes: int | None = None):
        self.directory = str(directory)
        self.problems: list[str] = list(data.problems)
        self.recording_bytes = recording_bytes
        tables = {t: data.tables[t] for t in (*EVENT_TABLES, *INTERVAL_TABLES)}
        manifests = {m.get("run_id"): m for m in data.manifests if isinstance(m, dict)}
        run_ids = set()
        for t in tables.values():
            if t.num_rows:
                run_ids.update(pc.unique(t.column("run_id")).to_pylist())
        if not run_ids:
            raise ReplayError(f"{self.directory}: the recording has no rows to replay")
        self.runs: list[_Run] = []
        first = 0
        for run_id in sorted(run_ids, key=lambda r: (
                _iso_to_us((manifests.get(r) or {}).get("start")) or 0, r or "")):
            run = self._build_run(run_id, manifests.get(run_id) or {}, tables, first)
            if len(run):
                self.runs.append(run)
                first += len(run)
        self._len = first
        self.interval_s = float(np.median(np.concatenate([r.seconds for r in self.runs])))
        self.header = self._header()
        self._cache: OrderedDict[int, Snapshot] = OrderedDict()
        self._cached_rows = 0
        self._lock = threading.Lock()      # the cache is read by the UI while a worker builds
        self._cursor: _Cursor | None = None
        self.worst_index, self.worst_reason = self._find_worst()

    def __len__(self) -> int:
        return self._len

    def cached(self, i: int) -> Snapshot | None:
        """The Snapshot of interval i if it is built already (any thread)."""
        with self._lock:
            snap = self._cache.get(i)
            if snap is not None:
                self._cache.move_to_end(i)
            return snap

    def cost(self, i: int) -> int:
        """Connect rows to feed before interval i can be shown (0 if cached):
        the TUI builds cheap ones at once and costly ones in the background."""
        if self.cached(i) is not None:
            return 0
        run, local = self._locate(i)
        c = self._cursor
        start = c.next if c is not None and c.run is run and c.next <= local else 0
        offsets = run.tables["connects"].offsets
        return int(offsets[local + 1] - offsets[start]) + (local - start + 1)

    def snapshot(self, i: int, cancelled=lambda: False) -> Snapshot | None:
        """The Snapshot of interval i, built if need be; None if `cancelled()`
        turned true while building. Build from one thread at a time."""
        if not 0 <= i < self._len:
            raise IndexError(i)
        snap = self.cached(i)
        if snap is not None:
            return snap
        run, local = self._locate(i)
        c = self._cursor
        if c is None or c.run is not run or c.next > local:
            c = self._cursor = _Cursor(self, run)
        while c.next <= local:
            if cancelled():
                return None
            built = c.advance(materialize=local - c.next < BUILD_AHEAD)
            if built is not None:
                self._remember(run.first + c.next - 1, built)
        return self.cached(i)

    def _locate(self, i: int) -> tuple[_Run, int]:
        run = next(r for r in reversed(self.runs) if r.first <= i)
        return run, i - run.first

    def _remember(self, i: int, snap: Snapshot) -> None:
        with self._lock:
            self._cache[i] = snap
            self._cached_rows += _rows_in(snap)
            while self._cached_rows > CACHE_ROWS and len(self._cache) > BUILD_AHEAD + 1:
                _, old = self._cache.popitem(last=False)
                self._cached_rows -= _rows_in(old)

    # -- building

    @staticmethod
    def _build_run(run_id: str, manifest: dict, tables: dict[str, pa.Table], first: int) -> _Run:
        mine = {name: t.filter(pc.equal(t.column("run_id"), run_id)) if t.num_rows else t
                for name, t in tables.items()}
        interval = float((manifest.get("options") or {}).get("interval") or 1.0)
        interval_us = max(1, int(round(interval * 1e6)))
        ends = interval_ends(np.concatenate([_ts_us(mine[t]) for t in INTERVAL_TABLES]),
                             np.concatenate([_ts_us(mine[t]) for t in EVENT_TABLES]),
                             interval_us, _iso_to_us(manifest.get("start")))
        seconds = np.diff(ends, prepend=ends[0] - interval_us) / 1e6 if len(ends) else ends
        binned = {name: _bin(t, ends) for name, t in mine.items()}
        index = ConnectIndex(binned["connects"].table, binned["connects"].offsets)
        return _Run(run_id, manifest, ends, seconds, binned, index, first)

    def _header(self) -> Header:
        ms = [r.manifest for r in self.runs]
        hosts = sorted({m.get("host") for m in ms if m.get("host")})
        if not hosts:   # rows without a manifest: the host column says
            hosts = sorted({b.table.column("host")[0].as_py() for r in self.runs
                            for b in r.tables.values() if b.table.num_rows})
        first = ms[0] if ms else {}
        self.hosts = hosts
        return Header(host=hosts_text(hosts) or "?", kernel=first.get("kernel") or "?",
                      backend=first.get("backend") or "?",
                      hooks=hooks_kind(first.get("tracepoint_hooks")),
                      blind_spots=tuple(first.get("blind_spots") or ()),
                      recording_path=self.directory, source=f"replay {self.directory}")

    def _find_worst(self) -> tuple[int | None, str]:
        """The largest drop burst; failing that, the largest p99 of any destination
        in any interval. From the rows, without building Snapshots."""
        drops = (0, None, "")
        slowest = (0.0, None, "")
        for run in self.runs:
            ovf, lis = run.tables["overflows"], run.tables["listeners"]
            # overflows splits drops and SYN drops; listeners.drops is their sum
            src, cols = (ovf, ("drops", "syn_drops")) if ovf.table.num_rows else (lis, ("drops",))
            if src.table.num_rows:
                total = np.zeros(src.table.num_rows, dtype=np.int64)
                for c in cols:
                    total += np.asarray(src.table.column(c).fill_null(0).to_numpy(
                        zero_copy_only=False), dtype=np.int64)
                cumulative = np.concatenate([[0], np.cumsum(total)])
                per_interval = cumulative[src.offsets[1:]] - cumulative[src.offsets[:-1]]
                i = int(np.argmax(per_interval))
                if per_interval[i] > drops[0]:
                    drops = (int(per_interval[i]), run.first + i,
                             f"largest drop burst: {int(per_interval[i]):,} dropped at "
                             f"{fmt_clock(int(run.ends[i]))} UTC")
            worst = run.connects.worst_p99()
            if worst is not None and worst[0] > slowest[0]:
                p99, i, key = worst
                slowest = (p99, run.first + i,
                           f"largest p99: {destination_label(key)} {duration(p99)} at "
                           f"{fmt_clock(int(run.ends[i]))} UTC")
        if drops[1] is not None:
            return drops[1], drops[2]
        if slowest[1] is not None:
            return slowest[1], slowest[2]
        return None, "nothing stands out: no drops and no connect latencies recorded"
