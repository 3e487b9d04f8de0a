"""The content of a run manifest (DIR/runs/<run_id>.json), checked before
report or replay use any of it.

A manifest is JSON anyone who can write DIR may have written: `run_id` may be
a list, `options.interval` 1e309 (infinity once parsed), `start` a number or a
date in the year 9999. `problem` names the first field no connscope writes
that way; the reader then skips the whole manifest with that reason, so the
summary and the replay only ever see the types and ranges below.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone

MAX_TEXT = 256                      # host, kernel, backend, version, status, ...
MAX_REASON = 4096
MAX_BLIND_SPOTS = 64
COUNT_MAX = 1 << 53
INTERVAL_MIN_S, INTERVAL_MAX_S = 0.1, 3600.0     # as `--interval` allows
YEAR_MIN, YEAR_MAX = 1970, 2199     # as the data files' ts (data_file.py)
TEXT_FIELDS = ("host", "kernel", "backend", "version", "schema_version", "status")
COUNT_MAPS = ("rows", "lost_events", "dropped_rows")


def problem(m: object) -> str | None:
    """Why `m` is not a connscope run manifest a report can trust, or None."""
    if not isinstance(m, dict):
        return f"not a connscope run manifest (a JSON {type(m).__name__}, not an object)"
    if "run_id" not in m:
        return "not a connscope run manifest (no run_id)"
    why = run_id_problem(m["run_id"])
    if why:
        return f"run_id {why}"
    for name in TEXT_FIELDS:
        if m.get(name) is not None and not _text(m[name], MAX_TEXT):
            return f"{name} is not a line of text of at most {MAX_TEXT} characters"
    reason = m.get("reason")
    if reason is not None and not (isinstance(reason, str) and len(reason) <= MAX_REASON):
        return f"reason is not text of at most {MAX_REASON} characters"
    for name in ("start", "end"):
        why = _time_problem(m.get(name))
        if why:
            return f"{name} {why}"
    options = m.get("options")
    if options is not None:
        if not isinstance(options, dict):
            return "options is not an object"
        interval = options.get("interval")
        if interval is not None and not (
                _number(interval) and math.isfinite(interval)
                and INTERVAL_MIN_S <= interval <= INTERVAL_MAX_S):
            return (f"options.interval is not a number of seconds from {INTERVAL_MIN_S:g} "
                    f"to {INTERVAL_MAX_S:g}")
    for name in COUNT_MAPS:
        counts = m.get(name)
        if counts is None:
            continue
        if not isinstance(counts, dict) or not all(
                isinstance(k, str) and len(k) <= MAX_TEXT and _count(v)
                for k, v in counts.items()):
            return f"{name} is not a map of table names to counts (0 to 2^53)"
    if m.get("files") is not None and not _count(m["files"]):
        return "files is not a count (0 to 2^53)"
    spots = m.get("blind_spots")
    if spots is not None and not (isinstance(spots, list) and len(spots) <= MAX_BLIND_SPOTS
                                  and all(_text(s, MAX_REASON) for s in spots)):
        return f"blind_spots is not a list of at most {MAX_BLIND_SPOTS} lines of text"
    return None


def run_id_problem(run_id: object) -> str | None:
    """Why `run_id` is not a run id connscope could have written, or None.
    Ours are <host>-<UTC time>-<pid>; a name for a file, so never a path."""
    if not isinstance(run_id, str):
        return f"is a {type(run_id).__name__}, not text"
    if not 0 < len(run_id) <= MAX_TEXT:
        return f"has {len(run_id)} characters, not 1 to {MAX_TEXT}"
    if not run_id.isprintable() or "/" in run_id or "\\" in run_id or run_id.startswith("."):
        return "holds control characters, a slash or a leading dot"
    return None


def _text(v: object, limit: int) -> bool:
    return isinstance(v, str) and len(v) <= limit and "\n" not in v and "\r" not in v


def _number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _count(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= COUNT_MAX


def _time_problem(v: object) -> str | None:
    if v is None:
        return None
    if not isinstance(v, str) or len(v) > 64:
        return "is not an ISO 8601 time"
    try:
        t = datetime.fromisoformat(v.replace("Z", "+00:00"))
        if t.tzinfo is None:
            t = t.replace(tzinfo=timezone.utc)
        year = t.astimezone(timezone.utc).year
    except (ValueError, OverflowError):
        return "is not an ISO 8601 time"
    if not YEAR_MIN <= year <= YEAR_MAX:
        return f"is outside {YEAR_MIN}..{YEAR_MAX}"
    return None
