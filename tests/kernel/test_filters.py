"""The kernel-side filters (--pid, --comm, -4, -6, --port), loaded for real:
two processes make the same kind of traffic on loopback, and a session
loaded with a filter must see exactly one of them.

Each process listens on a port of its own, connects to it N times and
accepts each connection, so it is both the connecting and the accepting
process. A control run without a filter sees both: it shows the checks can
tell a filter that works from one that is not applied (a filter that is
ignored fails them; tried by emptying program.fill_filter_maps and by
dropping the -D switches)."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from tracer.events import Accept, Connect
from tracer.filters import Filters

pytestmark = pytest.mark.kernel

N = 5

# argv: family (4|6), comm. Prints "port P", waits for "go", then connects to
# itself N times and accepts each, then makes N connect()s to its port that
# fail with ENETUNREACH; prints "done". Every wait is bounded.
_CLIENT = r"""
import select, socket, sys
family, comm, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
with open("/proc/self/comm", "w") as f:
    f.write(comm)
af, addr = (socket.AF_INET, "127.0.0.1") if family == "4" else (socket.AF_INET6, "::1")
srv = socket.socket(af, socket.SOCK_STREAM)
srv.bind((addr, 0))
srv.listen(64)
print("port", srv.getsockname()[1], flush=True)
ready, _, _ = select.select([sys.stdin], [], [], 60)
if not ready or sys.stdin.readline().strip() != "go":
    sys.exit(1)
srv.settimeout(5)
held = []
for _ in range(n):
    c = socket.socket(af, socket.SOCK_STREAM)
    c.settimeout(5)
    c.connect((addr, srv.getsockname()[1]))
    a, _ = srv.accept()
    held += [c, a]
for s in held:
    s.close()
# connect()s that fail before any SYN (a multicast destination: ENETUNREACH
# from the route check, nothing sent), to its own port
unreachable = "224.0.0.1" if family == "4" else "ff02::1"
for _ in range(n):
    c = socket.socket(af, socket.SOCK_STREAM)
    assert c.connect_ex((unreachable, srv.getsockname()[1])) == 101
    c.close()
print("done", flush=True)
"""


class Worker:
    def __init__(self, family: int, comm: str):
        self.comm = comm
        self.proc = subprocess.Popen([sys.executable, "-c", _CLIENT, str(family), comm, str(N)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline().split()
        assert line[:1] == ["port"], f"worker {comm} did not start"
        self.port = int(line[1])
        self.pid = self.proc.pid

    def go(self) -> None:
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def finish(self) -> None:
        try:
            assert self.proc.stdout.readline().strip() == "done"
            self.proc.wait(10)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(5)


def _mine(events, w: Worker) -> tuple[list, list]:
    """(connects to w's port, accepts on w's port)."""
    connects = [e for e in events if isinstance(e, Connect) and e.dport == w.port]
    accepts = [e for e in events if isinstance(e, Accept) and e.lport == w.port]
    return connects, accepts


def _run(filters_for, family_a=4, family_b=4):
    """Start two workers (A, B), load a session with filters_for(A, B), make
    the traffic, and return what the session saw for each."""
    from tests.kernel.conftest import Tracer
    from tracer.probes import startup

    a = Worker(family_a, f"csfa{os.getpid() % 10000}")
    b = Worker(family_b, f"csfb{os.getpid() % 10000}")
    try:
        session = startup.start(os.environ.get("CONNSCOPE_TEST_BACKEND", "auto"),
                                filters_for(a, b))
    except BaseException:
        for w in (a, b):
            w.proc.kill()
        raise
    tracer = Tracer(session)
    try:
        a.go()
        b.go()
        a.finish()
        b.finish()
        # wait until A's traffic (or B's, for filters that keep B) has arrived
        seen = tracer.wait_for(
            lambda ev: any(len(_mine(ev, w)[0]) >= 2 * N and len(_mine(ev, w)[1]) >= N
                           for w in (a, b)), timeout_s=10, settle_s=1.0)
    finally:
        tracer.close()
        session.close()
    return a, b, _mine(seen, a), _mine(seen, b), seen


def _exactly(side, w: Worker, family: int):
    connects, accepts = side
    assert len(connects) == 2 * N, f"{w.comm}: {len(connects)} connects seen, made {2 * N}"
    assert len(accepts) == N, f"{w.comm}: {len(accepts)} accepts seen, made {N}"
    assert {e.pid for e in connects + accepts} == {w.pid}
    assert {e.family for e in connects + accepts} == {family}
    assert sorted((e.outcome, e.err) for e in connects) == (
        [("established", 0)] * N + [("unreachable", 101)] * N)


def _none(side, w: Worker):
    connects, accepts = side
    assert not connects and not accepts, (
        f"{w.comm}[{w.pid}] was filtered out, yet {len(connects)} connects and "
        f"{len(accepts)} accepts of it were seen")


def test_without_a_filter_both_processes_are_seen():
    """The control: the checks below would see B if the filter were not applied."""
    a, b, seen_a, seen_b, _ = _run(lambda a, b: Filters())
    _exactly(seen_a, a, 4)
    _exactly(seen_b, b, 4)


def test_pid_filter_sees_only_that_process():
    a, b, seen_a, seen_b, seen = _run(lambda a, b: Filters.build(pids=[a.pid]))
    _exactly(seen_a, a, 4)
    _none(seen_b, b)
    # nothing else on the machine either: every connect and accept is A's
    assert {e.pid for e in seen if isinstance(e, (Connect, Accept))} == {a.pid}


def test_comm_filter_sees_only_processes_of_that_name():
    a, b, seen_a, seen_b, seen = _run(lambda a, b: Filters.build(comm=b.comm))
    _exactly(seen_b, b, 4)
    _none(seen_a, a)
    assert {e.comm for e in seen if isinstance(e, (Connect, Accept))} == {b.comm}


@pytest.mark.parametrize("keep", [4, 6])
def test_family_filter_sees_only_that_family(keep):
    """A works over IPv4, B over IPv6: -4 keeps A, -6 keeps B."""
    a, b, seen_a, seen_b, seen = _run(
        lambda a, b: Filters.build(ipv4=keep == 4, ipv6=keep == 6), family_a=4, family_b=6)
    kept, dropped = ((seen_a, a), (seen_b, b)) if keep == 4 else ((seen_b, b), (seen_a, a))
    _exactly(kept[0], kept[1], keep)
    _none(*dropped)
    assert {e.family for e in seen if isinstance(e, (Connect, Accept))} == {keep}


def test_port_filter_sees_only_that_port():
    a, b, seen_a, seen_b, seen = _run(lambda a, b: Filters.build(ports=[b.port]))
    _exactly(seen_b, b, 4)
    _none(seen_a, a)
    assert all(b.port in (getattr(e, "dport", None), getattr(e, "lport", None),
                          getattr(e, "sport", None), getattr(e, "rport", None))
               for e in seen if isinstance(e, (Connect, Accept)))


@pytest.mark.parametrize("filtered", [False, True])
def test_port_filter_applies_to_the_listeners_shown(filtered):
    """Listeners come from the kernel's socket table, not from filtered events:
    --port must still select them (issue 14: it did not). Unfiltered, both
    workers' listeners are shown: the check can tell the difference."""
    import threading

    from tracer.clock import Clock
    from tracer.probes import startup
    from tracer.run import make_collector

    a, b = Worker(4, "csla"), Worker(4, "cslb")
    try:
        filters = Filters.build(ports=[b.port]) if filtered else Filters()
        session = startup.start(os.environ.get("CONNSCOPE_TEST_BACKEND", "auto"), filters)
        snapshots = []

        class Keep:
            def on_events(self, events):
                pass

            def on_interval(self, status, snapshot):
                snapshots.append(snapshot)

            def close(self, status, snapshot):
                snapshots.append(snapshot)

        stop = threading.Event()
        collector = make_collector(session, [Keep()], 0.3, Clock(), filters=filters)
        worker = threading.Thread(target=collector.run, args=(stop.is_set,))
        worker.start()
        time.sleep(1.2)
        stop.set()
        worker.join(10)
        session.close()
    finally:
        for w in (a, b):
            w.proc.kill()
            w.proc.wait(5)
    assert len(snapshots) >= 2
    ports = {r.lport for s in snapshots for r in s.listeners}
    if filtered:
        assert ports == {b.port}
        assert snapshots[-1].header.filters == f"port {b.port}"
    else:
        assert {a.port, b.port} <= ports


@pytest.mark.parametrize("below", [True, False], ids=["with-ancestors", "exact-id-only"])
def test_cgroup_filter_sees_the_cgroup_and_below_it_or_it_alone(below, monkeypatch):
    """--cgroup: A in the selected cgroup v2, B in a child of it, C left where
    it is. With bpf_get_current_ancestor_cgroup_id the kernel keeps A and B;
    built without it (what a kernel whose tracing programs cannot call it
    gets: forced here) A alone. C is never seen."""
    import secrets
    from pathlib import Path

    from tests.kernel.conftest import Tracer
    from tracer.probes import cgroup_filter, startup
    from tracer.probes.cgroups import hierarchies

    v2 = hierarchies().v2
    if v2 is None:
        pytest.skip("no cgroup v2 mounted here: --cgroup needs one")
    if below and not cgroup_filter.ancestors_matched()[0]:
        pytest.skip(f"this kernel's tracing programs cannot call "
                    f"bpf_get_current_ancestor_cgroup_id: {cgroup_filter.ancestors_matched()[1]}")
    monkeypatch.setattr(cgroup_filter, "_ancestors",
                        (True, "") if below else (False, "forced by the test"))
    top = Path(v2) / f"connscope-filter-{os.getpid()}-{secrets.token_hex(2)}"
    child = top / "child"
    child.mkdir(parents=True)
    workers = []
    try:
        tag = os.getpid() % 10000
        a, b, c = (Worker(4, f"csg{x}{tag}") for x in "abc")
        workers = [a, b, c]
        (top / "cgroup.procs").write_text(str(a.pid))
        (child / "cgroup.procs").write_text(str(b.pid))
        target = cgroup_filter.resolve_path("/" + top.name, v2)
        session = startup.start(os.environ.get("CONNSCOPE_TEST_BACKEND", "auto"),
                                Filters.build(cgroups=[target]))
        tracer = Tracer(session)
        try:
            assert any(("below them" if below else "themselves only") in n
                       for n in session.info.notes), session.info.notes
            for w in workers:
                w.go()
            for w in workers:
                w.finish()
            seen = tracer.wait_for(
                lambda ev: len(_mine(ev, a)[0]) >= 2 * N and len(_mine(ev, a)[1]) >= N
                and (not below or len(_mine(ev, b)[0]) >= 2 * N), timeout_s=10, settle_s=1.0)
        finally:
            tracer.close()
            session.close()
    finally:
        for w in workers:
            if w.proc.poll() is None:
                w.proc.kill()
                w.proc.wait(5)
        for d in (child, top):
            for _ in range(50):
                try:
                    d.rmdir()
                    break
                except OSError:
                    time.sleep(0.1)
    _exactly(_mine(seen, a), a, 4)
    if below:
        _exactly(_mine(seen, b), b, 4)
    else:
        _none(_mine(seen, b), b)
    _none(_mine(seen, c), c)
