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

from tracer.sinks.durable_files import atomic_write_bytes
from tracer.sinks.names import manifest_name
from tracer.sinks.trusted_dir import Dir, read_regular

# A manifest is ~1 KB; one larger than this was not written by connscope and
# is not read (a link to /dev/zero or a huge file must not eat memory).
MANIFEST_MAX_BYTES = 1 << 20


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


def write_manifest(runs: Dir, manifest: dict, name: str | None = None) -> str:
    """Write `manifest` in the open `runs` directory as `name` (default
    `<run_id>.json`; recovery passes the name it read, so it writes back only
    there); return the name."""
    name = name or manifest_name(manifest["run_id"])
    data = json.dumps(manifest, indent=2, sort_keys=False).encode() + b"\n"
    atomic_write_bytes(runs.fd, name, data)
    return name


def read_manifest(path, *, dir_fd: int | None = None) -> dict:
    """The JSON object in manifest `path` (relative to `dir_fd` if given).

    Never follows a symbolic link at `path`, never waits on a FIFO, reads at
    most MANIFEST_MAX_BYTES. Raises OSError (NotRegular: str() says what it
    is) or ValueError (not JSON, or not an object)."""
    m = json.loads(read_regular(path, MANIFEST_MAX_BYTES, dir_fd=dir_fd))
    if not isinstance(m, dict):
        raise ValueError("not a JSON object")
    return m
