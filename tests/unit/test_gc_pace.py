"""The tracer's cycle collector pace (tracer/allocator.py configure_gc):
raised because the event path makes no reference cycles, so the youngest
collections only walked live events again and again (BENCHMARKS.md
section 17). Each check runs in a fresh interpreter, as the tracer does."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _python(code: str) -> dict:
    p = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                       text=True, timeout=300, cwd=ROOT, env={"PATH": "/usr/bin:/bin",
                                                               "PYTHONPATH": str(ROOT)})
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.splitlines()[-1])


def test_the_event_path_leaves_no_cycles_for_the_collector(tmp_path):
    """The premise: 40,000 connections through the real decoding, collector,
    interval snapshots and Parquet recording (bench/event_path.py's
    ab-shaped records), with the collector off, leave almost nothing that
    only a collection would free: not one object per event."""
    got = _python(f"""
        import gc, json, os
        from bench import event_path
        pids = [1, os.getpid(), os.getppid()]
        event_path.worker(10, pids, {str(tmp_path)!r})    # imports and first use
        gc.collect()
        gc.disable()
        event_path.worker(400, pids, {str(tmp_path)!r})
        print(json.dumps({{"garbage": gc.collect()}}))
    """)
    assert got["garbage"] < 2000, got        # 40,000 connections, 160,000 records


def test_cycles_are_still_collected_without_being_asked():
    """As the tracer starts (run.keep_out_of_the_tracer): the youngest
    threshold is raised, not turned off; cycles made and dropped are freed
    by the collector on its own, and no more than about a threshold's worth
    wait at any time."""
    got = _python("""
        import gc, json, weakref
        from tracer import allocator, run
        run.keep_out_of_the_tracer()
        thresholds = gc.get_threshold()
        freed = [0]
        waiting_most = 0

        class Node:
            pass

        def gone():
            freed[0] += 1

        made = 0
        for _ in range(6 * allocator.GC_YOUNG_THRESHOLD // 2):
            a, b = Node(), Node()
            a.other, b.other = b, a          # a cycle: reference counts never free it
            weakref.finalize(a, gone)
            made += 1
            del a, b
            waiting_most = max(waiting_most, made - freed[0])
        print(json.dumps({"thresholds": thresholds, "made": made, "freed": freed[0],
                          "waiting_most": waiting_most,
                          "young": allocator.GC_YOUNG_THRESHOLD}))
    """)
    assert got["thresholds"][0] == got["young"] == 50_000, got
    assert got["freed"] > got["made"] // 2, got          # collected, unasked
    # each cycle is two Nodes, their dicts and a finalizer: a threshold's worth
    # of allocations is fewer than a threshold of cycles
    assert got["waiting_most"] <= got["young"], got


def test_a_collector_turned_off_or_set_higher_is_left_alone():
    got = _python("""
        import gc, json
        from tracer import allocator
        gc.set_threshold(0)
        off = allocator.configure_gc()
        gc.set_threshold(200_000, 5, 5)
        higher = allocator.configure_gc()
        gc.set_threshold(700, 10, 10)
        default = allocator.configure_gc()
        print(json.dumps({"off": off, "higher": higher, "default": default}))
    """)
    assert got["off"][0] == 0, got
    assert got["higher"] == [200_000, 5, 5], got
    assert got["default"] == [50_000, 10, 10], got
