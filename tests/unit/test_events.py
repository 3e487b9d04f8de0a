"""Record decoding: the ctypes layout against a C compiler, and decode_connect on
records packed by hand."""

import ctypes
import re
import shutil
import socket
import struct
import subprocess

import pytest

from tracer import events
from tracer.events import EVENT_HEADER, HeaderError, decode_connect, parse_header

STRUCTS, CONSTANTS = parse_header()


def compiler_layout(tmp_path):
    """{struct: (sizeof, alignof, {member: (offset, size)})} and {define: value},
    as gcc sees bpf/event.h."""
    if not shutil.which("gcc"):
        pytest.skip("gcc is not installed: cannot check the layout against a C compiler")
    lines = ["#include <stdio.h>", "#include <stddef.h>", "#include <linux/types.h>",
             f'#include "{EVENT_HEADER}"', "int main(void) {"]
    for name, cls in STRUCTS.items():
        lines.append(f'printf("S {name} %zu %zu\\n", sizeof(struct {name}), _Alignof(struct {name}));')
        for member, _ in cls._fields_:
            lines.append(f'printf("M {name} {member} %zu %zu\\n", offsetof(struct {name}, {member}), '
                         f"sizeof(((struct {name} *)0)->{member}));")
    for define in CONSTANTS:
        lines.append(f'printf("D {define} %lld\\n", (long long)({define}));')
    lines += ["return 0;", "}"]
    src, exe = tmp_path / "layout.c", tmp_path / "layout"
    src.write_text("\n".join(lines) + "\n")
    cc = subprocess.run(["gcc", "-Wall", "-Werror", "-o", str(exe), str(src)],
                        capture_output=True, text=True, timeout=60)
    if cc.returncode and "linux/types.h" in cc.stderr and "No such file" in cc.stderr:
        pytest.skip("<linux/types.h> is missing (install linux-libc-dev)")
    assert cc.returncode == 0, cc.stderr
    out = subprocess.run([str(exe)], capture_output=True, text=True, timeout=30, check=True).stdout
    structs, defines = {}, {}
    for line in out.splitlines():
        kind, *f = line.split()
        if kind == "S":
            structs[f[0]] = (int(f[1]), int(f[2]), {})
        elif kind == "M":
            structs[f[0]][2][f[1]] = (int(f[2]), int(f[3]))
        else:
            defines[f[0]] = int(f[1])
    return structs, defines


def test_ctypes_layout_matches_the_c_compiler(tmp_path):
    c_structs, c_defines = compiler_layout(tmp_path)
    assert "connect_event" in STRUCTS
    for name, cls in STRUCTS.items():
        size, align, members = c_structs[name]
        assert ctypes.sizeof(cls) == size, name
        assert ctypes.alignment(cls) == align, name
        for member, (offset, msize) in members.items():
            field = getattr(cls, member)
            assert (field.offset, field.size) == (offset, msize), (name, member)
    assert CONSTANTS == c_defines


# connect_event by hand, native byte order (the kernel's), no padding per event.h's rule
LAYOUT = "=IIIiQQQ16s16sHHHBB16sI4sQ"


def pack(family=socket.AF_INET, saddr="10.1.2.3", daddr="192.168.7.9", sport=54321, dport=443,
         outcome="OUTCOME_ESTABLISHED", err=0, comm=b"curl", start=7_000_000_000,
         end=7_000_250_000, pid=4242, tid=4243, syn_retransmits=2, netns=4026531840,
         cgroup_id=0):
    out = outcome if isinstance(outcome, int) else CONSTANTS[outcome]
    return struct.pack(LAYOUT, CONSTANTS["EV_CONNECT"], pid, tid, err, start, end,
                       0xFFFF888812345678, socket.inet_pton(family, saddr),
                       socket.inet_pton(family, daddr), sport, dport, syn_retransmits, family, out,
                       comm, netns, b"", cgroup_id)


def test_hand_packed_layout_has_the_size_of_the_record():
    assert struct.calcsize(LAYOUT) == ctypes.sizeof(events.ConnectRecord)


def test_decode_cgroup_id():
    assert decode_connect(pack(cgroup_id=1393)).cgroup_id == 1393


def test_decode_ipv4():
    ev = decode_connect(pack())
    assert (ev.family, ev.saddr, ev.daddr, ev.sport, ev.dport) == (4, "10.1.2.3", "192.168.7.9",
                                                                   54321, 443)
    assert (ev.pid, ev.tid, ev.comm, ev.syn_retransmits, ev.err) == (4242, 4243, "curl", 2, 0)
    assert (ev.ts_start_ns, ev.ts_end_ns) == (7_000_000_000, 7_000_250_000)
    assert ev.outcome == "established"
    assert ev.latency_us == 250.0
    assert ev.netns == 4026531840
    assert events.record_type(pack()) == CONSTANTS["EV_CONNECT"]
    assert events.DECODERS[events.record_type(pack())] is decode_connect


def test_decode_ipv6():
    ev = decode_connect(pack(family=socket.AF_INET6, saddr="fd00::2", daddr="2001:db8::1:0:0:1",
                             dport=8443))
    assert (ev.family, ev.saddr, ev.daddr, ev.dport) == (6, "fd00::2", "2001:db8::1:0:0:1", 8443)


def test_decode_ignores_trailing_bytes():
    # perf buffer records are padded; the decoder must read only its struct
    assert decode_connect(pack() + b"\xff" * 4) == decode_connect(pack())


@pytest.mark.parametrize("outcome,name", [
    ("OUTCOME_ESTABLISHED", "established"),
    ("OUTCOME_REFUSED", "refused"),
    ("OUTCOME_TIMEOUT", "timeout"),
    ("OUTCOME_ABANDONED", "abandoned"),
    ("OUTCOME_UNREACHABLE", "unreachable"),
    ("OUTCOME_ERROR", "error"),
    (200, "error"),  # a value this build does not know
])
def test_outcomes_and_latency(outcome, name):
    ev = decode_connect(pack(outcome=outcome, err=0 if name == "established" else 111))
    assert ev.outcome == name
    # every outcome carries its time: to the answer, or how long the caller waited
    assert ev.latency_us == 250.0
    assert ev.err == (0 if name == "established" else 111)


def test_every_kernel_outcome_has_a_domain_name():
    from tracer.domain import outcomes
    codes = {v for k, v in CONSTANTS.items() if k.startswith("OUTCOME_")}
    assert set(events.OUTCOMES) == codes
    assert sorted(events.OUTCOMES.values()) == sorted(outcomes.OUTCOMES)


@pytest.mark.parametrize("raw,want", [
    (b"curl", "curl"),
    (b"ab\0stale-bytes", "ab"),
    (b"0123456789abcdef", "0123456789abcdef"),  # all 16 bytes, no NUL
    (b"caf\xc3\xa9", "caf\u00e9"),
    # faithful: an invalid byte stays itself (as \\xNN), not one U+FFFD for all
    (b"bad\xff", "bad\\xff"),
    (b"\xc3(\x80", "\\xc3(\\x80"),
    # names made to attack a terminal or the markup are data: kept exactly
    (b"\x1bc\x1b]0;pwned\x1b\\", "\x1bc\x1b]0;pwned\x1b\\"),
    (b"a\nb", "a\nb"),
    (b"[/x]", "[/x]"),
])
def test_comm(raw, want):
    assert decode_connect(pack(comm=raw)).comm == want


ODD_NAMES = [b"\xff\xfe", b"a\xffb", b"a\xfeb", b"\xe2\x82", b"\xe2\x82\xac", b"\x80" * 15,
             b"\x1b]0;x\x07", b"tab\there", bytes(range(1, 16)), bytes(range(0xf0, 0xff))]


def _undo_backslashreplace(text: str) -> bytes:
    return re.sub(rb"\\x([0-9a-f]{2})", lambda m: bytes([int(m.group(1), 16)]),
                  text.encode("utf-8"))


@pytest.mark.parametrize("raw", ODD_NAMES)
def test_comm_text_round_trips_odd_bytes(raw):
    """What Parquet keeps gives back the bytes the process chose (for names
    without a backslash of their own), and different names never collide."""
    assert _undo_backslashreplace(decode_connect(pack(comm=raw)).comm) == raw


def test_different_invalid_names_stay_different():
    texts = {decode_connect(pack(comm=raw)).comm for raw in ODD_NAMES}
    assert len(texts) == len(ODD_NAMES)


@pytest.mark.parametrize("member", [
    "__u8 *ptr;",
    "char* name;",
    "__u128 wide;",
    "unsigned long n;",
    "__u32 flags : 3;",
    "__u8 comm[TASK_COMM_LEN];",
    "struct in6_addr addr;",
])
def test_parse_header_refuses_what_it_cannot_decode(tmp_path, member):
    h = tmp_path / "bad.h"
    h.write_text(f"#define X 1\nstruct ok {{ __u32 a; }};\nstruct bad {{\n  __u32 type;\n  {member}\n}};\n")
    with pytest.raises(HeaderError, match="struct bad"):
        parse_header(h)


def test_parse_header_reads_a_valid_header(tmp_path):
    h = tmp_path / "ok.h"
    h.write_text("/* struct ignored { void *p; }; */\n#define A 5 // five\n#define B -2\n"
                 "struct two {\n  __u64 ts; // when\n  __s16 delta;\n  char name[4];\n};\n")
    structs, constants = parse_header(h)
    assert constants == {"A": 5, "B": -2}
    assert list(structs) == ["two"]
    assert [f for f, _ in structs["two"]._fields_] == ["ts", "delta", "name"]
    assert ctypes.sizeof(structs["two"]) == 16




def test_parquet_keeps_the_faithful_comm(tmp_path):
    """Kernel bytes -> Connect -> the recorder's row -> Parquet -> the same text:
    odd bytes stay distinguishable, ESC and newlines stay unescaped data."""
    import pyarrow.parquet as pq

    from tracer.clock import Clock
    from tracer.sinks.parquet_writer import Recording
    from tracer.sinks.recorder import connect_row

    raws = [b"a\xffb", b"a\xfeb", b"\x1b]0;x\x07[/x]", b"a\nb"]
    evs = [decode_connect(pack(comm=raw)) for raw in raws]
    with Recording(tmp_path, host="h", run_id="r1", backend="tracepoint",
                   options={"interval": 1.0}) as rec:
        rec.write("connects", [{**connect_row(ev, Clock()), "host": "h", "run_id": "r1"}
                               for ev in evs])
    files = sorted(tmp_path.glob("connects/**/*.parquet"))
    comms = [c for f in files for c in pq.read_table(f).column("comm").to_pylist()]
    assert comms == ["a\\xffb", "a\\xfeb", "\x1b]0;x\x07[/x]", "a\nb"]
    assert [_undo_backslashreplace(c) for c in comms] == raws


def _reference(record, unpack_fields, ev_fields, raw):
    """A decoded event, field by field from the record's own named fields
    (the decoders pick them by position: an order mistake shows here)."""
    r = unpack_fields._make(record.unpack_from(raw, 0))._asdict()
    fam = r["family"]
    out = {}
    for name in ev_fields:
        v = r[name]
        if name == "family":
            v = 4 if fam == events.AF_INET else 6
        elif name in ("saddr", "daddr", "laddr", "raddr"):
            v = events.format_addr(fam, v)
        elif name == "comm":
            v = events.comm_text(v)
        elif name == "outcome":
            v = events.OUTCOMES.get(v, "error")
        out[name] = v
    return out


def test_decoders_give_every_field_its_own_value():
    raw = pack(pid=11, tid=12, err=13, start=14, end=15, sport=16, dport=17, syn_retransmits=18,
               netns=19, cgroup_id=20, outcome="OUTCOME_REFUSED", comm=b"\xffodd\0x")
    ev = decode_connect(raw)
    fields = [f for f in events.Connect.__dataclass_fields__]
    assert {f: getattr(ev, f) for f in fields} == _reference(
        events._CONNECT, events._ConnectT, fields, raw)
    values = dict(type=CONSTANTS["EV_ACCEPT"], pid=21, tid=22, backlog_len=23, ts_ns=24,
                  ts_handshake_ns=25, sk=26, laddr=socket.inet_pton(socket.AF_INET6, "fd00::7"),
                  raddr=socket.inet_pton(socket.AF_INET6, "::ffff:10.0.0.9"), lport=27,
                  rport=28, backlog_max=29, netns=30, family=socket.AF_INET6, pad=b"",
                  comm=b"nginx")
    raw = events._ACCEPT.pack(*(values[f] for f in events._AcceptT._fields))
    ev = events.decode_accept(raw)
    fields = [f for f in events.Accept.__dataclass_fields__]
    got = {f: getattr(ev, f) for f in fields}
    assert got == _reference(events._ACCEPT, events._AcceptT, fields, raw)
    assert (got["laddr"], got["raddr"], got["sk"]) == ("fd00::7", "::ffff:10.0.0.9", 26)


def test_decoded_address_text_depends_on_the_family_and_the_address_bytes_only():
    # the decoders' cache is keyed by the raw field: the same 16 bytes read as
    # v4 and as v6 are different addresses; bytes past a v4 address are not it
    v6 = socket.inet_pton(socket.AF_INET6, "a01:203:ff00::1")
    e6 = decode_connect(pack(family=socket.AF_INET6, saddr="a01:203:ff00::1",
                             daddr="a01:203:ff00::1"))
    as_v4 = bytearray(pack(family=socket.AF_INET6, saddr="a01:203:ff00::1",
                           daddr="a01:203:ff00::1"))
    as_v4[struct.calcsize("=IIIiQQQ16s16sHHH")] = socket.AF_INET     # the family byte
    e4 = decode_connect(bytes(as_v4))
    assert (e6.family, e6.saddr) == (6, "a01:203:ff00::1")
    assert (e4.family, e4.saddr, e4.daddr) == (4, "10.1.2.3", "10.1.2.3") and v6[:4] == bytes(
        [10, 1, 2, 3])
