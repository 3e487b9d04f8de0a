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


@pytest.fixture(scope="session")
def guest_image() -> Path:
    """The cached guest image, built on first use (about a minute)."""
    missing = missing_prerequisites()
    if missing:
        pytest.skip(f"cannot build the test guest, missing: {', '.join(missing)} (sudo ./run test installs them)")
    return guest.build_image()
