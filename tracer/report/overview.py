"""What was recorded and how complete it is: time range, hosts, runs, backends,
kernels, and the losses a reader must know about before trusting any number
(events the kernel dropped, rows the disk refused, runs that crashed)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from tracer.domain.hooks import MAX_PROGRAMS, backend_text, hooks_kind, missed_runs_from
from tracer.report.arrow_stats import time_range
from tracer.schema import TABLES


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    host: str
    kernel: str
    backend: str
    version: str
    start: str | None           # ISO 8601 UTC, as in the manifest
    end: str | None
    status: str                 # complete, crashed, running, incomplete, abandoned, no manifest
    lost_events: int            # kernel dropped these before we read them
    dropped_rows: int           # we had these but the disk refused them
    rows: int
    reason: str | None = None   # why an abandoned run never started
    hooks: str = ""             # the tracepoint hooks: BTF, raw or classic ("" before 2026-12-07)

    @property
    def backend_text(self) -> str:
        """The backend as the runs tables show it: with its hooks where known."""
        return backend_text(self.backend, self.hooks)


@dataclass(frozen=True)
class Overview:
    first_us: int | None        # earliest ts in any table
    last_us: int | None
    hosts: tuple[str, ...]
    runs: tuple[RunInfo, ...]
    backends: tuple[str, ...]
    kernels: tuple[str, ...]
    rows: dict                  # table -> rows read
    lost_events: int
    lost_by_table: dict         # table -> events lost (only tables with losses)
    dropped_rows: int
    problems: tuple[str, ...]   # files skipped by the reader
    files_read: int
    interval_s: float           # sampling period of the per-interval tables
    # {program: runs the kernel skipped (BPF recursion)}, summed over runs:
    # each may have been an event of any table
    missed_runs_by: dict = field(default_factory=dict)

    @property
    def missed_runs(self) -> int:
        return sum(self.missed_runs_by.values())

    @property
    def crashed(self) -> tuple[RunInfo, ...]:
        return tuple(r for r in self.runs if r.status in ("crashed", "incomplete"))

    @property
    def unfinished(self) -> tuple[RunInfo, ...]:
        return tuple(r for r in self.runs if r.status == "running")

    @property
    def duration_s(self) -> float:
        if self.first_us is None:
            return 0.0
        return (self.last_us - self.first_us) / 1e6


def _int_sum(d) -> int:
    if not isinstance(d, dict):
        return 0
    return sum(v for v in d.values() if isinstance(v, int))


def _run_info(m: dict) -> RunInfo:
    return RunInfo(
        run_id=str(m.get("run_id")), host=str(m.get("host") or "?"),
        kernel=str(m.get("kernel") or "?"), backend=str(m.get("backend") or "?"),
        version=str(m.get("version") or "?"), start=m.get("start"), end=m.get("end"),
        status=str(m.get("status") or "?"), lost_events=_int_sum(m.get("lost_events")),
        dropped_rows=_int_sum(m.get("dropped_rows")), rows=_int_sum(m.get("rows")),
        reason=m.get("reason"), hooks=hooks_kind(m.get("tracepoint_hooks")))


def _runs_in_data(tables: dict[str, pa.Table]) -> dict[str, str]:
    """run_id -> host for every run that has rows."""
    seen: dict[str, str] = {}
    for t in tables.values():
        if not t.num_rows:
            continue
        pairs = t.select(["run_id", "host"]).group_by(["run_id", "host"]).aggregate([])
        for run_id, host in zip(pairs.column("run_id").to_pylist(),
                                pairs.column("host").to_pylist()):
            seen.setdefault(run_id, host)
    return seen


def _interval_s(manifests: list[dict]) -> float:
    votes = Counter()
    for m in manifests:
        opts = m.get("options") if isinstance(m.get("options"), dict) else {}
        v = opts.get("interval")
        if isinstance(v, (int, float)) and v > 0:
            votes[float(v)] += 1
    return votes.most_common(1)[0][0] if votes else 1.0


def summarize_overview(tables: dict[str, pa.Table], manifests: list[dict],
                       problems: list[str], files_read: int) -> Overview:
    runs = [_run_info(m) for m in manifests]
    known = {r.run_id for r in runs}
    for run_id, host in sorted(_runs_in_data(tables).items()):
        if run_id not in known:
            runs.append(RunInfo(run_id=run_id, host=host, kernel="?", backend="?", version="?",
                                start=None, end=None, status="no manifest", lost_events=0,
                                dropped_rows=0, rows=0))
    lost_by_table: Counter = Counter()
    for m in manifests:
        lost = m.get("lost_events")
        if isinstance(lost, dict):
            for table, n in lost.items():
                if isinstance(n, int) and n:
                    lost_by_table[table] += n
    missed: Counter = Counter()
    for m in manifests:
        missed.update(missed_runs_from(m.get("missed_runs")))
    hosts = {r.host for r in runs}
    for t in tables.values():
        if t.num_rows:
            hosts.update(h for h in pc.unique(t.column("host")).to_pylist() if h)
    span = time_range([tables[t] for t in TABLES if t in tables])
    return Overview(
        first_us=span[0] if span else None, last_us=span[1] if span else None,
        hosts=tuple(sorted(hosts - {"?"})), runs=tuple(runs),
        backends=tuple(sorted({r.backend for r in runs} - {"?"})),
        kernels=tuple(sorted({r.kernel for r in runs} - {"?"})),
        rows={t: tables[t].num_rows for t in TABLES if t in tables},
        lost_events=sum(lost_by_table.values()), lost_by_table=dict(lost_by_table),
        dropped_rows=sum(r.dropped_rows for r in runs), problems=tuple(problems),
        files_read=files_read, interval_s=_interval_s(manifests),
        missed_runs_by=dict(missed.most_common(MAX_PROGRAMS)))
