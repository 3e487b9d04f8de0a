"""Container and pod attribution against real containers (runc, busybox):
a server in a kubepods-shaped container (a pod the test describes in a pods
directory of its own, as the kubelet's /var/log/pods) and a client in a
docker-shaped one, both in a network namespace the test makes; a real
`connscope record` must put the right container, runtime, cgroup id, pod
and netns on every row, and the accept-queue overflow on the server's
container. Then a pods directory planted by an unprivileged user is not
believed."""
from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import duckdb
import pytest

from tests.hostile_fs import needs_setpriv, nobody_home, plant_dirs, plant_link, tree, victim  # noqa: F401
from tests.kernel import runc_containers
from tests.kernel.test_record_cli import CONNSCOPE, ROOT, wait_started
from tests.kernel.workloads import wait_for

pytestmark = pytest.mark.kernel

CLIENTS_OK, CLIENTS_BLOCKED = 4, 24
BUSYBOX_HTTPD_BACKLOG = 9       # busybox httpd listens with backlog 9: a queue of 10


@pytest.fixture
def runc(tmp_path):
    why = runc_containers.available()
    if why:
        pytest.skip(why)
    r = runc_containers.Runc(tmp_path / "runc")
    yield r
    r.close()


@pytest.fixture
def netns():
    name = f"cs-ct-{os.getpid()}-{secrets.token_hex(2)}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=10)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True, timeout=10)
        yield name, f"/run/netns/{name}", os.stat(f"/run/netns/{name}").st_ino
    finally:
        subprocess.run(["ip", "netns", "del", name], timeout=10)


def _listening(ns: str, port: int) -> bool:
    out = subprocess.run(["ip", "netns", "exec", ns, "ss", "-Htln", f"sport = :{port}"],
                         capture_output=True, text=True, timeout=10).stdout
    return bool(out.strip())


def _overflowed(ns: str, port: int) -> bool:
    """The listener's accept queue is past its limit (ss: Recv-Q > Send-Q)."""
    out = subprocess.run(["ip", "netns", "exec", ns, "ss", "-Htln", f"sport = :{port}"],
                         capture_output=True, text=True, timeout=10).stdout.split()
    return len(out) >= 3 and int(out[1]) > int(out[2])


def _v2_id(cgroup_path: str) -> int | None:
    from tracer.probes.cgroups import hierarchies

    root = hierarchies().v2
    return os.stat(root + cgroup_path).st_ino if root else None


def _sql(out: Path, table: str, query: str) -> list[tuple]:
    return duckdb.sql(query.replace(
        "T", f"read_parquet('{out}/{table}/**/*.parquet', hive_partitioning=true, "
             "union_by_name=true)", 1)).fetchall()


def _recorder(out: Path, port: int, pods: Path, links: Path, duration: int = 40):
    """A real `connscope record` reading the kubelet's directories from `pods`, `links`."""
    return subprocess.Popen([*CONNSCOPE, "record", "--out", str(out), "--interval", "0.5",
                             "--port", str(port), "--duration", str(duration)], cwd=ROOT,
                            env={**os.environ, "CONNSCOPE_POD_LOGS": str(pods),
                                 "CONNSCOPE_CONTAINER_LOGS": str(links)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _stop(proc) -> str:
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    return err


def test_rows_name_the_container_pod_and_netns(runc, netns, tmp_path):
    ns, ns_path, ns_inode = netns
    port = 20000 + secrets.randbelow(20000)
    server_id, client_id = secrets.token_hex(32), secrets.token_hex(32)
    pod_uid = str(uuid.uuid4())
    server_cg = f"/kubepods/burstable/pod{pod_uid}/{server_id}"
    client_cg = f"/system.slice/docker-{client_id}.scope"
    # the kubelet's directories, as it makes them: root's, 0755
    pods, links = tmp_path / "pods", tmp_path / "containers"
    (pods / f"shop_web-7d4b9c-xk2p_{pod_uid}" / "nginx").mkdir(parents=True)
    (pods / f"shop_web-7d4b9c-xk2p_{pod_uid}" / "sidecar").mkdir()
    links.mkdir()
    (links / f"web-7d4b9c-xk2p_shop_nginx-{server_id}.log").symlink_to(
        pods / f"shop_web-7d4b9c-xk2p_{pod_uid}" / "nginx" / "0.log")
    for d in (tmp_path, pods, links):
        os.chmod(d, 0o755)

    out = tmp_path / "rec"
    _v2_id_was: list = []
    proc = _recorder(out, port, pods, links)
    try:
        wait_started(proc)
        runc.run("server", ["httpd", "-f", "-p", f"127.0.0.1:{port}", "-h", "/"], server_cg,
                 ns_path, timeout_s=40)
        assert wait_for(lambda: _listening(ns, port), 10), "busybox httpd did not listen"
        server_cg_id = _v2_id(server_cg)
        # clients that hold their connection 2 s (nc reads from sleep): connected, served
        script = (f"i=0; while [ $i -lt {CLIENTS_OK} ]; do (sleep 2 | nc 127.0.0.1 {port}) & "
                  "i=$((i+1)); done; wait")
        runc.run("client", ["sh", "-c", script], client_cg, ns_path, timeout_s=20)
        client_cg_id = _v2_id(client_cg)
        assert runc.wait("client", 20) is not None
        # the server frozen: the queue fills and the rest overflow
        runc.pause("server")
        # (these clients stay until the container is killed: the queued ones
        # connected, the rest still retrying their SYNs, which makes no row)
        script = (f"i=0; while [ $i -lt {CLIENTS_BLOCKED} ]; do "
                  f"(sleep 30 | nc 127.0.0.1 {port}) & i=$((i+1)); done; wait")
        runc.run("client2", ["sh", "-c", script], client_cg + "-2", ns_path, timeout_s=30)
        _v2_id_was.append(_v2_id(client_cg + "-2"))
        assert wait_for(lambda: _overflowed(ns, port), 10), "no accept-queue overflow"
        time.sleep(1.5)     # the last interval's listener rows
    finally:
        err = _stop(proc)
    assert "not read from" not in err, err

    connects = _sql(out, "connects", f"select container_runtime, container_id, cgroup, "
                    f"cgroup_id, netns, pod_uid, outcome from T where dport = {port}")
    first = [r for r in connects if r[1] == client_id]
    assert len(first) == CLIENTS_OK, connects
    assert {r[:6] for r in first} == {("docker", client_id, client_cg, client_cg_id, ns_inode,
                                       None)}
    assert all(r[6] == "established" for r in first)
    # the frozen server's clients: their own container (the path's "-2" is no docker id)
    second = [r for r in connects if r[1] != client_id]
    assert BUSYBOX_HTTPD_BACKLOG <= len(second) < CLIENTS_BLOCKED, second
    assert {r[2:6] for r in second} == {(client_cg + "-2", _v2_id_was[0], ns_inode, None)}

    pod = ("cri", server_id, server_cg, server_cg_id, pod_uid, "shop", "web-7d4b9c-xk2p",
           "nginx", ns_inode)
    cols = ("container_runtime, container_id, cgroup, cgroup_id, pod_uid, pod_namespace, "
            "pod_name, container_name, netns")
    accepts = _sql(out, "accepts", f"select {cols} from T where lport = {port}")
    assert len(accepts) == CLIENTS_OK and set(accepts) == {pod}, accepts
    listeners = _sql(out, "listeners", f"select {cols} from T where lport = {port}")
    assert listeners and set(listeners) == {pod}, listeners
    overflows = _sql(out, "overflows", f"select {cols}, drops + syn_drops from T "
                     f"where lport = {port}")
    assert overflows and {r[:-1] for r in overflows} == {pod}, overflows
    assert sum(r[-1] for r in overflows) > 0
    sockets = _sql(out, "sockets", f"select distinct container_id, pod_name from T "
                   f"where container_id is not null")
    assert (server_id, "web-7d4b9c-xk2p") in sockets, sockets

    # the report's section by container: the same totals as the rows
    from tracer.report.reader import read_recording
    from tracer.report.summary import summarize

    by = {c.label: c for c in summarize(read_recording(out)).containers}
    pod_row = by["shop/web-7d4b9c-xk2p/nginx"]
    assert pod_row.accepts == CLIENTS_OK and pod_row.drops == sum(r[-1] for r in overflows)
    assert by[f"docker:{client_id[:12]}"].connects == CLIENTS_OK


@needs_setpriv
def test_a_pods_directory_another_user_planted_is_not_believed(runc, tmp_path, nobody_home,
                                                              victim):
    """nobody makes a pods directory naming the real pod's uid with names of
    their choosing, and a pod directory that is a link to root's; connscope,
    as root, says it did not read it, and no row carries those names."""
    port = 20000 + secrets.randbelow(20000)
    server_id, pod_uid = secrets.token_hex(32), str(uuid.uuid4())
    other_uid = "f" + pod_uid[1:]
    pods = nobody_home / "pods"
    plant_dirs(pods / f"evil_forged_{pod_uid}" / "fake")
    plant_link(victim.dir, pods / f"evil_linked_{other_uid}")
    planted = tree(nobody_home)

    out = tmp_path / "rec"
    proc = _recorder(out, port, pods, nobody_home / "containers", duration=30)
    try:
        wait_started(proc)
        runc.run("server", ["httpd", "-f", "-p", f"127.0.0.1:{port}", "-h", "/"],
                 f"/kubepods/pod{pod_uid}/{server_id}", None, timeout_s=30)
        time.sleep(1.5)
    finally:
        err = _stop(proc)
    assert f"pod names not read from {pods}: {nobody_home} is owned by uid 65534" in err, err
    rows = _sql(out, "listeners", f"select container_id, pod_uid, pod_namespace, pod_name, "
                f"container_name from T where lport = {port}")
    assert rows and set(rows) == {(server_id, pod_uid, None, None, None)}, rows
    victim.assert_untouched()
    assert tree(nobody_home) == planted


def test_short_lived_clients_are_named_by_the_cgroup_id_of_their_connect(runc, netns,
                                                                          tmp_path):
    """wget in a loop: each connects, is served and exits within
    milliseconds, before the collector reads its pid; the cgroup id the
    kernel put on its connect names its container all the same."""
    ns, ns_path, ns_inode = netns
    port = 20000 + secrets.randbelow(20000)
    server_id, client_id = secrets.token_hex(32), secrets.token_hex(32)
    client_cg = f"/system.slice/docker-{client_id}.scope"
    out = tmp_path / "rec"
    proc = _recorder(out, port, tmp_path / "no-pods", tmp_path / "no-links")
    try:
        wait_started(proc)
        runc.run("server", ["httpd", "-f", "-p", f"127.0.0.1:{port}", "-h", "/"],
                 f"/docker/{server_id}", ns_path, timeout_s=40)
        assert wait_for(lambda: _listening(ns, port), 10), "busybox httpd did not listen"
        # the container outlives its last wget by 2 s, as a container's cgroup
        # outlives its short-lived processes; `runc run` removes the cgroup the
        # moment init exits, and a cgroup removed before connscope read its path
        # keeps only its id (CI once read all 30 connects after the removal)
        script = (f"i=0; while [ $i -lt 30 ]; do wget -q -O /dev/null "
                  f"http://127.0.0.1:{port}/ ; i=$((i+1)); done; sleep 2")
        runc.run("client", ["sh", "-c", script], client_cg, ns_path, timeout_s=30)
        client_cg_id = _v2_id(client_cg)
        assert runc.wait("client", 30) is not None
        time.sleep(1.0)
    finally:
        err = _stop(proc)
    rows = _sql(out, "connects", f"select container_runtime, container_id, cgroup, cgroup_id, "
                f"netns from T where dport = {port}")
    assert len(rows) == 30, rows
    assert set(rows) == {("docker", client_id, client_cg, client_cg_id, ns_inode)}, rows


def _netns_counters(ns: str) -> dict[str, int]:
    """The test namespace's own Tcp and TcpExt counters (ground truth: only the
    test's containers use it)."""
    out: dict[str, int] = {}
    for f in ("/proc/net/snmp", "/proc/net/netstat"):
        lines = subprocess.run(["ip", "netns", "exec", ns, "cat", f], capture_output=True,
                               text=True, timeout=10, check=True).stdout.splitlines()
        for names, values in zip(lines[::2], lines[1::2]):
            kind, _, names = names.partition(": ")
            out.update({f"{kind}{k}": int(v) for k, v in
                        zip(names.split(), values.partition(": ")[2].split())})
    return out


def _filtered_recorder(out: Path, *args: str, duration: int = 60):
    return subprocess.Popen([*CONNSCOPE, "record", "--out", str(out), "--interval", "0.5",
                             "--duration", str(duration), *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _waiting(go: str, script: str) -> list[str]:
    """sh -c SCRIPT once the test makes /tmp/GO in the shared root file system."""
    return ["sh", "-c", f"while [ ! -e /tmp/{go} ]; do sleep 0.1; done; {script}"]


def test_the_container_filter_is_applied_in_the_kernel(runc, netns, tmp_path):
    """Two client containers (A, B) and a server container with a tiny
    backlog in one network namespace the test makes; two real recorders,
    `--container A` (A's processes moved into a child cgroup of A's first:
    the filter covers what is below the container's cgroup) and `--container
    SERVER`. Ground truth: the namespace's own counters (ActiveOpens: every
    connect made; PassiveOpens; ListenOverflows) and what each client
    container runs. A's recorder has A's connects and nothing of B or the
    server; the server's has its accepts and its listener's overflows, as
    many as the kernel counted, and nobody's connects."""
    ns, ns_path, _ = netns
    port = 20000 + secrets.randbelow(20000)
    sid, aid, bid = (secrets.token_hex(32) for _ in range(3))
    a_cg, b_cg = f"/system.slice/docker-{aid}.scope", f"/system.slice/docker-{bid}.scope"
    n_a, n_b, n_blocked = 4, 3, 16
    go = f"go-{secrets.token_hex(4)}"
    held = "i=0; while [ $i -lt {n} ]; do (sleep 1 | nc 127.0.0.1 {port}) & i=$((i+1)); done; wait"
    runc.run("server", ["httpd", "-f", "-p", f"127.0.0.1:{port}", "-h", "/"],
             f"/system.slice/docker-{sid}.scope", ns_path, timeout_s=80)
    assert wait_for(lambda: _listening(ns, port), 10), "busybox httpd did not listen"
    runc.run("a", _waiting(f"{go}-a", held.format(n=n_a, port=port) + "; sleep 60"), a_cg,
             ns_path, timeout_s=80)
    runc.run("b", _waiting(f"{go}-b1", held.format(n=n_b, port=port) + "; " + (
        f"while [ ! -e /tmp/{go}-b2 ]; do sleep 0.1; done; "
        f"i=0; while [ $i -lt {n_blocked} ]; do (sleep 60 | nc 127.0.0.1 {port}) & "
        "i=$((i+1)); done; wait")), b_cg, ns_path, timeout_s=80)
    # A's processes into a cgroup below A's own (the filter names A's)
    from tracer.probes.cgroups import hierarchies

    v2 = Path(hierarchies().v2)
    inner = v2 / a_cg.lstrip("/") / "inner"
    inner.mkdir()
    runc.made_dirs.append(inner)
    # A's shell polls with `sleep 0.1`: a sleep may exit before it is moved
    # (ESRCH), or be forked into A's cgroup just before its parent moved; so
    # moved until none is left (a child of a moved process is born inside).
    outer = v2 / a_cg.lstrip("/") / "cgroup.procs"
    for _ in range(50):
        left = outer.read_text().split()
        if not left:
            break
        for pid in left:
            try:
                (inner / "cgroup.procs").write_text(pid)
            except ProcessLookupError:
                pass        # exited meanwhile
    assert not outer.read_text().split(), "A's processes could not all be moved"

    out_a, out_s, out_p = tmp_path / "rec-a", tmp_path / "rec-s", tmp_path / "rec-p"
    from tests.kernel.test_pool_advice import free_port

    metrics_port = free_port()
    rec_a = _filtered_recorder(out_a, "--container", aid[:12], "--metrics",
                               f"127.0.0.1:{metrics_port}")
    rec_s = _filtered_recorder(out_s, "--container", sid)
    rec_p = _filtered_recorder(out_p, "--cgroup", a_cg)     # A by path, as /proc shows it
    try:
        wait_started(rec_a)
        wait_started(rec_s)
        wait_started(rec_p)
        before = _netns_counters(ns)
        for who in ("a", "b1"):
            (runc.rootfs / "tmp" / f"{go}-{who}").touch()
        assert wait_for(lambda: _netns_counters(ns)["TcpActiveOpens"]
                        - before["TcpActiveOpens"] == n_a + n_b, 15)
        time.sleep(1.5)     # every held connection closed, the server idle again
        runc.pause("server")
        (runc.rootfs / "tmp" / f"{go}-b2").touch()
        assert wait_for(lambda: _overflowed(ns, port), 10), "no accept-queue overflow"
        time.sleep(3)       # SYN retransmits dropped too (SYN-time overflows)
        subprocess.run(["runc", "--root", str(runc.state), "kill", "b", "KILL"],
                       capture_output=True, timeout=10)
        assert runc.wait("b", 20) is not None
        time.sleep(1.0)     # B's sockets gone: no SYN arrives any more
        after = _netns_counters(ns)
        time.sleep(1.5)     # an interval reads the listener's final counters
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics",
                                    timeout=10) as r:
            metrics = r.read().decode()
    finally:
        _stop(rec_a), _stop(rec_s), _stop(rec_p)
    # B's clients whose handshakes were dropped at ACK time die as orphans
    # that retransmit their FIN, and each FIN overflows the paused server's
    # queue again, until after the recorders stop (24 recorded against 22
    # counted at `after` once in CI). The recording lies between the two.
    final = _netns_counters(ns)
    made = after["TcpActiveOpens"] - before["TcpActiveOpens"]
    assert made >= n_a + n_b + BUSYBOX_HTTPD_BACKLOG, (made, "B's blocked clients connected")
    overflows = after["TcpExtListenOverflows"] - before["TcpExtListenOverflows"]
    assert overflows > 0

    # A's recorders (by id, by path): A's connects, all of them, and nothing else
    for out in (out_a, out_p):
        connects = _sql(out, "connects", "select container_id, cgroup, outcome, dport from T")
        assert len(connects) == n_a, connects
        assert set(connects) == {(aid, a_cg + "/inner", "established", port)}, connects
        assert _sql(out, "accepts", "select count(*) from T") == [(0,)]
        assert _sql(out, "listeners", f"select count(*) from T where lport = {port}") == [(0,)]
        assert _sql(out, "overflows", "select count(*) from T") == [(0,)]

    # A's recorder's Prometheus endpoint: the same connects, labelled with A's container
    from prometheus_client.parser import text_string_to_metric_families

    attempts = [(s.labels, s.value) for f in text_string_to_metric_families(metrics)
                if f.name == "connscope_connect_attempts" for s in f.samples
                if s.name == "connscope_connect_attempts_total"]
    assert {(ls["container"], ls["pod"], ls["namespace"], ls["outcome"]) for ls, _ in attempts} \
        == {(aid[:12], "", "", "established")}, attempts
    assert sum(v for _, v in attempts) == n_a

    # the server's recorder: its accepts, its listener's overflows, nobody's connects
    assert _sql(out_s, "connects", "select count(*) from T") == [(0,)]
    accepts = _sql(out_s, "accepts", "select container_id, lport from T")
    assert accepts == [(sid, port)] * (n_a + n_b), accepts
    listeners = _sql(out_s, "listeners", "select distinct container_id, lport from T")
    assert listeners == [(sid, port)], listeners
    dropped = _sql(out_s, "overflows", "select container_id, sum(drops + syn_drops) from T "
                   "group by container_id")
    late = final["TcpExtListenOverflows"] - before["TcpExtListenOverflows"]
    assert len(dropped) == 1 and dropped[0][0] == sid, dropped
    assert overflows <= dropped[0][1] <= late, (dropped, overflows, late)


def test_path_of_a_cgroup_id():
    from tracer.probes.cgroups import hierarchies, path_of_id

    root = hierarchies().v2
    if root is None:
        pytest.skip("no cgroup v2 mounted here")
    d = Path(root) / f"connscope-test-{secrets.token_hex(4)}" / "inner"
    d.mkdir(parents=True)
    try:
        assert path_of_id(root, d.stat().st_ino) == "/" + d.relative_to(root).as_posix()
        assert path_of_id(root, 1 << 62) is None
    finally:
        d.rmdir()
        d.parent.rmdir()


def test_edges_name_the_client_and_server_containers(runc, netns, tmp_path):
    """A client container's wget processes connect to a server in another
    container (one network namespace): the recorded edges carry the client's
    container (by the cgroup id of its connects: each wget is gone within
    milliseconds) and the serving container (its listener's owner), and the
    report names both."""
    ns, ns_path, ns_inode = netns
    port = 20000 + secrets.randbelow(20000)
    server_id, client_id = secrets.token_hex(32), secrets.token_hex(32)
    server_cg, client_cg = f"/docker/{server_id}", f"/system.slice/docker-{client_id}.scope"
    requests = 12
    out = tmp_path / "rec"
    proc = _recorder(out, port, tmp_path / "no-pods", tmp_path / "no-links")
    try:
        wait_started(proc)
        runc.run("server", ["httpd", "-f", "-p", f"127.0.0.1:{port}", "-h", "/"], server_cg,
                 ns_path, timeout_s=40)
        assert wait_for(lambda: _listening(ns, port), 10), "busybox httpd did not listen"
        server_cg_id = _v2_id(server_cg)
        time.sleep(1.2)     # interval ends: the listener's owner is read
        script = (f"i=0; while [ $i -lt {requests} ]; do wget -q -O /dev/null "
                  f"http://127.0.0.1:{port}/ ; i=$((i+1)); done; sleep 2")
        runc.run("client", ["sh", "-c", script], client_cg, ns_path, timeout_s=30)
        client_cg_id = _v2_id(client_cg)
        assert runc.wait("client", 30) is not None
        time.sleep(1.0)
    finally:
        err = _stop(proc)
    rows = _sql(out, "edges", "select connects, comm, netns, cgroup_id, container_runtime, "
                "container_id, server_comm, server_cgroup_id, server_container_runtime, "
                f"server_container_id from T where dport = {port}")
    assert sum(r[0] for r in rows) == requests, rows
    assert {r[1:] for r in rows} == {("wget", ns_inode, client_cg_id, "docker", client_id,
                                      "httpd", server_cg_id, "docker", server_id)}, rows

    from tracer.report.reader import read_recording
    from tracer.report.summary import summarize
    from tracer.report.text import render_text

    s = summarize(read_recording(out))
    mine = [e for e in s.edges if e.dport == port]
    assert mine and {(e.client.split(" in ")[1], e.server.split(" in ")[1]) for e in mine} == \
        {(f"docker:{client_id[:12]}", f"docker:{server_id[:12]}")}, mine
    assert f"in docker:{server_id[:12]}" in render_text(s)


_HOST_CLIENT = r"""
import ctypes, socket, sys
ctypes.CDLL(None).prctl(15, b"cs-xns-client", 0, 0, 0)
addr, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
done = 0
for _ in range(n):
    with socket.create_connection((addr, port), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        while s.recv(4096):
            pass                        # served to the end: accepted before the next
        done += 1
print(done, flush=True)
"""


def test_a_container_reached_at_its_address_from_the_host_is_joined_across_namespaces(
        runc, netns, tmp_path):
    """A server container with a network namespace of its own (a veth pair
    to the host, as a bridge network gives it), listening on the wildcard
    address; a host process connects to the container's address. The edge
    joins the listener in the container's namespace, not the client's: the
    serving process, its container and that namespace."""
    ns, ns_path, ns_inode = netns
    port = 20000 + secrets.randbelow(20000)
    server_id = secrets.token_hex(32)
    server_cg = f"/docker/{server_id}"
    net = f"10.{200 + secrets.randbelow(50)}.{secrets.randbelow(250)}"
    host_ip, ct_ip = f"{net}.1", f"{net}.2"
    veth = f"csx{os.getpid() % 100000}{secrets.token_hex(1)}"
    subprocess.run(["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0",
                    "netns", ns], check=True, timeout=10)
    requests = 15
    out = tmp_path / "rec"
    try:
        subprocess.run(["ip", "addr", "add", f"{host_ip}/30", "dev", veth], check=True,
                       timeout=10)
        subprocess.run(["ip", "link", "set", veth, "up"], check=True, timeout=10)
        subprocess.run(["ip", "-n", ns, "addr", "add", f"{ct_ip}/30", "dev", "eth0"],
                       check=True, timeout=10)
        subprocess.run(["ip", "-n", ns, "link", "set", "eth0", "up"], check=True, timeout=10)
        host_ns = os.stat("/proc/self/ns/net").st_ino
        proc = _recorder(out, port, tmp_path / "no-pods", tmp_path / "no-links")
        try:
            wait_started(proc)
            runc.run("server", ["httpd", "-f", "-p", f"0.0.0.0:{port}", "-h", "/"], server_cg,
                     ns_path, timeout_s=40)
            assert wait_for(lambda: _listening(ns, port), 10), "busybox httpd did not listen"
            server_cg_id = _v2_id(server_cg)
            server_pid = runc.pid("server")
            time.sleep(1.2)     # interval ends: the listener's owner is read
            client = subprocess.run([sys.executable, "-c", _HOST_CLIENT, ct_ip, str(port),
                                     str(requests)], capture_output=True, text=True, timeout=60)
            assert client.returncode == 0, client.stderr
            time.sleep(1.0)
        finally:
            err = _stop(proc)
    finally:
        subprocess.run(["ip", "link", "del", veth], timeout=10)
    assert int(client.stdout) == requests
    rows = _sql(out, "edges", "select connects, comm, netns, server_pid, server_comm, "
                "server_netns, listener, server_cgroup_id, server_container_id, "
                f"listener_drops from T where dport = {port} and daddr = '{ct_ip}'")
    assert sum(r[0] for r in rows) == requests, rows
    # (busybox timeout, the container's init, execs httpd: same pid; the
    # listener's label names its namespace only where the interval's listeners
    # span several: on the host, not in a guest with no other listener)
    labels = {f"0.0.0.0:{port} netns {ns_inode}", f"0.0.0.0:{port}"}
    assert len({r[6] for r in rows}) == 1 and rows[0][6] in labels, rows
    assert {r[1:6] + r[7:] for r in rows} == {("cs-xns-client", host_ns, server_pid, "httpd",
                                               ns_inode, server_cg_id, server_id, 0)}, rows
