"""The tracers we compare: how to start each, when it is ready, and what it
saw of the connections to one port.

Each runs as its own process with stdout and stderr in files (a tool reading
a pipe we drain slowly would be measuring us), leads its own process group,
and is stopped with SIGINT so connscope finalizes its Parquet files.
"""
from __future__ import annotations

import glob
import json
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from bench.process_tree import Processes, tracer_env

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable   # the venv's python when started by bench/run
# The console script when benchmarking the working tree; `python -m tracer`
# (the same entry point) for a commit exported by --commit, which has no venv.
_SCRIPT = REPO / ".venv" / "bin" / "connscope"
CONNSCOPE = [str(_SCRIPT)] if _SCRIPT.exists() else [PYTHON, "-m", "tracer"]


class TracerFailed(RuntimeError):
    pass


def bcc_env() -> dict:
    """bcc's tools need a kernel header tree to compile, and this kernel has
    none of its own: give them the one connscope found (its BCC_KERNEL_SOURCE)."""
    from tracer.probes import headers

    env = tracer_env()
    env.update(headers.bcc_environment(headers.find_header_tree()))
    return env


@dataclass
class Counts:
    connects: int | None = None    # client side: connect attempts to the port
    accepts: int | None = None     # server side: connections accepted (or handshakes done)
    lost: int | None = None        # events the tool says it lost
    note: str = ""
    # probe runs the kernel skipped that nothing handled (connscope's
    # manifest missed_runs; bpftool's recursion_misses also count the runs
    # a nested copy handled)
    missed_runs: int | None = None
    missed_runs_by: dict | None = None   # {program: missed_runs}, kept in the JSON


@dataclass
class Running:
    spec: "TracerSpec"
    proc: object
    dir: Path
    launched: float                 # time.time() at Popen
    ready_after_s: float = 0.0

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def stdout(self) -> Path:
        return self.dir / "stdout"

    @property
    def stderr(self) -> Path:
        return self.dir / "stderr"


@dataclass
class TracerSpec:
    name: str
    argv: Callable[[Path], list]          # run dir -> command
    ready: Callable[[Running], bool]
    count: Callable[[Running, int], Counts]
    env: Callable[[], dict] = tracer_env
    kind: str = "tracer"                  # "tracer" or "diagnostic"
    about: str = ""
    cwd: Path | None = None               # where it runs (default: this repository)

    def command(self, run_dir: Path) -> str:
        return " ".join(str(a) for a in self.argv(run_dir))


def _text(p: Path) -> str:
    try:
        return p.read_text(errors="replace")
    except OSError:
        return ""


def start(procs: Processes, spec: TracerSpec, run_dir: Path, ready_limit_s: float = 60.0) -> Running:
    run_dir.mkdir(parents=True, exist_ok=True)
    launched = time.time()
    t0 = time.monotonic()
    proc = procs.start(spec.argv(run_dir), env=spec.env(), stdin=open("/dev/null"), cwd=spec.cwd or REPO,
                       stdout=open(run_dir / "stdout", "wb"), stderr=open(run_dir / "stderr", "wb"))
    r = Running(spec, proc, run_dir, launched)
    deadline = t0 + ready_limit_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            procs.stop(proc)
            raise TracerFailed(f"{spec.name} exited with {proc.returncode}: "
                               f"{_text(r.stderr).strip()[-400:]}")
        if spec.ready(r):
            r.ready_after_s = time.monotonic() - t0
            return r
        time.sleep(0.1)
    procs.stop(proc)
    raise TracerFailed(f"{spec.name} not ready after {ready_limit_s:.0f} s")


# ---------------------------------------------------------------- connscope

def recording_counts(rec_dir: Path, port: int) -> Counts:
    """Rows for `port` in a connscope recording, and its manifest's losses."""
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    def rows(table: str, column: str) -> int:
        path = rec_dir / table
        if not path.is_dir():
            return 0
        t = ds.dataset(str(path), format="parquet", partitioning="hive").to_table(columns=[column])
        return int(pc.sum(pc.equal(t[column], port)).as_py() or 0)

    manifests = [json.loads(Path(p).read_text()) for p in glob.glob(str(rec_dir / "runs" / "*.json"))]
    lost = sum(max(m.get("lost_events", {}).values() or [0]) for m in manifests)
    dropped = sum(sum(m.get("dropped_rows", {}).values()) for m in manifests)
    status = ",".join(m.get("status", "?") for m in manifests)
    note = f"manifest {status}" + (f", {dropped} rows dropped" if dropped else "")
    by: dict = {}
    for m in manifests:
        for program, n in m.get("missed_runs", {}).items():
            by[program] = by.get(program, 0) + n
    return Counts(rows("connects", "dport"), rows("accepts", "lport"), lost, note,
                  sum(by.values()), by)


def _record_count(r: Running, port: int) -> Counts:
    return recording_counts(r.dir / "rec", port)


_TABLE_HEAD = re.compile(r"^\d\d:\d\d:\d\d .*events (\d+) .*lost (\d+)", re.M)


def _top_count(r: Running, port: int) -> Counts:
    """The last table `top --plain` printed: TOTAL of our destination (attempts
    since start) and the lost counter in its header line."""
    text = _text(r.stdout)
    heads = list(_TABLE_HEAD.finditer(text))
    if not heads:
        return Counts(note="no table printed")
    last = text[heads[-1].start():]
    connects, in_destinations = 0, False
    for line in last.splitlines():
        cols = line.split()
        if cols and cols[0] == "DESTINATION":
            in_destinations = True
        elif not cols:
            in_destinations = False   # the listener table follows a blank line
        elif in_destinations and cols[0] == f"127.0.0.1:{port}":
            connects = int(cols[2])
    return Counts(connects, None, int(heads[-1].group(2)), "accepts: no total in the plain view")


def _bpf_loaded(grace_s: float = 0.5):
    """bcc's tools print their header before opening their perf buffers, and
    to a file it stays in Python's buffer: instead, ready once their programs
    are in the kernel (tracepoint programs attach as they load) plus a grace
    period for the perf buffers to open."""
    from bench import bpf_programs

    def ready(r: Running) -> bool:
        if not bpf_programs.prog_ids_of(r.pid):
            return False
        time.sleep(grace_s)
        return True
    return ready


def _stderr_has(pattern: str):
    return lambda r: pattern in _text(r.stderr)


def _stdout_has(pattern: str):
    return lambda r: pattern in _text(r.stdout)


# ---------------------------------------------------------------- bcc tools

_LOST = re.compile(r"Possibly lost (\d+) samples")


def _bcc_lost(r: Running) -> int:
    return sum(int(n) for n in _LOST.findall(_text(r.stderr) + _text(r.stdout)))


def _tcplife_count(r: Running, port: int) -> Counts:
    """One line per closed socket: client side has RPORT = port, server side LPORT = port."""
    connects = accepts = 0
    with open(r.stdout, errors="replace") as f:
        for line in f:
            c = line.split()
            if len(c) < 9 or not c[0].isdigit():
                continue
            if c[5] == str(port):
                connects += 1
            elif c[3] == str(port):
                accepts += 1
    return Counts(connects, accepts, _bcc_lost(r), "sockets closed (client / server side)")


def _tcpstates_count(r: Running, port: int) -> Counts:
    """Transitions: CLOSE->SYN_SENT towards the port (connects), SYN_RECV->ESTABLISHED
    on it (handshakes done; tcpstates cannot see accept())."""
    connects = accepts = 0
    p = str(port)
    with open(r.stdout, errors="replace") as f:
        for line in f:
            c = line.split()
            if len(c) < 10:
                continue
            if c[7] == "CLOSE" and c[9] == "SYN_SENT" and c[6] == p:
                connects += 1
            elif c[7] == "SYN_RECV" and c[9] == "ESTABLISHED" and c[4] == p:
                accepts += 1
    return Counts(connects, accepts, _bcc_lost(r), "state changes (connects / handshakes done)")


def _probe_only_count(r: Running, port: int) -> Counts:
    try:
        d = json.loads(_text(r.stdout).strip().splitlines()[-1])
    except (IndexError, ValueError):
        return Counts(note="no summary printed")
    per_port = d.get("ports", {})
    c = per_port.get(str(port), {})
    return Counts(c.get("connects", 0), c.get("accepts", 0), d.get("lost", 0),
                  "probes + decoding only (no aggregation, no Parquet)")


def _probe_only_lost(r: Running, port: int) -> Counts:
    """--skip decodes nothing, so it can tell losses but no connections."""
    c = _probe_only_count(r, port)
    return Counts(lost=c.lost, note="probes only, nothing decoded")


RECORD = TracerSpec(
    "connscope record", lambda d: [*CONNSCOPE, "record", "--out", d / "rec"],
    _stderr_has("recording to"), _record_count,
    about="headless recording to Parquet")
TOP_PLAIN = TracerSpec(
    "connscope top --plain", lambda d: [*CONNSCOPE, "top", "--plain"],
    _stdout_has(" events "), _top_count,
    about="live aggregation, a plain table every second")
TCPLIFE = TracerSpec(
    "tcplife-bpfcc", lambda d: ["tcplife-bpfcc"], _bpf_loaded(), _tcplife_count,
    env=bcc_env, about="bcc: one line per closed TCP session")
TCPSTATES = TracerSpec(
    "tcpstates-bpfcc", lambda d: ["tcpstates-bpfcc"], _bpf_loaded(), _tcpstates_count,
    env=bcc_env, about="bcc: one line per TCP state change")
PROBE_ONLY = TracerSpec(
    "probes only (diagnostic)", lambda d: [PYTHON, "-m", "bench.probe_only"],
    _stderr_has("probe_only: ready"), _probe_only_count, kind="diagnostic",
    about="connscope's BPF programs and event decoding, nothing after them")

PROBE_SKIP = TracerSpec(
    "probes only, records not decoded (diagnostic)",
    lambda d: [PYTHON, "-m", "bench.probe_only", "--skip"],
    _stderr_has("probe_only: ready"), _probe_only_lost, kind="diagnostic",
    about="connscope's BPF programs, the ring buffer read on the same clock, nothing decoded: "
          "the kernel side's cost alone")


def _floor(name: str, flags: list[str], about: str) -> TracerSpec:
    """Do-nothing programs held by bench.hook_cost until the run ends."""
    return TracerSpec(name, lambda d: [PYTHON, "-m", "bench.hook_cost", "--hold", *flags],
                      _stderr_has("hook_cost: ready"),
                      lambda r, port: Counts(note="programs that return 0"),
                      env=bcc_env, kind="diagnostic", about=about)


HOOKS_ONLY = _floor(
    "do-nothing programs on the same hooks (floor)", [],
    "return-0 programs on every hook of the tracepoint backend: what being hooked costs "
    "before any work, the floor under connscope's figure")
HOOKS_RAW = _floor(
    "do-nothing programs, shared hooks raw (floor)", ["--raw"],
    "the same return-0 programs, with the tracepoints every backend shares hooked as raw "
    "tracepoints (as connscope does where the kernel has BTF)")
HOOKS_BTF = _floor(
    "do-nothing programs, shared hooks BTF (floor)", ["--btf"],
    "the same return-0 programs, with the tracepoints every backend shares hooked as BTF "
    "tracepoints (tp_btf: as connscope does where the kernel loads them)")


def _classic_env() -> dict:
    from tracer.probes.features import CLASSIC_TRACEPOINTS_ENV

    e = tracer_env()
    e[CLASSIC_TRACEPOINTS_ENV] = "1"
    return e


def _raw_env() -> dict:
    from tracer.probes.features import RAW_TRACEPOINTS_ENV

    e = tracer_env()
    e[RAW_TRACEPOINTS_ENV] = "1"
    return e


def _no_containers_env() -> dict:
    from tracer.run import NO_CONTAINERS_ENV

    e = tracer_env()
    e[NO_CONTAINERS_ENV] = "1"
    return e


RECORD_NO_CONTAINERS = TracerSpec(
    "connscope record, no container attribution",
    lambda d: [*CONNSCOPE, "record", "--out", d / "rec"],
    _stderr_has("recording to"), _record_count, env=_no_containers_env,
    about="headless recording to Parquet without container and pod attribution "
          "(CONNSCOPE_NO_CONTAINERS=1): what attribution costs, against `record`")
RECORD_CLASSIC = TracerSpec(
    "connscope record, classic tracepoints", lambda d: [*CONNSCOPE, "record", "--out", d / "rec"],
    _stderr_has("recording to"), _record_count, env=_classic_env,
    about="headless recording to Parquet with the shared tracepoints hooked as classic ones "
          "(CONNSCOPE_CLASSIC_TRACEPOINTS=1), as on a kernel without BTF")

RECORD_RAW = TracerSpec(
    "connscope record, raw tracepoints", lambda d: [*CONNSCOPE, "record", "--out", d / "rec"],
    _stderr_has("recording to"), _record_count, env=_raw_env,
    about="headless recording to Parquet with the shared tracepoints hooked as raw ones "
          "(CONNSCOPE_RAW_TRACEPOINTS=1) where the kernel would load BTF ones (tp_btf)")


def baseline_record(source: Path, label: str) -> TracerSpec:
    """`connscope record` from another commit's tree (exported by bench/run
    --baseline), run side by side with this tree's in the same rounds."""
    def env():
        e = tracer_env()
        e["PYTHONPATH"] = str(source)
        return e
    return TracerSpec(f"connscope record at {label} (baseline)",
                      lambda d: [PYTHON, "-m", "tracer", "record", "--out", d / "rec"],
                      _stderr_has("recording to"), _record_count, env=env, cwd=source,
                      about=f"headless recording to Parquet, commit {label}")


# ---------------------------------------------------------------- --metrics

_METRICS_PORTS: dict[Path, int] = {}


def _metrics_argv(d: Path) -> list:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = _METRICS_PORTS[d] = s.getsockname()[1]
    return [*CONNSCOPE, "record", "--out", d / "rec", "--metrics", f"127.0.0.1:{port}"]


def _scraped_every_second(r: Running) -> bool:
    """Ready as `record` is; then a thread of this (benchmark) process, not of
    the tracer's process tree, scrapes /metrics every second as Prometheus
    would, until the tracer exits (at most an hour)."""
    if not _stderr_has("recording to")(r):
        return False
    import threading
    import urllib.request

    url = f"http://127.0.0.1:{_METRICS_PORTS[r.dir]}/metrics"

    def scrape():
        for _ in range(3600):
            if r.proc.poll() is not None:
                return
            try:
                with urllib.request.urlopen(url, timeout=5) as resp:
                    resp.read()
            except OSError:
                pass
            time.sleep(1.0)

    threading.Thread(target=scrape, name="scraper", daemon=True).start()
    return True


RECORD_METRICS = TracerSpec(
    "connscope record --metrics", _metrics_argv, _stderr_has("recording to"), _record_count,
    about="headless recording to Parquet and the Prometheus endpoint, never scraped")
RECORD_METRICS_SCRAPED = TracerSpec(
    "connscope record --metrics, scraped every 1 s", _metrics_argv, _scraped_every_second,
    _record_count,
    about="headless recording to Parquet and the Prometheus endpoint, scraped every second "
          "(the scraper is in the benchmark's process, not the tracer's)")


NO_TRACER = None
CONFIGS = {"none": NO_TRACER, "record": RECORD, "top": TOP_PLAIN, "tcplife": TCPLIFE,
           "tcpstates": TCPSTATES, "probes": PROBE_ONLY, "probes-skip": PROBE_SKIP, "hooks": HOOKS_ONLY,
           "hooks-raw": HOOKS_RAW, "hooks-btf": HOOKS_BTF, "record-classic": RECORD_CLASSIC, "record-raw": RECORD_RAW,
           "record-metrics": RECORD_METRICS, "record-metrics-scraped": RECORD_METRICS_SCRAPED,
           "record-no-containers": RECORD_NO_CONTAINERS}
