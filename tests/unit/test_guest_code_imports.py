"""The kernel suite also runs inside the guests, on their own Pythons
(bullseye: 3.9, trixie: 3.13), which the host's kernel run never uses. Every
module of it must at least import on the Python this pure-logic suite runs on
(tests/package/test_pythons.py runs it on 3.9 and the newest): a `str | None`
annotation evaluated at import once failed every bullseye test at collection."""
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULES = sorted(f"tests.kernel.{p.stem}" for p in (ROOT / "tests" / "kernel").glob("*.py"))


@pytest.mark.parametrize("module", MODULES)
def test_kernel_suite_module_imports(module):
    importlib.import_module(module)
