"""What each stage of `connscope record` costs, by switching it off.

    sudo .venv/bin/python -m bench.stage_cost [--rate 5000] [--seconds 12] [--rounds 3]

Our loopback server (4 ports) and two paced connectors at --rate connections/s
each run for --seconds while `record` traces them; its process's user and
system CPU (all threads, /proc/PID/stat) is read from just before the load to
3 s after it. Each round runs every configuration once, in turn, so the
machine's drift falls on all of them:

  all          record as shipped
  no rows      the recorder's event rows (connects, accepts) not built: no
               Arrow conversion, journal or Parquet for them
  no tables    the live tables (listeners, edges, processes) not fed events
  no sockets   the socket table (sock_diag dumps, /proc fd scan) not read
  walk only    all three off: what is left is reading and decoding the ring

A stage switched off is replaced by a function that does nothing, in the
tracer's process only (bench/stage_off.py); the tracer is otherwise the
working tree's. Differences between configurations are the stages' costs;
CPU per 10,000 connections is over the connections the server accepted.
Loopback only; every process is stopped at the end of its run.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CONFIGS = {"all": "", "no rows": "rows", "no tables": "tables", "no sockets": "sockets",
           "walk only": "rows,tables,sockets"}
TICK = os.sysconf("SC_CLK_TCK")


def _cpu(pid: int) -> tuple[float, float]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICK, int(fields[12]) / TICK


def one_run(off: str, rate: int, seconds: float, workdir: Path) -> dict:
    py = sys.executable
    env = dict(os.environ, CONNSCOPE_STAGES_OFF=off)
    server = subprocess.Popen([py, "-m", "bench.loopback_load", "server", "--ports", "4",
                               "--lifetime", str(seconds + 60)], cwd=REPO,
                              stdout=subprocess.PIPE, text=True)
    tracer = None
    try:
        ports = server.stdout.readline().split()[1:]
        out = workdir / f"rec-{time.monotonic_ns()}"
        tracer = subprocess.Popen([py, "-m", "bench.stage_off", "record", "--out", str(out)],
                                  cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True)
        time.sleep(3)
        if tracer.poll() is not None:
            raise RuntimeError(f"record exited: {tracer.stderr.read()[-500:]}")
        u0, s0 = _cpu(tracer.pid)
        load = [subprocess.Popen([py, "-m", "bench.loopback_load", "connect", "--ports", *ports,
                                  "--rate", str(rate), "--seconds", str(seconds)], cwd=REPO,
                                 stdout=subprocess.PIPE, text=True) for _ in range(2)]
        made = sum(json.loads(p.communicate(timeout=seconds + 60)[0].splitlines()[-1])["ok"]
                   for p in load)
        time.sleep(3)
        u1, s1 = _cpu(tracer.pid)
    finally:
        if tracer is not None and tracer.poll() is None:
            tracer.send_signal(signal.SIGINT)
            try:
                tracer.wait(timeout=60)
            except subprocess.TimeoutExpired:
                tracer.kill()
        server.terminate()
        accepted = server.communicate(timeout=30)[0]
    accepted = json.loads(accepted.splitlines()[-1])["accepted"]
    return {"user_s": u1 - u0, "sys_s": s1 - s0, "made": made, "accepted": accepted}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rate", type=int, default=5000, help="connections/s per connector (2)")
    p.add_argument("--seconds", type=float, default=12.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("Error: record loads BPF programs: run it as root", file=sys.stderr)
        return 1
    runs: dict[str, list[dict]] = {name: [] for name in CONFIGS}
    with tempfile.TemporaryDirectory(prefix="connscope-stages-") as tmp:
        for r in range(args.rounds):
            for name, off in CONFIGS.items():
                run = one_run(off, args.rate, args.seconds, Path(tmp))
                runs[name].append(run)
                per = 1e4 / max(run["accepted"], 1)
                print(f"round {r + 1}/{args.rounds} {name:10s} user {run['user_s']:.2f} s  "
                      f"sys {run['sys_s']:.2f} s  ({(run['user_s'] + run['sys_s']) * per:.3f} "
                      f"s/10k)  accepted {run['accepted']}", file=sys.stderr, flush=True)
    print(f"`sudo .venv/bin/python -m bench.stage_cost --rate {args.rate} --seconds "
          f"{args.seconds:g} --rounds {args.rounds}`: 2 connectors x {args.rate}/s, "
          f"medians of {args.rounds} rounds\n")
    print("| configuration | user CPU s / 10k conn | system | total | total vs all |")
    print("|---|---:|---:|---:|---:|")
    base = None
    for name, rs in runs.items():
        u = statistics.median(x["user_s"] * 1e4 / x["accepted"] for x in rs)
        s = statistics.median(x["sys_s"] * 1e4 / x["accepted"] for x in rs)
        t = statistics.median((x["user_s"] + x["sys_s"]) * 1e4 / x["accepted"] for x in rs)
        base = t if base is None else base
        print(f"| {name} | {u:.3f} | {s:.3f} | {t:.3f} | {100 * t / base:.0f} % |")
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)},
                                         "runs": runs}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
