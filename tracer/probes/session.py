"""A running set of probes: load, poll the event buffer, count losses, close.

The program comes compiled (tracer/probes/program.py: from the cache, or
compiled in a child process); this module creates its maps, loads and
attaches it through tracer/probes/loader.py, and reads the event buffer's
shared memory itself. What comes out of `poll()` is plain Python objects;
closes are joined with the opens of the same sockets and tallied instead
(`take_closes()`, tracer/lifetimes.py).
"""
from __future__ import annotations

import os
import struct
import time
from dataclasses import dataclass, field

from tracer import events, fastpath, lifetimes
from tracer.domain import outcomes
from tracer.domain.hooks import NESTED_COPY, unhandled_misses
from tracer.events import C
from tracer.filters import Filters
from tracer.probes import blocked_accepts, buffers, loader, program
from tracer.probes import bpf_syscall as sc
from tracer.probes.features import OPTIONAL_HOOKS, hidden_functions


MAX_BATCH = 16384   # events decoded per poll at most
POLL_SLEEP_MS = 50  # how stale an event may get before we read it
BTF_PATH = "/sys/kernel/btf/vmlinux"
# struct bpf_prog_info.recursion_misses (UAPI, kernel 5.12+): byte offset
PROG_INFO_RECURSION_MISSES = 208
# An in-flight connect with no sign of life (its start, a SYN retransmit) for
# this long is one whose SYN_SENT exit we missed (the tracepoint skipped for
# BPF recursion): the kernel never waits longer than TCP_RTO_MAX (120 s, also
# the most tcp_rto_max_ms allows) between SYNs before it resends or gives up,
# whatever tcp_syn_retries, TCP_SYNCNT or TCP_USER_TIMEOUT say. Twice that,
# and some, so one missed retransmit run does not make a live connect stale.
STALE_CONNECT_S = 300
STALE_SWEEP_MAX = 4096   # entries removed per sweep at most (the map holds 65,536)
# A thread's entry in `connect_calls` whose connect() return we missed: a
# connect() either fails before SYN_SENT at once or enters it (from then on
# the socket's state tells its end), so an entry this old can only be one
# whose return was missed. Removing it loses nothing; its thread's next
# connect() would have replaced it anyway.
STALE_CONNECT_CALL_S = 60
EV_CLOSE = C["EV_CLOSE"]
EV_CONNECT = C["EV_CONNECT"]
EV_ACCEPT = C["EV_ACCEPT"]
CLOSE_SIZE = events.CLOSE_SIZE
ESTABLISHED = outcomes.ESTABLISHED
_RECORD_TYPE = events._TYPE
_DECODERS_AT = events.DECODERS_AT
_COMPILED = fastpath.native   # None: the pure-Python path


class ProbeError(Exception):
    """Loading or attaching failed; the message says why, in one line."""


@dataclass
class LoadInfo:
    backend: str
    transport: str           # "ring buffer" or "perf buffer"
    offsets_from: str
    headers: str
    load_seconds: float
    notes: list[str] = field(default_factory=list)
    drop_split: "bool | None" = None    # tracepoint: skb:kfree_skb drop reasons attached
    # `auto`: better backends that failed to load here, "<backend>: <why>" each
    passed_over: list[str] = field(default_factory=list)
    # how the tracepoints every backend shares are hooked, and why (one line)
    tracepoint_hooks: str = ""


def _vmlinux_btf_id(name: str, attach_type: int) -> int:
    """A tracepoint's btf_trace_ typedef from the BTF this process already
    read (libbpf would parse the kernel's BTF again for each program, ~10 ms);
    kernel functions as libbpf finds them."""
    if attach_type == sc.TRACE_RAW_TP:
        from tracer.probes.btf import BTFError, kernel_btf
        try:
            return kernel_btf().tracepoint_id(name)
        except (BTFError, OSError):
            return 0
    return loader.find_vmlinux_btf_id(name, attach_type)


class ProbeSession:
    def __init__(self, backend: str, filters: Filters, *, ringbuf: bool, offset_flags: list[str],
                 env: dict[str, str], offsets_from: str = "", headers: str = "",
                 btf_data: bytes | None = None):
        ancestors, why = True, ""
        if filters.cgroups:
            from tracer.probes.cgroup_filter import ancestors_matched
            ancestors, why = ancestors_matched()
        self._opts = program.BuildOptions(backend=backend, filters=filters, ringbuf=ringbuf,
                                          cgroup_ancestors=ancestors)
        self._offset_flags = offset_flags
        self._env = env
        self._btf_data = btf_data
        self._prog: loader.LoadedProgram | None = None
        self._buffer = None
        self._pending: list = []
        self._closes = events.Closes()
        self._open = lifetimes.OpenConnections()
        self.decode_errors = 0
        self.stale_connects = 0   # in-flight entries swept (sweep_stale_connects)
        # the last read stopped at MAX_BATCH: more is waiting, read it now
        self.behind = False
        # kprobe/fentry: accepts of threads blocked since before start
        self.blocked_accepts: blocked_accepts.CatchUp | None = None
        self.from_cache = False
        self.info = LoadInfo(backend, "ring buffer" if ringbuf else "perf buffer",
                             offsets_from, headers, 0.0)
        if filters.cgroups:
            from tracer.probes.cgroup_filter import coverage_note
            self.info.notes.append(coverage_note(ancestors, why))

    def open(self) -> "ProbeSession":
        t0 = time.monotonic()
        backend = self._opts.backend
        try:
            btf = self._btf_data
            if btf is None and os.path.exists(BTF_PATH):
                with open(BTF_PATH, "rb") as f:
                    btf = f.read()
            compiled, self.from_cache = program.build(self._opts, self._offset_flags, self._env, btf)
            hidden = hidden_functions()
            on_demand, before_attach = frozenset(), None
            if backend != "tracepoint":
                f = self._opts.filters
                self.blocked_accepts = blocked_accepts.CatchUp(pids=f.pids, family=f.family)
                on_demand = blocked_accepts.ON_DEMAND & {fn.name for fn in compiled.functions}
                if on_demand == blocked_accepts.ON_DEMAND:
                    before_attach = self.blocked_accepts.start
            self._prog, notes = loader.load(
                compiled, kprobes=program.kprobe_specs() if backend == "kprobe" else (), hidden=hidden,
                on_demand=on_demand, before_attach=before_attach, vmlinux_btf_id=_vmlinux_btf_id)
            self.info.notes.extend(notes)
            if self.blocked_accepts is not None:
                if before_attach is None:
                    self.info.notes.append(
                        "threads blocked in accept() before start: their next accept is not "
                        "seen (no syscalls:sys_exit_accept tracepoints in this kernel)")
                else:
                    self.info.notes.extend(self.blocked_accepts.notes())
            if backend == "fentry":
                # fentry_cflags left the absent optional functions out of the build.
                self.info.notes.extend(
                    f"fentry {name} not attached "
                    f"({'hidden by CONNSCOPE_HIDE_FUNCTIONS' if name in hidden else 'not in kernel BTF'}); {lost}"
                    for name, lost in OPTIONAL_HOOKS.items()
                    if f"-DNO_FENTRY_{name.upper()}" in self._offset_flags)
            program.fill_filter_maps(self._prog.maps, self._opts.filters)
            ev = self._prog.maps["events"]
            if self._opts.ringbuf:
                self._buffer = buffers.RingBuffer(ev.fd, ev.spec.max_entries)
            else:
                self._buffer = buffers.PerfBuffer(ev)
        except (program.CompileFailed, loader.LoadError, OSError) as e:
            self.close()
            msg = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            raise ProbeError(f"cannot load the {backend} programs: {_first_line(msg)}") from e
        self.info.load_seconds = time.monotonic() - t0
        return self

    def _on_record(self, view, offset: int, size: int) -> None:
        # (four calls a connection: module look-ups kept to constants)
        kind = _RECORD_TYPE(view, offset)[0]
        if kind == EV_CLOSE and size >= CLOSE_SIZE:
            self._open.closed_at(view, offset, self._closes)
            return
        entry = _DECODERS_AT.get(kind)
        if entry is None or size < entry[1]:
            self.decode_errors += 1
            return
        ev = entry[0](view, offset)
        self._pending.append(ev)
        if kind == EV_CONNECT:
            if ev.outcome == ESTABLISHED:
                self._open.connected(ev, self._closes)
        elif kind == EV_ACCEPT:
            self._open.accepted(ev, self._closes)

    def _walk_compiled(self, data, mask: int, cons: int, producer, limit: int) -> tuple[int, int]:
        """buffers.read_ring with _on_record for each record, in C
        (tracer/fastpath.py): the same events, tallies and counts."""
        cons, n, errors = _COMPILED.walk_ring(data, mask, cons, producer, limit, self._pending,
                                              self._closes, self._open)
        self.decode_errors += errors
        return cons, n

    def take_closes(self) -> events.Closes:
        """Connections that closed since the last call, tallied (they are
        not in what poll() returns)."""
        out, self._closes = self._closes, events.Closes()
        return out

    def poll(self, timeout_ms: int = 100) -> list:
        """Sleep up to timeout_ms (at most POLL_SLEEP_MS), then return what the
        kernel has written since the last call, MAX_BATCH events at most.

        The kernel side submits without waking us (BPF_RB_NO_WAKEUP): one
        wake-up per event cost a quarter of our CPU. Under a flood the rest
        waits in the buffer (or is counted as lost there), never here; and
        while a read stops at MAX_BATCH the next one does not sleep: a
        backlog (after an interval's work, or at more records a second than
        MAX_BATCH every POLL_SLEEP_MS) is read at once, not left to
        overflow the buffer while we wait (section 3 of BENCHMARKS.md: losses
        from 24,000 connections/s at under half a core, before)."""
        if timeout_ms and not self.behind:
            time.sleep(min(timeout_ms, POLL_SLEEP_MS) / 1000.0)
        walk = self._walk_compiled if _COMPILED is not None else None
        self.behind = self._buffer.read(self._on_record, MAX_BATCH, walk) >= MAX_BATCH
        self._open.end_read()
        if self.blocked_accepts is not None and self.blocked_accepts.attached:
            self.blocked_accepts.tend(self._prog)
        out, self._pending = self._pending, []
        return out

    def skip_pending(self, timeout_ms: int = 100) -> None:
        """As poll(), but pass over what was written without decoding it
        (the benchmark's measure of the kernel side alone)."""
        time.sleep(min(timeout_ms, POLL_SLEEP_MS) / 1000.0)
        self._buffer.read(_ignore, MAX_BATCH)

    def _counter(self, slot: int) -> int:
        """A counters[] slot summed over CPUs."""
        table = self._prog.maps["counters"]
        value = table.lookup(struct.pack("<I", slot))
        if value is None:
            return 0
        return sum(struct.unpack_from("<Q", v)[0] for v in table.per_cpu(value))

    def counters(self) -> dict[str, int]:
        """Kernel-side loss counters, summed over CPUs."""
        total = self._counter
        return {
            # The same drops, counted twice on a perf buffer: by emit() when the
            # output helper fails (kernels that report it) and by the kernel's
            # PERF_RECORD_LOST records (written late, once a record fits again).
            # Either alone is exact; the larger is the more current.
            "lost_events": max(total(C["CTR_LOST_EVENTS"]), self._buffer.lost),
            # in-flight map full, or a connected socket destroyed with its
            # connect still in flight (its way out of SYN_SENT never handled)
            "untracked_connects": total(C["CTR_INFLIGHT_FULL"]) + total(C["CTR_CONNECT_ENDS_MISSED"]),
            "untracked_accept_waits": total(C["CTR_HANDSHAKES_FULL"]),
            "untracked_listeners": total(C["CTR_LISTENERS_FULL"]),
            # the map of threads in accept() full, or a thread blocked in
            # accept() since before start whose return we could not wait for
            "untracked_accepts": total(C["CTR_ACCEPTING_FULL"]) + self._blocked_unseen(),
            # connect() calls whose own error could not be watched
            "untracked_connect_calls": total(C["CTR_CONNECT_CALLS_FULL"]),
            "untracked_lifetimes": self._open.untracked,
            "decode_errors": self.decode_errors,
            "stale_connects": self.stale_connects,
            "missed_runs": sum(self.missed_runs_by().values()),
        }

    def missed_runs_by(self) -> dict[str, int]:
        """{program: runs the kernel skipped (BPF recursion) and nothing
        handled}, programs with any."""
        handled = self.handled_runs_by()     # first: see unhandled_misses
        return unhandled_misses(self.kernel_skipped_runs_by(), handled)

    def kernel_skipped_runs_by(self) -> dict[str, int]:
        """{program: runs the kernel skipped} as the kernel counts them
        (bpftool's recursion_misses), nested copies included."""
        return self._prog.recursion_misses(PROG_INFO_RECURSION_MISSES)

    def handled_runs_by(self) -> dict[str, int]:
        """{program: its skipped runs that its nested copy handled} (main.c)."""
        handled = {}
        for prefix in ("raw_tracepoint__", "tp_btf__"):
            for hook, slot in (("inet_sock_set_state", "CTR_NESTED_STATE_CHANGES"),
                               ("tcp_destroy_sock", "CTR_NESTED_DESTROYS")):
                if prefix + hook + NESTED_COPY in self._prog.prog_fds:
                    handled[prefix + hook] = self._counter(C[slot])
        return handled

    def _blocked_unseen(self) -> int:
        b = self.blocked_accepts
        return 0 if b is None else b.unseen + b.not_seeded

    def listener_counters(self) -> list:
        """Cumulative counters of every listening socket seen (SO_REUSEPORT
        members apart); entries of closed listeners are removed once read
        (their last counts are in this result)."""
        table = self._prog.maps["listeners"]
        out = []
        for kb, vb in table.items():
            rec = events.decode_listener(events.ListenerStatsRecord.from_buffer_copy(vb))
            out.append(rec)
            if rec.closed:
                table.delete(kb)
        return out

    def take_listener_peaks(self) -> dict:
        """{(netns, family, laddr, lport): peak accept queue} since the last call."""
        table = self._prog.maps["listener_peak"]
        out = {}
        for kb, vb in table.items():
            key = events.ListenerKey.from_buffer_copy(kb)
            fam = key.family
            out[(key.netns, 4 if fam == events.AF_INET else 6,
                 events.format_addr(fam, bytes(key.addr)), key.port)] = struct.unpack_from("<I", vb)[0]
            table.delete(kb)
        return out

    def inflight(self) -> int:
        return len(self._prog.maps["inflight"])

    def pending_connects(self, now_ns: int | None = None) -> dict:
        """{(family, daddr, dport): (count, oldest start ns)} of connects still
        waiting for an answer: a black-holed destination shows here long
        before its connects time out. Entries that can no longer be waiting
        are swept on the way (sweep_stale_connects), never shown."""
        table = self._prog.maps["inflight"]
        now_ns = time.monotonic_ns() if now_ns is None else now_ns
        out: dict = {}
        live = []
        for kb, vb in table.items():
            v = events.InflightRecord.from_buffer_copy(vb)
            live.append((kb, vb, v))
        self.sweep_stale_connect_calls(now_ns)
        for kb, vb, v in self.sweep_stale_connects(table, live, now_ns):
            if not v.have_dest:
                continue
            fam = v.family
            key = (4 if fam == events.AF_INET else 6, events.format_addr(fam, bytes(v.daddr)),
                   v.dport)
            n, oldest = out.get(key, (0, v.ts_ns))
            out[key] = (n + 1, min(oldest, v.ts_ns))
        return out

    def sweep_stale_connects(self, table, entries: list, now_ns: int) -> list:
        """Remove in-flight entries with no sign of life for STALE_CONNECT_S
        (at most STALE_SWEEP_MAX a call) and count them (`stale_connects`,
        shown with the lost events): their connect's outcome was missed.
        Returns the entries kept. bpf_ktime_get_ns() is CLOCK_MONOTONIC."""
        limit = now_ns - STALE_CONNECT_S * 1_000_000_000
        kept, removed = [], 0
        for kb, vb, v in entries:
            if v.ts_active_ns >= limit or removed >= STALE_SWEEP_MAX:
                kept.append((kb, vb, v))
                continue
            # A socket that reuses the address begins anew (its own update):
            # delete only what was read.
            if table.lookup(kb) == vb and table.delete(kb):
                removed += 1
        self.stale_connects += removed
        return kept

    def sweep_stale_connect_calls(self, now_ns: int) -> int:
        """Remove `connect_calls` entries older than STALE_CONNECT_CALL_S (at
        most STALE_SWEEP_MAX a call); returns how many went."""
        table = self._prog.maps["connect_calls"]
        limit = now_ns - STALE_CONNECT_CALL_S * 1_000_000_000
        removed = 0
        for kb, vb in table.items():
            if removed >= STALE_SWEEP_MAX:
                break
            if events.ConnectCallRecord.from_buffer_copy(vb).ts_ns < limit:
                # the thread may have begun a new call since: delete only what was read
                if table.lookup(kb) == vb and table.delete(kb):
                    removed += 1
        return removed

    def close(self) -> None:
        if self._buffer is not None:
            buf, self._buffer = self._buffer, None
            buf.close()
        if self._prog is not None:
            prog, self._prog = self._prog, None
            prog.close()


def _ignore(view, offset: int, size: int) -> None:
    pass


def _first_line(e: Exception) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]
