"""Create the maps of a compiled program, load its functions, attach them.

How each function attaches follows from its name, as bcc names them:
`tracepoint__CAT__NAME` (a tracepoint), `raw_tracepoint__NAME` (and
`raw_tracepoint__NAME__COPY`, a second program on it), `tp_btf__NAME[__COPY]`
(the same as a BTF tracepoint: a tracing program), `kfunc__FN` /
`kretfunc__FN` (fentry/fexit); kprobe functions are named by the caller
(tracer/probes/program.py: KPROBES). Everything is undone by close(), and a
kretprobe made through tracefs is removed from kprobe_events again.

Tracepoint functions named in load()'s `on_demand` are loaded but attached
only when asked (LoadedProgram.attach_on_demand), and can be detached again
while the rest keeps running.
"""
from __future__ import annotations

import ctypes
import errno
import itertools
import os
import resource
import struct
from dataclasses import dataclass, field

from tracer.probes import bpf_syscall as sc
from tracer.probes.compiled import CompiledProgram, MapSpec

TRACEFS_ROOTS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
KPROBE_PMU = "/sys/bus/event_source/devices/kprobe"


class LoadError(Exception):
    """A map, program or attachment the tracer needs failed; one line."""


@dataclass(frozen=True)
class KprobeSpec:
    function: str          # in bpf/main.c
    target: str            # kernel function
    ret: bool = False
    maxactive: int = 0
    optional: str = ""     # what is lost without it; "" = required


class Map:
    """A BPF map by fd, keys and values as bytes."""

    def __init__(self, spec: MapSpec, fd: int, ncpus: int):
        self.spec, self.fd = spec, fd
        self.percpu = spec.type in sc.PERCPU_MAPS
        self._slot = (spec.value_size + 7) & ~7
        self.value_size = self._slot * ncpus if self.percpu else spec.value_size
        self.ncpus = ncpus
        self._batch = True   # until the kernel says it has no batch lookups

    def lookup(self, key: bytes) -> bytes | None:
        return sc.map_lookup(self.fd, key, self.value_size)

    def update(self, key: bytes, value: bytes) -> None:
        sc.map_update(self.fd, key, value)

    def delete(self, key: bytes) -> bool:
        return sc.map_delete(self.fd, key)

    def keys(self) -> list[bytes]:
        return sc.map_keys(self.fd, self.spec.key_size, limit=max(self.spec.max_entries, 1))

    def items(self) -> list[tuple[bytes, bytes]]:
        """Every entry: in batches of thousands per syscall where the kernel
        can, else key by key (two syscalls an entry)."""
        if self._batch and not self.percpu:
            got = sc.map_lookup_batch(self.fd, self.spec.key_size, self.value_size,
                                      limit=max(self.spec.max_entries, 1))
            if got is not None:
                return got
            self._batch = False
        return self.items_one_by_one()

    def items_one_by_one(self) -> list[tuple[bytes, bytes]]:
        out = []
        for k in self.keys():
            v = self.lookup(k)
            if v is not None:   # deleted between the two calls
                out.append((k, v))
        return out

    def __len__(self) -> int:
        if self._batch and not self.percpu:
            return len(self.items())   # a few syscalls, where a key walk makes one an entry
        return len(self.keys())

    def per_cpu(self, value: bytes) -> list[bytes]:
        """A per-CPU value split into its CPUs' slots."""
        return [value[i * self._slot: i * self._slot + self.spec.value_size]
                for i in range(self.ncpus)]


@dataclass
class LoadedProgram:
    maps: dict[str, Map]
    prog_fds: dict[str, int] = field(default_factory=dict)
    _links: list[int] = field(default_factory=list)
    _kprobe_events: list[str] = field(default_factory=list)
    # loaded, attached only on demand: function -> (category, tracepoint)
    on_demand: dict[str, tuple[str, str]] = field(default_factory=dict)
    _on_demand_links: dict[str, int] = field(default_factory=dict)

    def attach_on_demand(self) -> None:
        """Attach every on-demand tracepoint not attached yet (all or none)."""
        try:
            for name, (category, event) in self.on_demand.items():
                if name not in self._on_demand_links:
                    pfd = sc.perf_event_open(sc.PERF_TYPE_TRACEPOINT, _tracepoint_id(category, event))
                    self._on_demand_links[name] = _attach_perf(self.prog_fds[name], pfd)
        except OSError as e:
            self.detach_on_demand()
            raise LoadError(f"cannot attach {name}: {e.strerror}") from None
        except LoadError:
            self.detach_on_demand()
            raise

    def detach_on_demand(self) -> None:
        """Detach them again: closing the perf event is the detach."""
        for fd in self._on_demand_links.values():
            _close(fd)
        self._on_demand_links.clear()

    def close(self) -> None:
        self.detach_on_demand()
        for fd in self._links:
            _close(fd)
        self._links.clear()
        for ev in self._kprobe_events:
            try:
                _write_tracefs("kprobe_events", f"-:{ev}")
            except OSError:
                pass
        self._kprobe_events.clear()
        for fd in self.prog_fds.values():
            _close(fd)
        self.prog_fds.clear()
        for m in self.maps.values():
            _close(m.fd)
        self.maps.clear()

    def recursion_misses(self, offset: int | None) -> dict[str, int]:
        """{program: runs the kernel skipped} for each of our programs with
        any: it was not run because another BPF program was running on that
        CPU (bpf_prog_info.recursion_misses, 5.12+; {} before). Each skipped
        run may have been an event, so they are shown with the losses, by
        program, to say which hooks collide."""
        if offset is None:
            return {}
        missed = {}
        for name, fd in self.prog_fds.items():
            try:
                info = sc.obj_info(fd, max(offset + 8, 256))
            except OSError:
                continue
            n = struct.unpack_from("<Q", info, offset)[0]
            if n:
                missed[name] = n
        return missed


def _close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def tracefs_root() -> str:
    for root in TRACEFS_ROOTS:
        if os.path.isdir(os.path.join(root, "events")):
            return root
    raise LoadError("tracefs is not mounted (neither /sys/kernel/tracing nor /sys/kernel/debug/tracing)")


def _write_tracefs(name: str, text: str) -> None:
    # One write(2) on an O_APPEND fd, as the kernel documents; Python's
    # open(..., "a") also seeks to the end, which tracefs refuses (EINVAL).
    fd = os.open(os.path.join(tracefs_root(), name), os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _tracepoint_id(category: str, name: str) -> int:
    path = os.path.join(tracefs_root(), "events", category, name, "id")
    try:
        with open(path) as f:
            return int(f.read())
    except OSError as e:
        raise LoadError(f"tracepoint {category}:{name} not found ({e.strerror})") from None


def _attach_perf(prog_fd: int, pfd: int) -> int:
    try:
        sc.ioctl(pfd, sc.PERF_EVENT_IOC_SET_BPF, prog_fd)
        sc.ioctl(pfd, sc.PERF_EVENT_IOC_ENABLE, 0)
    except OSError:
        _close(pfd)
        raise
    return pfd


def raise_memlock_limit() -> None:
    """Kernels before 5.11 charge BPF maps and programs to RLIMIT_MEMLOCK
    (Debian 11's 5.10 refused our maps with EPERM under its 8 MiB default);
    later ones charge the memory cgroup instead. bcc and libbpf lift the limit
    for their loaders; so does this one. The limit is this process's only."""
    soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    if soft == resource.RLIM_INFINITY:
        return
    for wanted in ((resource.RLIM_INFINITY, resource.RLIM_INFINITY), (hard, hard)):
        try:    # the hard limit can be lifted only with CAP_SYS_RESOURCE
            resource.setrlimit(resource.RLIMIT_MEMLOCK, wanted)
            return
        except (ValueError, OSError):
            continue    # the map creation that follows says why it failed, if it does


def create_maps(prog: CompiledProgram) -> dict[str, Map]:
    raise_memlock_limit()
    ncpus = sc.possible_cpus()
    maps: dict[str, Map] = {}
    try:
        for spec in prog.maps:
            max_entries = spec.max_entries
            if spec.type == sc.MAP_PERF_EVENT_ARRAY:
                max_entries = ncpus
            try:
                fd = sc.map_create(spec.type, spec.key_size, spec.value_size, max_entries,
                                   spec.flags, spec.name)
            except OSError as e:
                raise LoadError(f"cannot create BPF map {spec.name}: {e.strerror}") from None
            maps[spec.name] = Map(spec, fd, ncpus)
    except BaseException:
        for m in maps.values():
            _close(m.fd)
        raise
    return maps


def patched(insns: bytes, relocs, maps: dict[str, Map]) -> bytes:
    """The instructions with this process's map fds in place."""
    buf = bytearray(insns)
    for index, name in relocs:
        struct.pack_into("<i", buf, index * 8 + 4, maps[name].fd)
    return bytes(buf)


def load(prog: CompiledProgram, *, kprobes: tuple[KprobeSpec, ...] = (), hidden: set[str] = frozenset(),
         vmlinux_btf_id=None, on_demand: frozenset[str] = frozenset(),
         before_attach=None) -> tuple[LoadedProgram, list[str]]:
    """Load and attach every function; returns the program and notes on the
    optional kprobes that could not be placed.

    on_demand: tracepoint functions to load but leave detached.
    before_attach(loaded): called once they are loaded and the maps made,
    before anything is attached (e.g. to fill a map, or attach them first)."""
    loaded = LoadedProgram(create_maps(prog))
    notes: list[str] = []
    by_fn = {k.function: k for k in kprobes}
    fn = None
    try:
        for fn in prog.functions:
            if fn.name in on_demand:
                if not fn.name.startswith("tracepoint__"):
                    raise LoadError(f"only tracepoints attach on demand, not {fn.name}")
                category, name = fn.name[len("tracepoint__"):].split("__", 1)
                _load(loaded, prog, fn.name, patched(fn.insns, fn.relocs, loaded.maps),
                      sc.PROG_TRACEPOINT)
                loaded.on_demand[fn.name] = (category, name)
        if before_attach is not None:
            before_attach(loaded)
        for fn in prog.functions:
            if fn.name in on_demand:
                continue
            insns = patched(fn.insns, fn.relocs, loaded.maps)
            kp = by_fn.get(fn.name)
            if kp is not None:
                note = _load_kprobe(loaded, prog, fn.name, insns, kp, hidden)
                # a function with a kprobe and a kretprobe (the drop points)
                # missing for one reason is one note, not two
                if note and note.split(" ", 1)[1] not in {n.split(" ", 1)[1] for n in notes}:
                    notes.append(note)
            elif fn.name.startswith("tracepoint__"):
                category, name = fn.name[len("tracepoint__"):].split("__", 1)
                fd = _load(loaded, prog, fn.name, insns, sc.PROG_TRACEPOINT)
                pfd = sc.perf_event_open(sc.PERF_TYPE_TRACEPOINT, _tracepoint_id(category, name))
                loaded._links.append(_attach_perf(fd, pfd))
            elif fn.name.startswith("raw_tracepoint__"):
                fd = _load(loaded, prog, fn.name, insns, sc.PROG_RAW_TRACEPOINT)
                # raw_tracepoint__NAME__COPY: another program on NAME (main.c)
                tp = fn.name[len("raw_tracepoint__"):].split("__", 1)[0]
                loaded._links.append(sc.raw_tracepoint_open(fd, tp))
            elif fn.name.startswith("tp_btf__"):
                # tp_btf__NAME[__COPY]: a tracing program on tracepoint NAME,
                # found by its btf_trace_NAME typedef
                tp = fn.name[len("tp_btf__"):].split("__", 1)[0]
                btf_id = (vmlinux_btf_id or find_vmlinux_btf_id)(tp, sc.TRACE_RAW_TP)
                if btf_id <= 0:
                    raise LoadError(f"no BTF id for tracepoint {tp}")
                fd = _load(loaded, prog, fn.name, insns, sc.PROG_TRACING,
                           expected_attach_type=sc.TRACE_RAW_TP, attach_btf_id=btf_id)
                loaded._links.append(sc.raw_tracepoint_open(fd, None))
            elif fn.name.startswith(("kfunc__", "kretfunc__")):
                ret = fn.name.startswith("kretfunc__")
                target = fn.name.split("__", 1)[1]
                if target.startswith("vmlinux__"):
                    target = target[len("vmlinux__"):]
                kind = sc.TRACE_FEXIT if ret else sc.TRACE_FENTRY
                btf_id = (vmlinux_btf_id or find_vmlinux_btf_id)(target, kind)
                if btf_id <= 0:
                    raise LoadError(f"no BTF id for kernel function {target}")
                fd = _load(loaded, prog, fn.name, insns, sc.PROG_TRACING,
                           expected_attach_type=kind, attach_btf_id=btf_id)
                loaded._links.append(sc.raw_tracepoint_open(fd, None))
            else:
                raise LoadError(f"do not know how to attach {fn.name}")
    except OSError as e:
        loaded.close()
        raise LoadError(f"cannot attach {fn.name if fn else 'the programs'}: {e.strerror}") from None
    except BaseException:
        loaded.close()
        raise
    return loaded, notes


def kernel_name(function: str) -> str:
    """The name the kernel (and bpftool) shows for a program: 15 characters
    at most, and distinct for every hook (bcc's function names are not: all
    four accept syscall tracepoints begin `tracepoint__sys`)."""
    copy = ""
    if function.startswith(("raw_tracepoint__", "tp_btf__")) and function.count("__") == 2:
        function, copy = function.rsplit("__", 1)    # a second program on one tracepoint
    if function.startswith(("tracepoint__", "raw_tracepoint__", "tp_btf__")):
        event = function.split("__")[-1]
        for long, short in (("inet_sock_set_state", "sock_set_state"), ("sys_", ""),
                            ("retransmit", "rtx")):
            event = event.replace(long, short)
        return event[:14] + "2" if copy else event[:15]
    return function[:15]


def _load(loaded: LoadedProgram, prog: CompiledProgram, name: str, insns: bytes, ptype: int,
          **kw) -> int:
    try:
        fd, _ = sc.prog_load(ptype, insns, name=kernel_name(name), license=prog.license.encode(),
                             kern_version=prog.kern_version, **kw)
    except OSError as e:
        if e.errno in (errno.EPERM, errno.EACCES) and os.geteuid() != 0:
            raise LoadError("loading BPF programs needs root") from None
        try:   # again, with the verifier's log for the message
            fd, _ = sc.prog_load(ptype, insns, name=kernel_name(name), license=prog.license.encode(),
                                 kern_version=prog.kern_version, log_size=1 << 20, **kw)
        except OSError as e2:
            raise LoadError(f"the kernel refuses BPF program {name}: {e2.strerror}") from None
    loaded.prog_fds[name] = fd
    return fd


def _load_kprobe(loaded, prog, name, insns, kp: KprobeSpec, hidden: set[str]) -> str:
    kind = "kretprobe" if kp.ret else "kprobe"
    try:
        if kp.target in hidden:
            raise LookupError("hidden by CONNSCOPE_HIDE_FUNCTIONS")
        fd = _load(loaded, prog, name, insns, sc.PROG_KPROBE)
        link, note = _attach_kprobe(loaded, fd, kp)
        loaded._links.append(link)
        if note:
            return note
    except (OSError, LookupError, LoadError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        if not kp.optional:
            raise LoadError(f"cannot attach {kind} to {kp.target}: {why}") from None
        return f"{kind} {kp.target} not attached ({why}); {kp.optional}"
    return ""


def _pmu_type() -> tuple[int, int]:
    with open(os.path.join(KPROBE_PMU, "type")) as f:
        ptype = int(f.read())
    bit = 0
    try:
        with open(os.path.join(KPROBE_PMU, "format", "retprobe")) as f:
            bit = int(f.read().strip().split(":")[1])
    except (OSError, IndexError, ValueError):
        pass
    return ptype, bit


EVENT_GROUP = "connscope_"
_EVENT_SERIAL = itertools.count(1)


def stale_events(kprobe_events: str, alive) -> list[str]:
    """The "group/name" of kprobe events a connscope that is gone left behind
    (kill -9 skips close()): groups connscope_<pid> whose pid is not alive."""
    out = []
    for line in kprobe_events.splitlines():
        head = line.split(None, 1)[0] if line.strip() else ""
        event = head.split(":", 1)[1] if ":" in head else ""
        group = event.split("/", 1)[0]
        if group.startswith(EVENT_GROUP) and group[len(EVENT_GROUP):].isdigit():
            if not alive(int(group[len(EVENT_GROUP):])):
                out.append(event)
    return out


def _pid_alive(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")


def _remove_stale_events() -> None:
    try:
        with open(os.path.join(tracefs_root(), "kprobe_events")) as f:
            text = f.read()
    except (OSError, LoadError):
        return
    for event in stale_events(text, _pid_alive):
        try:
            _write_tracefs("kprobe_events", f"-:{event}")
        except OSError:
            pass   # in use by someone: leave it


def _attach_kprobe(loaded: LoadedProgram, prog_fd: int, kp: KprobeSpec) -> tuple[int, str]:
    """Returns (fd to keep, note or "")."""
    note = ""
    if kp.ret and kp.maxactive:
        _remove_stale_events()
        # The perf kprobe PMU has no maxactive; kprobe_events does.
        # unique per load: one process may hold two sessions (tests do)
        event = f"{EVENT_GROUP}{os.getpid()}/{kp.function}_{next(_EVENT_SERIAL)}"
        try:
            _write_tracefs("kprobe_events", f"r{kp.maxactive}:{event} {kp.target}")
        except OSError as e:
            # Old kernel without maxactive, or no such function (the PMU
            # attach below then says so).
            note = (f"kretprobe {kp.target} has the kernel's default maxactive "
                    f"(kprobe_events refused r{kp.maxactive}: {e.strerror}); returns of more "
                    f"threads blocked in it at once than that are missed")
        else:
            loaded._kprobe_events.append(event)
            group, name = event.split("/")
            pfd = sc.perf_event_open(sc.PERF_TYPE_TRACEPOINT, _tracepoint_id(group, name))
            return _attach_perf(prog_fd, pfd), ""
    ptype, retbit = _pmu_type()
    target = ctypes.create_string_buffer(kp.target.encode())
    pfd = sc.perf_event_open(ptype, (1 << retbit) if kp.ret else 0,
                             config1=ctypes.addressof(target))
    return _attach_perf(prog_fd, pfd), note


_libbpf = None


def find_vmlinux_btf_id(function: str, attach_type: int) -> int:
    """BTF type id of a kernel function, as libbpf finds it (negative errno)."""
    global _libbpf
    if _libbpf is None:
        try:
            _libbpf = ctypes.CDLL("libbpf.so.1")
        except OSError:
            try:
                _libbpf = ctypes.CDLL("libbpf.so.0")
            except OSError:
                return -errno.ENOENT
        _libbpf.libbpf_find_vmlinux_btf_id.argtypes = (ctypes.c_char_p, ctypes.c_int)
        _libbpf.libbpf_find_vmlinux_btf_id.restype = ctypes.c_int
    return _libbpf.libbpf_find_vmlinux_btf_id(function.encode(), attach_type)
