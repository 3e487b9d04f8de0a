"""Kernel-side cost: how long each tracer's BPF programs run per connection
(kernel.bpf_stats_enabled, on only for these runs). This time is spent in the
context of ab, nginx and softirqs, so it is not in the tracer's own CPU
figure; on a saturated machine it comes straight out of throughput."""
from __future__ import annotations

import time
from pathlib import Path

from bench import apache_bench, bpf_programs, tracers
from bench.nginx_server import Nginx
from bench.process_tree import Processes, tree_cpu_seconds, wait_cpu_settled
from bench.results import Section, fmt

CONFIGS = ["record", "tcplife", "tcpstates"]



def _delta(before: dict, after: dict) -> dict[str, tuple[int, int, int]]:
    def pad(v):   # (runs, ns) from a bpftool without recursion counts
        return tuple(v) + (0,) * (3 - len(v))

    zero = (0, 0, 0)
    return {name: tuple(a - b for a, b in zip(pad(vals), pad(before.get(name, zero))))
            for name, vals in after.items()}


def run(procs: Processes, workdir: Path, requests: int = 20_000, concurrency: int = 1000,
        log=print, configs: list[str] = CONFIGS) -> Section:
    s = Section("kernel", f"Kernel-side cost per connection (BPF run time, ab -n {requests} "
                          f"-c {concurrency} against nginx, one run each)",
                "sudo bench/run --only kernel",
                ["tracer", "program", "runs / conn", "ns / run", "ns / conn", "recursion misses"])
    raw = []
    with Nginx(procs, workdir / "kernel-nginx") as nginx:
        apache_bench.run(nginx.url, requests, concurrency)
        for key in configs:
            spec = tracers.CONFIGS[key]
            r = tracers.start(procs, spec, workdir / f"kernel-{key}")
            try:
                with bpf_programs.stats_enabled():
                    before = bpf_programs.run_stats(bpf_programs.owned_by({r.pid}))
                    a0 = nginx.accepted()
                    cpu0 = tree_cpu_seconds(r.pid)
                    res, _ = apache_bench.run(nginx.url, requests, concurrency)
                    conns = nginx.accepted() - a0 - 1
                    after = bpf_programs.run_stats(bpf_programs.owned_by({r.pid}))
                cpu = wait_cpu_settled(r.pid) - cpu0
            finally:
                procs.stop(r.proc)
            d = _delta(before, after)
            total_ns = sum(t for _, t, _ in d.values())
            raw.append({"tracer": spec.name, "connections": conns, "rps": res.rps,
                        "programs": d, "tracer_cpu_s": cpu})
            log(f"  {spec.name:<22} {total_ns / max(conns, 1):8.0f} ns BPF per connection, "
                f"user {cpu / max(conns, 1) * 1e6:.1f} µs per connection ({res.rps:.0f} req/s)")
            for name, (c, t, m) in sorted(d.items(), key=lambda kv: -kv[1][1]):
                if c == 0:
                    continue
                s.rows.append([spec.name, f"`{name}`", fmt(c / conns, 2), fmt(t / c, 0),
                               fmt(t / conns, 0), fmt(m)])
            s.rows.append([f"**{spec.name}**", "**all programs**", "", "",
                           f"**{fmt(total_ns / max(conns, 1), 0)}**",
                           fmt(sum(m for _, _, m in d.values()))])
            s.rows.append([f"**{spec.name}**", "**its own process (user+sys), µs / conn**", "", "",
                           f"**{fmt(cpu / max(conns, 1) * 1e6, 1)}**", ""])
    s.raw = {"runs": raw}
    s.notes += [
        "ns / run and runs / conn from `bpftool prog show` run_time_ns and run_cnt, before and "
        "after the ab run, divided by the connections nginx accepted. Programs of other users "
        "(other engineers' tests) are excluded: only programs whose fds the tracer holds count.",
        "bpf_stats adds about two clock reads to every program run, so these times are slightly "
        "high; they are measured only here, not in the overhead table.",
        "Not in these figures: the ring/perf buffer wake-ups (irq_work and the scheduler), and "
        "the syscall-tracepoint slow path that enabling sys_enter/exit_accept puts on every "
        "syscall (see the syscall-tax table).",
    ]
    return s
