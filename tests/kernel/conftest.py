import os
import time

import pytest

from tests.kernel.netlab import netlab  # noqa: F401  (fixture)
from tracer.filters import Filters


class Tracer:
    """A live ProbeSession for tests, polled continuously by a thread (as the
    real collector does), so that traffic from anything else on the machine
    cannot overflow the ring buffer while the test body is busy."""

    def __init__(self, session):
        import threading

        self.session = session
        self.seen = []
        self._lock = threading.RLock()   # predicates call connects_to under it
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self):
        while not self._stop.is_set():
            got = self.session.poll(50)
            if got:
                with self._lock:
                    self.seen.extend(got)

    def close(self):
        self._stop.set()
        self._thread.join(5)

    def wait_for(self, predicate, timeout_s=10.0, settle_s=0.3):
        """Wait until predicate(events) is true, then a little longer so that
        surplus events (which would make counts wrong) have a chance to show."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                ok = predicate(list(self.seen))
            if ok:
                time.sleep(settle_s)
                break
            time.sleep(0.05)
        with self._lock:
            return list(self.seen)

    def connects_to(self, port, addr=None):
        with self._lock:
            seen = list(self.seen)
        return [e for e in seen if getattr(e, "dport", None) == port
                and (addr is None or e.daddr == addr)]

    def lost(self) -> dict:
        return self.session.counters()


def discard_pending(session) -> None:
    """Drop every event earlier tests left in the buffer: one poll decodes
    16,384 at most, and a test that ran record or ab as a subprocess leaves
    more (redis' accepts counted 6,041 against 6,039 after the Prometheus
    test's ab runs). Bounded: 200 polls."""
    for _ in range(200):
        if not session.poll(0):
            return


@pytest.fixture(scope="session")
def probe_session():
    from tracer.probes import startup

    backend = os.environ.get("CONNSCOPE_TEST_BACKEND", "auto")
    session = startup.start(backend, Filters())
    yield session
    session.close()


@pytest.fixture
def tracer(probe_session):
    discard_pending(probe_session)
    t = Tracer(probe_session)
    yield t
    t.close()


class CollectorRun:
    """The real collection loop (probes -> aggregation -> snapshots) in a
    thread, while the test body makes traffic; snapshots are kept."""

    def __init__(self, session, interval=0.5):
        import threading

        from tracer.run import make_collector
        from tracer.clock import Clock

        self.snapshots = []
        self.events = []
        self._stop = threading.Event()
        outer = self

        class Keep:
            def on_events(self, events):
                outer.events.extend(events)

            def on_interval(self, status, snapshot):
                outer.snapshots.append(snapshot)

            def close(self, status, snapshot):
                outer.snapshots.append(snapshot)

        self.collector = make_collector(session, [Keep()], interval, Clock())
        # Closes are tallied while reading, not events: keep the tallies too.
        self.closes = []
        add_closes = self.collector.processes.add_closes

        def keep_closes(closes):
            outer.closes.append(closes)
            add_closes(closes)
        self.collector.processes.add_closes = keep_closes
        self._thread = threading.Thread(target=self.collector.run, args=(self._stop.is_set,))

    def __enter__(self):
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self.collector.primed and time.monotonic() < deadline:
            time.sleep(0.01)   # traffic before this would be part of the baseline
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(10)

    def listener_rows(self, port):
        return [r for s in self.snapshots for r in s.listeners if r.lport == port]


@pytest.fixture
def collector_run(probe_session):
    discard_pending(probe_session)
    probe_session.take_listener_peaks()
    return lambda interval=0.5: CollectorRun(probe_session, interval)
