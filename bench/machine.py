"""The machine every figure belongs to: cores, kernel, date, load, versions."""
from __future__ import annotations

import os
import platform
import subprocess
import time
from pathlib import Path


def _first_line(argv) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return "?"


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()


def busy_cpu_share(seconds: float = 1.0) -> float:
    """Share of all CPUs busy over `seconds` (from /proc/stat): how noisy the
    machine is right now, since other engineers run tests on it too."""
    def read():
        f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        idle = f[3] + f[4]
        return sum(f), idle
    t0, i0 = read()
    time.sleep(seconds)
    t1, i1 = read()
    return 1.0 - (i1 - i0) / max(1, t1 - t0)


def describe() -> dict:
    mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    return {
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": platform.node(),
        "cores": os.cpu_count(),
        "cpu": cpu_model(),
        "memory_gb": round(mem_kb / 1e6, 1),
        "kernel": os.uname().release,
        "load_average": [round(x, 2) for x in load_average()],
        "nginx": _first_line(["nginx", "-v"]),
        "ab": _first_line(["ab", "-V"]),
        "bcc": _bcc_version(),
        "python": platform.python_version(),
        **source(),
    }


def source() -> dict:
    """Which connscope was measured: a commit exported by --commit, or the
    working tree at HEAD plus its uncommitted changes."""
    import tracer   # where the tracer under test is imported from

    where = {"connscope_path": str(Path(tracer.__file__).resolve().parent)}
    exported = os.environ.get("CONNSCOPE_BENCH_SOURCE")
    if exported:
        return where | {"connscope_commit": exported, "connscope_uncommitted_files": 0}
    return where | {"connscope_commit": _git(["rev-parse", "--short", "HEAD"]),
            "connscope_uncommitted_files": len(_git(["status", "--porcelain", "--", "tracer",
                                                     "bpf"]).splitlines())}


def _git(args) -> str:
    repo = Path(__file__).resolve().parent.parent
    try:
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"


def _bcc_version() -> str:
    out = _first_line(["dpkg-query", "-W", "-f=${Version}", "python3-bpfcc"])
    return out


def one_line(m: dict) -> str:
    return (f"{m['cores']} cores ({m['cpu']}), kernel {m['kernel']}, {m['date_utc']}, "
            f"load {m['load_average'][0]:.2f} at start")
