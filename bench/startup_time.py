"""Start-up (issue 8, 5): from launch to the first connection the tracer
captured, cold and warm, connscope record against tcplife-bpfcc.

Definition. A prober connects to its own loopback listener every 10 ms and
stamps each connect with the wall time just before connect(). We note the
wall time just before launching the tracer, wait until it is surely running
(ready signal + 1.5 s), stop it, and look up which probe connections it
recorded (connscope: connects rows to the probe's port, by source port;
tcplife: lines with that RPORT). Start-up = the stamp of the earliest one
captured - launch time. This does not depend on when a tool flushes its
output, so both tools are measured the same way; the resolution is 10 ms.

Cold: the page cache of the files a tracer reads at start-up is dropped
first (bench/page_cache.py). Warm: straight after another start.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from bench import page_cache, tracers
from bench.process_tree import Processes
from bench.results import Section, fmt, median

INTERVAL_MS = 10


def _captured_sports(key: str, r: tracers.Running, port: int) -> set[int]:
    if key == "record":
        import pyarrow.compute as pc
        import pyarrow.dataset as ds

        path = r.dir / "rec" / "connects"
        if not path.is_dir():
            return set()
        t = ds.dataset(str(path), format="parquet", partitioning="hive").to_table(
            columns=["dport", "sport"])
        t = t.filter(pc.equal(t["dport"], port))
        return set(t["sport"].to_pylist())
    out = set()
    with open(r.stdout, errors="replace") as f:   # tcplife
        for line in f:
            c = line.split()
            if len(c) >= 9 and c[0].isdigit() and c[5] == str(port):
                out.add(int(c[3]))
    return out


def one_start(procs: Processes, workdir: Path, key: str, label: str) -> dict:
    d = workdir / f"startup-{label}"
    d.mkdir(parents=True)
    log_path = d / "probe.json"
    prober = procs.start([tracers.PYTHON, "-m", "bench.loopback_load", "probe",
                          "--interval-ms", str(INTERVAL_MS), "--seconds", "90",
                          "--out", str(log_path)],
                         cwd=tracers.REPO, stdout=open(d / "probe.out", "w"))
    deadline = time.monotonic() + 10
    while "port" not in (d / "probe.out").read_text() and time.monotonic() < deadline:
        time.sleep(0.02)
    port = int((d / "probe.out").read_text().split()[1])
    time.sleep(0.2)
    spec = tracers.CONFIGS[key]
    r = None
    try:
        r = tracers.start(procs, spec, d / "tracer")
        time.sleep(1.5)
    finally:
        stopped = time.time()
        if r is not None:
            procs.stop(r.proc)
        procs.stop(prober, timeout=10)
    probes = json.loads(log_path.read_text())
    sports = _captured_sports(key, r, port)
    captured = [(t, sp) for t, sp in probes if sp in sports]
    if not captured:
        return {"tracer": spec.name, "label": label, "first_event_s": None}
    first = min(t for t, _ in captured)
    # up to half a second before the stop: the last ones may still be in flight
    after = [sp for t, sp in probes if first <= t < stopped - 0.5]
    return {"tracer": spec.name, "label": label,
            "first_event_s": round(first - r.launched, 3),
            "ready_signal_s": round(r.ready_after_s, 3),
            "captured_after_first": f"{sum(sp in sports for sp in after)}/{len(after)}"}


def run(procs: Processes, workdir: Path, warm_runs: int = 4, log=print) -> Section:
    runs = []
    files = page_cache.startup_files()
    for key in ("record", "tcplife"):
        n = page_cache.evict(files)
        res = one_start(procs, workdir, key, f"{key}-cold")
        res.update(kind="cold", evicted_files=n)
        runs.append(res)
        log(f"  {res['tracer']:<18} cold  first event after {res['first_event_s']} s")
    for i in range(warm_runs):
        for key in ("record", "tcplife"):
            res = one_start(procs, workdir, key, f"{key}-warm{i}")
            res["kind"] = "warm"
            runs.append(res)
            log(f"  {res['tracer']:<18} warm  first event after {res['first_event_s']} s")
    s = Section("startup", "Start-up: launch to first connection captured "
                           f"(probe connects every {INTERVAL_MS} ms)",
                "sudo bench/run --only startup",
                ["tracer", "cold (s)", f"warm, median of {warm_runs} (s)", "warm range (s)",
                 "ready signal, warm (s)", "captured after the first"],
                raw={"runs": runs})
    for name in ("connscope record", "tcplife-bpfcc"):
        rs = [r for r in runs if r["tracer"] == name]
        cold = [r["first_event_s"] for r in rs if r["kind"] == "cold"]
        warm = [r["first_event_s"] for r in rs if r["kind"] == "warm" and r["first_event_s"]]
        ready = [r.get("ready_signal_s") for r in rs if r["kind"] == "warm"]
        s.rows.append([name, fmt(cold[0] if cold else None, 2), fmt(median(warm), 2),
                       f"{min(warm):.2f}–{max(warm):.2f}" if warm else "–",
                       fmt(median(ready), 2),
                       ", ".join(r.get("captured_after_first", "?") for r in rs)])
    s.notes += [
        "first event: wall time of the earliest probe connect the tool recorded, minus the wall "
        "time just before it was launched (see bench/startup_time.py for why this definition).",
        "ready signal: connscope's 'recording to' line on stderr; for tcplife, its BPF program "
        "loaded (from /proc/PID/fdinfo) plus 0.5 s, since its header stays in Python's buffer.",
        "cold: posix_fadvise(DONTNEED) on every file under the venv, tracer/, bpf/, the Python "
        "stdlib, /usr/lib/python3/dist-packages, /var/cache/connscope, /usr/src and libbcc; "
        "pages mapped by other running processes stay cached.",
        "captured after the first: of the probe connects from the first captured one on, how "
        "many the tool recorded (a gap would mean it was not fully attached yet).",
    ]
    return s
