"""The run manifest: DIR/runs/<run_id>.json, one per recording run.

Written when the run starts (end null, status "running"), after every file the
run finalizes, and when it closes (status "complete"). A manifest still
"running" when no recorder holds the directory belongs to a crashed run;
`recover` marks it "crashed" and adds the rows it salvaged.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

from tracer.sinks.durable_files import atomic_write_bytes, make_dirs

RUNS_DIR = "runs"


def manifest_path(directory: Path, run_id: str) -> Path:
    return Path(directory) / RUNS_DIR / f"{run_id}.json"


def kernel_release() -> str:
    return os.uname().release


def iso_utc(t: datetime | None) -> str | None:
    if t is None:
        return None
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def new_manifest(*, run_id: str, host: str, backend: str, version: str,
                 schema_version: str, start: datetime, options: dict,
                 tables: tuple[str, ...]) -> dict:
    return {
        "run_id": run_id,
        "host": host,
        "kernel": kernel_release(),
        "backend": backend,
        "version": version,
        "schema_version": schema_version,
        "start": iso_utc(start),
        "end": None,
        "status": "running",
        "options": options,
        # rows in finalized Parquet files of this run
        "rows": {t: 0 for t in tables},
        # events the kernel dropped before we saw them (ring buffer full), per table
        "lost_events": {t: 0 for t in tables},
        # rows we had but could not write (disk full, unwritable directory)
        "dropped_rows": {t: 0 for t in tables},
        "files": 0,
    }


def write_manifest(directory: Path, manifest: dict) -> Path:
    path = manifest_path(directory, manifest["run_id"])
    make_dirs(path.parent)
    data = json.dumps(manifest, indent=2, sort_keys=False).encode() + b"\n"
    atomic_write_bytes(path, data)
    return path


def read_manifest(path: Path) -> dict:
    with open(path, "rb") as f:
        return json.load(f)


def running_manifests(directory: Path) -> list[tuple[Path, dict]]:
    """Manifests whose run never closed, skipping ones that are not valid JSON."""
    runs = Path(directory) / RUNS_DIR
    out = []
    if not runs.is_dir():
        return out
    for path in sorted(runs.glob("*.json")):
        try:
            m = read_manifest(path)
        except (OSError, ValueError):
            continue
        if isinstance(m, dict) and m.get("status") == "running":
            out.append((path, m))
    return out
