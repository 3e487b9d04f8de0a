"""Traps inside a recording directory that only fire once a recording starts:
recovery of what a "crashed run" left, and `--max-size` clean-up. nobody (uid
65534) sets them in a directory of their own and is the user who ran sudo, so
DIR itself is accepted; the real `connscope record` (BPF: run under the
kernel lock) must then skip or quarantine each trap by name, write nothing
outside DIR, and record as usual."""
import json
import os
import re

import pyarrow as pa
import pytest

from tests.hostile_fs import (
    connscope,
    needs_setpriv,
    nobody_home,  # noqa: F401 (fixture)
    plant_dirs,
    plant_fifo,
    plant_file,
    plant_link,
    sudo_env,
    tree,
    victim,  # noqa: F401 (fixture)
)
from tracer.schema import schema

pytestmark = [pytest.mark.kernel, needs_setpriv]

STAMP = "20240301T120000Z"
PART = "connects/date=2024-03-01"


def record(out, *extra):
    p = connscope("record", "--out", out, "--duration", "1", *extra, env=sudo_env(), timeout=120)
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr
    return p.stderr.splitlines()


def ipc_stream(batch: pa.RecordBatch) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as w:
        w.write_batch(batch)
    return sink.getvalue().to_pybytes()


def test_a_manifest_whose_run_id_is_a_path_writes_nothing_outside_dir(nobody_home, victim):
    runs = nobody_home / "runs"
    plant_dirs(runs)
    escape = os.path.relpath(victim.dir / "pwned", runs)
    assert escape.startswith("../")
    evil = json.dumps({"run_id": escape, "status": "running", "rows": {"connects": 1}}).encode()
    plant_file(runs / "evil.json", evil)
    plant_file(runs / "someone.json", json.dumps({"run_id": "other-run",
                                                  "status": "running"}).encode())
    lines = record(nobody_home)
    victim.assert_untouched()
    assert f'connscope: quarantined runs/evil.json: its run_id "{escape}" is not its file ' \
           f'name (moved to quarantine/runs/evil.json)' in lines
    assert "connscope: quarantined runs/someone.json: its run_id \"other-run\" is not its " \
           "file name (moved to quarantine/runs/someone.json)" in lines
    assert (nobody_home / "quarantine" / "runs" / "evil.json").read_bytes() == evil
    assert not (runs / "other-run.json").exists()


def test_fifos_dev_zero_and_control_characters_in_dir_neither_hang_nor_reach_the_terminal(
        nobody_home):
    plant_dirs(nobody_home / "runs", nobody_home / PART)
    plant_fifo(nobody_home / "runs" / "fifo.json")
    plant_link("/dev/zero", nobody_home / "runs" / "zero.json")
    plant_fifo(nobody_home / PART / f"h-{STAMP}-0001.arrows.inprogress")
    plant_file(nobody_home / "runs" / "\x1b]0;pwned\x07\x1b[2J.json", b"{}")
    p = connscope("record", "--out", nobody_home, "--duration", "1", env=sudo_env(),
                  timeout=120)
    assert p.returncode == 0, p.stderr
    lines = p.stderr.splitlines()
    assert "connscope: skipped runs/fifo.json: a FIFO, not a regular file" in lines
    assert "connscope: skipped runs/zero.json: a symbolic link (not followed)" in lines
    assert (f"connscope: skipped {PART}/h-{STAMP}-0001.arrows.inprogress: a FIFO, not a "
            f"file connscope wrote") in lines
    assert ("connscope: skipped runs/\\e]0;pwned\\x07\\e[2J.json: not a name connscope gives "
            "a manifest") in lines
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f]", p.stderr), repr(p.stderr)


def test_a_journal_without_the_expected_columns_is_quarantined_not_a_crash(nobody_home):
    plant_dirs(nobody_home / PART)
    name = f"h-{STAMP}-0001.arrows.inprogress"
    data = ipc_stream(pa.record_batch({"pid": pa.array([1, 2], pa.int32())}))
    plant_file(nobody_home / PART / name, data)
    lines = record(nobody_home)
    missing = ", ".join(n for n in schema("connects").names if n != "pid")
    assert (f"connscope: quarantined {PART}/{name}: not a connects journal (no column "
            f"{missing}) (moved to quarantine/{PART}/{name})") in lines
    assert (nobody_home / "quarantine" / PART / name).read_bytes() == data


def test_max_size_never_follows_a_linked_partition_out_of_dir(nobody_home, victim):
    # root's file, named as the recorder names its files, behind a link nobody plants
    (victim.dir / f"h-{STAMP}-0001.parquet").write_bytes(b"root's data" * 100)
    victim.before = tree(victim.dir)
    plant_dirs(nobody_home / "connects" / "date=2023-01-02")
    plant_link(victim.dir, nobody_home / "connects" / "date=2023-01-01")
    # an old file really in DIR: --max-size must delete this one (so the clean-up did run)
    old = nobody_home / "connects" / "date=2023-01-02" / "h-20230102T000000Z-0001.parquet"
    plant_file(old, b"old" * 100)
    lines = record(nobody_home, "--max-size", "1")
    victim.assert_untouched()
    assert "connscope: skipped connects/date=2023-01-01: is a symbolic link, not a " \
           "directory" in lines
    assert not old.exists()
    assert (nobody_home / "connects" / "date=2023-01-01").is_symlink()
    [m] = [json.loads(p.read_text()) for p in (nobody_home / "runs").glob("*.json")]
    assert m["status"] == "complete" and m["deleted_files"] >= 1
