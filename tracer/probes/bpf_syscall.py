"""The bpf(2) and perf_event_open(2) calls connscope makes itself.

Programs come compiled (tracer/probes/compiled.py); loading them, creating
their maps, attaching and reading them needs only these syscalls, so the
tracer's own process never maps LLVM. Attribute layouts are the kernel's
stable UAPI (include/uapi/linux/bpf.h, perf_event.h); the kernel accepts a
shorter attribute than its own and zero-fills the rest.
"""
from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct

_SYSCALLS = {  # (bpf, perf_event_open)
    "x86_64": (321, 298), "aarch64": (280, 241), "riscv64": (280, 241),
    "ppc64le": (361, 319), "s390x": (351, 331),
}
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long)
_libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
_libc.ioctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong)

# commands
MAP_CREATE, MAP_LOOKUP_ELEM, MAP_UPDATE_ELEM, MAP_DELETE_ELEM, MAP_GET_NEXT_KEY = 0, 1, 2, 3, 4
PROG_LOAD, OBJ_GET_INFO_BY_FD, RAW_TRACEPOINT_OPEN = 5, 15, 17
MAP_LOOKUP_BATCH = 24
_NO_BATCH = (errno.EINVAL, errno.EOPNOTSUPP, 524)   # 524: the kernel's ENOTSUPP
# map types
MAP_HASH, MAP_ARRAY, MAP_PERF_EVENT_ARRAY, MAP_PERCPU_HASH, MAP_PERCPU_ARRAY = 1, 2, 4, 5, 6
MAP_RINGBUF = 27
PERCPU_MAPS = (MAP_PERCPU_HASH, MAP_PERCPU_ARRAY)
# program types and attach types
PROG_KPROBE, PROG_TRACEPOINT, PROG_RAW_TRACEPOINT, PROG_TRACING = 2, 5, 17, 26
TRACE_RAW_TP, TRACE_FENTRY, TRACE_FEXIT = 23, 24, 25

PERF_TYPE_SOFTWARE, PERF_TYPE_TRACEPOINT = 1, 2
PERF_COUNT_SW_BPF_OUTPUT = 10
PERF_SAMPLE_RAW = 1 << 10
PERF_FLAG_FD_CLOEXEC = 8
PERF_EVENT_IOC_ENABLE = 0x2400
PERF_EVENT_IOC_SET_BPF = 0x40042408

PROT_READ, PROT_WRITE, MAP_SHARED = 1, 2, 1
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
_MAP_FAILED = ctypes.c_void_p(-1).value


class BPFSyscallError(OSError):
    """A bpf() or perf_event_open() call failed; .errno says why, and for a
    program load with a log, .log holds the verifier's words."""

    log = ""


def _arch() -> tuple[int, int]:
    nr = _SYSCALLS.get(platform.machine())
    if nr is None:
        raise BPFSyscallError(errno.ENOSYS, f"no bpf() syscall number known for {platform.machine()}")
    return nr


def errno_text(err: int) -> str:
    return f"{errno.errorcode.get(err, str(err))} ({os.strerror(err)})"


def bpf(cmd: int, attr) -> int:
    """bpf(cmd, attr) -> result; raises BPFSyscallError."""
    ret = _libc.syscall(ctypes.c_long(_arch()[0]), ctypes.c_int(cmd), ctypes.byref(attr),
                        ctypes.c_uint(ctypes.sizeof(attr)))
    if ret < 0:
        err = ctypes.get_errno()
        raise BPFSyscallError(err, errno_text(err))
    return ret


def map_create(map_type: int, key_size: int, value_size: int, max_entries: int,
               flags: int = 0, name: str = "") -> int:
    attr = ctypes.create_string_buffer(72)
    struct.pack_into("<IIIII", attr, 0, map_type, key_size, value_size, max_entries, flags)
    attr[28:44] = name.encode()[:15].ljust(16, b"\0")
    try:
        return bpf(MAP_CREATE, attr)
    except BPFSyscallError as e:
        if e.errno != errno.EINVAL or not name:
            raise
    attr[28:44] = b"\0" * 16   # kernels before 4.15 have no map names
    return bpf(MAP_CREATE, attr)


def prog_load(prog_type: int, insns: bytes, *, name: str = "", license: bytes = b"GPL",
              kern_version: int = 0, expected_attach_type: int = 0, attach_btf_id: int = 0,
              log_size: int = 0) -> tuple[int, str]:
    """Load a program; returns (fd, ""). On failure raises BPFSyscallError
    whose message ends with the verifier's last lines when log_size > 0."""
    code = ctypes.create_string_buffer(insns, len(insns))
    lic = ctypes.create_string_buffer(license)
    log = ctypes.create_string_buffer(log_size) if log_size else None
    attr = ctypes.create_string_buffer(120)
    struct.pack_into("<IIQQIIQII", attr, 0, prog_type, len(insns) // 8, ctypes.addressof(code),
                     ctypes.addressof(lic), 1 if log else 0, log_size,
                     ctypes.addressof(log) if log else 0, kern_version, 0)
    attr[48:64] = name.encode()[:15].ljust(16, b"\0")
    struct.pack_into("<I", attr, 68, expected_attach_type)
    struct.pack_into("<I", attr, 108, attach_btf_id)
    try:
        return bpf(PROG_LOAD, attr), ""
    except BPFSyscallError as e:
        text = log.value.decode(errors="replace").strip() if log else ""
        if text:
            tail = " | ".join(text.splitlines()[-3:])
            err = BPFSyscallError(e.errno, f"{e.strerror}: {tail}")
            err.log = text
            raise err from None
        raise


def _elem_attr(fd: int, key, value, flags: int = 0) -> ctypes.Array:
    attr = ctypes.create_string_buffer(32)
    struct.pack_into("<IIQQQ", attr, 0, fd, 0,
                     ctypes.addressof(key) if key is not None else 0,
                     ctypes.addressof(value) if value is not None else 0, flags)
    return attr


def _found(cmd: int, attr) -> bool:
    """Run a map command whose ENOENT means "no such entry" (or no next
    key): False then; other errors raise."""
    try:
        bpf(cmd, attr)
    except BPFSyscallError as e:
        if e.errno == errno.ENOENT:
            return False
        raise
    return True


def map_lookup(fd: int, key: bytes, value_size: int) -> bytes | None:
    k = ctypes.create_string_buffer(key, len(key) or 1)
    v = ctypes.create_string_buffer(value_size)
    return v.raw if _found(MAP_LOOKUP_ELEM, _elem_attr(fd, k, v)) else None


def map_update(fd: int, key: bytes, value: bytes, flags: int = 0) -> None:
    k = ctypes.create_string_buffer(key, len(key) or 1)
    v = ctypes.create_string_buffer(value, len(value) or 1)
    bpf(MAP_UPDATE_ELEM, _elem_attr(fd, k, v, flags))


def map_delete(fd: int, key: bytes) -> bool:
    k = ctypes.create_string_buffer(key, len(key) or 1)
    return _found(MAP_DELETE_ELEM, _elem_attr(fd, k, None))


def map_keys(fd: int, key_size: int, limit: int = 1 << 22) -> list[bytes]:
    """All keys, by GET_NEXT_KEY; bounded by `limit` (a map never holds more)."""
    out: list[bytes] = []
    nxt = ctypes.create_string_buffer(key_size)
    attr = _elem_attr(fd, None, nxt)
    cur = None
    while len(out) < limit and _found(MAP_GET_NEXT_KEY, attr):
        out.append(nxt.raw)
        if cur is None:
            cur = ctypes.create_string_buffer(key_size)
            struct.pack_into("<Q", attr, 8, ctypes.addressof(cur))
        ctypes.memmove(cur, nxt, key_size)
    return out


def map_lookup_batch(fd: int, key_size: int, value_size: int, chunk: int = 256,
                     limit: int = 1 << 22) -> list[tuple[bytes, bytes]] | None:
    """All (key, value) pairs, `chunk` at a time in one syscall each
    (BPF_MAP_LOOKUP_BATCH, 5.6+); None when the kernel or map type has no
    batch operations (then walk the keys). The buffers are a chunk's (at
    most the map's size) and only the entries copied are read back: 4,096
    entries' buffers made, zeroed and copied whole a call were most of an
    idle tracer's map reads (BENCHMARKS.md section 27)."""
    chunk = max(1, min(chunk, limit))
    keys = ctypes.create_string_buffer(key_size * chunk)
    values = ctypes.create_string_buffer(value_size * chunk)
    token = max(key_size, 8)            # the kernel's cursor between calls
    in_batch = ctypes.create_string_buffer(token)
    out_batch = ctypes.create_string_buffer(token)
    attr = ctypes.create_string_buffer(56)
    out: list[tuple[bytes, bytes]] = []
    first = True
    while len(out) < limit:
        struct.pack_into("<QQQQII", attr, 0, 0 if first else ctypes.addressof(in_batch),
                         ctypes.addressof(out_batch), ctypes.addressof(keys),
                         ctypes.addressof(values), chunk, fd)
        done = False
        try:
            bpf(MAP_LOOKUP_BATCH, attr)
        except BPFSyscallError as e:
            if e.errno != errno.ENOENT:
                if first and e.errno in _NO_BATCH:
                    return None
                raise
            done = True     # the last call: `count` still says how many it copied
        n = struct.unpack_from("<I", attr, 32)[0]
        kraw, vraw = ctypes.string_at(keys, n * key_size), ctypes.string_at(values, n * value_size)
        out += [(kraw[i * key_size:(i + 1) * key_size], vraw[i * value_size:(i + 1) * value_size])
                for i in range(n)]
        if done:
            break
        ctypes.memmove(in_batch, out_batch, token)
        first = False
    return out


def obj_info(fd: int, size: int = 256) -> bytes:
    info = ctypes.create_string_buffer(size)
    attr = ctypes.create_string_buffer(16)
    struct.pack_into("<IIQ", attr, 0, fd, size, ctypes.addressof(info))
    bpf(OBJ_GET_INFO_BY_FD, attr)
    return info.raw


def raw_tracepoint_open(prog_fd: int, name: str | None) -> int:
    """Attach a raw tracepoint program, or (name None) a tracing program at
    the attach_btf_id it was loaded with. Returns the link fd."""
    buf = ctypes.create_string_buffer(name.encode()) if name else None
    attr = ctypes.create_string_buffer(16)
    struct.pack_into("<QI", attr, 0, ctypes.addressof(buf) if buf else 0, prog_fd)
    return bpf(RAW_TRACEPOINT_OPEN, attr)


def perf_event_open(ptype: int, config: int, *, cpu: int = 0, config1: int = 0,
                    sample_type: int = 0, wakeup_events: int = 1) -> int:
    attr = ctypes.create_string_buffer(112)  # PERF_ATTR_SIZE_VER5
    struct.pack_into("<IIQQQ", attr, 0, ptype, 112, config, 1, sample_type)  # sample_period=1
    struct.pack_into("<I", attr, 48, wakeup_events)
    struct.pack_into("<Q", attr, 56, config1)
    fd = _libc.syscall(ctypes.c_long(_arch()[1]), attr, ctypes.c_int(-1), ctypes.c_int(cpu),
                       ctypes.c_int(-1), ctypes.c_ulong(PERF_FLAG_FD_CLOEXEC))
    if fd < 0:
        err = ctypes.get_errno()
        raise BPFSyscallError(err, errno_text(err))
    return fd


def ioctl(fd: int, request: int, arg: int = 0) -> None:
    if _libc.ioctl(fd, request, arg) < 0:
        err = ctypes.get_errno()
        raise BPFSyscallError(err, errno_text(err))


def mmap(fd: int, length: int, prot: int, offset: int = 0) -> int:
    addr = _libc.mmap(None, length, prot, MAP_SHARED, fd, offset)
    if addr is None or addr == _MAP_FAILED:
        err = ctypes.get_errno()
        raise BPFSyscallError(err, errno_text(err))
    return addr


def munmap(addr: int, length: int) -> None:
    _libc.munmap(addr, length)


def possible_cpus(path: str = "/sys/devices/system/cpu/possible") -> int:
    """Number of possible CPUs: per-CPU map values have one slot each."""
    return max(_cpu_list(open(path).read())) + 1


def online_cpus(path: str = "/sys/devices/system/cpu/online") -> list[int]:
    return _cpu_list(open(path).read())


def _cpu_list(text: str) -> list[int]:
    out: list[int] = []
    for part in text.strip().split(","):
        if "-" in part:
            a, b = part.split("-")
            out.extend(range(int(a), int(b) + 1))
        elif part:
            out.append(int(part))
    return out
