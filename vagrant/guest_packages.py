"""Which packages a test guest is built from: the Debian release (bullseye,
bookworm or trixie), its mirror, the kernel version that <suite>/main holds
now, and the check that the kernel headers belong to that kernel (see
guest.py)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import NamedTuple

SUITE = "bookworm"   # the default guest
ARCH = "amd64"
FLAVOUR = "cloud-amd64"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"


class GuestError(Exception):
    """The guest image could not be built or the guest could not run."""


class VersionMismatch(GuestError):
    """Kernel image and kernel headers are not the same build."""


class Package(NamedTuple):
    name: str
    version: str


class Release(NamedTuple):
    """What differs between the Debian releases a guest can be built from.

    Package names are the same in all three (python3-bpfcc, the cloud kernel
    meta packages); the kernel itself is resolved from the suite's index.
    python: the system interpreter, which is the only one bcc's bindings
    exist for. glibc: the newest manylinux tag the guest can load, for wheels
    built on the host for the guest's Python (guest_wheels.py).
    """
    suite: str
    debian: int
    python: str
    glibc: tuple[int, int]


RELEASES = {r.suite: r for r in (
    Release("bullseye", 11, "3.9", (2, 31)),   # kernel 5.10, bcc 0.18
    Release("bookworm", 12, "3.11", (2, 36)),  # kernel 6.1, bcc 0.26
    Release("trixie", 13, "3.13", (2, 41)),    # kernel 6.12
)}


def release(suite: str) -> Release:
    try:
        return RELEASES[suite]
    except KeyError:
        raise GuestError(f"unknown guest suite {suite!r}; known: {', '.join(RELEASES)}") from None


def kernel_release(package_name: str) -> str:
    """'linux-image-6.1.0-50-cloud-amd64[-unsigned]' -> '6.1.0-50-cloud-amd64'."""
    m = re.fullmatch(r"linux-(?:image|headers)-(.+?)(?:-unsigned)?", package_name)
    if not m:
        raise GuestError(f"not a kernel image or headers package name: {package_name!r}")
    return m.group(1)


def check_kernel_headers(image: Package, headers: Package) -> str:
    """Return the kernel release, or raise VersionMismatch.

    bcc compiles against the headers; headers from another build describe other
    struct layouts, and the guest would test against garbage offsets.
    """
    image_release, headers_release = kernel_release(image.name), kernel_release(headers.name)
    if image_release != headers_release or image.version != headers.version:
        raise VersionMismatch(
            f"kernel {image.name} {image.version} and headers {headers.name} "
            f"{headers.version} differ; refusing to build a guest whose bcc "
            "would compile against the wrong kernel")
    return image_release


# --- where packages come from ------------------------------------------------

def _sources_entries(text: str, deb822: bool):
    """Yield (uri, suites, components, signed_by) from one apt sources file."""
    if deb822:
        for stanza in re.split(r"\n\s*\n", text):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if line.startswith("#") or ":" not in line or line[:1].isspace():
                    continue
                key, _, value = line.partition(":")
                fields[key.strip().lower()] = value.strip()
            if "deb" not in fields.get("types", "").split() or fields.get("enabled", "yes") == "no":
                continue
            for uri in fields.get("uris", "").split():
                yield (uri, fields.get("suites", "").split(),
                       fields.get("components", "").split(), fields.get("signed-by"))
    else:
        for line in text.splitlines():
            line = line.split("#", 1)[0].strip()
            m = re.match(r"deb\s+(?:\[(?P<opts>[^\]]*)\]\s+)?(?P<uri>\S+)\s+(?P<suite>\S+)\s*(?P<comps>.*)", line)
            if not m:
                continue
            opts = dict(o.split("=", 1) for o in (m.group("opts") or "").split() if "=" in o)
            yield m.group("uri"), [m.group("suite")], m.group("comps").split(), opts.get("signed-by")


def find_mirror(suite: str = SUITE) -> str:
    """The Debian mirror this host's apt already uses for `suite`.

    Falls back to debootstrap's own default, so no mirror is written into the
    repository. CONNSCOPE_VM_MIRROR overrides both.
    """
    if os.environ.get("CONNSCOPE_VM_MIRROR"):
        return os.environ["CONNSCOPE_VM_MIRROR"]
    files = [Path("/etc/apt/sources.list")]
    parts = Path("/etc/apt/sources.list.d")
    if parts.is_dir():
        files += sorted(p for p in parts.iterdir() if p.suffix in (".list", ".sources"))
    for path in files:
        try:
            text = path.read_text()
        except OSError:
            continue
        for uri, suites, comps, _ in _sources_entries(text, path.suffix == ".sources"):
            if suite in suites and "main" in comps:
                return uri.rstrip("/")
    try:
        m = re.search(r'^DEF_MIRROR="([^"]+)"', Path(shutil.which("debootstrap") or "").read_text(), re.M)
        if m:
            return m.group(1)
    except OSError:
        pass
    return DEFAULT_MIRROR


def _apt_options(apt_dir: Path, mirror: str, suite: str) -> list[str]:
    # A private apt state that sees exactly what debootstrap will see: the one
    # suite, main only. The host's lists also carry <suite>-security, whose
    # newer kernel ABI debootstrap would not install.
    for sub in ("lists/partial", "cache", "no-parts"):
        (apt_dir / sub).mkdir(parents=True, exist_ok=True)
    (apt_dir / "status").touch()
    (apt_dir / "sources.list").write_text(f"deb [signed-by={KEYRING}] {mirror} {suite} main\n")
    opts = {
        "Dir::Etc::SourceList": apt_dir / "sources.list",
        "Dir::Etc::SourceParts": apt_dir / "no-parts",
        "Dir::Etc::Preferences": apt_dir / "no-preferences",
        "Dir::Etc::PreferencesParts": apt_dir / "no-parts",
        "Dir::State::Lists": apt_dir / "lists",
        "Dir::State::status": apt_dir / "status",
        "Dir::Cache": apt_dir / "cache",
        "APT::Architecture": ARCH,
        "APT::Architectures": ARCH,
        "APT::Sandbox::User": "root",
        "Acquire::Languages": "none",
    }
    return [arg for k, v in opts.items() for arg in ("-o", f"{k}={v}")]


def _depends_on(show_output: str, meta: str, suite: str = SUITE) -> Package:
    """The versioned dependency of a Debian kernel meta package."""
    for stanza in show_output.split("\n\n"):
        if re.search(rf"^Package: {re.escape(meta)}$", stanza, re.M):
            m = re.search(r"^Depends: (linux-\S+) \(= ([^)]+)\)", stanza, re.M)
            if m:
                return Package(m.group(1), m.group(2))
    raise GuestError(f"{meta} has no versioned kernel dependency in the {suite} index")


def resolve_kernel(cache_dir: Path, mirror: str, suite: str = SUITE) -> tuple[Package, Package]:
    """The kernel image and headers packages that `suite`/main currently holds.

    Read from the suite's index through a private apt state under cache_dir;
    after the first run an unchanged index costs one small request.
    """
    release(suite)
    # One apt state per suite: builds of two suites may run side by side.
    opts = _apt_options(cache_dir / "apt" / suite, mirror, suite)
    update = subprocess.run(["apt-get", *opts, "-q", "update"], capture_output=True, text=True)
    # apt-get update exits 0 when it could not fetch an index ("W: Failed to
    # fetch"); stale or missing lists must not pick the kernel.
    problems = [line for line in update.stderr.splitlines() if line.startswith(("E:", "W:"))]
    if update.returncode != 0 or problems:
        raise GuestError(f"apt-get update for {suite} from {mirror} failed: "
                         f"{problems[0] if problems else 'exit ' + str(update.returncode)}")
    metas = (f"linux-image-{FLAVOUR}", f"linux-headers-{FLAVOUR}")
    show = subprocess.run(["apt-cache", *opts, "show", "--no-all-versions", *metas],
                          capture_output=True, text=True)
    if show.returncode != 0:
        raise GuestError(f"apt-cache show {' '.join(metas)} failed: {show.stderr.strip()}")
    return _depends_on(show.stdout, metas[0], suite), _depends_on(show.stdout, metas[1], suite)
