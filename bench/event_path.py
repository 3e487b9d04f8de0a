"""What `record` spends in user space per connection, from raw ring-buffer
records to rows: the same records (shaped like nginx + ab on loopback: per
connection one connect, one accept and two closes) walked by the ring reader
(tracer.probes.buffers.read_ring) into ProbeSession's decoding, the
collector's drain (container attribution by a real ContainerCache, the
connects, edges, listeners and process tables) and RecordSink, with an
interval (snapshot + rows) every 20 polls, as `record` does at 1 s.

Side by side with another commit in one run: each round runs this tree and
REV (git archive'd) in fresh processes, one after the other, and the table
gives CPU seconds per 10,000 connections (process CPU time, as the overhead
benchmark's figure) for both; the rows each side produced are hashed and
must be identical (the one-truth rule: a faster path must not change output).

Each side's process is set up as its own `record` sets it up
(run.keep_out_of_the_tracer: allocators, the cycle collector's pace).

With --parquet DIR the rows go to a real Recording (Parquet files, journal,
flush thread) under DIR as well, and its CPU is counted; the row digests are
then not taken.

`python -m bench.event_path [--baseline REV] [--rounds N] [--per-poll N] [--parquet DIR]`"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

POLLS_PER_INTERVAL = 20     # 50 ms polls, 1 s interval
INTERVALS = 5


def records(n_conn: int, first: int, pids: list[int], rng: random.Random) -> list[bytes]:
    """Raw records of n_conn connections: client pids[0] connects to
    127.0.0.1:80, a server pid (pids[1:]) accepts; both sockets close."""
    from tracer import events as e

    C = e.C
    client, servers = pids[0], pids[1:]
    lo = bytes([127, 0, 0, 1]) + bytes(12)
    comm_ab, comm_ng = b"ab".ljust(16, b"\0"), b"nginx".ljust(16, b"\0")
    out, closes = [], []
    t = 10_000_000_000 + first * 100_000
    for i in range(first, first + n_conn):
        t += 100_000
        lat = rng.randint(20_000, 400_000)              # 20-400 µs handshakes
        sport = 1024 + i % 60000
        outcome = C["OUTCOME_REFUSED"] if i % 500 == 7 else C["OUTCOME_ESTABLISHED"]
        csk, ssk = 0xffff000000000000 + 2 * i, 0xffff000000000001 + 2 * i
        fields = dict(type=C["EV_CONNECT"], pid=client, tid=client, err=111 if outcome else 0,
                      ts_start_ns=t, ts_end_ns=t + lat, sk=csk, saddr=lo, daddr=lo, sport=sport,
                      dport=80, syn_retransmits=0, family=2, outcome=outcome, comm=comm_ab,
                      netns=4026531840, pad=b"\0" * 4, cgroup_id=0)
        out.append(e._CONNECT.pack(*(fields[f] for f in e._ConnectT._fields)))
        if outcome:
            continue
        srv = servers[i % len(servers)]
        wait = rng.randint(1_000, 200_000)
        fields = dict(type=C["EV_ACCEPT"], pid=srv, tid=srv, backlog_len=rng.randint(0, 50),
                      ts_ns=t + lat + wait, ts_handshake_ns=t + lat, sk=ssk, laddr=lo, raddr=lo,
                      lport=80, rport=sport, backlog_max=511, netns=4026531840, family=2,
                      pad=b"\0" * 3, comm=comm_ng)
        out.append(e._ACCEPT.pack(*(fields[f] for f in e._AcceptT._fields)))
        life = rng.randint(300_000, 3_000_000)
        for sk in (csk, ssk):
            fields = dict(type=C["EV_CLOSE"], oldstate=1, ts_ns=t + lat + life, sk=sk)
            closes.append(e._CLOSE.pack(*(fields[f] for f in e._CloseT._fields)))
    # closes come a little after their opens, as in the ring
    return out[:len(out) // 2] + closes[:len(closes) // 2] + out[len(out) // 2:] + closes[len(closes) // 2:]


def ring(recs: list[bytes]) -> tuple[bytes, int]:
    """A ring buffer's data area holding recs (8-byte headers, 8-aligned)."""
    from tracer.probes.buffers import RINGBUF_HDR

    parts = []
    for r in recs:
        pad = (-(len(r) + RINGBUF_HDR)) % 8
        parts.append(len(r).to_bytes(4, "little") + bytes(RINGBUF_HDR - 4) + r + bytes(pad))
    data = b"".join(parts)
    return data, len(data)


class Recording:
    """Keeps a digest of every row written, instead of writing."""

    def __init__(self):
        self.written = []    # digested after the clock stops

    def write(self, table, rows):
        self.written.append((table, rows))
        return 0

    def digest(self) -> tuple[str, int]:
        digest, n = hashlib.sha256(), 0
        for table, rows in self.written:
            if isinstance(rows, dict):    # columns
                rows = [dict(zip(rows, r)) for r in zip(*rows.values())]
            for r in rows:
                if table not in ("connects", "accepts"):   # interval rows: ts is the wall clock
                    r = {k: v for k, v in r.items() if k != "ts"}
                digest.update(f"{table} {sorted(r.items())!r}\n".encode())
            n += len(rows)
        return digest.hexdigest()[:16], n

    def tick(self):
        pass

    def set_lost(self, totals):
        pass

    set_evicted = set_missed_runs = set_lost

    def close(self):
        pass


def worker(per_poll: int, pids: list[int], parquet: str | None = None) -> dict:
    import tracer
    from tracer import run

    run.keep_out_of_the_tracer()    # the process as `record` sets it up (each tree its own)
    from tracer.aggregate.snapshot import Header
    from tracer.clock import Clock
    from tracer.collector import Collector, Status
    from tracer.filters import Filters
    from tracer.probes import buffers
    from tracer.probes.cgroups import ContainerCache
    from tracer.probes.session import ProbeSession
    from tracer.sinks.recorder import RecordSink

    class Ring:
        def __init__(self):
            self.polls: list[tuple[bytes, int]] = []
            self.lost = 0

        def read(self, handle, limit, walk=None):
            data, end = self.polls.pop(0) if self.polls else (b"", 0)
            view = memoryview(data)
            if walk is None:   # (trees before the compiled path have no walk)
                cons, n = buffers.read_ring(view, (1 << 62) - 1, 0, lambda: end, handle, limit)
            else:
                cons, n = walk(view, (1 << 62) - 1, 0, lambda: end, limit)
            return n

    class Session(ProbeSession):    # the kernel's maps: nothing in them
        def pending_connects(self, now_ns=None):
            return {}

        def listener_counters(self):
            return []

        def take_listener_peaks(self):
            return {}

    rng = random.Random(17)
    n_polls = POLLS_PER_INTERVAL * INTERVALS
    buf = Ring()
    buf.polls = [ring(records(per_poll, k * per_poll, pids, rng)) for k in range(n_polls)]
    session = Session("tracepoint", Filters(), ringbuf=True, offset_flags=[], env={})
    session._buffer = buf
    clock = Clock()
    clock.offset_ns = 0        # rows comparable between the two processes
    rec = Recording()
    if parquet:    # the real writer too (its flush thread's CPU is the process's)
        from tracer.sinks.parquet_writer import Recording as Parquet

        out = tempfile.mkdtemp(prefix="event-path-", dir=parquet)
        rec = Parquet(out, host="h", run_id="r", background_flush=True)
    cache = ContainerCache()
    collector = Collector(session, [RecordSink(rec, clock, cache)], 1.0, clock=clock,
                          header=Header(host="h", kernel="k", backend="tracepoint"),
                          containers=cache)
    status = Status(elapsed_s=1.0, events_total=0, events_per_s=0.0, lost_events=0,
                    untracked_connects=0, decode_errors=0, inflight=0)
    snaps = []
    t0 = time.process_time()
    for k in range(n_polls):
        collector._drain(0)
        if k % POLLS_PER_INTERVAL == POLLS_PER_INTERVAL - 1:
            snap = collector._snapshot(1.0, status)
            for sink in collector.sinks:
                sink.on_interval(status, snap)
            snaps.append(snap)
    if parquet:
        rec.close()
    cpu = time.process_time() - t0
    if parquet:
        import shutil

        shutil.rmtree(out)
        rec = Recording()
    digest = hashlib.sha256()
    for snap in snaps:
        for rows in (snap.destinations, snap.processes_connects, snap.containers_connects,
                     snap.listeners, snap.processes, snap.edges):
            digest.update(repr(rows).encode())
        digest.update(repr([(n.severity, n.kind, n.text) for n in snap.notable]).encode())
    rows_digest, n_rows = rec.digest()
    return {"cpu_s_per_10k": cpu / (per_poll * n_polls) * 1e4, "rows": n_rows,
            "digest": rows_digest + "/" + digest.hexdigest()[:16],
            "tracer": tracer.__file__, "event_path": _event_path()}


def _event_path() -> str:
    import tracer

    # (a tree without it would find the venv's editable install's instead)
    if not (Path(tracer.__file__).parent / "fastpath.py").exists():
        return "pure Python (before the compiled path)"
    from tracer import fastpath

    return fastpath.STATUS


def run_side(root: Path, per_poll: int, pids: list[int], parquet: str | None,
             extra_env: dict | None = None) -> dict:
    from bench.__main__ import run_worker_in

    return run_worker_in(root, __file__, ["--per-poll", str(per_poll),
                                          "--pids", ",".join(map(str, pids))]
                         + (["--parquet", parquet] if parquet else []), extra_env)


def main(argv=None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--baseline", metavar="REV")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--per-poll", type=int, default=500)   # ab's ~10k connections/s at 50 ms
    p.add_argument("--worker", action="store_true")
    p.add_argument("--pids", default="")
    p.add_argument("--parquet", metavar="DIR",
                   help="write real Parquet recordings under DIR too (rows then not compared)")
    p.add_argument("--pure-python", action="store_true",
                   help="also run this tree with CONNSCOPE_PURE_PYTHON=1 (its reference path)")
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.per_poll, [int(x) for x in args.pids.split(",")],
                                args.parquet)))
        return
    # long-lived processes of this host (their /proc files are read as record reads them)
    pids = sorted(int(x) for x in os.listdir("/proc") if x.isdigit())[:3]
    here = Path(__file__).resolve().parent.parent
    sides = [("this tree", here, {})]
    if args.pure_python:
        sides.append(("this tree, pure Python", here, {"CONNSCOPE_PURE_PYTHON": "1"}))
    if args.baseline:
        from bench.__main__ import export_commit

        src, sha = export_commit(args.baseline)
        sides.append((f"baseline {sha}", src, {}))
    results: dict[str, list[dict]] = {name: [] for name, _, _ in sides}
    try:
        for _ in range(args.rounds):
            for name, root, env in sides:   # alternated: the machine's load falls on all alike
                results[name].append(run_side(root, args.per_poll, pids, args.parquet, env))
    finally:
        if args.baseline:
            import shutil

            shutil.rmtree(src, ignore_errors=True)
    n = args.per_poll * POLLS_PER_INTERVAL * INTERVALS
    print(f"{n:,} connections a round ({args.per_poll} a poll, interval every "
          f"{POLLS_PER_INTERVAL} polls), {args.rounds} rounds alternated; "
          f"CPU s per 10k connections")
    print("| side | event path | median | min | max | rows | output digest |")
    print("|---|---|---:|---:|---:|---:|---|")
    for name, rs in results.items():
        xs = [r["cpu_s_per_10k"] for r in rs]
        digests = {r["digest"] for r in rs}
        print(f"| {name} | {rs[0].get('event_path', '?')} | {statistics.median(xs):.3f} | "
              f"{min(xs):.3f} | {max(xs):.3f} | {rs[0]['rows']:,} | {', '.join(sorted(digests))} |")
    if len(results) > 1:
        medians = [statistics.median(r["cpu_s_per_10k"] for r in rs) for rs in results.values()]
        a, b = medians[0], medians[-1]
        same = {r["digest"] for rs in results.values() for r in rs}
        print(f"this tree / {list(results)[-1]}: {a / b:.2f}; " + (
            "event rows went to Parquet, not compared; interval rows "
            if args.parquet else "outputs ") + ("identical" if len(same) == 1 else "DIFFER"))


if __name__ == "__main__":
    main()
