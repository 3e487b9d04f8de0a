"""Where a replay is and how it moves: play, pause, step, speed, jump to the
worst moment. Pure index logic; the TUI calls `advance` with the real time
elapsed and everything else on a key press."""
from __future__ import annotations

from typing import Protocol

from tracer.aggregate.snapshot import Snapshot


class ReplayError(Exception):
    """A recording cannot be replayed; the message is one line."""


class Timeline(Protocol):
    interval_s: float
    worst_index: int | None

    def __len__(self) -> int: ...
    def snapshot(self, i: int) -> Snapshot: ...


SPEEDS = (1, 2, 5, 10, 30, 60)


class ReplayController:
    def __init__(self, timeline: Timeline):
        if len(timeline) == 0:
            raise ReplayError("the recording has no intervals to replay")
        self.timeline = timeline
        self.position = 0
        self.playing = False
        self._speed = 0
        self._owed_s = 0.0     # real seconds not yet turned into whole intervals

    @property
    def speed(self) -> int:
        return SPEEDS[self._speed]

    @property
    def length(self) -> int:
        return len(self.timeline)

    @property
    def at_end(self) -> bool:
        return self.position == self.length - 1

    def snapshot(self) -> Snapshot:
        return self.timeline.snapshot(self.position)

    def play(self) -> None:
        if self.at_end:
            self.position = 0   # play at the end starts over
        self.playing = True
        self._owed_s = 0.0

    def pause(self) -> None:
        self.playing = False
        self._owed_s = 0.0

    def toggle(self) -> bool:
        if self.playing:
            self.pause()
        else:
            self.play()
        return self.playing

    def seek(self, index: int) -> None:
        self.position = min(max(index, 0), self.length - 1)
        self._owed_s = 0.0

    def step(self, n: int) -> None:
        """Move n intervals (negative: back); stepping pauses playback."""
        self.pause()
        self.seek(self.position + n)

    def faster(self) -> int:
        self._speed = min(self._speed + 1, len(SPEEDS) - 1)
        return self.speed

    def slower(self) -> int:
        self._speed = max(self._speed - 1, 0)
        return self.speed

    def jump_to_worst(self) -> bool:
        worst = self.timeline.worst_index
        if worst is None:
            return False
        self.pause()
        self.seek(worst)
        return True

    def advance(self, elapsed_s: float) -> bool:
        """Account for `elapsed_s` of real time; True if the position moved."""
        if not self.playing:
            return False
        self._owed_s += elapsed_s * self.speed
        step_s = self.timeline.interval_s or 1.0
        n = int(self._owed_s / step_s)
        if n <= 0:
            return False
        self._owed_s -= n * step_s
        before = self.position
        self.position = min(self.position + n, self.length - 1)
        if self.at_end:
            self.pause()
        return self.position != before
