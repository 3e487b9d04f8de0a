"""Per-process sockets through the real collector loop, against ground
truth: `ss -tanp` (state and users of every socket) and /proc/PID/fd, through
close, dup, shutdown, fork and exit; churn and pool advice against what the
workload was configured to do; CLOSE_WAIT held by a server that never closes.

Every workload is a child process with a bounded lifetime, talking only to
loopback. The collector scans the kernel's socket table once per interval,
and SocketTable may reuse a scan when scanning is expensive (another
engineer's benchmark with tens of thousands of sockets makes it so): ScanLog
tells which snapshot used a scan taken after a given moment.
"""
from __future__ import annotations

import os
import re
import select
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

import pytest

from tests.kernel.workloads import tcp_server
from tracer.probes.socket_table import SocketTable

pytestmark = pytest.mark.kernel

INTERVAL = 0.5
KINDS = ("established", "syn_sent", "listen", "close_wait", "other")
SS_KIND = {"ESTAB": "established", "SYN-SENT": "syn_sent", "LISTEN": "listen",
           "CLOSE-WAIT": "close_wait"}           # every other state is "other"
_USER = re.compile(r'\("((?:[^"\\]|\\.)*)",pid=(\d+),fd=(\d+)\)')


# ------------------------------------------------------------ ground truth

@dataclass(frozen=True)
class Truth:
    comm: str | None
    counts: tuple[int, ...]    # in the order of KINDS
    fds: int | None            # entries of /proc/PID/fd; None: no such process


def ss_rows() -> list[tuple[str, str, str, set[int], dict[int, str]]]:
    """(state, local, peer, pids holding it, comm by pid) for every TCP
    socket `ss -tanp` lists in this network namespace."""
    out = subprocess.run(["ss", "-tanpH"], capture_output=True, text=True, timeout=30,
                         check=True).stdout
    rows = []
    for line in out.splitlines():
        fields = line.split()
        if len(fields) < 5:
            continue
        users = _USER.findall(line)
        rows.append((fields[0], fields[3], fields[4], {int(p) for _, p, _ in users},
                     {int(p): c for c, p, _ in users}))
    return rows


def full_sockets() -> set[tuple[str, str]]:
    """(local, peer) of every full TCP socket: `ss -tanm` gives memory
    figures (skmem) for those only, not for time-wait or request sockets."""
    out = subprocess.run(["ss", "-tanmH"], capture_output=True, text=True, timeout=30,
                         check=True).stdout
    found, record = set(), None
    for line in out.splitlines():
        if line[:1].strip():                 # a record starts at column 0
            fields = line.split()
            record = (fields[3], fields[4]) if len(fields) >= 5 else None
        elif record and "skmem:" in line:
            found.add(record)
    return found


def proc_fds(pid: int) -> int | None:
    """Open fds of pid; None once it has exited (a zombie too)."""
    try:
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (FileNotFoundError, ProcessLookupError):
        return None
    return fds if alive(pid) else None


def alive(pid: int) -> bool:
    """Running, not a zombie (a zombie has no fds and holds nothing)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def ground_truth(pids) -> dict[int, Truth]:
    """Per pid: each socket it holds counted once (however many of its fds
    point at it), by state, from ss; and its open fds from /proc."""
    counts = {pid: dict.fromkeys(KINDS, 0) for pid in pids}
    comms: dict[int, str] = {}
    for state, _, _, holders, names in ss_rows():
        for pid in holders & set(pids):
            counts[pid][SS_KIND.get(state, "other")] += 1
            comms[pid] = names[pid]
    return {pid: Truth(comms.get(pid), tuple(counts[pid][k] for k in KINDS), proc_fds(pid))
            for pid in pids}


def stable_truth(pids, timeout_s=5.0) -> dict[int, Truth]:
    """Ground truth once two readings 200 ms apart agree (a FIN in flight on
    loopback settles within that)."""
    last = ground_truth(pids)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = ground_truth(pids)
        if now == last:
            return now
        last = now
    raise AssertionError(f"ground truth kept changing: {last}")


def measured(snapshot, pids) -> dict[int, Truth]:
    """connscope's view of pids in one snapshot, in the shape of Truth (a
    process without a row holds nothing)."""
    rows = {r.pid: r for r in snapshot.processes}
    out = {}
    for pid in pids:
        r = rows.get(pid)
        if r is None:
            out[pid] = Truth(None, (0,) * len(KINDS), None)
        else:
            out[pid] = Truth(r.comm, tuple(getattr(r, k) for k in KINDS), r.fds)
    return out


def same_view(truth: dict[int, Truth], got: dict[int, Truth]) -> bool:
    """Counts and fds equal; comm equal where the process holds sockets (an
    exited process may still have a row for the closes it caused)."""
    for pid, t in truth.items():
        g = got[pid]
        if (t.counts, t.fds) != (g.counts, g.fds):
            return False
        if any(t.counts) and t.comm != g.comm:
            return False
    return True


# -------------------------------------------------------------- collector

class ScanLog:
    """Wraps SocketTable.read (same behaviour) to note, for the snapshot
    about to be built, when the scan it gets was taken. The collector calls
    read() once per snapshot, just before handing the snapshot to the sinks."""

    def __init__(self, monkeypatch, run):
        self.scan_us: dict[int, int] = {}     # snapshot index -> its scan's start (wall µs)
        self.reused: dict[int, bool] = {}     # snapshot index -> built from an earlier scan
        self.cost_ms: list[float] = []        # of each fresh scan
        self._fresh_us = 0
        original = SocketTable.read

        def read(table):
            started = time.time_ns() // 1000
            listeners, sockets, snap, fresh = original(table)
            if fresh:
                self._fresh_us = started
                self.cost_ms.append(table.last_cost_s * 1000)
            self.scan_us[len(run.snapshots)] = self._fresh_us
            self.reused[len(run.snapshots)] = not fresh
            return listeners, sockets, snap, fresh

        monkeypatch.setattr(SocketTable, "read", read)
        self.run = run

    def snapshot_after(self, t_us: int, timeout_s: float = 15.0):
        """The first snapshot built from a scan that started after t_us."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for i, snap in enumerate(list(self.run.snapshots)):
                if self.scan_us.get(i, 0) > t_us:
                    return snap
            time.sleep(0.05)
        raise AssertionError(f"no snapshot from a scan after {t_us} within {timeout_s} s "
                             f"({len(self.run.snapshots)} snapshots)")


def now_us() -> int:
    return time.time_ns() // 1000


def closes_of(run, pid) -> list:
    """One entry per close of a connection pid opened, as the collector
    tallied them: its lifetime in µs (None for an accepted one)."""
    out = []
    for c in list(run.closes):
        out += [None] * c.passive.get(pid, 0)
        for (p, *_), lifetimes in list(c.active.items()):
            if p == pid:
                out += lifetimes
    return out


def losses(probe_session) -> str:
    return f"kernel-side counters: {probe_session.counters()}"


# --------------------------------------------------------------- processes

class Child:
    """A python child process driven over stdin/stdout: one line answers
    each request (select() cannot see a second line already buffered)."""

    def __init__(self, script: str, *args, pass_fds=()):
        self.proc = subprocess.Popen([sys.executable, "-c", script, *map(str, args)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, pass_fds=pass_fds)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def read(self, timeout_s: float = 30.0) -> str:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout_s)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            self.proc.kill()
            raise AssertionError(f"child {self.pid} said nothing in {timeout_s} s: "
                                 f"{self.proc.stderr.read()[-2000:]}")
        return line.strip()

    def send(self, line: str) -> None:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def ask(self, line: str, timeout_s: float = 30.0) -> str:
        self.send(line)
        return self.read(timeout_s)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            f.close()


_PRELUDE = r"""
import ctypes, os, select, socket, sys, time
ctypes.CDLL(None).prctl(15, sys.argv[1].encode(), 0, 0, 0)   # PR_SET_NAME: our comm
"""

# Holds 200 TCP sockets: a listener, N_OUT connections to the server, and
# N_SELF connections to its own listener with their accepted ends. Each
# command changes what it holds; "fork" forks a child that holds everything
# too and exits when told so on the pipe the test passed (fd argv[4]).
# Everything ends by itself after LIFETIME seconds.
HOLDER = _PRELUDE + r"""
server_port, fork_fd, lifetime = int(sys.argv[2]), int(sys.argv[4]), float(sys.argv[3])
N_OUT, N_SELF = 99, 50
deadline = time.monotonic() + lifetime
lst = socket.socket(); lst.bind(("127.0.0.1", 0)); lst.listen(128)
out = [socket.create_connection(("127.0.0.1", server_port)) for _ in range(N_OUT)]
mine = [socket.create_connection(lst.getsockname()) for _ in range(N_SELF)]
accepted = [lst.accept()[0] for _ in range(N_SELF)]
print("ready", lst.getsockname()[1], flush=True)
dups = []
while time.monotonic() < deadline:
    r, _, _ = select.select([sys.stdin], [], [], 0.5)
    if not r:
        continue
    cmd = sys.stdin.readline().strip()
    if cmd in ("", "exit"):
        break
    if cmd == "close50":        # 25 to the server, 25 client ends to our own listener
        for s in out[:25] + mine[:25]:
            s.close()
    elif cmd == "dup10":        # dup 10 connections to the server
        dups = [os.dup(s.fileno()) for s in out[25:35]]
    elif cmd == "close5orig":   # close 5 of those originals: held through the dups
        for s in out[25:30]:
            s.close()
    elif cmd == "shutdown5":    # half-close 5 others: FIN_WAIT, still held
        for s in out[35:40]:
            s.shutdown(socket.SHUT_WR)
    elif cmd == "fork":
        child = os.fork()
        if child == 0:
            ctypes.CDLL(None).prctl(15, b"cs-forked", 0, 0, 0)
            while time.monotonic() < deadline:
                r, _, _ = select.select([fork_fd], [], [], 0.5)
                if r:
                    break             # "exit" or EOF
            os._exit(0)
        print("forked", child, flush=True)
        continue
    print("ok", cmd, flush=True)
print("bye", flush=True)
os._exit(0)
"""


def test_counts_match_ss_through_close_dup_shutdown_fork_and_exit(collector_run, probe_session,
                                                                  monkeypatch):
    """A process holding 200 sockets changes what it holds phase by phase;
    after each, connscope's counts per process equal `ss -tanp` and its fds
    /proc/PID/fd, exactly. The parent exits while its forked child still
    holds everything (the child is then reparented and keeps the sockets),
    and then the child exits. The server every connection goes to is
    checked too: its accepted sockets turn CLOSE_WAIT as the holder closes."""
    fork_r, fork_w = os.pipe()
    run = collector_run(INTERVAL)
    scans = ScanLog(monkeypatch, run)
    server = tcp_server(None, "127.0.0.1", hold=True, lifetime_s=120)
    holder = None
    phases = []   # (phase, truth, measured, reached CLOSE, close events) for the report
    try:
        with run:
            holder = Child(HOLDER, "cs-holder", server.port, 90, fork_r, pass_fds=(fork_r,))
            os.close(fork_r)
            fork_r = None
            assert holder.read().startswith("ready")
            assert server.wait_accepted(99) == 99
            pids = [holder.pid, server.pid]
            missed_at_start = probe_session.counters()["missed_runs"]

            conns: set[tuple[str, str]] = set()   # the holder's connections, (local, peer)

            def check(phase):
                truth = stable_truth(pids)
                t = now_us()
                snap = scans.snapshot_after(t)
                after = stable_truth(pids)
                assert after == truth, f"{phase}: the workload changed while we waited: {truth} -> {after}"
                got = measured(snap, pids)
                # A connection's lifetime ends when its socket reaches CLOSE:
                # from then on only a time-wait socket (TIME-WAIT, or
                # FIN-WAIT-2 for an orphan whose FIN was acknowledged) or
                # nothing is left. Those closes are all the opener's (the
                # holder's), whoever held the socket last.
                closed_truth = len(conns - full_sockets())
                deadline = time.monotonic() + 5
                while len(closes_of(run, holder.pid)) < closed_truth and time.monotonic() < deadline:
                    time.sleep(0.05)
                closes = len(closes_of(run, holder.pid))
                phases.append((phase, truth, got, closed_truth, closes))
                assert same_view(truth, got), (
                    f"{phase}: connscope {got} != ss and /proc {truth}; {losses(probe_session)}")
                # A probe run the kernel skipped (the state-change program
                # re-entered on its CPU: an interrupt during it, frequent in a
                # TCG guest) loses its close, counted and shown as "probe runs
                # skipped": the only loss allowed, and no more than it counts
                # (22 of 50 closes once in trixie under QEMU, 44 runs skipped).
                skipped = probe_session.counters()["missed_runs"] - missed_at_start
                assert closes == closed_truth or closes < closed_truth <= closes + skipped, (
                    f"{phase}: {closes} close events, but {closed_truth} connections reached "
                    f"CLOSE; {losses(probe_session)}")
                return truth

            t = check("open")
            conns |= {(local, peer) for state, local, peer, holders, _ in ss_rows()
                      if holder.pid in holders and state != "LISTEN"}
            assert len(conns) == 199
            assert t[holder.pid].counts == (199, 0, 1, 0, 0), "the holder does not hold 200 sockets"
            assert holder.ask("close50") == "ok close50"
            t = check("closed 50")
            assert t[holder.pid].counts == (124, 0, 1, 25, 0)
            assert t[server.pid].counts[KINDS.index("close_wait")] == 25
            assert holder.ask("dup10") == "ok dup10"
            fds_before = t[holder.pid].fds
            t = check("dup'ed 10")
            assert t[holder.pid].fds == fds_before + 10
            assert holder.ask("close5orig") == "ok close5orig"
            t = check("closed 5 dup'ed originals")
            assert t[holder.pid].counts == (124, 0, 1, 25, 0)
            assert t[holder.pid].fds == fds_before + 5
            assert holder.ask("shutdown5") == "ok shutdown5"
            t = check("shut down 5")
            assert t[holder.pid].counts == (119, 0, 1, 25, 5)
            forked_pid = int(holder.ask("fork").split()[1])
            pids.append(forked_pid)
            t = check("forked")
            assert t[forked_pid].counts == t[holder.pid].counts
            assert holder.ask("exit") == "bye"
            holder.proc.wait(10)
            t = check("parent exited, child holds everything")
            assert t[holder.pid].counts == (0,) * 5 and t[holder.pid].fds is None
            assert t[forked_pid].counts == (119, 0, 1, 25, 5)
            os.write(fork_w, b"exit\n")
            deadline = time.monotonic() + 10
            while alive(forked_pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not alive(forked_pid), "the forked child did not exit"
            t = check("child exited")
            assert t[forked_pid].counts == (0,) * 5
            assert t[server.pid].counts[KINDS.index("close_wait")] == 99
            time.sleep(2 * INTERVAL)   # surplus closes would show by now
            closes = closes_of(run, holder.pid)
            # An orphan whose FIN was acknowledged while its socket was busy
            # stays a full FIN-WAIT-2 socket until tcp_fin_timeout (60 s) and
            # only then reaches CLOSE (seen once in a CI run): it is not closed
            # yet, and connscope must not count it as closed either.
            unclosed = conns & full_sockets()
    finally:
        print("\nphase: pid -> (established, syn_sent, listen, close_wait, other), fds")
        for phase, truth, got, n_closed, n_events in phases:
            pad = " " * len(phase)
            print(f"  {phase}: ss/proc {({p: (v.counts, v.fds) for p, v in truth.items()})}")
            print(f"  {pad}  connscope {({p: (v.counts, v.fds) for p, v in got.items()})}")
            print(f"  {pad}  connections that reached CLOSE {n_closed}, close events {n_events}")
        if holder is not None:
            holder.close()
        os.close(fork_w)
        if fork_r is not None:
            os.close(fork_r)
        server.stop()
    # Opens come from events (connect and accept in process context): all
    # of them belong to the holder, whichever process later held them.
    opened = sum(r.opened for s in run.snapshots for r in s.processes if r.pid == holder.pid)
    assert opened == 99 + 50 + 50, f"holder opened {opened}, expected 199; {losses(probe_session)}"
    assert len(unclosed) <= 2, f"{len(unclosed)} of 199 connections still full sockets: {unclosed}"
    reached = 199 - len(unclosed)
    # The same allowance as in each phase: a close is lost only with a probe
    # run the kernel skipped, counted and shown (192 of 199 once in a CI
    # guest, 14 runs skipped); never a surplus, never an uncounted loss.
    skipped = probe_session.counters()["missed_runs"] - missed_at_start
    assert len(closes) == reached or len(closes) < reached <= len(closes) + skipped, (
        f"{len(closes)} closes of {reached} connections that reached CLOSE; {losses(probe_session)}")
    closed = sum(r.closed for s in run.snapshots for r in s.processes if r.pid == holder.pid)
    assert closed == len(closes), f"the rows count {closed} closes, the events {len(closes)}"
    # Lifetimes are kept for the connections it connect()ed (pool hold
    # times); accepted ones (None) are only counted.
    lifetimes = [c for c in closes if c is not None]
    assert lifetimes and all(c > 0 for c in lifetimes), "a connect()ed connection without a lifetime"


# ---------------------------------------------------------- churn vs pool

# Echoes every byte; closes a connection when its client does, so that the
# client's socket reaches CLOSE (TIME_WAIT) at once and its lifetime is the
# time the client held it.
ECHO_SERVER = _PRELUDE + r"""
import selectors
lifetime = float(sys.argv[2])
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1024); srv.setblocking(False)
sel = selectors.DefaultSelector()
sel.register(srv, selectors.EVENT_READ)
sel.register(sys.stdin, selectors.EVENT_READ)
print(srv.getsockname()[1], flush=True)
end = time.monotonic() + lifetime
while time.monotonic() < end:
    for key, _ in sel.select(0.2):
        s = key.fileobj
        if s is sys.stdin:
            end = 0                     # any line or EOF: stop
        elif s is srv:
            while True:
                try:
                    conn, _ = srv.accept()
                except BlockingIOError:
                    break
                sel.register(conn, selectors.EVENT_READ)
        else:
            data = s.recv(4096)
            if data:
                s.sendall(data)
            else:
                sel.unregister(s)
                s.close()
"""

# A client that opens a new connection per request, RATE a second, holds
# each HOLD seconds (one request and its answer, then idle), for DURATION
# seconds; it starts on "go" and reports the wall-clock span it ran.
CHURN_CLIENT = _PRELUDE + r"""
port, rate, hold, duration = int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
print("ready", flush=True)
sys.stdin.readline()
start, wall = time.monotonic(), time.time()
n, opened, open_ = int(rate * duration), 0, []     # open_: (close at, socket), oldest first
held = []                                           # how long each was really held
while opened < n or open_:
    now = time.monotonic()
    while open_ and open_[0][0] <= now:
        due, s, t_open = open_.pop(0)
        s.close()
        held.append(time.monotonic() - t_open)
    if opened < n and now >= start + opened / rate:
        s = socket.create_connection(("127.0.0.1", port))
        t_open = time.monotonic()
        s.sendall(b"q"); s.recv(1)
        open_.append((t_open + hold, s, t_open))
        opened += 1
        if opened == 1:
            first = t_open
        last, last_wall = t_open, time.time()
    nexts = [t for t, _, _ in open_[:1]] + ([start + opened / rate] if opened < n else [])
    if nexts:
        time.sleep(max(0.0, min(nexts) - time.monotonic()))
print("done", opened, wall, last_wall, (n - 1) / (last - first), sum(held) / len(held), flush=True)
sys.stdin.readline()
"""

# A client with a pool of SIZE kept-alive connections, each used for a
# request every 50 ms, for DURATION seconds, then closed.
POOLED_CLIENT = _PRELUDE + r"""
port, size, duration = int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
print("ready", flush=True)
sys.stdin.readline()
wall = time.time()
pool = [socket.create_connection(("127.0.0.1", port)) for _ in range(size)]
end = time.monotonic() + duration
requests = 0
while time.monotonic() < end:
    for s in pool:
        s.sendall(b"q"); s.recv(1)
        requests += 1
    time.sleep(0.05)
ended = time.time()
for s in pool:
    s.close()
print("done", requests, wall, ended, flush=True)
sys.stdin.readline()
"""

RATE, HOLD_S, POOL, DURATION_S = 40, 0.1, 5, 4.0


def advice_for(snapshot, pid, destination):
    rows = [r for r in snapshot.processes if r.pid == pid]
    assert rows, f"no row for pid {pid} in the snapshot at {snapshot.ts_us}"
    (row,) = rows
    matching = [a for a in row.advice if a.destination == destination]
    assert matching, f"pid {pid}: no advice for {destination}: {row.advice}"
    return row, matching[0]


def test_churning_and_pooled_clients_are_told_apart(collector_run, probe_session, monkeypatch):
    """A client opening 40 connections a second, each held 100 ms, and one
    using 5 kept-alive connections, side by side for 4 s against the same
    server: the first is churning with a concurrency of 40 x 0.1 = 4, the
    second pooled with 5, each within 10 %."""
    server = Child(ECHO_SERVER, "cs-echo", 60)
    port = int(server.read())
    dest = f"127.0.0.1:{port}"
    churn = Child(CHURN_CLIENT, "cs-churn", port, RATE, HOLD_S, DURATION_S)
    pooled = Child(POOLED_CLIENT, "cs-pooled", port, POOL, DURATION_S)
    try:
        assert churn.read() == "ready" and pooled.read() == "ready"
        run = collector_run(INTERVAL)
        scans = ScanLog(monkeypatch, run)
        with run:
            # Start right after an interval closes, so that the workload's
            # first interval is a whole one.
            deadline = time.monotonic() + 10
            seen = len(run.snapshots)
            while len(run.snapshots) == seen and time.monotonic() < deadline:
                time.sleep(0.005)
            churn.send("go")
            pooled.send("go")
            _, churn_opened, churn_start, churn_last_open, churn_rate, churn_hold = (
                churn.read(DURATION_S + 10).split())
            pooled_end = pooled.read(DURATION_S + 10).split()[3]
            time.sleep(INTERVAL)
    finally:
        for c in (churn, pooled, server):
            c.close()
    # The workload must be roughly what it was asked to be (a churner, not a
    # pool); a busy machine makes a python client late, so connscope is held
    # to what the client measured it did, not to the nominal schedule.
    churn_rate, churn_hold = float(churn_rate), float(churn_hold)
    assert int(churn_opened) == RATE * DURATION_S
    assert churn_rate == pytest.approx(RATE, rel=0.10), f"the churning client made {churn_rate:.2f}/s"
    assert churn_hold == pytest.approx(HOLD_S, rel=0.25), f"the churning client held {churn_hold * 1000:.1f} ms"
    # The last snapshot built from a scan taken while both clients ran (from
    # 1 s in): the advice covers the last 30 intervals, all of the workload.
    end_us = min(float(churn_last_open), float(pooled_end)) * 1e6
    start_us = float(churn_start) * 1e6
    during = [i for i, s in enumerate(run.snapshots) if start_us < s.ts_us < end_us - 300_000]
    assert during, "no snapshot while both clients ran"
    reused = sum(scans.reused.get(i, False) for i in during)
    scanned = [i for i in during if scans.scan_us.get(i, 0) > start_us + 1e6]
    assert scanned, (f"no fresh scan of the socket table from 1 s into the workload to its end: "
                     f"{reused} of {len(during)} snapshots reused an earlier one; scans cost "
                     f"{[round(c) for c in scans.cost_ms]} ms (SocketTable spaces them out to "
                     f"keep them under 10 % of the time)")
    snap = run.snapshots[scanned[-1]]
    crow, ca = advice_for(snap, churn.pid, dest)
    prow, pa = advice_for(snap, pooled.pid, dest)
    print(f"\nat {(snap.ts_us - float(churn_start) * 1e6) / 1e6:.2f} s into the workload:")
    for name, row, a in (("churn", crow, ca), ("pooled", prow, pa)):
        print(f"  {name}: arrival {a.arrival_per_s:.2f}/s, hold {a.hold_s * 1000:.1f} ms, "
              f"concurrency mean {a.concurrency_mean:.2f} (p99 {a.concurrency_p99}, "
              f"peak {a.concurrency_peak}, in use {a.in_use}), recommended {a.recommended}; "
              f"{a.verdict!r}; churning={row.churning}")
    print(f"  the churning client made {churn_rate:.2f} connections/s, held {churn_hold * 1000:.1f} ms")
    print(f"  {reused} of {len(during)} snapshots during the workload reused an earlier scan")
    lost = f"{losses(probe_session)}; {reused} of {len(during)} snapshots reused a scan"
    assert crow.churning and ca.verdict.startswith("churning"), f"{ca}; {lost}"
    assert not prow.churning and pa.verdict.startswith("pooled"), f"{pa}; {lost}"
    assert ca.concurrency_mean == pytest.approx(churn_rate * churn_hold, rel=0.10), f"{ca}; {lost}"
    assert pa.concurrency_mean == pytest.approx(POOL, rel=0.10), f"{pa}; {lost}"
    # What the concurrency is made of, for the churner: Little's law, against
    # what the client measured it did.
    assert ca.arrival_per_s == pytest.approx(churn_rate, rel=0.10), f"{ca}; {lost}"
    assert ca.hold_s == pytest.approx(churn_hold, rel=0.05), f"{ca}; {lost}"
    assert pa.in_use == POOL
    # The server opened nothing: its accepted connections are no pool.
    (srow,) = [r for r in snap.processes if r.pid == server.pid]
    assert srow.established > 0 and srow.advice == () and not srow.churning, srow


# -------------------------------------------------------------- CLOSE_WAIT

def test_close_wait_of_a_server_that_never_closes(collector_run, probe_session, monkeypatch):
    """Clients connect and hang up; the server keeps every accepted socket
    without closing it: each sits in CLOSE_WAIT, and connscope's close_wait
    for the server equals what ss counts."""
    n = 30
    run = collector_run(INTERVAL)
    scans = ScanLog(monkeypatch, run)
    with tcp_server(None, "127.0.0.1", hold=True, lifetime_s=60) as server, run:
        clients = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(n)]
        assert server.wait_accepted(n) == n
        for c in clients:
            c.close()
        truth = stable_truth([server.pid])
        snap = scans.snapshot_after(now_us())
        after = stable_truth([server.pid])
        got = measured(snap, [server.pid])
    print(f"\nserver: ss/proc {truth}, connscope {got}")
    assert after == truth, f"the workload changed while we waited: {truth} -> {after}"
    assert truth[server.pid].counts == (0, 0, 1, n, 0), "the workload did not leave CLOSE_WAIT"
    assert same_view(truth, got), f"connscope {got} != ss and /proc {truth}; {losses(probe_session)}"
