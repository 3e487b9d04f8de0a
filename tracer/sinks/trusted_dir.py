"""The recording directory, opened as root on a host where other users write files.

What connscope trusts: a directory it can prove that only root or the user who
ran sudo can change. `open_trusted` walks the path from `/` one component at a
time with O_NOFOLLOW, holding each directory by descriptor:

- every directory on the way (the parents) is owned by root or the sudo user,
  and is either not writable by group/others or sticky (like /tmp: others may
  add entries there, but not rename or remove ours);
- DIR itself is owned by root or the sudo user and not writable by group/others
  (sticky is not enough: others could plant files in it);
- a symbolic link on the way is followed only if root or the sudo user owns it
  (the kernel's protected_symlinks rule, which is off on some hosts);
- a missing directory is created (mode 0700 until checked), then opened with
  O_NOFOLLOW and checked to be the empty directory we made before it gets its
  mode and owner through the descriptor: a race ends in a refusal.

Everything is then done relative to the directory descriptors (`Dir`), never
by path, so no rename elsewhere can redirect a write once DIR is open. What is
read back is opened O_NOFOLLOW|O_NONBLOCK, must be a regular file, and is
size-capped before reading (`read_regular`): a FIFO, a device or a symbolic
link is skipped with a reason, never followed, waited on or read to the end.

Refusals are UnsafeDirectory (an OSError, so that storage-error handling
catches it) with one line saying why and what to do.
"""

from __future__ import annotations

import errno
import os
import pwd
import secrets
import stat

from tracer.safe_text import printable
from tracer.sinks.durable_files import DIR_MODE, create_file, fsync_dir, own, sudo_owner

O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
O_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
MAX_LINKS = 40               # as the kernel's own limit on a path
_SHARED = stat.S_IWGRP | stat.S_IWOTH


class UnsafeDirectory(OSError):
    """A directory (or an entry in it) connscope will not use; str() is the whole
    message, `reason` the part after the path."""

    reason = ""

    def __str__(self) -> str:
        return self.args[0] if self.args else "unsafe directory"


def refuse(shown: str, reason: str) -> UnsafeDirectory:
    e = UnsafeDirectory(f"{_show(shown)} {reason}")
    e.reason = reason
    return e


class NotRegular(OSError):
    """Something read back is not a regular file of a sane size; str() is the reason."""

    def __str__(self) -> str:
        return self.args[0] if self.args else "not a regular file"


def trusted_owners() -> frozenset[int]:
    """Who may own what connscope uses: root, ourselves, the user who ran sudo."""
    owners = {0, os.geteuid()}
    sudo = sudo_owner()
    if sudo is not None:
        owners.add(sudo[0])
    return frozenset(owners)


def who(uid: int) -> str:
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def kind(mode: int) -> str:
    for test, name in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISREG, "a regular file")):
        if test(mode):
            return name
    return "not a regular file"


def _show(path: str) -> str:
    return printable(path)


def check_owned(st: os.stat_result, shown: str, *, shared_ok: bool) -> None:
    """Raise UnsafeDirectory unless `st` (a directory) is one only trusted users can change.

    `shared_ok`: a sticky directory writable by others (like /tmp) is acceptable
    (for parents: others cannot rename or remove what we own there)."""
    if st.st_uid not in trusted_owners():
        raise refuse(shown, f"is owned by {who(st.st_uid)}, not by root or the user who ran "
                            f"sudo, who could change it under connscope: use a directory that "
                            f"you or root own")
    if st.st_mode & _SHARED and not (shared_ok and st.st_mode & stat.S_ISVTX):
        raise refuse(shown, f"is writable by others (mode {stat.S_IMODE(st.st_mode):04o}), who "
                            f"could plant files in it: run 'chmod go-w' on it or use another "
                            f"directory")


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
        return Dir(_open_dir(self.fd, name, self.child(name), create=create, final=True),
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


def _open_dir(parent_fd: int, name: str, shown: str, *, create: bool, final: bool,
              shared_ok: bool = False) -> int:
    """Open `name` in `parent_fd` as a directory we trust (see the module docstring)."""
    for _ in range(2):   # a second try if someone made `name` between our look and our mkdir
        try:
            fd = os.open(name, O_DIR, dir_fd=parent_fd)
        except FileNotFoundError:
            if not create:
                raise
            try:
                return _make_dir(parent_fd, name, shown)
            except FileExistsError:
                continue
        except OSError as e:
            if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
            raise refuse(shown, f"is {kind(st.st_mode)}, not a directory") from None
        try:
            check_owned(os.fstat(fd), shown, shared_ok=shared_ok or not final)
        except BaseException:
            os.close(fd)
            raise
        return fd
    raise refuse(shown, "keeps changing while connscope opens it")


def _make_dir(parent_fd: int, name: str, shown: str) -> int:
    os.mkdir(name, 0o700, dir_fd=parent_fd)    # private until it is checked
    fd = os.open(name, O_DIR, dir_fd=parent_fd)
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid() or stat.S_IMODE(st.st_mode) & 0o077 or os.listdir(fd):
            raise refuse(shown, "was replaced while connscope created it; try again, or use "
                                "a directory only you can write to")
        os.fchmod(fd, DIR_MODE)  # mkdir's mode is masked by the umask
        own(fd)
        fsync_dir(parent_fd)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_trusted(path, *, create: bool = False, shared_ok: bool = False) -> Dir:
    """Open directory `path` as described in the module docstring.

    `create`: make missing directories (mode 0750, owned by the sudo user).
    `shared_ok`: `path` itself may be a sticky directory writable by others
    (for a single file written with O_EXCL and renamed, like `report --html`).
    Raises UnsafeDirectory with the reason, FileNotFoundError if missing and
    not `create`, other OSError as the system gives them.
    """
    text = os.fsdecode(path)
    if not text:
        raise UnsafeDirectory("an empty path is not a directory: give a directory path")
    full = text if text.startswith("/") else os.path.join(os.getcwd(), text)
    todo = [c for c in reversed(full.split("/")) if c not in ("", ".")]
    cur = os.open("/", O_DIR)
    shown = "/"
    links = 0
    try:
        check_owned(os.fstat(cur), shown, shared_ok=bool(todo) or shared_ok)
        while todo:
            name = todo.pop()
            child = shown.rstrip("/") + "/" + name
            st = None
            try:
                st = os.stat(name, dir_fd=cur, follow_symlinks=False)
            except FileNotFoundError:
                pass
            if st is not None and stat.S_ISLNK(st.st_mode):
                if st.st_uid not in trusted_owners():
                    raise refuse(child, f"is a symbolic link owned by {who(st.st_uid)}: "
                                        f"connscope follows links only if root or the user "
                                        f"who ran sudo owns them; give the real directory")
                links += 1
                if links > MAX_LINKS:
                    raise refuse(text, "has too many symbolic links")
                target = os.readlink(name, dir_fd=cur)
                todo.extend(c for c in reversed(target.split("/")) if c not in ("", "."))
                if target.startswith("/"):
                    os.close(cur)
                    cur, shown = -1, "/"
                    cur = os.open("/", O_DIR)
                    check_owned(os.fstat(cur), shown, shared_ok=True)
                continue
            last = not todo
            nxt = _open_dir(cur, name, child, create=create, final=last,
                            shared_ok=shared_ok and last)
            os.close(cur)
            cur, shown = nxt, child
        # `path` may have been "/" or ended in a link to it: DIR's own rule still applies
        check_owned(os.fstat(cur), shown, shared_ok=shared_ok)
    except BaseException:
        if cur >= 0:
            os.close(cur)
        raise
    return Dir(cur, text)


def open_regular(name, cap: int, *, dir_fd: int | None = None) -> tuple[int, os.stat_result]:
    """Open `name` for reading without following a symbolic link or waiting on a
    FIFO; raise NotRegular unless it is a regular file of at most `cap` bytes."""
    try:
        fd = os.open(name, O_READ, dir_fd=dir_fd)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise NotRegular("a symbolic link (not followed)") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegular(f"{kind(st.st_mode)}, not a regular file")
        if st.st_size > cap:
            raise NotRegular(f"{st.st_size} bytes, more than the {cap} expected")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def read_regular(name, cap: int, *, dir_fd: int | None = None) -> bytes:
    """The bytes of regular file `name`, at most `cap` of them (see open_regular);
    a file that grows past `cap` while read raises NotRegular too."""
    fd, _ = open_regular(name, cap, dir_fd=dir_fd)
    try:
        chunks, n = [], 0
        while True:
            b = os.read(fd, min(1 << 20, cap + 1 - n))
            if not b:
                return b"".join(chunks)
            chunks.append(b)
            n += len(b)
            if n > cap:
                raise NotRegular(f"more than the {cap} bytes expected")
    finally:
        os.close(fd)


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
        raise refuse(text, "is not a file name")
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
