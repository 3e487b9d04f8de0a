"""ReplayController: where a replay is and how it moves. Pure logic."""
import pytest

from tracer.replay import SPEEDS, ReplayController, ReplayError


class Timeline:
    """A stand-in timeline: snapshot(i) is just i."""

    def __init__(self, n, worst=None, interval_s=1.0):
        self.n, self.worst_index, self.interval_s = n, worst, interval_s

    def __len__(self):
        return self.n

    def snapshot(self, i):
        assert 0 <= i < self.n
        return i


def test_starts_paused_at_the_first_interval():
    c = ReplayController(Timeline(10))
    assert (c.position, c.playing, c.speed, c.snapshot()) == (0, False, 1, 0)
    assert not c.advance(5.0)          # paused: time passing changes nothing
    assert c.position == 0


def test_play_advances_one_interval_per_interval_of_real_time():
    c = ReplayController(Timeline(10, interval_s=2.0))
    c.play()
    assert not c.advance(1.5)
    assert c.advance(0.5) and c.position == 1      # the owed half second carried over
    assert c.advance(4.0) and c.position == 3


def test_speed_multiplies_and_is_bounded():
    c = ReplayController(Timeline(1000))
    assert [c.faster() for _ in range(len(SPEEDS) + 2)][-1] == 60
    c.play()
    c.advance(0.5)
    assert c.position == 30
    assert [c.slower() for _ in range(len(SPEEDS) + 2)][-1] == 1


def test_playing_stops_at_the_end_and_play_again_restarts():
    c = ReplayController(Timeline(5))
    c.play()
    assert c.advance(100.0)
    assert c.position == 4 and c.at_end and not c.playing
    c.play()
    assert c.position == 0 and c.playing


def test_step_pauses_and_clamps():
    c = ReplayController(Timeline(5))
    c.play()
    c.step(1)
    assert (c.position, c.playing) == (1, False)
    c.step(-3)
    assert c.position == 0
    c.step(99)
    assert c.position == 4


def test_toggle():
    c = ReplayController(Timeline(5))
    assert c.toggle() is True and c.playing
    assert c.toggle() is False and not c.playing


def test_pause_forgets_owed_time():
    c = ReplayController(Timeline(10))
    c.play()
    c.advance(0.9)
    c.pause()
    c.play()
    assert not c.advance(0.2)          # 0.9 s before the pause do not count
    assert c.position == 0


def test_jump_to_worst():
    c = ReplayController(Timeline(10, worst=7))
    c.play()
    assert c.jump_to_worst()
    assert (c.position, c.playing) == (7, False)
    nothing = ReplayController(Timeline(10, worst=None))
    assert not nothing.jump_to_worst() and nothing.position == 0


def test_an_empty_timeline_cannot_be_replayed():
    with pytest.raises(ReplayError):
        ReplayController(Timeline(0))
