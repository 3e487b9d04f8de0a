"""Every numeric option refuses nan, infinity and values out of its range with
a usage error: exit 2 and one `Error:` line naming the option, never a
traceback, never "internal error", and before anything runs (these would
need root if they got that far).

In process with click's CliRunner through the same `cli` group the console
script runs; test_cli.py runs the real script in a subprocess."""
from __future__ import annotations

import pytest
from click.testing import CliRunner

from tracer.cli import SIZE_MAX, Size, cli

BAD_FOR_ALL = ("nan", "inf", "-inf", "-1", "0", "1e400", "NaN", "-0", "")
OUT_OF_RANGE = {
    "--interval": ("0.09", "3601", "1e-400", "infinity"),
    "--duration": ("1e12", "-1e-9", "1e308"),
    "--pid": ("4194305", "99999999999999999999", "1.5", "0x10"),
    "--port": ("65536", "1e3", "-65535"),
    "--max-size": ("1e-400", "0.5", "2000000T", "1e400G", "nanG", "infM", "-2G", "0.9B"),
    "--max-rows": ("1.5", "1e6", "1099511627777"),
}
COMMANDS = {
    "top": ("--interval", "--duration", "--pid", "--port", "--max-size"),
    "record": ("--interval", "--duration", "--pid", "--port", "--max-size"),
    "report": ("--max-rows",),
}


def cases():
    for command, options in COMMANDS.items():
        for option in options:
            for value in BAD_FOR_ALL + OUT_OF_RANGE[option]:
                yield command, option, value


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=True)


@pytest.mark.parametrize("command,option,value", list(cases()))
def test_bad_number_is_a_usage_error(command, option, value):
    extra = {"record": ["--out", "/nonexistent/never-created"],
             "report": ["/nonexistent/never-read"]}.get(command, [])
    r = invoke(command, *extra, option, value)
    text = r.output     # stdout and stderr, as a terminal shows them
    assert r.exit_code == 2, (r.exit_code, text, r.exception)
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert "Traceback" not in text and "internal error" not in text
    errors = [line for line in text.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, text
    assert f"'{option}'" in errors[0], errors[0]


@pytest.mark.parametrize("value,expected", [
    ("1", 1), ("500M", 500 << 20), ("2G", 2 << 30), ("1.5T", int(1.5 * (1 << 40))),
    ("2GiB", 2 << 30), ("2gb", 2 << 30), ("1024K", 1 << 20), (f"{SIZE_MAX}", SIZE_MAX)])
def test_good_sizes_convert(value, expected):
    assert Size().convert(value, None, None) == expected


@pytest.mark.parametrize("value", ["1.5", "0.1", "60", "3600"])
def test_good_interval_reaches_the_command(value, monkeypatch):
    """A valid interval is passed on as a finite float (the command itself is stubbed:
    `top` would need root and a terminal)."""
    seen = {}
    import tracer.run

    monkeypatch.setattr(tracer.run, "live", lambda **kw: seen.update(kw))
    r = invoke("top", "--plain", "--interval", value, "--duration", "1e6", "--pid", "1")
    assert r.exit_code == 0, r.output
    assert seen["interval"] == float(value) and seen["duration"] == 1e6
    assert seen["filters"] is not None


def test_pid_no_process_can_have_is_an_error_and_one_that_may_appear_a_warning(monkeypatch):
    """--pid at or over kernel.pid_max: nothing could ever match, a usage error.
    --pid of no process now: accepted (a process started later may get it)
    with a warning line on stderr; a pid that exists: silent."""
    import os

    import tracer.run
    from tracer.filters import read_pid_max

    import inspect

    seen = {}
    monkeypatch.setattr(tracer.run, "live", lambda **kw: seen.update(kw))
    pid_max = read_pid_max()
    # click < 8.2 (Python 3.9) mixes stderr into output unless told not to
    separate = ({"mix_stderr": False} if "mix_stderr" in inspect.signature(CliRunner).parameters
                else {})
    r = CliRunner(**separate).invoke(cli, ["top", "--plain", "--pid", str(pid_max)])
    assert r.exit_code == 2 and not seen
    assert f"Error: --pid {pid_max}: no process can have it (kernel.pid_max is {pid_max})" \
        in r.stderr
    free = next(p for p in range(pid_max - 1, 1, -1) if not os.path.exists(f"/proc/{p}"))
    r = CliRunner(**separate).invoke(cli, ["top", "--plain", "--pid", str(free)])
    assert r.exit_code == 0, r.stderr
    assert r.stderr == (f"connscope: warning: --pid {free}: no such process now; it is traced "
                        f"if it appears (pids are reused)\n")
    assert seen["filters"].pids == {free}
    r = CliRunner(**separate).invoke(cli, ["top", "--plain", "--pid", str(os.getpid())])
    assert r.exit_code == 0 and r.stderr == ""
