"""The Python packages a guest needs and its Debian release does not ship
(pyarrow, textual, ...), for a guest whose Python is not the host venv's.

bookworm's guest runs Python 3.11 like the host venv, so guest_run.py carries
the venv's own site-packages in. trixie (3.13) and bullseye (3.9) cannot load
the venv's compiled wheels (pyarrow's extension modules are built per Python
ABI), Debian packages neither pyarrow nor textual, and the guest has no
network: so pip on the host downloads binary wheels for the guest's Python
and ABI (`--python-version`, `--abi`, manylinux platforms up to the guest's
glibc) and unpacks them into a directory with `--target`, which travels into
the guest like the venv's site-packages. Only wheels, never sdists: nothing is
compiled on the host for a foreign interpreter.

The requirements are the project's own (pyproject.toml: dependencies and the
test extra, as `./run` installs in the venv). pip resolves them for the
target only in part: it picks wheels by the target's tags, but evaluates
dependency markers (`exceptiongroup; python_version < "3.11"`) for the host's
Python, and an index without Requires-Python data let it pick click 8.5.0
(>=3.10) for 3.9. So the result is checked against the target's environment
(each Requires-Python, each dependency whose marker holds there) and pip is
run again with what was missing added and what does not fit excluded, until
the set is complete (a few rounds at most). A result is cached in the image cache as
`site-<hash>/site-packages`, the hash covering the Python version, glibc,
the requirements and WHEELS_VERSION; pip is asked again only when those
change.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from guest_packages import ARCH, GuestError

# Bump when the way the directory is made changes in ways the hash cannot see.
WHEELS_VERSION = 2
EXTRAS = ("test",)
MAX_ROUNDS = 5


def requirements(project_dir: Path) -> list[str]:
    """dependencies and the test extra from pyproject.toml, sorted."""
    try:
        import tomllib
    except ImportError:  # Python < 3.11 on the host
        raise GuestError("reading pyproject.toml needs Python 3.11 or newer on the host (tomllib)") from None
    data = tomllib.loads((Path(project_dir) / "pyproject.toml").read_text())
    project = data.get("project", {})
    reqs = set(project.get("dependencies", []))
    for extra in EXTRAS:
        reqs.update(project.get("optional-dependencies", {}).get(extra, []))
    return sorted(reqs)


def platforms(glibc: tuple[int, int]) -> list[str]:
    """manylinux tags a guest with this glibc loads, newest first."""
    if ARCH != "amd64":
        raise GuestError(f"wheels for guest architecture {ARCH} are not set up")
    major, minor = glibc
    tags = [f"manylinux_{major}_{m}_x86_64" for m in range(minor, 4, -1)]
    # The legacy aliases of 2_17, 2_12 and 2_5, which older wheels still use.
    return tags + ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]


def wheels_key(python: str, glibc: tuple[int, int], reqs: list[str]) -> str:
    blob = json.dumps({"version": WHEELS_VERSION, "python": python, "glibc": list(glibc),
                       "requirements": reqs}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def pip_command(target: Path, python: str, glibc: tuple[int, int], reqs: list[str],
                constraints: Path | None = None) -> list[str]:
    abi = "cp" + python.replace(".", "")
    argv = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
            "--no-input", "--no-compile", "--target", str(target),
            "--only-binary=:all:", "--implementation", "cp",
            "--python-version", python, "--abi", abi, "--abi", "abi3", "--abi", "none"]
    for tag in platforms(glibc):
        argv += ["--platform", tag]
    if constraints is not None:
        argv += ["-c", str(constraints)]
    return argv + reqs


def _packaging():
    # pip vendors packaging: wherever pip runs, this does.
    try:
        from packaging import markers, requirements as reqs, specifiers, utils, version
    except ImportError:
        from pip._vendor.packaging import markers, requirements as reqs, specifiers, utils, version
    return markers, reqs, specifiers, utils, version


def target_environment(python: str) -> dict[str, str]:
    """PEP 508 marker values of a CPython `python` guest on x86_64 Linux."""
    return {"python_version": python, "python_full_version": f"{python}.0",
            "implementation_name": "cpython", "platform_python_implementation": "CPython",
            "implementation_version": f"{python}.0", "sys_platform": "linux",
            "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
            "platform_release": "", "platform_version": "", "extra": ""}


def check_for_target(site: Path, python: str) -> tuple[list[str], list[str]]:
    """(requirements missing, 'name!=version' of those that cannot run) for
    a --target directory meant for CPython `python`."""
    import email.parser

    markers, reqs, specifiers, utils, version = _packaging()
    env = target_environment(python)
    target = version.Version(f"{python}.0")
    dists = {}
    for info in site.glob("*.dist-info"):
        meta = email.parser.Parser().parsestr((info / "METADATA").read_text(errors="replace"),
                                              headersonly=True)
        dists[utils.canonicalize_name(meta["Name"])] = meta
    missing, unfit = set(), set()
    for name, meta in dists.items():
        rp = meta.get("Requires-Python")
        if rp and target not in specifiers.SpecifierSet(rp):
            unfit.add(f"{name}!={meta['Version']}")
        for line in meta.get_all("Requires-Dist") or []:
            req = reqs.Requirement(line)
            if req.marker is not None and not req.marker.evaluate(env):
                continue
            if utils.canonicalize_name(req.name) not in dists:
                req.marker = None
                missing.add(str(req))
    return sorted(missing), sorted(unfit)


def installed(site: Path) -> list[str]:
    """'name==version' of each distribution in a --target directory."""
    found = []
    for info in sorted(site.glob("*.dist-info")):
        m = re.fullmatch(r"(.+?)-([^-]+)\.dist-info", info.name)
        if m:
            found.append(f"{m.group(1)}=={m.group(2)}")
    return found


def site_packages(project_dir: Path, python: str, glibc: tuple[int, int], cache_dir: Path) -> Path:
    """A site-packages directory with the project's requirements for a guest
    running CPython `python` ("3.13") on glibc `glibc`; built once, cached."""
    from guest_image import _CacheLock, log, remove_tree  # guest_image imports nothing from here

    reqs = requirements(project_dir)
    key = wheels_key(python, glibc, reqs)
    final = Path(cache_dir) / f"site-{key}"
    if (final / "manifest.json").is_file():
        return final / "site-packages"
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    with _CacheLock(Path(cache_dir)):
        if (final / "manifest.json").is_file():
            return final / "site-packages"
        work = Path(tempfile.mkdtemp(prefix=f".tmp-site-{key}-", dir=cache_dir))
        work.chmod(0o755)
        try:
            t0 = time.monotonic()
            log(f"pip: wheels for Python {python} (glibc {glibc[0]}.{glibc[1]}): {' '.join(reqs)}")
            wanted, excluded = list(reqs), []
            for _ in range(MAX_ROUNDS):
                site = work / "site-packages"
                remove_tree(site)
                constraints = work / "constraints.txt"
                constraints.write_text("".join(f"{c}\n" for c in excluded))
                proc = subprocess.run(pip_command(site, python, glibc, wanted, constraints),
                                      capture_output=True, text=True)
                if proc.returncode != 0:
                    tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-12:])
                    raise GuestError(f"pip could not get wheels for Python {python} "
                                     f"(exit {proc.returncode}):\n{tail}")
                missing, unfit = check_for_target(site, python)
                if not missing and not unfit:
                    break
                log(f"pip: for Python {python} also {' '.join(missing) or '-'}, not {' '.join(unfit) or '-'}")
                wanted += [m for m in missing if m not in wanted]
                excluded += [u for u in unfit if u not in excluded]
            else:
                raise GuestError(f"pip's wheels for Python {python} still lack {missing} "
                                 f"or include {unfit} after {MAX_ROUNDS} rounds")
            manifest = {"python": python, "glibc": list(glibc), "requirements": reqs,
                        "added": wanted[len(reqs):], "excluded": excluded,
                        "installed": installed(work / "site-packages"),
                        "seconds": round(time.monotonic() - t0, 1),
                        "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            (work / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        except BaseException:
            remove_tree(work)
            raise
        os.rename(work, final)
        log(f"wheels for Python {python} ready in {manifest['seconds']} s: {final}")
    return final / "site-packages"
