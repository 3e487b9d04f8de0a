"""Ceiling (issue 8, 4): the highest connection rate at which `connscope
record` loses nothing, and what it does past it. Rates step up; each step
gets a fresh recording, its own server, paced connectors, and a fixed
duration; the steps stop at a bounded maximum or when the generator itself
cannot reach the rate asked of it."""
from __future__ import annotations

import json
import time
from pathlib import Path

from bench import bpf_programs, tracers
from bench.process_tree import Processes, tree_cpu_seconds, tree_kb, wait_cpu_settled
from bench.results import Section, fmt

PYTHON = tracers.PYTHON
CONNECTORS = 2            # one per core: more only adds scheduling noise here
SERVER_PORTS = 4          # more 4-tuples for TIME_WAIT reuse


def _last_json(path: Path) -> dict:
    for line in reversed(path.read_text().splitlines()):
        try:
            return json.loads(line)
        except ValueError:
            continue
    return {}


def _wait_ports(path: Path, proc, limit_s: float = 10.0) -> list[int]:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        text = path.read_text() if path.exists() else ""
        if text.startswith("ports"):
            return [int(p) for p in text.splitlines()[0].split()[1:]]
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise RuntimeError("the loopback server did not start")


def one_step(procs: Processes, workdir: Path, rate: int, seconds: float, tag: str = "",
             spec=None) -> dict:
    spec = spec or tracers.RECORD
    d = workdir / f"ceiling-{rate}{tag}"
    d.mkdir(parents=True)
    server = procs.start([PYTHON, "-m", "bench.loopback_load", "server", "--ports",
                          str(SERVER_PORTS), "--lifetime", str(seconds + 120)],
                         cwd=tracers.REPO, nofile=True, stdout=open(d / "server.out", "w"))
    out = {"rate": rate, "seconds": seconds}
    r = None
    try:
        ports = _wait_ports(d / "server.out", server)
        r = tracers.start(procs, spec, d / "tracer")
        cpu0 = tree_cpu_seconds(r.pid)
        t0 = time.monotonic()
        clients = [procs.start([PYTHON, "-m", "bench.loopback_load", "connect", "--ports",
                                *map(str, ports), "--rate", str(rate / CONNECTORS),
                                "--seconds", str(seconds)],
                               cwd=tracers.REPO, nofile=True, stdout=open(d / f"client{i}.out", "w"))
                   for i in range(CONNECTORS)]
        rss_max, series, next_sample = 0, [], t0
        while any(c.poll() is None for c in clients) and time.monotonic() < t0 + seconds + 30:
            rss = tree_kb(r.pid, "VmRSS")
            rss_max = max(rss_max, rss)
            if time.monotonic() >= next_sample:
                series.append([round(time.monotonic() - t0, 1), round(rss / 1024, 1),
                               round(tree_kb(r.pid, "RssAnon") / 1024, 1)])
                next_sample += 1.0
            time.sleep(0.25)
        out["rss_series_mb"] = series
        for c in clients:
            procs.stop(c, timeout=5)
        # The server goes before the tracer: what it accepts after the tracer
        # stopped (a queue still full under overload) would count as missing
        # rows; what is left in its queues when it closes is never accepted.
        procs.stop(server, timeout=5)
        got = [_last_json(d / f"client{i}.out") for i in range(CONNECTORS)]
        out["attempted"] = sum(g.get("ok", 0) + g.get("failed", 0) for g in got)
        out["failed"] = sum(g.get("failed", 0) for g in got)
        out["achieved_rate"] = round(out["attempted"] / seconds)
        cpu1 = wait_cpu_settled(r.pid)
        out["tracer_alive"] = r.proc.poll() is None
        out["tracer_cpu_s"] = round(cpu1 - cpu0, 2)
        out["rss_max_mb"] = round(rss_max / 1024, 1)
        out["peak_rss_mb"] = round(tree_kb(r.pid, "VmHWM") / 1024, 1)
        # runs the kernel skipped (a BPF program already running on that CPU):
        # events lost before any buffer, so not in lost_events
        owned = bpf_programs.owned_by({r.pid})
        out["recursion_misses"] = sum(p.get("recursion_misses", 0) for p in owned)
        out["tracepoint_hooks"] = bpf_programs.tracepoint_hooks(owned)
    finally:
        if r is not None:
            out["tracer_exit"] = procs.stop(r.proc)
        procs.stop(server, timeout=5)
    out["accepted"] = _last_json(d / "server.out").get("accepted")
    connects = accepts = 0
    lost = missed = None
    missed_by: dict = {}
    for port in ports:
        c = tracers.recording_counts(d / "tracer" / "rec", port)
        connects += c.connects or 0
        accepts += c.accepts or 0
        lost, missed, missed_by = c.lost, c.missed_runs, c.missed_runs_by or {}
    # runs the kernel skipped that nothing handled: the manifest's missed_runs
    out.update(connects=connects, accepts=accepts, lost=lost, missed_runs=missed,
               missed_runs_by=missed_by, manifest_note=c.note if ports else "")
    return out


def run(procs: Processes, workdir: Path, quick: bool = False, log=print,
        rates: list[int] | None = None, baseline=None) -> Section:
    """baseline: (tree, label) of another commit (bench/run --baseline): each
    step then runs it too, right after this tree's, at the same rate."""
    rates = rates or ([2_000, 8_000, 16_000, 24_000] if quick else
                      [1_000, 2_000, 4_000, 8_000, 12_000, 16_000, 20_000, 24_000, 32_000, 40_000])
    seconds = 5.0 if quick else 8.0
    sides = [("", None)]
    if baseline is not None:
        sides.append((f" at {baseline[1]}", tracers.baseline_record(*baseline)))
    steps = []

    def step(rate, secs, tag, endurance=False):
        out = []
        for label, spec in sides:
            st = one_step(procs, workdir, rate, secs, tag=tag + ("-baseline" if spec else ""),
                          spec=spec)
            st["side"] = label
            st["endurance"] = endurance
            steps.append(st)
            out.append(st)
            log(f"  {rate:>6}/s asked{label}, {st['achieved_rate']:>6}/s made: connects "
                f"{st['connects']}/{st['attempted']}, accepts {st['accepts']}/{st['accepted']}, "
                f"lost {st['lost']}, cpu {st['tracer_cpu_s']} s, rss max {st['rss_max_mb']} MB, "
                f"peak {st['peak_rss_mb']} MB, exit {st['tracer_exit']}")
        return out[0]

    for rate in rates:
        st = step(rate, seconds, "")
        if st["achieved_rate"] < 0.8 * rate:
            log("  the generator cannot go faster here: stopping")
            break
    if not quick:
        # Past the ceiling for longer: does memory stay bounded, do losses stay counted?
        rate = max(s["achieved_rate"] for s in steps if not s["side"])
        step(rate, 30.0, "-endurance", endurance=True)
    def missing_rows(st) -> int:
        return (st["attempted"] - st["connects"]) + ((st["accepted"] or 0) - st["accepts"])

    lossless = [s for s in steps if s["lost"] == 0 and not s["side"]
                and missing_rows(s) == 0 and not s.get("endurance")]
    clean = [s["achieved_rate"] for s in lossless]
    spotless = [s["achieved_rate"] for s in lossless if not s.get("missed_runs")]
    s = Section("ceiling", f"Ceiling: connscope record under paced loopback connects "
                           f"({CONNECTORS} connector processes, 1 accepting server, "
                           f"{seconds:.0f} s per step)",
                "sudo bench/run --only ceiling [--ceiling-rates R ...] [--baseline REV]",
                ["asked /s", "made /s", "connects recorded", "accepts recorded", "lost (manifest)",
                 "missing rows", "BPF recursion misses", "skipped runs not handled (manifest)",
                 "tracer CPU %", "RSS max MB", "peak RSS MB", "alive, exit"],
                raw={"steps": steps})
    for st in steps:
        missing = missing_rows(st)
        s.rows.append([fmt(st["rate"]) + (" (30 s)" if st.get("endurance") else "") + st.get("side", ""),
                       fmt(st["achieved_rate"]),
                       f"{st['connects']:,} / {st['attempted']:,}",
                       f"{st['accepts']:,} / {st['accepted'] or 0:,}", fmt(st["lost"]),
                       fmt(missing), fmt(st.get("recursion_misses")), fmt(st.get("missed_runs")),
                       fmt(100 * st["tracer_cpu_s"] / st["seconds"], 0),
                       fmt(st["rss_max_mb"], 0), fmt(st["peak_rss_mb"], 0),
                       f"{'yes' if st['tracer_alive'] else 'NO'}, {st['tracer_exit']}"])
    s.notes += [
        f"Highest rate with nothing lost: {fmt(max(clean)) if clean else 'none'} connections/s "
        f"({2 * max(clean) if clean else 0:,} events/s: one connect and one accept each): no "
        f"record lost, no row missing (connects and accepts). With no skipped probe run "
        f"unhandled either: {fmt(max(spotless)) if spotless else 'none'} connections/s (what a "
        f"skipped run would have seen is lost too; counted apart, in the manifest's missed_runs).",
        "made /s: connects the generator actually attempted, over the step's duration; "
        "connects/accepts recorded: Parquet rows for the server's ports vs what the connectors "
        "attempted and the server accepted.",
        "missing rows: connects attempted minus connects rows, plus accepts done minus accepts "
        "rows. 'lost' is the manifest's lost_events: every kernel event the ring buffer "
        "refused, of every kind (each connection here makes four: connect, accept and two "
        "closes), so it should be at least the missing rows, never less.",
        "BPF recursion misses: runs of connscope's programs the kernel skipped because another "
        "BPF program was running on that CPU (bpftool recursion_misses); those events are lost "
        "without being counted in lost_events. 'skipped runs not handled' are those of them "
        "no nested copy of the program handled (the manifest's missed_runs, by program in the "
        "JSON): with lost, what may explain missing rows.",
        "Tracer CPU % of one core over the step, including draining its buffer after it.",
        "Tracepoint hooks (the kind of the tracer's set-state program in bpftool): "
        + (", ".join(f"{fmt(st['rate'])}{st.get('side', '')}: {st.get('tracepoint_hooks', '?')}"
                     for st in steps)
           if len({st.get("tracepoint_hooks") for st in steps}) > 1 else
           f"{steps[0].get('tracepoint_hooks', '?') if steps else '?'} in every step."),
    ]
    for e in (st for st in steps if st.get("endurance")):
        s.notes.append(f"Endurance step{e.get('side', '')}: RSS over time, (seconds, VmRSS MB, "
                       "RssAnon MB): " + ", ".join(f"({t:.0f}, {m:.0f}, {a:.0f})" for t, m, a in
                                                   e["rss_series_mb"][::5]))
    return s
