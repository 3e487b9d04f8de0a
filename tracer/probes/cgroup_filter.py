"""--cgroup PATH and --container ID: the cgroup v2 ids the kernel filters on.

The kernel compares the connecting or accepting task's cgroup v2 id
(bpf_get_current_cgroup_id, or its ancestor at the selected cgroup's level)
with the ids resolved here (bpf/common.h cgroup_wanted). Both arguments are
someone else's names on a shared host, so they are resolved the way
tracer/probes/cgroups.py reads the hierarchy: from the v2 mount (found in
mountinfo, never a path the user gives), one component at a time with
O_NOFOLLOW, no `.`/`..`/empty component, and the directory reached must be
on the v2 mount's own file system (same st_dev): a symbolic link or a mount
planted on the way is refused, never followed. A container id is looked up
by walking the v2 hierarchy (bounded) and reading what each directory's path
names (tracer/domain/containers.py); the prefix must name exactly one.
"""
from __future__ import annotations

import errno
import os
import stat
import struct
from typing import Optional

from tracer.domain import containers
from tracer.filters import CgroupTarget, FilterError
from tracer.probes.cgroups import hierarchies

O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
MAX_DEPTH = 64              # deeper than any runtime or kubelet nests
MAX_CGROUPS_WALKED = 100_000
# the kernel gained bpf_get_current_ancestor_cgroup_id in 5.7 (for tracing programs in 5.10 or
# later, depending on the build); without it only the cgroup itself is matched
ANCESTOR_HELPER = 123       # BPF_FUNC_get_current_ancestor_cgroup_id


def v2_root() -> str:
    """The cgroup v2 mount, or FilterError saying the host has none."""
    h = hierarchies()
    if h.v2 is None:
        raise FilterError("--cgroup/--container need a cgroup v2 hierarchy (the kernel's "
                          f"cgroup ids are v2 ids), and this host has none mounted "
                          f"(cgroups: {h.mode})")
    return h.v2


def _walk(root_fd: int, parts: list[bytes]) -> int:
    """An fd of the directory root/parts..., each component opened O_NOFOLLOW."""
    fd = os.dup(root_fd)
    try:
        for part in parts:
            nxt = os.open(part, O_DIR, dir_fd=fd)
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    return fd


def resolve_path(arg: str, root: Optional[str] = None) -> CgroupTarget:
    """--cgroup PATH: a directory under the v2 mount (/sys/fs/cgroup/unified/x)
    or a cgroup path as /proc/PID/cgroup shows it (/x)."""
    root = root or v2_root()
    base = root.rstrip("/") or "/"
    if arg == base or arg.startswith(base.rstrip("/") + "/"):
        rel = arg[len(base.rstrip("/")):] or "/"
    elif arg.startswith("/sys/fs/cgroup") and base != "/sys/fs/cgroup":
        raise FilterError(f"--cgroup {arg}: not under the cgroup v2 mount {base} (a cgroup v1 "
                          f"hierarchy? the kernel's cgroup ids are v2 ids)")
    else:
        rel = arg
    if not rel.startswith("/"):
        raise FilterError(f"--cgroup {arg}: give an absolute path (under {base}, or as "
                          f"/proc/PID/cgroup shows it)")
    rel = rel.rstrip("/") or "/"
    path = containers.clean_path(os.fsencode(rel))
    if path is None:
        raise FilterError(f"--cgroup {arg}: a cgroup path has no '.', '..' or empty component")
    parts = [p for p in os.fsencode(rel).split(b"/") if p]
    try:
        root_fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise FilterError(f"cannot open the cgroup v2 mount {base}: {e.strerror}") from None
    try:
        root_dev = os.fstat(root_fd).st_dev
        try:
            fd = _walk(root_fd, parts)
        except OSError as e:
            why = ("a symbolic link or not a directory on the way"
                   if e.errno in (errno.ELOOP, errno.ENOTDIR) else e.strerror)
            raise FilterError(f"--cgroup {arg}: not a cgroup under {base} ({why})") from None
        try:
            st = os.fstat(fd)
        finally:
            os.close(fd)
    finally:
        os.close(root_fd)
    if not stat.S_ISDIR(st.st_mode) or st.st_dev != root_dev:
        raise FilterError(f"--cgroup {arg}: not a cgroup of the v2 hierarchy at {base} "
                          f"(another file system)")
    return CgroupTarget(st.st_ino, len(parts), path, f"cgroup {arg}")


def cgroup_paths(root: Optional[str] = None, limit: int = MAX_CGROUPS_WALKED):
    """Every cgroup path under the v2 mount (bounded in count and depth),
    found by descriptor: no link is followed, no mount crossed."""
    root = root or v2_root()
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    dev = os.fstat(root_fd).st_dev
    seen = 0
    stack = [(root_fd, b"")]
    try:
        while stack:
            fd, path = stack.pop()
            try:
                if path:
                    yield containers.clean_path(path) or ""
                names = os.listdir(fd) if path.count(b"/") < MAX_DEPTH else []
                for name in names:
                    name = os.fsencode(name)
                    try:
                        sub = os.open(name, O_DIR, dir_fd=fd)
                    except OSError:
                        continue        # a file (cgroupfs: its control files), or gone
                    if os.fstat(sub).st_dev != dev or seen >= limit:
                        os.close(sub)
                        continue
                    seen += 1
                    stack.append((sub, path + b"/" + name))
            finally:
                os.close(fd)
    finally:
        for fd, _ in stack:
            os.close(fd)


def resolve_container(arg: str, root: Optional[str] = None) -> CgroupTarget:
    """--container ID: the cgroup of the one running container whose id starts with ID."""
    prefix = containers.container_prefix(arg)
    if prefix is None:
        raise FilterError(f"--container {arg}: not a container id (at least "
                          f"{containers.MIN_ID_PREFIX} of its hex digits, as `docker ps` shows)")
    root = root or v2_root()
    found = containers.container_cgroups(prefix, cgroup_paths(root))
    if not found:
        raise FilterError(f"--container {arg}: no container with that id has a cgroup under "
                          f"{root} now")
    if len(found) > 1:
        ids = ", ".join(sorted(i[:16] for i in found))
        raise FilterError(f"--container {arg}: {len(found)} containers have ids starting so "
                          f"({ids}); give more digits")
    (cid, path), = found.items()
    got = resolve_path(path, root)
    return CgroupTarget(got.id, got.level, got.path, f"container {cid[:12]}")


def resolve(paths=(), container_ids=()) -> tuple[CgroupTarget, ...]:
    """The targets of every --cgroup and --container; FilterError on the first bad one."""
    if not paths and not container_ids:
        return ()
    root = v2_root()
    return (tuple(resolve_path(p, root) for p in paths)
            + tuple(resolve_container(c, root) for c in container_ids))


_PROBE = struct.pack("<QQQQ",
                     0x00000000000001B7,            # r1 = 0 (the root's level)
                     0x0000000000000085 | ANCESTOR_HELPER << 32,   # call helper
                     0x00000000000000B7,            # r0 = 0
                     0x0000000000000095)            # exit
_ancestors: Optional[tuple[bool, str]] = None


def ancestors_matched() -> tuple[bool, str]:
    """(True, "") if this kernel lets tracing programs call
    bpf_get_current_ancestor_cgroup_id (a cgroup filter then matches the
    cgroups below the selected ones too), else (False, why). Load-tested
    once: whether the helper is there for tracing programs depends on the
    kernel's version and build."""
    global _ancestors
    if _ancestors is None:
        from tracer.probes import bpf_syscall as sc
        try:
            fd, _ = sc.prog_load(sc.PROG_TRACEPOINT, _PROBE, log_size=4096)
            os.close(fd)
            _ancestors = (True, "")
        except OSError as e:
            _ancestors = (False, f"a test program calling bpf_get_current_ancestor_cgroup_id "
                                 f"was refused ({sc.errno_text(e.errno)})")
    return _ancestors


def coverage_note(ancestors: bool, why: str = "") -> str:
    """What --cgroup/--container cannot cover, for the status and the manifest."""
    if ancestors:
        return ("--cgroup/--container: connects and accepts are filtered in the kernel by the "
                "caller's cgroup (the selected cgroups and those below them); listeners, their "
                "drops and SYN-ACK retransmits (counted in softirq, with no process) and the "
                "processes view by their owner's cgroup")
    return ("--cgroup/--container match the selected cgroups themselves only, not those below "
            f"them: {why}; listeners, drops and processes by their owner's cgroup")


def support(v2: Optional[str], ancestors: Optional[tuple[bool, str]]) -> tuple[bool, str]:
    """(usable, one line) for doctor: what --cgroup/--container can do here.
    ancestors: ancestors_matched(), or None when it could not be load-tested
    (not root)."""
    if v2 is None:
        return False, ("--cgroup/--container unavailable: no cgroup v2 mounted (the kernel's "
                       "cgroup ids are v2 ids)")
    if ancestors is None:
        return True, (f"--cgroup/--container by cgroup v2 id (under {v2}); whether the cgroups "
                      f"below a selected one match too is load-tested as root")
    ok, why = ancestors
    if ok:
        return True, (f"--cgroup/--container by cgroup v2 id (under {v2}), in the kernel: the "
                      f"selected cgroups and those below them")
    return True, (f"--cgroup/--container by cgroup v2 id (under {v2}), in the kernel: the "
                  f"selected cgroups themselves only, not those below them ({why})")
