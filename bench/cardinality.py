"""Hostile cardinality (issue 13, item 8): one unprivileged process connects
to 100,000 distinct closed destinations a minute (address:port over
127.0.0.0/8, refused on loopback) while `connscope record` runs. Does the
tracer keep its interval, stay small, and still write one connects row per
connect?

Figures per run, side by side: no tracer (the flood alone), this tree, and
the --baseline commit if given.
  * snapshot gaps: the distinct `ts` of the recording's listeners and sockets
    tables (one per interval) and the largest difference between neighbours;
    target: every one within 1.2 s of the previous.
  * peak RSS of the tracer (VmHWM, sampled until it exits); target < 200 MB.
  * connects rows written for the flood's pid == the connect() calls the
    flood counted itself (and refused rows == its ECONNREFUSED results).
"""
from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path

from bench import tracers
from bench.process_tree import Processes, cpu_seconds, status_kb
from bench.results import Section, fmt

PER_MINUTE = 100_000
GAP_TARGET_S = 1.2
RSS_TARGET_MB = 200
FLOOD_PYTHON = "/usr/bin/python3"   # stdlib only; nobody cannot read every venv
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]

# The flood: its own bounded loop (count and time), loopback only. Ports below
# 1024 that nothing listens on (only root can bind them, so other tests' servers
# do not appear there mid-run); 127.x.y.z over a few thousand addresses. It
# keeps to a schedule (i connects done by i / rate seconds), counts its own
# connect() calls and what each returned, and prints them as JSON.
FLOOD = r"""
import errno, json, socket, sys, time
rate, seconds, ports = float(sys.argv[1]), float(sys.argv[2]), json.loads(sys.argv[3])
total = int(rate * seconds)
hard_stop = time.monotonic() + seconds * 1.2 + 5      # a late schedule never runs on
out = {"attempts": 0, "refused": 0, "established": 0, "other": {}}
t0 = time.monotonic()
i = 0
while i < total and time.monotonic() < hard_stop:
    due = min(total, int((time.monotonic() - t0) * rate) + 1)
    while i < due:
        h, port = divmod(i, len(ports))
        addr = f"127.{1 + (h >> 16) % 254}.{(h >> 8) & 255}.{h & 255}"
        s = socket.socket()
        try:
            out["attempts"] += 1
            s.connect((addr, ports[port]))
            out["established"] += 1
        except ConnectionRefusedError:
            out["refused"] += 1
        except OSError as e:
            k = errno.errorcode.get(e.errno, str(e.errno))
            out["other"][k] = out["other"].get(k, 0) + 1
        finally:
            s.close()
        i += 1
    time.sleep(0.01)
out["seconds"] = round(time.monotonic() - t0, 3)
out["distinct"] = i
print(json.dumps(out), flush=True)
"""


def closed_ports(n: int = 400) -> list[int]:
    """Ports below 1024 with no listener on any address right now."""
    out = subprocess.run(["ss", "-ltnH"], capture_output=True, text=True, timeout=10).stdout
    used = set()
    for line in out.splitlines():
        local = line.split()[3]
        used.add(int(local.rsplit(":", 1)[1]))
    return [p for p in range(600, 1024) if p not in used][:n]


class Sampler:
    """The tracer's peak RSS (VmHWM) and CPU every 0.5 s, in a thread: the
    last sample before it exits is its peak."""

    def __init__(self, pid: int, limit_s: float):
        self.pid = pid
        self.hwm_kb = 0
        self.cpu_s = 0.0
        self.rss_series: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, args=(limit_s,), daemon=True)

    def _run(self, limit_s):
        t0 = time.monotonic()
        end = t0 + limit_s
        while not self._stop.is_set() and time.monotonic() < end:
            hwm = status_kb(self.pid, "VmHWM")
            if not hwm:
                break   # gone
            self.hwm_kb = max(self.hwm_kb, hwm)
            self.cpu_s = cpu_seconds(self.pid) or self.cpu_s
            self.rss_series.append((round(time.monotonic() - t0, 1), status_kb(self.pid, "VmRSS")))
            self._stop.wait(0.5)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join(5)
        return False


def snapshot_times(rec: Path) -> list[float]:
    """Distinct ts (seconds) of the listeners and sockets rows: one per interval."""
    import pyarrow.dataset as ds

    ts = set()
    for table in ("listeners", "sockets"):
        path = rec / table
        if path.is_dir():
            t = ds.dataset(str(path), format="parquet", partitioning="hive").to_table(columns=["ts"])
            ts.update(x.timestamp() for x in t.column("ts").to_pylist())
    return sorted(ts)


def flood_rows(rec: Path, pid: int) -> dict:
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    path = rec / "connects"
    if not path.is_dir():
        return {"rows": 0, "refused": 0}
    t = ds.dataset(str(path), format="parquet", partitioning="hive").to_table(
        columns=["pid", "outcome"])
    t = t.filter(pc.equal(t["pid"], pid))
    return {"rows": t.num_rows,
            "refused": int(pc.sum(pc.equal(t["outcome"], "refused")).as_py() or 0)}


def manifest(rec: Path) -> dict:
    runs = sorted((rec / "runs").glob("*.json"))
    return json.loads(runs[-1].read_text()) if runs else {}


def one_run(procs: Processes, workdir: Path, label: str, spec, seconds: float,
            per_minute: int, log) -> dict:
    d = workdir / f"cardinality-{label}"
    d.mkdir(parents=True)
    os.chmod(d, 0o755)
    out: dict = {"label": label, "seconds": seconds, "per_minute": per_minute,
                 "load_before": os.getloadavg()}
    r = None
    try:
        if spec is not None:
            r = tracers.start(procs, spec, d / "tracer")
            time.sleep(2.0)   # past the first interval
        ports = closed_ports()
        with Sampler(r.pid if r else -1, seconds * 1.5 + 60) as sampler:
            fl = procs.start([*NOBODY, FLOOD_PYTHON, "-I", "-c", FLOOD, str(per_minute / 60),
                              str(seconds), json.dumps(ports)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/")
            flood_out, flood_err = fl.communicate(timeout=seconds * 1.2 + 60)
            out["flood_pid"] = fl.pid
            out["flood"] = json.loads(flood_out.strip().splitlines()[-1]) if flood_out.strip() \
                else {"error": flood_err[-400:]}
            time.sleep(2.5)   # the last interval closes and is written
            if r is not None:
                out["tracer_exit"] = procs.stop(r.proc, timeout=60)
                r = None
        out["load_after"] = os.getloadavg()
        out["peak_rss_mb"] = round(sampler.hwm_kb / 1024, 1) if spec is not None else None
        out["tracer_cpu_s"] = round(sampler.cpu_s, 1) if spec is not None else None
        out["rss_series"] = sampler.rss_series[::10]
    finally:
        if r is not None:
            out["tracer_exit"] = procs.stop(r.proc, timeout=60)
    if spec is not None:
        rec = d / "tracer" / "rec"
        ts = snapshot_times(rec)
        gaps = [b - a for a, b in zip(ts, ts[1:])]
        out["snapshots"] = len(ts)
        out["max_gap_s"] = round(max(gaps), 3) if gaps else None
        out["gaps_over_target"] = sum(g > GAP_TARGET_S for g in gaps)
        out["gaps"] = [round(g, 3) for g in gaps]
        out.update(flood_rows(rec, out["flood_pid"]))
        m = manifest(rec)
        out["manifest_status"] = m.get("status")
        out["lost_events"] = max((m.get("lost_events") or {}).values() or [0])
        out["evicted"] = m.get("evicted")
        out["status_lines"] = [line for line in tracers._text(d / "tracer" / "stderr").splitlines()
                               if "events" in line][-2:]
    return out


def verdict(r: dict) -> str:
    if r.get("max_gap_s") is None:
        return "–"
    ok = (r["gaps_over_target"] == 0 and r["peak_rss_mb"] < RSS_TARGET_MB
          and r["rows"] == r["flood"].get("attempts"))
    return "met" if ok else "not met"


def run(procs: Processes, workdir: Path, seconds: float = 300, per_minute: int = PER_MINUTE,
        baseline: tuple[Path, str] | None = None, none_seconds: float | None = None,
        log=print) -> Section:
    configs = [("none", None, none_seconds or seconds), ("record", tracers.RECORD, seconds)]
    if baseline is not None:
        src, sha = baseline
        configs.append((f"record at {sha} (baseline)", tracers.baseline_record(src, sha), seconds))
    runs = []
    for label, spec, secs in configs:
        log(f"  cardinality: {label}, {per_minute:,} destinations/min for {secs:.0f} s ...")
        res = one_run(procs, workdir, label.split()[0] + ("-baseline" if "baseline" in label
                                                          else ""), spec, secs, per_minute, log)
        res["config"] = label
        runs.append(res)
        log(f"  cardinality: {label}: flood {res['flood']}, max gap {res.get('max_gap_s')} s "
            f"({res.get('gaps_over_target')} over {GAP_TARGET_S} s), peak RSS "
            f"{res.get('peak_rss_mb')} MB, rows {res.get('rows')}, evicted {res.get('evicted')}")
    s = Section("cardinality",
                f"Hostile cardinality: one unprivileged process, {per_minute:,} distinct closed "
                f"destinations a minute over 127.0.0.0/8 (refused), while `connscope record` runs",
                "sudo bench/run --only cardinality [--baseline REV]",
                ["tracer", "seconds", "connects made", "refused", "connects rows", "refused rows",
                 "lost (manifest)", "snapshots", "max gap s", f"gaps > {GAP_TARGET_S} s",
                 "peak RSS MB", "tracer CPU s", "evicted into other", "target"],
                raw={"runs": runs})
    for r in runs:
        f = r["flood"]
        ev = r.get("evicted") or {}
        s.rows.append([r["config"], fmt(f.get("seconds"), 0), fmt(f.get("attempts")),
                       fmt(f.get("refused")), fmt(r.get("rows")), fmt(r.get("refused")),
                       fmt(r.get("lost_events")), fmt(r.get("snapshots")), fmt(r.get("max_gap_s"), 2),
                       fmt(r.get("gaps_over_target")), fmt(r.get("peak_rss_mb")),
                       fmt(r.get("tracer_cpu_s")),
                       ", ".join(f"{k} {v:,}" for k, v in ev.items() if v) or "–", verdict(r)])
    s.notes += [
        f"Targets: every snapshot within {GAP_TARGET_S} s of the previous (distinct ts of the "
        f"recording's listeners and sockets rows), peak RSS (VmHWM) under {RSS_TARGET_MB} MB, "
        "connects rows for the flood's pid == the connect() calls it counted.",
        "The flood runs as nobody (setpriv --reuid=65534) and keeps to a schedule; 'connects "
        "made' is its own count. 'none' is the flood with no tracer: the rate the machine gives it.",
    ]
    return s
