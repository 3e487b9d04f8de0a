"""The recording directory (`--out DIR`) and the file of `report --html FILE`, opened as root.

What connscope trusts here, and how DIR is walked and checked, is
tracer/trusted_fs.py with its RECORDING rules: a directory only root or the
user who ran sudo can change, walked from `/` by descriptor. Everything in DIR
is then done relative to the directory descriptors (`Dir`), never by path, so
no rename elsewhere can redirect a write once DIR is open; what is read back
is a regular file of a capped size (`read_regular`), never a link, a FIFO or a
device.

Refusals are UnsafeDirectory (an OSError, so that storage-error handling
catches it) with one line saying why and what to do.
"""

from __future__ import annotations

import os
import secrets
import stat

from tracer.safe_text import printable
from tracer.sinks.durable_files import DIR_MODE, create_file, fsync_dir, own
# re-exported: the recording's code says UnsafeDirectory, NotRegular, kind, who, O_READ
from tracer.trusted_fs import O_READ, RECORDING, NotRegular, Untrusted, kind, who  # noqa: F401

UnsafeDirectory = Untrusted
trusted_owners = RECORDING.owners
open_regular = RECORDING.open_regular
read_regular = RECORDING.read_regular


class Dir:
    """An open directory; every method names an entry of it, never a path.

    `path` is for messages only."""

    def __init__(self, fd: int, path: str):
        self.fd = fd
        self.path = path

    def __enter__(self) -> "Dir":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def child(self, name: str) -> str:
        return f"{self.path.rstrip('/')}/{name}"

    def sub(self, name: str, *, create: bool = False) -> "Dir":
        """Open the subdirectory `name` (never through a symbolic link); with
        `create`, make it if missing. Raises UnsafeDirectory if it is not a
        directory or is not ours alone, FileNotFoundError if missing."""
        return Dir(RECORDING.open_subdir(self.fd, name, self.child(name),
                                         create_mode=DIR_MODE if create else None),
                   self.child(name))

    def walk(self, *names: str, create: bool = False) -> "Dir":
        """`sub` along several components; intermediate descriptors are closed."""
        d = self
        try:
            for name in names:
                nxt = d.sub(name, create=create)
                if d is not self:
                    d.close()
                d = nxt
        except BaseException:
            if d is not self:
                d.close()
            raise
        return d if d is not self else Dir(os.dup(self.fd), self.path)

    def names(self) -> list[str]:
        return sorted(os.listdir(self.fd))

    def lstat(self, name: str) -> os.stat_result | None:
        try:
            return os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def exists(self, name: str) -> bool:
        return self.lstat(name) is not None

    def is_regular(self, name: str) -> bool:
        st = self.lstat(name)
        return st is not None and stat.S_ISREG(st.st_mode)

    def create(self, name: str) -> int:
        return create_file(self.fd, name)

    def open_regular(self, name: str, cap: int) -> tuple[int, os.stat_result]:
        return open_regular(name, cap, dir_fd=self.fd)

    def read_regular(self, name: str, cap: int) -> bytes:
        return read_regular(name, cap, dir_fd=self.fd)

    def unlink(self, name: str) -> None:
        os.unlink(name, dir_fd=self.fd)

    def rename_to(self, name: str, dest: "Dir", dest_name: str) -> None:
        os.rename(name, dest_name, src_dir_fd=self.fd, dst_dir_fd=dest.fd)

    def rmdir(self, name: str) -> None:
        os.rmdir(name, dir_fd=self.fd)

    def fsync(self) -> None:
        fsync_dir(self.fd)


def open_trusted(path, *, create: bool = False, shared_ok: bool = False) -> Dir:
    """Open directory `path` as tracer/trusted_fs.py describes, under its RECORDING rules.

    `create`: make missing directories (mode 0750, owned by the sudo user).
    `shared_ok`: `path` itself may be a sticky directory writable by others
    (for a single file written with O_EXCL and renamed, like `report --html`).
    Raises UnsafeDirectory with the reason, FileNotFoundError if missing and
    not `create`, other OSError as the system gives them.
    """
    text = os.fsdecode(path)
    if not text:
        raise UnsafeDirectory("an empty path is not a directory: give a directory path")
    fd = RECORDING.open_dir(text, create_mode=DIR_MODE if create else None, shared_ok=shared_ok)
    return Dir(fd, text)


def replace_file(path, data: bytes, mode: int = 0o644) -> None:
    """Write `data` as file `path`, whole (readers see the old file or the new one).

    For one output file such as `report --html FILE`: FILE's directory is opened
    like DIR (`open_trusted`), but may be sticky and shared, like /tmp. The data
    goes to a new, unguessably named file created there with O_EXCL|O_NOFOLLOW,
    which is then renamed over FILE: a symbolic link someone planted at FILE is
    replaced, never followed. Raises UnsafeDirectory or OSError."""
    text = os.fsdecode(path)
    head, name = os.path.split(text)
    if name in ("", ".", ".."):
        raise UnsafeDirectory(f"{printable(text)} is not a file name")
    with open_trusted(head or ".", shared_ok=True) as d:
        tmp = f".{name[:200]}.{secrets.token_hex(8)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     mode, dir_fd=d.fd)
        try:
            own(fd)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.rename(tmp, name, src_dir_fd=d.fd, dst_dir_fd=d.fd)
            d.fsync()
        except BaseException:
            try:
                os.unlink(tmp, dir_fd=d.fd)
            except OSError:
                pass
            raise
