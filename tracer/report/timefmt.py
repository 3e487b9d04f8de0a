"""How the report writes times, durations and latencies: UTC with a Z, so
readers in different time zones (and the machines' logs) agree."""

from __future__ import annotations

from datetime import datetime, timezone


def _dt(us: int) -> datetime:
    return datetime.fromtimestamp(us / 1e6, tz=timezone.utc)


def stamp(us: int | None) -> str:
    """2024-03-01 03:04:05Z"""
    return "-" if us is None else _dt(us).strftime("%Y-%m-%d %H:%M:%SZ")


def iso_stamp(text: str | None) -> str:
    """A manifest's ISO 8601 time as `stamp` writes it; unparsable text as is."""
    if not text:
        return "-"
    try:
        t = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return str(text)
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    return t.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def clock(us: int | None) -> str:
    """03:04:05Z (the date is in the report header)"""
    return "-" if us is None else _dt(us).strftime("%H:%M:%SZ")


def ms(us: float | None) -> str:
    """A latency: 312 µs, 4.1 ms, 85 ms, 1.24 s."""
    if us is None:
        return "-"
    if us < 1_000:
        return f"{us:.0f} µs"
    if us < 10_000:
        return f"{us / 1e3:.1f} ms"
    if us < 1_000_000:
        return f"{us / 1e3:.0f} ms"
    return f"{us / 1e6:.2f} s"


def duration_us(us: float | None) -> str:
    """A span of time: 40 ms, 12 s, 5 min 3 s, 2 h 10 min."""
    if us is None:
        return "-"
    s = us / 1e6
    if s < 10:
        return ms(us)
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{int(s // 60)} min {int(s % 60)} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60)} min"


def rate(per_s: float) -> str:
    """Events per second: 0.25/s, 3.4/s, 250/s."""
    if per_s < 10:
        return f"{per_s:.2g}/s" if per_s < 1 else f"{per_s:.1f}/s"
    return f"{per_s:.0f}/s"
