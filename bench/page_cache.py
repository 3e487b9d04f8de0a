"""Cold starts: drop the page cache of the files a tracer reads at start-up
(Python packages, libbcc and its LLVM, the kernel header tree) without
touching anyone else's: posix_fadvise(DONTNEED) per file, not drop_caches.
Pages that another running process has mapped stay in memory."""
from __future__ import annotations

import glob
import os
import sys
import sysconfig
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def startup_files() -> list[str]:
    roots = [str(REPO / "tracer"), str(REPO / "bpf"), str(REPO / ".venv"),
             sysconfig.get_paths()["stdlib"], "/usr/lib/python3/dist-packages",
             "/var/cache/connscope", "/usr/src"]
    libs = glob.glob("/usr/lib/x86_64-linux-gnu/libbcc*") + \
        glob.glob("/usr/lib/x86_64-linux-gnu/libLLVM*") + \
        glob.glob("/usr/lib/x86_64-linux-gnu/libclang*") + [sys.executable, "/usr/sbin/tcplife-bpfcc"]
    out = [p for p in libs if os.path.isfile(p)]
    for root in roots:
        for d, _, files in os.walk(root):
            out += [os.path.join(d, f) for f in files]
            if len(out) > 500_000:   # bounded, whatever is installed
                return out
    return out


def evict(paths: list[str]) -> int:
    """Returns how many files were advised."""
    n = 0
    for p in paths:
        try:
            fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            n += 1
        except OSError:
            pass
        finally:
            os.close(fd)
    return n
