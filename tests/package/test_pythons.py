"""The pure-logic suite (tests/unit) on the oldest and the newest Python
connscope supports: 3.9 (the system interpreter of RHEL 9 and Debian 11, the
only one with their bcc bindings) and the newest 3.x this host has (Debian
13's is 3.13). The main suite runs on the checkout's venv (the system's 3.11).

Interpreters are looked for as `pythonX.Y` on PATH and in pyenv's versions
(the CI machines have pyenv); a missing one is a skip that names it. A pyenv
under /root is out of reach of the unprivileged user some tests run the CLI
as, so the interpreter is copied once to /var/cache/connscope-pythons (root's,
0755) and run from there.
"""
from __future__ import annotations

import glob
import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path("/var/cache/connscope-pythons")
PYENV = Path(os.environ.get("PYENV_ROOT", "/root/.pyenv")) / "versions"
OLDEST = "3.9"
# textual's dependencies send pip's resolver backtracking for many minutes on 3.9
CONSTRAINTS = {"3.9": ["markdown-it-py<4", "mdit-py-plugins<0.5"]}

pytestmark = pytest.mark.slow


def _version(exe: str) -> tuple[int, ...] | None:
    try:
        out = subprocess.run([exe, "-c", "import sys; print(*sys.version_info[:3])"],
                             capture_output=True, text=True, timeout=30).stdout.split()
        return tuple(int(x) for x in out)
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return None


def _candidates() -> dict[tuple[int, ...], str]:
    found = {}
    names = {f"python3.{m}" for m in range(9, 20)}
    for name in sorted(names):
        exe = shutil.which(name)
        if exe:
            v = _version(exe)
            if v:
                found.setdefault(v, exe)
    for d in glob.glob(str(PYENV / "3.*")):
        m = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)", Path(d).name)
        exe = Path(d) / "bin" / f"python{m.group(1)}.{m.group(2)}" if m else None
        if exe and exe.exists():
            found.setdefault(tuple(int(x) for x in m.groups()), str(exe))
    return found


def _wanted() -> list:
    found = _candidates()
    oldest = [v for v in found if v[:2] == (3, 9)]
    newest = max((v for v in found if v[:2] > (3, 11)), default=None)
    params = [pytest.param(found[max(oldest)], id="3.9") if oldest else
              pytest.param(None, id="3.9", marks=pytest.mark.skip(
                  reason="no Python 3.9 on this host (python3.9 on PATH or in pyenv)"))]
    params.append(pytest.param(found[newest], id=".".join(map(str, newest[:2]))) if newest else
                  pytest.param(None, id="newest", marks=pytest.mark.skip(
                      reason="no Python newer than 3.11 on this host (python3.X on PATH or in pyenv)")))
    return params


def _reachable(exe: str) -> tuple[str, dict]:
    """An interpreter others can run, and the environment it needs."""
    real = Path(exe).resolve()
    home = real.parents[1]                    # <prefix>/bin/pythonX.Y
    if not str(home).startswith(str(PYENV.resolve())):
        return str(real), {}
    dest = CACHE / home.name
    if not (dest / "bin" / real.name).exists():
        CACHE.mkdir(mode=0o755, parents=True, exist_ok=True)
        tmp = CACHE / f".{home.name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        subprocess.run(["cp", "-a", str(home), str(tmp)], check=True, timeout=600)
        subprocess.run(["chmod", "-R", "go+rX,go-w", str(tmp)], check=True, timeout=600)
        os.rename(tmp, dest)
    # pyenv's build finds libpython through an rpath into /root
    return str(dest / "bin" / real.name), {"LD_LIBRARY_PATH": str(dest / "lib")}


def _venv(exe: str, env: dict, minor: str) -> Path:
    # (the install compiles tracer/_fastpath.c into the checkout: a changed
    # source is installed, so compiled, again)
    sources = b"".join((ROOT / f).read_bytes() for f in (
        "pyproject.toml", "setup.py", "tracer/_fastpath.c", "tracer/bpf/event.h"))
    key = hashlib.sha256(sources + str(ROOT).encode() + exe.encode()).hexdigest()[:12]
    venv = CACHE / f"venv-{Path(exe).name}-{key}"
    stamp = venv / ".installed"
    if stamp.exists():
        return venv
    shutil.rmtree(venv, ignore_errors=True)
    run = dict(capture_output=True, text=True, env={**os.environ, **env}, timeout=900)
    proc = subprocess.run([exe, "-m", "venv", str(venv)], **run)
    assert proc.returncode == 0, proc.stderr
    constraints = venv / "constraints.txt"
    constraints.write_text("".join(f"{c}\n" for c in CONSTRAINTS.get(minor, [])))
    proc = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
                           "--disable-pip-version-check", "--only-binary=:all:",
                           "-c", str(constraints), "-e", f"{ROOT}[test]"], **run)
    assert proc.returncode == 0, f"installing connscope[test] on {exe}:\n{proc.stderr[-3000:]}"
    stamp.write_text("ok\n")
    return venv


@pytest.mark.parametrize("exe", _wanted())
def test_pure_logic_suite(exe):
    exe, env = _reachable(exe)
    v = _version(exe) if not env else tuple(
        int(x) for x in subprocess.run([exe, "-c", "import sys; print(*sys.version_info[:3])"],
                                       capture_output=True, text=True, timeout=30,
                                       env={**os.environ, **env}).stdout.split())
    minor = f"{v[0]}.{v[1]}"
    venv = _venv(exe, env, minor)
    proc = subprocess.run([str(venv / "bin" / "python"), "-m", "pytest", "tests/unit", "-q",
                           "-p", "no:cacheprovider", "-o", "addopts=-ra --strict-markers"],
                          cwd=ROOT, capture_output=True, text=True, timeout=1800,
                          env={**os.environ, **env})
    tail = "\n".join(proc.stdout.splitlines()[-40:])
    print(f"\nPython {minor}: {proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ''}")
    assert proc.returncode == 0, f"tests/unit on Python {'.'.join(map(str, v))}:\n{tail}\n{proc.stderr[-2000:]}"
    assert re.search(r"\d+ passed", tail), tail
