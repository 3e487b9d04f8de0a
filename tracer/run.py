"""Wiring for `top` and `record`: probes -> collector -> sinks.

SIGINT and SIGTERM only set a flag; the collector sees it within one poll
(100 ms) and leaves through its single exit path, which finalizes every sink.
"""
from __future__ import annotations

import os
import signal
import socket
import sys
import time
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone

from tracer import __version__, allocator
from tracer.clock import Clock
from tracer.aggregate.snapshot import Header
from tracer.domain.hooks import hooks_kind
from tracer.blind_spots import blind_spots
from tracer.collector import Collector
from tracer.filters import Filters
from tracer.probes import startup
from tracer.safe_text import printable
from tracer.sinks.console import ConsoleSink, StatusLineSink
from tracer.sinks.recorder import RecordSink


@contextmanager
def stop_on_signals():
    flag = {"stop": False}

    def handler(signum, frame):
        flag["stop"] = True

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield lambda: flag["stop"]
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def new_run_id(start: float) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(start)) + "-" + uuid.uuid4().hex[:8]


def _open_recording(out_dir: str, backend: str, options: dict, start: float,
                    max_bytes: int | None = None):
    from tracer.sinks.parquet_writer import Recording

    host = socket.gethostname()
    run_id = new_run_id(start)
    recording = Recording(out_dir, host=host, run_id=run_id, backend=backend,
                          version=__version__, options=options, background_flush=True,
                          max_bytes=max_bytes, start=datetime.fromtimestamp(start, timezone.utc))
    for line in recording.recovered:   # what a crashed run left, finalized or quarantined
        # the names in these lines were found in DIR: recovery shows them through
        # safe_text.printable, so a name cannot drive root's terminal
        sys.stderr.write(f"connscope: {line}\n")
    return recording


# pyarrow imports pandas and numpy whenever they are installed (the test
# extras install both) to check whether an argument is one of theirs: 50 MB of
# RSS and 0.1 s in a process that never hands it either. The tracer's own
# process blocks them; `report` and `replay` run in processes of their own.
# Likewise pyarrow's cloud file systems, which pyarrow.parquet imports when it
# can (libarrow_s3, OpenSSL: ~3 MB of RSS) and a recording to a local
# directory never uses.
NOT_IN_THE_TRACER = ("pandas", "numpy", "pyarrow._s3fs", "pyarrow._gcsfs", "pyarrow._azurefs",
                     "pyarrow._hdfs")


class _Refuse:
    """A meta path finder under which importing these modules fails as if
    they were not installed (pyarrow then keeps to its own code paths)."""

    def __init__(self, modules):
        self.modules = frozenset(modules)

    def find_spec(self, name, path=None, target=None):
        if name in self.modules or name.split(".", 1)[0] in self.modules:
            raise ModuleNotFoundError(f"{name} is kept out of the tracer process", name=name)
        return None


def keep_out_of_the_tracer(modules=NOT_IN_THE_TRACER) -> None:
    wanted = [m for m in modules if m not in sys.modules]
    if wanted and not any(isinstance(f, _Refuse) for f in sys.meta_path):
        sys.meta_path.insert(0, _Refuse(wanted))
    allocator.configure()    # Arrow's pool, malloc's threshold: tracer/allocator.py
    allocator.configure_gc()  # the cycle collector's pace (same module)


def _start(backend: str, filters: Filters, out_dir: str | None, options: dict, start: float,
           max_bytes: int | None):
    """Load the probes and open the recording in `out_dir` (if any): (session, recording).

    A bad `out_dir` fails before the probes load, which is slow. The recording
    itself (pyarrow: ~0.1 s to import) is opened once the probes are attached,
    while the kernel buffers the first events; unless a crashed run left files
    to recover, which can take a while, so that is done first. A run whose
    probes fail to load is still on record, as abandoned.
    """
    keep_out_of_the_tracer()
    # without root nothing can be traced: fail before DIR, a lock or a manifest is made
    startup.require_root()
    recording = None
    if out_dir is not None:
        from tracer.sinks.parquet_writer import check_directory

        if check_directory(out_dir):
            recording = _open_recording(out_dir, backend, options, start, max_bytes)
    try:
        session = startup.start(backend, filters)
    except BaseException:
        if out_dir is not None:
            if recording is None:
                try:
                    recording = _open_recording(out_dir, backend, options, start, max_bytes)
                except Exception:   # the failure to start is the error that matters
                    pass
            if recording is not None:
                recording.abandon("tracer failed to start")
        raise
    for why in session.info.passed_over:     # `auto` fell back: say so before anything else
        sys.stderr.write(f"connscope: {printable(why)}; running {session.info.backend} "
                         "instead\n")
    if out_dir is not None and recording is None:
        try:
            recording = _open_recording(out_dir, backend, options, start, max_bytes)
        except BaseException:
            session.close()
            raise
    return session, recording


def _options_dict(backend, interval, filters: Filters, **extra) -> dict:
    return {"backend": backend, "interval": interval, "filters": filters.as_dict(), **extra}


def header_for(session, recording_path=None, source="live",
               filters: Filters | None = None, notes: tuple = ()) -> Header:
    spots = blind_spots(session.info.backend, getattr(session.info, "drop_split", None))
    passed_over = tuple(session.info.passed_over)
    return Header(host=socket.gethostname(), kernel=os.uname().release,
                  backend=session.info.backend,
                  hooks=hooks_kind(session.info.tracepoint_hooks),
                  blind_spots=spots + tuple(session.info.notes) + tuple(
                      f"not running {why}" for why in passed_over) + tuple(notes),
                  passed_over=tuple(why.split(":", 1)[0] for why in passed_over),
                  recording_path=recording_path, source=source,
                  filters=filters.describe() if filters is not None and filters.active else "")


def make_collector(session, sinks, interval, clock, recording_path=None,
                   recording_status=None, filters: Filters | None = None,
                   containers=None) -> Collector:
    return Collector(session, sinks, interval, containers=containers,
                     header=header_for(session, recording_path, filters=filters,
                                       notes=container_notes(containers)),
                     clock=clock, recording_status=recording_status,
                     kernel_view=kernel_view(),
                     drop_points_hooked=session.info.backend in ("kprobe", "fentry"),
                     filters=filters, host_view=host_view())


def host_view():
    """Host-wide TCP memory and its limits, read once per interval."""
    from tracer.probes import tcp_memory

    return tcp_memory.read


def kernel_view():
    """The kernel's socket table joined with /proc, read once per interval:
    listeners (queues, sk_drops, owners), what every process holds, and when
    that scan was taken (a reused scan is not a new sample)."""
    from tracer.aggregate.sockets import tally
    from tracer.probes.socket_table import SocketTable

    table = SocketTable()

    def read():
        listeners, sockets, snap, _ = table.read()
        owners = {s.inode: (snap.holders[s.inode][0],
                            snap.comm_by_pid.get(snap.holders[s.inode][0], "?"))
                  for _, s in listeners if s.inode in snap.holders}
        holdings = tally([s for _, s in listeners + sockets], snap.holders, snap.comm_by_pid,
                         snap.fds_by_pid, snap.nofile_by_pid, process_memory(snap),
                         snap.mem_total)
        return listeners, owners, holdings, snap.taken_at

    return read


def process_memory(snap) -> dict[int, tuple]:
    """pid -> (resident bytes, its memory cgroup's use, that cgroup's limit)
    from one /proc scan (tracer.probes.procfs.ProcSnapshot)."""
    out = {}
    for pid, rss in snap.rss_by_pid.items():
        cg = snap.cgroups.get(snap.cgroup_by_pid.get(pid))
        out[pid] = (rss, cg.used if cg else None, cg.limit if cg else None)
    return out


def _recording_args(recording) -> dict:
    if recording is None:
        return {}
    return {"recording_path": str(recording.directory), "recording_status": recording.status}


NO_CONTAINERS_ENV = "CONNSCOPE_NO_CONTAINERS"   # 1: no container attribution (what it costs)


def container_cache():
    """pid -> cgroup, container and pod, shared by the collector and the sinks;
    None with CONNSCOPE_NO_CONTAINERS=1 (the container columns stay null:
    the benchmark's measure of what attribution costs)."""
    from tracer.probes.cgroups import ContainerCache

    if os.environ.get(NO_CONTAINERS_ENV) == "1":
        return None
    return ContainerCache()


def container_notes(containers) -> tuple:
    """What the container cache has to say (e.g. a pods directory others can
    write); nothing when attribution is off."""
    return tuple(containers.notes) if containers is not None else ()


def _collect(session, sinks, interval, duration, clock, recording=None, filters=None,
             containers=None):
    collector = make_collector(session, sinks, interval, clock, **_recording_args(recording),
                               filters=filters, containers=containers)
    with stop_on_signals() as should_stop:
        try:
            return collector.run(should_stop, duration)
        finally:
            session.close()


def _serve_metrics(metrics):
    """The --metrics endpoint, listening before the probes load (a port in
    use fails fast): a sink, or None."""
    if metrics is None:
        return None
    from tracer.sinks.metrics_endpoint import MetricsSink

    host, port, caps = metrics
    return MetricsSink(host, port, caps)


@contextmanager
def _closed_on_failure(sink):
    try:
        yield
    except BaseException:
        if sink is not None:
            sink.close()
        raise


def record(*, backend: str, interval: float, filters: Filters, out_dir: str,
           duration: float | None, max_bytes: int | None = None, metrics=None) -> None:
    start = time.time()
    metrics_sink = _serve_metrics(metrics)
    with _closed_on_failure(metrics_sink):
        session, recording = _start(
            backend, filters, out_dir, _options_dict(backend, interval, filters,
                                                     duration=duration, max_bytes=max_bytes),
            start, max_bytes)
    recording.set_backend(session.info.backend, session.info.tracepoint_hooks)
    clock = Clock()
    sys.stderr.write(f"connscope: recording to {printable(out_dir)} (run {recording.run_id}, "
                     f"backend {session.info.backend}, {session.info.offsets_from}); "
                     f"Ctrl-C stops\n")
    containers = container_cache()
    for note in container_notes(containers):   # e.g. a pods directory others can write
        sys.stderr.write(f"connscope: {printable(note)}\n")
    sinks = [RecordSink(recording, clock, containers),
             StatusLineSink(recording_status=recording.status)]
    if metrics_sink is not None:
        metrics_sink.set_containers(containers)
        sinks.append(metrics_sink)
    _collect(session, sinks, interval, duration, clock, recording, filters, containers)


def serve(*, backend: str, interval: float, filters: Filters, duration: float | None,
          metrics) -> None:
    """Headless, nothing written: the --metrics endpoint alone."""
    start = time.time()
    metrics_sink = _serve_metrics(metrics)
    with _closed_on_failure(metrics_sink):
        session, _ = _start(backend, filters, None, {}, start, None)
    host, port = metrics_sink.address[:2]
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    sys.stderr.write(f"connscope: serving metrics at http://{printable(where)}/metrics "
                     f"(backend {session.info.backend}); Ctrl-C stops\n")
    # container labels; --cgroup/--container pick listeners and processes by owner's container
    containers = container_cache()
    metrics_sink.set_containers(containers)
    _collect(session, [metrics_sink], interval, duration, Clock(), None, filters, containers)


class TuiSink:
    """Hands each snapshot to the TUI; never waits for it."""

    def __init__(self, app):
        self.app = app

    def on_events(self, events) -> None:
        pass

    def on_interval(self, status, snapshot) -> None:
        self.app.post_snapshot(snapshot)

    def close(self, status, snapshot) -> None:
        self.app.post_snapshot(snapshot)


def _exit_app(app) -> None:
    try:
        app.call_from_thread(app.exit)
    except RuntimeError:   # already gone
        pass


def _run_tui(session, sinks, interval, duration, clock, recording, filters=None,
             containers=None) -> None:
    """The collector in a worker thread, the TUI in this one. Whatever ends
    first (q, SIGTERM, --duration, an error in collection) ends both, and the
    terminal is restored by Textual on the way out."""
    import threading

    from tracer.tui.app import build_app

    app = build_app(header_for(session, str(recording.directory) if recording else None,
                               filters=filters, notes=container_notes(containers)))
    stop = threading.Event()
    failure: list[BaseException] = []
    collector = make_collector(session, [TuiSink(app), *sinks], interval, clock,
                               **_recording_args(recording), filters=filters,
                               containers=containers)

    def collect():
        try:
            collector.run(stop.is_set, duration)
        except BaseException as e:   # reported after the terminal is back
            failure.append(e)
        finally:
            session.close()
            if not stop.is_set():
                _exit_app(app)

    def on_signal(signum, frame):
        stop.set()
        app.exit()   # signal handlers run in the main thread, the app's own

    worker = threading.Thread(target=collect, name="collector", daemon=True)
    old = signal.signal(signal.SIGTERM, on_signal)
    worker.start()
    try:
        app.run()
    finally:
        stop.set()
        signal.signal(signal.SIGTERM, old)
        worker.join(15)
    if failure:
        raise failure[0]
    if app.failure is not None:     # the display failed; Textual has restored the terminal
        raise app.failure


def live(*, backend: str, interval: float, filters: Filters, record_dir: str | None,
         plain: bool, duration: float | None, max_bytes: int | None = None,
         metrics=None) -> None:
    start = time.time()
    metrics_sink = _serve_metrics(metrics)
    with _closed_on_failure(metrics_sink):
        session, recording = _start(
            backend, filters, record_dir or None,
            _options_dict(backend, interval, filters, command="top"), start, max_bytes)
    clock = Clock()
    sinks = [metrics_sink] if metrics_sink is not None else []
    containers = container_cache()
    if metrics_sink is not None:
        metrics_sink.set_containers(containers)
    if recording is not None:
        recording.set_backend(session.info.backend, session.info.tracepoint_hooks)
        sinks.append(RecordSink(recording, clock, containers))
    # Not a terminal (| tee, ssh without a pty, scripts) or asked for: plain tables.
    if plain or not (sys.stdout.isatty() and sys.stdin.isatty()):
        for note in container_notes(containers):
            sys.stderr.write(f"connscope: {printable(note)}\n")
        sinks.insert(0, ConsoleSink(title=f"[{session.info.backend}] "))
        _collect(session, sinks, interval, duration, clock, recording, filters, containers)
    else:
        _run_tui(session, sinks, interval, duration, clock, recording, filters, containers)
