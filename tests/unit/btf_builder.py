"""Builds small BTF blobs byte by byte, following include/uapi/linux/btf.h.

Written independently of tracer/probes/btf.py so that tests of the reader
check it against the format, not against itself.
"""
from __future__ import annotations

import struct

KINDS = {name: number for number, name in enumerate(
    "UNKN INT PTR ARRAY STRUCT UNION ENUM FWD TYPEDEF VOLATILE CONST RESTRICT FUNC "
    "FUNC_PROTO VAR DATASEC FLOAT DECL_TAG TYPE_TAG ENUM64".split())}


class BTFBuilder:
    """Each method appends one type and returns its id (ids start at 1)."""

    def __init__(self) -> None:
        self.strings = bytearray(b"\0")
        self.records: list[bytes] = []

    def name(self, text: str) -> int:
        if not text:
            return 0
        needle = b"\0" + text.encode() + b"\0"
        found = self.strings.find(needle)
        if found != -1:
            return found + 1
        self.strings += text.encode() + b"\0"
        return len(self.strings) - len(text.encode()) - 1

    def add(self, kind: str, name: str = "", size_or_type: int = 0, vlen: int = 0,
            kind_flag: int = 0, trailer: bytes = b"") -> int:
        info = kind_flag << 31 | KINDS[kind] << 24 | vlen
        self.records.append(struct.pack("<III", self.name(name), info, size_or_type) + trailer)
        return len(self.records)

    def int(self, name: str, size: int, bits: int | None = None, bit_offset: int = 0, signed: bool = False) -> int:
        encoding = (1 if signed else 0) << 24 | bit_offset << 16 | (size * 8 if bits is None else bits)
        return self.add("INT", name, size, trailer=struct.pack("<I", encoding))

    def ref(self, kind: str, target: int, name: str = "") -> int:
        """PTR, TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG, FUNC (target = proto)."""
        return self.add(kind, name, target)

    def array(self, elem: int, index_type: int, nelems: int) -> int:
        return self.add("ARRAY", "", 0, trailer=struct.pack("<III", elem, index_type, nelems))

    def struct(self, name: str, size: int, members, union: bool = False, kind_flag: int = 0) -> int:
        """members: (name, type id, bit offset[, bitfield size]) tuples."""
        trailer = b""
        for member in members:
            mname, mtype, bits = member[:3]
            bitfield = member[3] if len(member) > 3 else 0
            offset = bitfield << 24 | bits if kind_flag else bits
            trailer += struct.pack("<III", self.name(mname), mtype, offset)
        return self.add("UNION" if union else "STRUCT", name, size, len(members), kind_flag, trailer)

    def enum(self, name: str, values: dict[str, int], size: int = 4, signed: bool = False) -> int:
        trailer = b"".join(struct.pack("<II", self.name(k), v & 0xFFFFFFFF) for k, v in values.items())
        return self.add("ENUM", name, size, len(values), int(signed), trailer)

    def enum64(self, name: str, values: dict[str, int], signed: bool = False) -> int:
        trailer = b"".join(struct.pack("<IQ", self.name(k), v & (2**64 - 1)) for k, v in values.items())
        return self.add("ENUM64", name, 8, len(values), int(signed), trailer)

    def func_proto(self, ret: int, params) -> int:
        trailer = b"".join(struct.pack("<II", self.name(n), t) for n, t in params)
        return self.add("FUNC_PROTO", "", ret, len(params), trailer=trailer)

    def func(self, name: str, proto: int, linkage: int = 1) -> int:
        return self.add("FUNC", name, proto, vlen=linkage)

    def var(self, name: str, type_id: int, linkage: int = 1) -> int:
        return self.add("VAR", name, type_id, trailer=struct.pack("<I", linkage))

    def datasec(self, name: str, entries) -> int:
        """entries: (var type id, offset, size) tuples."""
        trailer = b"".join(struct.pack("<III", *e) for e in entries)
        return self.add("DATASEC", name, sum(e[2] for e in entries), len(entries), trailer=trailer)

    def decl_tag(self, name: str, target: int, component_idx: int = -1) -> int:
        return self.add("DECL_TAG", name, target, trailer=struct.pack("<i", component_idx))

    def build(self, magic: bytes = b"\x9f\xeb", version: int = 1) -> bytes:
        types = b"".join(self.records)
        header = magic + struct.pack("<BBIIIII", version, 0, 24, 0, len(types), len(types), len(self.strings))
        return header + types + bytes(self.strings)
