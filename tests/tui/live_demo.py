"""Run the live TUI on synthetic snapshots, posted from a thread the way the
collector will: `python -m tests.tui.live_demo [--big] [--period S]`. For
looking at the screen by hand (tmux); the tests drive the same app with Pilot."""
from __future__ import annotations

import argparse
import threading

from tests.tui import synthetic
from tracer.tui.app import build_app


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--big", action="store_true", help="10,000 destinations, 2,000 processes")
    ap.add_argument("--period", type=float, default=1.0)
    args = ap.parse_args()
    extra = {"extra_destinations": 10_000, "extra_processes": 2_000} if args.big else {}
    snapshots = synthetic.scenario(intervals=40 if not args.big else 3, **extra)
    app = build_app(synthetic.HEADER)
    stop = threading.Event()

    def feed():
        for snap in snapshots:
            if stop.wait(args.period):
                return
            app.post_snapshot(snap)

    threading.Thread(target=feed, daemon=True).start()
    try:
        app.run()
    finally:
        stop.set()


if __name__ == "__main__":
    main()
