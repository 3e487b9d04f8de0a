"""connscope's test guests: Debian VMs with the cloud kernel (kprobes, fentry,
BTF, matching headers) that run tests under QEMU, for hosts whose own kernel
lacks those features: bookworm (6.1, the default), trixie (6.12), bullseye
(5.10). Standard library only (and pip, for wheels of a guest's Python).

    python vagrant/guest.py build [--suite S] [--archive]       # build or reuse the cached image
    python vagrant/guest.py run [--suite S] [--venv] -- CMD...  # boot, run CMD in the project, power off
    python vagrant/guest.py shell [--suite S] [--venv]          # interactive shell in the guest

Tests import build_image() and run() from here (see tests/vm/). Cache:
$CONNSCOPE_VM_CACHE, default /var/cache/connscope-vm. CONNSCOPE_VM_KVM=1 uses
KVM instead of TCG; CONNSCOPE_VM_MIRROR overrides the Debian mirror taken
from the host's apt sources; CONNSCOPE_VM_KEEP=1 keeps a run's scratch files.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from guest_image import (  # noqa: E402
    archive_image, build_image, cache_dir_default, image_suite, is_image, read_manifest,
)
from guest_packages import (  # noqa: E402
    RELEASES, SUITE, GuestError, Package, VersionMismatch, check_kernel_headers,
)
from guest_run import GuestRun, GuestTimeout, accelerator, run, shell, venv_site_packages  # noqa: E402

__all__ = [
    "GuestError", "GuestRun", "GuestTimeout", "Package", "RELEASES", "SUITE", "VersionMismatch", "accelerator",
    "archive_image", "build_image", "check_kernel_headers", "read_manifest", "run", "shell",
    "venv_site_packages",
]

PROJECT_DIR = Path(__file__).resolve().parent.parent


def _prune(cache_dir: Path, keep: Path) -> None:
    """Remove the other images of keep's suite and their archives; other
    suites' images stay (CI keeps one of each)."""
    suite = image_suite(keep)
    for entry in sorted(cache_dir.iterdir()):
        if entry.is_dir() and entry != keep and len(entry.name) == 16 and is_image(entry) \
                and image_suite(entry) == suite:
            shutil.rmtree(entry)
            print(f"removed {entry}", file=sys.stderr)
            packed = entry.with_name(entry.name + ".tar.zst")
            if packed.is_file():
                packed.unlink()
                print(f"removed {packed}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="guest.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=None,
                        help="image cache directory (default $CONNSCOPE_VM_CACHE or /var/cache/connscope-vm)")
    sub = parser.add_subparsers(dest="action", required=True)
    suite_help = f"Debian release of the guest: {', '.join(RELEASES)} (default {SUITE})"
    b = sub.add_parser("build", help="build or reuse the guest image; prints its directory")
    b.add_argument("--suite", choices=sorted(RELEASES), default=SUITE, help=suite_help)
    b.add_argument("--archive", action="store_true", help="also write <hash>.tar.zst for CI caches")
    b.add_argument("--prune", action="store_true", help="remove older images of the same suite from the cache")
    for name, helptext in (("run", "run a command in the guest"), ("shell", "interactive guest shell")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--suite", choices=sorted(RELEASES), default=SUITE, help=suite_help)
        p.add_argument("--project", type=Path, default=PROJECT_DIR)
        p.add_argument("--venv", action="store_true",
                       help="carry the project's Python packages into the guest (pyarrow, textual): "
                            "the .venv's, or wheels for the guest's Python")
        if name == "run":
            p.add_argument("--timeout", type=int, default=1800)
            p.add_argument("--results", type=Path, help="copy $CONNSCOPE_VM_RESULTS here afterwards")
            p.add_argument("command", nargs=argparse.REMAINDER, help="shell command (after --)")
    args = parser.parse_args(argv)

    try:
        image = build_image(args.cache or cache_dir_default(), suite=args.suite,
                            archive=getattr(args, "archive", False))
        if args.action == "build":
            if args.prune:
                _prune(image.parent, image)
            print(image)
            return 0
        site = venv_site_packages(args.project, image) if args.venv else None
        if args.action == "shell":
            return shell(args.project, image=image, site_packages=site)
        words = args.command[1:] if args.command[:1] == ["--"] else args.command
        command = " ".join(words)  # shell text, as typed: `run -- 'a; b'` or `run -- a b`
        if not command:
            parser.error("run needs a command, e.g. guest.py run -- uname -r")
        result = run(command, args.project, args.timeout, image=image, site_packages=site,
                     results_dir=args.results,
                     on_output=lambda text: (sys.stdout.write(text), sys.stdout.flush()))
        return result.exit_code
    except GuestTimeout as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 124
    except GuestError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
