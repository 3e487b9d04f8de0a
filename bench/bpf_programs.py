"""Loaded BPF programs as bpftool sees them: who owns them, and (with
kernel.bpf_stats_enabled=1) how often they ran and for how long."""
from __future__ import annotations

import json
import os
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

STATS_SYSCTL = Path("/proc/sys/kernel/bpf_stats_enabled")


def programs() -> list[dict]:
    out = subprocess.run(["bpftool", "prog", "show", "--json"], capture_output=True,
                         text=True, timeout=20)
    try:
        return json.loads(out.stdout or "[]")
    except ValueError:
        return []


def prog_ids_of(pid: int) -> set[int]:
    """Ids of the BPF programs process `pid` holds open (from /proc, because
    this bpftool cannot show owners)."""
    ids = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    try:
        fds = list(fd_dir.iterdir())
    except OSError:
        return ids
    for fd in fds:
        try:
            if os.readlink(fd) != "anon_inode:bpf-prog":
                continue
            for line in Path(f"/proc/{pid}/fdinfo/{fd.name}").read_text().splitlines():
                if line.startswith("prog_id:"):
                    ids.add(int(line.split()[1]))
        except OSError:
            continue
    return ids


def owned_by(pids, progs: list[dict] | None = None) -> list[dict]:
    ids = set().union(*(prog_ids_of(p) for p in pids)) if pids else set()
    if not ids:
        return []
    progs = programs() if progs is None else progs
    return [p for p in progs if p.get("id") in ids]


def tracepoint_hooks(progs: list[dict]) -> str:
    """Which kind of hook a tracer's programs put on inet_sock_set_state, by
    the program's kernel type: connscope falls back from BTF to raw to
    classic ones when the kernel refuses a kind, and a benchmark must say
    which it measured. (Its loader names the program sock_set_state,
    tracer/probes/loader.py; tracers that name it otherwise show as "?".)"""
    kinds = {"tracing": "BTF", "raw_tracepoint": "raw", "tracepoint": "classic"}
    for p in progs:
        if p.get("name") == "sock_set_state":
            return kinds.get(p.get("type"), str(p.get("type")))
    return "?"


def others(pids) -> list[dict]:
    """Programs loaded by anyone else (other engineers' tests): noise to report."""
    ids = set().union(*(prog_ids_of(p) for p in pids)) if pids else set()
    return [p for p in programs() if p.get("id") not in ids]


TRACING_TYPES = {"tracepoint", "raw_tracepoint", "kprobe", "tracing", "perf_event",
                 "cgroup_sock_addr", "cgroup_sock", "sock_ops", "cgroup_skb"}


def foreign_tracing(mine=()) -> list[str]:
    """Names of tracing programs loaded by processes other than `mine`: they
    run on our connections too and make every figure noisier."""
    return [p.get("name", "?") for p in others(set(mine)) if p.get("type") in TRACING_TYPES]


def wait_until_quiet(mine=(), limit_s: float = 0.0) -> list[str]:
    """Wait (at most limit_s) until no one else has tracing programs loaded;
    returns what is still loaded."""
    deadline = time.monotonic() + limit_s
    while True:
        found = foreign_tracing(mine)
        if not found or time.monotonic() >= deadline:
            return found
        time.sleep(1.0)


@contextmanager
def stats_enabled():
    """Per-program run counts and times. Costs a little on every program run,
    so it is on only for the kernel-side measurement, and restored after."""
    old = STATS_SYSCTL.read_text().strip()
    STATS_SYSCTL.write_text("1")
    try:
        yield
    finally:
        STATS_SYSCTL.write_text(old)


def run_stats(progs: list[dict]) -> dict[str, tuple[int, int, int]]:
    """{program name: (run_cnt, run_time_ns, recursion_misses)}, summed over
    programs with the same name."""
    out: dict[str, tuple[int, int, int]] = {}
    for p in progs:
        name = p.get("name", str(p.get("id")))
        c, t, m = out.get(name, (0, 0, 0))
        out[name] = (c + p.get("run_cnt", 0), t + p.get("run_time_ns", 0),
                     m + p.get("recursion_misses", 0))
    return out
