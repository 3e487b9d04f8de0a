"""Struct layouts, enum values and function names from the kernel's BTF.

The BPF programs are compiled against whatever header tree is installed, which
may belong to another kernel, so every field they read is placed with an offset
taken from /sys/kernel/btf/vmlinux (passed to the C code as -D macros).

This runs at every start-up, so it never decodes the ~126k types in full: one
pass records where each type record starts, and a name is found by locating
the string in the string section, then the type records that point at it.

Little-endian BTF only (what x86-64 and arm64 kernels produce); big-endian BTF
is refused. Split BTF (kernel modules) is not supported.
"""
from __future__ import annotations

import functools
import re
from bisect import bisect_left
from struct import Struct

DEFAULT_PATH = "/sys/kernel/btf/vmlinux"

# struct btf_header: magic, version, flags, hdr_len, type_off, type_len, str_off, str_len
_HEADER = Struct("<HBBIIIII")
_MAGIC = b"\x9f\xeb"  # 0xeB9F stored little-endian

# Kind numbers from include/uapi/linux/btf.h.
(INT, PTR, ARRAY, STRUCT, UNION, ENUM, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT,
 FUNC, FUNC_PROTO, VAR, DATASEC, FLOAT, DECL_TAG, TYPE_TAG, ENUM64) = range(1, 20)
_KIND_NAMES = dict(zip(range(1, 20), (
    "int", "pointer", "array", "struct", "union", "enum", "forward declaration",
    "typedef", "volatile", "const", "restrict", "function", "function prototype",
    "variable", "data section", "float", "declaration tag", "type tag", "enum64")))

# Length of each kind's record in 32-bit words: the 3-word struct btf_type, a
# fixed trailer, and vlen entries. An unknown kind gets a huge length so the
# scan runs past the end and reports it, with no test inside the hot loop.
_UNKNOWN = 1 << 40
_WORDS = [_UNKNOWN] + [3] * 19 + [_UNKNOWN] * 12
_WORDS[INT] = _WORDS[VAR] = _WORDS[DECL_TAG] = 4  # encoding / linkage / component_idx
_WORDS[ARRAY] = 6  # struct btf_array: type, index_type, nelems
_PER_VLEN = [0] * 32
for _kind, _words in ((STRUCT, 3), (UNION, 3), (ENUM, 2), (FUNC_PROTO, 2), (DATASEC, 3), (ENUM64, 3)):
    _PER_VLEN[_kind] = _words

# Modifiers that do not change layout; skipped when resolving a member's type.
_TRANSPARENT = frozenset((TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG))
_MAX_DEPTH = 64  # bounds typedef chains and nesting, so a corrupt blob cannot loop


class BTFError(Exception):
    """BTF is missing or malformed, or lacks what was asked for."""


def _regex_literal(values) -> bytes:
    """Bytes as \\xNN escapes, safe anywhere in a regex, character classes included."""
    return b"".join(b"\\x%02x" % v for v in values)


class BTF:
    """Read-only view of one BTF blob. Use BTF.load() or BTF.from_bytes()."""

    def __init__(self, data: bytes, source: str):
        self.source = source
        self._data = data
        if len(data) < _HEADER.size:
            raise self._error(f"truncated BTF header ({len(data)} bytes)")
        if data[:2] == _MAGIC[::-1]:
            raise self._error("big-endian BTF is not supported")
        if data[:2] != _MAGIC:
            raise self._error(f"not BTF (magic 0x{data[1]:02x}{data[0]:02x}, expected 0xeb9f)")
        _, version, _, hdr_len, type_off, type_len, str_off, str_len = _HEADER.unpack_from(data)
        if version != 1:
            raise self._error(f"unsupported BTF version {version}")
        types, strings = hdr_len + type_off, hdr_len + str_off
        if hdr_len < _HEADER.size or types + type_len > len(data) or strings + str_len > len(data):
            raise self._error(f"truncated BTF ({len(data)} bytes; the header describes more)")
        if type_len % 4:
            raise self._error(f"type section length {type_len} is not a multiple of 4")
        if str_len == 0 or data[strings] != 0 or data[strings + str_len - 1] != 0:
            raise self._error("string section does not start and end with NUL")
        self._types = (types, types + type_len)
        self._strings = (strings, strings + str_len)
        self._words = memoryview(data)[types:types + type_len].cast("I")
        self._starts = self._scan()
        self._by_name: dict[tuple[str, tuple[int, ...]], list[int]] = {}
        self._ptr_size = 0

    @classmethod
    def load(cls, path: str = DEFAULT_PATH) -> "BTF":
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            raise BTFError(f"no BTF at {path} (the kernel needs CONFIG_DEBUG_INFO_BTF=y)") from None
        except OSError as e:
            raise BTFError(f"cannot read {path}: {e.strerror}") from None
        return cls(data, str(path))

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "<bytes>") -> "BTF":
        return cls(bytes(data), source)

    @property
    def raw(self) -> bytes:
        """The blob as read (the compiled-program cache keys on it)."""
        return self._data

    def _error(self, message: str) -> BTFError:
        return BTFError(f"{message} in {self.source}")

    def _scan(self) -> list[int]:
        """Word index of each type record; list index = type id (0 is void)."""
        words, lengths, per_vlen = self._words, _WORDS, _PER_VLEN
        starts = [-1]  # sorted sentinel for void, so bisect finds real records only
        append = starts.append
        i, end = 0, len(words)
        try:
            while i < end:
                info = words[i + 1]
                kind = info >> 24 & 31
                append(i)
                i += lengths[kind] + per_vlen[kind] * (info & 0xFFFF)
        except IndexError:
            raise self._error(f"truncated type section (type id {len(starts) - 1})") from None
        if i != end:
            kind = words[starts[-1] + 1] >> 24 & 31
            if lengths[kind] == _UNKNOWN:
                raise self._error(f"unknown BTF kind {kind} (type id {len(starts) - 1})")
            raise self._error(f"truncated type section (type id {len(starts) - 1})")
        return starts

    # -- records -------------------------------------------------------------

    def _type(self, tid: int) -> tuple[int, int, int, int]:
        """(word index, kind, vlen, kind_flag) of type `tid`."""
        if not 0 < tid < len(self._starts):
            raise self._error(f"type id {tid} is out of range")
        i = self._starts[tid]
        info = self._words[i + 1]
        return i, info >> 24 & 31, info & 0xFFFF, info >> 31

    def _name(self, off: int) -> str:
        start, end = self._strings
        if off >= end - start:
            raise self._error(f"string offset {off} is out of range")
        return self._data[start + off:self._data.index(b"\0", start + off)].decode("utf-8", "replace")

    def _resolve(self, tid: int) -> int:
        """Strip typedefs and qualifiers."""
        for _ in range(_MAX_DEPTH):
            i, kind, _, _ = self._type(tid)
            if kind not in _TRANSPARENT:
                return tid
            tid = self._words[i + 2]
        raise self._error(f"typedef chain too long at type id {tid}")

    def _describe(self, tid: int) -> str:
        i, kind, _, _ = self._type(tid)
        return f"{_KIND_NAMES[kind]} {self._name(self._words[i]) or '(anon)'}"

    def _named(self, name: str, kinds: tuple[int, ...]) -> list[int]:
        """Ids of the types of these kinds called `name`, without an index.

        The name is searched as a whole NUL-terminated string (producers store
        each name once, whole), then the type records that start with its
        offset: name_off, then info whose bytes are vlen (2), 0, kind|kind_flag<<7.
        """
        key = (name, kinds)
        if key not in self._by_name:
            data, (s0, s1), (t0, t1) = self._data, self._strings, self._types
            kind_bytes = _regex_literal(k | flag for k in kinds for flag in (0, 0x80))
            needle = b"\0" + name.encode() + b"\0"
            found = []
            pos = data.find(needle, s0, s1) if name else -1
            while pos != -1:
                name_off = (pos + 1 - s0).to_bytes(4, "little")
                record = re.compile(_regex_literal(name_off) + b"..\\x00[" + kind_bytes + b"]", re.S)
                match = record.search(data, t0, t1)
                while match:
                    word, misaligned = divmod(match.start() - t0, 4)
                    tid = bisect_left(self._starts, word)
                    if not misaligned and tid < len(self._starts) and self._starts[tid] == word:
                        found.append(tid)
                    match = record.search(data, match.start() + 1, t1)
                pos = data.find(needle, pos + 1, s1)
            self._by_name[key] = sorted(found)
        return self._by_name[key]

    def _composite(self, name: str) -> int:
        ids = self._named(name, (STRUCT, UNION))
        # A struct and a union may share a tag across compilation units: prefer the struct.
        candidates = [t for t in ids if self._type(t)[1] == STRUCT] or ids
        if not candidates:
            raise self._error(f"no struct or union named '{name}'")
        if len(candidates) > 1:
            raise self._error(f"struct {name} has {len(candidates)} different definitions")
        return candidates[0]

    # -- members ---------------------------------------------------------------

    def _find_member(self, tid: int, name: str, depth: int = 0):
        """(bit offset, bitfield size, type id) of `name` in struct/union `tid`,
        looking through anonymous struct/union members as C does."""
        if depth > _MAX_DEPTH:
            raise self._error(f"anonymous members nested too deep at type id {tid}")
        i, _, vlen, kind_flag = self._type(tid)
        words = self._words
        for m in range(i + 3, i + 3 + 3 * vlen, 3):
            name_off, mtype, offset = words[m], words[m + 1], words[m + 2]
            # With kind_flag set, offset is bitfield_size << 24 | bit_offset.
            bits, bitfield = (offset & 0xFFFFFF, offset >> 24) if kind_flag else (offset, 0)
            if name_off == 0:
                inner = self._resolve(mtype)
                if self._type(inner)[1] in (STRUCT, UNION):
                    found = self._find_member(inner, name, depth + 1)
                    if found:
                        return bits + found[0], found[1], found[2]
            elif self._name(name_off) == name:
                return bits, bitfield, mtype
        return None

    def _member(self, struct_name: str, path: str) -> tuple[int, int]:
        """(byte offset, type id) of a dotted member path; bitfields are refused."""
        tid = self._composite(struct_name)
        parts = path.split(".")
        bits, bitfield, mtype = 0, 0, tid
        for n, part in enumerate(parts):
            if n:
                tid = self._resolve(mtype)
                if self._type(tid)[1] not in (STRUCT, UNION):
                    where = f"{struct_name}.{'.'.join(parts[:n])}"
                    raise self._error(f"{where} is not a struct or union ({self._describe(tid)})")
            found = self._find_member(tid, part)
            if found is None:
                where = f" ({struct_name}.{'.'.join(parts[:n])})" if n else ""
                raise self._error(f"{self._describe(tid)}{where} has no member '{part}'")
            bits, bitfield, mtype = bits + found[0], found[1], found[2]
        if bitfield or self._legacy_bitfield(mtype):
            raise self._error(f"{struct_name}.{path} is a bitfield (bit {bits}); it has no byte offset")
        if bits % 8:
            raise self._error(f"{struct_name}.{path} is not byte-aligned (bit {bits})")
        return bits // 8, mtype

    def _legacy_bitfield(self, tid: int) -> bool:
        """Without kind_flag, a bitfield's type is an int narrower than its size."""
        i, kind, _, _ = self._type(self._resolve(tid))
        if kind != INT:
            return False
        encoding = self._words[i + 3]
        return bool(encoding >> 16 & 0xFF) or (encoding & 0xFF) != 8 * self._words[i + 2]

    def _size(self, tid: int) -> int:
        count = 1
        for _ in range(_MAX_DEPTH):
            i, kind, _, _ = self._type(self._resolve(tid))
            if kind == ARRAY:
                count *= self._words[i + 5]
                tid = self._words[i + 3]
            elif kind == PTR:
                return count * self._pointer_size()
            elif kind in (INT, STRUCT, UNION, ENUM, ENUM64, FLOAT, DATASEC):
                return count * self._words[i + 2]
            else:
                raise self._error(f"a {_KIND_NAMES[kind]} has no size")
        raise self._error(f"arrays nested too deep at type id {tid}")

    def _pointer_size(self) -> int:
        # BTF has no pointer size; like libbpf, take the size of 'long'.
        for name in ("long int", "long unsigned int", "long", "unsigned long"):
            for tid in self._named(name, (INT,)):
                self._ptr_size = self._ptr_size or self._words[self._type(tid)[0] + 2]
        if not self._ptr_size:
            raise self._error("no 'long' type, so the pointer size is unknown")
        return self._ptr_size

    # -- public API --------------------------------------------------------------

    def struct_size(self, name: str) -> int:
        return self._words[self._type(self._composite(name))[0] + 2]

    def member_offset(self, struct: str, path: str) -> int:
        return self._member(struct, path)[0]

    def member_size(self, struct: str, path: str) -> int:
        return self._size(self._member(struct, path)[1])

    def enum_value(self, enum: str, name: str) -> int:
        ids = self._named(enum, (ENUM, ENUM64))
        if not ids:
            raise self._error(f"no enum named '{enum}'")
        words = self._words
        for tid in ids:
            i, kind, vlen, signed = self._type(tid)
            step, width = (2, 32) if kind == ENUM else (3, 64)
            for e in range(i + 3, i + 3 + step * vlen, step):
                if self._name(words[e]) == name:
                    value = words[e + 1] if kind == ENUM else words[e + 1] | words[e + 2] << 32
                    return value - (1 << width) if signed and value >> (width - 1) else value
        raise self._error(f"enum {enum} has no value '{name}'")

    def has_function(self, name: str) -> bool:
        return bool(self._named(name, (FUNC,)))

    def function_id(self, name: str) -> int:
        """Type id of kernel function `name`, 0 if none: what an fentry program
        attaches to (the first, as libbpf_find_vmlinux_btf_id answers)."""
        ids = self._named(name, (FUNC,))
        return ids[0] if ids else 0

    def function_arity(self, name: str) -> int:
        """Number of parameters of kernel function `name` (its FUNC_PROTO's
        vlen). fexit programs find the return value after the arguments, so
        they need this when a function's signature changed between kernels
        (inet_csk_accept: 4 parameters before 6.10, 2 since)."""
        ids = self._named(name, (FUNC,))
        if not ids:
            raise self._error(f"no function {name!r}")
        i, _, _, _ = self._type(ids[0])
        proto = self._words[i + 2]
        _, kind, vlen, _ = self._type(proto)
        if kind != FUNC_PROTO:
            raise self._error(f"function {name!r} has no prototype")
        return vlen

    def tracepoint_id(self, name: str) -> int:
        """Type id of tracepoint `name`'s `btf_trace_<name>` typedef, 0 if
        none: what a tp_btf program attaches to (as libbpf finds it)."""
        ids = self._named(f"btf_trace_{name}", (TYPEDEF,))
        return ids[0] if ids else 0

    def tracepoint_params(self, name: str) -> list[str]:
        """The C types of tracepoint `name`'s arguments (its TP_PROTO), as a
        raw tracepoint program gets them in ctx->args[]: from the kernel's
        `btf_trace_<name>` typedef, a pointer to a function whose first
        parameter is the tracepoint's own `void *__data` (left out here).
        Types only: BTF keeps no parameter names for these. Arguments come
        and go between kernels (kfree_skb: reason 5.17+, rx_sk later), and a
        raw tracepoint program that reads past the last fails to attach."""
        ids = self._named(f"btf_trace_{name}", (TYPEDEF,))
        if not ids:
            raise self._error(f"no btf_trace_{name}: BTF does not describe tracepoint {name}")
        ptr = self._resolve(ids[0])
        i, kind, _, _ = self._type(ptr)
        proto = self._resolve(self._words[i + 2]) if kind == PTR else 0
        if not proto or self._type(proto)[1] != FUNC_PROTO:
            raise self._error(f"btf_trace_{name} is not a pointer to a function")
        i, _, vlen, _ = self._type(proto)
        params = [self._c_type(self._words[i + 3 + 2 * p + 1]) for p in range(vlen)]
        return params[1:]

    def _c_type(self, tid: int, depth: int = 0) -> str:
        """'struct sock *', 'enum skb_drop_reason', 'int', 'void *': typedefs
        and qualifiers looked through."""
        if tid == 0:
            return "void"
        tid = self._resolve(tid)
        i, kind, _, kind_flag = self._type(tid)
        if kind == PTR:
            if depth > _MAX_DEPTH:
                raise self._error(f"pointers nested too deep at type id {tid}")
            return self._c_type(self._words[i + 2], depth + 1) + " *"
        name = self._name(self._words[i]) or "(anon)"
        if kind in (STRUCT, UNION, FWD):
            return f"{'union' if kind == UNION or (kind == FWD and kind_flag) else 'struct'} {name}"
        if kind in (ENUM, ENUM64):
            return f"enum {name}"
        if kind == FUNC_PROTO:
            return "function"
        return name

    def offsets(self, spec: dict[str, tuple[str, str]]) -> dict[str, int]:
        """{'SK_ERR': ('sock', 'sk_err')} -> {'SK_ERR': 284}"""
        return {macro: self.member_offset(struct, path) for macro, (struct, path) in spec.items()}


@functools.lru_cache(maxsize=None)
def kernel_btf() -> BTF:
    """The running kernel's BTF, read once per process."""
    return BTF.load()
