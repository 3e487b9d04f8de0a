"""What the hooks cost by themselves: do-nothing BPF programs (return 0) on the
tracepoints connscope's tracepoint backend uses, under nginx + ab -c 1000,
alternating with no programs. Tells the price of being hooked at all (the
tracepoint machinery, and the syscall tracepoints' tax on every syscall)
apart from what connscope's programs do once called.

    sudo .venv/bin/python -m bench.hook_cost [--rounds 4]
    sudo .venv/bin/python -m bench.hook_cost --hold   # load "all hooks", wait for SIGINT
                                                     # (bench/run's "hooks" configuration)
    sudo .venv/bin/python -m bench.hook_cost --hold --raw   # the same, shared hooks as raw
                                                           # tracepoints ("hooks-raw")
    sudo .venv/bin/python -m bench.hook_cost --hold --btf   # shared hooks as BTF tracepoints
                                                           # (tp_btf, "hooks-btf")

Loopback only; each configuration runs --rounds times; every ab run is
bounded by apache_bench.run's timeout.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from bench import apache_bench
from bench.nginx_server import Nginx
from bench.process_tree import Processes

CONFIGS = {
    "no programs": None,
    "sock:inet_sock_set_state, as a raw tracepoint": "RAW_TRACEPOINT_PROBE(inet_sock_set_state) { return 0; }",
    "sock:inet_sock_set_state": "TRACEPOINT_PROBE(sock, inet_sock_set_state) { return 0; }",
    "syscalls:sys_{enter,exit}_accept4": (
        "TRACEPOINT_PROBE(syscalls, sys_enter_accept4) { return 0; }\n"
        "TRACEPOINT_PROBE(syscalls, sys_exit_accept4) { return 0; }"),
    "all of the tracepoint backend's hooks": (
        "TRACEPOINT_PROBE(sock, inet_sock_set_state) { return 0; }\n"
        "TRACEPOINT_PROBE(syscalls, sys_enter_accept4) { return 0; }\n"
        "TRACEPOINT_PROBE(syscalls, sys_exit_accept4) { return 0; }\n"
        "TRACEPOINT_PROBE(tcp, tcp_destroy_sock) { return 0; }\n"
        "TRACEPOINT_PROBE(tcp, tcp_retransmit_skb) { return 0; }"),
    # The same, with the tracepoints every backend shares hooked as raw
    # tracepoints (what connscope does where the kernel has BTF); the syscall
    # ones stay classic, as in connscope.
    "all of the tracepoint backend's hooks, shared ones raw": (
        "RAW_TRACEPOINT_PROBE(inet_sock_set_state) { return 0; }\n"
        "TRACEPOINT_PROBE(syscalls, sys_enter_accept4) { return 0; }\n"
        "TRACEPOINT_PROBE(syscalls, sys_exit_accept4) { return 0; }\n"
        "RAW_TRACEPOINT_PROBE(tcp_destroy_sock) { return 0; }\n"
        "RAW_TRACEPOINT_PROBE(tcp_retransmit_skb) { return 0; }"),
    # (skb:kfree_skb is left out: bcc cannot compile its format's enum field
    # without connscope's workaround, and it runs once per connection at 65 ns.)
}


ALL_HOOKS = "all of the tracepoint backend's hooks"
ALL_HOOKS_RAW = "all of the tracepoint backend's hooks, shared ones raw"
# The same shared ones as BTF tracepoints (tp_btf, as connscope hooks them
# where the kernel loads them): bcc cannot make these, so they are loaded
# here as `r0 = 0; exit` through connscope's own bpf(2) wrapper; the syscall
# ones stay bcc's classic tracepoints.
SHARED_BTF = ("inet_sock_set_state", "tcp_destroy_sock", "tcp_retransmit_skb")
SYSCALL_HOOKS = ("TRACEPOINT_PROBE(syscalls, sys_enter_accept4) { return 0; }\n"
                 "TRACEPOINT_PROBE(syscalls, sys_exit_accept4) { return 0; }")


def btf_tracepoint_fds(events=SHARED_BTF) -> list[int]:
    """Do-nothing tp_btf programs attached to `events`: their fds (program,
    link), to close."""
    import struct

    from tracer.probes import bpf_syscall as sc
    from tracer.probes.btf import kernel_btf

    return_0 = struct.pack("<QQ", 0x00000000000000B7, 0x0000000000000095)
    fds: list[int] = []
    for event in events:
        prog, _ = sc.prog_load(sc.PROG_TRACING, return_0, expected_attach_type=sc.TRACE_RAW_TP,
                               attach_btf_id=kernel_btf().tracepoint_id(event), log_size=4096)
        fds.append(prog)
        fds.append(sc.raw_tracepoint_open(prog, None))
    return fds


def hold(bpf, fds=()) -> None:
    import os
    import signal
    import sys

    stop = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.append(1))
    sys.stderr.write("hook_cost: ready\n")
    sys.stderr.flush()
    try:
        while not stop:
            signal.pause()
    finally:
        bpf.cleanup()
        for fd in fds:
            os.close(fd)
    print("{}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.hook_cost")
    p.add_argument("--rounds", type=int, default=4, choices=range(1, 11))
    p.add_argument("--requests", type=int, default=20000)
    p.add_argument("--hold", action="store_true",
                   help="load the do-nothing programs on all hooks and keep them until SIGINT/SIGTERM")
    p.add_argument("--raw", action="store_true",
                   help="with --hold: the shared tracepoints as raw tracepoints")
    p.add_argument("--btf", action="store_true",
                   help="with --hold: the shared tracepoints as BTF tracepoints (tp_btf)")
    args = p.parse_args(argv)
    import os

    from bench.tracers import bcc_env
    from tracer.probes import headers

    os.environ.update(bcc_env())   # the header tree connscope found, for bcc's compile
    headers.ensure_tracefs()
    from bcc import BPF   # an experiment outside connscope: bcc's own loader is fine here

    if args.hold:
        if args.btf:
            bpf = BPF(text=SYSCALL_HOOKS)
            hold(bpf, btf_tracepoint_fds())
        else:
            hold(BPF(text=CONFIGS[ALL_HOOKS_RAW if args.raw else ALL_HOOKS]))
        return

    rps: dict[str, list[float]] = {k: [] for k in CONFIGS}
    with Processes() as procs, tempfile.TemporaryDirectory() as d:
        with Nginx(procs, Path(d)) as ng:
            apache_bench.run(ng.url, 5000, 200)   # warm-up
            for rnd in range(args.rounds):
                names = list(CONFIGS)
                names = names[rnd % len(names):] + names[:rnd % len(names)]
                for name in names:
                    b = BPF(text=CONFIGS[name]) if CONFIGS[name] else None
                    try:
                        res, _ = apache_bench.run(ng.url, args.requests, 1000)
                    finally:
                        if b is not None:
                            b.cleanup()
                    rps[name].append(res.rps)
                    print(f"  round {rnd + 1}/{args.rounds} {name:45s} {res.rps:9.0f} req/s "
                          f"failed {res.failed}", flush=True)
    base = statistics.median(rps["no programs"])
    print("\n| do-nothing programs on | req/s (median) | vs none |\n|---|---:|---:|")
    for name, v in rps.items():
        m = statistics.median(v)
        print(f"| {name} | {m:,.0f} | {100 * m / base:.1f} % |")


if __name__ == "__main__":
    main()
