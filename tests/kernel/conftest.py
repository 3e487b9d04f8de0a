import os
import time

import pytest

from tests.kernel.netlab import netlab  # noqa: F401  (fixture)
from tracer.filters import Filters


class Tracer:
    """A live ProbeSession for tests: poll until what we wait for has arrived."""

    def __init__(self, session):
        self.session = session
        self.seen = []

    def drain(self):
        self.seen += self.session.poll(0)

    def wait_for(self, predicate, timeout_s=10.0, settle_s=0.3):
        """Poll until predicate(events) is true, then a little longer so that
        surplus events (which would make counts wrong) have a chance to show."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.seen += self.session.poll(50)
            if predicate(self.seen):
                end = time.monotonic() + settle_s
                while time.monotonic() < end:
                    self.seen += self.session.poll(50)
                return self.seen
        return self.seen

    def connects_to(self, port, addr=None):
        return [e for e in self.seen if getattr(e, "dport", None) == port
                and (addr is None or e.daddr == addr)]


@pytest.fixture(scope="session")
def probe_session():
    from tracer.probes import startup

    backend = os.environ.get("CONNSCOPE_TEST_BACKEND", "auto")
    session = startup.start(backend, Filters())
    yield session
    session.close()


@pytest.fixture
def tracer(probe_session):
    probe_session.poll(0)  # discard what earlier tests left
    return Tracer(probe_session)
