"""The click commands. Parsing and error reporting only: the work is done
by tracer.run (live and recording), tracer.doctor, and the sinks."""
from __future__ import annotations

import errno
import math
import os
import sys

import click

from tracer import __version__
from tracer.report import MAX_REPORT_ROWS

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
BACKENDS = ("auto", "kprobe", "fentry", "tracepoint")
PID_MAX = 1 << 22           # PID_MAX_LIMIT on 64-bit Linux: no pid is larger
DURATION_MAX_S = 10 * 365 * 86400.0     # longer is a typo; sleep() and timers overflow on inf
SIZE_MAX = 1 << 60          # bytes; 1e400 or inf would overflow int(), nan has no int at all


class Seconds(click.FloatRange):
    """A FloatRange that also refuses nan and inf: every comparison with nan is
    false, so click's own range check lets it through to the collector."""

    def convert(self, value, param, ctx):
        number = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number of seconds", param, ctx)
        return super().convert(number, param, ctx)


def tracing_options(f):
    """Options shared by `top` and `record` (SPEC)."""
    decorators = [
        click.option("--backend", type=click.Choice(BACKENDS), default="auto", show_default=True,
                     help="How to hook the kernel; auto picks the best that works here."),
        click.option("--interval", type=Seconds(min=0.1, max=3600), default=1.0,
                     show_default=True, metavar="SECONDS",
                     help="Period of snapshots and aggregates."),
        click.option("--pid", "pids", type=click.IntRange(min=1, max=PID_MAX), multiple=True,
                     help="Only this process (repeatable)."),
        click.option("--comm", help="Only processes with this name (as in ps -o comm)."),
        click.option("--port", "ports", type=click.IntRange(1, 65535), multiple=True,
                     help="Only connections with this local or remote port (repeatable)."),
        click.option("-4", "ipv4", is_flag=True, help="IPv4 only."),
        click.option("-6", "ipv6", is_flag=True, help="IPv6 only."),
        click.option("--cgroup", "cgroup_paths", multiple=True, metavar="PATH",
                     help="Only processes in this cgroup v2 or below it: a directory under "
                          "the v2 mount, or a path as /proc/PID/cgroup shows it (repeatable)."),
        click.option("--container", "container_ids", multiple=True, metavar="ID",
                     help="Only processes in this container: 12 or more digits of its id "
                          "(repeatable)."),
    ]
    for d in reversed(decorators):
        f = d(f)
    return f


class Size(click.ParamType):
    """A byte count: 500M, 2G, 1.5T or a plain number of bytes."""

    name = "size"
    UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}

    def convert(self, value, param, ctx):
        if isinstance(value, int) and not isinstance(value, bool):
            if not 1 <= value <= SIZE_MAX:
                self.fail(f"{value!r}: a size must be between 1 byte and {SIZE_MAX >> 40}T",
                          param, ctx)
            return value
        text = str(value).strip().upper().removesuffix("B").removesuffix("I")
        unit = text[-1:] if text[-1:] in self.UNITS else ""
        try:
            n = float(text[: len(text) - len(unit)])
        except ValueError:
            self.fail(f"{value!r} is not a size (examples: 500M, 2G)", param, ctx)
        if not math.isfinite(n):
            self.fail(f"{value!r} is not a size (examples: 500M, 2G)", param, ctx)
        if n <= 0:
            self.fail(f"{value!r}: a size must be positive", param, ctx)
        n *= self.UNITS[unit]
        if n < 1 or n > SIZE_MAX:
            self.fail(f"{value!r}: a size must be between 1 byte and {SIZE_MAX >> 40}T",
                      param, ctx)
        return int(n)


def _directory_path(ctx, param, value):
    """An empty DIR would mean 'here' to the file system: refused, never guessed."""
    if value == "":
        raise click.BadParameter("must be a directory path, not empty", ctx, param)
    return value


def _metrics_address(ctx, param, value):
    from tracer.sinks.metrics_address import MetricsError, parse_address

    if value is None:
        return None
    try:
        return parse_address(value)
    except MetricsError as e:
        raise click.BadParameter(str(e), ctx, param)


def metrics_options(f):
    """--metrics and its caps (README: Metrics)."""
    decorators = [
        click.option("--metrics", "metrics_address", metavar="HOST:PORT",
                     callback=_metrics_address,
                     help="Serve Prometheus/OpenMetrics metrics at http://HOST:PORT/metrics "
                          "(e.g. 127.0.0.1:9464; 0.0.0.0:9464 listens on every interface)."),
        click.option("--metrics-top-processes", type=click.IntRange(1, 1000), default=20,
                     show_default=True, metavar="N",
                     help="Processes with labels of their own; the rest are 'other'."),
        click.option("--metrics-top-destinations", type=click.IntRange(1, 1000), default=10,
                     show_default=True, metavar="N",
                     help="Destinations per process with labels of their own; the rest are "
                          "'other'."),
        click.option("--metrics-top-listeners", type=click.IntRange(1, 1000), default=50,
                     show_default=True, metavar="N",
                     help="Listeners with labels of their own; the rest are 'other'."),
    ]
    for d in reversed(decorators):
        f = d(f)
    return f


def _metrics(opts: dict):
    """Takes the --metrics options out of `opts`: (host, port, Caps) or None."""
    address = opts.pop("metrics_address")
    caps = {k: opts.pop(f"metrics_top_{k}") for k in ("processes", "destinations", "listeners")}
    if address is None:
        return None
    from tracer.sinks.metrics_state import Caps

    return (*address, Caps(**caps))


def recording_options(f):
    return click.option(
        "--max-size", type=Size(), metavar="SIZE",
        help="Keep the recording under SIZE (e.g. 2G): the oldest finished files are deleted "
             "first. For long unattended runs.")(f)


class Group(click.Group):
    """`connscope` with no subcommand is `connscope top`."""

    def parse_args(self, ctx, args):
        if not args or (args[0].startswith("-") and args[0] not in ("-h", "--help", "--version",
                                                                     "--debug")):
            args = ["top", *args]
        elif args == ["--debug"]:
            args = ["--debug", "top"]
        return super().parse_args(ctx, args)


@click.group(cls=Group, context_settings=CONTEXT)
@click.version_option(__version__, prog_name="connscope")
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.pass_context
def cli(ctx, debug):
    """connscope: see TCP connection trouble as it happens.

    \b
    Examples:
      sudo connscope                       live view (same as 'connscope top')
      sudo connscope record --out /var/tmp/rec --duration 300
      connscope doctor                     what this host supports, and advice
    """
    ctx.obj = {"debug": debug}


def _options(backend, interval, pids, comm, ports, ipv4, ipv6, cgroup_paths=(),
             container_ids=(), **extra):
    import os

    from tracer.filters import Filters, FilterError, check_pids, read_pid_max

    try:
        filters = Filters.build(pids=pids, comm=comm, ports=ports, ipv4=ipv4, ipv6=ipv6)
    except FilterError as e:
        raise click.UsageError(str(e))
    if cgroup_paths or container_ids:
        from dataclasses import replace

        from tracer.probes import cgroup_filter

        try:     # the host's cgroups, not the command line, are wrong: Error: and exit 1
            targets = cgroup_filter.resolve(cgroup_paths, container_ids)
            filters = replace(filters, cgroups=Filters.build(cgroups=targets).cgroups)
        except FilterError as e:
            raise click.ClickException(str(e))
    errors, warnings = check_pids(filters.pids, read_pid_max(),
                                  lambda p: os.path.exists(f"/proc/{p}"))
    if errors:
        raise click.UsageError("; ".join(errors))
    for w in warnings:
        click.echo(f"connscope: warning: {w}", err=True)
    return {"backend": backend, "interval": interval, "filters": filters, **extra}


@cli.command(context_settings=CONTEXT)
@tracing_options
@click.option("--record", "record_dir", type=click.Path(file_okay=False), metavar="DIR",
              callback=_directory_path, help="Also write Parquet to DIR, as 'record' does.")
@recording_options
@metrics_options
@click.option("--plain", is_flag=True, help="Print plain periodic tables instead of the TUI.")
@click.option("--duration", type=Seconds(min=0, min_open=True, max=DURATION_MAX_S),
              metavar="SECONDS",
              help="Stop after this long.")
def top(record_dir, max_size, plain, duration, **opts):
    """Live view of connects, listeners and sockets.

    \b
    Examples:
      sudo connscope top
      sudo connscope top --port 5432 --record /var/tmp/incident
      sudo connscope top --plain | tee trace.txt
      sudo connscope top --plain --metrics 127.0.0.1:9464 > /dev/null
    """
    from tracer import run

    metrics = _metrics(opts)
    run.live(**_options(**opts), record_dir=record_dir, plain=plain, duration=duration,
             max_bytes=max_size, metrics=metrics)


@cli.command(context_settings=CONTEXT)
@click.argument("directory", type=click.Path(readable=False), metavar="DIR")
@click.option("--host", metavar="NAME",
              help="Only this host's runs (DIR holds several hosts' recordings).")
def replay(directory, host):
    """Replay a recording in the live view: play, pause, step, faster, slower,
    jump to the worst moment (press ? in the view for every key).

    \b
    Examples:
      connscope replay /var/tmp/rec
      connscope replay /srv/fleet --host web-1
    """
    from tracer import replay as replay_recording

    replay_recording.run(directory, host)


@cli.command(context_settings=CONTEXT)
@tracing_options
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True, metavar="DIR",
              callback=_directory_path,
              help="Recording directory (created if missing). It must belong to root or to "
                   "you (the sudo user) and not be writable by others.")
@click.option("--duration", type=Seconds(min=0, min_open=True, max=DURATION_MAX_S),
              metavar="SECONDS",
              help="Stop after this long (default: until SIGINT/SIGTERM).")
@recording_options
@metrics_options
def record(out_dir, duration, max_size, **opts):
    """Record to Parquet without a screen.

    A status line goes to stderr every few seconds; SIGINT or SIGTERM stop the
    recording with every file finalized.

    \b
    Examples:
      sudo connscope record --out /var/tmp/rec --duration 60
      sudo connscope record --out /var/tmp/rec --metrics 127.0.0.1:9464
      duckdb -c "select * from read_parquet('/var/tmp/rec/connects/**/*.parquet', hive_partitioning=true)"
    """
    from tracer import run

    metrics = _metrics(opts)
    run.record(**_options(**opts), out_dir=out_dir, duration=duration, max_bytes=max_size,
               metrics=metrics)


@cli.command(context_settings=CONTEXT)
@tracing_options
@metrics_options
@click.option("--duration", type=Seconds(min=0, min_open=True, max=DURATION_MAX_S),
              metavar="SECONDS",
              help="Stop after this long (default: until SIGINT/SIGTERM).")
def serve(duration, **opts):
    """Serve Prometheus/OpenMetrics metrics, with no screen and no recording
    (--metrics is required). The scraper's side: README, section Metrics.

    \b
    Examples:
      sudo connscope serve --metrics 127.0.0.1:9464
      curl -s http://127.0.0.1:9464/metrics | grep connscope_listen_overflows
    """
    from tracer import run

    metrics = _metrics(opts)
    if metrics is None:
        raise click.UsageError("serve needs --metrics HOST:PORT (e.g. --metrics 127.0.0.1:9464)")
    run.serve(**_options(**opts), duration=duration, metrics=metrics)


@cli.command(context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def doctor(as_json):
    """What this host supports, which backend 'auto' picks, and advice.

    \b
    Examples:
      connscope doctor
      sudo connscope doctor --json | jq .backend
    """
    import json

    from tracer import doctor as doc

    report = doc.collect()
    if as_json:
        click.echo(json.dumps(report, indent=2, sort_keys=True, default=str))
    else:
        click.echo(doc.render_text(report), nl=False)


@cli.command(context_settings=CONTEXT)
@click.argument("directory", type=click.Path(readable=False), metavar="DIR")
@click.option("--html", "html_path", type=click.Path(dir_okay=False),
              metavar="FILE", help="Also write one self-contained HTML file with charts.")
@click.option("--max-rows", type=click.IntRange(min=1, max=1 << 40), default=MAX_REPORT_ROWS,
              show_default=True, metavar="N",
              help="Read at most N rows (all tables; each distinct destination, listener or "
                   "process counts as 8): files beyond are skipped and listed. Memory is "
                   "about 400 MB per million rows.")
def report(directory, html_path, max_rows):
    """Postmortem summary of a recording: what to look at first, slow and failing
    destinations, listeners that dropped connections, processes, pool advice.

    DIR may hold several hosts and runs (e.g. a fleet's recordings copied into
    one directory); unreadable files are skipped and listed.

    \b
    Examples:
      connscope report /var/tmp/rec
      connscope report /var/tmp/rec --html incident.html
    """
    from tracer.report.command import report as run_report

    run_report(directory, html_path, max_rows)


@cli.command(context_settings=CONTEXT)
@click.argument("directory", type=click.Path(), metavar="DIR", callback=_directory_path)
def recover(directory):
    """Finalize what a recorder killed with kill -9 (an OOM kill, a host crash)
    left in DIR, so that DuckDB, pyarrow or pandas read every row it journaled.
    'report' and 'replay' do this by themselves. Needs the owner of DIR (root,
    or the user who ran sudo); refused while a recorder is writing to DIR.

    \b
    Examples:
      sudo connscope recover /var/tmp/rec
      duckdb -c "select count(*) from read_parquet('/var/tmp/rec/connects/**/*.parquet')"
    """
    from tracer.sinks.recover_command import recover_directory

    for line in recover_directory(directory):
        click.echo(line)


def _print_traceback() -> None:
    """The current exception's traceback on stderr, each line escaped: its
    messages may quote names other users chose (with ESC sequences)."""
    import traceback

    from tracer.safe_text import printable

    for line in traceback.format_exc().splitlines():
        sys.stderr.write(printable(line) + "\n")


def main(argv=None):
    """Entry point: domain errors become one 'Error:' line and exit 1."""
    from tracer.errors import USER_ERRORS
    from tracer.safe_text import printable_message

    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    if sys.stdout is not None and not isinstance(sys.stdout, _WatchedStream):
        sys.stdout = _WatchedStream(sys.stdout)
    if sys.stderr is not None and not isinstance(sys.stderr, _WatchedStream):
        sys.stderr = _WatchedStream(sys.stderr, keep_going=True)
    try:
        cli.main(args=argv, prog_name="connscope", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except USER_ERRORS as e:
        if debug:
            _print_traceback()
            sys.exit(1)
        # messages quote file names, hosts and process names others chose
        click.echo(f"Error: {printable_message(e)}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    except OSError as e:
        # (EPIPE, the reader gone as in `| head`, is click's: a quiet exit)
        if not debug and _stdout_refuses(e):
            # a full disk or a failing device behind `> file`: no traceback,
            # and nothing left for Python to fail on again at exit
            click.echo(f"Error: cannot write to standard output: {os.strerror(e.errno)}",
                       err=True)
            _drop_stdout()
            sys.exit(1)
        _internal_error(e, debug)
    except Exception as e:  # a bug: still one line unless --debug
        _internal_error(e, debug)


class _WatchedStream:
    """sys.stdout or sys.stderr as it was, remembering the error a write or
    flush of it raised, so that the CLI boundary tells standard output's own
    failure (a full disk behind `> file`, /dev/full) from any other OSError.

    A stderr that takes no more text (`2>>log` on a full disk) has its
    failure remembered and nothing else: the progress and status lines are
    lost, but `record` goes on recording and every command exits as it
    would have (a broken pipe, the reader gone, is still raised)."""

    def __init__(self, stream, keep_going: bool = False):
        self._stream = stream
        self._keep_going = keep_going
        self.failed: OSError | None = None

    def _failed(self, e: OSError):
        self.failed = e
        if not self._keep_going or e.errno == errno.EPIPE:
            raise e

    def write(self, text):
        try:
            return self._stream.write(text)
        except OSError as e:
            self._failed(e)
            return len(text)

    def flush(self):
        try:
            return self._stream.flush()
        except OSError as e:
            self._failed(e)

    def __getattr__(self, name):
        return getattr(self._stream, name)


def _stdout_refuses(e: OSError) -> bool:
    """Whether e is what writing standard output raised (_WatchedStream)."""
    watched = sys.stdout
    return isinstance(watched, _WatchedStream) and watched.failed is e and e.errno is not None


def _drop_stdout() -> None:
    """Point fd 1 at /dev/null, so the interpreter's flush at exit has
    nowhere to fail and prints no 'Exception ignored' after our Error line."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())
        os.close(null)
    except (OSError, ValueError):
        pass


def _internal_error(e: Exception, debug: bool) -> None:
    from tracer.safe_text import printable_message

    if debug:
        _print_traceback()
        sys.exit(2)
    click.echo(f"Error: internal error: {type(e).__name__}: {printable_message(e)} "
               f"(run with --debug for details)", err=True)
    sys.exit(2)
