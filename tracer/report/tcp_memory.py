"""Host TCP memory over a recording, per host, from the `tcp_memory` table
(thresholds and states as tracer/domain/tcp_memory.py defines them)."""
from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from tracer.domain import tcp_memory as tm
from tracer.report.arrow_stats import sums_by


@dataclass(frozen=True)
class HostTcpMemory:
    host: str
    peak_used: int | None
    pressure: int | None      # thresholds as last recorded, bytes
    maximum: int | None
    memory_pressures: int
    rcvq_drops: int
    pruned: int
    aborts_on_memory: int

    @property
    def peak_state(self) -> str | None:
        return tm.state(self.peak_used, self.pressure, self.maximum)

    @property
    def troubled(self) -> bool:
        return bool(self.memory_pressures or self.rcvq_drops or self.aborts_on_memory
                    or self.peak_state in (tm.PRESSURE, tm.LIMIT))

    @property
    def text(self) -> str:
        return (f"{self.host}: " + tm.finding_text(self.peak_used or 0, self.pressure or 0,
                                                    self.maximum or 0, self.memory_pressures,
                                                    self.rcvq_drops, self.pruned)
                + (f", {self.aborts_on_memory:,} connections aborted (TCPAbortOnMemory)"
                   if self.aborts_on_memory else ""))


def host_tcp_memory(table: pa.Table) -> list[HostTcpMemory]:
    rows = sums_by(table.sort_by([("ts", "ascending")]), ["host"], [
        ("used_bytes", "max"), ("pressure_bytes", "last"), ("max_bytes", "last"),
        ("memory_pressures", "sum"), ("rcvq_drops", "sum"), ("pruned", "sum"),
        ("aborts_on_memory", "sum")])
    return sorted((HostTcpMemory(
        host=r["host"], peak_used=r["used_bytes_max"], pressure=r["pressure_bytes_last"],
        maximum=r["max_bytes_last"], memory_pressures=r["memory_pressures_sum"] or 0,
        rcvq_drops=r["rcvq_drops_sum"] or 0, pruned=r["pruned_sum"] or 0,
        aborts_on_memory=r["aborts_on_memory_sum"] or 0) for r in rows), key=lambda h: h.host)
