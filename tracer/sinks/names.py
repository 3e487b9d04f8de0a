"""The names connscope writes in a recording directory, and nothing else.

Recovery and `--max-size` act only on entries whose names match these
patterns (anything else in DIR is left alone): a name read from the directory
is never turned into a path that could leave it (`/`, `..`, a leading dot),
because every pattern here is a single component made of
`[A-Za-z0-9._-]` that does not start with a dot.

    <table>/date=YYYY-MM-DD/<host>-<YYYYmmddTHHMMSSZ>-<token>-<seq>.parquet
                                                            ...arrows.inprogress   (journal)
                                                            ...parquet.inprogress  (temporary Parquet)
    <table>/date=YYYY-MM-DD/<host>-<YYYYmmddTHHMMSSZ>-<token>-<first seq>-<last seq>.parquet
        (compacted: holds the rows of the files <first> to <last> of the same
        prefix and partition, which are deleted once it is published)

<token> is six random letters a run draws (RUN_TOKEN_LETTERS): two hosts with
the same name (cloned machines all called `localhost`) whose runs start in
the same second still write different names, so their files can be copied
into one folder, or written to one shared one, without one replacing the
other. Names written before tokens (`<host>-<start>-<seq>`) are still ours.
    runs/<run_id>.json   (and <run_id>.json.tmp while it is replaced)
"""
from __future__ import annotations

import re
import secrets
import string
from datetime import datetime, timezone

LOCK_FILE = ".connscope.lock"
# <prefix>-0000.parquet: the empty file (schema only) of a table that got no
# rows; journals count from 1
EMPTY_SEQ = 0
RUNS_DIR = "runs"
QUARANTINE_DIR = "quarantine"

JOURNAL_SUFFIX = ".arrows.inprogress"
PARQUET_TMP_SUFFIX = ".parquet.inprogress"
PARQUET_SUFFIX = ".parquet"
MANIFEST_SUFFIX = ".json"
MANIFEST_TMP_SUFFIX = ".json.tmp"

# A run id: what new_run_id and Recording make, and what callers may choose
# (tests, fleets): one safe file name component, no leading dot.
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
_DATE_DIR = re.compile(r"date=\d{4}-\d{2}-\d{2}")
# <safe host>-<run start>[-<token>]-<seq>: TableWriter's file prefix and
# sequence number (the token is letters only: never taken for a sequence
# number, which is digits)
RUN_TOKEN_LETTERS = 6
_DATA_BASE = re.compile(r"(?P<prefix>[A-Za-z0-9_-][A-Za-z0-9._-]{0,149}-\d{8}T\d{6}Z"
                        r"(?:-[a-z]{%d})?)" % RUN_TOKEN_LETTERS +
                        r"-(?P<first>\d{4,9})(?:-(?P<last>\d{4,9}))?")
_HOST_CHARS = re.compile(r"[^A-Za-z0-9._-]")


def safe_name(s: str) -> str:
    """`s` as one file name component: other characters become `_`, no leading dot."""
    s = _HOST_CHARS.sub("_", s)[:150]
    if s.startswith("."):
        s = "_" + s[1:]
    return s or "host"


def new_run_token() -> str:
    return "".join(secrets.choice(string.ascii_lowercase) for _ in range(RUN_TOKEN_LETTERS))


def file_prefix(host: str, run_start: datetime, token: str = "") -> str:
    """`<safe host>-<run start>-<token>`: what a run's data files are named
    after (without a token, as before tokens)."""
    stamp = f"{safe_name(host)}-{run_start.astimezone(timezone.utc):%Y%m%dT%H%M%SZ}"
    return f"{stamp}-{token}" if token else stamp


def is_run_id(value: object) -> bool:
    return isinstance(value, str) and _RUN_ID.fullmatch(value) is not None


def is_date_dir(name: str) -> bool:
    return _DATE_DIR.fullmatch(name) is not None


def data_base(name: str, suffix: str) -> str | None:
    """The `<host>-<start>-<seq>` part of a data file name ending in `suffix`,
    or None if `name` is not one that TableWriter writes."""
    if not name.endswith(suffix):
        return None
    base = name[: -len(suffix)]
    return base if _DATA_BASE.fullmatch(base) else None


def data_seqs(name: str, suffix: str = PARQUET_SUFFIX) -> tuple[str, int, int] | None:
    """(prefix, first seq, last seq) of a data file name (first == last unless
    compacted), or None if `name` is not one TableWriter writes."""
    if not name.endswith(suffix):
        return None
    m = _DATA_BASE.fullmatch(name[: -len(suffix)])
    if m is None:
        return None
    first = int(m["first"])
    last = int(m["last"]) if m["last"] else first
    return m["prefix"], first, last


def is_empty_placeholder(name: str) -> bool:
    seqs = data_seqs(name)
    return seqs is not None and seqs[1] == seqs[2] == EMPTY_SEQ


def compacted_name(prefix: str, first: int, last: int) -> str:
    return f"{prefix}-{first:04d}-{last:04d}{PARQUET_SUFFIX}"


def covered_by_compaction(names) -> set[str]:
    """The Parquet files among `names` (one partition) whose rows a compacted
    file also among `names` holds: leftovers of a compaction cut short."""
    ranges: dict[str, list[tuple[int, int]]] = {}
    singles = []
    for name in names:
        seqs = data_seqs(name)
        if seqs is None:
            continue
        prefix, first, last = seqs
        if last > first:
            ranges.setdefault(prefix, []).append((first, last))
        else:
            singles.append((name, prefix, first))
    return {name for name, prefix, seq in singles
            if any(a <= seq <= b for a, b in ranges.get(prefix, ()))}


def manifest_run_id(name: str) -> str | None:
    """The run id of a `runs/` entry named `<run_id>.json`, or None."""
    if not name.endswith(MANIFEST_SUFFIX):
        return None
    run_id = name[: -len(MANIFEST_SUFFIX)]
    return run_id if is_run_id(run_id) else None


def manifest_name(run_id: str) -> str:
    if not is_run_id(run_id):
        raise ValueError(f"run id {run_id!r} is not a safe name ([A-Za-z0-9._-], "
                         f"not starting with a dot, at most 200 characters)")
    return run_id + MANIFEST_SUFFIX
