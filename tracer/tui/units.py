"""Numbers as short, aligned text for table cells. Pure; no I/O, no clocks."""
from __future__ import annotations

import re
from datetime import datetime, timezone

from tracer.domain.durations import duration as fmt_us

__all__ = ["fit_count", "fmt_us", "fmt_count", "fmt_rate", "fmt_bytes", "fmt_clock", "fmt_pct"]

_COUNT = re.compile(r"\d{1,3}(,\d{3})*\Z")


def fmt_count(n: int | None) -> str:
    if n is None:
        return "-"
    if n < 100_000:
        return f"{n:,}"
    if n < 999_500:
        return f"{n / 1e3:.0f}k"
    if n < 999_950_000:
        return f"{n / 1e6:.1f}M"
    return f"{n / 1e9:.1f}G"


def fit_count(text: str, width: int) -> str | None:
    """A count as fmt_count wrote it ("1,149"), shortened to fit `width`
    cells: 1149, 1.1k, 1k; None if the text is not a count or nothing fits."""
    if not _COUNT.match(text):
        return None
    n = int(text.replace(",", ""))
    for short in (text, str(n), f"{n / 1e3:.1f}k", f"{n / 1e3:.0f}k", f"{n / 1e6:.1f}M",
                  f"{n / 1e6:.0f}M", f"{n / 1e9:.1f}G", f"{n / 1e9:.0f}G"):
        if len(short) <= width and not short.startswith(("0.", "1000")):
            return short
    return None


def fmt_rate(x: float | None) -> str:
    """Per-second rates: 0, 0.3, 12, 1.2k."""
    if x is None:
        return "-"
    if x == 0:
        return "0"
    if x < 9.95:
        return f"{x:.1f}"
    if x < 9_999.5:
        return f"{x:.0f}"
    if x < 999_950:
        return f"{x / 1e3:.1f}k"
    return f"{x / 1e6:.1f}M"


def fmt_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover - loop always returns


def fmt_clock(ts_us: int | None) -> str:
    """Wall-clock time of a snapshot, always UTC so every operator (and every
    screenshot) reads the same thing."""
    if ts_us is None:
        return "--:--:--"
    return datetime.fromtimestamp(ts_us / 1e6, timezone.utc).strftime("%H:%M:%S")


def fmt_pct(fraction: float | None) -> str:
    if fraction is None:
        return "-"
    return f"{fraction * 100:.0f}%"
