"""Finding threads blocked in accept() in /proc (tracer/probes/blocked_accepts.py):
the kernel's syscall line parsed strictly, hostile or vanishing /proc
entries skipped, and the catch-up's attach/detach decisions. No root."""
import os
import socket
import struct
import threading
import time

import pytest

from tracer.probes import blocked_accepts as ba
from tracer.probes.loader import LoadError

X86 = ba.ACCEPT_SYSCALLS["x86_64"]


# ---- parse_syscall: the kernel's format, nothing else ----------------------

def test_parse_blocked_accept4_line():
    line = b"288 0x3 0x7fdfdf978980 0x7fdfdf978974 0x80000 0x0 0x0 0x7fdfdf978920 0x7fdfe0128fa8\n"
    assert ba.parse_syscall(line) == (288, 3)


@pytest.mark.parametrize("raw", [
    b"running\n",                                      # on a CPU: no syscall shown
    b"-1 0x7ffe11b06640 0x7fdfe01162ec\n",             # blocked, but not in a syscall
    b"288 0x3 0x0 0x0 0x0 0x0 0x0 0x0 0x0",            # no newline: cut short
    b"288 0x3 0x0 0x0 0x0 0x0 0x0 0x0\n",              # a field missing
    b"288 0x3 0x0 0x0 0x0 0x0 0x0 0x0 0x0 0x0\n",      # one too many
    b"288 3 0x0 0x0 0x0 0x0 0x0 0x0 0x0\n",            # argument not in the kernel's hex
    b"288 0xzz 0x0 0x0 0x0 0x0 0x0 0x0 0x0\n",
    b"2a8 0x3 0x0 0x0 0x0 0x0 0x0 0x0 0x0\n",
    b"28800000000 0x3 0x0 0x0 0x0 0x0 0x0 0x0 0x0\n",
    b"288 0x" + b"f" * 40 + b" 0x0 0x0 0x0 0x0 0x0 0x0 0x0\n",
    b"288  0x3 0x0 0x0 0x0 0x0 0x0 0x0\n",
    b"",
    b"288 0x3 " + b"0x0 " * 200 + b"\n",                # longer than any real line
])
def test_parse_rejects_what_the_kernel_does_not_write(raw):
    assert ba.parse_syscall(raw) is None


def test_syscall_numbers_per_machine():
    assert ba.accept_syscalls("x86_64") == (43, 288)
    assert ba.accept_syscalls("aarch64") == (202, 242)
    assert ba.accept_syscalls("s390x") is None


# ---- scan over a fake /proc ------------------------------------------------

def _task(root, pid, tid, syscall: bytes):
    d = root / str(pid) / "task" / str(tid)
    d.mkdir(parents=True)
    (d / "syscall").write_bytes(syscall)


def _line(nr, fd):
    return f"{nr} {hex(fd)} 0x0 0x0 0x80000 0x0 0x0 0x7ffc 0x7f00\n".encode()


def test_scan_finds_tcp_accepts_only(tmp_path):
    _task(tmp_path, 100, 100, _line(288, 3))     # TCP listener
    _task(tmp_path, 100, 101, _line(43, 4))      # TCPv6 listener, accept()
    _task(tmp_path, 100, 102, _line(288, 5))     # a Unix socket: not ours
    _task(tmp_path, 200, 200, _line(0, 3))       # read(): not blocked in accept
    _task(tmp_path, 200, 201, b"running\n")
    _task(tmp_path, 300, 300, _line(288, 9))     # fd closed since (no socket)
    protos = {(100, 3): b"TCP", (101, 4): b"TCPv6", (102, 5): b"UNIX-STREAM"}
    got = ba.scan(str(tmp_path), syscalls=X86,
                  protocol_of=lambda proc, pid, tid, fd: protos.get((tid, fd)))
    assert [(t.pid, t.tid, t.fd, t.protocol) for t in got.threads] == [
        (100, 100, 3, "TCP"), (100, 101, 4, "TCPv6")]
    assert got.tasks_read == 6 and not got.incomplete


def test_scan_applies_pid_and_family_filters(tmp_path):
    _task(tmp_path, 100, 100, _line(288, 3))
    _task(tmp_path, 200, 200, _line(288, 3))
    _task(tmp_path, 200, 201, _line(288, 4))
    protos = {3: b"TCP", 4: b"TCPv6"}
    of = lambda proc, pid, tid, fd: protos[fd]   # noqa: E731
    only_200 = ba.scan(str(tmp_path), syscalls=X86, pids={200}, protocol_of=of)
    assert [t.tid for t in only_200.threads] == [200, 201]
    v6 = ba.scan(str(tmp_path), syscalls=X86, family=6, protocol_of=of)
    assert [t.tid for t in v6.threads] == [201]
    v4 = ba.scan(str(tmp_path), syscalls=X86, family=4, protocol_of=of)
    assert [t.tid for t in v4.threads] == [100, 200]


def test_scan_skips_vanished_and_odd_entries(tmp_path):
    _task(tmp_path, 100, 100, _line(288, 3))
    (tmp_path / "self").mkdir()                 # not a pid
    (tmp_path / "12345678901").mkdir()          # too long to be one
    (tmp_path / "400").mkdir()                  # exited: no task directory
    d = tmp_path / "500" / "task" / "500"
    d.mkdir(parents=True)                       # exited between listing and reading
    (tmp_path / "600" / "task" / "600").mkdir(parents=True)
    os.symlink("/etc/passwd", tmp_path / "600" / "task" / "600" / "syscall")  # never followed
    got = ba.scan(str(tmp_path), syscalls=X86, protocol_of=lambda *a: b"TCP")
    assert [t.tid for t in got.threads] == [100]


def test_scan_with_a_huge_fd_argument_reads_nothing_for_it(tmp_path):
    _task(tmp_path, 100, 100, _line(288, 1 << 40))
    asked = []
    got = ba.scan(str(tmp_path), syscalls=X86, protocol_of=lambda *a: asked.append(a) or b"TCP")
    assert got.threads == [] and asked == []


def test_scan_is_bounded_in_threads_and_time(tmp_path):
    for tid in range(100, 110):
        _task(tmp_path, 100, tid, _line(288, 3))
    got = ba.scan(str(tmp_path), syscalls=X86, max_tasks=4, protocol_of=lambda *a: b"TCP")
    assert got.incomplete and got.tasks_read == 4 and len(got.threads) == 4
    ticks = iter(range(1000))
    got = ba.scan(str(tmp_path), syscalls=X86, max_seconds=3.5, protocol_of=lambda *a: b"TCP",
                  clock=lambda: float(next(ticks)))
    assert got.incomplete and got.tasks_read < 10


def test_unknown_machine_scans_nothing(tmp_path):
    _task(tmp_path, 100, 100, _line(288, 3))
    assert ba.scan(str(tmp_path), syscalls=None, protocol_of=lambda *a: b"TCP").threads == []


# ---- the real /proc, our own threads (no root needed for our own) ----------

def test_real_proc_sees_our_thread_blocked_in_accept():
    if ba.accept_syscalls() is None:
        pytest.skip(f"no accept syscall numbers known for {os.uname().machine}")
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(1)
    unix = socket.socket(socket.AF_UNIX)
    unix.bind(f"\0connscope-test-{os.getpid()}")
    unix.listen(1)
    threads = [threading.Thread(target=s.accept, daemon=True) for s in (tcp, unix)]
    for t in threads:
        t.start()
    try:
        got = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not got:
            got = ba.scan(syscalls=ba.accept_syscalls(), pids={os.getpid()}).threads
            time.sleep(0.02)
        assert [(t.fd, t.protocol) for t in got] == [(tcp.fileno(), "TCP")]
        assert got[0].tid == threads[0].native_id
        assert ba.scan(syscalls=ba.accept_syscalls(), pids={os.getpid()}, family=6).threads == []
    finally:
        for s, port in ((tcp, ("127.0.0.1", tcp.getsockname()[1])),
                        (unix, f"\0connscope-test-{os.getpid()}")):
            c = socket.socket(s.family)
            c.connect(port)          # lets the thread return
            c.close()
        for t in threads:
            t.join(5)
        tcp.close()
        unix.close()


def test_socket_protocol_of_files_that_are_no_sockets(tmp_path):
    f = open(tmp_path / "x", "w")
    try:
        pid = os.getpid()
        assert ba.socket_protocol("/proc", pid, pid, f.fileno()) is None
        assert ba.socket_protocol("/proc", pid, pid, 999_999) is None
    finally:
        f.close()


# ---- CatchUp: the decisions, with a stand-in for the loaded program ---------

class FakeMap:
    def __init__(self, max_entries=16384):
        self.d, self.max = {}, max_entries

    def update(self, k, v):
        if k not in self.d and len(self.d) >= self.max:
            raise OSError(7, "Argument list too long")
        self.d[k] = v

    def delete(self, k):
        return self.d.pop(k, None) is not None

    def keys(self):
        return list(self.d)


class FakeLoaded:
    def __init__(self, max_entries=16384, attach_fails=False):
        self.maps = {ba.MAP: FakeMap(max_entries)}
        self.attached = False
        self.attach_fails = attach_fails
        self.attaches = 0

    def attach_on_demand(self):
        if self.attach_fails:
            raise LoadError("tracepoint syscalls:sys_exit_accept not found")
        self.attached = True
        self.attaches += 1

    def detach_on_demand(self):
        self.attached = False


def _scanner_of(*tids):
    def scanner(proc, **kw):
        return ba.Scan(threads=[ba.Blocked(1, t, 3, "TCP") for t in tids], tasks_read=len(tids))
    return scanner


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def _catch_up(tmp_path, *tids, clock=None, **kw):
    for t in tids:
        (tmp_path / str(t)).mkdir(exist_ok=True)    # alive
    return ba.CatchUp(proc=str(tmp_path), machine="x86_64", scanner=_scanner_of(*tids),
                      clock=clock or Clock(), **kw)


def test_nothing_blocked_nothing_attached(tmp_path):
    c, loaded = _catch_up(tmp_path), FakeLoaded()
    c.start(loaded)
    assert c.found == 0 and not c.attached and loaded.attaches == 0
    assert c.notes() == []


def test_seeded_then_detached_once_every_thread_returned(tmp_path):
    clock = Clock()
    c, loaded = _catch_up(tmp_path, 11, 12, clock=clock), FakeLoaded()
    c.start(loaded)
    m = loaded.maps[ba.MAP]
    assert c.found == 2 and c.attached and loaded.attached
    assert sorted(struct.unpack("<I", k)[0] for k in m.keys()) == [11, 12]
    m.delete(struct.pack("<I", 11))             # the kernel: thread 11 returned
    clock.t += 2
    c.tend(loaded)
    assert c.attached and loaded.attached
    m.delete(struct.pack("<I", 12))
    clock.t += 0.5
    c.tend(loaded)                              # less than a second since the last look
    assert loaded.attached
    clock.t += 1
    c.tend(loaded)
    assert not loaded.attached and c.detached_because == "returned" and c.unseen == 0


def test_exited_threads_are_forgotten(tmp_path):
    clock = Clock()
    c, loaded = _catch_up(tmp_path, 21, clock=clock), FakeLoaded()
    c.start(loaded)
    os.rmdir(tmp_path / "21")                   # the thread exited, blocked
    clock.t += 1
    c.tend(loaded)
    assert not loaded.attached and c.detached_because == "returned" and c.unseen == 0
    assert loaded.maps[ba.MAP].keys() == []


def test_given_up_after_max_wait_and_counted(tmp_path):
    clock = Clock()
    c, loaded = _catch_up(tmp_path, 31, 32, clock=clock, max_wait_s=60), FakeLoaded()
    c.start(loaded)
    loaded.maps[ba.MAP].delete(struct.pack("<I", 31))
    clock.t += 59
    c.tend(loaded)
    assert loaded.attached
    clock.t += 1
    c.tend(loaded)
    assert not loaded.attached and c.detached_because == "gave up" and c.unseen == 1
    assert loaded.maps[ba.MAP].keys() == []


def test_full_map_counts_the_threads_left_out(tmp_path):
    c, loaded = _catch_up(tmp_path, 41, 42, 43), FakeLoaded(max_entries=2)
    c.start(loaded)
    assert c.found == 3 and c.not_seeded == 1 and c.attached


def test_attach_failure_is_a_note_and_a_count_not_an_error(tmp_path):
    c, loaded = _catch_up(tmp_path, 51), FakeLoaded(attach_fails=True)
    c.start(loaded)
    assert not c.attached and c.unseen == 1 and loaded.maps[ba.MAP].keys() == []
    assert any("not seen" in n for n in c.notes())


def test_unknown_machine_is_said(tmp_path):
    c = ba.CatchUp(proc=str(tmp_path), machine="s390x", scanner=_scanner_of(1))
    loaded = FakeLoaded()
    c.start(loaded)
    assert c.found == 0 and loaded.attaches == 0
    assert any("not looked for" in n for n in c.notes())
