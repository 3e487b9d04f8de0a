"""How recording files reach the disk: private modes, sudo ownership, fsync, rename.

A recording is made as root but read by the user who ran sudo, and may hold
addresses and process names: files are 0640 and directories 0750, owned by
SUDO_UID/SUDO_GID when set. A file becomes visible under its final name only
after its bytes and the rename are on disk.

Every function here names a file relative to an open directory descriptor
(see tracer/trusted_fs.py), never by path: a path is looked up again
at each use, and someone who can change a directory on it can redirect root.
Modes and owners are set on descriptors (fchmod, fchown) for the same reason.
"""

from __future__ import annotations

import os
from typing import BinaryIO, Callable, TypeVar

from tracer.trusted_fs import sudo_owner

T = TypeVar("T")

FILE_MODE = 0o640
DIR_MODE = 0o750

# Creating a file: never through a symbolic link, never an existing file.
O_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def own(fd: int) -> None:
    """Give an open file or directory to the user who ran sudo, if we are root under sudo."""
    owner = sudo_owner()
    if owner is not None:
        os.fchown(fd, *owner)


def create_file(dir_fd: int, name: str) -> int:
    """Create `name` in `dir_fd` exclusively with FILE_MODE and return a writable fd."""
    fd = os.open(name, O_CREATE, FILE_MODE, dir_fd=dir_fd)
    try:
        os.fchmod(fd, FILE_MODE)   # the mode given to open is masked by the umask
        own(fd)
    except BaseException:
        os.close(fd)
        os.unlink(name, dir_fd=dir_fd)
        raise
    return fd


def fsync_dir(dir_fd: int) -> None:
    """Make a rename, create or unlink in `dir_fd` durable."""
    os.fsync(dir_fd)


def publish(dir_fd: int, tmp: str, final: str) -> None:
    """Rename a fully written and fsynced `tmp` to `final` in the same directory, durably."""
    os.rename(tmp, final, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    fsync_dir(dir_fd)


def remove_if_present(dir_fd: int, name: str) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass


def write_via(dir_fd: int, tmp: str, name: str, write: Callable[[BinaryIO], T]) -> T:
    """Have `write(f)` fill `tmp` (created afresh: a leftover from a crash is
    removed), fsync it and rename it to `name` durably; on any failure `tmp`
    is removed. Returns what `write` returned."""
    remove_if_present(dir_fd, tmp)  # left by a crash between create and rename
    fd = create_file(dir_fd, tmp)
    try:
        with os.fdopen(fd, "wb") as f:
            result = write(f)
            f.flush()
            os.fsync(f.fileno())
        publish(dir_fd, tmp, name)
    except BaseException:
        try:
            os.unlink(tmp, dir_fd=dir_fd)
        except OSError:
            pass
        raise
    return result


def atomic_write_bytes(dir_fd: int, name: str, data: bytes) -> None:
    """Replace `name` with `data`: readers see the old or the new content, never a mix."""
    write_via(dir_fd, name + ".tmp", name, lambda f: f.write(data))
