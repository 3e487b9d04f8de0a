"""Which kernel header tree bcc compiles against, and the tracing mounts it reads.

bcc 0.26 compiles every program against a kernel header tree. It looks at
/lib/modules/$(uname -r)/build (and .../source when both exist), then at
/sys/kernel/kheaders.tar.xz; with BCC_KERNEL_SOURCE=<dir> it uses that one
directory alone. Kernels without packaged headers (custom or very new ones)
can still be traced: connscope reads every struct field at offsets taken from
the kernel's BTF, so any header tree that compiles is enough. Debian splits its
headers into an arch-specific and a -common package, which bcc cannot combine
by itself, so we merge them into a symlink farm under /var/cache.

We never link a foreign tree into /lib/modules: DKMS would then build modules
against the wrong kernel.

Headers shape the code root loads into the kernel, so a /usr/src tree, the
cache directory and the merged farm are used only when root alone can have
written them (tracer/trusted_fs.py); a farm under our name that is not provably
connscope's own is rebuilt in a fresh directory, and a cache directory that
is not root's is not used at all (doctor says why).
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from typing import Optional

from tracer.trusted_fs import CACHE, O_DIR, Untrusted

DEFAULT_CACHE_DIR = "/var/cache/connscope/kernel-tree"
MODULES_DIR = "/lib/modules"
USR_SRC = "/usr/src"
KHEADERS = "/sys/kernel/kheaders.tar.xz"

# The file bcc checks to decide whether a tree has headers at all.
_KCONFIG_H = "include/linux/kconfig.h"
_UTSRELEASE_H = "include/generated/utsrelease.h"
_STAMP = ".connscope-sources"
# Written once the farm was checked link by link (_check_farm); a separate
# file so that the stamp stays what older versions compare (they reuse a farm
# this version built instead of rebuilding it under a running compile).
_CHECKED = ".connscope-checked"
_CHECKED_TEXT = b"every directory root's, every link into the source trees\n"


class TracefsUnavailable(Exception):
    """tracefs/debugfs are not mounted and cannot be mounted."""


@dataclass
class HeaderTree:
    path: Optional[str]
    version: Optional[str]  # UTS_RELEASE of the tree
    matches_running_kernel: bool
    how: str  # one line for `connscope doctor`
    # "running" (/lib/modules of this kernel), "kheaders", "usr-src" (one
    # complete tree in /usr/src), "merged" (Debian split packages in our
    # cache), "unmerged" (found, but merging needs root), "none"
    kind: str = "none"


def read_utsrelease(tree: str) -> Optional[str]:
    """UTS_RELEASE from <tree>/include/generated/utsrelease.h, or None."""
    try:
        with open(os.path.join(tree, _UTSRELEASE_H)) as f:
            text = f.read()
    except OSError:
        return None
    m = re.search(r'#define\s+UTS_RELEASE\s+"([^"]+)"', text)
    return m.group(1) if m else None


def version_key(version: str) -> tuple:
    """Sort key that orders 6.1.0-9 before 6.1.0-10."""
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"(\d+)", version) if p)


def _bcc_include_root(build: str) -> str:
    # Mirrors bcc: with both build/ and source/ present it reads source/.
    parent = os.path.dirname(build)
    source = os.path.join(parent, "source")
    if os.path.isdir(build) and os.path.isdir(source):
        return source
    return build


def _has_headers(tree: str) -> bool:
    return os.path.isfile(os.path.join(tree, _KCONFIG_H))


def _common_tree_of(arch_tree: str) -> Optional[str]:
    """The -common tree a Debian arch-specific tree includes from its Makefile."""
    try:
        with open(os.path.join(arch_tree, "Makefile")) as f:
            text = f.read()
    except OSError:
        return None
    for m in re.finditer(r"^\s*include\s+(\S+)/Makefile\s*$", text, re.M):
        if _has_headers(m.group(1)):
            return m.group(1)
    return None


@dataclass
class _Candidate:
    version: str
    arch_tree: str
    common_tree: Optional[str]  # None: arch_tree is complete by itself


def _usr_src_candidates(usr_src: str) -> list[_Candidate]:
    try:
        names = sorted(os.listdir(usr_src))
    except OSError:
        return []
    found = []
    for name in names:
        if not name.startswith("linux-headers-"):
            continue
        tree = os.path.join(usr_src, name)
        version = read_utsrelease(tree)
        if version is None:  # a -common tree, or something else
            continue
        if _has_headers(tree):
            found.append(_Candidate(version, tree, None))
            continue
        common = _common_tree_of(tree)
        if common is not None:
            found.append(_Candidate(version, tree, common))
    # Headers shape the code root loads into the kernel: a tree someone else
    # could have written is never compiled against.
    return [c for c in found if not any(_untrusted(t) for t in (c.arch_tree, c.common_tree) if t)]


def _untrusted(tree: str) -> str:
    """Why `tree` might hold someone else's headers ("" when it is root's)."""
    try:
        os.close(CACHE.open_dir(tree))
        return ""
    except Untrusted as e:
        return str(e)
    except OSError as e:
        return f"{tree}: {e.strerror}"


def _stamp_text(cand: _Candidate) -> str:
    # A package upgrade rewrites these files with the new build's mtime, so
    # a changed stamp means the farm may point at files that moved.
    lines = []
    for tree, rel in ((cand.arch_tree, _UTSRELEASE_H), (cand.common_tree, "Makefile")):
        path = os.path.join(tree, rel)
        try:
            mtime = os.stat(path).st_mtime_ns
        except OSError:
            mtime = -1
        lines.append(f"{path} {mtime}")
    return "\n".join(lines) + "\n"


def _reusable(cache_fd: int, cache_dir: str, cand: _Candidate) -> str:
    """"" when <cache_dir>/<version> is a farm connscope built and checked
    for this candidate, else why not. The directory's content was checked
    link by link before it got its name (_check_farm) and, being root's and
    writable by nobody else, can have been changed by root alone since."""
    where = os.path.join(cache_dir, cand.version)
    try:
        fd = CACHE.open_subdir(cache_fd, cand.version, where)
    except FileNotFoundError:
        return "not merged yet"
    except Untrusted as e:
        return str(e)
    except OSError as e:
        return f"{where}: {e.strerror}"
    try:
        stamp = CACHE.read_regular(_STAMP, 4096, dir_fd=fd, where=where)
        checked = CACHE.read_regular(_CHECKED, 4096, dir_fd=fd, where=where)
    except FileNotFoundError as e:
        return f"{os.path.join(where, os.path.basename(e.filename or ''))}: not made by this version"
    except Untrusted as e:
        return str(e)
    except OSError as e:
        return f"{os.path.join(where, _STAMP)}: {e.strerror}"
    finally:
        os.close(fd)
    if stamp.decode(errors="replace") != _stamp_text(cand) or checked != _CHECKED_TEXT:
        return "built from other sources or by an older connscope"
    if not (_has_headers(where) and read_utsrelease(where) == cand.version):
        return "incomplete"
    return ""


def _check_farm(fd: int, where: str, roots: tuple[str, ...]) -> None:
    """Raise Untrusted unless every directory below fd is root's and not
    writable by others, and every entry is a link into one of `roots` (what
    cp -rs made). Costs ~0.4 s for 12.8k links, so it runs once, on the
    freshly built farm, not at every start."""
    with os.scandir(fd) as it:
        entries = [(e.name, e.is_symlink(), e.is_dir(follow_symlinks=False)) for e in it]
    for name, is_link, is_dir in entries:
        here = os.path.join(where, name)
        if is_link:
            target = os.path.normpath(os.readlink(name, dir_fd=fd))
            if not target.startswith(tuple(r.rstrip("/") + "/" for r in roots)):
                raise Untrusted(f"{here} points to {target}, outside {' and '.join(roots)}")
        elif is_dir:
            sub = CACHE.open_subdir(fd, name, here)
            try:
                _check_farm(sub, here, roots)
            finally:
                os.close(sub)
        else:
            raise Untrusted(f"{here} is neither a link nor a directory")


# cp is found only in the system's directories, and sees nothing of ours.
_CP_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}


def _merge(cand: _Candidate, cache_dir: str) -> str:
    """Symlink farm of common + arch trees at <cache_dir>/<version>; reused when valid.

    Only in a cache_dir that is root's all the way up (tracer/trusted_fs.py), made
    0755 if missing. Built in a fresh root-only temporary directory there,
    checked link by link, then renamed into place, so a concurrent or
    interrupted run never leaves a half-built tree under the final name and
    nothing planted under that name is ever used. Raises Untrusted or OSError.
    """
    cache_fd = CACHE.open_dir(cache_dir, create_mode=0o755)
    try:
        if not _reusable(cache_fd, cache_dir, cand):
            return os.path.join(cache_dir, cand.version)
        # The paths below are names in cache_fd's directory, which nobody but
        # root can change: resolving them again finds the same directory.
        tmp = tempfile.mkdtemp(prefix=f".{cand.version}.", dir=cache_dir)
        try:
            # -s: links, not copies (12.8k entries in ~0.4 s); the arch tree wins
            # where both have a file (generated headers, .config).
            for src, extra in ((cand.common_tree, []), (cand.arch_tree, ["-f"])):
                subprocess.run(["cp", "-rs", *extra, f"{src}/.", f"{tmp}/"], check=True, cwd="/",
                               env=_CP_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            tmp_name = os.path.basename(tmp)
            tfd = os.open(tmp_name, O_DIR, dir_fd=cache_fd)
            try:
                _check_farm(tfd, tmp, (cand.arch_tree, cand.common_tree))
                for name, text in ((_STAMP, _stamp_text(cand).encode()), (_CHECKED, _CHECKED_TEXT)):
                    sfd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                                  0o644, dir_fd=tfd)
                    with os.fdopen(sfd, "wb") as f:
                        os.fchmod(sfd, 0o644)
                        f.write(text)
                os.fchmod(tfd, 0o755)
            finally:
                os.close(tfd)
            for _ in range(2):
                # Stale (older package revision, older connscope) or not ours: moved away.
                try:
                    os.stat(cand.version, dir_fd=cache_fd, follow_symlinks=False)
                    stale = tempfile.mkdtemp(prefix=f".{cand.version}.stale.", dir=cache_dir)
                    os.rename(cand.version, os.path.join(os.path.basename(stale), "tree"),
                              src_dir_fd=cache_fd, dst_dir_fd=cache_fd)
                    shutil.rmtree(stale, ignore_errors=True)
                except FileNotFoundError:
                    pass
                try:
                    os.rename(tmp_name, cand.version, src_dir_fd=cache_fd, dst_dir_fd=cache_fd)
                    tmp = None
                    break
                except OSError as e:
                    if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                        raise
                # Another process merged first: use theirs if it is sound, else replace it.
                if not _reusable(cache_fd, cache_dir, cand):
                    break
            else:
                raise Untrusted(f"{os.path.join(cache_dir, cand.version)} keeps being "
                                              f"replaced by another process")
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
        return os.path.join(cache_dir, cand.version)
    finally:
        os.close(cache_fd)


def find_header_tree(release: Optional[str] = None, cache_dir: str = DEFAULT_CACHE_DIR, *,
                     modules_dir: str = MODULES_DIR, usr_src: str = USR_SRC,
                     kheaders: str = KHEADERS) -> HeaderTree:
    """The header tree bcc should compile against; how="none" when there is none.

    Order: this kernel's /lib/modules/<rel>/build, the kernel's built-in
    kheaders, any other tree at /lib/modules/<rel>/build, then /usr/src (the
    tree for this release if there is one, else the newest), merged into
    cache_dir when it is a Debian split pair.
    """
    release = release or os.uname().release
    build = os.path.join(modules_dir, release, "build")
    build_usable = _has_headers(_bcc_include_root(build))
    build_version = read_utsrelease(build) if build_usable else None
    if build_usable and build_version == release:
        return HeaderTree(build, release, True, f"running kernel's headers at {build}", "running")
    if os.path.isfile(kheaders):
        return HeaderTree(kheaders, release, True,
                          f"running kernel's built-in headers ({kheaders}, CONFIG_IKHEADERS)", "kheaders")
    if build_usable:
        return HeaderTree(build, build_version, False,
                          f"headers at {build} are for {build_version or 'an unknown kernel'}, "
                          f"not {release}; struct offsets from BTF", "running")

    cands = _usr_src_candidates(usr_src)
    if not cands:
        return HeaderTree(None, None, False, "none", "none")
    exact = [c for c in cands if c.version == release]
    cand = exact[0] if exact else max(cands, key=lambda c: version_key(c.version))
    matches = cand.version == release
    offsets = "" if matches else "; struct offsets from BTF"
    adjective = "running kernel's" if matches else "generic"
    if cand.common_tree is None:
        return HeaderTree(cand.arch_tree, cand.version, matches,
                          f"{adjective} tree {cand.version} at {cand.arch_tree}{offsets}", "usr-src")
    try:
        merged = _merge(cand, cache_dir)
    except Untrusted as e:
        return HeaderTree(None, cand.version, matches,
                          f"{adjective} Debian tree {cand.version} found in {usr_src} but the merged "
                          f"tree cache is not used: {e}", "unmerged")
    except (OSError, subprocess.CalledProcessError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        return HeaderTree(None, cand.version, matches,
                          f"{adjective} Debian tree {cand.version} found in {usr_src} but not merged "
                          f"into {cache_dir} ({reason}; run as root)", "unmerged")
    return HeaderTree(merged, cand.version, matches,
                      f"{adjective} Debian tree {cand.version} merged at {merged}{offsets}", "merged")


def bcc_environment(tree: HeaderTree) -> dict[str, str]:
    """Environment variables to set before bcc compiles against `tree`."""
    if tree.path and tree.kind in ("merged", "usr-src"):
        return {"BCC_KERNEL_SOURCE": tree.path}
    return {}  # bcc finds /lib/modules and kheaders by itself


# --- tracefs -----------------------------------------------------------------

TRACEFS = "/sys/kernel/tracing"
DEBUGFS = "/sys/kernel/debug"
# bcc 0.26 reads tracepoint formats from here, whatever is mounted elsewhere.
BCC_TRACING = "/sys/kernel/debug/tracing"


def mounted_fstypes(mounts_file: str = "/proc/self/mounts") -> dict[str, str]:
    """Mount point -> file system type (the last mount on a point wins)."""
    out = {}
    try:
        with open(mounts_file) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3:
                    out[parts[1].replace("\\040", " ")] = parts[2]
    except OSError:
        pass
    return out


def _mount(fstype: str, target: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p)
    if libc.mount(b"nodev", target.encode(), fstype.encode(), 0, None) != 0:
        err = ctypes.get_errno()
        raise TracefsUnavailable(
            f"cannot mount {fstype} on {target}: {os.strerror(err)}; "
            f"mount it by hand with 'mount -t {fstype} nodev {target}'")


def ensure_tracefs() -> None:
    """Mount tracefs on /sys/kernel/tracing and debugfs on /sys/kernel/debug if missing.

    Idempotent. bcc 0.26 reads tracepoint formats under /sys/kernel/debug/tracing,
    which the kernel provides once debugfs is mounted.
    """
    mounts = mounted_fstypes()
    wanted = ((TRACEFS, "tracefs"), (DEBUGFS, "debugfs"))
    missing = [(t, fs) for t, fs in wanted if mounts.get(t) != fs]
    if missing and os.geteuid() != 0:
        names = ", ".join(f"{fs} on {t}" for t, fs in missing)
        raise TracefsUnavailable(f"{names} not mounted and mounting needs root: run as root")
    for target, fstype in missing:
        if not os.path.isdir(target):
            raise TracefsUnavailable(f"cannot mount {fstype}: {target} does not exist "
                                     f"(kernel built without {fstype}?)")
        _mount(fstype, target)
    # debugfs normally automounts tracefs at debug/tracing; older kernels do not.
    if not os.path.isdir(os.path.join(BCC_TRACING, "events")):
        if os.path.isdir(BCC_TRACING) and mounted_fstypes().get(BCC_TRACING) != "tracefs":
            _mount("tracefs", BCC_TRACING)
        if not os.path.isdir(os.path.join(BCC_TRACING, "events")):
            raise TracefsUnavailable(f"{BCC_TRACING}/events is missing after mounting debugfs; "
                                     f"bcc cannot read tracepoint formats")
