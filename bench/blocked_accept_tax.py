"""Syscall tax of the kprobe/fentry catch-up for threads blocked in accept()
since before start (tracer/probes/blocked_accepts.py): getppid() calls per
second (bench/getppid_loop.c) with no tracer, with a session that found
nobody blocked, with one that found a blocked thread (syscalls:
sys_exit_accept{,4} attached), and with the same session after that thread
returned (detached). Each figure: the best of `repeats` runs of 1 s.

    sudo python3 -m bench.blocked_accept_tax --backend kprobe --loop PATH
(PATH: getppid_loop built with `gcc -O2`; the QEMU guests have no compiler,
so build it on the host and carry it in.)
"""
from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time

from tracer.filters import Filters
from tracer.probes import startup

ACCEPTOR = r"""
import socket, sys
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(8)
print(s.getsockname()[1], flush=True)
c, _ = s.accept()
print("accepted", flush=True)
sys.stdin.readline()
"""


def rate(loop: str, repeats: int) -> float:
    return max(float(subprocess.run([loop, "1"], capture_output=True, text=True,
                                    timeout=30).stdout) for _ in range(repeats)) / 1e6


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", default="kprobe")
    ap.add_argument("--loop", required=True)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args(argv)
    rows = [("no tracer", rate(a.loop, a.repeats), "-")]
    s = startup.start(a.backend, Filters())
    try:
        b = s.blocked_accepts
        rows.append(("session, nobody blocked at start", rate(a.loop, a.repeats),
                     f"found {b.found}, attached {b.attached}"))
    finally:
        s.close()
    proc = subprocess.Popen([sys.executable, "-c", ACCEPTOR], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline())
        time.sleep(0.5)
        t0 = time.monotonic()
        s = startup.start(a.backend, Filters())
        start_s = time.monotonic() - t0
        try:
            b = s.blocked_accepts
            scan = b.scan
            rows.append(("session, 1 thread blocked (exit tracepoints on)", rate(a.loop, a.repeats),
                         f"found {b.found}, attached {b.attached}; scan {scan.tasks_read} threads "
                         f"in {scan.seconds * 1000:.1f} ms; start {start_s:.2f} s"))
            c = socket.create_connection(("127.0.0.1", port), timeout=5)
            proc.stdout.readline()
            deadline = time.monotonic() + 10
            while b.attached and time.monotonic() < deadline:
                s.poll(50)
            c.close()
            rows.append(("same session after it returned", rate(a.loop, a.repeats),
                         f"attached {b.attached} ({b.detached_because} after "
                         f"{b.detached_at - b.attached_at:.2f} s)"))
        finally:
            s.close()
    finally:
        proc.kill()
        proc.wait(5)
    base = rows[0][1]
    print(f"| {a.backend} | M getppid/s (best of {a.repeats} x 1 s) | vs none | state |")
    print("|---|---:|---:|---|")
    for name, r, note in rows:
        print(f"| {name} | {r:.2f} | {100 * r / base:.1f} % | {note} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
