"""Connects, accepts and accept-queue drops by container or pod, from the
container columns of the `connects`, `accepts` and `overflows` tables
(tracer/domain/containers.py; null in recordings made before them, which
then have no rows here).

A group is (host, label): the label the live view groups by (namespace/pod/
container, runtime:short id, or `host` for processes in no container)."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from tracer.domain.containers import group_label, from_row

WHO = ("container_runtime", "container_id", "pod_uid", "pod_namespace", "pod_name",
       "container_name")


@dataclass(frozen=True)
class ContainerStats:
    host: str
    label: str
    connects: int = 0
    connect_failures: int = 0     # not established
    accepts: int = 0
    drops: int = 0                # accept-queue drops (ACK and SYN time) of its listeners
    processes: int = 0            # distinct pids seen in its rows


def _groups(table: pa.Table, aggregates: list, extra: list[str]) -> list[dict]:
    names = set(table.column_names)
    if not table.num_rows or not set(WHO) <= names:
        return []
    keys = ["host", *WHO, *[e for e in extra if e in names]]
    return table.select([*keys, *{a[0] for a in aggregates if a[0] in names}]).group_by(
        keys, use_threads=False).aggregate(
        [a for a in aggregates if a[0] in names]).to_pylist()


def container_stats(tables: dict[str, pa.Table]) -> list[ContainerStats]:
    """Per (host, container group), busiest first; [] if no row names a container."""
    acc: dict[tuple, dict] = {}
    pids: dict[tuple, set] = {}

    def add(row: dict, **counts) -> None:
        key = (row["host"], group_label(from_row(row)))
        slot = acc.setdefault(key, {})
        for k, v in counts.items():
            slot[k] = slot.get(k, 0) + (v or 0)

    for row in _groups(tables.get("connects", pa.table({})), [("pid", "count")], ["outcome"]):
        add(row, connects=row["pid_count"],
            connect_failures=0 if row.get("outcome") == "established" else row["pid_count"])
    for row in _groups(tables.get("accepts", pa.table({})), [("pid", "count")], []):
        add(row, accepts=row["pid_count"])
    for row in _groups(tables.get("overflows", pa.table({})),
                       [("drops", "sum"), ("syn_drops", "sum")], []):
        add(row, drops=(row.get("drops_sum") or 0) + (row.get("syn_drops_sum") or 0))
    for name in ("connects", "accepts", "sockets"):
        for row in _groups(tables.get(name, pa.table({})), [], ["pid"]):
            pids.setdefault((row["host"], group_label(from_row(row))), set()).add(row.get("pid"))
    if not any(label != "host" for _, label in set(acc) | set(pids)):
        return []
    out = [ContainerStats(host, label, processes=len(pids.get((host, label), ())),
                          **acc.get((host, label), {}))
           for host, label in set(acc) | set(pids)]
    out.sort(key=lambda c: (-(c.drops + c.connects + c.accepts), c.host, c.label))
    return out
