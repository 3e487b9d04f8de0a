"""Where a connscope command's memory goes: run it with a sampling thread
that writes, every second, VmHWM, RssAnon, RssFile and Arrow's allocated
bytes, the writer's buffered rows per table and the open-connection table's
size; and, whenever VmHWM rises, every other thread's innermost frames (what
was running when the peak grew).

    sudo .venv/bin/python -m bench.memory_trace OUT.log record --out DIR

Diagnosis only: the sampler takes the GIL every 10 ms and moves the figures
a little. BENCHMARKS.md section 16 was found with it."""
from __future__ import annotations

import sys
import threading
import time


def _status() -> dict:
    with open("/proc/self/status") as f:
        return {line.split(":")[0]: int(line.split()[1]) >> 10 for line in f
                if line.startswith(("VmHWM", "RssAnon", "RssFile"))}


def _frames(me: int) -> str:
    out = []
    for tid, fr in sys._current_frames().items():
        if tid == me:
            continue
        names = []
        while fr is not None and len(names) < 5:
            names.append(f"{fr.f_code.co_name}:{fr.f_lineno}")
            fr = fr.f_back
        out.append(" < ".join(names))
    return " || ".join(out)


def main() -> None:
    out, argv = sys.argv[1], sys.argv[2:]
    from tracer import lifetimes
    from tracer.sinks import parquet_writer

    refs: dict = {}

    def keep(cls, name):
        init = cls.__init__

        def wrapped(self, *a, **k):
            init(self, *a, **k)
            refs[name] = self
        cls.__init__ = wrapped

    keep(parquet_writer.Recording, "recording")
    keep(lifetimes.OpenConnections, "open")

    def sample():
        me = threading.get_ident()
        t0 = last_second = time.monotonic()
        hwm = 0
        with open(out, "w") as f:
            while True:
                time.sleep(0.01)
                st = _status()
                now = time.monotonic()
                if st["VmHWM"] > hwm + 1:
                    hwm = st["VmHWM"]
                    f.write(f"{now - t0:7.2f}s peak {hwm} MB | {_frames(me)}\n")
                if now - last_second >= 1.0:
                    last_second = now
                    pa = sys.modules.get("pyarrow")
                    rec, op = refs.get("recording"), refs.get("open")
                    buffered = ({t: w.buffered_rows for t, w in rec._writers.items()
                                 if w.buffered_rows} if rec else {})
                    f.write(f"{now - t0:7.2f}s {st} arrow "
                            f"{pa.total_allocated_bytes() >> 20 if pa else '-'} MB buffered "
                            f"{buffered} open {len(op) if op else '-'}\n")
                f.flush()

    threading.Thread(target=sample, daemon=True).start()
    from tracer.cli import main as connscope_main
    connscope_main(argv)


if __name__ == "__main__":
    main()
