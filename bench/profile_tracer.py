"""Where connscope's own CPU goes: run a connscope command under cProfile
with a CPU-time clock (wall time would count the waits in epoll), write the
stats, and print the top functions when it stops (SIGINT/SIGTERM or --duration).

    sudo .venv/bin/python -m bench.profile_tracer OUT.prof record --out DIR
    .venv/bin/python -c "import pstats; pstats.Stats('OUT.prof').sort_stats('tottime').print_stats(30)"

The clock is process CPU time, so work done by other threads (the Parquet
flusher) is charged to whatever the main thread was running at that moment:
read totals per module, not per line.
"""
from __future__ import annotations

import cProfile
import io
import pstats
import sys
import time


def main() -> None:
    out, argv = sys.argv[1], sys.argv[2:]
    from tracer.cli import main as connscope_main

    prof = cProfile.Profile(time.process_time)
    prof.enable()
    try:
        connscope_main(argv)
    except SystemExit:
        pass
    finally:
        prof.disable()
        prof.dump_stats(out)
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(25)
        sys.stderr.write(s.getvalue())


if __name__ == "__main__":
    main()
