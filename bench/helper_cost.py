"""What each kind of work costs inside a BPF program on this machine, under
the real load: several programs on `sock:inet_sock_set_state` at once, each
doing one kind of operation on every run (a hash lookup, an update and a
delete, probe reads, a ring-buffer write, ...), timed by the kernel
(kernel.bpf_stats_enabled) while nginx + ab -c 1000 run. Tells which
operations the handlers should avoid on the hot path.

    sudo .venv/bin/python -m bench.helper_cost [--requests 20000]

Loopback only; one ab run per repetition, bounded by apache_bench.run's timeout.
"""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from bench import apache_bench, bpf_programs
from bench.nginx_server import Nginx
from bench.process_tree import Processes

PROLOGUE = r"""
struct set_state_args {   /* the tracepoint's format (events/sock/inet_sock_set_state/format) */
    u64 common;
    const void *skaddr;
    int oldstate;
    int newstate;
    u16 sport, dport, family, protocol;
};
struct val64 { u64 a[8]; };
BPF_HASH(big_hash, u64, struct val64, 262144);
BPF_HASH(mid_hash, u64, struct val64, 65536);
BPF_HASH(small_hash, u64, struct val64, 4096);
BPF_HASH(small_hash_2, u64, struct val64, 4096);
BPF_HASH(small_hash_3, u64, struct val64, 4096);
BPF_TABLE("lru_hash", u64, struct val64, lru_hash, 65536);
BPF_RINGBUF_OUTPUT(ring, 4096);
"""

# name -> body run on every inet_sock_set_state (sk = args->skaddr)
PROGRAMS = {
    "nothing": "",
    "protocol test": "if (args->protocol != 6) return 1;",
    "ktime": "u64 t = bpf_ktime_get_ns(); if (t == 1) return 1;",
    "pid+comm": "char c[16]; bpf_get_current_comm(&c, 16); u64 id = bpf_get_current_pid_tgid(); if (id == 1 || c[0] == 1) return 1;",
    "1 probe read (8 B)": "u64 v = 0; bpf_probe_read_kernel(&v, 8, (void *)sk + 48); if (v == 1) return 1;",
    "5 probe reads": "u64 v = 0, w = 0; for (int i = 0; i < 5; i++) { bpf_probe_read_kernel(&v, 8, (void *)sk + 8 * i); w += v; } if (w == 1) return 1;",
    "lookup (miss), 262144 entries": "if (big_hash.lookup(&sk)) return 1;",
    "lookup (miss), 65536 entries": "if (mid_hash.lookup(&sk)) return 1;",
    "lookup (miss), 4096 entries": "if (small_hash.lookup(&sk)) return 1;",
    "update+delete, 262144 entries": "struct val64 v = {}; big_hash.update(&sk, &v); big_hash.delete(&sk);",
    "update+delete, 65536 entries": "struct val64 v = {}; mid_hash.update(&sk, &v); mid_hash.delete(&sk);",
    "update+delete, 4096 entries": "struct val64 v = {}; small_hash_2.update(&sk, &v); small_hash_2.delete(&sk);",
    "update+lookup+delete, 4096": "struct val64 v = {}; small_hash_3.update(&sk, &v); if (small_hash_3.lookup(&sk)) small_hash_3.delete(&sk);",
    "LRU update+delete, 65536": "struct val64 v = {}; lru_hash.update(&sk, &v); lru_hash.delete(&sk);",
    "ring reserve+discard 32 B": "void *p = ring.ringbuf_reserve(32); if (p) ring.ringbuf_discard(p, 1);",
}


def source() -> str:
    out = [PROLOGUE]
    for i, body in enumerate(PROGRAMS.values()):
        out.append(f"int prog_{i}(struct set_state_args *args)\n"
                   f"{{ u64 sk = (u64)args->skaddr; {body} return 0; }}\n")
    return "\n".join(out)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.helper_cost")
    p.add_argument("--requests", type=int, default=20000)
    p.add_argument("--repeat", type=int, default=2, choices=range(1, 6))
    args = p.parse_args(argv)
    from bench.tracers import bcc_env
    from tracer.probes import headers

    os.environ.update(bcc_env())
    headers.ensure_tracefs()
    from bcc import BPF   # an experiment outside connscope: bcc's own loader is fine here

    b = BPF(text=source())
    for i in range(len(PROGRAMS)):
        b.attach_tracepoint(tp="sock:inet_sock_set_state", fn_name=f"prog_{i}")
    # (attach order is the run order: the first programs see colder caches)
    names = dict(zip((f"prog_{i}" for i in range(len(PROGRAMS))), PROGRAMS))
    totals: dict[str, list[int]] = {n: [0, 0] for n in PROGRAMS}
    try:
        with Processes() as procs, tempfile.TemporaryDirectory() as d:
            with Nginx(procs, Path(d)) as ng:
                apache_bench.run(ng.url, 5000, 200)
                with bpf_programs.stats_enabled():
                    for _ in range(args.repeat):
                        before = bpf_programs.run_stats(bpf_programs.owned_by({os.getpid()}))
                        apache_bench.run(ng.url, args.requests, 1000)
                        after = bpf_programs.run_stats(bpf_programs.owned_by({os.getpid()}))
                        for key, (c, t, _) in after.items():
                            name = names.get(key)
                            if name:
                                c0, t0, _ = before.get(key, (0, 0, 0))
                                totals[name][0] += c - c0
                                totals[name][1] += t - t0
    finally:
        b.cleanup()
    base = totals["nothing"][1] / max(totals["nothing"][0], 1)
    print("| operation, on every inet_sock_set_state run | ns / run | minus 'nothing' |\n|---|---:|---:|")
    for name, (c, t) in totals.items():
        ns = t / max(c, 1)
        print(f"| {name} | {ns:.0f} | {ns - base:.0f} |")


if __name__ == "__main__":
    main()
