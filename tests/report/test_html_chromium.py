"""The HTML report in a real browser: headless Chromium renders it (screenshot
saved to artifacts/report.png), the page logs no console message and asks the
network for nothing.

Every request Chromium makes goes to a counting proxy on loopback, which
answers none of them: that keeps the test off the network and shows what the
page asked for. Chromium's own services (component updates) use the proxy too
and are told apart by host; a control page with one remote image and one
console.error proves the harness sees what it claims to.
"""

from __future__ import annotations
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.report.png import color_count, read_png
from tests.report.synthetic import write_incident

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK),
                                reason="chromium is not installed (apt-get install chromium)")

# hosts Chromium itself talks to in the background, whatever the page holds
BROWSER_HOSTS = ("google.com", "googleapis.com", "gvt1.com", "gstatic.com")
HEADER_RGB = (0x1F, 0x29, 0x37)     # header background in tracer/report/html.py CSS
LOST_RGB = (0xC6, 0x28, 0x28)       # the "events LOST" banner


class CountingProxy:
    """Accepts connections on 127.0.0.1 and records the first request line of each."""

    def __init__(self, limit: int = 200):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(32)
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.requests: list[str] = []
        self._limit = limit
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self):
        while not self._stop.is_set() and len(self.requests) < self._limit:
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            with conn:
                conn.settimeout(1.0)
                try:
                    head = conn.recv(512).decode("latin-1")
                except OSError:
                    head = ""
                self.requests.append(head.split("\r\n", 1)[0])

    def page_requests(self) -> list[str]:
        """Requests not from Chromium's own background services."""
        out = []
        for line in self.requests:
            parts = line.split()
            target = parts[1] if len(parts) > 1 else line
            host = target.split("//", 1)[-1].split("/", 1)[0].split(":", 1)[0]
            if not any(host == h or host.endswith("." + h) for h in BROWSER_HOSTS):
                out.append(line)
        return out

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


def chromium(url: str, tmp: Path, *mode: str, proxy_port: int | None = None,
             timeout: float = 90) -> subprocess.CompletedProcess:
    args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--disable-extensions", "--no-pings",
            "--disable-features=NetworkTimeServiceQuerying,OptimizationHints",
            f"--user-data-dir={tmp / 'chromium-profile'}", "--window-size=1280,2000",
            "--enable-logging=stderr", "--v=1"]
    if proxy_port is not None:
        # everything through the counting proxy, loopback included; no DNS of its own
        args += [f"--proxy-server=http://127.0.0.1:{proxy_port}", "--proxy-bypass-list=<-loopback>",
                 "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"]
    return subprocess.run([*args, *mode, url], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def console_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


@pytest.fixture(scope="module")
def report_page(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("html-report")
    write_incident(tmp / "rec")
    page = tmp / "report.html"
    p = subprocess.run([sys.executable, "-m", "tracer", "report", str(tmp / "rec"), "--html",
                        str(page)], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    return page


def test_screenshot_shows_the_report(report_page, tmp_path):
    shot = tmp_path / "report.png"
    with CountingProxy() as proxy:
        p = chromium(report_page.as_uri(), tmp_path, f"--screenshot={shot}",
                     proxy_port=proxy.port)
    assert shot.exists(), p.stderr[-2000:]
    artifacts = ROOT / "artifacts"
    artifacts.mkdir(exist_ok=True)
    shutil.copy(shot, artifacts / "report.png")

    width, height, bpp, rows = read_png(shot)
    assert (width, height) == (1280, 2000)
    assert shot.stat().st_size > 50_000
    colors, non_background = color_count(shot)
    assert colors >= 200, colors                # text, charts and badges, not a blank page
    assert non_background >= 0.15, non_background

    def pixel(x, y):
        return tuple(rows[y][x * bpp:x * bpp + 3])

    assert pixel(10, 10) == HEADER_RGB          # the stylesheet applied
    # the lost-events banner is above the fold: a red band across the page under the header
    assert any(pixel(640, y) == LOST_RGB for y in range(60, 200))


def test_page_asks_the_network_for_nothing_and_logs_nothing(report_page, tmp_path):
    with CountingProxy() as proxy:
        p = chromium(report_page.as_uri(), tmp_path, f"--screenshot={tmp_path / 's.png'}",
                     proxy_port=proxy.port)
    assert (tmp_path / "s.png").exists(), p.stderr[-2000:]
    assert proxy.page_requests() == []
    assert console_lines(p.stderr) == []


def test_harness_sees_requests_and_console_errors(tmp_path):
    control = tmp_path / "control.html"
    control.write_text('<!DOCTYPE html><html><body>'
                       '<img src="http://connscope-test.invalid/pixel.png">'
                       '<script>console.error("connscope-control")</script></body></html>')
    with CountingProxy() as proxy:
        p = chromium(control.as_uri(), tmp_path, f"--screenshot={tmp_path / 's.png'}",
                     proxy_port=proxy.port)
    assert any("connscope-test.invalid" in r for r in proxy.page_requests()), proxy.requests
    assert any("connscope-control" in line for line in console_lines(p.stderr)), p.stderr[-2000:]


def test_dom_has_no_scripts_or_remote_resources(report_page, tmp_path):
    with CountingProxy() as proxy:
        p = chromium(report_page.as_uri(), tmp_path, "--dump-dom", proxy_port=proxy.port)
    dom = p.stdout
    assert "What to look at first" in dom, p.stderr[-2000:]
    lowered = dom.lower()
    for needle in ("<script", 'src="http', "src='http", 'href="http', "href='http", "url(http",
                   "@import"):
        assert needle not in lowered, needle
    assert lowered.count("<svg") >= 6           # 4 histograms, 2 listener charts, 3 process charts
