"""The BTF reader, on blobs built to the format spec and on the running kernel's
BTF cross-checked against bpftool. No root needed."""
from __future__ import annotations

import os
import random
import re
import shutil
import struct
import subprocess

import pytest

from tests.unit.btf_builder import KINDS, BTFBuilder
from tracer.probes.btf import BTF, BTFError

SOURCE = "test.btf"


def sample() -> bytes:
    """struct conn (48 bytes, kind_flag=1):
        0 u8 state; bits 8-10 flags:3; bits 11-15 mode:5; 2 port_t port (typedef of typedef);
        4 const volatile u32 id; 8 anonymous union { long cookie; struct { u32 lo, hi; }; };
        16 addr_t peer (typedef of struct addr { u32 a, b; }); 24 u8 name[16]; 40 struct conn *next;
    plus enums, an enum64, a FUNC and a legacy (kind_flag=0) bitfield struct."""
    b = BTFBuilder()
    u8, u16, u32 = b.int("unsigned char", 1), b.int("short unsigned int", 2), b.int("unsigned int", 4)
    long = b.int("long int", 8, signed=True)
    port_t = b.ref("TYPEDEF", b.ref("TYPEDEF", u16, "__be16"), "port_t")
    const_volatile = b.ref("CONST", b.ref("VOLATILE", u32))
    addr = b.struct("addr", 8, [("a", u32, 0), ("b", u32, 32)])
    addr_t = b.ref("TYPEDEF", addr, "addr_t")
    pair = b.struct("", 8, [("lo", u32, 0), ("hi", u32, 32)])
    anon_union = b.struct("", 8, [("cookie", long, 0), ("", pair, 0)], union=True)
    name = b.array(u8, u32, 16)
    conn_ptr = b.ref("PTR", b.add("FWD", "conn"))
    b.struct("conn", 48, [
        ("state", u8, 0), ("flags", u8, 8, 3), ("mode", u8, 11, 5), ("port", port_t, 16),
        ("id", const_volatile, 32), ("", anon_union, 64), ("peer", addr_t, 128),
        ("name", name, 192), ("next", conn_ptr, 320),
    ], kind_flag=1)
    b.struct("legacy", 4, [("low", b.int("unsigned int", 4, bits=3), 0), ("high", u32, 3)])
    b.struct("both", 4, [("a", u32, 0)], union=True)
    b.enum("conn_state", {"CONN_OPEN": 1, "CONN_CLOSED": 0xFFFFFFF0})
    b.enum("conn_delta", {"DELTA_DOWN": -5, "DELTA_UP": 5}, signed=True)
    b.enum64("conn_mask", {"MASK_HIGH": 1 << 40, "MASK_ALL": 2**64 - 1})
    b.enum64("conn_offset", {"OFFSET_BACK": -(1 << 40)}, signed=True)
    b.func("tcp_v4_connect", b.func_proto(b.int("int", 4, signed=True), [("sk", conn_ptr)]))
    return b.build()


@pytest.fixture(scope="module")
def btf() -> BTF:
    return BTF.from_bytes(sample(), SOURCE)


@pytest.mark.parametrize("path, offset, size", [
    ("state", 0, 1), ("port", 2, 2), ("id", 4, 4), ("cookie", 8, 8), ("lo", 8, 4), ("hi", 12, 4),
    ("peer", 16, 8), ("peer.a", 16, 4), ("peer.b", 20, 4), ("name", 24, 16), ("next", 40, 8),
])
def test_member_offset_and_size(btf, path, offset, size):
    assert (btf.member_offset("conn", path), btf.member_size("conn", path)) == (offset, size)


def test_sizes_and_offsets_helper(btf):
    assert (btf.struct_size("conn"), btf.struct_size("addr"), btf.struct_size("both")) == (48, 8, 4)
    assert btf.offsets({"CONN_PEER_B": ("conn", "peer.b"), "CONN_HI": ("conn", "hi")}) == {
        "CONN_PEER_B": 20, "CONN_HI": 12}


@pytest.mark.parametrize("struct_name, path, message", [
    ("conn", "nope", "struct conn has no member 'nope' in test.btf"),
    ("conn", "peer.zz", "struct addr (conn.peer) has no member 'zz' in test.btf"),
    ("conn", "port.x", "conn.port is not a struct or union (int short unsigned int) in test.btf"),
    ("conn", "flags", "conn.flags is a bitfield (bit 8); it has no byte offset in test.btf"),
    ("conn", "mode", "conn.mode is a bitfield (bit 11); it has no byte offset in test.btf"),
    ("legacy", "low", "legacy.low is a bitfield (bit 0); it has no byte offset in test.btf"),
    ("legacy", "high", "legacy.high is not byte-aligned (bit 3) in test.btf"),
    ("nosuch", "x", "no struct or union named 'nosuch' in test.btf"),
    ("conn", "", "struct conn has no member '' in test.btf"),
])
def test_member_errors(btf, struct_name, path, message):
    with pytest.raises(BTFError) as raised:
        btf.member_offset(struct_name, path)
    assert str(raised.value) == message
    with pytest.raises(BTFError):
        btf.member_size(struct_name, path)


def test_enum_values(btf):
    assert btf.enum_value("conn_state", "CONN_CLOSED") == 0xFFFFFFF0  # unsigned without kind_flag
    assert btf.enum_value("conn_delta", "DELTA_DOWN") == -5
    assert btf.enum_value("conn_mask", "MASK_HIGH") == 1 << 40
    assert btf.enum_value("conn_mask", "MASK_ALL") == 2**64 - 1
    assert btf.enum_value("conn_offset", "OFFSET_BACK") == -(1 << 40)
    with pytest.raises(BTFError, match="^enum conn_state has no value 'CONN_LOST' in test.btf$"):
        btf.enum_value("conn_state", "CONN_LOST")
    with pytest.raises(BTFError, match="^no enum named 'conn' in test.btf$"):
        btf.enum_value("conn", "CONN_OPEN")


def test_has_function(btf):
    assert btf.has_function("tcp_v4_connect")
    assert not btf.has_function("tcp_v6_connect")
    assert not btf.has_function("conn")  # a struct, not a function
    assert not btf.has_function("tcp_v4")  # a prefix of a function name


def test_task_stack_size_is_doubled_where_kasan_is_built_in():
    """bpf/main.c taken_slot tells a task's stack from an interrupt's by
    THREAD_SIZE, which BTF does not hold; KASAN doubles it, and its
    functions are in BTF."""
    from tracer.probes.offsets import task_stack_size

    def with_functions(*names):
        b = BTFBuilder()
        proto = b.func_proto(0, [])
        for name in names:
            b.func(name, proto)
        return BTF.from_bytes(b.build(), SOURCE)

    assert task_stack_size(with_functions("tcp_v4_connect")) == 16384
    assert task_stack_size(with_functions("tcp_v4_connect", "kasan_report")) == 32768
    assert task_stack_size(with_functions("kasan_report_x")) == 16384


def test_current_task_btf_is_known_by_its_helper_number():
    """bpf_get_current_task_btf (5.11+) is used where BTF's enum bpf_func_id
    names it; a 5.10 kernel's does not, and there the task is read with
    bpf_probe_read_kernel."""
    from tracer.probes.offsets import has_current_task_btf

    def with_helpers(*names):
        b = BTFBuilder()
        b.enum("bpf_func_id", {name: i for i, name in enumerate(names)})
        return BTF.from_bytes(b.build(), SOURCE)

    assert has_current_task_btf(with_helpers("BPF_FUNC_unspec", "BPF_FUNC_get_current_task_btf"))
    assert not has_current_task_btf(with_helpers("BPF_FUNC_unspec", "BPF_FUNC_get_current_task"))
    assert not has_current_task_btf(BTF.from_bytes(BTFBuilder().build(), SOURCE))


def test_function_id(btf):
    tid = btf.function_id("tcp_v4_connect")
    assert tid > 0 and btf._type(tid)[1] == KINDS["FUNC"]
    assert btf.function_id("tcp_v6_connect") == 0
    assert btf.function_id("conn") == 0


# One record of each kind, with whatever it refers to (u32 is type id 1).
KIND_RECORDS = {
    "INT": lambda b, u32: b.int("i", 4),
    "PTR": lambda b, u32: b.ref("PTR", u32),
    "ARRAY": lambda b, u32: b.array(u32, u32, 3),
    "STRUCT": lambda b, u32: b.struct("s", 8, [("x", u32, 0), ("y", u32, 32)]),
    "UNION": lambda b, u32: b.struct("u", 4, [("x", u32, 0), ("y", u32, 0)], union=True),
    "ENUM": lambda b, u32: b.enum("e", {"E1": 1, "E2": 2, "E3": 3}),
    "FWD": lambda b, u32: b.add("FWD", "f"),
    "TYPEDEF": lambda b, u32: b.ref("TYPEDEF", u32, "t"),
    "VOLATILE": lambda b, u32: b.ref("VOLATILE", u32),
    "CONST": lambda b, u32: b.ref("CONST", u32),
    "RESTRICT": lambda b, u32: b.ref("RESTRICT", u32),
    "FUNC": lambda b, u32: b.func("fn", b.func_proto(u32, [])),
    "FUNC_PROTO": lambda b, u32: b.func_proto(u32, [("a", u32), ("b", u32)]),
    "VAR": lambda b, u32: b.var("v", u32),
    "DATASEC": lambda b, u32: b.datasec(".data", [(b.var("v", u32), 0, 4), (b.var("w", u32), 4, 4)]),
    "FLOAT": lambda b, u32: b.add("FLOAT", "double", 8),
    "DECL_TAG": lambda b, u32: b.decl_tag("tag", u32, 0),
    "TYPE_TAG": lambda b, u32: b.ref("TYPE_TAG", u32, "user"),
    "ENUM64": lambda b, u32: b.enum64("e64", {"B1": 1, "B2": 2}),
}


def test_every_kind_is_covered():
    assert set(KIND_RECORDS) == set(KINDS) - {"UNKN"}


@pytest.mark.parametrize("kind", KIND_RECORDS)
def test_each_kind_keeps_the_following_records_aligned(kind):
    b = BTFBuilder()
    u32 = b.int("u32", 4)
    KIND_RECORDS[kind](b, u32)
    b.struct("after", 12, [("m", u32, 64)])
    b.func("after_fn", b.func_proto(u32, [("x", u32)]))
    b.enum64("after_e", {"AFTER": 7})
    btf = BTF.from_bytes(b.build())
    assert btf.member_offset("after", "m") == 8 and btf.struct_size("after") == 12
    assert btf.has_function("after_fn") and btf.enum_value("after_e", "AFTER") == 7


def test_duplicate_struct_is_refused_not_guessed():
    b = BTFBuilder()
    u32 = b.int("u32", 4)
    b.struct("dup", 4, [("x", u32, 0)])
    b.struct("dup", 8, [("y", u32, 32)])
    with pytest.raises(BTFError, match="^struct dup has 2 different definitions in <bytes>$"):
        BTF.from_bytes(b.build()).member_offset("dup", "y")


@pytest.mark.parametrize("blob, message", [
    (b"", "truncated BTF header (0 bytes) in test.btf"),
    (b"\x00" * 24, "not BTF (magic 0x0000, expected 0xeb9f) in test.btf"),
    (b"\xeb\x9f" + sample()[2:], "big-endian BTF is not supported in test.btf"),
    (BTFBuilder().build(version=2), "unsupported BTF version 2 in test.btf"),
])
def test_bad_headers(blob, message):
    with pytest.raises(BTFError) as raised:
        BTF.from_bytes(blob, SOURCE)
    assert str(raised.value) == message


def test_every_truncation_is_a_btf_error():
    blob = sample()
    for length in range(len(blob)):
        with pytest.raises(BTFError, match="test.btf"):
            BTF.from_bytes(blob[:length], SOURCE)


def test_unknown_kind_is_named():
    b = BTFBuilder()
    b.int("u32", 4)
    b.records.append(struct.pack("<III", 0, 25 << 24, 0))
    with pytest.raises(BTFError, match=r"^unknown BTF kind 25 \(type id 2\) in <bytes>$"):
        BTF.from_bytes(b.build())


def test_corrupt_blobs_raise_only_btf_errors():
    blob, rng = sample(), random.Random(1)
    for _ in range(300):
        bad = bytearray(blob)
        for _ in range(rng.randint(1, 4)):
            bad[rng.randrange(24, len(bad))] = rng.randrange(256)
        try:
            btf = BTF.from_bytes(bytes(bad), SOURCE)
            for struct_name, path in (("conn", "hi"), ("conn", "peer.b"), ("conn", "next"), ("legacy", "high")):
                btf.member_offset(struct_name, path), btf.member_size(struct_name, path)
            btf.enum_value("conn_mask", "MASK_HIGH"), btf.has_function("tcp_v4_connect")
        except BTFError:
            pass


def test_load_reads_a_file_and_names_missing_ones(tmp_path):
    (tmp_path / "vmlinux").write_bytes(sample())
    assert BTF.load(str(tmp_path / "vmlinux")).member_offset("conn", "peer.b") == 20
    with pytest.raises(BTFError, match=f"^no BTF at {tmp_path}/absent "):
        BTF.load(str(tmp_path / "absent"))
    with pytest.raises(BTFError, match=f"^cannot read {tmp_path}: "):
        BTF.load(str(tmp_path))


# -- the running kernel, against bpftool's decoding of the same file ----------

VMLINUX = "/sys/kernel/btf/vmlinux"
KERNEL_FIELDS = [
    ("sock", "sk_err"), ("sock", "sk_ack_backlog"), ("sock", "sk_max_ack_backlog"), ("sock", "sk_drops"),
    ("sock", "__sk_common.skc_num"), ("sock", "__sk_common.skc_dport"), ("sock", "__sk_common.skc_daddr"),
    ("sock", "__sk_common.skc_rcv_saddr"), ("sock", "__sk_common.skc_v6_daddr"),
    ("sock", "__sk_common.skc_family"), ("sock", "__sk_common.skc_state"),
    ("inet_connection_sock", "icsk_accept_queue"), ("request_sock_queue", "qlen"), ("inet_sock", "inet_sport"),
    ("task_struct", "stack"),
]
_TYPE_LINE = re.compile(r"^\[(\d+)\] (\w+) '([^']*)'(.*)$")
_ENTRY_LINE = re.compile(r"^\t'([^']*)'(.*)$")


def _attrs(text: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in text.split())


@pytest.fixture(scope="module")
def kernel():
    if not os.path.exists(VMLINUX):
        pytest.skip("no kernel BTF on this host")
    bpftool = shutil.which("bpftool") or next((p for p in ("/usr/sbin/bpftool",) if os.path.exists(p)), None)
    if bpftool is None:
        pytest.skip("bpftool not installed: nothing to cross-check the kernel BTF against")
    dump = subprocess.run([bpftool, "btf", "dump", "file", VMLINUX, "format", "raw"],
                          capture_output=True, text=True, check=True, timeout=120).stdout
    types: dict[int, dict] = {}
    for line in dump.splitlines():
        if m := _TYPE_LINE.match(line):
            current = types[int(m[1])] = {"kind": m[2], "name": m[3], "attrs": _attrs(m[4]), "entries": []}
        elif m := _ENTRY_LINE.match(line):
            current["entries"].append((m[1], _attrs(m[2])))
    return BTF.load(), types


def _strip(types, tid):
    while types[tid]["kind"] in ("TYPEDEF", "CONST", "VOLATILE", "RESTRICT", "TYPE_TAG"):
        tid = int(types[tid]["attrs"]["type_id"])
    return tid


def _search(types, tid, name):
    for member, attrs in types[tid]["entries"]:
        bits, mtype = int(attrs["bits_offset"]), int(attrs["type_id"])
        if member == name:
            return bits, mtype, attrs
        inner = _strip(types, mtype)
        if member == "(anon)" and types[inner]["kind"] in ("STRUCT", "UNION"):
            if found := _search(types, inner, name):
                return bits + found[0], found[1], found[2]
    return None


def _struct_id(types, name):
    return next(i for i, t in types.items() if t["kind"] == "STRUCT" and t["name"] == name)


def _bpftool_member(types, struct_name, path):
    tid, bits = _struct_id(types, struct_name), 0
    for part in path.split("."):
        found = _search(types, _strip(types, tid), part)
        bits, tid = bits + found[0], found[1]
    return bits, tid


def _bpftool_size(types, tid):
    t = types[_strip(types, tid)]
    if t["kind"] == "ARRAY":
        return int(t["attrs"]["nr_elems"]) * _bpftool_size(types, int(t["attrs"]["type_id"]))
    return 8 if t["kind"] == "PTR" else int(t["attrs"]["size"])


@pytest.mark.parametrize("struct_name, path", KERNEL_FIELDS)
def test_kernel_member_matches_bpftool(kernel, struct_name, path):
    btf, types = kernel
    bits, tid = _bpftool_member(types, struct_name, path)
    assert btf.member_offset(struct_name, path) == bits // 8
    assert btf.member_size(struct_name, path) == _bpftool_size(types, tid)


@pytest.mark.parametrize("struct_name", ["sock", "sock_common", "inet_sock", "inet_connection_sock", "tcp_sock"])
def test_kernel_every_direct_member_matches_bpftool(kernel, struct_name):
    btf, types = kernel
    t = types[_struct_id(types, struct_name)]
    assert btf.struct_size(struct_name) == int(t["attrs"]["size"])
    for member, attrs in t["entries"]:
        if member == "(anon)":
            continue
        if "bitfield_size" in attrs:
            with pytest.raises(BTFError, match=f"^{struct_name}.{member} is a bitfield "):
                btf.member_offset(struct_name, member)
        else:
            assert btf.member_offset(struct_name, member) * 8 == int(attrs["bits_offset"]), member


def test_kernel_enum_and_functions_match_bpftool(kernel):
    btf, types = kernel
    enum = next(t for t in types.values() if t["kind"] == "ENUM" and t["name"] == "skb_drop_reason")
    value = dict(enum["entries"])["SKB_DROP_REASON_TCP_LISTEN_OVERFLOW"]["val"]
    assert btf.enum_value("skb_drop_reason", "SKB_DROP_REASON_TCP_LISTEN_OVERFLOW") == int(value)
    functions = {t["name"] for t in types.values() if t["kind"] == "FUNC"}
    for name in ("tcp_v4_connect", "inet_csk_accept", "connscope_no_such_function"):
        assert btf.has_function(name) == (name in functions), name
    # the id an fentry program attaches to, as bpftool numbers the types
    assert btf.function_id("tcp_v4_connect") == min(
        tid for tid, t in types.items() if t["kind"] == "FUNC" and t["name"] == "tcp_v4_connect")
    assert btf.function_id("connscope_no_such_function") == 0
