"""Small inline SVG charts, drawn in Python so the HTML report needs no script,
font or network. Every label is escaped: names and addresses come from the
traced system.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from html import escape
from typing import Sequence

from tracer.report.timefmt import duration
from tracer.safe_text import printable

PAD_L, PAD_R, PAD_T, PAD_B = 52, 12, 22, 26
GRID = "#e3e6ea"
HALO = 'paint-order="stroke" stroke="#fff" stroke-width="3"'  # keeps labels legible over bars
AXIS = "#6b7280"
TIME_STEPS_S = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600,
                43200, 86400)


def _e(s) -> str:
    # control characters shown escaped, as everywhere else (tracer/safe_text.py)
    return escape(printable(s), quote=True)


def _svg(width: int, height: int, label: str, body: list[str]) -> str:
    # inline SVG in HTML needs no xmlns, and the page then names no URL at all
    return (f'<svg viewBox="0 0 {width} {height}" '
            f'width="{width}" height="{height}" role="img" aria-label="{_e(label)}" '
            f'font-family="system-ui, sans-serif" font-size="11">'
            f'<title>{_e(label)}</title>{"".join(body)}</svg>')


def decade_label(us: float) -> str:
    """1µs, 10µs, ..., 1ms, ..., 1s, 10s: axis labels for powers of ten, in
    tracer.domain.durations's units without its fixed three digits."""
    for unit, size in (("s", 1e6), ("ms", 1e3), ("µs", 1.0)):
        if us >= size:
            return f"{us / size:g}{unit}"
    return f"{us:g}µs"


def nice_ticks(top: float, count: int = 4) -> list[float]:
    """0 and round steps up to at least `top` (1, 2, 5 x 10^k)."""
    if top <= 0:
        return [0.0, 1.0]
    raw = top / count
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    n = math.ceil(top / step - 1e-9)
    return [i * step for i in range(n + 1)]


def _num(v: float) -> str:
    if v >= 10_000:
        return f"{v / 1000:.0f}k"
    if v >= 1000:
        return f"{v / 1000:.1f}k".replace(".0k", "k")
    return f"{v:g}"


def _time_ticks(t0: int, t1: int, count: int = 6) -> list[int]:
    span_s = max((t1 - t0) / 1e6, 1)
    step = next((s for s in TIME_STEPS_S if span_s / s <= count), TIME_STEPS_S[-1])
    step_us = step * 1_000_000
    first = -(-t0 // step_us) * step_us
    return list(range(first, t1 + 1, step_us))


def _time_label(us: int, with_seconds: bool, with_date: bool = False) -> str:
    t = datetime.fromtimestamp(us / 1e6, tz=timezone.utc)
    if with_date:
        return t.strftime("%m-%d %H:%M")
    return t.strftime("%H:%M:%S" if with_seconds else "%H:%M")


def _anchor(x: float, width: int) -> str:
    """Labels near an edge grow inward, so none is cut off."""
    if x > width - PAD_R - 20:
        return "end"
    if x < PAD_L + 20:
        return "start"
    return "middle"


def histogram(bins: Sequence[tuple[float, float, int]], lo: float, hi: float, title: str,
              markers: Sequence[tuple[float, str, str]] = (), width: int = 560,
              height: int = 190) -> str:
    """Bars over a log10 x axis from `lo` to `hi` (µs); markers are (value, label, color)."""
    pw, ph = width - PAD_L - PAD_R, height - PAD_T - PAD_B
    llo, lhi = math.log10(max(lo, 1e-3)), math.log10(max(hi, lo * 10))

    def x(v: float) -> float:
        return PAD_L + pw * (math.log10(max(v, 1e-3)) - llo) / (lhi - llo)

    ticks = nice_ticks(max((c for _, _, c in bins), default=0))
    top = ticks[-1]

    def y(v: float) -> float:
        return PAD_T + ph * (1 - v / top)

    body = [f'<text x="{PAD_L}" y="14" font-weight="600" fill="#111">{_e(title)}</text>']
    for t in ticks:
        body.append(f'<line x1="{PAD_L}" x2="{width - PAD_R}" y1="{y(t):.1f}" y2="{y(t):.1f}" '
                    f'stroke="{GRID}"/><text x="{PAD_L - 6}" y="{y(t) + 4:.1f}" '
                    f'text-anchor="end" fill="{AXIS}">{_num(t)}</text>')
    for low, high, count in bins:
        if count:
            x0, x1 = x(low), x(high)
            body.append(f'<rect x="{x0:.1f}" y="{y(count):.1f}" width="{max(x1 - x0 - 1, 1):.1f}" '
                        f'height="{PAD_T + ph - y(count):.1f}" fill="#4e79a7">'
                        f'<title>{_e(duration(low))} to {_e(duration(high))}: {count}</title></rect>')
    for k in range(math.floor(llo), math.ceil(lhi) + 1):
        v = 10.0 ** k
        if lo <= v <= hi * 1.0001:
            body.append(f'<line x1="{x(v):.1f}" x2="{x(v):.1f}" y1="{PAD_T + ph}" '
                        f'y2="{PAD_T + ph + 4}" stroke="{AXIS}"/><text x="{x(v):.1f}" '
                        f'y="{height - 8}" text-anchor="{_anchor(x(v), width)}" fill="{AXIS}">'
                        f'{_e(decade_label(v))}</text>')
    for i, (v, label, color) in enumerate(markers):
        if v is None:
            continue
        body.append(f'<line x1="{x(v):.1f}" x2="{x(v):.1f}" y1="{PAD_T}" y2="{PAD_T + ph}" '
                    f'stroke="{color}" stroke-width="1.5" stroke-dasharray="4 3"/>')
        # the label goes left of its line near the right edge
        left = x(v) > width - PAD_R - 80
        body.append(f'<text x="{x(v) + (-3 if left else 3):.1f}" y="{PAD_T + 10 + 12 * i}" '
                    f'text-anchor="{"end" if left else "start"}" fill="{color}" '
                    f'font-weight="600" {HALO}>{_e(label)}</text>')
    body.append(f'<line x1="{PAD_L}" x2="{width - PAD_R}" y1="{PAD_T + ph}" y2="{PAD_T + ph}" '
                f'stroke="{AXIS}"/>')
    return _svg(width, height, title, body)


def timeseries(t0: int, t1: int, title: str, series: Sequence[dict],
               hlines: Sequence[tuple[float, str, str]] = (), y_label: str = "",
               width: int = 560, height: int = 170) -> str:
    """Lines or bars over time (µs since the epoch, UTC).

    Each series: {"name", "color", "points": [(us, value)], "kind": "line" or "bars",
    "bar_us": bar width}; hlines are (value, label, color), e.g. a backlog limit.
    """
    pw, ph = width - PAD_L - PAD_R, height - PAD_T - PAD_B
    t1 = max(t1, t0 + 1)
    values = [v for s in series for _, v in s["points"] if v is not None]
    ticks = nice_ticks(max(values + [h[0] for h in hlines] + [0]))
    top = ticks[-1] or 1

    def x(us: float) -> float:
        return PAD_L + pw * (us - t0) / (t1 - t0)

    def y(v: float) -> float:
        return PAD_T + ph * (1 - v / top)

    body = [f'<text x="{PAD_L}" y="14" font-weight="600" fill="#111">{_e(title)}</text>']
    if y_label and len(series) < 2:
        body.append(f'<text x="{width - PAD_R}" y="14" text-anchor="end" fill="{AXIS}">'
                    f'{_e(y_label)}</text>')
    for t in ticks:
        body.append(f'<line x1="{PAD_L}" x2="{width - PAD_R}" y1="{y(t):.1f}" y2="{y(t):.1f}" '
                    f'stroke="{GRID}"/><text x="{PAD_L - 6}" y="{y(t) + 4:.1f}" '
                    f'text-anchor="end" fill="{AXIS}">{_num(t)}</text>')
    tticks = _time_ticks(t0, t1)
    with_seconds = len(tticks) > 1 and (tticks[1] - tticks[0]) < 60_000_000
    with_date = t1 - t0 > 86_400_000_000
    for t in tticks:
        body.append(f'<line x1="{x(t):.1f}" x2="{x(t):.1f}" y1="{PAD_T + ph}" '
                    f'y2="{PAD_T + ph + 4}" stroke="{AXIS}"/><text x="{x(t):.1f}" '
                    f'y="{height - 8}" text-anchor="{_anchor(x(t), width)}" fill="{AXIS}">'
                    f'{_time_label(t, with_seconds, with_date)}</text>')
    for s in series:
        pts = [(us, v) for us, v in s["points"] if v is not None]
        if s.get("kind") == "bars":
            bw = max(pw * s.get("bar_us", 1) / (t1 - t0) - 0.5, 1.0)
            for us, v in pts:
                if v:
                    body.append(f'<rect x="{x(us):.1f}" y="{y(v):.1f}" width="{bw:.1f}" '
                                f'height="{PAD_T + ph - y(v):.1f}" fill="{s["color"]}">'
                                f'<title>{_e(_time_label(us, True))}Z {_e(s["name"])}: {v:,}'
                                f'</title></rect>')
        elif len(pts) == 1:
            us, v = pts[0]
            body.append(f'<circle cx="{x(us):.1f}" cy="{y(v):.1f}" r="2.5" fill="{s["color"]}"/>')
        elif pts:
            d = " ".join(f"{x(us):.1f},{y(v):.1f}" for us, v in pts)
            body.append(f'<polyline points="{d}" fill="none" stroke="{s["color"]}" '
                        f'stroke-width="1.6" stroke-linejoin="round"/>')
    for v, label, color in hlines:
        body.append(f'<line x1="{PAD_L}" x2="{width - PAD_R}" y1="{y(v):.1f}" y2="{y(v):.1f}" '
                    f'stroke="{color}" stroke-width="1.2" stroke-dasharray="5 3"/>'
                    f'<text x="{width - PAD_R - 2}" y="{y(v) - 3:.1f}" text-anchor="end" '
                    f'fill="{color}" {HALO}>{_e(label)}</text>')
    body.append(f'<line x1="{PAD_L}" x2="{width - PAD_R}" y1="{PAD_T + ph}" y2="{PAD_T + ph}" '
                f'stroke="{AXIS}"/>')
    if len(series) > 1:  # legend at the top right, clear of the plot
        legend_x = width - PAD_R
        for s in reversed(series):
            legend_x -= 20 + 6.2 * len(str(s["name"]))
            body.append(f'<rect x="{legend_x:.1f}" y="8" width="10" height="3" '
                        f'fill="{s["color"]}"/><text x="{legend_x + 13:.1f}" y="13" '
                        f'fill="#333">{_e(s["name"])}</text>')
    return _svg(width, height, title, body)


def graph(nodes: Sequence[tuple[object, str]], links: Sequence[tuple[object, object, float, bool,
                                                                    str]],
          title: str, width: int = 760) -> str:
    """A left-to-right graph: nodes are (id, label); links (from, to, weight,
    red, tooltip), drawn with widths by weight and red where `red`. Nodes are
    placed in columns by their longest path from a node nothing points at,
    so a chain a -> b -> db reads left to right."""
    ids = [n for n, _ in nodes]
    depth = {n: 0 for n in ids}
    for _ in range(len(ids)):           # longest path, bounded: a cycle stops growing here
        moved = False
        for a, b, *_ in links:
            if a != b and depth[b] < depth[a] + 1 and depth[a] + 1 < len(ids):
                depth[b] = depth[a] + 1
                moved = True
        if not moved:
            break
    columns: dict[int, list] = {}
    for n in ids:
        columns.setdefault(depth[n], []).append(n)
    ncol = max(columns) + 1 if columns else 1
    rows = max((len(c) for c in columns.values()), default=1)
    node_w, node_h, gap = 170, 24, 16
    height = PAD_T + 10 + rows * (node_h + gap) + 10
    width = max(width, 40 + ncol * node_w + (ncol - 1) * 90)
    step = (width - 40 - node_w) / max(ncol - 1, 1)
    pos = {}
    for c, members in columns.items():
        for i, n in enumerate(members):
            pos[n] = (20 + c * step, PAD_T + 10 + i * (node_h + gap))
    top = max((w for *_, w, _, _ in links), default=0) or 1
    body = [f'<text x="20" y="14" font-weight="600" fill="#111">{_e(title)}</text>']
    for a, b, w, red, tip in links:
        (ax, ay), (bx, by) = pos[a], pos[b]
        x1, y1 = ax + node_w, ay + node_h / 2
        x2, y2 = bx, by + node_h / 2
        if bx <= ax:                    # backwards (a cycle): around below
            x1, x2 = ax + node_w / 2, bx + node_w / 2
            y1, y2 = ay + node_h, by + node_h
            d = f"M{x1:.1f},{y1:.1f} C{x1:.1f},{y1 + 40:.1f} {x2:.1f},{y2 + 40:.1f} {x2:.1f},{y2:.1f}"
        else:
            mid = (x1 + x2) / 2
            d = f"M{x1:.1f},{y1:.1f} C{mid:.1f},{y1:.1f} {mid:.1f},{y2:.1f} {x2:.1f},{y2:.1f}"
        stroke = 1.5 + 8.5 * math.sqrt(max(w, 0) / top)
        color = "#d62728" if red else "#4e79a7"
        body.append(f'<path d="{d}" fill="none" stroke="{color}" stroke-width="{stroke:.1f}" '
                    f'stroke-opacity="0.75" class="{"edge-red" if red else "edge"}">'
                    f'<title>{_e(tip)}</title></path>')
        body.append(f'<text x="{(x1 + x2) / 2:.1f}" y="{(y1 + y2) / 2 - 4:.1f}" '
                    f'text-anchor="middle" fill="{color}" {HALO}>{_e(_num(round(w, 1)))}/s</text>')
    for n, label in nodes:
        x, y = pos[n]
        short = label if len(label) <= 26 else label[:25] + "…"
        body.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{node_w}" height="{node_h}" rx="4" '
                    f'fill="#f3f4f6" stroke="{AXIS}"/><text x="{x + 6:.1f}" '
                    f'y="{y + 16:.1f}" fill="#111"><title>{_e(label)}</title>{_e(short)}</text>')
    return _svg(int(width), int(height), title, body)
