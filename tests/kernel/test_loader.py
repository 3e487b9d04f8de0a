"""connscope's own loader, against the running kernel: the compiled-program
cache (first start compiles, the next loads), the perf-buffer transport, and
a tracer process that never maps bcc/LLVM. Each start runs in a fresh
process, as a real start does."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.kernel

N = 25

SCRIPT = textwrap.dedent(f"""
    import json, os, socket, time
    from tracer.filters import Filters
    from tracer.probes import startup
    fds_before = len(os.listdir("/proc/self/fd"))
    t0 = time.monotonic()
    s = startup.start(os.environ.get("CONNSCOPE_TEST_BACKEND", "auto"), Filters())
    started = time.monotonic() - t0
    srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(64)
    port = srv.getsockname()[1]
    made = 0
    for _ in range({N}):
        c = socket.create_connection(("127.0.0.1", port)); a, _ = srv.accept()
        c.close(); a.close(); made += 1
    seen = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        seen += s.poll(50)
        conns = [e for e in seen if getattr(e, "dport", None) == port]
        accs = [e for e in seen if getattr(e, "lport", None) == port and hasattr(e, "backlog_len")]
        if len(conns) >= made and len(accs) >= made:
            break
    maps = open("/proc/self/maps").read()
    out = dict(from_cache=s.from_cache, transport=s.info.transport, started=started,
               made=made, connects=len(conns), accepts=len(accs), counters=s.counters(),
               llvm_mapped=("libLLVM" in maps or "libbcc" in maps),
               peers={{e.sport for e in conns}} == {{e.rport for e in accs}})
    s.close(); srv.close()
    out["fds_left"] = len(os.listdir("/proc/self/fd")) - fds_before
    print(json.dumps(out))
""")


def run(env_extra: dict) -> dict:
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONPATH=root, **env_extra)
    p = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env,
                       timeout=600, cwd=root)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def check_complete(r: dict) -> None:
    assert r["made"] == N
    assert (r["connects"], r["accepts"]) == (N, N), r
    assert r["peers"], "connect source ports and accept peer ports differ"
    assert r["counters"]["lost_events"] == 0 and r["counters"]["decode_errors"] == 0
    assert r["fds_left"] == 0, "close() left maps, programs or perf events open"


def test_first_start_compiles_next_start_loads_from_the_cache(tmp_path):
    env = {"CONNSCOPE_PROGRAM_CACHE": str(tmp_path / "programs")}
    first = run(env)
    second = run(env)
    assert first["from_cache"] is False and second["from_cache"] is True
    check_complete(first)
    check_complete(second)
    assert len(os.listdir(tmp_path / "programs")) == 1


def test_the_tracer_process_never_maps_llvm(tmp_path):
    r = run({"CONNSCOPE_PROGRAM_CACHE": str(tmp_path / "programs")})
    assert r["llvm_mapped"] is False   # the compile ran in a child process
    check_complete(r)


def test_cache_off_compiles_every_time():
    r = run({"CONNSCOPE_PROGRAM_CACHE": "off"})
    assert r["from_cache"] is False
    check_complete(r)


def test_perf_buffer_transport(tmp_path):
    """Kernels before 5.8 have no ring buffer; hide it here to read the perf buffer."""
    r = run({"CONNSCOPE_PROGRAM_CACHE": str(tmp_path / "programs"),
             "CONNSCOPE_HIDE_FEATURES": "ringbuf"})
    assert r["transport"] == "perf buffer"
    check_complete(r)


def test_map_items_batched_and_key_by_key_return_what_was_put_in():
    """Map.items() reads hash maps in batches (BPF_MAP_LOOKUP_BATCH) where the
    kernel can; checked against the entries this test put in, and against the
    key-by-key walk, on a real map larger than one batch."""
    import struct

    from tracer.probes import bpf_syscall as sc
    from tracer.probes.compiled import MapSpec
    from tracer.probes.loader import Map

    n = 10_000
    spec = MapSpec("t_batch", sc.MAP_HASH, 8, 16, 16_384)
    fd = sc.map_create(spec.type, spec.key_size, spec.value_size, spec.max_entries, 0, spec.name)
    try:
        m = Map(spec, fd, sc.possible_cpus())
        want = {struct.pack("<Q", i * 7919): struct.pack("<QQ", i, ~i & 0xFFFFFFFF) for i in range(n)}
        for k, v in want.items():
            m.update(k, v)
        batched = sc.map_lookup_batch(fd, spec.key_size, spec.value_size)
        assert batched is not None, "this kernel (6.x) has batch lookups for hash maps"
        assert len(batched) == n and dict(batched) == want
        assert dict(m.items()) == want == dict(m.items_one_by_one())
        assert len(m) == n
        m.delete(next(iter(want)))
        assert len(m) == n - 1
    finally:
        os.close(fd)


@pytest.mark.parametrize("max_entries,n", [(3, 3), (3, 0), (1024, 512), (1024, 257), (1024, 255)])
def test_batched_reads_at_chunk_edges_return_every_entry(max_entries, n):
    """The batch buffers are a chunk's (at most the map's size) and only
    the entries copied are read back: a map smaller than a chunk, full and
    empty, and entries a whole number of chunks (the last call then copies
    none), one more and one fewer, each against what was put in."""
    import struct

    from tracer.probes import bpf_syscall as sc

    fd = sc.map_create(sc.MAP_HASH, 8, 16, max_entries, 0, "t_chunks")
    try:
        want = {struct.pack("<Q", i * 104729 + 1): struct.pack("<QQ", i, i ^ 0x5A5A) for i in range(n)}
        for k, v in want.items():
            sc.map_update(fd, k, v)
        got = sc.map_lookup_batch(fd, 8, 16)
        assert got is not None and len(got) == n and dict(got) == want
        assert dict(sc.map_lookup_batch(fd, 8, 16, chunk=256, limit=max_entries)) == want
    finally:
        os.close(fd)


def test_a_backend_that_fails_to_load_is_one_error_line():
    """CONNSCOPE_FAIL_LOAD (a test hook) fails the load after detection found
    the backend usable. Asked for by name, there is nothing to fall back to:
    one Error line, exit 1. (`auto`'s fallback runs where more than one
    backend works: tests/vm/test_fallbacks_guest.py.)"""
    proc = subprocess.run([sys.executable, "-m", "tracer", "top", "--plain", "--duration", "1",
                           "--backend", "tracepoint"],
                          env={**os.environ, "CONNSCOPE_FAIL_LOAD": "tracepoint"},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip() == ("Error: cannot load the tracepoint programs: made to fail by "
                                   "CONNSCOPE_FAIL_LOAD (a test hook)"), proc.stderr
