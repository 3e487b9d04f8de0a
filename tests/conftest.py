import os

import pytest


def pytest_collection_modifyitems(config, items):
    """Tests marked `kernel` load BPF: they need root. Say so instead of failing
    with a permission error deep inside bcc."""
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root: loads BPF, builds namespaces or mounts file systems (run: sudo ./run test)")
    for item in items:
        if "kernel" in item.keywords or "vm" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _no_import_block_leaks():
    """tracer.run keeps pandas and numpy out of the tracer's process; a test
    that runs it in-process must not leave that on for the tests after it."""
    import sys

    yield
    sys.meta_path[:] = [f for f in sys.meta_path if type(f).__name__ != "_Refuse"]
