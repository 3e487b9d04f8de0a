"""Diagnostic tracer: connscope's BPF programs and event decoding, and
nothing after them (no aggregation, no Parquet, no screen). Run beside
`connscope record` it splits the overhead into what the kernel side and
decoding cost and what the rest of the pipeline adds.

    sudo .venv/bin/python -m bench.probe_only [--skip]   # SIGINT/SIGTERM: counts as JSON

With --skip it reads the ring buffer on the same clock but decodes nothing
(each record is passed over): what is left is the programs' cost in the
kernel, which runs in the traced processes' context.
"""
from __future__ import annotations

import json
import signal
import sys
from collections import Counter

from tracer.events import Accept, Connect
from tracer.filters import Filters
from tracer.probes import startup


def main() -> None:
    import argparse

    p = argparse.ArgumentParser()
    p.add_argument("--skip", action="store_true", help="read records without decoding them")
    skip = p.parse_args().skip
    stop = {"now": False}

    def handler(signum, frame):
        stop["now"] = True

    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, handler)
    session = startup.start("auto", Filters.build())
    sys.stderr.write(f"probe_only: ready ({session.info.backend})\n")
    sys.stderr.flush()
    connects, accepts = Counter(), Counter()
    try:
        while not stop["now"]:
            if skip:
                session.skip_pending(100)
                continue
            for ev in session.poll(100):
                if isinstance(ev, Connect):
                    connects[ev.dport] += 1
                elif isinstance(ev, Accept):
                    accepts[ev.lport] += 1
        for ev in session.poll(0):
            if isinstance(ev, Connect):
                connects[ev.dport] += 1
            elif isinstance(ev, Accept):
                accepts[ev.lport] += 1
        c = session.counters()
    finally:
        session.close()
    ports = {str(p): {"connects": connects[p], "accepts": accepts[p]}
             for p in set(connects) | set(accepts)}
    print(json.dumps({"lost": sum(c.values()), "counters": c, "ports": ports}))


if __name__ == "__main__":
    main()
