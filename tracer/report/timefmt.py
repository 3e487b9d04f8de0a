"""How the report writes times and rates: UTC with a Z, so readers in
different time zones (and the machines' logs) agree. Durations are written
as everywhere else (tracer.domain.durations)."""

from __future__ import annotations

from datetime import datetime, timezone

from tracer.domain.durations import duration

__all__ = ["clock", "duration", "iso_stamp", "rate", "stamp"]


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


def rate(per_s: float) -> str:
    """Events per second: 0.25/s, 3.4/s, 250/s."""
    if per_s < 10:
        return f"{per_s:.2g}/s" if per_s < 1 else f"{per_s:.1f}/s"
    return f"{per_s:.0f}/s"
