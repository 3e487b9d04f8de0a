"""A small valid recording and seeded ways to break it, for the fuzz tests of
`report` and `replay` (test_report_fuzz.py).

`write_base` writes every table through the real writer (`Recording`), so the
files and the manifest are exactly what `connscope record` produces. `mutate`
applies one seeded mutation to a copy of it and returns the paths it made
bad for certain (the report must name each of them) and a description, so a
failing case can be told and replayed from its seed alone.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from tracer.cli import main
from tracer.schema import SCHEMA_VERSION, TABLE_KEY, TABLES, VERSION_KEY, schema
from tracer.sinks.parquet_writer import Recording

T0 = 1_709_262_000_000_000          # 2024-03-01T03:00:00Z, µs
SECOND = 1_000_000
ROWS = 12
HOST, RUN_ID = "web-1", "run-fuzz"

# Values no connscope writes, by Arrow type family: extremes, specials, hostile text.
EXTREME_INTS = [-1, -(1 << 62), 1 << 62, (1 << 63) - 1, -(1 << 63), 0]
EXTREME_FLOATS = [float("inf"), float("-inf"), float("nan"), -1.0, 1e308, -0.0, 5e-324]
EXTREME_TEXT = ["", "\x1b]0;pwned\x07", "[red on red]x", "a\nb", "x" * 70_000, "\ud800"[:0],
                "../../etc/passwd"]
EXTREME_TS = [1 << 62, -(1 << 62), (1 << 63) - 1, -(1 << 63), -1, 253_402_300_800_000_000]


def _value(field: pa.Field, i: int):
    name, t = field.name, field.type
    if name == "ts":
        return T0 + (i + 1) * SECOND
    if name == "outcome":
        return ("established", "refused", "timeout", "error")[i % 4]
    if name in ("daddr", "saddr", "laddr", "raddr"):
        return f"10.0.0.{i % 3 + 1}"
    if name == "destination":
        return f"10.0.0.{i % 3 + 1}:5432"
    if name == "family":
        return 4
    if name in ("dport", "sport", "lport", "rport"):
        return 5432 + i % 2
    if pa.types.is_string(t):
        return f"{name}-{i % 2}"
    if pa.types.is_floating(t):
        return 100.0 + i
    if pa.types.is_integer(t):
        return 1 + i % 5
    raise AssertionError(f"no value for {name} ({t})")


def rows(table: str, n: int = ROWS) -> list[dict]:
    return [{f.name: _value(f, i) for f in schema(table) if f.name not in ("host", "run_id")}
            for i in range(n)]


def write_base(directory: Path) -> None:
    """Two files per table (rotate at ROWS rows), one complete run manifest."""
    with Recording(directory, host=HOST, run_id=RUN_ID, rotate_rows=ROWS) as r:
        for part in range(2):
            for t in TABLES:
                r.write(t, rows(t))
            r.flush()


def data_files(directory: Path) -> list[Path]:
    return sorted(p for t in TABLES for p in Path(directory, t).glob("date=*/*.parquet"))


def manifest_file(directory: Path) -> Path:
    return Path(directory, "runs", f"{RUN_ID}.json")


def run_cli(*argv: str) -> tuple[int, str, str]:
    """`connscope ARGV` in this process, through the same main() as the console script."""
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(list(argv))
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
    return code, out.getvalue(), err.getvalue()


# ---------------------------------------------------------------- mutations

def _flip(rng, path: Path) -> str:
    blob = bytearray(path.read_bytes())
    n = rng.choice((1, 2, 8, 64))
    for _ in range(n):
        blob[rng.randrange(len(blob))] ^= 1 << rng.randrange(8)
    path.write_bytes(bytes(blob))
    return f"flip {n} bits"


def _truncate(rng, path: Path) -> str:
    blob = path.read_bytes()
    cut = rng.randrange(len(blob))
    path.write_bytes(blob[:cut])
    return f"truncate to {cut}"


def _bad_column(rng, field: pa.Field, n: int) -> tuple[pa.Array, str]:
    t = field.type
    kind = rng.choice(("type", "extreme", "null"))
    if kind == "null":
        return pa.nulls(n, t), "all null"
    if kind == "type":
        choices = [pa.array([b"\xff\xfe" * (i + 1) for i in range(n)], pa.binary()),
                   pa.array([[i] for i in range(n)], pa.list_(pa.int64())),
                   pa.array([f"not a {t}" for _ in range(n)], pa.string()),
                   pa.array([True] * n, pa.bool_()),
                   pa.array([1.5] * n, pa.float64())]
        col = rng.choice(choices)
        return col, f"type {col.type}"
    if pa.types.is_timestamp(t):
        v = rng.choice(EXTREME_TS)
        return pa.array([v] * n, pa.int64()).cast(pa.timestamp("us", tz="UTC")), f"ts {v}"
    if pa.types.is_floating(t):
        v = rng.choice(EXTREME_FLOATS)
        return pa.array([v] * n, pa.float64()), f"float {v}"
    if pa.types.is_integer(t):
        v = rng.choice(EXTREME_INTS)
        return pa.array([v] * n, pa.int64()), f"int {v}"
    v = rng.choice(EXTREME_TEXT)
    return pa.array([v] * n, pa.string()), f"text {v[:20]!r}"


def _rewrite(rng, path: Path) -> tuple[str, bool]:
    """Rewrite a data file with one column changed or dropped; True if it is
    certainly not a valid connscope file any more."""
    table = pq.read_table(path)
    i = rng.randrange(table.num_columns)
    field = table.schema.field(i)
    what = rng.choice(("drop", "bad", "bad", "bad", "extra", "metadata"))
    meta = table.schema.metadata
    if what == "drop":
        table = table.remove_column(i)
        desc, certain = f"drop {field.name}", field.name in ("ts", "host", "run_id")
    elif what == "extra":
        table = table.append_column("surprise", pa.array([1 << 62] * table.num_rows))
        desc, certain = "extra column", False
    elif what == "metadata":
        bad = rng.choice(({VERSION_KEY.encode(): b"99"}, {VERSION_KEY.encode(): b"\x1b[2J"},
                          {TABLE_KEY.encode(): b"pools\x1b]0;x\x07"}, {}))
        if not bad:
            meta = {}
        desc, certain = f"metadata {bad}", True
        meta = {**{k: v for k, v in (meta or {}).items() if not bad or k not in bad}, **bad}
    else:
        col, desc = _bad_column(rng, field, table.num_rows)
        table = table.set_column(i, pa.field(field.name, col.type), col)
        certain = desc.startswith(("type binary", "type list", "ts ", "float inf",
                                   "float -inf", "float nan", "float -1.0", "float 1e+308",
                                   "int -", "int 4", "int 9")) or (desc == "all null" and not field.nullable) \
            or (desc.startswith("text 'xxx") and pa.types.is_string(field.type))
    table = table.replace_schema_metadata(meta)
    pq.write_table(table, path)
    return f"{what} {field.name}: {desc}", certain


MANIFEST_VALUES = [[], {}, ["a"], {"a": 1}, 1e308, -1, 1 << 70, None, True, "", "x" * 10_000,
                   "\x1b[2J", "../../../tmp/x", [[[[[]]]]]]


def _mutate_manifest(rng, path: Path) -> tuple[str, bool]:
    text = path.read_text()
    m = json.loads(text)
    how = rng.choice(("field", "field", "options", "counts", "flip", "truncate", "raw"))
    if how == "field":
        key = rng.choice(("run_id", "host", "start", "end", "status", "kernel", "backend",
                          "rows", "lost_events", "dropped_rows", "options", "files",
                          "blind_spots", "reason"))
        v = rng.choice(MANIFEST_VALUES)
        m[key] = v
        path.write_text(json.dumps(m))
        certain = key == "run_id" and not (isinstance(v, str) and v and "/" not in v
                                           and v.isprintable() and len(v) <= 256)
        return f"manifest {key} = {str(v)[:30]!r}", certain
    if how == "options":
        raw = rng.choice(("1e309", "-1e309", "NaN", "Infinity", "0", "-5", '"1"', "[1]",
                          "1e-320", "99999"))
        m["options"] = {"interval": "@@"}
        path.write_text(json.dumps(m).replace('"@@"', raw))
        return f"manifest options.interval = {raw}", True
    if how == "counts":
        key = rng.choice(("rows", "lost_events", "dropped_rows"))
        m[key] = {rng.choice(TABLES): rng.choice((-1, 1.5, "7", None, 1 << 80, [1]))}
        path.write_text(json.dumps(m))
        return f"manifest {key} = {m[key]}", True
    if how == "raw":
        blob = rng.choice(('[]', '"x"', 'null', '1', '{"run_id": ' + '[' * 100_000 + ']' * 100_000
                           + '}', '{"run_id": "a", "run_id": ["b"]}', '\x00\xff', '{"a":'))
        path.write_text(blob)
        return f"manifest = {blob[:30]!r}", True
    if how == "flip":
        return "manifest " + _flip(rng, path), False
    return "manifest " + _truncate(rng, path), False


def _foreign(rng, directory: Path) -> tuple[str, Path | None]:
    part = data_files(directory)[0].parent
    kind = rng.choice(("random", "empty", "dir", "zero", "fifo", "link", "foreign", "loop",
                       "json-dir", "json-link"))
    target = part / f"foreign-{kind}.parquet"
    if kind == "random":
        target.write_bytes(b"PAR1" + rng.randbytes(rng.randrange(0, 3000)) + b"PAR1")
    elif kind == "empty":
        target.write_bytes(b"")
    elif kind == "dir":
        target.mkdir()
    elif kind == "zero":
        target.symlink_to("/dev/zero")
    elif kind == "fifo":
        os.mkfifo(target)
    elif kind == "link":
        target.symlink_to(data_files(directory)[-1])
    elif kind == "loop":
        target.symlink_to(target)
    elif kind == "foreign":
        pq.write_table(pa.table({"x": list(range(10))}), target)
    elif kind == "json-dir":
        target = Path(directory, "runs", "planted.json")
        target.mkdir()
    else:
        target = Path(directory, "runs", "planted.json")
        target.symlink_to("/dev/zero")
    return f"foreign {kind}", target


def mutate(seed: int, directory: Path) -> tuple[str, list[Path]]:
    """Break the recording in `directory` in the way `seed` picks. Returns what
    was done and the paths that are certainly bad now."""
    rng = random.Random(seed)
    what = rng.choice(("flip", "truncate", "rewrite", "rewrite", "manifest", "foreign"))
    files = data_files(directory)
    if what == "manifest":
        desc, certain = _mutate_manifest(rng, manifest_file(directory))
        return desc, [manifest_file(directory)] if certain else []
    if what == "foreign":
        desc, target = _foreign(rng, directory)
        return desc, [target]
    if what == "rewrite":
        # a bad value needs a row to sit in: not the empty file each table
        # has from the start of a recording
        files = [f for f in files if pq.ParquetFile(f).metadata.num_rows]
    path = rng.choice(files)
    if what == "flip":
        return f"{path.name}: " + _flip(rng, path), []
    if what == "truncate":
        return f"{path.name}: " + _truncate(rng, path), [path]
    desc, certain = _rewrite(rng, path)
    return f"{path.name}: {desc}", [path] if certain else []


__all__ = ["HOST", "RUN_ID", "SCHEMA_VERSION", "data_files", "manifest_file", "mutate",
           "run_cli", "write_base"]
