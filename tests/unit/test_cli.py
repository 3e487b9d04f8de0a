"""The command line: bad input gives one 'Error:' line and a non-zero exit,
never a traceback. These run the real console script in a subprocess, as the
user would."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CONNSCOPE = [sys.executable, "-m", "tracer"]
ROOT = Path(__file__).resolve().parents[2]


def run(*args, user=None, timeout=60):
    argv = [*CONNSCOPE, *args]
    if user is not None and os.geteuid() == 0:
        # Drop to an unprivileged user; when the suite itself runs unprivileged
        # there is nothing to drop.
        argv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *argv]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                       stdin=subprocess.DEVNULL)
    return p.returncode, p.stdout, p.stderr


def assert_one_line_error(code, err, fragment):
    assert code != 0
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    error_lines = [line for line in lines if line.startswith("Error:")]
    assert len(error_lines) == 1, err
    assert fragment in error_lines[0], err


def test_help_short_and_long():
    for flag in ("-h", "--help"):
        code, out, _ = run(flag)
        assert code == 0
        for command in ("top", "record", "doctor"):
            assert command in out


def test_every_command_has_examples():
    for command in ("top", "record", "doctor"):
        code, out, _ = run(command, "-h")
        assert code == 0 and "Examples:" in out, command


def test_unknown_backend():
    code, _, err = run("record", "--out", "/tmp/x", "--backend", "magic")
    assert_one_line_error(code, err, "'magic' is not one of")


def test_negative_duration():
    code, _, err = run("record", "--out", "/tmp/x", "--duration", "-1")
    assert_one_line_error(code, err, "--duration")


def test_bad_port():
    code, _, err = run("top", "--port", "70000")
    assert_one_line_error(code, err, "--port")


def test_ipv4_and_ipv6_together():
    code, _, err = run("top", "-4", "-6")
    assert_one_line_error(code, err, "-4 and -6")


def test_record_needs_out():
    code, _, err = run("record")
    assert_one_line_error(code, err, "--out")


def test_unknown_command():
    code, _, err = run("frobnicate")
    assert_one_line_error(code, err, "frobnicate")


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) not installed")
def test_not_root(tmp_path):
    tmp_path.chmod(0o777)
    code, _, err = run("record", "--out", str(tmp_path / "rec"), "--duration", "1", user=65534)
    assert_one_line_error(code, err, "root")


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) not installed")
def test_doctor_without_root_says_so():
    code, out, err = run("doctor", user=65534)
    assert code == 0, err
    assert "not root" in out


def test_doctor_json_is_json():
    import json

    code, out, err = run("doctor", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert "backend" in report or "auto" in json.dumps(report)


def run_to(stdout, stderr, *args, timeout=120):
    p = subprocess.run([*CONNSCOPE, *args], stdout=stdout, stderr=stderr, timeout=timeout,
                       cwd=ROOT, stdin=subprocess.DEVNULL)
    return p.returncode


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full on this host")
@pytest.mark.parametrize("command", ["doctor", "report"])
def test_standard_output_on_a_full_device_is_one_error_line(command, tmp_path):
    """`> file` on a full disk (here /dev/full, which refuses every write
    with ENOSPC): one Error line naming standard output, exit 1; not
    "internal error", and no second complaint from the interpreter's own
    flush at exit ("Exception ignored ...")."""
    args = [command]
    if command == "report":
        from tests.report.hostile import write_base
        write_base(tmp_path / "rec")
        args.append(str(tmp_path / "rec"))
    err = tmp_path / "stderr"
    with open("/dev/full", "w") as full, open(err, "w") as e:
        code = run_to(full, e, *args)
    text = err.read_text()
    assert code == 1, text
    assert "Traceback" not in text and "Exception ignored" not in text, text
    assert [line for line in text.splitlines() if line.startswith("Error")] == [
        "Error: cannot write to standard output: " + os.strerror(28)], text


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full on this host")
def test_a_full_standard_error_does_not_stop_a_command(tmp_path):
    """stderr on a full disk (`2>>log`): what would have gone there is lost,
    the command's own output and exit are as without it (the same holds for
    `record`'s start line and status lines: tests/kernel/test_record_cli.py)."""
    from tests.report.hostile import write_base
    write_base(tmp_path / "rec")
    out = tmp_path / "stdout"
    with open(out, "w") as o, open("/dev/full", "w") as full:
        code = run_to(o, full, "report", str(tmp_path / "rec"))
    assert code == 0
    assert out.read_text().startswith("connscope report: "), out.read_text()[:200]
    # and a real error still exits non-zero when it cannot even be printed
    with open(out, "w") as o, open("/dev/full", "w") as full:
        assert run_to(o, full, "report", str(tmp_path / "absent")) == 1
