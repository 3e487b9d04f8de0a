"""Traps that nobody (uid 65534) sets in and around a recording directory, met
by the real `connscope` run as root. Each is refused before the probes load (no
BPF: these need root, not the kernel lock): one `Error:` line, and nothing
outside DIR changes. Traps that only fire once a recording runs are in
tests/kernel/test_hostile_recording.py."""
import json
import os
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.hostile_fs import (
    CONNSCOPE,
    NOBODY,
    ROOT,
    connscope,
    error_line,
    needs_root,
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

pytestmark = [needs_root, needs_setpriv]

STAMP = "20240301T120000Z"


def record(out, env=None, *extra):
    return connscope("record", "--out", out, "--duration", "1", *extra, env=env)


def test_dir_owned_by_another_user_is_refused(nobody_home, victim):
    plant_link(victim.file, nobody_home / ".connscope.lock")
    p = record(nobody_home)
    assert error_line(p) == (
        f"Error: cannot record to {nobody_home}: {nobody_home} is owned by uid 65534 (nobody), "
        f"not by root or the user who ran sudo, who could change it under connscope: use a "
        f"directory that you or root own")
    victim.assert_untouched()
    assert sorted(os.listdir(nobody_home)) == [".connscope.lock"]
    assert (nobody_home / ".connscope.lock").is_symlink()


def test_dir_others_can_write_is_refused_even_if_root_owns_it(victim):
    shared = Path(tempfile.mkdtemp(prefix="connscope-shared-", dir="/tmp"))
    try:
        shared.chmod(0o1777)    # like /tmp itself: anyone may plant files in it
        plant_link(victim.file, shared / ".connscope.lock")
        plant_fifo(shared / "runs")
        before = tree(shared)
        p = record(shared)
        assert "is writable by others (mode 1777)" in error_line(p)
        victim.assert_untouched()
        assert tree(shared) == before
    finally:
        subprocess.run(["rm", "-rf", str(shared)])


def test_a_missing_dir_is_not_made_in_a_folder_another_user_owns(nobody_home):
    out = nobody_home / "sub" / "rec"
    p = record(out)
    assert f"{nobody_home} is owned by uid 65534 (nobody)" in error_line(p)
    assert os.listdir(nobody_home) == []


def test_dir_given_as_a_link_another_user_planted_is_not_followed(nobody_home, victim):
    # the link points at a folder root owns: following it would record into it
    plant_link(victim.dir, nobody_home / "rec")
    p = record(nobody_home / "rec", sudo_env(1000))   # nobody is not the sudo user here
    assert error_line(p) == (
        f"Error: cannot record to {nobody_home}/rec: {nobody_home} is owned by uid 65534 "
        f"(nobody), not by root or the user who ran sudo, who could change it under "
        f"connscope: use a directory that you or root own")
    victim.assert_untouched()


def test_a_link_as_dir_is_followed_only_if_root_or_the_sudo_user_owns_it(victim, tmp_path):
    # a folder root owns, holding a link nobody owns to another folder root owns
    home = Path(tempfile.mkdtemp(prefix="connscope-links-", dir="/tmp"))
    try:
        home.chmod(0o1777)   # sticky: nobody may add a link, not touch ours
        plant_link(victim.dir, home / "rec")
        p = record(home / "rec")
        assert error_line(p) == (
            f"Error: cannot record to {home}/rec: {home}/rec is a symbolic link owned by uid "
            f"65534 (nobody): connscope follows links only if root or the user who ran sudo "
            f"owns them; give the real directory")
        victim.assert_untouched()
    finally:
        subprocess.run(["rm", "-rf", str(home)])


@pytest.mark.parametrize("plant", ["symlink", "fifo", "dir"])
def test_a_planted_lock_file_is_never_followed_chmod_chowned_or_truncated(
        nobody_home, victim, plant):
    # nobody ran sudo: DIR is theirs and accepted, but its lock must be a file of ours
    lock = nobody_home / ".connscope.lock"
    {"symlink": lambda: plant_link(victim.file, lock), "fifo": lambda: plant_fifo(lock),
     "dir": lambda: plant_dirs(lock)}[plant]()
    p = record(nobody_home, sudo_env())
    what = {"symlink": "a symbolic link", "fifo": "a FIFO", "dir": "a directory"}[plant]
    assert error_line(p) == (f"Error: cannot record to {nobody_home}: {lock} is {what}, not a "
                             f"lock file connscope made: remove it, or choose another directory")
    victim.assert_untouched()
    assert sorted(os.listdir(nobody_home)) == [".connscope.lock"]


def test_without_root_nothing_is_written_and_nothing_recovered(nobody_home):
    # a dead recorder's files, and a directory still to be made
    part = nobody_home / "rec" / "connects" / "date=2024-03-01"
    plant_dirs(part, nobody_home / "rec" / "runs")
    plant_file(part / f"h-{STAMP}-0001.arrows.inprogress", b"journal bytes")
    plant_file(nobody_home / "rec" / "runs" / "r1.json",
               json.dumps({"run_id": "r1", "status": "running"}).encode())
    before = tree(nobody_home)
    for out in (nobody_home / "rec", nobody_home / "new"):
        for command in (["record", "--out"], ["top", "--plain", "--record"]):
            p = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}",
                                "--clear-groups", *CONNSCOPE, *command, str(out),
                                "--duration", "1"],
                               capture_output=True, text=True, cwd=ROOT, timeout=60,
                               stdin=subprocess.DEVNULL)
            assert error_line(p) == ("Error: tracing loads BPF programs and needs root: run it "
                                     "with sudo")
            assert tree(nobody_home) == before


@pytest.mark.parametrize("command", [["record", "--out"], ["top", "--plain", "--record"]])
def test_an_empty_out_is_a_usage_error_not_the_current_directory(nobody_home, command):
    p = connscope(*command, "", "--duration", "1", cwd=nobody_home)
    assert p.returncode == 2
    assert "must be a directory path, not empty" in error_line(p)
    assert os.listdir(nobody_home) == []


@pytest.fixture
def recording(tmp_path):
    from tests.unit.test_parquet_writer import connect_rows
    from tracer.sinks.parquet_writer import Recording

    d = tmp_path / "rec"
    with Recording(d, host="h", run_id="r1") as r:
        r.write("connects", connect_rows(20))
    return d


def test_report_html_replaces_a_link_planted_in_a_sticky_folder(recording, victim):
    shared = Path(tempfile.mkdtemp(prefix="connscope-html-", dir="/tmp"))
    try:
        shared.chmod(0o1777)
        html = shared / "report.html"
        plant_link(victim.file, html)
        p = connscope("report", recording, "--html", html)
        assert p.returncode == 0, p.stderr
        victim.assert_untouched()
        st = html.lstat()
        assert stat.S_ISREG(st.st_mode) and st.st_uid == 0
        assert html.read_text().lstrip().lower().startswith("<!doctype html")
        assert sorted(os.listdir(shared)) == ["report.html"]   # no temporary file left
    finally:
        subprocess.run(["rm", "-rf", str(shared)])


def test_report_html_into_a_folder_another_user_owns_is_refused(recording, nobody_home, victim):
    html = nobody_home / "report.html"
    plant_link(victim.file, html)
    p = connscope("report", recording, "--html", html)
    assert error_line(p).startswith(f"Error: cannot write {html}: {nobody_home} is owned by "
                                    f"uid 65534 (nobody)")
    victim.assert_untouched()
    assert html.is_symlink()
