"""Rows of a recording back into the aggregate rows the live view showed:
the inverse of tracer.sinks.recorder, one interval at a time."""
from __future__ import annotations

from typing import Iterable

from tracer.aggregate.edges import EdgeRow
from tracer.aggregate.histogram import Histogram
from tracer.aggregate.snapshot import (ListenerRow, PoolAdvice, ProcessRow, TcpMemoryRow,
                                       label_namespaces)
from tracer.domain.containers import SERVER_PREFIX, from_row
from tracer.domain.listeners import key_of_row, listener_of_accept
from tracer.events import Connect


def connect_from_row(row: dict) -> Connect:
    """A `connects` row as the Connect event the live collector saw. Start time
    is the row's ts; the end is ts + latency, so Connect.latency_us round-trips
    (an old recording's null latency: end 0, latency None). The outcome is
    the row's own: an old recording's `error` stays one (tracer/domain/outcomes.py)."""
    start_ns = int(row["ts"]) * 1000
    lat = row.get("latency_us")
    end_ns = start_ns + int(round(lat * 1000)) if lat is not None else 0
    err = row.get("errno")
    return Connect(
        ts_start_ns=start_ns, ts_end_ns=end_ns, pid=row["pid"],
        tid=row.get("tid") if row.get("tid") is not None else row["pid"],
        comm=row["comm"], family=row["family"], saddr=row["saddr"], sport=row["sport"],
        daddr=row["daddr"], dport=row["dport"], outcome=row["outcome"],
        err=err if err is not None else 0, syn_retransmits=row["syn_retransmits"] or 0,
        netns=row.get("netns") or 0)


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    h = Histogram()
    for v in values:
        h.add(v)
    return h.percentile(q)


def _by_key(rows: Iterable[dict], key) -> dict:
    """The last row of each key (rows of one interval; ts order)."""
    return {key(r): r for r in sorted(rows, key=lambda r: r["ts"])}


def listener_rows(listeners: Iterable[dict], overflows: Iterable[dict], accepts: Iterable[dict],
                  seconds: float, drops_total: dict) -> list[ListenerRow]:
    """One interval's `listeners`, `overflows` and `accepts` rows back into the
    ListenerRows the live view showed: the inverse of tracer.sinks.recorder's
    listener_row and overflow_row. Keyed as live (tracer/domain/listeners.py):
    two namespaces listening on one address stay two rows. `drops_total`
    (key -> drops so far) is the fallback when `overflows_total` is missing,
    updated in place."""
    lis = _by_key(listeners, key_of_row)
    ovf = _by_key(overflows, key_of_row)
    known = set(lis) | set(ovf)
    waits: dict[tuple, list[float]] = {}
    accepted: dict[tuple, int] = {}
    for r in accepts:
        k = listener_of_accept(known, r.get("netns"), r["family"], r["laddr"], r["lport"])
        accepted[k] = accepted.get(k, 0) + 1
        if r.get("queue_wait_us") is not None:
            waits.setdefault(k, []).append(r["queue_wait_us"])
    out = []
    for key in list(lis) + [k for k in ovf if k not in lis]:
        row, o = lis.get(key, {}), ovf.get(key)
        owner = row or o
        if o is not None:   # overflows splits the interval's drops; listeners.drops is their sum
            drops, syn_drops = o.get("drops") or 0, o.get("syn_drops") or 0
        else:
            drops, syn_drops = row.get("drops") or 0, 0
        total = row.get("overflows_total")
        if total is None:
            total = drops_total.get(key, 0) + drops + syn_drops
        drops_total[key] = total
        w = waits.get(key, [])
        p99 = row.get("accept_wait_p99_us")
        peak = row.get("queue_peak") if row else (o.get("backlog_peak") or 0)
        out.append(ListenerRow(
            family=key.family, laddr=key.laddr, lport=key.lport, pid=owner.get("pid"),
            comm=owner.get("comm"),
            backlog_max=row.get("backlog_max") or (o or {}).get("backlog_max") or 0,
            queue_len=row.get("queue_len", peak) or 0, queue_peak=peak or 0,
            syn_queue_len=row.get("syn_queue_len"), drops=drops, syn_drops=syn_drops,
            drops_total=total,
            drops_per_s=(drops + syn_drops) / seconds if seconds > 0 else 0.0,
            accepts=row.get("accepts") if row.get("accepts") is not None
            else accepted.get(key, 0),
            accept_wait_p50_us=_percentile(w, 50),   # not recorded: from the accepts rows
            accept_wait_p99_us=p99 if p99 is not None else _percentile(w, 99),
            synack_retransmits=(o or {}).get("synack_retransmits") or 0,
            netns=key.netns or None, cookie_drops=(o or {}).get("cookie_drops") or 0,
            container=from_row(owner)))
    return label_namespaces(out)


def _advice(rows: list[dict]) -> tuple[PoolAdvice, ...]:
    out = [PoolAdvice(destination=r["destination"], arrival_per_s=r["arrival_per_s"],
                      hold_s=r["hold_s"], concurrency_mean=r["concurrency_mean"],
                      concurrency_p99=r["concurrency_p99"],
                      concurrency_peak=r["concurrency_peak"], recommended=r["recommended"],
                      in_use=r["in_use"], verdict=r["verdict"],
                      window_s=r.get("window_s") or 0.0) for r in rows]
    out.sort(key=lambda a: -a.arrival_per_s)
    return tuple(out)


def process_rows(sockets: Iterable[dict], pools: Iterable[dict],
                 seconds: float) -> list[ProcessRow]:
    """One interval's `sockets` and `pools` rows back into ProcessRows (the
    inverse of tracer.sinks.recorder's socket_row and pool_rows)."""
    advice: dict[int, list[dict]] = {}
    for r in _by_key(pools, lambda r: (r["pid"], r["destination"])).values():
        advice.setdefault(r["pid"], []).append(r)
    out = []
    for pid, r in _by_key(sockets, lambda r: r["pid"]).items():
        opened, closed = r.get("opened") or 0, r.get("closed") or 0
        pool = _advice(advice.get(pid, []))
        out.append(ProcessRow(
            pid=pid, comm=r["comm"], established=r["established"], syn_sent=r["syn_sent"],
            listen=r["listen"], close_wait=r["close_wait"], other=r["other"],
            opened_per_s=opened / seconds if seconds > 0 else 0.0,
            closed_per_s=closed / seconds if seconds > 0 else 0.0,
            fds=r.get("fds"), fd_limit=r.get("fd_limit"),
            tx_queue_bytes=r.get("tx_queue_bytes") or 0,
            rx_queue_bytes=r.get("rx_queue_bytes") or 0,
            churning=any(a.verdict.startswith("churning") for a in pool), advice=pool,
            opened=opened, closed=closed, rss_bytes=r.get("rss_bytes"),
            cgroup_memory_bytes=r.get("cgroup_memory_bytes"),
            memory_limit_bytes=r.get("memory_limit_bytes"),
            memory_limit_from=r.get("memory_limit_from"),
            listen_backlog=r.get("listen_backlog") or 0,
            socket_rmem_bytes=r.get("socket_rmem_bytes"),
            socket_wmem_bytes=r.get("socket_wmem_bytes"), container=from_row(r)))
    return out


def tcp_memory_row(rows: Iterable[dict]) -> TcpMemoryRow | None:
    """One interval's `tcp_memory` row back into what the live view showed
    (the last, if a host wrote two); None where none was recorded."""
    last = None
    for r in rows:
        if last is None or r["ts"] >= last["ts"]:
            last = r
    if last is None:
        return None
    return TcpMemoryRow(
        used_bytes=last.get("used_bytes"), low_bytes=last.get("low_bytes"),
        pressure_bytes=last.get("pressure_bytes"), max_bytes=last.get("max_bytes"),
        memory_pressures=last.get("memory_pressures") or 0,
        rcvq_drops=last.get("rcvq_drops") or 0, pruned=last.get("pruned") or 0,
        aborts_on_memory=last.get("aborts_on_memory") or 0)


def edge_rows(rows: Iterable[dict]) -> list[EdgeRow]:
    """One interval's `edges` rows back into the EdgeRows the live Map view
    showed (the inverse of tracer.sinks.recorder's edge_row); none in
    recordings made before the table."""
    last = _by_key(rows, lambda r: (r["pid"], r["family"], r["daddr"], r["dport"]))
    return [EdgeRow(
        pid=r["pid"], comm=r["comm"], family=r["family"], daddr=r["daddr"], dport=r["dport"],
        attempts=r["connects"], rate=r.get("connects_per_s") or 0.0,
        connected=r.get("connected") or 0, refused=r.get("refused") or 0,
        timeout=r.get("timeout") or 0, abandoned=r.get("abandoned") or 0,
        unreachable=r.get("unreachable") or 0, error=r.get("error") or 0,
        p50_us=r.get("connect_p50_us"), p99_us=r.get("connect_p99_us"),
        established=r.get("established"), netns=r.get("netns"),
        server_pid=r.get("server_pid"), server_comm=r.get("server_comm"),
        listener=r.get("listener"), listener_drops=r.get("listener_drops"),
        server_netns=r.get("server_netns"),
        cgroup_id=r.get("cgroup_id"), container=from_row(r),
        server_container=from_row(r, SERVER_PREFIX))
        for r in last.values()]
