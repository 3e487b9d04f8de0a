"""Processes the benchmark starts: launch with raised limits, measure a
process tree's CPU and memory from /proc, and kill everything on every exit
path (each child leads its own process group, so a kill reaches its helpers
and nothing else)."""
from __future__ import annotations

import os
import resource
import signal
import subprocess
import time
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
NOFILE = 65536  # ab -c 1000 and nginx need well over the usual 1024


def raise_nofile(limit: int = NOFILE) -> None:
    """For preexec_fn, and for the benchmark itself. Root may raise the hard
    limit only with CAP_SYS_RESOURCE; without it, go up to the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(limit, hard), hard))


def nofile_limit() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def tracer_env() -> dict:
    """The environment a user's shell would give a tracer: output buffered as
    Python normally buffers it, whatever this sandbox sets."""
    env = dict(os.environ)
    env.pop("PYTHONUNBUFFERED", None)
    return env


def children_of() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(d))
    return kids


def tree(pid: int) -> list[int]:
    kids = children_of()
    out, todo = [], [pid]
    while todo and len(out) < 10_000:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, ()))
    return out


def cpu_seconds(pid: int) -> float:
    """utime+stime of the process (all its threads) and of its reaped children."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # fields[0] is field 3 (state): utime=14, stime=15, cutime=16, cstime=17
    return sum(int(fields[i]) for i in (11, 12, 13, 14)) / CLK_TCK


def tree_cpu_seconds(pid: int) -> float:
    return sum(cpu_seconds(p) for p in tree(pid))


def status_kb(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_kb(pid: int, key: str) -> int:
    """Sum of VmHWM or VmRSS over the tree (shared pages count once per process)."""
    return sum(status_kb(p, key) for p in tree(pid))


def tree_context_switches(pid: int) -> int:
    """Voluntary context switches of every thread in the tree: how often the
    tracer went to sleep waiting for events (about once per wake-up)."""
    total = 0
    for p in tree(pid):
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for t in tasks:
            try:
                for line in Path(f"/proc/{p}/task/{t}/status").read_text().splitlines():
                    if line.startswith("voluntary_ctxt_switches:"):
                        total += int(line.split()[1])
            except OSError:
                pass
    return total


def wait_cpu_settled(pid: int, quiet_s: float = 0.6, limit_s: float = 15.0) -> float:
    """Wait until the tree stops using CPU (it has drained what it was sent):
    less than one clock tick in `quiet_s`. Returns the CPU seconds then."""
    deadline = time.monotonic() + limit_s
    last = tree_cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(quiet_s)
        now = tree_cpu_seconds(pid)
        if now - last < 1.5 / CLK_TCK:
            return now
        last = now
    return last


def _child_setup() -> None:
    # A shell running us in the background leaves SIGINT ignored, and an
    # ignored signal stays ignored across exec: bcc's tools would then never
    # stop on SIGINT. Give every child the default.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _child_setup_nofile() -> None:
    _child_setup()
    raise_nofile()


class Processes:
    """Every process the benchmark started; `close()` (also on exceptions and
    SIGTERM, via the context manager) stops them all."""

    def __init__(self):
        self._procs: list[subprocess.Popen] = []

    def __enter__(self):
        self._old = signal.signal(signal.SIGTERM, self._on_sigterm)
        return self

    def __exit__(self, *exc):
        self.close()
        signal.signal(signal.SIGTERM, self._old)
        return False

    @staticmethod
    def _on_sigterm(signum, frame):
        raise KeyboardInterrupt("SIGTERM")

    def start(self, argv, *, nofile: bool = False, **kw) -> subprocess.Popen:
        kw["preexec_fn"] = _child_setup_nofile if nofile else _child_setup
        p = subprocess.Popen(argv, start_new_session=True, **kw)
        self._procs.append(p)
        return p

    def stop(self, p: subprocess.Popen, sig=signal.SIGINT, timeout: float = 20.0) -> int | None:
        """Ask politely (SIGINT lets connscope finalize its files), then kill the group."""
        if p.poll() is None:
            try:
                os.kill(p.pid, sig)
            except ProcessLookupError:
                pass
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        self._kill_group(p)
        if p in self._procs:
            self._procs.remove(p)
        return p.returncode

    @staticmethod
    def _kill_group(p: subprocess.Popen) -> None:
        try:
            os.killpg(p.pid, signal.SIGKILL)  # helpers left in its group
        except (ProcessLookupError, PermissionError):
            pass
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            pass

    def close(self) -> None:
        for p in list(self._procs):
            self.stop(p, signal.SIGTERM, timeout=5.0)
