"""Fixtures for the tests that boot connscope's QEMU test guest (vagrant/guest.py)."""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

PROJECT_DIR = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(PROJECT_DIR / "vagrant"))

import guest  # noqa: E402

BUILD_TOOLS = ("qemu-system-x86_64", "debootstrap", "mke2fs", "debugfs", "apt-get", "dpkg-query")


def missing_prerequisites() -> list[str]:
    missing = [tool for tool in BUILD_TOOLS if shutil.which(tool) is None]
    if os.geteuid() != 0:
        missing.append("root (debootstrap needs it)")
    return missing


# The Debian releases whose guests run the kernel suite (test_backends_in_guest.py,
# test_fallbacks.py): 5.10, 6.1 and 6.12, each with its own Python and bcc.
# CONNSCOPE_VM_SUITES=bookworm runs one by hand.
GUEST_SUITES = tuple(s for s in os.environ.get("CONNSCOPE_VM_SUITES",
                                               "bookworm,trixie,bullseye").split(",") if s)


def _build(suite: str) -> Path:
    missing = missing_prerequisites()
    if missing:
        pytest.skip(f"cannot build the test guest, missing: {', '.join(missing)} (sudo ./run test installs them)")
    return guest.build_image(suite=suite)


@pytest.fixture(scope="session")
def guest_image() -> Path:
    """The cached default (bookworm) guest image, built on first use (about a minute)."""
    return _build(guest.SUITE)


@pytest.fixture(scope="session", params=GUEST_SUITES)
def suite_image(request) -> Path:
    """The image of each suite in GUEST_SUITES: tests using it run once per suite."""
    return _build(request.param)
