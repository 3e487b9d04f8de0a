"""A compiled BPF program, and the cache that keeps it between runs.

Compiling with bcc (clang and LLVM in-process) took ~0.35 s and left ~85 MB
of heap behind; the result depends only on the source, the -D flags, the
kernel (its tracepoint formats, BTF) and the header tree. So compilation runs
once, in a child process (tracer/probes/compiler.py), and its product, the
instructions of each function with the places where map fds go and the specs
of the maps, is kept here; every later start only creates maps and loads.

The cache holds code that root loads into the kernel: it lives in a root-only
directory, and a file is trusted only when it and its directory are owned by
root and writable by nobody else, and when it names the key it was stored
under.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import tempfile
from dataclasses import asdict, dataclass, field

FORMAT = 1
DEFAULT_DIR = "/var/cache/connscope/programs"
CACHE_ENV = "CONNSCOPE_PROGRAM_CACHE"   # a directory, or "off"
KEEP = 16                               # newest entries kept


@dataclass
class MapSpec:
    name: str
    type: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int = 0


@dataclass
class FunctionSpec:
    name: str
    insns: bytes
    relocs: list[tuple[int, str]] = field(default_factory=list)  # (insn index, map name)


@dataclass
class CompiledProgram:
    license: str
    kern_version: int
    maps: list[MapSpec]
    functions: list[FunctionSpec]

    def to_json(self) -> dict:
        return {
            "format": FORMAT, "license": self.license, "kern_version": self.kern_version,
            "maps": [asdict(m) for m in self.maps],
            "functions": [{"name": f.name, "insns": base64.b64encode(f.insns).decode(),
                           "relocs": [list(r) for r in f.relocs]} for f in self.functions],
        }

    @classmethod
    def from_json(cls, d: dict) -> "CompiledProgram":
        if d.get("format") != FORMAT:
            raise ValueError(f"compiled program format {d.get('format')!r}, expected {FORMAT}")
        return cls(
            license=d["license"], kern_version=int(d["kern_version"]),
            maps=[MapSpec(**m) for m in d["maps"]],
            functions=[FunctionSpec(f["name"], base64.b64decode(f["insns"]),
                                    [(int(i), str(n)) for i, n in f["relocs"]])
                       for f in d["functions"]],
        )

    def function(self, name: str) -> FunctionSpec:
        for f in self.functions:
            if f.name == name:
                return f
        raise KeyError(name)


def cache_key(source: str, cflags: list[str], env: dict[str, str], *, kernel: str,
              btf: bytes | None, toolchain: str) -> str:
    """Everything the compiled instructions depend on."""
    h = hashlib.blake2b(digest_size=20)
    for part in (str(FORMAT), source, "\0".join(cflags),
                 "\0".join(f"{k}={v}" for k, v in sorted(env.items())), kernel, toolchain):
        h.update(part.encode())
        h.update(b"\xff")
    h.update(btf or b"no btf")
    return h.hexdigest()


def kernel_identity() -> str:
    """Release and build string: tracepoint formats change with either."""
    try:
        with open("/proc/version") as f:
            version = f.read().strip()
    except OSError:
        version = ""
    return f"{os.uname().release}|{os.uname().machine}|{version}"


def cache_dir() -> str | None:
    d = os.environ.get(CACHE_ENV, DEFAULT_DIR)
    return None if d == "off" else d


def _trusted(path: str) -> bool:
    """Owned by root (or by us, when not root) and writable by nobody else."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    if stat.S_ISLNK(st.st_mode):
        return False
    return st.st_uid == os.geteuid() and not (st.st_mode & 0o022)


def load(key: str, directory: str | None = None) -> CompiledProgram | None:
    directory = directory or cache_dir()
    if directory is None:
        return None
    path = os.path.join(directory, key + ".json")
    if not (_trusted(directory) and _trusted(path)):
        return None
    try:
        with open(path) as f:
            d = json.load(f)
        if d.get("key") != key:
            return None
        prog = CompiledProgram.from_json(d)
    except (OSError, ValueError, KeyError, TypeError):
        return None   # a damaged entry is recompiled and replaced
    try:
        os.utime(path)   # most recently used stays longest
    except OSError:
        pass
    return prog


def store(key: str, prog: CompiledProgram, directory: str | None = None) -> str | None:
    """Write atomically; returns the path, or None when the cache is off or
    cannot be written (then every start compiles: slower, still correct)."""
    directory = directory or cache_dir()
    if directory is None:
        return None
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        if not _trusted(directory):
            return None
        d = prog.to_json()
        d["key"] = key
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(d, f)
            os.chmod(tmp, 0o600)
            path = os.path.join(directory, key + ".json")
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        _prune(directory)
        return path
    except OSError:
        return None


def status(directory: str | None = None) -> tuple[bool, str]:
    """(usable, one line) for `connscope doctor`."""
    directory = directory or cache_dir()
    if directory is None:
        return True, f"off ({CACHE_ENV}=off): every start compiles"
    if not os.path.exists(directory):
        return True, f"{directory}: empty (made by the first start, which compiles)"
    if not _trusted(directory):
        return False, (f"{directory} is not trusted (not owned by this user, writable by others, "
                       f"or a link): ignored, every start compiles")
    n = sum(1 for name in os.listdir(directory) if name.endswith(".json") and not name.startswith("."))
    return True, (f"{directory}: {n} compiled program{'s' if n != 1 else ''}; a start whose "
                  f"program is in it loads in milliseconds, another compiles once")


def _prune(directory: str) -> None:
    entries = []
    for name in os.listdir(directory):
        if name.endswith(".json") and not name.startswith("."):
            p = os.path.join(directory, name)
            try:
                entries.append((os.stat(p).st_mtime, p))
            except OSError:
                pass
    for _, p in sorted(entries, reverse=True)[KEEP:]:
        try:
            os.unlink(p)
        except OSError:
            pass
