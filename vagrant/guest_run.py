"""Boots the test guest under QEMU and runs one command in it (see guest.py).

The project goes in on a second disk, an ext4 image made by `mke2fs -d` from
a copy of the project; the guest's PID 1 (guest_init.sh) runs the command in
that copy, streams its output to a serial port, reports the exit code on
another and powers off. Whatever the command writes to $CONNSCOPE_VM_RESULTS
is copied back with `debugfs rdump`. No network, no root loop mounts.
"""
from __future__ import annotations

import codecs
import os
import shlex
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable, Mapping, NamedTuple, Optional

import guest_wheels
from guest_image import INIT_PATH_IN_GUEST, build_image, log, read_manifest
from guest_packages import SUITE, GuestError, release

# Not worth copying into the guest, or would mislead it (host venv, git state).
EXCLUDE_NAMES = {".venv", "venv", ".git", "__pycache__", ".pytest_cache", ".mypy_cache",
                 ".ruff_cache", ".tox", ".nox", ".vagrant", "node_modules"}
EXCLUDE_TOP = {"build", "dist", ".cache", "artifacts"}
# Host venv contents the guest must not see: installers, and .pth/editable
# hooks that point at host paths.
EXCLUDE_SITE = {"pip", "setuptools", "_distutils_hack", "pkg_resources", "__pycache__"}
# pyarrow's AVX2 kernels under TCG's emulated CPU (-cpu max): pyarrow 21.0.0
# (bullseye's Python 3.9) segfaulted in acero group_by on every run of
# test_two_namespaces_on_one_address_stay_two_listeners, and passed with
# scalar kernels; emulated SIMD buys nothing here anyway. A caller's env wins.
GUEST_ENV = {"ARROW_USER_SIMD_LEVEL": "NONE"}
GUEST_MOUNT = "/vm"
RESULTS_IN_GUEST = f"{GUEST_MOUNT}/results"


class GuestTimeout(GuestError):
    """The guest did not finish in time; QEMU was killed."""

    def __init__(self, message: str, output: str):
        super().__init__(message)
        self.output = output


class GuestRun(NamedTuple):
    exit_code: int
    output: str


def accelerator() -> str:
    """'tcg' unless CONNSCOPE_VM_KVM=1 asks for KVM.

    Opt-in because a /dev/kvm that exists is not one that works: on nested
    PVM hosts KVM guests hang instead of failing, which only a timeout shows.
    """
    if os.environ.get("CONNSCOPE_VM_KVM") == "1":
        if not os.access("/dev/kvm", os.R_OK | os.W_OK):
            raise GuestError("CONNSCOPE_VM_KVM=1 but /dev/kvm is missing or not accessible")
        return "kvm"
    return "tcg"


def venv_site_packages(project_dir: Path, image: Path) -> Path:
    """Python packages for the guest that its Debian release lacks
    (pyarrow, textual, ...): the project venv's site-packages when the guest
    runs the same Python version (bookworm: manylinux wheels load unchanged),
    else wheels for the guest's Python fetched on the host and cached
    (guest_wheels.py: trixie's 3.13, bullseye's 3.9).
    """
    manifest = read_manifest(image)
    python = manifest["python"]  # e.g. python3.13
    site = Path(project_dir) / ".venv" / "lib" / python / "site-packages"
    if site.is_dir():
        return site
    suite = manifest.get("recipe", {}).get("suite", SUITE)
    return guest_wheels.site_packages(project_dir, python.removeprefix("python"),
                                      release(suite).glibc, image.parent)


def _link_or_copy(src: str, dst: str) -> None:
    # Hard links make staging a large tree nearly free; mke2fs copies the data.
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _stage(staging: Path, project_dir: Path, command: str, site_packages: Optional[Path],
           env: Mapping[str, str], interactive: bool) -> None:
    def ignore_project(directory: str, names: list[str]) -> set[str]:
        skip = {n for n in names if n in EXCLUDE_NAMES or n.endswith(".egg-info")}
        if Path(directory) == project_dir:
            skip |= EXCLUDE_TOP & set(names)
        return skip

    def ignore_site(directory: str, names: list[str]) -> set[str]:
        return {n for n in names if n in EXCLUDE_SITE or n.endswith(".pth")
                or n.startswith("__editable__")}

    shutil.copytree(project_dir, staging / "project", symlinks=True,
                    ignore=ignore_project, copy_function=_link_or_copy)
    pythonpath = [f"{GUEST_MOUNT}/project"]
    if site_packages:
        shutil.copytree(site_packages, staging / "site-packages", symlinks=True,
                        ignore=ignore_site, copy_function=_link_or_copy)
        pythonpath.append(f"{GUEST_MOUNT}/site-packages")
    (staging / "results").mkdir()
    exports = {"CONNSCOPE_VM": "1", "CONNSCOPE_VM_RESULTS": RESULTS_IN_GUEST,
               "PYTHONPATH": ":".join(pythonpath), **GUEST_ENV, **env}
    script = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in exports.items())
    (staging / "cmd").write_text(script + command + "\n")
    if interactive:
        (staging / "interactive").write_text(script)


def _make_disk(source: Path, image: Path, spare_mb: int) -> None:
    used = int(subprocess.run(["du", "-sb", str(source)], capture_output=True,
                              text=True, check=True).stdout.split()[0])
    size_mb = int(used * 1.2) // (1 << 20) + spare_mb
    proc = subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-L", "connscope-vm",
                           "-d", str(source), str(image), f"{size_mb}M"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise GuestError(f"mke2fs for the project disk failed: {proc.stderr.strip()}")


def _qemu_argv(image: Path, disk: Path, logs: Path, accel: str, cpus: int,
               memory_mb: int, interactive: bool) -> list[str]:
    manifest = read_manifest(image)
    append = (f"console=ttyS0 root=PARTUUID={manifest['partuuid']} rootwait rw "
              f"init={INIT_PATH_IN_GUEST} panic=-1 quiet")
    console = ["-serial", "mon:stdio"] if interactive else [
        "-chardev", f"file,id=console,path={logs / 'console.log'}", "-serial", "chardev:console"]
    return [
        "qemu-system-x86_64", "-nodefaults", "-no-user-config", "-display", "none",
        "-no-reboot", "-accel", accel, "-cpu", "host" if accel == "kvm" else "max",
        "-smp", str(cpus), "-m", str(memory_mb),
        "-kernel", str(image / "vmlinuz"), "-append", append,
        # snapshot=on: the cached image is never written, and may be shared.
        "-drive", f"file={image / 'root.img'},format=raw,if=none,id=root,snapshot=on",
        "-device", "nvme,drive=root,serial=connscope-root",
        "-drive", f"file={disk},format=raw,if=none,id=vm",
        "-device", "nvme,drive=vm,serial=connscope-vm",
        "-nic", "none",
        *console,
        "-chardev", f"file,id=out,path={logs / 'output.log'}", "-serial", "chardev:out",
        "-chardev", f"file,id=rc,path={logs / 'exit.log'}", "-serial", "chardev:rc",
    ]


def _tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no console log)"
    return "\n".join(text.strip().splitlines()[-lines:])


def _copy_results(disk: Path, results_dir: Path, scratch: Path) -> None:
    dump = scratch / "rdump"
    dump.mkdir()
    proc = subprocess.run(["debugfs", "-R", f"rdump /results {dump}", str(disk)],
                          capture_output=True, text=True)
    if proc.returncode != 0 or not (dump / "results").is_dir():
        raise GuestError(f"copying results out of the guest disk failed: {proc.stderr.strip()}")
    results_dir.mkdir(parents=True, exist_ok=True)
    for item in (dump / "results").iterdir():
        target = results_dir / item.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        shutil.move(str(item), str(target))


def run(command: str, project_dir: Path, timeout: int, *, image: Optional[Path] = None,
        site_packages: Optional[Path] = None, results_dir: Optional[Path] = None,
        env: Optional[Mapping[str, str]] = None,
        on_output: Optional[Callable[[str], None]] = None,
        cpus: int = 2, memory_mb: int = 2048, spare_mb: int = 1024) -> GuestRun:
    """Boot the guest, run `command` with bash in a copy of project_dir, power off.

    Returns (exit_code, output): output is stdout and stderr interleaved, and
    is also passed to on_output piece by piece as it arrives. The command sees
    PYTHONPATH=<project>[:<site_packages>] and CONNSCOPE_VM_RESULTS, a directory
    whose contents are copied to results_dir afterwards (e.g. a JUnit XML file
    from `python3 -m pytest --junitxml=$CONNSCOPE_VM_RESULTS/junit.xml`).
    Raises GuestTimeout after `timeout` seconds (QEMU killed), GuestError if
    the guest stops without reporting an exit code.
    """
    image = Path(image) if image else build_image()
    project_dir = Path(project_dir).resolve()
    accel = accelerator()
    keep = os.environ.get("CONNSCOPE_VM_KEEP") == "1"
    scratch = Path(tempfile.mkdtemp(prefix="connscope-vm-"))
    try:
        t0 = time.monotonic()
        staging = scratch / "disk"
        _stage(staging, project_dir, command, site_packages, env or {}, interactive=False)
        disk = scratch / "vm.img"
        _make_disk(staging, disk, spare_mb)
        shutil.rmtree(staging)
        for name in ("console.log", "output.log", "exit.log"):
            (scratch / name).touch()
        argv = _qemu_argv(image, disk, scratch, accel, cpus, memory_mb, interactive=False)
        with open(scratch / "qemu.log", "wb") as qemu_log:
            # TMPDIR: where QEMU puts the snapshot overlay of the root disk.
            qemu = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=qemu_log,
                                    stderr=subprocess.STDOUT, env=dict(os.environ, TMPDIR=str(scratch)))
        try:
            output = _follow(qemu, scratch / "output.log", t0 + timeout, on_output)
        finally:
            if qemu.poll() is None:  # on_output raised, or KeyboardInterrupt
                qemu.kill()
                qemu.wait()
        qemu_messages = (scratch / "qemu.log").read_text(errors="replace").strip()
        if output is None:
            partial = (scratch / "output.log").read_text(errors="replace")
            raise GuestTimeout(f"guest did not finish within {timeout}s; QEMU killed. "
                               f"Console tail:\n{_tail(scratch / 'console.log')}", partial)
        rc_text = (scratch / "exit.log").read_text().strip()
        if not rc_text.isdigit():
            raise GuestError(
                f"guest stopped without reporting an exit code (QEMU exit {qemu.returncode}"
                f"{': ' + qemu_messages if qemu_messages else ''}). Console tail:\n"
                f"{_tail(scratch / 'console.log')}")
        if results_dir is not None:
            _copy_results(disk, Path(results_dir), scratch)
        return GuestRun(int(rc_text), output)
    finally:
        if keep:
            log(f"kept {scratch} (CONNSCOPE_VM_KEEP=1)")
        else:
            shutil.rmtree(scratch, ignore_errors=True)


def _follow(qemu: subprocess.Popen, path: Path, deadline: float,
            on_output: Optional[Callable[[str], None]]) -> Optional[str]:
    """Pass new output to on_output until QEMU exits; None on timeout."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pieces: list[str] = []
    with open(path, "rb") as f:
        while True:
            done = qemu.poll() is not None
            text = decoder.decode(f.read(), final=done)
            if text:
                pieces.append(text)
                if on_output:
                    on_output(text)
            if done:
                return "".join(pieces)
            if time.monotonic() > deadline:
                qemu.kill()
                qemu.wait()
                return None
            time.sleep(0.1)


def shell(project_dir: Path, *, image: Optional[Path] = None,
          site_packages: Optional[Path] = None) -> int:
    """An interactive root shell in the guest on this terminal (Ctrl-A X quits QEMU)."""
    image = Path(image) if image else build_image()
    scratch = Path(tempfile.mkdtemp(prefix="connscope-vm-"))
    try:
        staging = scratch / "disk"
        _stage(staging, Path(project_dir).resolve(), "", site_packages, {}, interactive=True)
        disk = scratch / "vm.img"
        _make_disk(staging, disk, 1024)
        argv = _qemu_argv(image, disk, scratch, accelerator(), 2, 2048, interactive=True)
        return subprocess.call(argv, env=dict(os.environ, TMPDIR=str(scratch)))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
