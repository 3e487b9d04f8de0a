"""Overflow flood (issue 8, 6): a listener with a tiny backlog, drained
slowly, hit by a bounded burst of connects. Are connscope's drop counts
exact, and what does the flood cost the tracer?

Ground truth: TcpExt ListenOverflows (each SYN or ACK dropped because the
accept queue was full counts once) over the flood, from /proc/net/netstat.
That counter is machine-wide: another listener overflowing at the same time
(other engineers' tests) would show as a difference, so we also show the
listener's own sk_drops as `ss` reads it (d<N>), which counts ACK-time
overflows twice (KERNEL.md)."""
from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

from bench import tracers
from bench.kernel_counters import netstat
from bench.process_tree import Processes, tree_cpu_seconds, wait_cpu_settled
from bench.results import Section, fmt

BACKLOG = 8
ACCEPT_EVERY_MS = 50
FLOOD = {"count": 1500, "seconds": 1.5, "hold": 3.0}


def ss_drops(port: int) -> int | None:
    out = subprocess.run(["ss", "-ltmnH", f"sport = :{port}"], capture_output=True, text=True,
                         timeout=10).stdout
    m = re.search(r"skmem:\([^)]*\bd(\d+)\)", out)
    return int(m.group(1)) if m else None


class CounterSampler:
    """ListenOverflows and ListenDrops every 100 ms in a thread: the truth per
    interval, to line up with connscope's per-interval rows."""

    def __init__(self, period_s: float = 0.1, limit_s: float = 60.0):
        import threading

        self.samples: list[tuple[float, int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(period_s, limit_s), daemon=True)

    def _run(self, period_s, limit_s):
        end = time.monotonic() + limit_s
        while not self._stop.is_set() and time.monotonic() < end:
            n = netstat()
            self.samples.append((time.time(), n["TcpExt:ListenOverflows"], n["TcpExt:ListenDrops"]))
            self._stop.wait(period_s)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(5)
        return False


def interval_rows(rec: Path, port: int) -> list[dict]:
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    path = rec / "overflows"
    if not path.is_dir():
        return []
    t = ds.dataset(str(path), format="parquet", partitioning="hive").to_table(
        columns=["ts", "lport", "drops", "syn_drops"])
    t = t.filter(pc.equal(t["lport"], port)).sort_by("ts")
    return [{"ts": r["ts"].timestamp(), "drops": r["drops"], "syn_drops": r["syn_drops"]}
            for r in t.to_pylist()]


def overflow_rows(rec: Path, port: int) -> tuple[int, int, int]:
    """(drops, syn_drops, rows) for the port in the recording's overflows table."""
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    path = rec / "overflows"
    if not path.is_dir():
        return 0, 0, 0
    t = ds.dataset(str(path), format="parquet", partitioning="hive").to_table(
        columns=["lport", "drops", "syn_drops"])
    t = t.filter(pc.equal(t["lport"], port))
    return (int(pc.sum(t["drops"]).as_py() or 0), int(pc.sum(t["syn_drops"]).as_py() or 0),
            t.num_rows)


def _start_server(procs, d: Path):
    srv = procs.start([tracers.PYTHON, "-m", "bench.loopback_load", "slow-server",
                       "--backlog", str(BACKLOG), "--accept-every-ms", str(ACCEPT_EVERY_MS),
                       "--lifetime", "120"], cwd=tracers.REPO, stdout=open(d / "server.out", "w"))
    deadline = time.monotonic() + 10
    while "port" not in (d / "server.out").read_text():
        if time.monotonic() > deadline:
            raise RuntimeError("slow server did not start")
        time.sleep(0.02)
    return srv, int((d / "server.out").read_text().split()[1])


def one_flood(procs: Processes, workdir: Path, label: str, listener_first: bool) -> dict:
    d = workdir / f"overflow-{label}"
    d.mkdir(parents=True)
    srv = r = None
    out = {"label": label, "listener_first": listener_first}
    try:
        if listener_first:
            srv, port = _start_server(procs, d)
        r = tracers.start(procs, tracers.RECORD, d / "tracer")
        time.sleep(1.5)   # past the first interval
        if not listener_first:
            srv, port = _start_server(procs, d)
        with CounterSampler() as sampler:
            before = netstat()
            ss0 = ss_drops(port)
            cpu0 = tree_cpu_seconds(r.pid)
            fl = subprocess.run([tracers.PYTHON, "-m", "bench.loopback_load", "flood", "--port",
                                 str(port), *(f"--{k}={v}" for k, v in FLOOD.items())],
                                cwd=tracers.REPO, capture_output=True, text=True, timeout=60)
            time.sleep(2.5)   # the last interval closes and is written
            cpu1 = wait_cpu_settled(r.pid)
            after = netstat()
            ss1 = ss_drops(port)
        out["truth_samples"] = sampler.samples
        out.update(port=port, flood=json.loads(fl.stdout.strip().splitlines()[-1]),
                   tracer_cpu_s=round(cpu1 - cpu0, 3),
                   listen_overflows=after["TcpExt:ListenOverflows"] - before["TcpExt:ListenOverflows"],
                   listen_drops=after["TcpExt:ListenDrops"] - before["TcpExt:ListenDrops"],
                   ss_sk_drops=(ss1 - ss0) if ss0 is not None and ss1 is not None else None)
    finally:
        if r is not None:
            out["tracer_exit"] = procs.stop(r.proc)
        if srv is not None:
            procs.stop(srv, timeout=5)
    drops, syn_drops, rows = overflow_rows(d / "tracer" / "rec", out["port"])
    out.update(drops=drops, syn_drops=syn_drops, overflow_rows=rows,
               intervals=interval_rows(d / "tracer" / "rec", out["port"]))
    return out


def run(procs: Processes, workdir: Path, reps: int = 2, log=print) -> Section:
    runs = []
    for i in range(reps):
        for first in (True, False):
            label = f"{'before' if first else 'after'}-{i}"
            res = one_flood(procs, workdir, label, first)
            runs.append(res)
            log(f"  listener {'before' if first else 'after'} tracer: connscope drops "
                f"{res['drops']} + syn {res['syn_drops']} = {res['drops'] + res['syn_drops']}; "
                f"ListenOverflows {res['listen_overflows']}, ss d {res['ss_sk_drops']}; "
                f"cpu {res['tracer_cpu_s']} s")
    s = Section("overflow", f"Overflow flood: backlog {BACKLOG}, one accept per "
                            f"{ACCEPT_EVERY_MS} ms, {FLOOD['count']} non-blocking connects over "
                            f"{FLOOD['seconds']} s held {FLOOD['hold']} s",
                "sudo bench/run --only overflow",
                ["listener opened", "connscope drops", "syn_drops", "sum", "ListenOverflows Δ",
                 "sum / truth", "ss sk_drops Δ", "tracer CPU s", "exit"],
                raw={"runs": runs})
    for r in runs:
        total = r["drops"] + r["syn_drops"]
        truth = r["listen_overflows"]
        s.rows.append(["before the tracer" if r["listener_first"] else "after the tracer",
                       fmt(r["drops"]), fmt(r["syn_drops"]), fmt(total), fmt(truth),
                       fmt(100 * total / truth if truth else None, 1, " %"),
                       fmt(r["ss_sk_drops"]), fmt(r["tracer_cpu_s"], 2), r.get("tracer_exit")])
    s.notes += [
        "connscope: sums of `drops` and `syn_drops` in the recording's overflows table for the "
        "listener's port (tracepoint backend: ACK-time overflows from kfree_skb, SYN-time drops "
        "from the listener's sk_drops read each interval).",
        "ListenOverflows Δ: machine-wide, from just before the flood to 2.5 s after it ended.",
    ]
    return s
