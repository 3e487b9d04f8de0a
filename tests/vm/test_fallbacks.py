"""The fallbacks (a hooked function absent; fentry, kprobes or the ring
buffer unavailable), forced with connscope's test hooks in the Debian 6.1
test guest, where everything is really there. The checks run in the guest
(test_fallbacks_guest.py) during the one boot test_backends_in_guest.py
makes; each becomes a host test here that fails with the guest's message."""
from __future__ import annotations

import pytest

from test_backends_in_guest import (  # same module object pytest imported: one boot
    FALLBACK_CHECKS_FILE, collect_test_ids, junit_key, run_guest_suite,
)

FALLBACK_CHECKS = collect_test_ids([FALLBACK_CHECKS_FILE], "-o", "python_functions=check_*")


@pytest.fixture(scope="session")
def suite(suite_image, tmp_path_factory):
    return run_guest_suite(suite_image, tmp_path_factory)


@pytest.mark.vm
@pytest.mark.parametrize("nodeid", FALLBACK_CHECKS, ids=[n.split("::")[-1] for n in FALLBACK_CHECKS])
def test_fallback_in_guest(suite, nodeid):
    suite.check("fallbacks", nodeid)


@pytest.mark.vm
def test_guest_ran_every_fallback_check(suite):
    step = suite.step("fallbacks")
    assert step.exit_code in (0, 1), f"pytest in the guest exited {step.exit_code}; {suite.summary()}"
    assert set(suite.cases("fallbacks")) == {junit_key(n) for n in FALLBACK_CHECKS}, suite.summary()
