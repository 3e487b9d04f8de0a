"""Host TCP memory pressure, for real: net.ipv4.tcp_mem lowered to a few
hundred kB, a server that never reads and clients that send, until the
kernel counts an entry into memory pressure (TcpExt TCPMemoryPressures).
The collector's reading must say pressure (or the limit), count the entries
the kernel counted in the interval, and the live Overview must show it.

tcp_mem is host-wide (it exists in the initial network namespace only), so
this runs only in a QEMU guest (CONNSCOPE_VM=1, vagrant/README.md), never on
a shared host:
    flock /tmp/connscope-guest.lock python3 vagrant/guest.py run --venv -- \\
        'python3 -m pytest -p no:cacheprovider -q -m kernel tests/kernel/test_tcp_pressure.py'
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tracer.collector import Collector
from tracer.domain import tcp_memory as tm
from tracer.probes import tcp_memory as probe
from tests.kernel.workloads import NEVER_READING_SERVER

pytestmark = pytest.mark.kernel

TCP_MEM = Path("/proc/sys/net/ipv4/tcp_mem")
LOW = "16 32 8192"       # pages: pressure above 128 kB, nothing past 32 MB

SERVER = NEVER_READING_SERVER


class _Session:
    def counters(self):
        return {"lost_events": 0, "untracked_connects": 0, "decode_errors": 0}


@pytest.mark.skipif(os.environ.get("CONNSCOPE_VM") != "1",
                    reason="lowers the host-wide net.ipv4.tcp_mem: runs only in a QEMU guest "
                           "(CONNSCOPE_VM=1), never on a shared host")
def test_memory_pressure_is_seen_and_counted():
    saved = TCP_MEM.read_text()
    collector = Collector(_Session(), [], header=None, host_view=probe.read)
    collector._tcp_memory()                    # counters from here on
    server = subprocess.Popen([sys.executable, "-c", SERVER, "4"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    clients = []
    try:
        port = int(server.stdout.readline())
        clients = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(4)]
        for c in clients:
            c.setblocking(False)
        assert server.stdout.readline().startswith("ready")
        before = probe.read().counters.get("TCPMemoryPressures", 0)
        TCP_MEM.write_text(LOW)
        payload = b"x" * 65536
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            for c in clients:
                try:
                    c.send(payload)
                except BlockingIOError:
                    pass
            now = probe.read()
            if now.counters.get("TCPMemoryPressures", 0) > before:
                break
            time.sleep(0.01)
        row = collector._tcp_memory()
    finally:
        TCP_MEM.write_text(saved)
        for c in clients:
            c.close()
        server.stdin.close()
        server.wait(10)
    moved = now.counters.get("TCPMemoryPressures", 0) - before
    assert moved > 0, "the kernel never entered memory pressure"
    assert row.memory_pressures >= moved
    assert row.state in (tm.PRESSURE, tm.LIMIT), row
    from dataclasses import replace

    from tests.tui.synthetic import last
    from tracer.tui.problems import find_problems
    (p,) = [p for p in find_problems(replace(last(), tcp_memory=row)) if p.kind == "TCP memory"]
    assert p.severity == "crit"
    print(f"\nTCPMemoryPressures +{moved}; connscope: {p.detail}")
