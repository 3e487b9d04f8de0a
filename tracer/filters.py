"""What the user asked to see: --pid, --comm, --port, -4/-6, --cgroup/--container.

Applied in the kernel (tracer/probes/program.py turns them into -D switches
and filter maps), so filtered-out connections cost almost nothing.
"""
from __future__ import annotations

from dataclasses import dataclass, field

TASK_COMM_LEN = 16  # the kernel keeps 15 characters and a NUL


class FilterError(ValueError):
    pass


PID_MAX_PATH = "/proc/sys/kernel/pid_max"


def read_pid_max(path: str = PID_MAX_PATH) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def check_pids(pids, pid_max: int | None, exists) -> tuple[list[str], list[str]]:
    """(errors, warnings) for --pid values. A pid at or over the kernel's
    pid_max can never be given to a process: an error. A pid with no process
    now is a warning, not an error: a process started later may get it, and a
    traced process that exits later is legitimate too."""
    errors, warnings = [], []
    for p in sorted(pids):
        if pid_max is not None and p >= pid_max:
            errors.append(f"--pid {p}: no process can have it (kernel.pid_max is {pid_max})")
        elif not exists(p):
            warnings.append(f"--pid {p}: no such process now; it is traced if it appears "
                            f"(pids are reused)")
    return errors, warnings


# Most cgroups one run can select: the kernel checks each in turn (bpf/common.h)
MAX_CGROUPS = 8


@dataclass(frozen=True)
class CgroupTarget:
    """A cgroup v2 the user selected (--cgroup PATH or --container ID),
    resolved by tracer/probes/cgroup_filter.py: its id (the directory's
    inode, what bpf_get_current_cgroup_id() returns), its level (depth below
    the v2 root, for bpf_get_current_ancestor_cgroup_id) and its path under
    the v2 mount."""
    id: int
    level: int
    path: str
    label: str          # what the user gave, as the status line shows it ("cgroup /x")

    def covers(self, path: str | None) -> bool:
        """The cgroup at `path` is this one or below it (what the kernel matches)."""
        if path is None:
            return False
        if self.path == "/":
            return True
        return path == self.path or path.startswith(self.path + "/")


@dataclass(frozen=True)
class Filters:
    pids: frozenset[int] = field(default_factory=frozenset)
    comm: str | None = None
    ports: frozenset[int] = field(default_factory=frozenset)
    family: int | None = None  # 4, 6 or None for both
    cgroups: tuple[CgroupTarget, ...] = ()

    @classmethod
    def build(cls, pids=(), comm=None, ports=(), ipv4=False, ipv6=False,
              cgroups=()) -> "Filters":
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
        unique = tuple({c.id: c for c in cgroups}.values())
        if len(unique) > MAX_CGROUPS:
            raise FilterError(f"--cgroup/--container: at most {MAX_CGROUPS} cgroups, "
                              f"{len(unique)} given")
        return cls(frozenset(pids), comm, frozenset(ports), 4 if ipv4 else 6 if ipv6 else None,
                   unique)

    @property
    def active(self) -> bool:
        return bool(self.pids or self.comm or self.ports or self.family or self.cgroups)

    def keeps_container(self, attribution) -> bool:
        """A row's container (tracer.domain.containers.Attribution, or None)
        is one of the selected cgroups or below one; True without --cgroup.
        Rows the kernel does not filter (listeners, processes, from the socket
        table) are judged by their owner's cgroup: a listener's, for its
        overflows and SYN-ACK retransmits (counted in softirq, where no
        process is current)."""
        if not self.cgroups:
            return True
        if attribution is None:
            return False
        return any(t.id == attribution.cgroup_id or t.covers(attribution.cgroup)
                   for t in self.cgroups)

    def keeps_listener(self, row) -> bool:
        """The listeners view: the kernel filters events, not the socket table
        the listeners come from, so the same filters are applied here. The
        'other' row (listeners past the table's bound) cannot be attributed."""
        if not self.active:
            return True
        if not row.family:
            return False
        if self.family and row.family != self.family:
            return False
        if self.ports and row.lport not in self.ports:
            return False
        if self.pids and row.pid not in self.pids:
            return False
        if not self.keeps_container(getattr(row, "container", None)):
            return False
        return not self.comm or row.comm == self.comm

    def keeps_edge(self, row) -> bool:
        """The connection map: an edge with connects passed the kernel's
        filter; one seen only in the socket table is kept when its client and
        destination match."""
        if not self.active or row.attempts:
            return True
        if not row.family:
            return False
        if self.pids and row.pid not in self.pids:
            return False
        if self.comm and row.comm != self.comm:
            return False
        if not self.keeps_container(getattr(row, "container", None)):
            return False
        if self.family and row.family != self.family:
            return False
        return not self.ports or row.dport in self.ports

    def keeps_process(self, row) -> bool:
        """The processes view: --pid/--comm select processes; --port/-4/-6
        (a process holds sockets of every kind) keep the processes with
        matching connections (the events are filtered in the kernel): pool
        advice from them, or some opened in the interval."""
        if not self.active:
            return True
        if self.pids and row.pid not in self.pids:
            return False
        if self.comm and row.comm != self.comm:
            return False
        if not self.keeps_container(getattr(row, "container", None)):
            return False
        if self.ports or self.family:
            return bool(row.advice or row.opened)
        return True

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
        if self.cgroups:
            parts += [t.label for t in self.cgroups]
        return "; ".join(parts) or "none"

    def as_dict(self) -> dict:
        return {"pids": sorted(self.pids), "comm": self.comm, "ports": sorted(self.ports),
                "family": self.family,
                "cgroups": [{"id": t.id, "path": t.path, "label": t.label} for t in self.cgroups]}
