"""Where the tracer's own time goes, measured piece by piece (no BPF load
needed except for the start-up phases): per-event decoding, Arrow
conversion per call, the per-interval socket-table read as TIME_WAIT
sockets pile up, and the phases of start-up. Precise figures for the parts
the end-to-end tables can only show in sum."""
from __future__ import annotations

import ctypes
import json
import os
import socket
import subprocess
import time
import timeit
from pathlib import Path

from bench import tracers
from bench.process_tree import Processes
from bench.results import Section, fmt

PHASES_SCRIPT = r"""
import json, os, sys, time
t0 = time.perf_counter()
marks = {}
mem = {}
def rss():
    out = {}
    for line in open("/proc/self/status"):
        k = line.split(":")[0]
        if k in ("VmRSS", "RssAnon", "RssFile"):
            out[k] = int(line.split()[1]) // 1024
    return out
mem["interpreter"] = rss()
import tracer.cli, tracer.run
tracer.run.keep_out_of_the_tracer()
marks["import connscope, click"] = time.perf_counter()
mem["import connscope, click"] = rss()
from tracer.probes import features, headers, startup
from tracer.probes.btf import BTF
from tracer.probes.offsets import offset_cflags, drop_reason_cflags, tracepoint_hook_cflags
from tracer.filters import Filters
f = features.probe_features(only_to_choose=True)
marks["probe_features()"] = time.perf_counter()
btf = startup.kernel_btf() if hasattr(startup, "kernel_btf") else BTF.load(startup.BTF_PATH)
flags, _ = offset_cflags(btf, f.headers.matches_running_kernel)
flags += tracepoint_hook_cflags(f.tracepoint_hooks)   # raw or classic, as startup picks
flags += drop_reason_cflags(btf, raw=f.tracepoint_hooks != "classic")
marks["BTF offsets"] = time.perf_counter()
from tracer.probes.session import ProbeSession
backend = features.choose_backend("auto", f)
headers.ensure_tracefs()
def session():
    return ProbeSession(backend, Filters.build(), ringbuf=f.ringbuf.ok, offset_flags=flags,
                        env=headers.bcc_environment(f.headers))
os.environ["CONNSCOPE_PROGRAM_CACHE"] = "off"
marks["(not counted)"] = time.perf_counter()
s = session().open()
marks["cache miss: compile in a child, load, attach"] = time.perf_counter()
s.close()
os.environ.pop("CONNSCOPE_PROGRAM_CACHE")
session().open().close()   # make sure the cache holds it
marks["(not counted) "] = time.perf_counter()
s = session().open()
marks["cache hit: load and attach (ProbeSession.open)"] = time.perf_counter()
mem["cache hit: load and attach (ProbeSession.open)"] = rss()
import pyarrow, pyarrow.parquet
marks["import pyarrow (after the probes attach)"] = time.perf_counter()
mem["import pyarrow (after the probes attach)"] = rss()
s.close()
prev, out = t0, {}
for k, v in marks.items():
    if not k.startswith("(not counted)"):
        out[k] = round(v - prev, 3)
    prev = v
print(json.dumps({"seconds": out, "memory_mb": mem}))
"""


def _time_per_call(fn, number: int) -> float:
    """Seconds per call, best of 5 repeats."""
    return min(timeit.repeat(fn, number=number, repeat=5)) / number


def decoding(section: Section) -> None:
    from tracer import events
    from tracer.sinks.recorder import CONNECT_FIELDS, connect_values
    from tracer.sinks.table_writer import rows_to_batch
    from tracer.clock import Clock

    raw4 = socket.inet_aton("127.0.0.1") + bytes(12)
    t_fmt = _time_per_call(lambda: events.format_addr(events.AF_INET, raw4), 20000)
    t_ntop = _time_per_call(lambda: socket.inet_ntop(socket.AF_INET, raw4[:4]), 20000)
    rec = events.ConnectRecord()
    rec.type = events.C["EV_CONNECT"]
    rec.family = events.AF_INET
    ctypes.memmove(ctypes.addressof(rec) + type(rec).saddr.offset, raw4, 16)
    ctypes.memmove(ctypes.addressof(rec) + type(rec).daddr.offset, raw4, 16)
    rec.sport, rec.dport = 40000, 80
    rec.comm = b"ab"
    buf = memoryview(bytes(rec))
    t_dec = _time_per_call(lambda: events.decode_connect_at(buf, 0), 20000)
    ev = events.decode_connect_at(buf, 0)
    clock = Clock()
    row = connect_values(ev, clock)
    t_row = _time_per_call(lambda: connect_values(ev, clock), 20000)

    def columns(rows):
        return dict(zip(CONNECT_FIELDS, map(list, zip(*rows))))
    one, many = [row], [row] * 1000
    t_b1 = _time_per_call(lambda: rows_to_batch("connects", columns(one), host="h", run_id="r"), 300)
    t_bm = _time_per_call(lambda: rows_to_batch("connects", columns(many), host="h", run_id="r"), 20)
    rows = [
        ["events.format_addr (IPv4, cached)", fmt(t_fmt * 1e6, 2), "per address; "
         f"socket.inet_ntop alone takes {t_ntop * 1e6:.2f} µs"],
        ["events.decode_connect_at", fmt(t_dec * 1e6, 2), "per connect event, from the ring's memory"],
        ["recorder.connect_values", fmt(t_row * 1e6, 2), "per connect event: event to row tuple"],
        ["rows to Arrow, 1 row", fmt(t_b1 * 1e6, 1), "per call (the recorder hands rows over "
         "once per interval, so this is paid per interval, not per poll)"],
        ["rows to Arrow, 1000 rows", fmt(t_bm * 1e6 / 1000, 2),
         f"per row ({t_bm * 1e3:.1f} ms per call)"],
    ]
    section.rows += rows
    section.raw["decoding"] = {"format_addr_s": t_fmt, "inet_ntop_s": t_ntop,
                               "decode_connect_s": t_dec, "connect_values_s": t_row,
                               "rows_to_batch_1_s": t_b1, "rows_to_batch_1000_s": t_bm}


def _time_wait_count() -> int:
    from tracer.probes import sock_diag
    return sum(1 for s in sock_diag.tcp_sockets(sock_diag.state_mask(sock_diag.TIME_WAIT)))


def socket_table(section: Section, procs: Processes, workdir: Path, add_time_wait: int) -> None:
    from tracer.probes import sock_diag
    from tracer.probes.procfs import ProcScanner

    if add_time_wait:
        # a burst of loopback connects whose client ends stay in TIME_WAIT (60 s)
        srv = procs.start([tracers.PYTHON, "-m", "bench.loopback_load", "server", "--ports", "4",
                           "--lifetime", "60"], cwd=tracers.REPO,
                          stdout=open(workdir / "tw-server.out", "w"))
        deadline = time.monotonic() + 10
        while not (workdir / "tw-server.out").read_text().startswith("ports"):
            if time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.05)
        ports = (workdir / "tw-server.out").read_text().split()[1:5]
        subprocess.run([tracers.PYTHON, "-m", "bench.loopback_load", "connect", "--ports", *ports,
                        "--rate", "10000", "--seconds", str(add_time_wait / 10000)],
                       cwd=tracers.REPO, capture_output=True, timeout=60)
        procs.stop(srv, timeout=5)
    tw = _time_wait_count()
    owned = sock_diag.state_mask(*(s for s in range(1, 12) if s not in (sock_diag.TIME_WAIT,)))
    t_all = _time_per_call(lambda: sock_diag.tcp_sockets(), 3)
    t_no_tw = _time_per_call(lambda: sock_diag.tcp_sockets(owned), 3)
    n_all = len(sock_diag.tcp_sockets())
    scanner = ProcScanner()
    t_proc = _time_per_call(scanner.scan, 3)
    nproc = sum(1 for d in os.listdir("/proc") if d.isdigit())
    section.rows += [
        [f"sock_diag.tcp_sockets(), all states ({n_all:,} sockets, {tw:,} in TIME_WAIT)",
         fmt(t_all * 1e3, 1) + " ms", "per interval; ~"
         f"{t_all / max(n_all, 1) * 1e6:.1f} µs per socket"],
        ["sock_diag.tcp_sockets(), TIME_WAIT left out by the kernel's state filter",
         fmt(t_no_tw * 1e3, 1) + " ms", "TIME_WAIT sockets have no owner, so cannot count "
         "for any process"],
        [f"procfs.ProcScanner.scan() ({nproc} processes)", fmt(t_proc * 1e3, 1) + " ms",
         "per interval"],
    ]
    section.raw["socket_table"] = {"sockets": n_all, "time_wait": tw, "all_states_s": t_all,
                                   "without_time_wait_s": t_no_tw, "proc_scan_s": t_proc,
                                   "processes": nproc}


def startup_phases(section: Section) -> None:
    t = time.perf_counter()
    subprocess.run([tracers.PYTHON, "-c", "pass"], timeout=60)
    interpreter = time.perf_counter() - t
    p = subprocess.run([tracers.PYTHON, "-c", PHASES_SCRIPT], cwd=tracers.REPO,
                       capture_output=True, text=True, timeout=120)
    try:
        res = json.loads(p.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        section.notes.append(f"start-up phases failed: {p.stderr.strip()[-300:]}")
        return
    section.rows.append(["start-up: Python interpreter (python -c pass)",
                         fmt(interpreter * 1e3, 0) + " ms", "warm, one run"])
    mem = res["memory_mb"]
    for name, secs in res["seconds"].items():
        m = mem.get(name)
        where = (f"warm, one run; after it: RSS {m['VmRSS']} MB = {m['RssAnon']} anon + "
                 f"{m['RssFile']} file-backed" if m else "warm, one run")
        section.rows.append([f"start-up: {name}", fmt(secs * 1e3, 0) + " ms", where])
    section.raw["startup_phases"] = res | {"interpreter_s": interpreter}


def run(procs: Processes, workdir: Path, quick: bool = False, log=print) -> Section:
    s = Section("hot_paths", "Hot paths of the tracer, one piece at a time",
                "sudo bench/run --only hotpaths", ["what", "time", "per / note"])
    decoding(s)
    log("  decoding and Arrow conversion measured")
    socket_table(s, procs, workdir, add_time_wait=10_000 if quick else 20_000)
    log("  socket table measured")
    startup_phases(s)
    log("  start-up phases measured")
    s.notes += [
        "Pure-Python timings with timeit (best of 5); they run in the benchmark process on a "
        "busy machine, so take them as ±20 %.",
        "TIME_WAIT sockets: a server handling N connections/s that closes first keeps about "
        "60×N of them; the benchmark adds a burst of loopback connects to have some.",
    ]
    return s
