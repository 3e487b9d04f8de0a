"""Key-to-repaint time of the TUI with a large snapshot (10,000 destinations,
2,000 processes).

For each key: note the time, press it with Pilot, let the app settle, and take
the time of the last frame the compositor handed to the display after the
press (App._display is wrapped to timestamp frames). "settled" is the time
until Pilot.pause() returned, which adds Pilot's own idle detection; a key
with no binding ("x") shows that floor.

    .venv/bin/python -m tests.tui.measure_latency [--presses N]
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from tests.tui import synthetic
from tracer.tui.app import build_app

KEYS = [
    ("x", "unbound key (floor)"),
    ("j", "cursor down (Overview)"),
    ("2", "switch to Connects (10k rows -> 300 shown)"),
    ("j", "cursor down (Connects: panel, sparkline, histogram)"),
    ("s", "cycle sort (Connects, 10k rows)"),
    ("g", "by destination / by process"),
    ("4", "switch to Processes (2k rows)"),
    ("s", "cycle sort (Processes)"),
    ("5", "switch to Log"),
    ("1", "switch to Overview"),
]


async def measure(presses: int) -> list[tuple[str, float, float, float]]:
    snap = synthetic.last(intervals=3, extra_destinations=10_000, extra_processes=2_000)
    app = build_app(synthetic.HEADER)
    frames: list[float] = []
    display = app._display

    def timed_display(screen, renderable):
        if renderable is not None:
            frames.append(time.perf_counter())
        return display(screen, renderable)

    app._display = timed_display
    out = []

    async def timed(action) -> tuple[float, float]:
        frames.clear()
        t0 = time.perf_counter()
        await action()
        await pilot.pause()
        settled = time.perf_counter()
        last_frame = frames[-1] if frames else settled
        return (last_frame - t0) * 1000, (settled - t0) * 1000

    async with app.run_test(size=(140, 45)) as pilot:
        app.post_snapshot(snap)
        await pilot.pause()
        for key, what in KEYS:
            repaint, settle = [], []
            for _ in range(presses):
                if key in "1245":
                    # go elsewhere first (untimed), so every timed press really switches
                    await pilot.press("3")
                    await pilot.pause()
                before = app.repaints
                frame_ms, settled_ms = await timed(lambda: pilot.press(key))
                repaint.append(frame_ms)
                settle.append(settled_ms)
                assert key in "xj" or app.repaints > before, (key, what)
            out.append((f"{key!r} {what}", statistics.median(repaint), max(repaint),
                        statistics.median(settle)))
        # a new snapshot arriving from the collector thread, Connects visible
        await pilot.press("2")
        await pilot.pause()
        repaint, settle = [], []
        for _ in range(presses):
            frame_ms, settled_ms = await timed(lambda: asyncio.to_thread(app.post_snapshot, snap))
            repaint.append(frame_ms)
            settle.append(settled_ms)
        out.append(("new snapshot posted from a thread (Connects)", statistics.median(repaint),
                    max(repaint), statistics.median(settle)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--presses", type=int, default=10)
    args = ap.parse_args()
    t0 = time.perf_counter()
    results = asyncio.run(measure(args.presses))
    print(f"{'key':<58} {'repaint ms':>10} {'max':>6} {'settled ms':>10}")
    for name, med, worst, settled in results:
        print(f"{name:<58} {med:>10.1f} {worst:>6.1f} {settled:>10.1f}")
    print(f"(total {time.perf_counter() - t0:.1f} s, {args.presses} presses each)")


if __name__ == "__main__":
    main()
