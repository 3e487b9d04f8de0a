"""ApacheBench runs and what they report."""
from __future__ import annotations

import re
import resource
import subprocess
from dataclasses import dataclass

from bench.process_tree import raise_nofile


@dataclass
class AbResult:
    cpu_s: float             # ab's own user+system time (RUSAGE_CHILDREN delta)
    complete: int
    failed: int
    rps: float
    seconds: float
    failed_detail: str
    non_2xx: int
    returncode: int

    @property
    def connections(self) -> int:
        """ab opens one connection per request without -k, failed ones included."""
        return self.complete + self.failed


def _num(pattern: str, text: str, cast=int, default=0):
    m = re.search(pattern, text, re.M)
    return cast(m.group(1)) if m else default


def parse(text: str, returncode: int = 0, cpu_s: float = 0.0) -> AbResult:
    return AbResult(
        cpu_s=cpu_s,
        complete=_num(r"^Complete requests:\s+(\d+)", text),
        failed=_num(r"^Failed requests:\s+(\d+)", text),
        rps=_num(r"^Requests per second:\s+([\d.]+)", text, float, 0.0),
        seconds=_num(r"^Time taken for tests:\s+([\d.]+)", text, float, 0.0),
        failed_detail=_num(r"^\s+(\(Connect: .*\))", text, str, ""),
        non_2xx=_num(r"^Non-2xx responses:\s+(\d+)", text),
        returncode=returncode,
    )


def argv(url: str, requests: int, concurrency: int) -> list[str]:
    # -r: count receive errors instead of aborting the run; -s: per-request
    # timeout, so one stuck connection cannot hold the benchmark forever.
    return ["ab", "-q", "-r", "-s", "20", "-n", str(requests), "-c", str(concurrency), url]


def run(url: str, requests: int = 20_000, concurrency: int = 1000,
        timeout_s: float = 180.0) -> tuple[AbResult, str]:
    cmd = argv(url, requests, concurrency)
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s,
                       preexec_fn=raise_nofile)
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    return parse(p.stdout + p.stderr, p.returncode, round(cpu, 3)), " ".join(cmd)
