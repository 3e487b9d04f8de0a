"""The compiled event path (tracer/_fastpath.c), when this install has it.

The ring buffer's records are walked, decoded and their closes joined in C:
about four Python calls a connection fewer (BENCHMARKS.md section 18). The
same module scans a process's fd table for its sockets (half the CPU of the
Python loop) and parses sock_diag's socket messages (BENCHMARKS.md section
19; tracer/probes/procfs.py and sock_diag.py use them), holds the
histograms' add() of a float (tracer/aggregate/histogram.py) and sums a
poll's events per key of the live tables (tracer/aggregate/tally.py). It is
built from the package's sources when a C compiler and Python's headers are
there (`./run` installs them), and the pure-Python path, which stays the
reference, is used when it is not: same events, same tallies
(tests/unit/test_fastpath.py). `connscope doctor` says which one runs.

CONNSCOPE_PURE_PYTHON=1 turns it off (benchmarks and debugging).
"""
from __future__ import annotations

import dataclasses
import os

from tracer import events, lifetimes
from tracer.domain import outcomes

# what doctor says to do about the pure-Python path
TO_COMPILE = ("it costs about 1.3 times the CPU per connection: install a C compiler and "
              "Python's headers (Debian: gcc python3-dev) and reinstall connscope")
ABI_VERSION = 8   # tracer/_fastpath.c ABI_VERSION: a stale build is not used


def _load():
    if os.environ.get("CONNSCOPE_PURE_PYTHON") == "1":
        return None, "pure Python (CONNSCOPE_PURE_PYTHON=1)"
    try:
        from tracer import _fastpath as native
    except ImportError as e:
        return None, f"pure Python (tracer._fastpath not importable: {e})"
    if getattr(native, "ABI_VERSION", None) != ABI_VERSION:
        return None, ("pure Python (the compiled path is from another version of connscope: "
                      "reinstall to rebuild it)")
    sizes = native.sizes()
    wanted = {"connect_event": events._CONNECT.size, "accept_event": events._ACCEPT.size,
              "close_event": events.CLOSE_SIZE}
    if sizes != wanted:
        return None, f"pure Python (compiled record sizes {sizes} differ from {wanted})"
    # the C code takes outcome code OUTCOME_ESTABLISHED as "established"
    if [c for c, name in events.OUTCOMES.items() if name == outcomes.ESTABLISHED] != [
            events.C["OUTCOME_ESTABLISHED"]]:
        return None, "pure Python (outcome codes differ from the compiled path's)"
    configure(native)
    return native, "compiled (tracer/_fastpath.c)"


def configure(native) -> None:
    """Hand the compiled path tracer/events.py's classes, caches and slow
    paths, and tracer/lifetimes.py's bounds as they are now (tests lower them)."""
    native.configure(events.Connect, events.Accept, events._ADDR_BY_RAW, events._addr_by_raw,
                     events._COMM_CACHE, events.comm_text, events.OUTCOMES, outcomes.ERROR,
                     lifetimes._EARLY_MAX, lifetimes.MAX_OPEN,
                     # the order the compiled decoders hand the values in, as the
                     # classes take them (events.decode_connect_at)
                     tuple(f.name for f in dataclasses.fields(events.Connect)),
                     tuple(f.name for f in dataclasses.fields(events.Accept)))


native, STATUS = _load()
