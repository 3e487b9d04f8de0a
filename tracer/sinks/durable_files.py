"""How recording files reach the disk: private modes, sudo ownership, fsync, rename.

A recording is made as root but read by the user who ran sudo, and may hold
addresses and process names: files are 0640 and directories 0750, owned by
SUDO_UID/SUDO_GID when set. A file becomes visible under its final name only
after its bytes and the rename are on disk.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO, Callable, TypeVar

T = TypeVar("T")

FILE_MODE = 0o640
DIR_MODE = 0o750


def _sudo_owner() -> tuple[int, int] | None:
    uid, gid = os.environ.get("SUDO_UID"), os.environ.get("SUDO_GID")
    if not uid or not gid or os.geteuid() != 0:
        return None
    try:
        return int(uid), int(gid)
    except ValueError:
        return None


def own(path_or_fd) -> None:
    """Give a path or fd to the user who ran sudo, if we are root under sudo."""
    owner = _sudo_owner()
    if owner is None:
        return
    if isinstance(path_or_fd, int):
        os.fchown(path_or_fd, *owner)
    else:
        os.chown(path_or_fd, *owner)


def make_dirs(path: Path) -> None:
    """mkdir -p with DIR_MODE for every directory it creates (existing ones are left alone)."""
    path = Path(path)
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, DIR_MODE)
        except FileExistsError:
            continue
        os.chmod(d, DIR_MODE)  # mkdir's mode is masked by the umask
        own(str(d))
        fsync_dir(d.parent)


def create_file(path: Path) -> int:
    """Create `path` exclusively with FILE_MODE and return a writable fd."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
        own(fd)
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    return fd


def fsync_dir(path: Path) -> None:
    """Make a rename or create in `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(tmp: Path, final: Path) -> None:
    """Rename a fully written and fsynced `tmp` to `final`, durably."""
    os.rename(tmp, final)
    fsync_dir(Path(final).parent)


def write_via(tmp: Path, path: Path, write: Callable[[BinaryIO], T]) -> T:
    """Have `write(f)` fill `tmp` (created afresh: a leftover from a crash is
    removed), fsync it and rename it to `path` durably; on any failure `tmp`
    is removed. Returns what `write` returned."""
    try:
        os.unlink(tmp)  # left by a crash between create and rename
    except FileNotFoundError:
        pass
    fd = create_file(tmp)
    try:
        with os.fdopen(fd, "wb") as f:
            result = write(f)
            f.flush()
            os.fsync(f.fileno())
        publish(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return result


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Replace `path` with `data`: readers see the old or the new content, never a mix."""
    path = Path(path)
    write_via(path.with_name(path.name + ".tmp"), path, lambda f: f.write(data))
