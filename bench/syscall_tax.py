"""Syscall tax (issue 8, 7): the tracepoint backend enables
syscalls:sys_{enter,exit}_accept{,4}; with any syscall tracepoint on, every
task takes the slow syscall entry/exit path for every syscall. Measured as
getppid() calls per second from a tiny C loop, with no tracer, with
`connscope record`, and with tcplife-bpfcc (which uses no syscall
tracepoints: the control), alternating."""
from __future__ import annotations

import subprocess
import time
from pathlib import Path

from bench import bpf_programs, tracers
from bench.process_tree import Processes
from bench.results import Section, fmt, median

SOURCE = Path(__file__).with_name("getppid_loop.c")
SECONDS = 1.0
CONFIGS = ["none", "record", "tcplife"]


def build(workdir: Path) -> Path:
    exe = workdir / "getppid_loop"
    subprocess.run(["gcc", "-O2", "-o", str(exe), str(SOURCE)], check=True, timeout=60)
    return exe


def measure(exe: Path, repeats: int = 3) -> float:
    """Best of a few short runs: the least disturbed by other work on the machine."""
    return max(float(subprocess.run([str(exe), str(SECONDS)], capture_output=True, text=True,
                                    timeout=30).stdout) for _ in range(repeats))


def syscall_programs_of_others(mine: set[int]) -> int:
    return sum(1 for name in bpf_programs.foreign_tracing(mine) if "sys_" in name)


def run(procs: Processes, workdir: Path, rounds: int = 5, quiet_budget_s: float = 60.0,
        log=print) -> Section:
    exe = build(workdir)
    runs = []
    quiet_deadline = time.monotonic() + quiet_budget_s
    for rnd in range(rounds):
        order = CONFIGS[rnd % len(CONFIGS):] + CONFIGS[:rnd % len(CONFIGS)]
        for key in order:
            spec = tracers.CONFIGS[key]
            # someone else's syscall tracepoint would put the baseline on the slow path too
            bpf_programs.wait_until_quiet(
                limit_s=max(0.0, min(10.0, quiet_deadline - time.monotonic())))
            r = tracers.start(procs, spec, workdir / f"syscalls-{rnd}-{key}") if spec else None
            try:
                if r:
                    time.sleep(0.5)
                mine = {r.pid} if r else set()
                others = syscall_programs_of_others(mine)
                rate = measure(exe)
                others = max(others, syscall_programs_of_others(mine))
            finally:
                if r:
                    procs.stop(r.proc)
            runs.append({"round": rnd, "key": key, "calls_per_s": rate,
                         "others_syscall_programs": others})
            log(f"  round {rnd + 1}/{rounds} {key:<8} {rate / 1e6:.2f} M getppid/s"
                + (f"  ({others} syscall programs of other users loaded)" if others else ""))
    base = median(r["calls_per_s"] for r in runs if r["key"] == "none")
    s = Section("syscalls", f"Syscall tax: getppid() calls/s, best of 3 × {SECONDS:.0f} s per "
                            f"run, {rounds} alternating rounds",
                "sudo bench/run --only syscalls   # loop: bench/getppid_loop.c",
                ["configuration", "M calls/s (median)", "ns / call", "vs none", "extra ns / syscall",
                 "runs with others' syscall programs loaded"],
                raw={"runs": runs})
    for key in CONFIGS:
        rs = [r for r in runs if r["key"] == key]
        m = median(r["calls_per_s"] for r in rs)
        name = tracers.CONFIGS[key].name if tracers.CONFIGS[key] else "no tracer"
        s.rows.append([name, fmt(m / 1e6, 2), fmt(1e9 / m, 0), fmt(100 * m / base, 1, " %"),
                       fmt(1e9 / m - 1e9 / base, 0) if key != "none" else "–",
                       f"{sum(1 for r in rs if r['others_syscall_programs'])}/{len(rs)}"])
    s.notes += [
        "extra ns / syscall is paid by every syscall of every process on the machine while "
        "connscope's tracepoint backend runs (not only by accept()).",
        "If another user's tool had syscall tracepoints enabled during a run, the slow path was "
        "on for the baseline too; the last column says how often that happened.",
    ]
    return s
