"""What the recorder accepts in and around DIR, as pure rules and as the current
user in a directory of its own (no root): names it writes, directories it
trusts, files it reads back. The same traps set by another user against root
are in tests/unit/test_hostile_dir.py and tests/kernel/test_hostile_recording.py."""
import json
import os
import threading

import pyarrow as pa
import pytest

from tracer.sinks import names
from tracer.sinks.journal import foreign_columns
from tracer.sinks.manifest import MANIFEST_MAX_BYTES, read_manifest
from tracer.sinks.parquet_writer import Recording, RecordingError, recover
from tracer.sinks.trusted_dir import (
    NotRegular,
    UnsafeDirectory,
    open_trusted,
    read_regular,
    replace_file,
)
from tracer.schema import schema

from tests.unit.test_parquet_writer import connect_rows, parquet_files

STAMP = "20240301T120000Z"


# ---------------------------------------------------------------- names

@pytest.mark.parametrize("run_id", ["run1", "web-1.example-20240301T120000Z-a1b2c3",
                                    "20240301T120000Z-0123abcd", "A" * 200])
def test_run_ids_the_recorder_makes_are_accepted(run_id):
    assert names.is_run_id(run_id)
    assert names.manifest_run_id(run_id + ".json") == run_id


@pytest.mark.parametrize("run_id", ["", ".", "..", "../x", "a/b", ".hidden", "-", "A" * 201,
                                    "run\x1b]0;x", "run 1", "ü", None, 7, ["r"], {"r": 1}])
def test_run_ids_that_could_leave_runs_are_refused(run_id):
    assert not names.is_run_id(run_id)
    if isinstance(run_id, str):
        assert names.manifest_run_id(run_id + ".json") is None
        with pytest.raises(ValueError):
            names.manifest_name(run_id)


def test_data_file_names():
    base = f"web-1-{STAMP}-0001"
    assert names.data_base(base + ".parquet", ".parquet") == base
    assert names.data_base(base + ".arrows.inprogress", ".arrows.inprogress") == base
    for bad in ("x-0001.parquet", f"../{base}.parquet", f".{base}.parquet", f"{base}.json",
                f"a/b-{STAMP}-0001.parquet", f"a b-{STAMP}-0001.parquet"):
        assert names.data_base(bad, ".parquet") is None, bad


def test_date_folders():
    assert names.is_date_dir("date=2024-03-01")
    for bad in ("date=2024-03-01x", "date=..", "date=", "2024-03-01", "date=2024-3-1"):
        assert not names.is_date_dir(bad)


@pytest.mark.parametrize("host,expected", [("web-1", "web-1"), ("..", "_."), (".x", "_x"),
                                           ("a/b", "a_b"), ("", "host"), ("\x1b[2J", "__2J")])
def test_safe_name_is_one_visible_component(host, expected):
    assert names.safe_name(host) == expected


def test_foreign_columns_name_what_is_wrong():
    sch = schema("connects")
    assert foreign_columns("connects", sch) is None
    no_ts = pa.schema([f for f in sch if f.name != "ts"])
    assert foreign_columns("connects", no_ts) == "no column ts"
    assert "unknown column x" in foreign_columns("connects", sch.append(pa.field("x", pa.int8())))


def test_a_recording_refuses_a_run_id_that_is_not_a_file_name(tmp_path):
    with pytest.raises(ValueError, match="not a safe name"):
        Recording(tmp_path / "rec", run_id="../../escape")
    assert not (tmp_path / "rec").exists()


# ---------------------------------------------------------------- directories

def test_missing_directories_are_made_private_and_opened_by_fd(tmp_path):
    with open_trusted(tmp_path / "a" / "b", create=True) as d:
        assert os.path.samestat(os.fstat(d.fd), os.stat(tmp_path / "a" / "b"))
    assert oct((tmp_path / "a").stat().st_mode & 0o777) == "0o750"


def test_empty_path_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UnsafeDirectory, match="empty path"):
        open_trusted("", create=True)
    with pytest.raises(RecordingError, match="empty path"):
        Recording("")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("mode", [0o777, 0o1777, 0o770, 0o757])
def test_a_directory_others_can_write_is_refused(tmp_path, mode):
    d = tmp_path / "rec"
    d.mkdir()
    d.chmod(mode)
    with pytest.raises(RecordingError, match=f"writable by others \\(mode {mode:04o}\\)"):
        Recording(d)
    assert list(d.iterdir()) == []


def test_a_sticky_shared_parent_is_fine(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    Recording(shared / "rec").close()


def test_a_parent_others_can_write_without_sticky_is_refused(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(RecordingError, match="shared is writable by others"):
        Recording(shared / "rec")
    assert not (shared / "rec").exists()


def test_links_we_own_are_followed(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to("real")
    Recording(tmp_path / "link" / "rec").close()
    assert (tmp_path / "real" / "rec" / "runs").is_dir()
    (tmp_path / "loop").symlink_to("loop")
    with pytest.raises(RecordingError, match="too many symbolic links"):
        Recording(tmp_path / "loop")


def test_a_file_as_dir_is_refused(tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(RecordingError, match="is a regular file, not a directory"):
        Recording(tmp_path / "f")


# ---------------------------------------------------------------- reading back

def test_read_back_never_waits_on_a_fifo_or_follows_a_link(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "zero").symlink_to("/dev/zero")
    (tmp_path / "big").write_bytes(b" " * (MANIFEST_MAX_BYTES + 1))
    result = {}

    def read_all():
        for name in ("fifo", "zero", "big"):
            try:
                read_manifest(tmp_path / name)
            except NotRegular as e:
                result[name] = str(e)

    t = threading.Thread(target=read_all, daemon=True)
    t.start()
    t.join(10)
    assert not t.is_alive(), "read_manifest hung"
    assert result == {"fifo": "a FIFO, not a regular file",
                      "zero": "a symbolic link (not followed)",
                      "big": f"{MANIFEST_MAX_BYTES + 1} bytes, more than the "
                             f"{MANIFEST_MAX_BYTES} expected"}
    with pytest.raises(NotRegular, match="a character device"):
        read_regular("/dev/zero", 10)


def test_manifests_must_be_json_objects(tmp_path):
    (tmp_path / "m.json").write_text("[]")
    with pytest.raises(ValueError):
        read_manifest(tmp_path / "m.json")


# ---------------------------------------------------------------- recovery by the rules

def _running_manifest(d, name, run_id):
    (d / "runs").mkdir(parents=True, exist_ok=True)
    (d / "runs" / name).write_text(json.dumps({"run_id": run_id, "status": "running"}))


def test_a_manifest_naming_another_path_is_quarantined_not_followed(tmp_path):
    d = tmp_path / "rec"
    Recording(d).close()
    escape = tmp_path / "escape"
    _running_manifest(d, "evil.json", "../../escape/x")
    _running_manifest(d, "other.json", "someone-else")
    lines = recover(d)
    assert not escape.exists()
    assert not (d / "runs" / "someone-else.json").exists()
    assert sorted(p.name for p in (d / "quarantine" / "runs").iterdir()) == \
        ["evil.json", "other.json"]
    assert 'quarantined runs/evil.json: its run_id "../../escape/x" is not its file name ' \
           '(moved to quarantine/runs/evil.json)' in lines


def test_odd_entries_with_our_names_are_skipped_with_the_reason(tmp_path):
    d = tmp_path / "rec"
    Recording(d).close()
    part = d / "connects" / "date=2024-03-01"
    part.mkdir(parents=True)
    os.mkfifo(part / f"h-{STAMP}-0001.arrows.inprogress")
    os.mkfifo(d / "runs" / "fifo.json")
    (d / "runs" / "zero.json").symlink_to("/dev/zero")
    lines = recover(d)
    assert f"skipped connects/date=2024-03-01/h-{STAMP}-0001.arrows.inprogress: a FIFO, " \
           f"not a file connscope wrote" in lines
    assert "skipped runs/fifo.json: a FIFO, not a regular file" in lines
    assert "skipped runs/zero.json: a symbolic link (not followed)" in lines


def test_a_journal_without_the_tables_columns_is_quarantined(tmp_path):
    d = tmp_path / "rec"
    part = d / "connects" / "date=2024-03-01"
    part.mkdir(parents=True)
    batch = pa.record_batch({"pid": pa.array([1, 2], pa.int32())})
    with pa.ipc.new_stream(str(part / f"h-{STAMP}-0001.arrows.inprogress"), batch.schema) as w:
        w.write_batch(batch)
    lines = recover(d)
    missing = ", ".join(n for n in schema("connects").names if n != "pid")
    assert missing.startswith("ts, ")
    assert lines == [f"quarantined connects/date=2024-03-01/h-{STAMP}-0001.arrows.inprogress: "
                     f"not a connects journal (no column {missing}) (moved to quarantine/"
                     f"connects/date=2024-03-01/h-{STAMP}-0001.arrows.inprogress)"]


def test_max_size_never_deletes_through_a_linked_partition(tmp_path):
    d = tmp_path / "rec"
    with Recording(d) as r:
        r.write("connects", connect_rows(50))
    outside = tmp_path / "outside"
    outside.mkdir()
    keep = outside / f"h-{STAMP}-0001.parquet"
    keep.write_bytes(b"not ours" * 1000)
    (d / "connects" / "date=2023-01-01").symlink_to(outside)
    lines = recover(d)
    assert "skipped connects/date=2023-01-01: is a symbolic link, not a directory" in lines
    with Recording(d, max_bytes=1) as r:
        r.write("connects", connect_rows(50, start=50))
    assert keep.read_bytes() == b"not ours" * 1000
    # it did clean up what is really in DIR
    assert [f for f in parquet_files(d) if "date=2023" not in str(f)] == []
    assert r.status()["deleted_files"] >= 1


def test_html_replaces_a_link_at_file_never_writes_through_it(tmp_path):
    target = tmp_path / "target"
    target.write_text("precious")
    (tmp_path / "out.html").symlink_to(target)
    replace_file(tmp_path / "out.html", b"<html>")
    assert target.read_text() == "precious"
    assert not (tmp_path / "out.html").is_symlink()
    assert (tmp_path / "out.html").read_bytes() == b"<html>"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.html", "target"]


def test_a_lock_file_with_another_name_elsewhere_is_refused(tmp_path):
    d = tmp_path / "rec"
    d.mkdir()
    other = tmp_path / "precious"
    other.write_text("keep me")
    os.link(other, d / ".connscope.lock")
    with pytest.raises(RecordingError, match=r"\.connscope\.lock has 2 names \(a hard link"):
        Recording(d)
    assert other.read_text() == "keep me"


def test_partitions_of_past_days_do_not_keep_descriptors_open(tmp_path):
    def open_fds():
        return len(os.listdir("/proc/self/fd"))

    day_us = 86_400_000_000
    with Recording(tmp_path / "rec", rotate_rows=10) as r:
        before = open_fds()
        for day in range(40):
            r.write("connects", connect_rows(10, ts0=1_709_294_400_000_000 + day * day_us))
            r.flush()
        assert open_fds() - before < 10
    assert len(parquet_files(tmp_path / "rec")) == 40


def test_a_directory_swapped_in_right_after_our_mkdir_is_refused(tmp_path, monkeypatch):
    """The race of a shared parent, played at the worst moment: between our
    mkdir and our open, another user's directory takes the new one's place."""
    from tracer.sinks import trusted_dir

    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o755)
    (theirs / "planted").write_text("")
    if os.geteuid() == 0:
        os.chown(theirs, 65534, 65534)
    real_mkdir = os.mkdir

    def mkdir_then_swap(name, mode=0o777, *, dir_fd=None):
        real_mkdir(name, mode, dir_fd=dir_fd)
        os.rmdir(name, dir_fd=dir_fd)
        os.rename(theirs, tmp_path / name)

    monkeypatch.setattr(trusted_dir.os, "mkdir", mkdir_then_swap)
    with pytest.raises(UnsafeDirectory, match="rec was replaced while connscope created it"):
        open_trusted(tmp_path / "rec", create=True)
    assert sorted(p.name for p in (tmp_path / "rec").iterdir()) == ["planted"]
