"""What reading the kernel's socket table costs, once an interval, while a
real server is busy: this tree against a baseline commit in the same run.

Our nginx on loopback serves ab -c 1000 (no keep-alive) in the background,
so the table holds ~2,000 live sockets, tens of thousands in TIME_WAIT and
~2,000 fds in ab and nginx. Meanwhile each side in turn (alternated, so the
load falls on both alike) runs what `record` runs every interval,
tracer.probes.socket_table.SocketTable.read(): the held-socket dump, the
listener dump and the /proc scan. CPU is the worker's own (process time:
the kernel's work for its netlink dumps and readlinks is in it).

    sudo .venv/bin/python -m bench.socket_table [--baseline REV] [--rounds N] [--reads N]
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

AB_RUNS_MAX = 60          # the load stops by itself after this many ab runs


def worker(reads: int, gap_s: float) -> dict:
    import tracer
    from tracer.probes import sock_diag
    from tracer.probes.socket_table import SocketTable

    table = SocketTable()
    table.read()                       # the first read pays imports and caches
    cpu, wall, sockets, fds = [], [], [], []
    for _ in range(reads):
        time.sleep(gap_s)
        table._next_at = 0.0           # a full read every time, as at one read an interval
        c0, w0 = time.process_time(), time.perf_counter()
        listeners, held, snap, _ = table.read()
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
        sockets.append(len(held) + len(listeners))
        fds.append(sum(snap.fds_by_pid.values()))
    time_wait = len(sock_diag.tcp_sockets(sock_diag.state_mask(sock_diag.TIME_WAIT)))
    return {"cpu_ms": [c * 1e3 for c in cpu], "wall_ms": [w * 1e3 for w in wall],
            "sockets": sockets, "fds": fds, "time_wait": time_wait, "tracer": tracer.__file__}


def run_side(root: Path, reads: int, gap_s: float) -> dict:
    from bench.__main__ import run_worker_in

    return run_worker_in(root, __file__, ["--reads", str(reads), "--gap", str(gap_s)],
                         timeout=300)


def main(argv=None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--baseline", metavar="REV")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--reads", type=int, default=8, help="reads a side a round")
    p.add_argument("--gap", type=float, default=0.25, help="seconds between reads")
    p.add_argument("--worker", action="store_true")
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.reads, args.gap)))
        return
    from bench import apache_bench
    from bench.nginx_server import Nginx
    from bench.process_tree import Processes, raise_nofile

    raise_nofile()
    here = Path(__file__).resolve().parent.parent
    sides = [("this tree", here)]
    src = None
    if args.baseline:
        from bench.__main__ import compile_in_place, export_commit

        src, sha = export_commit(args.baseline)
        sides.append((f"baseline {sha}", src))
    compile_in_place(here)
    results: dict[str, list[dict]] = {name: [] for name, _ in sides}
    stop = threading.Event()
    ab_runs = []

    work = Path(tempfile.mkdtemp(prefix="connscope-socket-table-"))
    try:
        with Processes() as procs, Nginx(procs, work) as nginx:
            def load():
                while not stop.is_set() and len(ab_runs) < AB_RUNS_MAX:
                    ab_runs.append(apache_bench.run(nginx.url, 20_000, 1000)[0])

            loader = threading.Thread(target=load, daemon=True)
            loader.start()
            time.sleep(3)                 # ab's connections and TIME_WAIT build up
            for _ in range(args.rounds):
                for name, root in sides:
                    results[name].append(run_side(root, args.reads, args.gap))
            stop.set()
            loader.join(timeout=120)
    finally:
        stop.set()
        if src is not None:
            import shutil

            shutil.rmtree(src, ignore_errors=True)
    print(f"SocketTable.read() while nginx serves ab -c 1000 on loopback ({len(ab_runs)} ab runs "
          f"of 20,000 meanwhile); {args.rounds} rounds x {args.reads} reads a side, alternated")
    print("| side | CPU ms a read, median | min | max | wall ms, median | sockets | fds | "
          "TIME_WAIT |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    medians = {}
    for name, rs in results.items():
        cpu = [x for r in rs for x in r["cpu_ms"]]
        wall = [x for r in rs for x in r["wall_ms"]]
        medians[name] = statistics.median(cpu)
        print(f"| {name} | {medians[name]:.1f} | {min(cpu):.1f} | {max(cpu):.1f} | "
              f"{statistics.median(wall):.1f} | "
              f"{statistics.median(x for r in rs for x in r['sockets']):,.0f} | "
              f"{statistics.median(x for r in rs for x in r['fds']):,.0f} | "
              f"{statistics.median(r['time_wait'] for r in rs):,.0f} |")
    if len(medians) > 1:
        a, b = list(medians.values())
        print(f"this tree / {list(medians)[-1]}: {a / b:.2f}")


if __name__ == "__main__":
    main()
