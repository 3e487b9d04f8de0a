"""What watching connect()'s own errors costs (bpf/connect.h, connect_call_*).

On the tracepoint backend every connect() of every process (UDP, AF_UNIX
too) now runs sys_enter_connect and sys_exit_connect. Measured in one
process per configuration, alternating:
  - connect() calls per second from a Python loop, three kinds: UDP (the
    common non-TCP connect: DNS resolvers), TCP to a loopback listener, TCP
    with no route (ENETUNREACH in a namespace with only lo);
  - with kernel.bpf_stats_enabled, each program's runs and ns per run.
Configurations: no tracer; the tracer of the tree given by --project (run
once with this branch and once with a tree without these hooks, e.g. main:
the baseline).

    sudo .venv/bin/python bench/connect_call_cost.py --project . --json a.json
"""
from __future__ import annotations

import argparse
import errno
import json
import os
import socket
import subprocess
import sys
import time

N_UDP, N_TCP, N_NOROUTE = 20_000, 2_000, 20_000


def udp_loop(n: int) -> float:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    t0 = time.perf_counter()
    for _ in range(n):
        s.connect(("127.0.0.1", 9))
    dt = time.perf_counter() - t0
    s.close()
    return n / dt


def tcp_loop(n: int) -> float:
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(4096)
    addr = lst.getsockname()
    t0 = time.perf_counter()
    for _ in range(n):
        c = socket.socket()
        c.connect(addr)
        a, _ = lst.accept()
        a.close()
        c.close()
    dt = time.perf_counter() - t0
    lst.close()
    return n / dt


def noroute_loop(n: int, ns: str) -> float:
    fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    _setns(fd)
    os.close(fd)
    t0 = time.perf_counter()
    for _ in range(n):
        s = socket.socket()
        assert s.connect_ex(("10.99.0.7", 5432)) == errno.ENETUNREACH
        s.close()
    return n / (time.perf_counter() - t0)


def _setns(fd: int) -> None:
    import ctypes
    assert ctypes.CDLL(None, use_errno=True).setns(fd, 0x40000000) == 0


def prog_stats(ids: set[int]) -> dict:
    out = subprocess.run(["bpftool", "prog", "show", "--json"], capture_output=True, text=True)
    return {p.get("name", str(p["id"])): (p.get("run_cnt", 0), p.get("run_time_ns", 0))
            for p in json.loads(out.stdout or "[]") if p["id"] in ids}


def my_prog_ids() -> set[int]:
    ids = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:bpf-prog":
                for line in open(f"/proc/self/fdinfo/{fd}"):
                    if line.startswith("prog_id:"):
                        ids.add(int(line.split()[1]))
        except OSError:
            pass
    return ids


def child(project: str | None, ns: str) -> dict:
    """One configuration, in this process (the no-route loop last: setns
    moves this thread into the test namespace)."""
    session = None
    if project:
        sys.path.insert(0, os.path.abspath(project))
        from tracer.filters import Filters
        from tracer.probes import startup
        session = startup.start("auto", Filters())
    res = {"project": project}
    before = prog_stats(my_prog_ids())
    res["udp_per_s"] = udp_loop(N_UDP)
    mid = prog_stats(my_prog_ids())
    res["tcp_per_s"] = tcp_loop(N_TCP)
    mid2 = prog_stats(my_prog_ids())
    if session is not None:
        session.poll(0)
    res["noroute_per_s"] = noroute_loop(N_NOROUTE, ns)
    after = prog_stats(my_prog_ids())

    def delta(a, b, n):
        return {k: {"runs_per_call": round((b[k][0] - a.get(k, (0, 0))[0]) / n, 2),
                    "ns_per_run": round((b[k][1] - a.get(k, (0, 0))[1])
                                        / max(1, b[k][0] - a.get(k, (0, 0))[0]))}
                for k in b if b[k][0] - a.get(k, (0, 0))[0]}
    res["progs_udp"] = delta(before, mid, N_UDP)
    res["progs_tcp"] = delta(mid, mid2, N_TCP)
    res["progs_noroute"] = delta(mid2, after, N_NOROUTE)
    if session is not None:
        session.poll(0)
        session.close()
    return res


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--child", action="store_true")
    p.add_argument("--project", action="append", default=[],
                   help="tracer trees to compare (none: no tracer is always run)")
    p.add_argument("--ns")
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()
    if a.child:
        print(json.dumps(child(a.project[0] if a.project else None, a.ns)))
        return
    ns = f"csnl-{os.getpid()}-1-c"   # netlab's naming: a killed run's leftover is removed
    subprocess.run(["ip", "netns", "add", ns], check=True)
    stats = "/proc/sys/kernel/bpf_stats_enabled"
    old = open(stats).read().strip()
    open(stats, "w").write("1")
    results = []
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        for r in range(a.rounds):
            for proj in [None, *a.project]:
                argv = [sys.executable, __file__, "--child", "--ns", ns]
                if proj:
                    argv += ["--project", proj]
                out = subprocess.run(argv, capture_output=True, text=True, timeout=600)
                if out.returncode:
                    sys.exit(out.stderr)
                res = json.loads(out.stdout.splitlines()[-1])
                res["round"] = r
                results.append(res)
                print(json.dumps(res), flush=True)
    finally:
        open(stats, "w").write(old)
        subprocess.run(["ip", "netns", "del", ns])
    print("\n| tree | UDP connect/s | TCP connect+accept/s | no-route connect/s |")
    print("|---|---|---|---|")
    for proj in [None, *a.project]:
        rs = [x for x in results if x["project"] == proj]
        med = {k: sorted(x[k] for x in rs)[len(rs) // 2]
               for k in ("udp_per_s", "tcp_per_s", "noroute_per_s")}
        print(f"| {proj or 'no tracer'} | {med['udp_per_s']:,.0f} | {med['tcp_per_s']:,.0f} "
              f"| {med['noroute_per_s']:,.0f} |")


if __name__ == "__main__":
    main()
