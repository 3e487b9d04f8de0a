"""What `connscope record` costs on a host with no new connections: CPU as
% of a core and wake-ups a second, side by side with other commits in the
same alternating rounds. A tracer is left running for days; what it spends
each interval (the socket table, the map reads, the per-interval tables and
their Parquet files) is paid whether or not anything happens, and inside
every load figure too.

    sudo .venv/bin/python -m bench.idle_cost [--baseline REV ...] [--rounds 6] [--seconds 20]

Each round runs this tree's record, then each REV's (git archive'd; the
order reverses every other round), each started afresh and measured from
--settle seconds after it said it records, for --seconds. Prints Markdown:
each round's figure, the median, and the median of the per-round ratios
to this tree's."""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench import machine, tracers
from bench.__main__ import export_commit
from bench.process_tree import Processes, tree_context_switches, tree_cpu_seconds


def one_run(procs: Processes, spec: tracers.TracerSpec, run_dir: Path, settle_s: float,
            seconds: float) -> dict:
    r = tracers.start(procs, spec, run_dir)
    try:
        time.sleep(settle_s)
        c0, w0, t0 = tree_cpu_seconds(r.pid), tree_context_switches(r.pid), time.monotonic()
        time.sleep(seconds)
        c1, w1, t1 = tree_cpu_seconds(r.pid), tree_context_switches(r.pid), time.monotonic()
        died = r.proc.poll()
    finally:
        procs.stop(r.proc)
    if died is not None:
        raise tracers.TracerFailed(f"{spec.name} exited ({died}) while measured")
    return {"cpu_pct": 100.0 * (c1 - c0) / (t1 - t0), "wakeups_per_s": (w1 - w0) / (t1 - t0)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.idle_cost")
    p.add_argument("--baseline", nargs="*", default=[], metavar="REV")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--settle", type=float, default=3.0,
                   help="seconds after start-up before measuring (its first intervals)")
    args = p.parse_args(argv)
    print(f"`sudo .venv/bin/python -m bench.idle_cost {' '.join(sys.argv[1:] if argv is None else argv)}`  \n"
          f"{machine.one_line(machine.describe())}\n")
    with Processes() as procs, tempfile.TemporaryDirectory(prefix="connscope-idle-") as tmp:
        work = Path(tmp)
        work.chmod(0o755)
        sides = [("this tree", tracers.RECORD)]
        for rev in args.baseline:
            src, sha = export_commit(rev, work / f"tree-{rev}")
            sides.append((sha, tracers.baseline_record(src, sha)))
        got: dict[str, list[dict]] = {label: [] for label, _ in sides}
        for k in range(args.rounds):
            for label, spec in (sides if k % 2 == 0 else sides[::-1]):
                run = one_run(procs, spec, work / f"run-{k}-{label.replace(' ', '')}",
                              args.settle, args.seconds)
                got[label].append(run)
                sys.stderr.write(f"round {k + 1} {label}: {run['cpu_pct']:.2f} % of a core, "
                                 f"{run['wakeups_per_s']:.1f} wake-ups/s\n")
    mine = got["this tree"]
    print(f"| tree | idle CPU % of a core, each of {args.rounds} rounds of {args.seconds:g} s | "
          "median | paired ratio to this tree (median) | wake-ups / s (median) |")
    print("|---|---|---:|---:|---:|")
    for label, runs in got.items():
        cpu = [r["cpu_pct"] for r in runs]
        ratio = statistics.median(a["cpu_pct"] / b["cpu_pct"] for a, b in zip(runs, mine)
                                  if b["cpu_pct"] > 0) if any(b["cpu_pct"] for b in mine) else float("nan")
        print(f"| {label} | " + " / ".join(f"{x:.2f}" for x in cpu)
              + f" | {statistics.median(cpu):.2f} | {ratio:.2f} | "
              f"{statistics.median(r['wakeups_per_s'] for r in runs):.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
