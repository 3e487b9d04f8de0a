"""Threads blocked in accept() since before connscope started (kprobe and
fentry backends).

A kretprobe or fexit is armed when the function is entered: a call already
blocked inside inet_csk_accept() when they attach returns through neither,
so that thread's next accept would be lost. Only the syscall exit
tracepoints see it return, and those tax every syscall of every task while
attached (TIF_SYSCALL_TRACEPOINT): so they are attached only when such a
thread exists, and only until each has returned.

Start (CatchUp.start, called by the loader once every program is loaded and
before any is attached):
  1. read /proc/PID/task/TID/syscall of every thread: the ones in accept()
     or accept4() on a TCP socket are the blocked ones;
  2. put their tids in the kernel map `blocked_accepts`;
  3. attach syscalls:sys_exit_accept and sys_exit_accept4; then the loader
     attaches the kprobes/fentry.
Each seeded entry goes at the thread's first return from accept()
(bpf/main.c accept_exited, accept_returned): a call that began before us is
accounted at the syscall exit, one the kretprobe/fexit saw is not counted
twice. Because 2 and 3 happen before the function hooks exist, every call a
seeded thread is blocked in began before them: there is no window in which a
seeded thread's call is counted twice or by neither. A thread that enters
accept() between the scan and the attach (milliseconds) is not seeded; its
call returns unseen (the same as a call made before any tracer starts).

Then (CatchUp.tend, every second from ProbeSession.poll): entries of threads
that exited are removed; once none is left, the tracepoints are detached. A
thread still blocked after MAX_WAIT_S (an idle listener's acceptor) is given
up on: the tracepoints are detached anyway, because any user can park a
thread in accept() and must not be able to keep a tax on every syscall of
the machine for as long as connscope runs. Its next accept is then counted
(`unseen`, shown with the untracked accepts), never silently missing.

/proc is read as hostile input: bounded reads, threads that exit mid-scan
skipped, nothing taken from comm, and the socket behind an fd checked
through an O_PATH handle (never opening another user's file, which could be
a FUSE file whose server never answers).
"""
from __future__ import annotations

import os
import struct
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional

from tracer.probes.loader import LoadError

PROC = "/proc"
MAP = "blocked_accepts"
ON_DEMAND = frozenset({"tracepoint__syscalls__sys_exit_accept",
                       "tracepoint__syscalls__sys_exit_accept4"})
MAX_WAIT_S = 60.0          # longest the syscall tracepoints stay for one thread
CHECK_EVERY_S = 1.0        # how often tend() looks at the map
MAX_TASKS = 262_144        # threads read per scan at most
MAX_SCAN_S = 2.0           # and seconds spent reading them
SYSCALL_READ_MAX = 512     # a syscall line is ~170 bytes
TCP_PROTOCOLS = {b"TCP": 4, b"TCPv6": 6}   # system.sockprotoname -> family filter

# (accept, accept4) syscall numbers per machine (native syscalls only: the
# syscall tracepoints ignore 32-bit compat calls on x86_64, so a 32-bit
# server's blocked accept stays unseen). The asm-generic table is used by
# arm64, riscv64 and loongarch64.
ACCEPT_SYSCALLS = {
    "x86_64": (43, 288),
    "aarch64": (202, 242),
    "riscv64": (202, 242),
    "loongarch64": (202, 242),
}


CFLAG = "-DSYSCALL_EXIT_ACCEPT"


def exit_tracepoints_present(tracefs_root: str) -> bool:
    """The kernel has syscalls:sys_exit_accept and sys_exit_accept4
    (CONFIG_FTRACE_SYSCALLS): bcc can compile the catch-up hooks."""
    return all(os.path.isfile(os.path.join(tracefs_root, "events", "syscalls", name, "format"))
               for name in ("sys_exit_accept", "sys_exit_accept4"))


def accept_syscalls(machine: Optional[str] = None) -> Optional[tuple[int, int]]:
    """accept and accept4's numbers here; None where not known."""
    return ACCEPT_SYSCALLS.get(machine or os.uname().machine)


def parse_syscall(raw: bytes) -> Optional[tuple[int, int]]:
    """(syscall number, first argument) from /proc/TID/syscall, or None when
    the thread is not blocked in a syscall ("running", "-1 sp pc") or the
    text is not what the kernel writes. The kernel's format: the number in
    decimal, then six arguments, the stack pointer and the program counter
    in hex ("0x..."), one line."""
    if not raw.endswith(b"\n") or len(raw) > SYSCALL_READ_MAX:
        return None
    fields = raw[:-1].split(b" ")
    if len(fields) != 9 or not fields[0].isdigit() or len(fields[0]) > 5:
        return None
    arg = fields[1]
    if not arg.startswith(b"0x") or len(arg) > 18:
        return None
    try:
        return int(fields[0]), int(arg[2:], 16)
    except ValueError:
        return None


@dataclass(frozen=True)
class Blocked:
    pid: int
    tid: int
    fd: int
    protocol: str     # "TCP" or "TCPv6"


@dataclass
class Scan:
    threads: list[Blocked] = field(default_factory=list)
    tasks_read: int = 0
    incomplete: bool = False   # stopped at MAX_TASKS or MAX_SCAN_S
    seconds: float = 0.0


def _read_bounded(path: str) -> Optional[bytes]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        return os.read(fd, SYSCALL_READ_MAX + 1)
    except OSError:
        return None
    finally:
        os.close(fd)


def socket_protocol(proc: str, pid: int, tid: int, fd: int) -> Optional[bytes]:
    """The protocol name of the socket at fd of thread tid (b"TCP",
    b"UNIX-STREAM", ...), None if it is no socket or is gone. The link is
    followed with O_PATH, which opens nothing (no filesystem's open runs),
    and the xattr is read only once the handle is known to be a socket."""
    try:
        h = os.open(f"{proc}/{pid}/task/{tid}/fd/{fd}", os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not os.readlink(f"/proc/self/fd/{h}").startswith("socket:["):
            return None
        name = os.getxattr(f"/proc/self/fd/{h}", "system.sockprotoname")
        return name.split(b"\0", 1)[0][:32]
    except OSError:
        return None
    finally:
        os.close(h)


def _numeric(names: Iterable[str]) -> list[int]:
    return sorted(int(n) for n in names if n.isdigit() and len(n) <= 10)


def scan(proc: str = PROC, *, syscalls: Optional[tuple[int, int]] = None,
         pids: Optional[Iterable[int]] = None, family: Optional[int] = None,
         max_tasks: int = MAX_TASKS, max_seconds: float = MAX_SCAN_S,
         protocol_of: Callable[[str, int, int, int], Optional[bytes]] = socket_protocol,
         clock: Callable[[], float] = time.monotonic) -> Scan:
    """Threads blocked in accept()/accept4() on a TCP socket (of `pids`, of
    `family` 4 or 6, when given). Threads and processes that go away while
    we read are skipped."""
    out = Scan()
    if syscalls is None:
        return out
    start = clock()
    try:
        candidates = sorted(set(pids)) if pids else _numeric(os.listdir(proc))
    except OSError:
        return out
    for pid in candidates:
        try:
            tids = _numeric(os.listdir(f"{proc}/{pid}/task"))
        except OSError:     # exited, or not a process
            continue
        for tid in tids:
            if out.tasks_read >= max_tasks or clock() - start > max_seconds:
                out.incomplete = True
                out.seconds = clock() - start
                return out
            out.tasks_read += 1
            raw = _read_bounded(f"{proc}/{pid}/task/{tid}/syscall")
            parsed = parse_syscall(raw) if raw else None
            if parsed is None or parsed[0] not in syscalls:
                continue
            fd = parsed[1]
            if fd >= 1 << 31:
                continue
            protocol = protocol_of(proc, pid, tid, fd)
            wanted = TCP_PROTOCOLS.get(protocol)
            if wanted is None or (family and family != wanted):
                continue
            out.threads.append(Blocked(pid, tid, fd, protocol.decode()))
    out.seconds = clock() - start
    return out


class CatchUp:
    """The accepts of threads blocked since before start: seeds the kernel
    map, attaches and detaches the syscall exit tracepoints. Readable state
    for doctor, notes and tests."""

    def __init__(self, *, pids=None, family=None, proc: str = PROC,
                 machine: Optional[str] = None, max_wait_s: float = MAX_WAIT_S,
                 clock: Callable[[], float] = time.monotonic, scanner=scan):
        self.pids = pids
        self.family = family
        self.proc = proc
        self.syscalls = accept_syscalls(machine)
        self.max_wait_s = max_wait_s
        self.clock = clock
        self._scanner = scanner
        self.found = 0            # threads found blocked at start
        self.not_seeded = 0       # of those, not put in the map (full): next accept unseen
        self.unseen = 0           # still blocked when given up on: next accept unseen
        self.scan: Optional[Scan] = None
        self.attached_at: Optional[float] = None
        self.detached_at: Optional[float] = None
        self.detached_because = ""   # "returned" or "gave up"
        self.attach_error = ""
        self._last_check = 0.0

    @property
    def attached(self) -> bool:
        return self.attached_at is not None and self.detached_at is None

    def start(self, loaded) -> None:
        """loader.load's before_attach: nothing of ours is attached yet."""
        if self.syscalls is None:
            return
        self.scan = self._scanner(self.proc, syscalls=self.syscalls, pids=self.pids,
                                  family=self.family)
        self.found = len(self.scan.threads)
        if not self.found:
            return
        table = loaded.maps[MAP]
        seeded = 0
        for t in self.scan.threads:
            try:
                table.update(struct.pack("<I", t.tid), b"\1")
                seeded += 1
            except OSError:   # map full (E2BIG)
                self.not_seeded += 1
        if not seeded:
            return
        try:
            loaded.attach_on_demand()
        except LoadError as e:
            # Tracing goes on without them: these accepts are counted unseen.
            self.attach_error = str(e)
            self.unseen += seeded
            for key in table.keys():
                table.delete(key)
            return
        self.attached_at = self._last_check = self.clock()

    def tend(self, loaded, force: bool = False) -> None:
        """Each second while attached: forget threads that exited; detach
        once none is left, or after max_wait_s (those left are `unseen`)."""
        if not self.attached:
            return
        now = self.clock()
        if not force and now - self._last_check < CHECK_EVERY_S:
            return
        self._last_check = now
        table = loaded.maps[MAP]
        left = 0
        for key in table.keys():
            tid = struct.unpack("<I", key)[0]
            if os.path.exists(f"{self.proc}/{tid}"):
                left += 1
            else:
                table.delete(key)
        if left and now - self.attached_at < self.max_wait_s:
            return
        loaded.detach_on_demand()
        self.detached_at = now
        if left:
            # Read after detaching: a call that returns from now on is unseen.
            keys = table.keys()
            self.unseen = len(keys)
            for key in keys:
                table.delete(key)
            self.detached_because = "gave up"
        else:
            self.detached_because = "returned"

    def notes(self) -> list[str]:
        """What the user should know, one line each (shown with the blind spots)."""
        out = []
        if self.syscalls is None:
            out.append(f"threads blocked in accept() before start are not looked for on "
                       f"{os.uname().machine} (syscall numbers unknown): their next accept "
                       f"is not seen")
            return out
        if self.found and not self.attach_error:
            out.append(f"{self.found} thread(s) blocked in accept() at start: their next accept "
                       f"is seen through syscalls:sys_exit_accept/accept4, attached until they "
                       f"return ({self.max_wait_s:.0f} s at most; a small cost on every syscall "
                       f"meanwhile)")
        if self.attach_error:
            out.append(f"the next accept of {self.found} thread(s) blocked in accept() at start "
                       f"is not seen ({self.attach_error})")
        if self.scan is not None and self.scan.incomplete:
            out.append(f"the look for threads blocked in accept() stopped after "
                       f"{self.scan.tasks_read} threads: the next accept of any it did not "
                       f"reach is not seen")
        return out
