"""Builds and caches a test guest's disk image: Debian (bookworm by default,
or bullseye or trixie) with its cloud kernel, bcc and the matching kernel
headers (see guest.py).

An image is named by the hash of its recipe (suite, packages, the resolved
kernel version, the guest's PID 1 script), so a new kernel in the suite or a
changed recipe builds a new image and an unchanged one is reused. Images are
built in a temporary directory and renamed into place when complete: a
directory named by a hash is always a finished image.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

from guest_packages import (
    ARCH, SUITE, GuestError, Package, VersionMismatch, check_kernel_headers, find_mirror, release,
    resolve_kernel,
)

# What connscope's kernel tests need in the guest; the same names in bullseye,
# bookworm and trixie. pyarrow and textual are packaged in none of them:
# guest_run.py carries them in (the host venv's, or wheels for the guest's
# Python from guest_wheels.py).
PACKAGES = (
    "python3",
    "python3-bpfcc",
    "python3-pytest",
    "python3-click",
    "iproute2",
    "procps",
    "kmod",  # modprobe: veth and friends are modules in the cloud kernel
    # Real peers for the ground-truth kernel tests (otherwise they skip):
    # curl (connect timeouts), nginx and ab (accept-queue overflow under a
    # real server; nginx-light is the smallest nginx in all three releases),
    # redis (server counters), tmux (the TUI driven as a user would). About
    # 15 MiB in all; postgres (test_pool_advice) is left out for its size.
    # runc and busybox-static run test_containers' real containers (a
    # locally made busybox root filesystem; nothing pulled from a registry).
    "curl",
    "nginx-light",
    "apache2-utils",
    "redis-server",
    "tmux",
    "runc",
    "busybox-static",
)
# Bump when build steps change in ways the recipe hash cannot see.
RECIPE_VERSION = 1
DEFAULT_CACHE = Path("/var/cache/connscope-vm")
INIT_SCRIPT = Path(__file__).with_name("guest_init.sh")
INIT_PATH_IN_GUEST = "/sbin/connscope-init"
# The root filesystem starts 1 MiB into root.img, after an MBR whose one
# partition the kernel finds by PARTUUID (no initramfs, no udev).
PARTITION_OFFSET = 1 << 20

# Trimmed from the rootfs: nothing in the guest reads them.
_TRIM = ("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale",
         "var/cache/apt", "var/lib/apt/lists")


def log(message: str) -> None:
    print(f"guest: {message}", file=sys.stderr, flush=True)


def cache_dir_default() -> Path:
    return Path(os.environ.get("CONNSCOPE_VM_CACHE") or DEFAULT_CACHE)


# --- recipe and cache --------------------------------------------------------

def recipe(image: Package, headers: Package, suite: str = SUITE) -> dict:
    return {
        "recipe_version": RECIPE_VERSION,
        "suite": suite,
        "arch": ARCH,
        "variant": "minbase",
        "packages": sorted(PACKAGES),
        "kernel": list(image),
        "headers": list(headers),
        "init_script": INIT_SCRIPT.read_text(),
    }


def recipe_hash(recipe_: dict) -> str:
    blob = json.dumps(recipe_, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def is_image(path: Path) -> bool:
    return all((path / f).is_file() for f in ("root.img", "vmlinuz", "manifest.json"))


def read_manifest(image_dir: Path) -> dict:
    return json.loads((image_dir / "manifest.json").read_text())


def image_suite(image_dir: Path) -> Optional[str]:
    try:
        return read_manifest(image_dir).get("recipe", {}).get("suite")
    except (OSError, ValueError, AttributeError):
        return None


def cached_images(cache_dir: Path, suite: str) -> list[Path]:
    """Finished images of `suite` in the cache, oldest first."""
    images = [p for p in cache_dir.glob("[0-9a-f]" * 16) if is_image(p) and image_suite(p) == suite]
    return sorted(images, key=lambda p: (p / "manifest.json").stat().st_mtime)


def newest_cached_image(cache_dir: Path, suite: str = SUITE) -> Optional[Path]:
    images = cached_images(cache_dir, suite)
    return images[-1] if images else None


class _CacheLock:
    """One builder per cache directory; others wait, then find the image."""

    def __init__(self, cache_dir: Path):
        self.path = cache_dir / ".lock"

    def __enter__(self):
        self.fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"waiting for another build holding {self.path}")
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        os.close(self.fd)


def build_image(cache_dir: Optional[Path] = None, *, suite: str = SUITE, archive: bool = False) -> Path:
    """Return the directory of a finished guest image of Debian `suite`
    (bullseye, bookworm, trixie), building it if needed.

    The directory holds root.img (MBR + ext4), vmlinuz and manifest.json. An
    existing `<hash>.tar.zst` archive in the cache is restored instead of
    building; with archive=True one is written after a build (for CI caches,
    which handle one compressed file better than a sparse image).
    """
    cache_dir = Path(cache_dir) if cache_dir else cache_dir_default()
    cache_dir.mkdir(parents=True, exist_ok=True)
    release(suite)  # an unknown suite is an error, not an offline fallback
    mirror = find_mirror(suite)
    try:
        image_pkg, headers_pkg = resolve_kernel(cache_dir, mirror, suite)
    except GuestError as exc:
        cached = newest_cached_image(cache_dir, suite)
        if cached is None:
            raise
        log(f"{exc}; using the newest cached {suite} image {cached.name} without checking for a newer kernel")
        return cached
    check_kernel_headers(image_pkg, headers_pkg)
    recipe_ = recipe(image_pkg, headers_pkg, suite)
    name = recipe_hash(recipe_)
    final = cache_dir / name
    packed = cache_dir / f"{name}.tar.zst"
    if is_image(final) and (packed.exists() or not archive):
        return final
    with _CacheLock(cache_dir):
        if not is_image(final):
            for leftover in cache_dir.glob(".tmp-*"):
                # Only a builder holding the lock creates these: any found
                # now are from an interrupted build or archive.
                remove_tree(leftover)
            work = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=cache_dir))
            work.chmod(0o755)
            try:
                if packed.exists():
                    _restore(packed, work)
                else:
                    _build(work, recipe_, mirror, image_pkg, headers_pkg, name, suite)
            except BaseException:
                remove_tree(work)
                raise
            os.rename(work, final)
            log(f"image ready: {final}")
        if archive and not packed.exists():
            archive_image(final)
    return final


def archive_image(image_dir: Path) -> Path:
    """Write `<cache>/<hash>.tar.zst` next to the image (atomically; called
    with the cache lock held)."""
    out = image_dir.with_name(image_dir.name + ".tar.zst")
    tmp = out.with_name(f".tmp-{out.name}-{os.getpid()}")
    t0 = time.monotonic()
    tar = subprocess.Popen(["tar", "-C", str(image_dir), "--sparse", "-cf", "-",
                            "root.img", "vmlinuz", "manifest.json"], stdout=subprocess.PIPE)
    zstd = subprocess.run(["zstd", "-3", "-T0", "-q", "-f", "-o", str(tmp)], stdin=tar.stdout)
    tar.stdout.close()
    if tar.wait() != 0 or zstd.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise GuestError(f"archiving {image_dir} failed")
    os.rename(tmp, out)
    log(f"archived {out} ({out.stat().st_size >> 20} MiB) in {time.monotonic() - t0:.1f}s")
    return out


def _restore(packed: Path, work: Path) -> None:
    t0 = time.monotonic()
    zstd = subprocess.Popen(["zstd", "-dc", "-q", str(packed)], stdout=subprocess.PIPE)
    tar = subprocess.run(["tar", "-C", str(work), "--sparse", "-xf", "-"], stdin=zstd.stdout)
    zstd.stdout.close()
    if zstd.wait() != 0 or tar.returncode != 0 or not is_image(work):
        raise GuestError(f"restoring {packed} failed; delete it to build the image afresh")
    log(f"restored {packed.name} in {time.monotonic() - t0:.1f}s")


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve()).rstrip("/") + "/"
    points = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].encode().decode("unicode_escape")  # \040 for spaces
            if point.startswith(prefix):
                points.append(point)
    return points


def remove_tree(path: Path) -> None:
    """rmtree that first unmounts what a killed debootstrap left mounted.

    debootstrap mounts proc and sys in the target, and in containers
    bind-mounts the host's /dev: deleting through those would delete the
    host's files.
    """
    for point in sorted(_mounts_under(path), key=len, reverse=True):
        if subprocess.run(["umount", point], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", point], capture_output=True)
    left = _mounts_under(path)
    if left:
        raise GuestError(f"refusing to delete {path}: still mounted inside: {', '.join(left)}")
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _run(cmd: list[str], what: str, **kwargs) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    except FileNotFoundError:
        raise GuestError(f"{what}: {cmd[0]} was not found on PATH: install it, or add "
                         f"/usr/sbin to PATH (debootstrap and mke2fs live there)") from None
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise GuestError(f"{what} failed (exit {proc.returncode}):\n{tail}")
    return proc


def _build(work: Path, recipe_: dict, mirror: str, image: Package, headers: Package, name: str,
           suite: str) -> None:
    rootfs = work / "rootfs"
    timings = {}
    t0 = time.monotonic()
    log(f"debootstrap {suite} with {image.name} {image.version} from {mirror} (about a minute)")
    # INITRD=No: the kernel boots without an initramfs, so skip building one.
    env = dict(os.environ, INITRD="No", DEBIAN_FRONTEND="noninteractive")
    _run(["debootstrap", "--variant=minbase", f"--arch={ARCH}",
          "--include=" + ",".join([*PACKAGES, image.name, headers.name]),
          suite, str(rootfs), mirror], "debootstrap", env=env)
    timings["debootstrap_s"] = round(time.monotonic() - t0, 1)

    installed = _installed_versions(rootfs, image.name, headers.name)
    kernel = check_kernel_headers(Package(image.name, installed[image.name]),
                                   Package(headers.name, installed[headers.name]))
    if installed[image.name] != image.version:
        raise VersionMismatch(f"debootstrap installed {image.name} {installed[image.name]}, "
                              f"the index said {image.version}; the mirror changed mid-build, retry")
    if not (rootfs / "usr/src" / f"linux-headers-{kernel}" / "include").is_dir():
        raise GuestError(f"headers for {kernel} are not in the image")

    init = rootfs / INIT_PATH_IN_GUEST.lstrip("/")
    shutil.copyfile(INIT_SCRIPT, init)
    init.chmod(0o755)
    for rel in _TRIM:
        shutil.rmtree(rootfs / rel, ignore_errors=True)
    for initrd in (rootfs / "boot").glob("initrd.img-*"):
        initrd.unlink()
    shutil.copyfile(rootfs / "boot" / f"vmlinuz-{kernel}", work / "vmlinuz")
    python = os.readlink(rootfs / "usr/bin/python3")  # e.g. python3.11
    if python != f"python{release(suite).python}":
        raise GuestError(f"{suite}'s python3 is {python}, RELEASES says {release(suite).python}; fix RELEASES")

    t1 = time.monotonic()
    used = _du_bytes(rootfs)
    # Headroom for what tests write outside tmpfs; the file is sparse.
    fs_bytes = (int(used * 1.25) + (512 << 20)) // (1 << 20) << 20
    disk_id = int(name[:8], 16) or 1
    _make_partitioned_ext4(rootfs, work / "root.img", fs_bytes, disk_id, label="connscope-root")
    timings["mke2fs_s"] = round(time.monotonic() - t1, 1)
    remove_tree(rootfs)

    manifest = {
        "name": name,
        "suite": suite,
        "kernel_release": kernel,
        "partuuid": f"{disk_id:08x}-01",
        "python": python,
        "rootfs_bytes": used,
        "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "timings": timings,
        "recipe": {k: v for k, v in recipe_.items() if k != "init_script"},
    }
    (work / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    log(f"built {name}: {suite}, kernel {kernel}, rootfs {used >> 20} MiB, {timings}")


def _installed_versions(rootfs: Path, *names: str) -> dict[str, str]:
    proc = _run(["dpkg-query", f"--admindir={rootfs / 'var/lib/dpkg'}", "-W",
                 "-f", "${Package} ${Version}\\n", *names], "dpkg-query in the new rootfs")
    versions = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if " " in line)
    missing = [n for n in names if n not in versions]
    if missing:
        raise GuestError(f"not installed in the image: {', '.join(missing)}")
    return versions


def _du_bytes(path: Path) -> int:
    return int(_run(["du", "-sb", str(path)], "du").stdout.split()[0])


def _make_partitioned_ext4(source: Path, image: Path, fs_bytes: int, disk_id: int, label: str) -> None:
    """An MBR disk with one ext4 partition holding `source`, without mounts.

    mke2fs -d fills the filesystem from a directory; -E offset places it after
    the partition table, which is written here as 512 bytes.
    """
    _run(["mke2fs", "-q", "-F", "-t", "ext4", "-L", label, "-d", str(source),
          "-E", f"offset={PARTITION_OFFSET}", str(image), f"{fs_bytes >> 10}k"], "mke2fs")
    first, count = PARTITION_OFFSET // 512, fs_bytes // 512
    # status, CHS start (unused: LBA only), type 0x83 Linux, CHS end, LBA start, sectors
    entry = struct.pack("<B3sB3sII", 0, b"\xfe\xff\xff", 0x83, b"\xfe\xff\xff", first, count)
    mbr = bytearray(512)
    mbr[440:444] = struct.pack("<I", disk_id)
    mbr[446:462] = entry
    mbr[510:512] = b"\x55\xaa"
    with open(image, "r+b") as f:
        f.write(mbr)
