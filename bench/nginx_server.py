"""Our own nginx on 127.0.0.1: config, pid and logs in a temporary
directory, never /etc/nginx. One small static file, access log off, no
keep-alive (one connection per request, as ab without -k sends them)."""
from __future__ import annotations

import pwd
import socket
import time
import urllib.request
from pathlib import Path

from bench.process_tree import Processes, nofile_limit

CONFIG = """\
worker_processes auto;
worker_rlimit_nofile {nofile};
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
daemon off;
user {user};
events {{ worker_connections 16384; }}
http {{
    access_log off;
    keepalive_timeout 0;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
        # The default backlog (511) would overflow under ab -c 1000 and turn
        # the run into a test of SYN retransmit timers.
        listen 127.0.0.1:{port} backlog=4096;
        root {dir}/html;
    }}
    # Ground truth on another port, so reading it adds nothing to the traced
    # one: nginx counts every connection it accepted, on every listener.
    server {{
        listen 127.0.0.1:{status_port};
        location = /status {{ stub_status; }}
    }}
}}
"""
BODY = b"connscope benchmark\n" * 8   # 160 bytes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_user() -> str:
    for name in ("www-data", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            pass
    return "root"


class Nginx:
    def __init__(self, procs: Processes, workdir: Path):
        self.procs = procs
        self.dir = workdir / "nginx"
        self.port = free_port()
        self.status_port = free_port()
        self.proc = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/index.html"

    def __enter__(self):
        html = self.dir / "html"
        html.mkdir(parents=True)
        for d in (self.dir.parent, self.dir, html):
            d.chmod(0o755)   # workers run unprivileged and must read the file
        (html / "index.html").write_bytes(BODY)
        conf = self.dir / "nginx.conf"
        conf.write_text(CONFIG.format(dir=self.dir, port=self.port, user=worker_user(),
                                      status_port=self.status_port,
                                      nofile=nofile_limit()))
        self.proc = self.procs.start(
            ["nginx", "-p", str(self.dir), "-c", str(conf), "-e", str(self.dir / "error.log")],
            nofile=True, stdout=open(self.dir / "stdout", "wb"), stderr=open(self.dir / "stderr", "wb"))
        self._wait_ready()
        return self

    def accepted(self) -> int:
        """nginx's count of accepted connections (stub_status), this request included."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.status_port}/status", timeout=5) as r:
            lines = r.read().decode().splitlines()
        return int(lines[2].split()[0])

    def _wait_ready(self, limit_s: float = 10.0) -> None:
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited: {(self.dir / 'error.log').read_text()[-500:]}")
            try:
                with urllib.request.urlopen(self.url, timeout=1) as r:
                    if r.read() == BODY:
                        return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"nginx did not answer within 10 s: "
                           f"{(self.dir / 'error.log').read_text()[-300:]}")

    def __exit__(self, *exc):
        if self.proc is not None:
            self.procs.stop(self.proc, timeout=5.0)
        return False
