"""Peak memory and time of `connscope report` on files that expand a lot (issue 13).

A Parquet file of constant values compresses to almost nothing: 20 million
connects rows fit in under 1 MB on disk and are gigabytes in memory. This
writes such files (with connscope's schema metadata, as a hostile or foreign
writer could) and runs `connscope report` on each, in a fresh process, from
this tree and, with --baseline, from another checkout in the same run, side by
side. Peak RSS is the child's ru_maxrss (RUSAGE_CHILDREN of a fresh parent per run).

    .venv/bin/python bench/report_memory.py                       # this tree
    .venv/bin/python bench/report_memory.py --baseline /work/main # and main, same run

Figures, not assertions. Cases:
  20M-rows-1-file   one ~0.85 MB file of 20,000,000 rows (issue 13)
  4M-rows-1-file    one file at the reader's per-file cap (read, not skipped)
  20M-rows-5-files  20,000,000 rows in five files of 4,000,000
  300K-destinations 300,000 rows, each to a destination of its own
  1M-destinations   1,000,000 rows, each to a destination of its own
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tracer.schema import schema  # noqa: E402

T0 = 1_709_262_000_000_000
ROW_GROUP = 1_000_000


def constant_connects(n: int) -> pa.Table:
    """n connects rows, every value the same (one established connect, repeated)."""
    values = {"ts": T0, "host": "web-1", "run_id": "run-bench", "pid": 100, "comm": "app",
              "tid": 100, "family": 4, "saddr": "10.0.0.1", "sport": 40000,
              "daddr": "10.0.0.2", "dport": 5432, "latency_us": 250.0,
              "outcome": "established", "syn_retransmits": 0, "errno": None}
    sch = schema("connects")
    cols = []
    for f in sch:
        v = values[f.name]
        if v is None:
            cols.append(pa.nulls(n, f.type))
        else:
            one = pa.array([v], f.type if not pa.types.is_timestamp(f.type) else pa.int64())
            if pa.types.is_timestamp(f.type):
                one = one.cast(f.type)
            cols.append(pa.repeat(one[0], n).cast(f.type) if n else pa.array([], f.type))
    return pa.Table.from_arrays(cols, schema=sch)


def spread(t: pa.Table) -> pa.Table:
    """`t` with every row to a destination of its own (127.x.y.z:port)."""
    n = t.num_rows
    daddr = pa.array([f"127.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}" for i in range(n)])
    dport = pa.array([i % 60_000 + 1 for i in range(n)], pa.int32())
    t = t.set_column(t.schema.get_field_index("daddr"), schema("connects").field("daddr"), daddr)
    return t.set_column(t.schema.get_field_index("dport"), schema("connects").field("dport"),
                        dport)


def write_file(path: Path, rows: int, distinct: bool = False) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    with pq.ParquetWriter(path, schema("connects"), compression="zstd") as w:
        left = rows
        while left:
            n = min(left, ROW_GROUP)
            t = constant_connects(n)
            w.write_table(spread(t) if distinct else t, row_group_size=n)
            left -= n
    return path.stat().st_size


def make_case(base: Path, name: str, files: int, rows_per_file: int,
              distinct: bool = False) -> tuple[Path, int]:
    d = base / name
    size = 0
    for i in range(files):
        size += write_file(d / "connects" / "date=2024-03-01" / f"part-{i}.parquet",
                           rows_per_file, distinct)
    return d, size


def measure(checkout: Path, directory: Path, timeout_s: float) -> dict:
    """One `connscope report DIR` from `checkout`, in a fresh process."""
    env = dict(os.environ, PYTHONPATH=str(checkout))
    start = time.monotonic()
    p = subprocess.Popen([sys.executable, "-m", "tracer", "report", str(directory)],
                         cwd=checkout, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, 9)
        out, err = p.communicate()
    elapsed = time.monotonic() - start
    return {"exit": p.returncode, "s": elapsed, "out": out.decode(errors="replace"),
            "err": err.decode(errors="replace")}


def measure_rss(checkout: Path, directory: Path, timeout_s: float) -> dict:
    """`measure` in a child of its own: RUSAGE_CHILDREN is a maximum over every
    child ever reaped, so a fresh parent per run makes it this run's alone."""
    code = (
        "import resource, sys, json; sys.path.insert(0, sys.argv[1]);"
        "from bench.report_memory import measure; from pathlib import Path;"
        "r = measure(Path(sys.argv[2]), Path(sys.argv[3]), float(sys.argv[4]));"
        "r['rss_mb'] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024;"
        "print(json.dumps(r))")
    import json
    p = subprocess.run([sys.executable, "-c", code, str(ROOT), str(checkout), str(directory),
                        str(timeout_s)], capture_output=True, text=True, cwd="/")
    return json.loads(p.stdout)


def _git(checkout: Path) -> str:
    try:
        rev = subprocess.run(["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(checkout), "status", "--porcelain",
                                "--untracked-files=no"], capture_output=True, text=True).stdout
        return rev + (" (modified)" if dirty.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "?"


def _verdict(r: dict) -> str:
    if r["exit"] != 0:
        lines = [x for x in r["err"].splitlines() if x.strip()]
        return f"exit {r['exit']}: {lines[-1][:90] if lines else ''}"
    for line in r["out"].splitlines():
        if line.strip().startswith("rows "):
            return line.strip()[:90]
    return "exit 0"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", type=Path, help="another checkout (e.g. /work/main)")
    ap.add_argument("--only", nargs="*", help="case names to run")
    ap.add_argument("--timeout", type=float, default=300.0)
    args = ap.parse_args()
    cases = [("20M-rows-1-file", 1, 20_000_000, False), ("4M-rows-1-file", 1, 4_000_000, False),
             ("20M-rows-5-files", 5, 4_000_000, False),
             ("300K-destinations", 1, 300_000, True), ("1M-destinations", 1, 1_000_000, True)]
    if args.only:
        cases = [c for c in cases if c[0] in args.only]
    trees = [("this tree", ROOT)] + ([("baseline", args.baseline)] if args.baseline else [])
    print(f"# report memory, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, "
          f"{os.cpu_count()} cores, python {sys.version.split()[0]}, pyarrow {pa.__version__}")
    for label, tree in trees:
        print(f"#   {label}: {tree} at {_git(tree)}")
    print("| case | on disk | tree | exit | peak RSS | time | what report said |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="connscope-report-mem-") as tmp:
        for name, files, rows, distinct in cases:
            d, size = make_case(Path(tmp), name, files, rows, distinct)
            for label, tree in trees:
                r = measure_rss(tree, d, args.timeout)
                print(f"| {name} | {size / 1e6:.2f} MB | {label} | {r['exit']} | "
                      f"{r['rss_mb']:.0f} MB | {r['s']:.1f} s | {_verdict(r)} |", flush=True)


if __name__ == "__main__":
    main()
