"""A test network: two namespaces joined by a relay that delays packets.

This kernel has no `tc netem`, so delay and loss are made in user space:
each namespace gets a TUN device, and tun_relay.py (a separate process, so
the test process's GIL cannot make it late) copies packets between them
after a fixed one-way delay, optionally dropping TCP SYNs to chosen ports.

    with delayed_link(delay_ms=50) as link:     # RTT 100 ms
        srv = tcp_server(link.ns_server, link.server_ip4, 0)
        timed_connect(link.server_ip4, srv.port, ns=link.ns_client)

The namespaces have no other interface and no default route, so nothing
sent inside them can leave the machine; the private addresses below exist
only there.
"""

from __future__ import annotations

import ctypes
import fcntl
import itertools
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

NETNS_DIR = Path("/run/netns")
TUN_PATH = "/dev/net/tun"
TUN_NAME = "cstun0"
# Namespaces are named <prefix>-<pid>-<n>-{c,s}: unique per process and link,
# and recognisable so leftovers of a killed run can be removed.
NS_PREFIX = "csnl"
NS_PATTERN = re.compile(rf"^{NS_PREFIX}-(\d+)-\d+-[cs]$")
RELAY_SCRIPT = Path(__file__).with_name("tun_relay.py")

CLIENT_IP4, SERVER_IP4, PREFIX4 = "10.199.0.1", "10.199.0.2", 24
CLIENT_IP6, SERVER_IP6, PREFIX6 = "fd00:c5::1", "fd00:c5::2", 64

CLONE_NEWNET = 0x40000000
TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000

_counter = itertools.count(1)
_libc = ctypes.CDLL(None, use_errno=True)


class NetlabUnavailable(RuntimeError):
    """The host cannot build a netlab link (not root, no ip, no TUN)."""


class NetlabError(RuntimeError):
    """Building, controlling or tearing down a link failed."""


def check_prerequisites() -> None:
    """Raise NetlabUnavailable with the reason and fix if a link cannot be built."""
    if os.geteuid() != 0:
        raise NetlabUnavailable("netlab needs root (network namespaces, TUN devices); run the kernel tests as root")
    if shutil.which("ip") is None:
        raise NetlabUnavailable("netlab needs the `ip` command; install iproute2")
    if not os.path.exists(TUN_PATH):
        raise NetlabUnavailable(f"netlab needs {TUN_PATH}; load the tun module (modprobe tun)")
    if not os.path.exists("/proc/self/ns/net"):
        raise NetlabUnavailable("this kernel has no network namespaces (CONFIG_NET_NS)")


def _ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    if proc.returncode != 0:
        raise NetlabError(f"`ip {' '.join(args)}` failed: {proc.stderr.strip()}")


def _setns(ns: str) -> None:
    """Move the calling thread (only) into network namespace ns."""
    fd = os.open(NETNS_DIR / ns, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise NetlabError(f"setns into {ns} failed: {os.strerror(err)}")
    finally:
        os.close(fd)


def run_in_netns(ns: str | None, fn: Callable[..., Any], *args: Any) -> Any:
    """Call fn(*args) in network namespace ns and return its result.

    Runs in a fresh thread that enters ns and then exits, so no other thread
    ever changes namespace. Sockets and TUN fds keep the namespace they were
    created in, so they may be used from any thread afterwards.
    """
    if ns is None:
        return fn(*args)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            _setns(ns)
            box["result"] = fn(*args)
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name=f"netns-{ns}", daemon=True)
    thread.start()
    thread.join(timeout=30)
    if thread.is_alive():
        raise NetlabError(f"call in namespace {ns} did not return within 30 s")
    if "error" in box:
        raise box["error"]
    return box["result"]


def socket_in(ns: str | None, family: int = socket.AF_INET,
              type: int = socket.SOCK_STREAM) -> socket.socket:
    """A socket that lives in namespace ns (None: the caller's namespace)."""
    return run_in_netns(ns, socket.socket, family, type)


def _read_counters() -> dict[str, int]:
    # thread-self, not self: /proc/self/net is the main thread's namespace.
    counters: dict[str, int] = {}
    for table in ("snmp", "netstat", "snmp6"):
        try:
            text = Path(f"/proc/thread-self/net/{table}").read_text()
        except FileNotFoundError:
            continue
        lines = text.splitlines()
        if table == "snmp6":  # "Ip6InReceives 12" per line: keep the name
            for line in lines:
                name, value = line.split()
                counters[name] = int(value)
            continue
        # Pairs of lines: "Proto: names..." then "Proto: values...".
        for names, values in zip(lines[::2], lines[1::2]):
            proto, *keys = names.split()
            for key, value in zip(keys, values.split()[1:]):
                counters[f"{proto.rstrip(':')}.{key}"] = int(value)
    return counters


def netns_counters(ns: str | None) -> dict[str, int]:
    """The kernel's SNMP counters of namespace ns, e.g. "Tcp.RetransSegs",
    "TcpExt.ListenOverflows", "Ip6InReceives": ground truth that counts only
    that namespace's traffic, whatever else runs on the machine."""
    return run_in_netns(ns, _read_counters)


def _open_tun(name: str) -> int:
    # TUNSETIFF creates the device in the namespace of the calling thread.
    fd = os.open(TUN_PATH, os.O_RDWR | os.O_CLOEXEC)
    try:
        ifreq = struct.pack("16sH22x", name.encode(), IFF_TUN | IFF_NO_PI)
        fcntl.ioctl(fd, TUNSETIFF, ifreq)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _pid_alive(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")


def namespaces() -> set[str]:
    """Names of the named network namespaces (those in /run/netns)."""
    try:
        return set(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return set()


def remove_stale_namespaces() -> list[str]:
    """Delete netlab namespaces whose creating process is gone (a killed run)."""
    removed = []
    for name in sorted(namespaces()):
        m = NS_PATTERN.match(name)
        if m and not _pid_alive(int(m.group(1))):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)
            removed.append(name)
    return removed


@dataclass
class Link:
    """Two namespaces, client and server side, joined by the delaying relay."""

    ns_client: str
    ns_server: str
    client_ip4: str = CLIENT_IP4
    server_ip4: str = SERVER_IP4
    client_ip6: str = CLIENT_IP6
    server_ip6: str = SERVER_IP6
    relay: subprocess.Popen | None = None
    realtime: bool = False
    _ctl: socket.socket | None = None
    _ctl_lock: threading.Lock = field(default_factory=threading.Lock)
    _children: list[subprocess.Popen] = field(default_factory=list)

    def run_in(self, ns: str, fn: Callable[..., Any], *args: Any) -> Any:
        """fn(*args) run in namespace ns (see run_in_netns)."""
        return run_in_netns(ns, fn, *args)

    def counters(self, ns: str) -> dict[str, int]:
        """SNMP counters of namespace ns (see netns_counters)."""
        return netns_counters(ns)

    def socket(self, ns: str, family: int = socket.AF_INET,
               type: int = socket.SOCK_STREAM) -> socket.socket:
        return socket_in(ns, family, type)

    def popen(self, ns: str, argv: list[str], **kw: Any) -> subprocess.Popen:
        """Start argv in namespace ns; it is terminated when the link closes.

        `ip netns exec` execs argv in place, so the Popen's pid is argv's."""
        proc = subprocess.Popen(["ip", "netns", "exec", ns, *argv], **kw)
        self._children.append(proc)
        return proc

    def _request(self, req: dict) -> dict:
        if self._ctl is None:
            raise NetlabError("the link's relay is not running")
        with self._ctl_lock:
            try:
                self._ctl.send(json.dumps(req).encode())
                self._ctl.settimeout(5)
                reply = self._ctl.recv(65536)
            except OSError as exc:
                raise NetlabError(f"relay control failed: {exc}") from exc
        if not reply:
            raise NetlabError(f"the relay exited (status {self.relay.poll() if self.relay else None})")
        out = json.loads(reply)
        if "error" in out:
            raise NetlabError(f"relay: {out['error']}")
        return out

    def set_drop_syn_ports(self, ports: Iterable[int]) -> None:
        """Drop TCP SYNs (without ACK) to these destination ports, both ways."""
        self._request({"op": "set_drop_syn_ports", "ports": sorted(int(p) for p in ports)})

    def set_delay_ms(self, delay_ms: float) -> None:
        """Change the one-way delay (applies to packets arriving from now on)."""
        self._request({"op": "set_delay_ms", "delay_ms": float(delay_ms)})

    def stats(self) -> dict:
        """Relay counters: per direction (client_to_server, server_to_client)
        relayed, dropped (SYN rule), overflow, write_errors and how late the
        relay sent packets (late_mean_us, late_max_us); also queued, delay_ms
        and drop_syn_ports."""
        return self._request({"op": "stats"})

    def _stop_relay(self) -> None:
        if self._ctl is not None:
            try:
                self._request({"op": "stop"})
            except NetlabError:
                pass
            self._ctl.close()
            self._ctl = None
        if self.relay is not None:
            try:
                self.relay.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.relay.kill()
                self.relay.wait(timeout=5)

    def _stop_children(self) -> None:
        for proc in self._children:
            if proc.poll() is None:
                proc.terminate()
        for proc in self._children:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


def _configure(ns: str, ip4: str, ip6: str) -> None:
    _ip("-n", ns, "link", "set", "lo", "up")
    _ip("-n", ns, "addr", "add", f"{ip4}/{PREFIX4}", "dev", TUN_NAME)
    # nodad: the address is usable at once instead of after ~1 s of DAD.
    _ip("-n", ns, "addr", "add", f"{ip6}/{PREFIX6}", "dev", TUN_NAME, "nodad")
    _ip("-n", ns, "link", "set", TUN_NAME, "up")


def _start_relay(link: Link, fd_a: int, fd_b: int, delay_ms: float,
                 drop_syn_ports: Iterable[int], realtime: bool) -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        argv = [sys.executable, str(RELAY_SCRIPT),
                "--fd-a", str(fd_a), "--fd-b", str(fd_b), "--ctl-fd", str(theirs.fileno()),
                "--delay-ms", repr(float(delay_ms)),
                "--drop-syn-ports", ",".join(str(int(p)) for p in drop_syn_ports)]
        if realtime:
            argv.append("--realtime")
        link.relay = subprocess.Popen(argv, pass_fds=(fd_a, fd_b, theirs.fileno()),
                                      stdin=subprocess.DEVNULL)
    finally:
        theirs.close()
    link._ctl = ours
    ours.settimeout(10)
    try:
        hello = ours.recv(65536)
    except socket.timeout:
        hello = b""
    if not hello:
        raise NetlabError(f"the relay did not start (status {link.relay.poll()})")
    link.realtime = bool(json.loads(hello).get("realtime"))


@contextmanager
def delayed_link(delay_ms: float = 0.0, drop_syn_ports: Iterable[int] = frozenset(),
                 realtime: bool = True) -> Iterator[Link]:
    """Two fresh namespaces joined by a link with delay_ms each way.

    A connect() from client to server takes one RTT, 2 * delay_ms. SYNs to
    drop_syn_ports vanish silently (connect timeouts). Namespaces, relay and
    processes started with Link.popen are removed on exit, also on errors.
    realtime runs the relay at SCHED_FIFO 10 so busy CPUs do not delay it.
    """
    check_prerequisites()
    remove_stale_namespaces()
    n = next(_counter)
    link = Link(ns_client=f"{NS_PREFIX}-{os.getpid()}-{n}-c",
                ns_server=f"{NS_PREFIX}-{os.getpid()}-{n}-s")
    created: list[str] = []
    fds: list[int] = []
    failed = True
    try:
        for ns in (link.ns_client, link.ns_server):
            _ip("netns", "add", ns)
            created.append(ns)
            fds.append(run_in_netns(ns, _open_tun, TUN_NAME))
        _configure(link.ns_client, link.client_ip4, link.client_ip6)
        _configure(link.ns_server, link.server_ip4, link.server_ip6)
        _start_relay(link, fds[0], fds[1], delay_ms, drop_syn_ports, realtime)
        # Only the relay holds the TUN fds now: when it dies the devices go.
        while fds:
            os.close(fds.pop())
        yield link
        failed = False
    finally:
        errors = []
        for step in (link._stop_children, link._stop_relay):
            try:
                step()
            except Exception as exc:  # keep tearing down; report below
                errors.append(exc)
        for fd in fds:
            os.close(fd)
        for ns in created:
            proc = subprocess.run(["ip", "netns", "del", ns], capture_output=True,
                                  text=True, timeout=10)
            if proc.returncode != 0:
                errors.append(NetlabError(f"ip netns del {ns}: {proc.stderr.strip()}"))
        # Raise teardown trouble only if nothing else failed first.
        if errors and not failed:
            raise NetlabError(f"netlab teardown: {errors[0]}")


def _netlab_fixture() -> Iterator[Link]:
    """A zero-delay link; tests change it with set_delay_ms / set_drop_syn_ports."""
    with delayed_link() as link:
        yield link


try:  # the fixture for conftest.py: `from tests.kernel.netlab import netlab`
    import pytest

    netlab = pytest.fixture(name="netlab")(_netlab_fixture)
except ImportError:  # the module works without pytest too
    pass
