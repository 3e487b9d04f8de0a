"""Socket memory per process against `ss -tanpm`: a server (a child process)
accepts connections and never reads while the client sends, so its receive
queues hold the data; the client's send queues hold what the server's full
window refused. The kernel view the collector reads (sock_diag joined with
/proc) must give, per process, the same receive-queue bytes (Recv-Q), and the
same socket memory (skmem r and w) as ss for the same sockets."""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time

import pytest

from tracer.aggregate.sockets import ProcessTable
from tracer.domain.tcp_memory import STUCK_INTERVALS
from tracer.run import kernel_view
from tracer.tui.problems import process_problem
from tests.kernel.workloads import NEVER_READING_SERVER

pytestmark = pytest.mark.kernel

CONNECTIONS = 4
SEND = 4 << 20          # per connection; more than a never-read window takes

SERVER = NEVER_READING_SERVER

_USER = re.compile(r'pid=(\d+),fd=\d+')
_SKMEM = re.compile(r"skmem:\(r(\d+),rb\d+,t\d+,tb\d+,f\d+,w(\d+),")


def ss_memory(pids: set[int]) -> dict[int, list[int]]:
    """pid -> [Recv-Q, Send-Q, skmem r, skmem w] summed over the TCP sockets
    `ss -tanpm` shows it holding (listeners left out, as connscope does)."""
    out = subprocess.run(["ss", "-tanpmH"], capture_output=True, text=True, timeout=30,
                         check=True).stdout
    sums = {pid: [0, 0, 0, 0] for pid in pids}
    record = None
    for line in out.splitlines():
        if line[:1].strip():
            f = line.split()
            users = {int(p) for p in _USER.findall(line)} & pids
            record = (f[0], int(f[1]), int(f[2]), users) if len(f) >= 5 else None
        m = _SKMEM.search(line)
        if record and m and record[0] != "LISTEN":
            for pid in record[3]:
                s = sums[pid]
                s[0] += record[1]
                s[1] += record[2]
                s[2] += int(m.group(1))
                s[3] += int(m.group(2))
            record = None
    return sums


def test_socket_memory_equals_ss_for_a_server_that_never_reads():
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(CONNECTIONS)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    clients = []
    try:
        port = int(server.stdout.readline())
        for _ in range(CONNECTIONS):
            c = socket.create_connection(("127.0.0.1", port), timeout=10)
            c.setblocking(False)
            clients.append(c)
        assert server.stdout.readline().startswith("ready")
        payload = b"x" * 65536
        for c in clients:             # until the window and the send buffer are full
            sent = 0
            while sent < SEND:
                try:
                    sent += c.send(payload)
                except BlockingIOError:
                    break
        me = os.getpid()
        read = kernel_view()
        for attempt in range(20):     # queues settle once the windows are closed
            time.sleep(0.3)
            before = ss_memory({server.pid, me})
            _, _, holdings, scanned_at = read()
            after = ss_memory({server.pid, me})
            if before == after:
                break
        rows = {r.pid: r for r in ProcessTable().update(1.0, holdings, scanned_at)}
        # the server keeps not reading: after STUCK_INTERVALS fresh scans it is told
        table, seen = ProcessTable(), set()
        deadline = time.monotonic() + 30
        while len(seen) < STUCK_INTERVALS and time.monotonic() < deadline:
            _, _, holdings, scanned_at = read()
            seen.add(scanned_at)
            stuck = {r.pid: r for r in table.update(0.2, holdings, scanned_at)}[server.pid]
            time.sleep(0.2)
    finally:
        for c in clients:
            c.close()
        server.stdin.close()
        server.wait(10)
    assert before == after, "queues kept moving"
    srv, cli = rows[server.pid], rows[me]
    recv_q, _, r, w = after[server.pid]
    assert recv_q > 0 and r > recv_q       # data waits unread; its buffers cost more than it
    assert (srv.rx_queue_bytes, srv.socket_rmem_bytes, srv.socket_wmem_bytes) == (recv_q, r, w)
    _, send_q, cr, cw = after[me]
    assert send_q > 0 and cw >= send_q     # what the closed windows refused waits here
    assert (cli.tx_queue_bytes, cli.socket_rmem_bytes, cli.socket_wmem_bytes) == (send_q, cr, cw)
    assert stuck.unread_intervals >= STUCK_INTERVALS
    problem = process_problem(stuck)
    assert problem.kind == "not reading" and problem.key == (server.pid,)
    print(f"\n{problem.detail}")
    print(f"\nserver: Recv-Q {recv_q:,} B, skmem r {r:,} B over {CONNECTIONS} sockets "
          f"(connscope {srv.rx_queue_bytes:,} / {srv.socket_rmem_bytes:,}); client: Send-Q "
          f"{send_q:,} B, skmem w {cw:,} B (connscope {cli.tx_queue_bytes:,} / "
          f"{cli.socket_wmem_bytes:,})")
