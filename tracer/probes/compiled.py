"""A compiled BPF program, and the cache that keeps it between runs.

Compiling with bcc (clang and LLVM in-process) took ~0.35 s and left ~85 MB
of heap behind; the result depends only on the source, the -D flags, the
kernel (its tracepoint formats, BTF) and the header tree. So compilation runs
once, in a child process (tracer/probes/compiler.py), and its product, the
instructions of each function with the places where map fds go and the specs
of the maps, is kept here; every later start only creates maps and loads.

The cache holds code that root loads into the kernel: it is used only when
the directory and every one above it are root's and writable by nobody else
(tracer/trusted_fs.py, its CACHE rules), and an entry only when it is a regular
file, not a link, owned by root, writable by nobody else, at most
MAX_ENTRY_BYTES, of exactly the shape to_json writes, and names the key it
was stored under. Anything else is a miss with a reason (`connscope doctor`
lists them) and the program is compiled again.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field

from tracer.trusted_fs import CACHE, Untrusted

FORMAT = 1
DEFAULT_DIR = "/var/cache/connscope/programs"
CACHE_ENV = "CONNSCOPE_PROGRAM_CACHE"   # a directory, or "off"
KEEP = 16                               # newest entries kept
MAX_ENTRY_BYTES = 8 << 20               # ours are ~30 KB; anything far larger is not ours


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
    def from_json(cls, d) -> "CompiledProgram":
        """Raises ValueError naming the first thing that is not what to_json
        writes: a cache entry or compiler output of another shape is refused
        whole, never half-read."""
        d = _obj(d, "program", {"format", "license", "kern_version", "maps", "functions"}, {"key"})
        if d["format"] != FORMAT:
            raise ValueError(f"compiled program format {d['format']!r}, expected {FORMAT}")
        maps = [MapSpec(name=_str(m["name"], "map name"),
                        **{k: _u32(m[k], f"map {k}") for k in ("type", "key_size", "value_size",
                                                                 "max_entries", "flags")})
                for m in (_obj(m, "map", _MAP_FIELDS) for m in _list(d["maps"], "maps"))]
        names = {m.name for m in maps}
        functions = []
        for f in _list(d["functions"], "functions"):
            f = _obj(f, "function", {"name", "insns", "relocs"})
            try:
                insns = base64.b64decode(_str(f["insns"], "insns"), validate=True)
            except binascii.Error as e:
                raise ValueError(f"insns are not base64 ({e})") from None
            if not insns or len(insns) % 8:
                raise ValueError(f"insns of {len(insns)} bytes: not whole instructions")
            relocs = []
            for r in _list(f["relocs"], "relocs"):
                if not (isinstance(r, list) and len(r) == 2):
                    raise ValueError("a reloc is not an [index, map] pair")
                i, name = _u32(r[0], "reloc index"), _str(r[1], "reloc map")
                if i >= len(insns) // 8 or name not in names:
                    raise ValueError(f"reloc ({i}, {name!r}) outside the program or its maps")
                relocs.append((i, name))
            functions.append(FunctionSpec(_str(f["name"], "function name"), insns, relocs))
        return cls(license=_str(d["license"], "license"),
                   kern_version=_u32(d["kern_version"], "kern_version"),
                   maps=maps, functions=functions)

    def function(self, name: str) -> FunctionSpec:
        for f in self.functions:
            if f.name == name:
                return f
        raise KeyError(name)


_MAP_FIELDS = {"name", "type", "key_size", "value_size", "max_entries", "flags"}


def _obj(v, what: str, required: set, optional: set = frozenset()) -> dict:
    if not isinstance(v, dict):
        raise ValueError(f"{what} is a {type(v).__name__}, not an object")
    missing, extra = required - v.keys(), v.keys() - required - optional
    if missing or extra:
        raise ValueError(f"{what}: " + "; ".join(
            x for x in (missing and f"missing {sorted(missing)}", extra and f"unknown {sorted(extra)}") if x))
    return v


def _list(v, what: str) -> list:
    if not isinstance(v, list):
        raise ValueError(f"{what} is a {type(v).__name__}, not a list")
    return v


def _str(v, what: str) -> str:
    if not isinstance(v, str):
        raise ValueError(f"{what} is a {type(v).__name__}, not a string")
    return v


def _u32(v, what: str) -> int:
    if type(v) is not int or not 0 <= v < 1 << 32:
        raise ValueError(f"{what} is {v!r}, not a 32-bit unsigned integer")
    return v


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


def lookup(key: str, directory: str | None = None) -> tuple[CompiledProgram | None, str]:
    """(program, "") from the cache, or (None, why it is a miss). Never
    raises: whatever is wrong with the cache is a miss, and the program is
    compiled again."""
    directory = directory or cache_dir()
    if directory is None:
        return None, f"{CACHE_ENV}=off"
    name = key + ".json"
    try:
        dfd = CACHE.open_dir(directory)
    except FileNotFoundError:
        return None, f"{directory} does not exist yet"
    except Untrusted as e:
        return None, f"program cache ignored: {e}"
    except OSError as e:
        return None, f"program cache ignored: {directory}: {e.strerror}"
    try:
        try:
            fd, _ = CACHE.open_regular(name, MAX_ENTRY_BYTES, dir_fd=dfd, where=directory)
        except FileNotFoundError:
            return None, "not in the cache"
        try:
            path = os.path.join(directory, name)
            prog = _parse(path, CACHE.read_capped(fd, path, MAX_ENTRY_BYTES), key)
            try:
                os.utime(fd)   # most recently used stays longest
            except OSError:
                pass
            return prog, ""
        finally:
            os.close(fd)
    except Untrusted as e:
        return None, f"cache entry ignored: {e}"
    except OSError as e:
        return None, f"cache entry ignored: {os.path.join(directory, name)}: {e.strerror}"
    finally:
        os.close(dfd)


def load(key: str, directory: str | None = None) -> CompiledProgram | None:
    return lookup(key, directory)[0]


def _parse(path: str, data: bytes, key: str | None) -> CompiledProgram:
    """The entry's program; Untrusted naming what is wrong with it."""
    try:
        d = json.loads(data)
        if not isinstance(d, dict) or not isinstance(d.get("key"), str):
            raise ValueError("no key")
        if key is not None and d["key"] != key:
            raise ValueError("stored under another key")
        return CompiledProgram.from_json(d)
    except (ValueError, RecursionError) as e:   # JSONDecodeError and UnicodeDecodeError too
        raise Untrusted(f"{path} is not a compiled program ({str(e).splitlines()[0][:120]})") from None


def store(key: str, prog: CompiledProgram, directory: str | None = None) -> str | None:
    """Write atomically; returns the path, or None when the cache is off or
    cannot be written or trusted (then every start compiles: slower, still
    correct)."""
    directory = directory or cache_dir()
    if directory is None:
        return None
    try:
        dfd = CACHE.open_dir(directory, create_mode=0o700)
    except (Untrusted, OSError):
        return None
    name, tmp = key + ".json", f".tmp-{os.getpid()}-{key}.json"
    try:
        d = prog.to_json()
        d["key"] = key
        data = json.dumps(d).encode()
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o600, dir_fd=dfd)
            try:
                os.fchmod(fd, 0o600)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except BaseException:
            try:
                os.unlink(tmp, dir_fd=dfd)
            except OSError:
                pass
            raise
        _prune(dfd)
        return os.path.join(directory, name)
    except OSError:
        return None
    finally:
        os.close(dfd)


def status(directory: str | None = None) -> tuple[bool, str]:
    """(usable, one line) for `connscope doctor`: the directory's trust, and
    every entry that would be ignored, with its reason."""
    directory = directory or cache_dir()
    if directory is None:
        return True, f"off ({CACHE_ENV}=off): every start compiles"
    try:
        dfd = CACHE.open_dir(directory)
    except FileNotFoundError:
        return True, f"{directory}: empty (made by the first start, which compiles)"
    except Untrusted as e:
        return False, f"program cache ignored: {e}; every start compiles"
    except PermissionError:
        return False, f"{directory}: cannot be read as uid {os.geteuid()}: run doctor as root to check it"
    except OSError as e:
        return False, f"program cache ignored: {directory}: {e.strerror}; every start compiles"
    try:
        good, bad = 0, []
        for name in sorted(os.listdir(dfd)):
            if not name.endswith(".json") or name.startswith("."):
                continue
            try:
                _parse(os.path.join(directory, name),
                       CACHE.read_regular(name, MAX_ENTRY_BYTES, dir_fd=dfd, where=directory), name[:-5])
                good += 1
            except Untrusted as e:
                bad.append(str(e))
            except OSError as e:
                bad.append(f"{os.path.join(directory, name)}: {e.strerror}")
    finally:
        os.close(dfd)
    text = (f"{directory}: {good} compiled program{'s' if good != 1 else ''}; a start whose "
            f"program is in it loads in milliseconds, another compiles once")
    if bad:
        return False, text + f"; {len(bad)} entr{'ies' if len(bad) != 1 else 'y'} ignored: " + "; ".join(bad[:3])
    return True, text


def _prune(dfd: int) -> None:
    entries = []
    for name in os.listdir(dfd):
        if name.endswith(".json") and not name.startswith("."):
            try:
                entries.append((os.stat(name, dir_fd=dfd, follow_symlinks=False).st_mtime, name))
            except OSError:
                pass
    for _, name in sorted(entries, reverse=True)[KEEP:]:
        try:
            os.unlink(name, dir_fd=dfd)
        except OSError:
            pass
