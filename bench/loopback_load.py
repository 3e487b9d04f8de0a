"""Bounded loopback load: an accepting server and paced connectors, each its
own process (so the tracer sees them as separate pids and the benchmark can
kill them as a group).

    python -m bench.loopback_load server --ports 4 --lifetime 60
        prints "ports P1 P2 ...", accepts and closes until SIGTERM/lifetime,
        then prints {"accepted": N}
    python -m bench.loopback_load connect --ports P1 P2 --rate R --seconds S
        connect()+close() R times a second, round robin over the ports, for S
        seconds (at most R*S connects), then prints {"ok": .., "failed": ..}

    python -m bench.loopback_load probe --interval-ms 10 --seconds 20 --out FILE
        one listener; one connect()+close() every 10 ms to it; prints "port P"
        and writes [[wall time before connect(), source port], ...] to FILE

    python -m bench.loopback_load slow-server --backlog 8 --accept-every-ms 50
        a listener with a tiny accept queue, drained slowly
    python -m bench.loopback_load flood --port P --count 1500 --seconds 1.5 --hold 3
        non-blocking connects at a steady pace, all held open, then closed

The client closes first, so its ports go to TIME_WAIT; the kernel reuses
them on loopback (net.ipv4.tcp_tw_reuse=2, the default) after a second, and
several listener ports multiply the 4-tuples available.
"""
from __future__ import annotations

import argparse
import errno
import json
import selectors
import signal
import socket
import sys
import time


def serve(nports: int, lifetime: float, backlog: int) -> None:
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *a: stop.update(now=True))
    signal.signal(signal.SIGINT, lambda *a: stop.update(now=True))
    sel = selectors.DefaultSelector()
    listeners = []
    for _ in range(nports):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", 0))
        s.listen(backlog)
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
        listeners.append(s)
    print("ports", *(s.getsockname()[1] for s in listeners), flush=True)
    accepted = 0
    end = time.monotonic() + lifetime
    while not stop["now"] and time.monotonic() < end:
        for key, _ in sel.select(0.2):
            for _ in range(512):
                try:
                    c, _ = key.fileobj.accept()
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as e:
                    if e.errno in (errno.EMFILE, errno.ENFILE, errno.ECONNABORTED):
                        break
                    raise
                c.close()
                accepted += 1
    print(json.dumps({"accepted": accepted}), flush=True)


def connect_loop(ports: list[int], rate: float, seconds: float) -> None:
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *a: stop.update(now=True))
    total = int(rate * seconds)
    interval = 1.0 / rate
    ok = failed = behind = 0
    errors: dict[str, int] = {}
    t0 = time.monotonic()
    end = t0 + seconds
    addrs = [("127.0.0.1", p) for p in ports]
    i = 0
    while i < total and not stop["now"]:
        now = time.monotonic()
        if now >= end:
            break
        due = t0 + i * interval
        if due > now:
            time.sleep(min(due - now, 0.05))
            continue
        if now - due > 0.1:   # more than 100 ms late: the generator is saturated
            behind += 1
        s = socket.socket()
        try:
            s.connect(addrs[i % len(addrs)])
            ok += 1
        except OSError as e:
            failed += 1
            name = errno.errorcode.get(e.errno, str(e.errno))
            errors[name] = errors.get(name, 0) + 1
        finally:
            s.close()
        i += 1
    print(json.dumps({"ok": ok, "failed": failed, "late": behind, "errors": errors,
                      "seconds": time.monotonic() - t0}), flush=True)


PROBE_PORTS = (20000, 30000)


def probe(interval_s: float, seconds: float, out: str) -> None:
    """Connects at a steady pace, each stamped with the wall time just before
    connect(): when a tracer's first captured connection happened."""
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *a: stop.update(now=True))
    signal.signal(signal.SIGINT, lambda *a: stop.update(now=True))
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4096)
    srv.setblocking(False)
    port = srv.getsockname()[1]
    print("port", port, flush=True)
    log = []
    t0 = time.monotonic()
    n = 0
    # Each connect gets its own source port, below the ephemeral range, so a
    # port seen by a tracer names exactly one probe (the kernel would reuse
    # ephemeral ports within seconds on loopback).
    next_port = PROBE_PORTS[0]
    while not stop["now"] and n < seconds / interval_s and next_port < PROBE_PORTS[1]:
        due = t0 + n * interval_s
        now = time.monotonic()
        if due > now:
            time.sleep(due - now)
        c = socket.socket()
        c.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            for _ in range(20):   # skip ports someone else holds
                sport, next_port = next_port, next_port + 1
                try:
                    c.bind(("127.0.0.1", sport))
                    break
                except OSError:
                    continue
            wall = time.time()
            c.connect(("127.0.0.1", port))
            log.append([wall, c.getsockname()[1]])
        except OSError:
            pass
        c.close()
        try:
            while True:
                srv.accept()[0].close()
        except (BlockingIOError, InterruptedError):
            pass
        n += 1
    with open(out, "w") as f:
        json.dump(log, f)


def slow_server(backlog: int, accept_every_s: float, lifetime: float) -> None:
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *a: stop.update(now=True))
    signal.signal(signal.SIGINT, lambda *a: stop.update(now=True))
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(backlog)
    srv.settimeout(0.2)
    print("port", srv.getsockname()[1], flush=True)
    accepted = 0
    end = time.monotonic() + lifetime
    while not stop["now"] and time.monotonic() < end:
        try:
            c, _ = srv.accept()
            c.close()
            accepted += 1
        except (socket.timeout, InterruptedError):
            continue
        time.sleep(accept_every_s)
    print(json.dumps({"accepted": accepted}), flush=True)


def flood(port: int, count: int, seconds: float, hold: float) -> None:
    socks = []
    t0 = time.monotonic()
    for i in range(count):
        due = t0 + i * seconds / count
        now = time.monotonic()
        if due > now:
            time.sleep(due - now)
        s = socket.socket()
        s.setblocking(False)
        try:
            s.connect(("127.0.0.1", port))
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            s.close()
            continue
        socks.append(s)
    time.sleep(hold)
    for s in socks:
        s.close()
    print(json.dumps({"connects": len(socks), "seconds": time.monotonic() - t0}), flush=True)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.loopback_load")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("server")
    s.add_argument("--ports", type=int, default=4)
    s.add_argument("--lifetime", type=float, default=120.0)
    s.add_argument("--backlog", type=int, default=4096)
    c = sub.add_parser("connect")
    c.add_argument("--ports", type=int, nargs="+", required=True)
    c.add_argument("--rate", type=float, required=True)
    c.add_argument("--seconds", type=float, required=True)
    pr = sub.add_parser("probe")
    pr.add_argument("--interval-ms", type=float, default=10.0)
    pr.add_argument("--seconds", type=float, default=20.0)
    pr.add_argument("--out", required=True)
    ss = sub.add_parser("slow-server")
    ss.add_argument("--backlog", type=int, default=8)
    ss.add_argument("--accept-every-ms", type=float, default=50.0)
    ss.add_argument("--lifetime", type=float, default=60.0)
    fl = sub.add_parser("flood")
    fl.add_argument("--port", type=int, required=True)
    fl.add_argument("--count", type=int, default=1500)
    fl.add_argument("--seconds", type=float, default=1.5)
    fl.add_argument("--hold", type=float, default=3.0)
    a = p.parse_args(argv)
    if a.cmd == "slow-server":
        slow_server(a.backlog, a.accept_every_ms / 1000, min(a.lifetime, 300.0))
    elif a.cmd == "flood":
        flood(a.port, min(a.count, 10_000), min(a.seconds, 30.0), min(a.hold, 30.0))
    elif a.cmd == "probe":
        probe(max(a.interval_ms, 1.0) / 1000, min(a.seconds, 120.0), a.out)
    elif a.cmd == "server":
        serve(a.ports, min(a.lifetime, 600.0), a.backlog)
    else:
        connect_loop(a.ports, max(a.rate, 0.1), min(a.seconds, 120.0))


if __name__ == "__main__":
    main()
