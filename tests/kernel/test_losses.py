"""Losses provoked on purpose: seen + lost == made, and the user is told.

Each test loads the real probes with one bound made tiny (the ring buffer,
the in-flight map) through BuildOptions, whose fields are the -D switches
the loader passes anyway (tracer/probes/program.py), and runs the real
`record` pipeline (probes -> collector -> Parquet, status line, manifest)
in this process. Ground truth is what the client thread made.

Exactness needs every record in the buffer, and every slot in the map, to be
ours, whatever else runs on the machine: the probes are loaded with a comm
filter (the client thread's own name, set with prctl; it applies where a
connect begins, in process context) and a port filter (our listener's
ephemeral port; it applies to the connect and close records). The listener
never accepts, so the only records our traffic can write are connect events
(one per connect) until the client sockets close.
"""
import ctypes
import functools
import json
import os
import socket
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tracer.domain.hooks import NESTED_COPY, unhandled_misses

pytestmark = pytest.mark.kernel

COMM = "cs-loss-client"           # <= 15 bytes: the kernel's task name
BACKEND = os.environ.get("CONNSCOPE_TEST_BACKEND", "auto")


def name_this_thread(name: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    PR_SET_NAME = 15
    assert libc.prctl(PR_SET_NAME, name.encode(), 0, 0, 0) == 0, ctypes.get_errno()


class Listener:
    """A loopback listener nobody accepts from."""

    def __init__(self, backlog: int):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(backlog)
        self.port = self.sock.getsockname()[1]

    def close(self):
        self.sock.close()


class Recorded:
    """What one in-process `record` run left: its status lines, its manifest,
    its connects rows to our port, and the session's counters at the end."""
    stderr: str
    manifest: dict
    rows: list
    counters: dict
    transport: str


def record_with(monkeypatch, capfd, tmp_path, port, traffic, *, sizes, gate_reader=False,
                duration=2.5, after_drain=None):
    """Run tracer.run.record() with BuildOptions overridden by `sizes`, while
    `traffic(session)` runs in a thread named COMM once the probes are loaded.
    gate_reader: the collector's reads wait until the traffic is done (a
    stalled reader)."""
    from tracer import run
    from tracer.filters import Filters
    from tracer.probes import program, startup

    monkeypatch.setattr(program, "BuildOptions", functools.partial(program.BuildOptions, **sizes))
    # record() keeps numpy and pandas out of its process; this one is pytest's
    monkeypatch.setattr(run, "keep_out_of_the_tracer", lambda *a, **k: None)
    loaded, done, drained = threading.Event(), threading.Event(), threading.Event()
    out = Recorded()
    real_start = startup.start
    failures = []

    def start(backend, filters):
        session = real_start(backend, filters)
        real_poll, real_close = session.poll, session.close

        def poll(timeout_ms=100):
            if gate_reader:
                done.wait(30)
            got = real_poll(timeout_ms)
            if done.is_set() and not got:
                drained.set()
            return got

        def close():
            if session._prog is not None:
                out.counters = session.counters()
            real_close()

        session.poll, session.close = poll, close
        out.transport = session.info.transport
        loaded.set()
        return session

    def client():
        name_this_thread(COMM)
        try:
            loaded.wait(60)
            traffic()
            if after_drain is not None:
                done.set()
                assert drained.wait(10)
                after_drain()
        except BaseException as e:   # reported by the test, not lost in a thread
            failures.append(e)
        finally:
            done.set()

    monkeypatch.setattr(startup, "start", start)
    t = threading.Thread(target=client, daemon=True)
    t.start()
    rec = tmp_path / "rec"
    capfd.readouterr()
    run.record(backend=BACKEND, interval=0.5, filters=Filters.build(comm=COMM, ports=[port]),
               out_dir=str(rec), duration=duration)
    t.join(30)
    assert not failures, failures
    assert done.is_set() and (after_drain is None or drained.is_set())
    out.stderr = capfd.readouterr().err
    [out.manifest] = [json.loads(p.read_text()) for p in (rec / "runs").glob("*.json")]
    files = sorted(Path(rec, "connects").glob("date=*/*.parquet"))
    out.rows = [r for f in files for r in pq.read_table(f).to_pylist() if r["dport"] == port]
    return out


def assert_shown(rec: Recorded, lost_total: int):
    """The user sees the losses: on record's status line and in the manifest
    that report and replay read."""
    assert lost_total > 0
    last = [ln for ln in rec.stderr.splitlines() if "(stopped)" in ln]
    assert last and f"lost {lost_total} " in last[-1], rec.stderr
    assert rec.manifest["lost_events"]["connects"] == lost_total, rec.manifest


def test_tiny_ring_with_a_stalled_reader_counts_every_lost_connect(monkeypatch, capfd, tmp_path):
    """A one-page ring buffer (4 KiB) and a burst of N loopback connects while
    the reader waits: the first connects fill the ring, the rest are lost, and
    each is counted. Only connect records can be written here (see the module
    docstring), so records and connects are the same count: exact."""
    n = 300
    lst = Listener(backlog=4096)
    clients, sports = [], []

    def burst():
        for _ in range(n):
            c = socket.create_connection(("127.0.0.1", lst.port), timeout=5)
            clients.append(c)
            sports.append(c.getsockname()[1])

    try:
        rec = record_with(monkeypatch, capfd, tmp_path, lst.port, burst,
                          sizes={"ringbuf_pages": 1}, gate_reader=True)
    finally:
        for c in clients:
            c.close()
        lst.close()
    if rec.transport != "ring buffer":
        pytest.skip(f"events go through a {rec.transport} here: RINGBUF_PAGES does not apply")
    assert len(clients) == n
    c = rec.counters
    assert c["untracked_connects"] == 0 and c["decode_errors"] == 0, c
    assert all(r["outcome"] == "established" for r in rec.rows)
    seen = len(rec.rows)
    assert 0 < seen < n and c["lost_events"] > 0, (seen, c)
    print(f"ring: made {n}, recorded {seen}, lost_events {c['lost_events']}")
    assert seen + c["lost_events"] == n, (seen, c)
    # a full ring refuses the newest records: what got through are the first connects
    assert sorted(r["sport"] for r in rec.rows) == sorted(sports[:seen])
    assert_shown(rec, c["lost_events"])


def test_tiny_inflight_map_counts_every_untracked_connect(monkeypatch, capfd, tmp_path):
    """An in-flight map of 4 and 12 connects waiting at once (a listener with
    a backlog of 1 nobody accepts from: past the first two, SYNs are dropped
    and the connects stay in SYN_SENT until the client closes them). Each
    tracked connect ends in one event (established, or closed by the
    application); each that found the map full is counted."""
    m, slots = 12, 4
    lst = Listener(backlog=1)
    clients = []

    def pending_connects():
        for _ in range(m):
            c = socket.socket()
            c.setblocking(False)
            assert c.connect_ex(("127.0.0.1", lst.port)) in (0, 115)   # 115: EINPROGRESS
            clients.append(c)
        time.sleep(0.2)
        for c in clients:
            c.close()

    try:
        rec = record_with(monkeypatch, capfd, tmp_path, lst.port, pending_connects,
                          sizes={"max_inflight": slots})
    finally:
        for c in clients:
            c.close()
        lst.close()
    c = rec.counters
    assert c["lost_events"] == 0 and c["decode_errors"] == 0, c
    established = sum(r["outcome"] == "established" for r in rec.rows)
    assert established >= 1, rec.rows
    assert len(rec.rows) >= slots and c["untracked_connects"] > 0, (len(rec.rows), c)
    print(f"in-flight: made {m}, recorded {len(rec.rows)} ({established} established), "
          f"untracked_connects {c['untracked_connects']}")
    assert len(rec.rows) + c["untracked_connects"] == m, ([r["outcome"] for r in rec.rows], c)
    assert_shown(rec, c["untracked_connects"])


def accepts_to(tmp_path, port) -> list:
    files = sorted(Path(tmp_path, "rec", "accepts").glob("date=*/*.parquet"))
    return [r for f in files for r in pq.read_table(f).to_pylist() if r["lport"] == port]


def test_tiny_handshake_map_counts_every_unmeasured_accept_wait(monkeypatch, capfd, tmp_path):
    """A handshake map of 4 (when each connection entered the accept queue,
    for the accept wait) and 10 connections queued before the first accept():
    every accept is recorded, and each one's wait is either measured or
    counted as not measured.

    (Not exact on a busy machine: on this kernel the map also takes the
    handshakes of every other listener on it, filters or not, and keeps those
    another process accepts; here nothing else accepts connections.)"""
    m, slots = 10, 4
    lst = Listener(backlog=64)
    clients = []

    def queued_then_accepted():
        for _ in range(m):
            clients.append(socket.create_connection(("127.0.0.1", lst.port), timeout=5))
        lst.sock.settimeout(5)
        for _ in range(m):
            a, _ = lst.sock.accept()
            a.close()

    try:
        rec = record_with(monkeypatch, capfd, tmp_path, lst.port, queued_then_accepted,
                          sizes={"max_handshakes": slots})
    finally:
        for c in clients:
            c.close()
        lst.close()
    c = rec.counters
    accepts = accepts_to(tmp_path, lst.port)
    assert len(accepts) == m and c["lost_events"] == 0, (len(accepts), c)
    measured = sum(r["queue_wait_us"] is not None for r in accepts)
    print(f"handshakes: accepted {m}, waits measured {measured}, "
          f"untracked_accept_waits {c['untracked_accept_waits']}")
    assert measured == slots, (measured, c)
    assert measured + c["untracked_accept_waits"] == m, (measured, c)
    assert_shown(rec, c["untracked_accept_waits"])


def test_small_perf_buffer_with_a_stalled_reader_counts_every_lost_connect(monkeypatch, capfd,
                                                                           tmp_path):
    """The transport of kernels without a ring buffer (hidden here by the test
    hook CONNSCOPE_HIDE_FEATURES), one page per CPU: the kernel reports the
    records it dropped on a CPU in a PERF_RECORD_LOST record, written only
    when the next record fits on that CPU. So after the reader has caught up
    one more connect is made on each CPU, and those are in the count."""
    from tracer.probes import buffers

    monkeypatch.setenv("CONNSCOPE_HIDE_FEATURES", "ringbuf")
    monkeypatch.setattr(buffers, "PerfBuffer", functools.partial(buffers.PerfBuffer, pages=1))
    n = 300
    cpus = sorted(os.sched_getaffinity(0))
    lst = Listener(backlog=4096)
    clients, sports = [], []

    def connect_once():
        c = socket.create_connection(("127.0.0.1", lst.port), timeout=5)
        clients.append(c)
        sports.append(c.getsockname()[1])

    def burst():
        for _ in range(n):
            connect_once()

    def one_per_cpu():
        for cpu in cpus:
            os.sched_setaffinity(0, {cpu})     # this thread only
            connect_once()
        os.sched_setaffinity(0, cpus)

    try:
        rec = record_with(monkeypatch, capfd, tmp_path, lst.port, burst, sizes={},
                          gate_reader=True, after_drain=one_per_cpu)
    finally:
        for c in clients:
            c.close()
        lst.close()
    assert rec.transport == "perf buffer"
    made = n + len(cpus)
    assert len(clients) == made
    c = rec.counters
    assert c["untracked_connects"] == 0 and c["decode_errors"] == 0, c
    seen = len(rec.rows)
    print(f"perf buffer: made {made}, recorded {seen}, lost_events {c['lost_events']}")
    assert 0 < seen < made and c["lost_events"] > 0, (seen, c)
    assert seen + c["lost_events"] == made, (seen, c)
    assert set(sports[-len(cpus):]) <= {r["sport"] for r in rec.rows}
    assert_shown(rec, c["lost_events"])


def test_tiny_connect_call_map_counts_every_unwatched_connect(monkeypatch, capfd, tmp_path):
    """A map of 2 threads inside connect() (bpf/connect.h, connect_calls),
    held by 2 threads blocked connecting into a black hole: the N connect()s
    that fail meanwhile for lack of a route cannot be watched and are counted;
    the N after the black-holed ones return are recorded. Recorded + counted
    == made."""
    import ctypes as C
    import struct
    import subprocess

    from tests.kernel.test_connect_outcomes import scratch_netns, _ip
    from tests.kernel.netlab import socket_in

    slots, n = 2, 5
    lst = Listener(backlog=8)    # only its port: the port filter's, and the target's
    port = lst.port
    made = {}

    def traffic():
        with scratch_netns() as ns:
            _ip("-n", ns, "tuntap", "add", "dev", "bh0", "mode", "tun")
            _ip("-n", ns, "addr", "add", "10.251.0.1/24", "dev", "bh0")
            _ip("-n", ns, "link", "set", "bh0", "up")
            started = threading.Barrier(slots + 1)

            def held():
                name_this_thread(COMM)
                s = socket_in(ns)
                # a blocking connect() that gives up after 1.5 s (EINPROGRESS)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", 1, 500_000))
                started.wait(5)
                try:
                    s.connect(("10.251.0.9", port))
                except OSError:
                    pass
                s.close()

            holders = [threading.Thread(target=held) for _ in range(slots)]
            for t in holders:
                t.start()
            started.wait(5)
            time.sleep(0.3)          # both inside connect(), holding the map
            made["while_full"] = [socket_in(ns).connect_ex(("10.99.0.7", port))
                                  for _ in range(n)]
            for t in holders:
                t.join(10)
            made["after"] = [socket_in(ns).connect_ex(("10.99.0.7", port)) for _ in range(n)]

    try:
        rec = record_with(monkeypatch, capfd, tmp_path, port, traffic,
                          sizes={"max_connect_calls": slots}, duration=4.0)
    finally:
        lst.close()
    assert made["while_full"] == made["after"] == [101] * n   # ENETUNREACH, as the client saw
    c = rec.counters
    unreach = [r for r in rec.rows if r["daddr"] == "10.99.0.7"]
    print(f"connect calls: made {2 * n} failing, recorded {len(unreach)}, "
          f"untracked_connect_calls {c['untracked_connect_calls']}")
    assert [(r["outcome"], r["errno"]) for r in unreach] == [("unreachable", 101)] * n
    assert c["untracked_connect_calls"] == n, c
    assert len(unreach) + c["untracked_connect_calls"] == 2 * n
    last = [ln for ln in rec.stderr.splitlines() if "(stopped)" in ln]
    assert last and f"lost {n} " in last[-1], rec.stderr


def test_skipped_probe_runs_equal_bpftools_count_per_program(probe_session):
    """The runs the kernel skipped (BPF recursion) that connscope shows, by
    program, are bpftool's recursion_misses of the same programs (matched by
    program id), after a loopback load that makes some (softirq state changes
    interrupting our programs; how many varies, equal they must be)."""
    import shutil
    import subprocess

    from tracer.probes import bpf_syscall as sc

    if not shutil.which("bpftool"):
        pytest.skip("bpftool is not installed (Debian package bpftool)")
    kernel, handled, ours = _skipped_runs_under_load(probe_session)
    ids = {struct_id(sc.obj_info(fd)): name for name, fd in probe_session._prog.prog_fds.items()}
    shown = json.loads(subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True,
                                      text=True, check=True, timeout=30).stdout)
    theirs = {ids[p["id"]]: p["recursion_misses"] for p in shown
              if p["id"] in ids and p.get("recursion_misses")}
    assert kernel == theirs
    assert ours == unhandled_misses(theirs, handled)
    assert probe_session.counters()["missed_runs"] == sum(ours.values())


@pytest.mark.parametrize("hooks", ["default", "raw"])
def test_nested_copies_handle_every_run_the_kernel_skipped(hooks, probe_session, monkeypatch):
    """A program's nested copy handles every run of it the kernel skipped,
    no fewer (a change lost) and no more (a change handled twice): bpf/main.c,
    the copy finds the first's mark of a change on its own stack level, or
    handles it. On the session's hooks (BTF ones where they load) and on raw
    tracepoint hooks (the same code)."""
    from tracer.filters import Filters
    from tracer.probes import startup
    from tracer.probes.features import RAW_TRACEPOINTS_ENV

    session = probe_session
    if hooks == "raw":
        monkeypatch.setenv(RAW_TRACEPOINTS_ENV, "1")
        session = startup.start(BACKEND, Filters())
    try:
        if not any(n.endswith(NESTED_COPY) for n in session._prog.prog_fds):
            pytest.skip(f"no nested copies with these hooks ({session.info.tracepoint_hooks})")
        if hooks == "raw" and not any(n.startswith("raw_tracepoint__")
                                      for n in session._prog.prog_fds):
            pytest.skip(f"no raw tracepoint hooks here ({session.info.tracepoint_hooks})")
        kernel, handled, ours = _skipped_runs_under_load(session)
        # each handled run is one the kernel skipped the first for, and the
        # copy handles all of them (a copy skipped itself loses nothing: the
        # first ran then), so none is shown as lost
        assert handled == {p: kernel.get(p, 0) for p in handled}, (handled, kernel)
        assert ours == {}
    finally:
        if session is not probe_session:
            session.close()


def _skipped_runs_under_load(session):
    """(the kernel's skipped runs, those the nested copies handled, those
    shown as lost), each by program, after two connectors at 9,000
    connects/s for 6 s each on loopback (bounded in count and time): a few
    hundred skipped runs on this 2-core host."""
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    server = subprocess.Popen([sys.executable, "-m", "bench.loopback_load", "server", "--ports",
                               "2", "--lifetime", "25"], cwd=repo, stdout=subprocess.PIPE,
                              text=True)
    try:
        ports = server.stdout.readline().split()[1:]
        clients = [subprocess.Popen([sys.executable, "-m", "bench.loopback_load", "connect",
                                     "--ports", *ports, "--rate", "9000", "--seconds", "6"],
                                    cwd=repo, stdout=subprocess.DEVNULL) for _ in range(2)]
        deadline = time.monotonic() + 20
        while any(c.poll() is None for c in clients) and time.monotonic() < deadline:
            session.poll(100)      # keep reading, as connscope does
        for c in clients:
            c.kill()
            c.wait()
    finally:
        server.kill()
        server.wait()
    session.poll(0)
    handled = session.handled_runs_by()      # first: see unhandled_misses
    kernel = session.kernel_skipped_runs_by()
    ours = session.missed_runs_by()
    print(session.info.tracepoint_hooks)
    print("skipped runs:", kernel, "handled by the nested copies:", handled, "shown:", ours)
    return kernel, handled, ours


def struct_id(info: bytes) -> int:
    """struct bpf_prog_info: __u32 type, __u32 id, ..."""
    return int.from_bytes(info[4:8], "little")
