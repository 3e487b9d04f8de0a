"""`connscope` with stages of the event path switched off, for
bench/stage_cost.py: CONNSCOPE_STAGES_OFF is a comma-separated list of

  rows     RecordSink.on_events does nothing (no event rows, Arrow or Parquet)
  tables   the listener, edge and process tables are not fed events
  sockets  the collector reads no socket table (sock_diag, /proc fd scan)

    sudo CONNSCOPE_STAGES_OFF=rows .venv/bin/python -m bench.stage_off record --out DIR

A benchmark's tool only: nothing of it is in the tracer package."""
from __future__ import annotations

import os
import sys


def switch_off(stages: set[str]) -> None:
    unknown = stages - {"rows", "tables", "sockets"}
    if unknown:
        raise SystemExit(f"Error: unknown stage {', '.join(sorted(unknown))}")
    if "rows" in stages:
        from tracer.sinks import recorder
        recorder.RecordSink.on_events = lambda self, events: None
    if "tables" in stages:
        from tracer.aggregate import edges, listeners, sockets
        edges.EdgeTable.add = lambda self, ev: None
        edges.EdgeTable.add_accept = lambda self, ev: None
        listeners.ListenerTable.add_accept = lambda self, ev: None
        sockets.ProcessTable.opened = lambda self, *a, **k: None
    if "sockets" in stages:
        from tracer import collector
        init = collector.Collector.__init__

        def no_socket_table(self, *a, **k):
            init(self, *a, **k)
            self.kernel_view = collector.no_kernel_view
        collector.Collector.__init__ = no_socket_table


def main() -> None:
    switch_off({s for s in os.environ.get("CONNSCOPE_STAGES_OFF", "").split(",") if s})
    from tracer.cli import main as connscope_main
    connscope_main(sys.argv[1:])


if __name__ == "__main__":
    main()
