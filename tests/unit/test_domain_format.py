"""One way to write a duration and an endpoint (tracer/domain): worked out by hand."""
import pytest

from tracer.domain.addresses import destination, endpoint
from tracer.domain.durations import duration, seconds


@pytest.mark.parametrize("us, text", [
    (None, "-"), (0, "0µs"), (7, "7µs"), (312.4, "312µs"), (999.4, "999µs"),
    (999.5, "1.00ms"),             # the rounding point: never "1000µs"
    (4_123, "4.12ms"), (9_994, "9.99ms"), (9_995, "10.0ms"), (85_300, "85.3ms"),
    (99_950, "100ms"), (312_000, "312ms"), (999_499, "999ms"), (999_500, "1.00s"),
    (1_240_000, "1.24s"), (85_300_000, "85.3s"), (99_950_000, "1m40s"),
    (303_000_000, "5m03s"), (7_199_000_000, "119m59s"), (7_800_000_000, "2h10m"),
    (-1_500, "-1.50ms"),
])
def test_duration(us, text):
    assert duration(us) == text


def test_duration_fits_a_six_cell_column_below_an_hour():
    us = 1.0
    while us < 3.6e9:
        assert len(duration(us)) <= 6, duration(us)
        us *= 1.07


def test_seconds_is_duration_in_seconds():
    assert seconds(30.0) == "30.0s" and seconds(None) == "-"


@pytest.mark.parametrize("addr, port, family, text", [
    ("10.0.0.1", 80, 4, "10.0.0.1:80"),
    ("::1", 443, 6, "[::1]:443"),
    ("::ffff:10.0.0.1", 5432, 6, "[::ffff:10.0.0.1]:5432"),
    ("fe80::1", 22, None, "[fe80::1]:22"),     # no family stored: the colon says v6
    ("127.0.0.1", 22, None, "127.0.0.1:22"),
    (None, 22, None, "?:22"),
    ("other", 0, 0, "other"),                  # a summed row is its name
])
def test_endpoint(addr, port, family, text):
    assert endpoint(addr, port, family) == text


def test_destination_key():
    assert destination((6, "2001:db8::1", 53)) == "[2001:db8::1]:53"
