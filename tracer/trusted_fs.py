"""Directories and files provably ours, opened as root on a host where other users write files.

Two things connscope uses as root must be provably ours: the recording
directory (`--out DIR`, and the directory of `report --html FILE`), where the
user who ran sudo is trusted too because the recording is theirs; and the
caches under /var/cache/connscope (compiled programs that root loads into the
kernel, the header tree bcc compiles against), where only root is (and our
own uid, when not root: tests, `doctor` run by a user). `Trust` says which;
everything else is one walk (`Trust.open_dir`) from `/`, one component at a
time with O_NOFOLLOW, holding each directory by descriptor:

- every directory on the way (the parents) is owned by a trusted user, and is
  either not writable by group/others or sticky (like /tmp: others may add
  entries there, but not rename or remove ours); for the caches a sticky
  parent must also be root's;
- the directory itself is owned by a trusted user and not writable by
  group/others (sticky is not enough: others could plant files in it), unless
  the caller allows a sticky shared one for a single file written with O_EXCL
  and renamed (`report --html`);
- a symbolic link on the way is followed only if a trusted user owns it (the
  kernel's protected_symlinks rule, which is off on some hosts), in a
  directory already checked;
- a missing directory is created (mode 0700 until checked), then opened with
  O_NOFOLLOW and checked to be the empty directory we made before it gets its
  mode (and, for a recording, its owner) through the descriptor: a race ends
  in a refusal.

Everything is then done relative to directory descriptors, never by path, so
no rename elsewhere can redirect a write once the directory is open, and what
was checked is what is used. What is read back (`Trust.open_regular`,
`read_regular`) is looked at first and opened O_NOFOLLOW|O_NONBLOCK only if
it is a regular file, must be the same file once open, and is size-capped
before and while reading: a FIFO, a device or a symbolic link is refused with
a reason, never followed, waited on or read to the end; in a cache an entry
must also be a trusted user's and writable by nobody else.

Refusals are Untrusted, an OSError (so that storage-error handling catches
it) with one line saying why (and, for a recording, what to do); a file read
back from a recording that is not a regular file of a sane size is NotRegular,
whose str() is the reason alone (its caller names the file).

This module imports nothing but the standard library and tracer.safe_text:
the probe layer and the sinks both use it.
"""
from __future__ import annotations

import errno
import os
import pwd
import stat
from dataclasses import dataclass
from typing import Callable

from tracer.safe_text import printable

O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
O_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
MAX_LINKS = 40               # as the kernel's own limit on a path
_SHARED = stat.S_IWGRP | stat.S_IWOTH


class Untrusted(OSError):
    """A directory or file connscope will not use; str() is the whole message,
    `reason` the part after the path."""

    reason = ""

    def __str__(self) -> str:
        return self.args[0] if self.args else "not provably ours"


class NotRegular(OSError):
    """Something read back is not a regular file of a sane size; str() is the reason."""

    def __str__(self) -> str:
        return self.args[0] if self.args else "not a regular file"


def sudo_owner() -> tuple[int, int] | None:
    """(uid, gid) of the user who ran sudo, if we are root under sudo."""
    uid, gid = os.environ.get("SUDO_UID"), os.environ.get("SUDO_GID")
    if not uid or not gid or os.geteuid() != 0:
        return None
    try:
        return int(uid), int(gid)
    except ValueError:
        return None


def who(uid: int) -> str:
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def owner_name(uid: int) -> str:
    return "root" if uid == 0 else f"uid {uid}"


def kind(mode: int) -> str:
    for test, name in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISREG, "a regular file")):
        if test(mode):
            return name
    return "not a regular file"


def _writers(mode: int) -> str:
    return {stat.S_IWGRP: "group", stat.S_IWOTH: "others"}.get(mode & _SHARED, "group and others")


@dataclass(frozen=True, eq=False)
class Trust:
    """Whom a walk trusts, what it does to the directories it makes, how it says no.

    `says` maps each refusal to its words after the path, formatted with
    who/owner (of the uid), kind, mode, writers, size, cap; a text starting
    with ":" follows the path directly. `file_error` makes the exception for
    a file read back from (shown path, words); None: Untrusted naming it."""

    owners: Callable[[], frozenset[int]]
    sticky_owners: Callable[[], frozenset[int]]   # who may own a sticky, shared parent
    says: dict
    relative_ok: bool           # a relative path is taken from the current directory
    parent_mode: int | None     # mode of parents it makes (None: as the last one)
    give_to_sudo_user: bool     # directories it makes are chown-ed to SUDO_UID/GID
    check_entries: bool         # a file read back must be a trusted owner's, not shared
    file_error: Callable[[str, str], Exception] | None = None

    # -- refusals

    def refuse(self, shown: str, what: str, **fields) -> Untrusted:
        reason = self.says[what].format(**fields)
        e = Untrusted(f"{printable(shown)}{'' if reason.startswith(':') else ' '}{reason}")
        e.reason = reason
        return e

    def refuse_file(self, shown: str, what: str, **fields) -> Exception:
        if self.file_error is None:
            return self.refuse(shown, what, **fields)
        return self.file_error(shown, self.says[what].format(**fields))

    def _uid(self, uid: int) -> dict:
        return {"who": who(uid), "owner": owner_name(uid)}

    def _mode(self, mode: int) -> dict:
        return {"mode": stat.S_IMODE(mode), "writers": _writers(mode)}

    # -- directories

    def check_dir(self, st: os.stat_result, shown: str, *, final: bool = True,
                  shared_ok: bool = False) -> None:
        """Raise Untrusted unless `st` is a directory only trusted users can change.

        Not `final` (a parent), or `shared_ok`: a sticky directory writable by
        others (like /tmp) is acceptable if owned by `sticky_owners`: others
        cannot rename or remove what we own there."""
        if not stat.S_ISDIR(st.st_mode):
            raise self.refuse(shown, "not_dir", kind=kind(st.st_mode))
        if st.st_uid not in self.owners():
            raise self.refuse(shown, "owner", **self._uid(st.st_uid))
        if st.st_mode & _SHARED and not ((shared_ok or not final) and st.st_mode & stat.S_ISVTX
                                         and st.st_uid in self.sticky_owners()):
            raise self.refuse(shown, "shared", **self._mode(st.st_mode))

    def open_dir(self, path, *, create_mode: int | None = None, shared_ok: bool = False) -> int:
        """A descriptor of directory `path`, walked and checked as the module docstring says.

        `create_mode`: make missing directories, the last one with this mode
        (parents with `parent_mode`), set on the descriptor whatever the umask.
        `shared_ok`: `path` itself may be a sticky directory writable by others.
        Raises Untrusted with the reason, FileNotFoundError if missing and
        no `create_mode`, other OSError as the system gives them."""
        text = os.fsdecode(path)
        if not text.startswith("/") and not self.relative_ok:
            raise Untrusted(f"{printable(text)}: not an absolute path")
        full = text if text.startswith("/") else os.path.join(os.getcwd(), text)
        todo = [c for c in reversed(full.split("/")) if c not in ("", ".")]
        stack = [(os.open("/", O_DIR), "/")]    # the directories walked, for ".."
        links = 0
        try:
            self.check_dir(os.fstat(stack[0][0]), "/", final=not todo, shared_ok=shared_ok)
            while todo:
                name = todo.pop()
                cur, shown = stack[-1]
                if name == "..":
                    if len(stack) > 1:
                        os.close(stack.pop()[0])
                    continue
                child = shown.rstrip("/") + "/" + name
                try:
                    st = os.stat(name, dir_fd=cur, follow_symlinks=False)
                except FileNotFoundError:
                    st = None
                if st is not None and stat.S_ISLNK(st.st_mode):
                    if st.st_uid not in self.owners():
                        raise self.refuse(child, "link_owner", **self._uid(st.st_uid))
                    links += 1
                    if links > MAX_LINKS:
                        raise self.refuse(text, "links")
                    target = os.readlink(name, dir_fd=cur)
                    todo.extend(c for c in reversed(target.split("/")) if c not in ("", "."))
                    if target.startswith("/"):
                        while len(stack) > 1:
                            os.close(stack.pop()[0])
                    continue
                last = not todo
                mode = None if create_mode is None else (
                    create_mode if last or self.parent_mode is None else self.parent_mode)
                stack.append((self.open_subdir(cur, name, child, final=last, create_mode=mode,
                                               shared_ok=shared_ok and last), child))
            # `path` may have been "/", or ended in ".." or a link to "/": the rule
            # for the directory itself still applies
            fd, shown = stack.pop()
            try:
                self.check_dir(os.fstat(fd), shown, shared_ok=shared_ok)
            except BaseException:
                os.close(fd)
                raise
            return fd
        finally:
            for fd, _ in stack:
                os.close(fd)

    def open_subdir(self, parent_fd: int, name: str, shown: str, *, final: bool = True,
                    create_mode: int | None = None, shared_ok: bool = False) -> int:
        """Open `name` in `parent_fd` as a directory we trust, never through a
        symbolic link; with `create_mode`, make it if missing."""
        for _ in range(2):   # a second try if someone made `name` between our look and our mkdir
            try:
                fd = os.open(name, O_DIR, dir_fd=parent_fd)
            except FileNotFoundError:
                if create_mode is None:
                    raise
                try:
                    os.mkdir(name, 0o700, dir_fd=parent_fd)    # private until it is checked
                except FileExistsError:
                    continue
                fd = self._made(parent_fd, name, shown, create_mode)
            except OSError as e:
                if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
                raise self.refuse(shown, "not_dir", kind=kind(st.st_mode)) from None
            try:
                self.check_dir(os.fstat(fd), shown, final=final, shared_ok=shared_ok)
            except BaseException:
                os.close(fd)
                raise
            return fd
        raise self.refuse(shown, "changing")

    def _made(self, parent_fd: int, name: str, shown: str, mode: int) -> int:
        fd = os.open(name, O_DIR, dir_fd=parent_fd)
        try:
            st = os.fstat(fd)
            if st.st_uid != os.geteuid() or stat.S_IMODE(st.st_mode) & 0o077 or os.listdir(fd):
                raise self.refuse(shown, "replaced")
            os.fchmod(fd, mode)  # mkdir's mode is masked by the umask
            owner = sudo_owner() if self.give_to_sudo_user else None
            if owner is not None:
                os.fchown(fd, *owner)
            os.fsync(parent_fd)
        except BaseException:
            os.close(fd)
            raise
        return fd

    # -- files read back

    def _check_file(self, st: os.stat_result, shown: str, cap: int) -> None:
        if not stat.S_ISREG(st.st_mode):
            what = ("file_link" if stat.S_ISLNK(st.st_mode) else
                    "file_dir" if stat.S_ISDIR(st.st_mode) and "file_dir" in self.says else "file_kind")
            raise self.refuse_file(shown, what, kind=kind(st.st_mode))
        if self.check_entries:
            if st.st_uid not in self.owners():
                raise self.refuse_file(shown, "owner", **self._uid(st.st_uid))
            if st.st_mode & _SHARED:
                raise self.refuse_file(shown, "shared", **self._mode(st.st_mode))
        if cap is not None and st.st_size > cap:
            raise self.refuse_file(shown, "file_size", size=st.st_size, cap=cap)

    def open_regular(self, name, cap: int | None, *, dir_fd: int | None = None,
                     where: str | None = None) -> tuple[int, os.stat_result]:
        """A read-only descriptor of regular file `name` (in `dir_fd`, shown as
        in `where`) of at most `cap` bytes (None: any size), and its stat.
        Nothing else is opened: not a link, not a FIFO (which could block),
        not a device."""
        shown = _shown(name, where)
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        self._check_file(st, shown, cap)
        try:
            # O_NONBLOCK: a FIFO swapped in after the look must not block the open
            fd = os.open(name, O_READ, dir_fd=dir_fd)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise self.refuse_file(shown, "file_link") from None
            raise
        try:
            now = os.fstat(fd)
            if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
                raise self.refuse_file(shown, "file_changed")
            self._check_file(now, shown, cap)
            os.set_blocking(fd, True)
        except BaseException:
            os.close(fd)
            raise
        return fd, now

    def read_capped(self, fd: int, shown: str, cap: int) -> bytes:
        """At most `cap` bytes of fd; refused if it has more (it grew since its fstat)."""
        chunks, left = [], cap + 1
        while left > 0:
            b = os.read(fd, min(left, 1 << 20))
            if not b:
                break
            chunks.append(b)
            left -= len(b)
        if left <= 0:
            raise self.refuse_file(shown, "file_grew", cap=cap)
        return b"".join(chunks)

    def read_regular(self, name, cap: int, *, dir_fd: int | None = None,
                     where: str | None = None) -> bytes:
        """The bytes of regular file `name`, at most `cap` of them (see open_regular)."""
        fd, _ = self.open_regular(name, cap, dir_fd=dir_fd, where=where)
        try:
            return self.read_capped(fd, _shown(name, where), cap)
        finally:
            os.close(fd)


def _shown(name, where: str | None) -> str:
    return os.path.join(where, name) if where else os.fsdecode(name)


def _recording_owners() -> frozenset[int]:
    """Root, ourselves, the user who ran sudo."""
    owners = {0, os.geteuid()}
    sudo = sudo_owner()
    if sudo is not None:
        owners.add(sudo[0])
    return frozenset(owners)


def _cache_owners() -> frozenset[int]:
    """Root, and ourselves: never the user who ran sudo, whose files would
    otherwise be loaded into the kernel by root."""
    return frozenset({0, os.geteuid()})


# The recording directory is the sudo user's as much as root's, and its
# messages say what to do; files read back are named by the caller.
RECORDING = Trust(
    owners=_recording_owners, sticky_owners=_recording_owners, relative_ok=True,
    parent_mode=None, give_to_sudo_user=True, check_entries=False,
    file_error=lambda shown, reason: NotRegular(reason),
    says={
        "owner": "is owned by {who}, not by root or the user who ran sudo, who could change "
                 "it under connscope: use a directory that you or root own",
        "shared": "is writable by others (mode {mode:04o}), who could plant files in it: "
                  "run 'chmod go-w' on it or use another directory",
        "not_dir": "is {kind}, not a directory",
        "link_owner": "is a symbolic link owned by {who}: connscope follows links only if root "
                      "or the user who ran sudo owns them; give the real directory",
        "links": "has too many symbolic links",
        "replaced": "was replaced while connscope created it; try again, or use a directory "
                    "only you can write to",
        "changing": "keeps changing while connscope opens it",
        "file_link": "a symbolic link (not followed)",
        "file_kind": "{kind}, not a regular file",
        "file_size": "{size} bytes, more than the {cap} expected",
        "file_grew": "more than the {cap} bytes expected",
        "file_changed": "replaced while connscope opened it",
    })

# The caches hold what root loads into the kernel or compiles against: root's
# alone (a sticky shared parent too), parents made 0755; their messages are
# shown by `doctor` after "cache ignored:".
CACHE = Trust(
    owners=_cache_owners, sticky_owners=lambda: frozenset({0}), relative_ok=False,
    parent_mode=0o755, give_to_sudo_user=False, check_entries=True,
    says={
        "owner": "is owned by {owner}",
        "shared": "is writable by {writers} (mode {mode:04o})",
        "not_dir": "is not a directory",
        "link_owner": "is a symbolic link owned by {owner}",
        "links": ": too many symbolic links",
        "replaced": "was replaced while connscope created it",
        "changing": "keeps changing while connscope opens it",
        "file_link": "is a symbolic link",
        "file_kind": "is not a regular file",
        "file_size": "is {size} bytes, more than {cap}",
        "file_grew": "grew past {cap} bytes",
        "file_changed": "changed while it was opened",
    })
