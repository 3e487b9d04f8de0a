"""What `connscope record` does before its probes are attached (issue 8: warm
start to first event): the kallsyms lookup, what probe_features skips at
start-up, the early --out check and what is imported before the probes."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tracer import run
from tracer.filters import Filters
from tracer.probes import features as F
from tracer.sinks.parquet_writer import Recording, RecordingBusy, RecordingError, check_directory

ROOT = Path(__file__).resolve().parents[2]

KALLSYMS = (
    "ffffffff81000000 T _stext\n"
    "ffffffff82008730 T inet_csk_accept\n"
    "ffffffff82008800 t __tcp_v4_connect\n"        # the wanted name inside another
    "ffffffff82008900 t tcp_v4_connect.cold\n"
    "ffffffff82009000 T tcp_v4_connect_extra\n"
    "ffffffff8200a000 d tcp_v6_connect\t[ipv6]\n"  # a module symbol
    "0000000000000000 A tcp_conn_request"          # last line, no newline
)


def old_kallsyms_names(wanted, path):
    """The line-by-line reader this replaced: the reference for its answers."""
    found = set()
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and parts[2] in wanted:
                found.add(parts[2])
    return found


def test_kallsyms_names_finds_whole_third_fields_only(tmp_path):
    path = tmp_path / "kallsyms"
    path.write_text(KALLSYMS)
    wanted = {"inet_csk_accept", "tcp_v4_connect", "tcp_v6_connect", "tcp_conn_request",
              "_stext", "ffffffff81000000", "T", "ipv6", "[ipv6]", "tcp_v4", "cold", ""}
    found = F.kallsyms_names(wanted, str(path))
    assert found == {"inet_csk_accept", "tcp_v6_connect", "tcp_conn_request", "_stext"}
    assert found == old_kallsyms_names(wanted, str(path))
    assert F.kallsyms_names({"inet_csk_accept"}, str(tmp_path / "absent")) == set()


def test_kallsyms_names_agrees_with_the_line_reader_on_this_host():
    path = "/proc/kallsyms"
    try:
        names = [line.split()[2] for line in Path(path).read_text().splitlines()[::97]]
    except (OSError, IndexError):
        pytest.skip("no readable /proc/kallsyms")
    wanted = set(names) | {n[1:] for n in names} | {n[:-1] for n in names} | set(F.KPROBE_TARGETS)
    assert F.kallsyms_names(wanted, path) == old_kallsyms_names(wanted, path)


def _fake_host(monkeypatch, kprobes_ok, fentry_ok):
    """probe_features with the kernel checks replaced; counts kallsyms reads."""
    reads = []
    monkeypatch.setattr(F, "_check_kprobes", lambda config: F.Feature(kprobes_ok, "fake"))
    monkeypatch.setattr(F, "_check_fentry", lambda btf, load, root: F.Feature(fentry_ok, "fake"))
    monkeypatch.setattr(F, "kallsyms_names",
                        lambda wanted, path=F.KALLSYMS: reads.append(1) or set(wanted))
    return reads


@pytest.mark.parametrize("kprobes_ok, fentry_ok", [(False, False), (True, False), (False, True)])
def test_start_up_reads_kallsyms_only_when_a_backend_needs_it(monkeypatch, kprobes_ok, fentry_ok):
    reads = _fake_host(monkeypatch, kprobes_ok, fentry_ok)
    full = F.probe_features(load_tests=False)
    assert len(reads) == 1 and all(full.kprobe_targets.values())
    quick = F.probe_features(load_tests=False, only_to_choose=True)
    needed = kprobes_ok or fentry_ok
    assert len(reads) == (2 if needed else 1)
    assert quick.kprobe_targets == (full.kprobe_targets if needed else {})
    # whatever was skipped, every backend is judged the same way
    for backend in F.BACKENDS:
        outcomes = []
        for f in (full, quick):
            try:
                outcomes.append(F.choose_backend(backend, f))
            except F.BackendUnavailable as e:
                outcomes.append(str(e))
        assert outcomes[0] == outcomes[1], backend


# --- the --out check, and the order of start-up -----------------------------------

def test_check_directory_raises_what_recording_would(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    bad = blocker / "rec"
    with pytest.raises(RecordingError) as from_recording:
        Recording(bad)
    with pytest.raises(RecordingError) as from_check:
        check_directory(bad)
    assert str(from_check.value) == str(from_recording.value)

    d = tmp_path / "rec"
    assert check_directory(d) is False and d.is_dir()
    r = Recording(d)
    try:
        with pytest.raises(RecordingBusy) as busy:
            check_directory(d)
        with pytest.raises(RecordingBusy) as busy_too:
            Recording(d)
        assert str(busy.value) == str(busy_too.value)
    finally:
        r.close()
    (d / "connects" / "date=2024-03-01").mkdir(parents=True)
    (d / "connects" / "date=2024-03-01" / "h-20240301T120000Z-0001.arrows.inprogress").write_bytes(b"")
    assert check_directory(d) is True


class FakeSession:
    """What run._start reads of a loaded session (no probes in a unit test)."""
    closed = False

    class info:
        backend = "tracepoint"
        passed_over: list = []

    def close(self):
        self.closed = True


def _start(tmp_path, monkeypatch, start_probes):
    calls = []
    real_open = run._open_recording

    def opening(*a, **k):
        calls.append("recording")
        return real_open(*a, **k)

    def starting(backend, filters):
        calls.append("probes")
        return start_probes()

    monkeypatch.setattr(run, "_open_recording", opening)
    monkeypatch.setattr(run.startup, "start", starting)
    monkeypatch.setattr(run.startup, "require_root", lambda: None)   # as the tests may not be
    result = run._start("auto", Filters(), str(tmp_path / "rec"), {"backend": "auto"}, 1.7e9, None)
    return calls, result


def _manifests(d):
    return [json.loads(p.read_text()) for p in (d / "runs").glob("*.json")]


def test_recording_opens_after_the_probes(tmp_path, monkeypatch):
    session = FakeSession()
    calls, (got, recording) = _start(tmp_path, monkeypatch, lambda: session)
    try:
        assert calls == ["probes", "recording"] and got is session
        assert recording.start.timestamp() == 1.7e9   # the launch, not the opening
    finally:
        recording.close()


def test_leftovers_are_recovered_before_the_probes(tmp_path, monkeypatch):
    part = tmp_path / "rec" / "connects" / "date=2024-03-01"
    part.mkdir(parents=True)
    (part / "h-20240301T120000Z-0001.arrows.inprogress").write_bytes(b"")
    calls, (_, recording) = _start(tmp_path, monkeypatch, FakeSession)
    recording.close()
    assert calls == ["recording", "probes"]
    assert not (part / "h-20240301T120000Z-0001.arrows.inprogress").exists()   # quarantined


def test_a_bad_out_fails_before_the_probes(tmp_path, monkeypatch):
    (tmp_path / "rec").write_text("a file")
    calls = []
    monkeypatch.setattr(run.startup, "start", lambda *a: calls.append("probes"))
    monkeypatch.setattr(run.startup, "require_root", lambda: None)
    with pytest.raises(RecordingError, match="^cannot record to .*is a regular file, not a "
                                             "directory"):
        run._start("auto", Filters(), str(tmp_path / "rec" / "x"), {}, 1.7e9, None)
    assert calls == []


def test_a_failed_start_is_still_an_abandoned_run(tmp_path, monkeypatch):
    class Boom(Exception):
        pass

    def fail():
        raise Boom("no probes")

    with pytest.raises(Boom):
        _start(tmp_path, monkeypatch, fail)
    [m] = _manifests(tmp_path / "rec")
    assert m["status"] == "abandoned" and m["reason"] == "tracer failed to start"


def test_a_recording_that_cannot_open_closes_the_probes(tmp_path, monkeypatch):
    session = FakeSession()

    def fail(*a, **k):
        raise RecordingError("disk gone")

    monkeypatch.setattr(run, "_open_recording", fail)
    monkeypatch.setattr(run.startup, "start", lambda *a: session)
    with pytest.raises(RecordingError, match="disk gone"):
        run._start("auto", Filters(), str(tmp_path / "rec"), {}, 1.7e9, None)
    assert session.closed


def test_nothing_heavy_is_imported_before_the_probes():
    """What `record` and `top` import up to loading the probes: no pyarrow,
    pandas or textual (each costs ~0.1 s or more)."""
    code = ("import sys; import tracer.cli, tracer.errors, tracer.run; "
            "from tracer.sinks.parquet_writer import check_directory; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'pyarrow', 'pandas', 'numpy', 'textual'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=ROOT, timeout=60).stdout
    assert out.strip() == "[]"


def test_the_tracer_process_keeps_pandas_and_numpy_out(tmp_path):
    """pyarrow imports pandas and numpy when they are installed (50 MB, 0.1 s);
    with them blocked it still writes and reads Parquet, and says they are absent."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(f"""
        import sys
        from tracer import run
        run.keep_out_of_the_tracer()
        import pyarrow as pa, pyarrow.parquet as pq, pyarrow.compute as pc
        t = pa.Table.from_pylist([{{"ts": 1, "x": "a"}}, {{"ts": 2, "x": "b"}}])
        pq.write_table(t, {str(tmp_path / 't.parquet')!r})
        back = pq.read_table({str(tmp_path / 't.parquet')!r})
        assert back.to_pylist() == t.to_pylist()
        assert pc.max(back.column("ts")).as_py() == 2
        try:
            import numpy
        except ImportError:
            pass
        else:
            raise SystemExit("numpy imported")
        print(sorted(m for m in ("pandas", "numpy") if m in sys.modules))
    """)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[]"


@pytest.mark.parametrize("chosen, expected", [(None, "system"), ("jemalloc", "jemalloc")])
def test_the_tracer_process_allocates_arrow_memory_with_malloc(chosen, expected):
    """Arrow's default pool (mimalloc) kept the tracer's peak RSS under
    ab -c 1000 at ~150 MB against ~111 MB with malloc (BENCHMARKS.md); a pool
    the user chose with ARROW_DEFAULT_MEMORY_POOL is left alone."""
    import os
    import subprocess
    import sys

    code = ("from tracer import run; run.keep_out_of_the_tracer(); import pyarrow as pa; "
            "print(pa.default_memory_pool().backend_name)")
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    if chosen:
        env["ARROW_DEFAULT_MEMORY_POOL"] = chosen
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env=env, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == expected
