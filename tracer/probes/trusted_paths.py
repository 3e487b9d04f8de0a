"""Directories and files that are provably root's, opened by descriptor.

The caches under /var/cache/connscope hold what root loads into the kernel
(compiled programs) and what bcc compiles against (a header tree). Only a
directory that root alone can change may feed them: it and every directory
above it are owned by root and writable by nobody else. An ancestor may be
world-writable if it is sticky and root-owned (/tmp): others can add names
there but never rename or remove root's, and every component is checked for
its owner anyway. When not root (tests, `doctor` run by a user), our own uid
counts as well as root.

Everything is opened component by component from / with O_NOFOLLOW, so what
was checked is what is used; a symbolic link on the way is followed only
when root (or we) made it, in a directory already checked.
"""
from __future__ import annotations

import errno
import os
import stat

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_LINKS = 16


class Untrusted(Exception):
    """Why a directory or file is not provably root's (one line)."""


def trusted_owners() -> frozenset[int]:
    uid = os.geteuid()
    return frozenset({0, uid})


def owner_name(uid: int) -> str:
    return "root" if uid == 0 else f"uid {uid}"


def check_dir_stat(st: os.stat_result, where: str, *, last: bool) -> None:
    """Raise Untrusted unless this directory can be changed only by a trusted owner."""
    if not stat.S_ISDIR(st.st_mode):
        raise Untrusted(f"{where} is not a directory")
    if st.st_uid not in trusted_owners():
        raise Untrusted(f"{where} is owned by {owner_name(st.st_uid)}")
    writable = st.st_mode & 0o022
    if writable and (last or not (st.st_mode & stat.S_ISVTX and st.st_uid == 0)):
        raise Untrusted(f"{where} is writable by {_who(writable)} (mode {stat.S_IMODE(st.st_mode):04o})")


def _who(writable_bits: int) -> str:
    return {0o020: "group", 0o002: "others"}.get(writable_bits, "group and others")


def open_dir(path: str, *, create_mode: int | None = None) -> int:
    """A descriptor of directory `path` after checking it and every parent.

    create_mode: make the missing directories (parents 0755, the last one
    create_mode; the mode is set on the descriptor, whatever the umask).
    Raises Untrusted (with the reason), FileNotFoundError when `path` does
    not exist and create_mode is None, or OSError (e.g. EACCES when not root).
    """
    if not path.startswith("/"):
        raise Untrusted(f"{path}: not an absolute path")
    parts = [p for p in path.split("/") if p and p != "."]
    stack = [(os.open("/", _DIR_FLAGS), "/")]
    links = 0
    try:
        check_dir_stat(os.fstat(stack[0][0]), "/", last=not parts)
        while parts:
            name = parts.pop(0)
            top, where = stack[-1]
            if name == "..":
                if len(stack) > 1:
                    os.close(stack.pop()[0])
                continue
            here = os.path.join(where, name)
            created = False
            try:
                fd = os.open(name, _DIR_FLAGS, dir_fd=top)
            except FileNotFoundError:
                if create_mode is None:
                    raise
                try:
                    os.mkdir(name, 0o700, dir_fd=top)
                    created = True
                except FileExistsError:
                    pass   # made by a concurrent start: checked like any other
                fd = os.open(name, _DIR_FLAGS, dir_fd=top)
            except OSError as e:
                if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                st = os.stat(name, dir_fd=top, follow_symlinks=False)
                if not stat.S_ISLNK(st.st_mode):
                    raise Untrusted(f"{here} is not a directory") from None
                if st.st_uid not in trusted_owners():
                    raise Untrusted(f"{here} is a symbolic link owned by {owner_name(st.st_uid)}") from None
                links += 1
                if links > _MAX_LINKS:
                    raise Untrusted(f"{path}: too many symbolic links") from None
                target = os.readlink(name, dir_fd=top)
                if target.startswith("/"):
                    while len(stack) > 1:
                        os.close(stack.pop()[0])
                parts[:0] = [p for p in target.split("/") if p and p != "."]
                continue
            stack.append((fd, here))
            if created:
                os.fchmod(fd, (create_mode if not parts else 0o755))
            check_dir_stat(os.fstat(fd), here, last=not parts)
        fd = stack.pop()[0]
        return fd
    finally:
        for fd, _ in stack:
            os.close(fd)


def open_entry(dir_fd: int, name: str, where: str, *, max_size: int) -> int:
    """A read-only descriptor of regular file `name` in a checked directory:
    not a link, owned by a trusted owner, writable by nobody else, at most
    max_size bytes. Raises Untrusted or FileNotFoundError."""
    here = os.path.join(where, name)
    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    _check_entry_stat(st, here, max_size)
    try:
        # O_NONBLOCK: a FIFO swapped in after the stat must not block the open.
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise Untrusted(f"{here} is a symbolic link") from None
        raise
    try:
        st2 = os.fstat(fd)
        if (st2.st_dev, st2.st_ino) != (st.st_dev, st.st_ino):
            raise Untrusted(f"{here} changed while it was opened")
        _check_entry_stat(st2, here, max_size)
        return fd
    except BaseException:
        os.close(fd)
        raise


def read_entry(dir_fd: int, name: str, where: str, *, max_size: int) -> bytes:
    fd = open_entry(dir_fd, name, where, max_size=max_size)
    try:
        return read_capped(fd, os.path.join(where, name), max_size)
    finally:
        os.close(fd)


def read_capped(fd: int, here: str, max_size: int) -> bytes:
    """At most max_size bytes of fd; Untrusted if there are more."""
    chunks, left = [], max_size + 1
    while left > 0:
        b = os.read(fd, min(left, 1 << 20))
        if not b:
            break
        chunks.append(b)
        left -= len(b)
    data = b"".join(chunks)
    if len(data) > max_size:
        raise Untrusted(f"{here} grew past {max_size} bytes")
    return data


def _check_entry_stat(st: os.stat_result, here: str, max_size: int) -> None:
    if stat.S_ISLNK(st.st_mode):
        raise Untrusted(f"{here} is a symbolic link")
    if not stat.S_ISREG(st.st_mode):
        raise Untrusted(f"{here} is not a regular file")
    if st.st_uid not in trusted_owners():
        raise Untrusted(f"{here} is owned by {owner_name(st.st_uid)}")
    if st.st_mode & 0o022:
        raise Untrusted(f"{here} is writable by {_who(st.st_mode & 0o022)} (mode {stat.S_IMODE(st.st_mode):04o})")
    if st.st_size > max_size:
        raise Untrusted(f"{here} is {st.st_size} bytes, more than {max_size}")
