"""sudo bench/run [--quick] [--only SECTION ...] [--json PATH]

Runs every section on loopback, prints one Markdown report on stdout and
saves the same figures (and every raw run) as JSON. Progress goes to stderr.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time
import traceback
from pathlib import Path

from bench import machine
from bench.process_tree import Processes, raise_nofile
from bench.results import Results

SECTIONS = ("overhead", "kernel", "ceiling", "startup", "overflow", "syscalls", "hotpaths",
            "cardinality")
OVERHEAD_CONFIGS = ["none", "record", "top", "tcplife", "tcpstates", "probes", "probes-skip", "hooks",
                    "hooks-raw", "hooks-btf", "record-classic", "record-raw", "record-metrics", "record-metrics-scraped",
                    "record-no-containers"]
# raw vs classic tracepoint hooks, the metrics endpoint, container attribution: asked for by
# name (--configs), not in every run
BY_NAME_ONLY = ("hooks-raw", "hooks-btf", "record-classic", "record-raw", "record-metrics", "record-metrics-scraped",
                "record-no-containers")
# bench/run leaves out the comparison tracers it could not install (it says so)
WITHOUT = [c for c in os.environ.get("CONNSCOPE_BENCH_WITHOUT", "").split(",") if c]
DEFAULT_CONFIGS = [c for c in OVERHEAD_CONFIGS if c not in WITHOUT and c not in BY_NAME_ONLY]


def log(msg: str) -> None:
    sys.stderr.write(msg + "\n")
    sys.stderr.flush()


def parse_args(argv):
    p = argparse.ArgumentParser(prog="bench/run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer repetitions (~5 min instead of ~20)")
    p.add_argument("--only", nargs="+", choices=SECTIONS, metavar="SECTION",
                   help=f"run only these sections: {', '.join(SECTIONS)}")
    p.add_argument("--rounds", type=int, help="overhead rounds (default 5, quick 2)")
    p.add_argument("--configs", nargs="+", choices=OVERHEAD_CONFIGS,
                   default=DEFAULT_CONFIGS, help="overhead configurations")
    p.add_argument("--kernel-configs", nargs="+", choices=[c for c in OVERHEAD_CONFIGS if c != "none"],
                   help="tracers of the kernel-side cost section (default record tcplife tcpstates)")
    p.add_argument("--commit", metavar="REV",
                   help="benchmark this commit (exported with git archive into a temporary "
                        "directory; the repository is not touched) instead of the working tree, "
                        "which other engineers may be editing")
    p.add_argument("--baseline", metavar="REV",
                   help="also run `connscope record` from this commit in the overhead rounds "
                        "(config record-baseline), the kernel-cost, ceiling and cardinality "
                        "sections, side by side with the tree measured")
    p.add_argument("--ceiling-rates", type=int, nargs="+", metavar="R",
                   help="connection rates of the ceiling's steps (default 1,000 to 40,000)")
    p.add_argument("--cardinality-seconds", type=float, metavar="S",
                   help="length of each cardinality flood (default 300, quick 60)")
    p.add_argument("--cardinality-none-seconds", type=float, metavar="S",
                   help="length of the cardinality flood with no tracer (default: the same)")
    p.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "latest.json",
                   help="where to save the JSON (default bench/results/latest.json; "
                        "the Markdown goes next to it as .md too)")
    return p.parse_args(argv)


def run_section(name: str, args, procs: Processes, workdir: Path):
    q = args.quick
    if name == "overhead":
        from bench import overhead
        rounds = args.rounds or (2 if q else 5)
        configs = list(args.configs) + (["record-baseline"] if args.baseline else [])
        return overhead.run(procs, workdir, configs, rounds,
                            quiet_budget_s=30 if q else 120, log=log)
    if name == "kernel":
        from bench import kernel_cost
        return kernel_cost.run(procs, workdir, log=log,
                               configs=list(args.kernel_configs or kernel_cost.CONFIGS)
                               + (["record-baseline"] if args.baseline else []))
    if name == "ceiling":
        from bench import ceiling
        return ceiling.run(procs, workdir, quick=q, log=log, rates=args.ceiling_rates,
                           baseline=getattr(args, "baseline_source", None))
    if name == "startup":
        from bench import startup_time
        return startup_time.run(procs, workdir, warm_runs=2 if q else 4, log=log)
    if name == "overflow":
        from bench import overflow_flood
        return overflow_flood.run(procs, workdir, reps=1 if q else 2, log=log)
    if name == "syscalls":
        from bench import syscall_tax
        return syscall_tax.run(procs, workdir, rounds=3 if q else 5,
                               quiet_budget_s=20 if q else 60, log=log)
    if name == "cardinality":
        from bench import cardinality
        return cardinality.run(procs, workdir,
                               seconds=args.cardinality_seconds or (60 if q else 300),
                               none_seconds=args.cardinality_none_seconds,
                               baseline=getattr(args, "baseline_source", None), log=log)
    if name == "hotpaths":
        from bench import hot_paths
        return hot_paths.run(procs, workdir, quick=q, log=log)
    raise ValueError(name)


def export_commit(rev: str, dest: Path | None = None) -> tuple[Path, str]:
    """git archive REV into dest (a new temporary directory if None)."""
    import subprocess

    # (an exported --commit has no history: its revisions are the repository's)
    repo = Path(os.environ.get("CONNSCOPE_BENCH_REPO") or Path(__file__).resolve().parent.parent)
    sha = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", rev],
                         capture_output=True, text=True, check=True).stdout.strip()
    if dest is None:
        dest = Path(tempfile.mkdtemp(prefix=f"connscope-bench-{sha}-"))
    dest.mkdir(parents=True, exist_ok=True)
    dest.chmod(0o755)
    archive = subprocess.run(["git", "-C", str(repo), "archive", sha], capture_output=True,
                             check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    compile_in_place(dest)
    return dest, sha


def run_worker_in(root: Path, script: str, args: list, extra_env: dict | None = None,
                  timeout: float | None = None) -> dict:
    """Run `script --worker ARGS` with tree `root` first on the path, and
    return the JSON of its last line; it must say (key "tracer") that it
    imported that tree's tracer, not the venv's editable install."""
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(root), **(extra_env or {})}
    out = subprocess.run([sys.executable, script, "--worker", *args], env=env,
                         capture_output=True, text=True, check=True, cwd=root, timeout=timeout)
    got = json.loads(out.stdout.splitlines()[-1])
    if not got["tracer"].startswith(str(root)):
        raise SystemExit(f"wrong tree imported: {got['tracer']}")
    return got


def compile_in_place(tree: Path) -> str:
    """Build an exported tree's compiled event path (tracer/_fastpath.c, from
    20ea930 on) as its install would, so that a commit is measured as users
    run it; prints and returns which event path the tree will run."""
    import subprocess
    import sys

    if not (tree / "setup.py").exists():
        return "pure Python (before the compiled path)"
    proc = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"],
                          cwd=tree, capture_output=True, text=True)
    status = subprocess.run([sys.executable, "-c", "from tracer import fastpath; print(fastpath.STATUS)"],
                            cwd=tree, capture_output=True, text=True).stdout.strip()
    if proc.returncode != 0:
        status += f" (build failed: {proc.stderr.strip().splitlines()[-1:]})"
    print(f"bench: {tree}: event path {status}", file=sys.stderr)
    return status


def run_commit(args, argv) -> int:
    """Export REV (tracer/, bpf/, ...) into a temporary directory, put this
    bench/ next to it, and run the benchmark there."""
    import shutil
    import subprocess

    repo = Path(__file__).resolve().parent.parent
    src, sha = export_commit(args.commit)
    try:
        shutil.rmtree(src / "bench", ignore_errors=True)
        shutil.copytree(repo / "bench", src / "bench",
                        ignore=shutil.ignore_patterns("results", "__pycache__"))
        rest = [a for a in argv if a != "--commit" and a != args.commit]
        rest += ["--json", str(args.json.resolve())] if "--json" not in rest else []
        env = dict(os.environ, PYTHONPATH=str(src), CONNSCOPE_BENCH_REPO=str(repo),
                   CONNSCOPE_BENCH_SOURCE=f"{args.commit} = {sha} (exported, clean)")
        log(f"bench: measuring commit {sha} exported to {src}")
        return subprocess.call([sys.executable, "-m", "bench", *rest], cwd=src, env=env)
    finally:
        shutil.rmtree(src, ignore_errors=True)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if os.geteuid() != 0:
        log("Error: the tracers load BPF programs: run it as root (sudo bench/run)")
        return 1
    if args.commit:
        return run_commit(args, argv)
    raise_nofile()
    command = "sudo bench/run " + " ".join(shlex.quote(a) for a in argv)
    if os.environ.get("CONNSCOPE_BENCH_SOURCE"):
        command += f"   # run for --commit {os.environ['CONNSCOPE_BENCH_SOURCE']}"
    results = Results(machine.describe(), command.strip())
    log(f"bench: {machine.one_line(results.machine)}")
    sections = args.only or SECTIONS
    t0 = time.monotonic()
    with Processes() as procs, tempfile.TemporaryDirectory(prefix="connscope-bench-") as tmp:
        workdir = Path(tmp)
        workdir.chmod(0o755)   # nginx workers run unprivileged and read files below it
        if args.baseline:
            from bench import tracers
            src, sha = export_commit(args.baseline, workdir / "baseline")
            tracers.CONFIGS["record-baseline"] = tracers.baseline_record(src, sha)
            args.baseline_source = (src, sha)
            results.command += f"   # baseline: {args.baseline} = {sha}"
        for name in sections:
            log(f"bench: {name} ...")
            load = os.getloadavg()[0]
            t = time.monotonic()
            try:
                section = run_section(name, args, procs, workdir)
            except KeyboardInterrupt:
                results.errors.append(f"{name}: interrupted")
                break
            except Exception as e:
                results.errors.append(f"{name}: {type(e).__name__}: {e}")
                log(traceback.format_exc())
                continue
            finally:
                procs.close()
            section.machine_load = (f"{time.monotonic() - t:.0f} s, load average "
                                    f"{load:.2f} → {os.getloadavg()[0]:.2f}")
            results.add(section)
            log(f"bench: {name} done in {time.monotonic() - t:.0f} s")
    results.machine["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    results.machine["total_seconds"] = round(time.monotonic() - t0)
    md = results.markdown()
    print(md)
    results.save(args.json)
    args.json.with_suffix(".md").write_text(md)
    log(f"bench: saved {args.json} and {args.json.with_suffix('.md')} "
        f"({time.monotonic() - t0:.0f} s in all)")
    return 0 if not results.errors else 1


if __name__ == "__main__":
    sys.exit(main())
