"""`connscope record` under one constant loopback connection rate, side by
side with other commits: tracer CPU, peak RSS, RSS and RssAnon each second,
records lost. One step of the ceiling section (bench/ceiling.py), repeated
and alternated between trees.

    sudo .venv/bin/python -m bench.steady_rss --rate 16000 --seconds 10 \\
        [--baseline REV ...] [--rounds 2]

Each round runs this tree's record, then each REV's (git archive'd), each
with a fresh server, connectors and recording. Prints Markdown."""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from bench import ceiling, machine, tracers
from bench.__main__ import export_commit
from bench.process_tree import Processes, raise_nofile


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.steady_rss")
    p.add_argument("--rate", type=int, required=True, help="connections a second, all connectors")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--baseline", nargs="*", default=[], metavar="REV")
    args = p.parse_args(argv)
    raise_nofile()
    print(f"`python -m bench.steady_rss {' '.join(sys.argv[1:] if argv is None else argv)}`  \n"
          f"{machine.one_line(machine.describe())}\n")
    with Processes() as procs, tempfile.TemporaryDirectory(prefix="connscope-steady-") as tmp:
        work = Path(tmp)
        work.chmod(0o755)
        sides = [("this tree", None)]
        for rev in args.baseline:
            src, sha = export_commit(rev, work / f"tree-{rev}")
            sides.append((sha, tracers.baseline_record(src, sha)))
        got = {label: [] for label, _ in sides}
        for k in range(args.rounds):
            for label, spec in sides:
                st = ceiling.one_step(procs, work, args.rate, args.seconds,
                                      tag=f"-{k}-{label.replace(' ', '')}", spec=spec)
                got[label].append(st)
                sys.stderr.write(f"round {k + 1} {label}: cpu {st['tracer_cpu_s']} s, peak "
                                 f"{st['peak_rss_mb']} MB, lost {st['lost']}\n")
    print("| tree | made /s | tracer CPU s / 10k conn (each round) | peak RSS MB (each) | "
          "RSS max MB (each) | RssAnon MB at the end (each) | lost records (each) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, steps in got.items():
        per10k = [st["tracer_cpu_s"] / max(st["attempted"], 1) * 1e4 for st in steps]
        print(f"| {label} | {statistics.median(st['achieved_rate'] for st in steps):,.0f} | "
              + " / ".join(f"{x:.3f}" for x in per10k) + " | "
              + " / ".join(f"{st['peak_rss_mb']:.0f}" for st in steps) + " | "
              + " / ".join(f"{st['rss_max_mb']:.0f}" for st in steps) + " | "
              + " / ".join(f"{st['rss_series_mb'][-1][2]:.0f}" if st["rss_series_mb"] else "–"
                           for st in steps) + " | "
              + " / ".join(str(st["lost"]) for st in steps) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
