"""What the user asked to see: --pid, --comm, --port, -4/-6.

Applied in the kernel (tracer/probes/program.py turns them into -D switches
and filter maps), so filtered-out connections cost almost nothing.
"""
from __future__ import annotations

from dataclasses import dataclass, field

TASK_COMM_LEN = 16  # the kernel keeps 15 characters and a NUL


class FilterError(ValueError):
    pass


@dataclass(frozen=True)
class Filters:
    pids: frozenset[int] = field(default_factory=frozenset)
    comm: str | None = None
    ports: frozenset[int] = field(default_factory=frozenset)
    family: int | None = None  # 4, 6 or None for both

    @classmethod
    def build(cls, pids=(), comm=None, ports=(), ipv4=False, ipv6=False) -> "Filters":
        for p in pids:
            if not 0 < p < 2**31:
                raise FilterError(f"--pid {p}: not a process id")
        for p in ports:
            if not 0 < p < 65536:
                raise FilterError(f"--port {p}: ports are 1-65535")
        if ipv4 and ipv6:
            raise FilterError("-4 and -6 together select nothing; give one or neither")
        if comm is not None:
            if not comm:
                raise FilterError("--comm needs a process name")
            # The kernel truncates task names; match what it will report.
            comm = comm[: TASK_COMM_LEN - 1]
        return cls(frozenset(pids), comm, frozenset(ports), 4 if ipv4 else 6 if ipv6 else None)

    def describe(self) -> str:
        parts = []
        if self.pids:
            parts.append("pid " + ",".join(map(str, sorted(self.pids))))
        if self.comm:
            parts.append(f"comm {self.comm}")
        if self.ports:
            parts.append("port " + ",".join(map(str, sorted(self.ports))))
        if self.family:
            parts.append(f"IPv{self.family} only")
        return "; ".join(parts) or "none"

    def as_dict(self) -> dict:
        return {"pids": sorted(self.pids), "comm": self.comm, "ports": sorted(self.ports),
                "family": self.family}
