"""Building the BPF program for one backend (compiled or from the cache).

The C sources in bpf/ are compiled as they are; everything that varies
(backend, transport, filters, struct offsets) is a -D switch, never text
spliced into the source.
"""
from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tracer.events import BPF_DIR
from tracer.filters import Filters
from tracer.probes import compiled, loader
from tracer.probes.compiled import CompiledProgram
from tracer.probes.features import OPTIONAL_HOOKS

MAIN_SOURCE = BPF_DIR / "main.c"
BACKENDS = ("tracepoint", "kprobe", "fentry")

# kprobe wrappers in bpf/main.c: (function in bpf/main.c, kernel function).
# Which kernel functions are optional, and what is lost without each, is in
# features.OPTIONAL_HOOKS.
KPROBES = (
    ("kp_tcp_v4_connect", "tcp_v4_connect"),
    ("kp_tcp_v6_connect", "tcp_v6_connect"),
    ("kp_inet_stream_connect", "inet_stream_connect"),
    ("kp_inet_csk_accept", "inet_csk_accept"),
    ("kp_tcp_conn_request", "tcp_conn_request"),
    ("kp_tcp_v4_syn_recv_sock", "tcp_v4_syn_recv_sock"),
    ("kp_tcp_v6_syn_recv_sock", "tcp_v6_syn_recv_sock"),
)
KRETPROBES = (("kretp_inet_csk_accept", "inet_csk_accept"),
              ("kretp_inet_stream_connect", "inet_stream_connect"),
              # accept-queue drops are decided when the drop points return
              ("kretp_tcp_conn_request", "tcp_conn_request"),
              ("kretp_tcp_v4_syn_recv_sock", "tcp_v4_syn_recv_sock"),
              ("kretp_tcp_v6_syn_recv_sock", "tcp_v6_syn_recv_sock"))
# Threads blocked in accept() each hold a kretprobe instance; a server with
# many acceptor threads needs more than the kernel's default (2 x CPUs).
KRETPROBE_MAXACTIVE = 4096


@dataclass(frozen=True)
class BuildOptions:
    backend: str
    filters: Filters
    ringbuf: bool = True
    # 8 MiB: ~30,000 connections (four records each) before loss. 4 MiB lost
    # 104,374 records in 30 s at 26,000 connections/s, where the tracer keeps
    # up on average but not through every moment two busy cores leave it; 8
    # MiB lost none, for +5 MB of peak RSS (its pages are mapped into us;
    # BENCHMARKS.md section 17)
    ringbuf_pages: int = 2048
    max_inflight: int = 65536
    # Test hook: the bpf/listeners.h defaults unless set (tests/kernel/test_losses.py)
    max_handshakes: int | None = None
    max_connect_calls: int | None = None   # bpf/connect.h's default unless set (test_losses.py)
    # --cgroup/--container also match the cgroups below the selected ones
    # (tracer/probes/cgroup_filter.py ancestors_matched)
    cgroup_ancestors: bool = True


def cflags(opts: BuildOptions, offset_flags: list[str]) -> list[str]:
    if opts.backend not in BACKENDS:
        raise ValueError(f"unknown backend {opts.backend!r}")
    flags = [f"-DBACKEND_{opts.backend.upper()}",
             f"-DMAX_INFLIGHT={opts.max_inflight}"]
    if opts.max_handshakes is not None:
        flags.append(f"-DMAX_HANDSHAKES={opts.max_handshakes}")
    if opts.max_connect_calls is not None:
        flags.append(f"-DMAX_CONNECT_CALLS={opts.max_connect_calls}")
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
    if f.cgroups:
        flags.append("-DFILTER_CGROUP")
        if opts.cgroup_ancestors:
            flags.append("-DCGROUP_ANCESTORS")
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


class CompileFailed(Exception):
    """bcc could not compile the program; the message is its first error."""


def kprobe_specs(hidden: set[str] = frozenset()) -> tuple[loader.KprobeSpec, ...]:
    """The kprobe backend's attachments; a missing optional function (IPv6
    built as a module, a function inlined by the compiler, one hidden by the
    test hook CONNSCOPE_HIDE_FUNCTIONS) becomes a note, not a failure."""
    specs = [loader.KprobeSpec(fn, target, optional=OPTIONAL_HOOKS.get(target, ""))
             for fn, target in KPROBES]
    specs += [loader.KprobeSpec(fn, target, ret=True, maxactive=KRETPROBE_MAXACTIVE,
                                optional=OPTIONAL_HOOKS.get(target, ""))
              for fn, target in KRETPROBES]
    return tuple(specs)


# The compiler child runs as root and executes whatever Python finds first.
# -I: no PYTHON* variables, no user site-packages, and neither the current
# directory nor a script's directory on sys.path (the venv's and the system's
# site-packages, where bcc is, still are). The tracer package is then loaded
# from the file the parent itself runs from, by path, never by a sys.path
# search; cwd is / and the environment is only what bcc needs.
_CHILD = ("import importlib.util, sys\n"
          "spec = importlib.util.spec_from_file_location('tracer', sys.argv[1])\n"
          "tracer = importlib.util.module_from_spec(spec)\n"
          "sys.modules['tracer'] = tracer\n"
          "spec.loader.exec_module(tracer)\n"
          "from tracer.probes.compiler import main\n"
          "sys.exit(main())\n")
CHILD_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


def child_command() -> list[str]:
    """How connscope starts a Python child: isolated, the package by path."""
    import tracer
    return [sys.executable, "-I", "-c", _CHILD, str(Path(tracer.__file__).resolve())]


def child_environment(env: dict[str, str]) -> dict[str, str]:
    """Nothing of the caller's environment but `env` (BCC_KERNEL_SOURCE)."""
    return {"PATH": CHILD_PATH, "LANG": "C", "LC_ALL": "C", **env}


def compile_in_child(source: str, flags: list[str], env: dict[str, str],
                     timeout: float = 600.0) -> CompiledProgram:
    """Run tracer/probes/compiler.py in a child process: clang's heap and
    LLVM's mappings never enter the tracer's own process."""
    try:
        proc = subprocess.run(child_command(), input=json.dumps({"source": source, "cflags": flags}),
                              capture_output=True, text=True, env=child_environment(env), cwd="/",
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        raise CompileFailed(f"compiling the BPF programs took longer than {timeout:.0f} s") from None
    except OSError as e:
        raise CompileFailed(f"cannot start the compiler: {e.strerror}") from None
    if proc.returncode != 0:
        raise CompileFailed(first_error(proc.stderr) or f"compiler exited with {proc.returncode}")
    try:
        return CompiledProgram.from_json(json.loads(proc.stdout))
    except (ValueError, KeyError, TypeError) as e:
        raise CompileFailed(f"unreadable compiler output ({e})") from None


_NOISE = ("modprobe: not found", "chdir(", "In file included from", "warning:")


def first_error(stderr: str) -> str:
    """The line of the compiler's output that says what went wrong: clang's
    first error, else bcc's own complaint, else ours."""
    lines = [l.strip() for l in stderr.splitlines() if l.strip()]
    for line in lines:
        if "error:" in line:
            return line
    for line in lines:
        if not line.startswith("connscope compiler:") and not any(n in line for n in _NOISE):
            return line
    return lines[-1] if lines else ""


def build(opts: BuildOptions, offset_flags: list[str], env: dict[str, str],
          btf: bytes | None) -> tuple[CompiledProgram, bool]:
    """The compiled program for these options: from the cache when this
    exact source, flag set, header tree, kernel and BTF were compiled
    before, else compiled now (and cached). Returns (program, from cache)."""
    source = source_text()
    flags = cflags(opts, offset_flags)
    key = compiled.cache_key(source, flags, env, kernel=compiled.kernel_identity(), btf=btf,
                             toolchain=_toolchain())
    prog = compiled.load(key)
    if prog is not None:
        return prog, True
    prog = compile_in_child(source, flags, env)
    compiled.store(key, prog)
    return prog, False


def _toolchain() -> str:
    """bcc's version: a new compiler may emit other instructions."""
    for path in ("/usr/lib/x86_64-linux-gnu/libbcc.so.0", "/usr/lib64/libbcc.so.0",
                 "/usr/lib/aarch64-linux-gnu/libbcc.so.0", "/usr/lib/libbcc.so.0"):
        try:
            real = os.path.realpath(path)
            st = os.stat(real)
            return f"{real}:{st.st_size}:{int(st.st_mtime)}"
        except OSError:
            continue
    return "bcc"


def fill_filter_maps(maps: dict, f: Filters) -> None:
    if f.pids:
        for pid in f.pids:
            maps["filter_pid"].update(struct.pack("<I", pid), b"\1")
    if f.ports:
        for port in f.ports:
            maps["filter_port"].update(struct.pack("<H", port), b"\1")
    if f.comm:
        maps["filter_comm"].update(struct.pack("<i", 0), f.comm.encode()[:15].ljust(16, b"\0"))
    for i, target in enumerate(f.cgroups):    # struct cgroup_filter (bpf/event.h)
        maps["filter_cgroup"].update(struct.pack("<I", i),
                                     struct.pack("<QII", target.id, target.level, 0))
