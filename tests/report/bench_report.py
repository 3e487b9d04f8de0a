"""How long `connscope report` takes on a big recording (not a test: run it by hand).

    .venv/bin/python -m tests.report.bench_report [ROWS] [DIR]

Writes ROWS synthetic connects (default 1,000,000; 200 destinations, 50
processes, one hour) through the real writer into DIR (default a temporary
directory), then times reading, summarizing and rendering, and the whole
command as a user runs it.
"""
from __future__ import annotations

import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.report.synthetic import write_connects
from tracer.report.html import render_html
from tracer.report.reader import read_recording
from tracer.report.summary import summarize
from tracer.report.text import render_text


def main() -> None:
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(sys.argv[2]) if len(sys.argv) > 2 else Path(tmp) / "rec"
        if not d.exists():
            t = time.perf_counter()
            write_connects(d, rows)
            print(f"wrote {rows:,} connects in {time.perf_counter() - t:.1f} s")
        size = sum(p.stat().st_size for p in d.rglob("*.parquet"))
        t0 = time.perf_counter()
        data = read_recording(d)
        t1 = time.perf_counter()
        s = summarize(data)
        t2 = time.perf_counter()
        render_text(s, str(d))
        t3 = time.perf_counter()
        page = render_html(s, str(d))
        t4 = time.perf_counter()
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"{data.tables['connects'].num_rows:,} rows in {data.files_read} files "
              f"({size / 1e6:.1f} MB): read {t1 - t0:.2f} s, summarize {t2 - t1:.2f} s, "
              f"text {t3 - t2:.3f} s, html {t4 - t3:.3f} s ({len(page) / 1e3:.0f} kB); "
              f"peak RSS {rss:.0f} MB")
        html = Path(tmp) / "r.html"
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "tracer", "report", str(d), "--html", str(html)],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        print(f"connscope report DIR --html FILE: {time.perf_counter() - t:.2f} s wall")


if __name__ == "__main__":
    main()
