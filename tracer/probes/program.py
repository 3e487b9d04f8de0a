"""Building and loading the BPF program for one backend.

The C sources in bpf/ are compiled as they are; everything that varies
(backend, transport, filters, struct offsets) is a -D switch, never text
spliced into the source.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from tracer.events import BPF_DIR
from tracer.filters import Filters
from tracer.probes.features import OPTIONAL_HOOKS, hidden_functions

MAIN_SOURCE = BPF_DIR / "main.c"
BACKENDS = ("tracepoint", "kprobe", "fentry")

# kprobe wrappers in bpf/main.c: (function in bpf/main.c, kernel function).
# Which kernel functions are optional, and what is lost without each, is in
# features.OPTIONAL_HOOKS.
KPROBES = (
    ("kp_tcp_v4_connect", "tcp_v4_connect"),
    ("kp_tcp_v6_connect", "tcp_v6_connect"),
    ("kp_inet_csk_accept", "inet_csk_accept"),
    ("kp_tcp_conn_request", "tcp_conn_request"),
    ("kp_tcp_v4_syn_recv_sock", "tcp_v4_syn_recv_sock"),
    ("kp_tcp_v6_syn_recv_sock", "tcp_v6_syn_recv_sock"),
)
KRETPROBES = (("kretp_inet_csk_accept", "inet_csk_accept"),)
# Threads blocked in accept() each hold a kretprobe instance; a server with
# many acceptor threads needs more than the kernel's default (2 x CPUs).
KRETPROBE_MAXACTIVE = 4096


@dataclass(frozen=True)
class BuildOptions:
    backend: str
    filters: Filters
    ringbuf: bool = True
    ringbuf_pages: int = 1024  # 4 MiB: ~40k connect events before loss
    max_inflight: int = 65536


def cflags(opts: BuildOptions, offset_flags: list[str]) -> list[str]:
    if opts.backend not in BACKENDS:
        raise ValueError(f"unknown backend {opts.backend!r}")
    flags = [f"-DBACKEND_{opts.backend.upper()}",
             f"-DMAX_INFLIGHT={opts.max_inflight}"]
    if opts.ringbuf:
        flags.append(f"-DRINGBUF_PAGES={opts.ringbuf_pages}")
    else:
        flags.append("-DUSE_PERF_BUFFER")
    f = opts.filters
    if f.pids:
        flags.append("-DFILTER_PID")
    if f.comm:
        flags.append("-DFILTER_COMM")
    if f.ports:
        flags.append("-DFILTER_PORT")
    if f.family:
        flags.append(f"-DFILTER_FAMILY={2 if f.family == 4 else 10}")
    return flags + list(offset_flags)


_LOCAL_INCLUDE = re.compile(r'^#include "([\w.]+)"\s*$', re.M)


def source_text(path: Path = MAIN_SOURCE, _seen: set | None = None) -> str:
    """main.c with its local includes inlined.

    bcc rewrites map calls (`table.lookup(...)`) only in the main file it is
    given, never in files it reads from disk; so the shared handlers in
    bpf/*.h are inlined here, each once.
    """
    seen = set() if _seen is None else _seen

    def inline(m):
        name = m.group(1)
        if name in seen:
            return f"/* {name}: already included */"
        seen.add(name)
        return f"/* --- {name} --- */\n" + source_text(BPF_DIR / name, seen)

    return _LOCAL_INCLUDE.sub(inline, path.read_text())


def load(opts: BuildOptions, offset_flags: list[str], env: dict[str, str]):
    """Compile and load; returns the bcc.BPF object with hooks attached, and
    notes on optional hooks that could not be placed."""
    os.environ.update(env)
    from bcc import BPF  # only the probe layer imports bcc

    bpf = BPF(text=source_text().encode(), cflags=cflags(opts, offset_flags))
    notes = []
    if opts.backend == "kprobe":
        notes = _attach_kprobes(bpf, hidden_functions())
    elif opts.backend == "fentry":
        # bcc attached every KFUNC_PROBE compiled in; fentry_cflags left out
        # the absent optional functions.
        hidden = hidden_functions()
        notes = [f"fentry {name} not attached "
                 f"({'hidden by CONNSCOPE_HIDE_FUNCTIONS' if name in hidden else 'not in kernel BTF'}); {lost}"
                 for name, lost in OPTIONAL_HOOKS.items()
                 if f"-DNO_FENTRY_{name.upper()}" in offset_flags]
    _fill_filter_maps(bpf, opts.filters)
    return bpf, notes


def _attach_kprobes(bpf, hidden: set[str]) -> list[str]:
    """Attach every kprobe; a missing optional function (IPv6 built as a
    module, a function inlined by the compiler, one hidden by the test hook
    CONNSCOPE_HIDE_FUNCTIONS) is a note, not a failure."""
    notes = []
    for kind, table in (("kprobe", KPROBES), ("kretprobe", KRETPROBES)):
        for fn, target in table:
            try:
                if target in hidden:
                    raise LookupError("hidden by CONNSCOPE_HIDE_FUNCTIONS")
                if kind == "kprobe":
                    bpf.attach_kprobe(event=target.encode(), fn_name=fn.encode())
                else:
                    bpf.attach_kretprobe(event=target.encode(), fn_name=fn.encode(),
                                         maxactive=KRETPROBE_MAXACTIVE)
            except Exception as e:
                if target not in OPTIONAL_HOOKS:
                    raise RuntimeError(f"cannot attach {kind} to {target}: {e}") from e
                notes.append(f"{kind} {target} not attached ({e}); {OPTIONAL_HOOKS[target]}")
    return notes


def _fill_filter_maps(bpf, f: Filters) -> None:
    import ctypes as ct

    if f.pids:
        table = bpf["filter_pid"]
        for pid in f.pids:
            table[ct.c_uint32(pid)] = ct.c_uint8(1)
    if f.ports:
        table = bpf["filter_port"]
        for port in f.ports:
            table[ct.c_uint16(port)] = ct.c_uint8(1)
    if f.comm:
        table = bpf["filter_comm"]
        leaf = table.Leaf()
        leaf.comm = f.comm.encode()[:15]
        table[ct.c_int(0)] = leaf
