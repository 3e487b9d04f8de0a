"""The "other" row's rate is per second like every other row's: the only
test of it rolled a 1 s interval, where a count and a rate are equal, so
dropping the division survived the suite."""
import pytest

from tests.unit.test_connect_table import connect
from tracer.aggregate.connects import ConnectTable


@pytest.mark.parametrize("seconds", [0.5, 2.0])
def test_other_row_rate_is_per_second(seconds):
    t = ConnectTable(max_keys=2)
    for i in range(10):
        t.add(connect(daddr=f"10.0.{i}.1", pid=100 + i, comm=f"p{i}"))
    t.roll(seconds)
    for rows in (t.by_destination(), t.by_process()):
        (other,) = [r for r in rows if r.label == "other"]
        assert other.attempts == 8
        assert other.rate == pytest.approx(8 / seconds)
        assert all(r.rate == pytest.approx(1 / seconds) for r in rows if r.label != "other")
