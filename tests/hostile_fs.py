"""Traps an unprivileged user sets in a directory of their own, for tests that
run the real `connscope` as root against them and check that none fired.

The trap setter is uid 65534 (nobody), dropped to with setpriv; the directory
is a mkdtemp under /tmp (world-traversable, sticky) given to nobody. Victims
are root's files outside it; `Victim` remembers their bytes, mode and owner,
and the listing of the folder they are in, to show nothing changed there.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

NOBODY = 65534
ROOT = Path(__file__).resolve().parents[1]
CONNSCOPE = [sys.executable, "-m", "tracer"]

needs_root = pytest.mark.skipif(os.geteuid() != 0,
                                reason="runs connscope as root against traps set by nobody: "
                                       "needs root (run: sudo ./run test)")
needs_setpriv = pytest.mark.skipif(shutil.which("setpriv") is None,
                                   reason="setpriv (util-linux) not installed")


def as_nobody(*argv, input: bytes | None = None) -> subprocess.CompletedProcess:
    """Run `argv` as nobody (no groups); the trap must be settable without privileges."""
    return subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}",
                           "--clear-groups", "--", *map(str, argv)],
                          input=input, capture_output=True, check=True, timeout=30)


def plant_file(path, data: bytes) -> None:
    as_nobody("sh", "-c", 'cat > "$1"', "_", path, input=data)


def plant_link(target, link) -> None:
    as_nobody("ln", "-s", target, link)


def plant_fifo(path) -> None:
    as_nobody("mkfifo", path)


def plant_dirs(*paths) -> None:
    as_nobody("mkdir", "-p", *paths)


def sudo_env(uid: int = NOBODY) -> dict:
    """The environment of `sudo connscope ...` run by `uid`."""
    return {**os.environ, "SUDO_UID": str(uid), "SUDO_GID": str(uid), "SUDO_USER": "nobody"}


def root_env() -> dict:
    """Root itself, not under sudo."""
    return {k: v for k, v in os.environ.items() if not k.startswith("SUDO_")}


def connscope(*args, env=None, timeout=90, cwd=ROOT) -> subprocess.CompletedProcess:
    """The real command line, as root, in a process of its own."""
    return subprocess.run([*CONNSCOPE, *map(str, args)], capture_output=True, text=True,
                          env=env if env is not None else root_env(), cwd=cwd,
                          stdin=subprocess.DEVNULL, timeout=timeout)


def error_line(p: subprocess.CompletedProcess) -> str:
    """The one `Error:` line of a failed run (asserts there is exactly one, no traceback)."""
    assert p.returncode != 0, p.stderr
    assert "Traceback" not in p.stderr, p.stderr
    errors = [line for line in p.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, p.stderr
    return errors[0]


def tree(path) -> dict[str, tuple]:
    """Every entry under `path` (not following links): kind, mode, owner, content hash."""
    out = {}
    base = Path(path)
    for dirpath, dirnames, filenames in os.walk(base):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            st = p.lstat()
            digest = (hashlib.sha256(p.read_bytes()).hexdigest()
                      if stat.S_ISREG(st.st_mode) else
                      os.readlink(p) if stat.S_ISLNK(st.st_mode) else None)
            out[str(p.relative_to(base))] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode),
                                            st.st_uid, st.st_gid, digest)
    return out


class Victim:
    """A root-owned folder outside DIR holding one secret file (mode 0600)."""

    def __init__(self, where: Path):
        self.dir = where / "victim"
        self.dir.mkdir()
        self.file = self.dir / "secret"
        self.file.write_bytes(b"root:secret-hash:19000:0:99999:7:::\n")
        self.file.chmod(0o600)
        self.before = tree(self.dir)
        self.dir_stat = self._dir_stat()

    def _dir_stat(self):
        st = self.dir.stat()
        return st.st_mode, st.st_uid, st.st_gid

    def assert_untouched(self) -> None:
        assert tree(self.dir) == self.before, "something outside DIR changed"
        assert self._dir_stat() == self.dir_stat


@pytest.fixture
def nobody_home():
    """A directory nobody owns, under /tmp (which nobody can traverse, unlike pytest's)."""
    d = Path(tempfile.mkdtemp(prefix="connscope-trap-", dir="/tmp"))
    os.chown(d, NOBODY, NOBODY)
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def victim(tmp_path):
    return Victim(tmp_path)
