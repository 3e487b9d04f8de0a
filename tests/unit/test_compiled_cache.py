"""The compiled-program cache: what its key depends on, when an entry is
trusted, and where map fds are patched into the instructions."""

from __future__ import annotations
import json
import os
import struct

import pytest

from tracer.probes import compiled
from tracer.probes.compiled import CompiledProgram, FunctionSpec, MapSpec
from tracer.probes.compiler import CompileError, relocations
from tracer.probes.loader import patched


def insn(code, dst=0, src=0, off=0, imm=0) -> bytes:
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def ld_map_fd(fd, dst=1) -> bytes:   # lddw rDST, map fd: two slots
    return insn(0x18, dst, 1, 0, fd) + insn(0, 0, 0, 0, 0)


EXIT = insn(0x95)
MOV0 = insn(0xB7, 0, 0, 0, 0)


def program() -> CompiledProgram:
    code = MOV0 + ld_map_fd(7) + ld_map_fd(9) + EXIT
    return CompiledProgram(
        license="GPL", kern_version=0x060100,
        maps=[MapSpec("events", 27, 0, 0, 1 << 22), MapSpec("counters", 6, 4, 8, 8)],
        functions=[FunctionSpec("tracepoint__sock__inet_sock_set_state", code,
                                relocations(code, {7: "events", 9: "counters"}, "f"))])


def test_relocations_find_every_map_load():
    p = program()
    assert p.functions[0].relocs == [(1, "events"), (3, "counters")]


def test_relocations_refuse_what_the_loader_cannot_patch():
    with pytest.raises(CompileError, match="unknown map fd 5"):
        relocations(ld_map_fd(5) + EXIT, {7: "events"}, "f")
    with pytest.raises(CompileError, match="64-bit load kind 2"):
        relocations(insn(0x18, 1, 2, 0, 7) + insn(0) + EXIT, {7: "events"}, "f")
    with pytest.raises(CompileError, match="calls to BPF functions"):
        relocations(insn(0x85, 0, 1, 0, 3) + EXIT, {}, "f")


def test_patched_puts_this_process_fds_in_place():
    class M:
        def __init__(self, fd):
            self.fd = fd
    p = program()
    fn = p.functions[0]
    out = patched(fn.insns, fn.relocs, {"events": M(41), "counters": M(42)})
    assert struct.unpack_from("<i", out, 1 * 8 + 4)[0] == 41
    assert struct.unpack_from("<i", out, 3 * 8 + 4)[0] == 42
    assert out[:8] == fn.insns[:8] and out[-8:] == fn.insns[-8:] and len(out) == len(fn.insns)


def test_json_round_trip():
    p = program()
    assert CompiledProgram.from_json(json.loads(json.dumps(p.to_json()))) == p


def key(**kw):
    args = dict(source="int x;", cflags=["-DA"], env={"BCC_KERNEL_SOURCE": "/t"},
                kernel="6.1", btf=b"btf", toolchain="bcc 0.26")
    args.update(kw)
    return compiled.cache_key(args.pop("source"), args.pop("cflags"), args.pop("env"), **args)


@pytest.mark.parametrize("change", [
    dict(source="int y;"), dict(cflags=["-DB"]), dict(cflags=["-DA", "-DB"]),
    dict(env={"BCC_KERNEL_SOURCE": "/u"}), dict(kernel="6.2"), dict(btf=b"btg"), dict(btf=None),
    dict(toolchain="bcc 0.29"),
])
def test_key_changes_with_everything_the_code_depends_on(change):
    assert key(**change) != key()
    assert key() == key()


@pytest.fixture
def cache(tmp_path):
    d = tmp_path / "programs"
    return str(d)


def test_store_then_load(cache):
    p = program()
    path = compiled.store("k1", p, cache)
    assert path and os.stat(path).st_mode & 0o777 == 0o600
    assert os.stat(cache).st_mode & 0o777 == 0o700
    assert compiled.load("k1", cache) == p
    assert compiled.load("k2", cache) is None


def test_an_entry_stored_under_another_key_is_not_used(cache):
    compiled.store("k1", program(), cache)
    os.rename(os.path.join(cache, "k1.json"), os.path.join(cache, "k2.json"))
    assert compiled.load("k2", cache) is None


def test_damaged_entry_is_a_miss(cache):
    compiled.store("k1", program(), cache)
    with open(os.path.join(cache, "k1.json"), "w") as f:
        f.write('{"format": 1, "key": "k1", "functions": [')
    assert compiled.load("k1", cache) is None


@pytest.mark.parametrize("what", ["dir", "file"])
def test_writable_by_others_is_not_trusted(cache, what):
    compiled.store("k1", program(), cache)
    target = cache if what == "dir" else os.path.join(cache, "k1.json")
    os.chmod(target, os.stat(target).st_mode | 0o002)
    assert compiled.load("k1", cache) is None


def test_symlinked_entry_is_not_trusted(cache, tmp_path):
    compiled.store("k1", program(), cache)
    real = tmp_path / "elsewhere.json"
    os.rename(os.path.join(cache, "k1.json"), real)
    os.symlink(real, os.path.join(cache, "k1.json"))
    assert compiled.load("k1", cache) is None


def test_cache_off(monkeypatch):
    monkeypatch.setenv(compiled.CACHE_ENV, "off")
    assert compiled.cache_dir() is None
    assert compiled.store("k", program()) is None
    assert compiled.load("k") is None


def test_prune_keeps_the_newest(cache):
    p = program()
    for i in range(compiled.KEEP + 3):
        path = compiled.store(f"k{i}", p, cache)
        os.utime(path, (1000 + i, 1000 + i))
    fd = os.open(cache, os.O_RDONLY | os.O_DIRECTORY)
    try:
        compiled._prune(fd)
    finally:
        os.close(fd)
    left = sorted(os.listdir(cache))
    assert len(left) == compiled.KEEP
    assert "k0.json" not in left and f"k{compiled.KEEP + 2}.json" in left


def test_compile_failure_message_is_the_line_that_says_why():
    from tracer.probes.program import first_error

    clang = ("In file included from /virtual/main.c:3:\n"
             "/virtual/common.h:12:5: warning: unused variable 'x'\n"
             "/virtual/main.c:40:9: error: use of undeclared identifier 'OFF_SKC_NET'\n"
             "1 error generated.\n"
             "connscope compiler: bcc could not compile bpf/main.c\n")
    assert first_error(clang) == "/virtual/main.c:40:9: error: use of undeclared identifier 'OFF_SKC_NET'"
    no_headers = ("sh: 1: modprobe: not found\n"
                  "chdir(/lib/modules/6.18/build): No such file or directory\n"
                  "Unable to find kernel headers. Try rebuilding kernel with CONFIG_IKHEADERS=m\n"
                  "connscope compiler: bcc could not compile bpf/main.c\n")
    assert first_error(no_headers).startswith("Unable to find kernel headers")
    assert first_error("connscope compiler: bcc could not compile bpf/main.c\n") == \
        "connscope compiler: bcc could not compile bpf/main.c"
    assert first_error("") == ""


def test_stale_kprobe_events_of_dead_connscopes_are_found():
    from tracer.probes.loader import stale_events

    text = ("r4096:connscope_111/kretp_inet_csk_accept inet_csk_accept\n"
            "r4096:connscope_222/kretp_inet_csk_accept inet_csk_accept\n"
            "p:kprobes/p_tcp_v4_connect_bcc_333 tcp_v4_connect\n"
            "r:connscope_x/odd tcp_v4_connect\n\n")
    assert stale_events(text, alive=lambda pid: pid == 222) == ["connscope_111/kretp_inet_csk_accept"]
    assert stale_events("", alive=lambda pid: False) == []


def test_status_for_doctor(cache, monkeypatch):
    ok, text = compiled.status(cache)
    assert ok and "empty" in text
    compiled.store("k1", program(), cache)
    ok, text = compiled.status(cache)
    assert ok and "1 compiled program;" in text
    os.chmod(cache, 0o777)
    ok, text = compiled.status(cache)
    assert not ok and "ignored" in text
    monkeypatch.setenv(compiled.CACHE_ENV, "off")
    assert compiled.status() == (True, f"off ({compiled.CACHE_ENV}=off): every start compiles")


def test_fuzzed_entries_are_hits_or_named_misses(tmp_path):
    """Seeded mutations of a real entry (values swapped for other types,
    keys dropped, bytes flipped, truncations): lookup never raises; a miss
    names the entry."""
    import random

    rng = random.Random(13)
    cache = tmp_path / "programs"
    compiled.store("k1", program(), str(cache))
    path = cache / "k1.json"
    good = path.read_bytes()
    others = [None, True, -1, 2 ** 40, 1.5, "", "x", [], {}, [[]], [1, "events"], {"a": 1}]

    def paths(node, at=()):
        yield at
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for k, v in items:
            yield from paths(v, at + (k,))

    def mutate_json() -> bytes:
        d = json.loads(good)
        at = rng.choice([p for p in paths(d) if p])
        parent = d
        for k in at[:-1]:
            parent = parent[k]
        if rng.random() < 0.2 and isinstance(parent, dict):
            del parent[at[-1]]
        else:
            parent[at[-1]] = rng.choice(others)
        return json.dumps(d).encode()

    def mutate_bytes() -> bytes:
        b = bytearray(good)
        if rng.random() < 0.5:
            return bytes(b[:rng.randrange(len(b))])
        for _ in range(rng.randint(1, 8)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        return bytes(b)

    hits = misses = 0
    for _ in range(400):
        path.write_bytes(mutate_json() if rng.random() < 0.7 else mutate_bytes())
        prog, why = compiled.lookup("k1", str(cache))
        if prog is None:
            assert why.startswith(f"cache entry ignored: {path} is not a compiled program ("), why
            misses += 1
        else:
            hits += 1
    assert misses > 300   # the mutations mostly break it; hits are mutations of what nothing reads
