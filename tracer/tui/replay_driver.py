"""Turns a replay's position into a shown Snapshot without freezing the keys.

A cached Snapshot, or one a few thousand rows away, is built at once. A long
jump in a big recording (the worst moment of an hour at 10,000 connects/s)
costs seconds of aggregation: one background thread builds it while the
screen keeps the last Snapshot and says "building"; if the position moves on
meanwhile, the thread builds the newest position next.
"""
from __future__ import annotations

import threading
from typing import Callable

from tracer.aggregate.snapshot import Snapshot

SYNC_BUILD_ROWS = 20_000    # connect rows worth building without a thread


class ReplayDriver:
    def __init__(self, controller, show: Callable[[Snapshot], None],
                 changed: Callable[[], None], call_from_thread: Callable):
        self.controller = controller
        self._show = show                  # UI thread: put this Snapshot on screen
        self._changed = changed            # UI thread: "building" started or stopped
        self._call_from_thread = call_from_thread
        self._lock = threading.Lock()
        self._wanted: int | None = None    # position the thread should build next
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def building(self) -> bool:
        return self._wanted is not None

    def goto(self) -> None:
        """Show the controller's position (UI thread)."""
        timeline, i = self.controller.timeline, self.controller.position
        cached = getattr(timeline, "cached", None)
        snapshot = cached(i) if cached else None
        cost = getattr(timeline, "cost", lambda i: 0)
        if snapshot is None and self._thread is None and cost(i) <= SYNC_BUILD_ROWS:
            snapshot = timeline.snapshot(i)
        if snapshot is not None:
            with self._lock:
                self._wanted = None
            self._show(snapshot)
            return
        with self._lock:
            self._wanted = i
        if self._thread is None:
            self._thread = threading.Thread(target=self._build, daemon=True,
                                            name="connscope-replay")
            self._thread.start()
        self._changed()

    def stop(self) -> None:
        """Stop building (the app is leaving); the daemon thread ends within an interval."""
        self._stop.set()

    def _build(self) -> None:
        timeline = self.controller.timeline
        while not self._stop.is_set():
            with self._lock:
                target = self._wanted
            if target is None:
                break
            snapshot = timeline.snapshot(target, cancelled=self._stop.is_set)
            with self._lock:
                if self._wanted == target:
                    self._wanted = None
            if snapshot is not None and not self._stop.is_set():
                self._call_from_thread(self._built, target, snapshot)
        if not self._stop.is_set():
            self._call_from_thread(self._finished)

    def _built(self, index: int, snapshot: Snapshot) -> None:
        if self.controller.position == index:
            self._show(snapshot)
        self._changed()

    def _finished(self) -> None:
        self._thread = None
        if self.building:      # asked for while the thread was on its way out
            self.goto()
