"""The real `connscope top` in a terminal (tmux), as a person runs it, against
a live workload: within 5 s the overflowing listener and the slow destination
must be on screen."""
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.kernel.netlab import delayed_link, socket_in
from tests.kernel.workloads import tcp_server

pytestmark = [pytest.mark.kernel,
              pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux not installed")]

ROOT = Path(__file__).resolve().parents[2]


def pane(session):
    return subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True,
                          text=True, timeout=10).stdout


def test_top_shows_overflowing_listener_and_slow_destination():
    session = f"cs-top-{os.getpid()}"
    stop = threading.Event()
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(2)                      # never accepts: overflows
    lport = srv.getsockname()[1]
    with delayed_link(delay_ms=150) as link, tcp_server(link.ns_server, link.server_ip4) as slow:
        def flood():
            socks = []
            while not stop.is_set() and len(socks) < 400:
                s = socket.socket()
                s.setblocking(False)
                s.connect_ex(("127.0.0.1", lport))
                socks.append(s)
                time.sleep(0.05)
            for s in socks:
                s.close()

        def slow_client():
            for _ in range(60):
                if stop.is_set():
                    break
                s = socket_in(link.ns_client)
                s.connect_ex((link.server_ip4, slow.port))   # 300 ms RTT
                s.close()

        cmd = f"cd {ROOT} && {sys.executable} -m tracer top --interval 0.5"
        subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "160", "-y", "50", cmd],
                       check=True, timeout=10)
        workers = [threading.Thread(target=flood), threading.Thread(target=slow_client)]
        try:
            deadline = time.monotonic() + 30
            while "connscope" not in pane(session) and time.monotonic() < deadline:
                time.sleep(0.1)       # the TUI is up (probes loaded)
            started = time.monotonic()
            for w in workers:
                w.start()
            seen = ""
            while time.monotonic() - started < 5.0:
                seen = pane(session)
                if f":{lport}" in seen and f"{link.server_ip4}:{slow.port}" in seen:
                    break
                time.sleep(0.2)
            assert f":{lport}" in seen, seen
            assert f"{link.server_ip4}:{slow.port}" in seen, seen
            subprocess.run(["tmux", "send-keys", "-t", session, "q"], timeout=10)
        finally:
            stop.set()
            for w in workers:
                if w.is_alive() or w.ident:
                    w.join(20)
            subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True, timeout=10)
            srv.close()
