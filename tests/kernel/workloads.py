"""Small, bounded TCP workloads for the kernel tests: ground truth the
tracer's numbers are compared with.

Servers run as their own process (`ip netns exec NS python -c ...` inside a
namespace), so they have a pid distinct from the test's. Clients run in the
test process; a socket created in a namespace stays there, so only socket
creation switches namespace (see netlab.socket_in).
"""

from __future__ import annotations

import errno
import select
import socket
import struct
import subprocess
import sys
import time
from typing import NamedTuple

from tests.kernel.netlab import socket_in

MAX_CONNECTS = 4096  # also bounded by RLIMIT_NOFILE for concurrent ones


class ConnectResult(NamedTuple):
    ok: bool
    errno: int  # 0 if ok; ETIMEDOUT: the kernel gave up; EINPROGRESS: our timeout_s ran out first
    elapsed_us: float  # around the connect() call (perf_counter_ns)


# A loopback server that accepts argv[1] connections and never reads them:
# prints its port, then "ready", and holds them until stdin closes (at most 60 s).
NEVER_READING_SERVER = r"""
import socket, sys, time
srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen(16)
sys.stdout.write(f"{srv.getsockname()[1]}\n"); sys.stdout.flush()
held = [srv.accept()[0] for _ in range(int(sys.argv[1]))]
sys.stdout.write("ready\n"); sys.stdout.flush()
deadline = time.monotonic() + 60
while time.monotonic() < deadline and sys.stdin.readline():
    pass
"""


def family_of(addr: str) -> int:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


# The server process. Answers "count" on stdin with "accepted N"; "stop" (or
# EOF, when the test process dies) makes it print the total and "stopped"
# and exit. Every wait is bounded by lifetime.
_SERVER_SCRIPT = r"""
import select, socket, sys, time
addr, port, backlog, accept, accept_after, hold, lifetime = sys.argv[1:8]
family = socket.AF_INET6 if ":" in addr else socket.AF_INET
srv = socket.socket(family, socket.SOCK_STREAM)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((addr, int(port)))
srv.listen(int(backlog))
print("port", srv.getsockname()[1], flush=True)
start = time.monotonic()
end = start + float(lifetime)
accept_at = start + float(accept_after) if accept == "1" else float("inf")
srv.setblocking(False)
held, accepted = [], 0
while time.monotonic() < end:
    watch = [sys.stdin]
    if time.monotonic() >= accept_at:
        watch.append(srv)
    now = time.monotonic()
    wait = 0.2 if now >= accept_at else min(0.2, accept_at - now)
    ready, _, _ = select.select(watch, [], [], wait)
    if sys.stdin in ready:
        line = sys.stdin.readline()
        if not line or line.strip() == "stop":
            break
        print("accepted", accepted, flush=True)  # "count"
    if srv in ready:
        for _ in range(256):
            try:
                conn, _ = srv.accept()
            except BlockingIOError:
                break
            accepted += 1
            if hold == "1":
                held.append(conn)
            else:
                conn.close()
print("accepted", accepted, flush=True)
print("stopped", flush=True)
"""


class ServerHandle:
    """A listening server process; use as a context manager or call stop().

    The server accepts only after the handshake's final ACK arrives, i.e.
    half an RTT after the client's connect() returned: use wait_accepted()
    before comparing counts."""

    def __init__(self, proc: subprocess.Popen, addr: str, port: int):
        self.proc = proc
        self.addr = addr
        self.port = port
        self.family = family_of(addr)
        self.accepted = 0
        self.stopped = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read_line(self, timeout_s: float) -> str | None:
        ready, _, _ = select.select([self.proc.stdout], [], [], max(0.0, timeout_s))
        if not ready:
            return None
        line = self.proc.stdout.readline().decode()
        if not line:
            self.stopped = True
        elif line.startswith("accepted "):
            self.accepted = int(line.split()[1])
        elif line.startswith("stopped"):
            self.stopped = True
        return line

    def _send(self, command: str) -> None:
        try:
            self.proc.stdin.write(command.encode() + b"\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            self.stopped = True

    def wait_accepted(self, count: int, timeout_s: float = 5.0) -> int:
        """Wait until the server has accepted count connections or timeout_s
        passes; returns the number accepted so far."""
        deadline = time.monotonic() + timeout_s
        while not self.stopped and time.monotonic() < deadline:
            self._send("count")
            self._read_line(deadline - time.monotonic())
            if self.accepted >= count:
                break
            time.sleep(0.01)
        return self.accepted

    def stop(self) -> int:
        """Stop the server; returns how many connections it accepted."""
        if self.proc.poll() is None and not self.stopped:
            self._send("stop")
            deadline = time.monotonic() + 5
            while not self.stopped and time.monotonic() < deadline:
                self._read_line(deadline - time.monotonic())
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            stream.close()
        return self.accepted

    def __enter__(self) -> "ServerHandle":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def tcp_server(ns: str | None, addr: str, port: int = 0, backlog: int = 128, *,
               accept: bool = True, accept_after_s: float | None = None,
               hold: bool = False, lifetime_s: float = 300.0) -> ServerHandle:
    """Start a TCP listener on addr:port (0: any port) in namespace ns.

    accept=False never accepts (the accept queue fills: overflow tests);
    accept_after_s starts accepting only after that delay (queue waits);
    hold keeps accepted sockets open instead of closing them at once.
    The process exits by itself after lifetime_s or when the test dies."""
    argv = [sys.executable, "-c", _SERVER_SCRIPT, addr, str(port), str(backlog),
            "1" if accept else "0", str(accept_after_s or 0.0), "1" if hold else "0",
            str(lifetime_s)]
    if ns is not None:
        argv = ["ip", "netns", "exec", ns, *argv]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    ready, _, _ = select.select([proc.stdout], [], [], 10)
    line = proc.stdout.readline().decode() if ready else ""
    if not line.startswith("port "):
        proc.kill()
        _, err = proc.communicate(timeout=5)
        raise RuntimeError(f"tcp_server on {addr}:{port} did not start: {err.decode().strip() or 'no output in 10 s'}")
    return ServerHandle(proc, addr, int(line.split()[1]))


def _client_socket(addr: str, family: int | None, ns: str | None,
                   syncnt: int | None) -> socket.socket:
    sock = socket_in(ns, family or family_of(addr), socket.SOCK_STREAM)
    if syncnt is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_SYNCNT, syncnt)
    return sock


def timed_connect(addr: str, port: int, family: int | None = None,
                  timeout_s: float = 5.0, *, ns: str | None = None,
                  syncnt: int | None = None) -> ConnectResult:
    """One blocking connect() from namespace ns, timed around the syscall.

    The socket is blocking with SO_SNDTIMEO = timeout_s, so the kernel alone
    decides the outcome (ETIMEDOUT after its SYN retries, set with syncnt =
    TCP_SYNCNT) unless timeout_s runs out first (errno EINPROGRESS)."""
    sock = _client_socket(addr, family, ns, syncnt)
    try:
        secs = int(timeout_s)
        timeval = struct.pack("ll", secs, int((timeout_s - secs) * 1e6))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)
        t0 = time.perf_counter_ns()
        err = sock.connect_ex((addr, port))
        t1 = time.perf_counter_ns()
    finally:
        sock.close()
    return ConnectResult(err == 0, err, (t1 - t0) / 1000.0)


def connect_many(addr: str, port: int, count: int, family: int | None = None,
                 timeout_s: float = 5.0, *, ns: str | None = None,
                 syncnt: int | None = None, concurrent: bool = False) -> list[ConnectResult]:
    """count connects to addr:port, one after another or all at once.

    concurrent=True starts every connect non-blocking before waiting for any
    (a burst, e.g. to overflow an accept queue); elapsed_us is then from
    that socket's connect() call to poll() seeing it resolve, so it is less
    exact than the sequential timing. Unresolved after timeout_s: EINPROGRESS."""
    if not 0 < count <= MAX_CONNECTS:
        raise ValueError(f"count must be 1..{MAX_CONNECTS}, got {count}")
    if not concurrent:
        return [timed_connect(addr, port, family, timeout_s, ns=ns, syncnt=syncnt)
                for _ in range(count)]

    socks = [_client_socket(addr, family, ns, syncnt) for _ in range(count)]
    started: dict[int, int] = {}
    results: dict[int, ConnectResult] = {}
    poller = select.poll()
    try:
        for sock in socks:
            sock.setblocking(False)
            fd = sock.fileno()
            started[fd] = time.perf_counter_ns()
            err = sock.connect_ex((addr, port))
            if err == errno.EINPROGRESS:
                poller.register(fd, select.POLLOUT)
            else:
                results[fd] = ConnectResult(err == 0, err, (time.perf_counter_ns() - started[fd]) / 1000.0)
        by_fd = {s.fileno(): s for s in socks}
        deadline = time.monotonic() + timeout_s
        while len(results) < count and time.monotonic() < deadline:
            wait_ms = max(1, int((deadline - time.monotonic()) * 1000))
            for fd, _ in poller.poll(wait_ms):
                now = time.perf_counter_ns()
                err = by_fd[fd].getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                results[fd] = ConnectResult(err == 0, err, (now - started[fd]) / 1000.0)
                poller.unregister(fd)
        out = []
        for sock in socks:
            fd = sock.fileno()
            out.append(results.get(fd) or ConnectResult(
                False, errno.EINPROGRESS, (time.perf_counter_ns() - started[fd]) / 1000.0))
        return out
    finally:
        for sock in socks:
            sock.close()


def wait_for(predicate, timeout_s: float = 5.0) -> bool:
    """Poll predicate() every 20 ms until it is true (True) or timeout_s passed (False)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def nginx_conf(directory, listen: str, workers: int = 2, connections: int = 1024) -> str:
    """An nginx.conf for a test: every path under `directory`, no access log,
    one server on `listen` (e.g. "127.0.0.1:8080 reuseport backlog=8") that
    answers "ok". The daemon flag is the caller's (-g "daemon off;")."""
    d = directory
    return f"""
worker_processes {workers};
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections {connections}; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen {listen};
        location / {{ return 200 "ok\\n"; }}
    }}
}}
"""


def run_to_end(cmd: list[str], timeout_s: float) -> tuple[subprocess.Popen, str]:
    """Run a client (ab, pgbench, redis-benchmark) to its end: (its Popen,
    its output). One that runs over timeout_s is killed and fails by name."""
    client = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = client.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        client.kill()
        out, _ = client.communicate(timeout=10)
        raise AssertionError(f"{cmd[0]} ran over {timeout_s} s: {out[-2000:]}")
    assert client.returncode == 0, out[-2000:]
    return client, out
