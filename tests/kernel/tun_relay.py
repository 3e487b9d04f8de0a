"""The packet relay between the two TUN devices of a netlab link.

Runs as its own process (started by netlab.py with the two TUN fds and a
control socket passed in) so that the test process's GIL, bcc callbacks or
pytest overhead can never delay a packet: this kernel has no `tc netem`, so
this loop *is* the link's delay. Standard library only; it is executed as a
script, not imported through the tests package.

Control protocol: one JSON object per SOCK_SEQPACKET message, one reply per
request. The relay exits when the control socket closes (so it dies with
its parent), on {"op": "stop"}, or after --max-lifetime-s.
"""

from __future__ import annotations

import argparse
import errno
import heapq
import json
import os
import select
import socket
import struct
import sys
import time

TCP = 6
TCP_SYN = 0x02
TCP_ACK = 0x10
# IPv6 extension headers that may sit between the fixed header and TCP.
IPV6_EXT_HEADERS = {0, 43, 60}
IPV6_FRAGMENT = 44

# Bounds: the loop must never grow without limit, whatever the traffic.
MAX_QUEUED = 100_000
MAX_READS_PER_WAKEUP = 256
IDLE_WAIT_S = 0.5


def tcp_syn_dport(pkt: bytes) -> int | None:
    """The destination port if pkt is a TCP SYN without ACK, else None."""
    if not pkt:
        return None
    version = pkt[0] >> 4
    if version == 4:
        if len(pkt) < 20:
            return None
        ihl = (pkt[0] & 0x0F) * 4
        frag_offset = struct.unpack_from("!H", pkt, 6)[0] & 0x1FFF
        if pkt[9] != TCP or frag_offset != 0:
            return None
        off = ihl
    elif version == 6:
        if len(pkt) < 40:
            return None
        nxt, off = pkt[6], 40
        # Bounded walk: at most a few extension headers in practice.
        for _ in range(8):
            if nxt in IPV6_EXT_HEADERS and len(pkt) >= off + 2:
                nxt, off = pkt[off], off + (pkt[off + 1] + 1) * 8
            elif nxt == IPV6_FRAGMENT and len(pkt) >= off + 8:
                if struct.unpack_from("!H", pkt, off + 2)[0] & 0xFFF8:
                    return None  # not the first fragment: no TCP header
                nxt, off = pkt[off], off + 8
            else:
                break
        if nxt != TCP:
            return None
    else:
        return None
    if len(pkt) < off + 14:
        return None
    flags = pkt[off + 13]
    if flags & TCP_SYN and not flags & TCP_ACK:
        return struct.unpack_from("!H", pkt, off + 2)[0]
    return None


class Direction:
    """Counters for one direction of the link."""

    def __init__(self, out_fd: int):
        self.out_fd = out_fd
        self.relayed = 0
        self.dropped = 0  # by the SYN rule
        self.overflow = 0  # queue full
        self.write_errors = 0
        self.late_sum_us = 0.0
        self.late_max_us = 0.0

    def as_dict(self) -> dict:
        mean = self.late_sum_us / self.relayed if self.relayed else 0.0
        return {
            "relayed": self.relayed,
            "dropped": self.dropped,
            "overflow": self.overflow,
            "write_errors": self.write_errors,
            "late_mean_us": round(mean, 1),
            "late_max_us": round(self.late_max_us, 1),
        }


class Relay:
    def __init__(self, fd_a: int, fd_b: int, ctl: socket.socket,
                 delay_ms: float, drop_syn_ports: set[int]):
        self.fd_a, self.fd_b, self.ctl = fd_a, fd_b, ctl
        self.delay_s = delay_ms / 1000.0
        self.drop_syn_ports = set(drop_syn_ports)
        self.dirs = {fd_a: Direction(fd_b), fd_b: Direction(fd_a)}
        self.names = {fd_a: "client_to_server", fd_b: "server_to_client"}
        self.queue: list[tuple[float, int, int, bytes]] = []
        self.seq = 0
        self.running = True

    def stats(self) -> dict:
        out = {self.names[fd]: d.as_dict() for fd, d in self.dirs.items()}
        out["queued"] = len(self.queue)
        out["delay_ms"] = self.delay_s * 1000.0
        out["drop_syn_ports"] = sorted(self.drop_syn_ports)
        return out

    def send(self, direction: Direction, pkt: bytes, due: float) -> None:
        try:
            os.write(direction.out_fd, pkt)
        except OSError:
            direction.write_errors += 1
            return
        late_us = max(0.0, (time.monotonic() - due) * 1e6)
        direction.relayed += 1
        direction.late_sum_us += late_us
        direction.late_max_us = max(direction.late_max_us, late_us)

    def receive(self, in_fd: int) -> None:
        direction = self.dirs[in_fd]
        for _ in range(MAX_READS_PER_WAKEUP):
            try:
                pkt = os.read(in_fd, 65536)
            except BlockingIOError:
                return
            arrived = time.monotonic()
            dport = tcp_syn_dport(pkt)
            if dport is not None and dport in self.drop_syn_ports:
                direction.dropped += 1
                continue
            if self.delay_s <= 0 and not self.queue:
                self.send(direction, pkt, arrived)
            elif len(self.queue) >= MAX_QUEUED:
                direction.overflow += 1
            else:
                self.seq += 1
                heapq.heappush(self.queue, (arrived + self.delay_s, self.seq, in_fd, pkt))

    def flush_due(self) -> None:
        now = time.monotonic()
        while self.queue and self.queue[0][0] <= now:
            due, _, in_fd, pkt = heapq.heappop(self.queue)
            self.send(self.dirs[in_fd], pkt, due)
            now = time.monotonic()

    def control(self) -> None:
        try:
            msg = self.ctl.recv(65536)
        except (ConnectionResetError, BlockingIOError):
            msg = b""
        if not msg:  # parent gone: stop with it
            self.running = False
            return
        req = json.loads(msg)
        op = req.get("op")
        if op == "set_drop_syn_ports":
            self.drop_syn_ports = {int(p) for p in req["ports"]}
        elif op == "set_delay_ms":
            self.delay_s = float(req["delay_ms"]) / 1000.0
        elif op == "stop":
            self.running = False
        elif op != "stats":
            self.ctl.send(json.dumps({"error": f"unknown op {op!r}"}).encode())
            return
        self.ctl.send(json.dumps(self.stats()).encode())

    def run(self, max_lifetime_s: float) -> None:
        end = time.monotonic() + max_lifetime_s
        fds = [self.fd_a, self.fd_b, self.ctl.fileno()]
        while self.running and time.monotonic() < end:
            self.flush_due()
            if self.queue:
                timeout = max(0.0, self.queue[0][0] - time.monotonic())
            else:
                timeout = IDLE_WAIT_S
            # select() rather than poll(): its timeout has microsecond, not
            # millisecond, resolution, which is most of the relay's accuracy.
            try:
                ready, _, _ = select.select(fds, [], [], timeout)
            except InterruptedError:
                continue
            for fd in ready:
                if fd == self.ctl.fileno():
                    self.control()
                else:
                    self.receive(fd)


def make_realtime() -> bool:
    """Run at a low SCHED_FIFO priority so wake-ups are not late when the
    CPUs are busy (e.g. a bcc compile running next to the test). Optional."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
        return True
    except (OSError, AttributeError):
        return False


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--fd-a", type=int, required=True, help="client-side TUN fd")
    ap.add_argument("--fd-b", type=int, required=True, help="server-side TUN fd")
    ap.add_argument("--ctl-fd", type=int, required=True)
    ap.add_argument("--delay-ms", type=float, default=0.0)
    ap.add_argument("--drop-syn-ports", default="")
    ap.add_argument("--realtime", action="store_true")
    ap.add_argument("--max-lifetime-s", type=float, default=3600.0)
    args = ap.parse_args(argv)

    for fd in (args.fd_a, args.fd_b):
        os.set_blocking(fd, False)
    ctl = socket.socket(fileno=args.ctl_fd)
    ports = {int(p) for p in args.drop_syn_ports.split(",") if p}
    relay = Relay(args.fd_a, args.fd_b, ctl, args.delay_ms, ports)
    realtime = make_realtime() if args.realtime else False
    ctl.send(json.dumps({"ready": True, "realtime": realtime}).encode())
    try:
        relay.run(args.max_lifetime_s)
    except BrokenPipeError:
        pass
    except OSError as exc:
        if exc.errno not in (errno.EBADF, errno.ENOTCONN):
            raise
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
