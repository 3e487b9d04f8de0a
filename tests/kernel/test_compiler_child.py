"""The BPF compiler child cannot be hijacked through root's current directory
or PYTHON* variables.

uid 65534 plants, in a directory it owns, a `tracer` package whose
compiler.py (and `bcc`, `json`, `struct`, `ctypes`, `sitecustomize`, a
PYTHONSTARTUP file) would write a marker file when imported. Root then starts
connscope with that directory as its current directory and/or on PYTHONPATH,
with an empty program cache so the compiler child really runs, and the
program is loaded into the kernel. The marker must never appear, and the
compile and load must succeed.

The tracer process itself is started with -I, as its console script is
(its sys.path holds the script's directory, never the current one): this test
is about what the child inherits.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) not installed"),
]

NOBODY = 65534

SCRIPT = textwrap.dedent("""
    import json, os, sys
    from tracer.filters import Filters
    from tracer.probes import startup
    s = startup.start(os.environ.get("CONNSCOPE_TEST_BACKEND", "auto"), Filters())
    try:
        print(json.dumps(dict(from_cache=s.from_cache, backend=s.info.backend,
                              tracer=sys.modules["tracer"].__file__)))
    finally:
        s.close()
""")


def as_nobody(*argv: str) -> None:
    subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *argv],
                   check=True, cwd="/", timeout=30)


@pytest.fixture
def trap():
    """(directory uid 65534 owns and filled with hostile modules, marker path)."""
    d = Path(tempfile.mkdtemp(prefix="connscope-trap-", dir="/tmp"))
    os.chmod(d, 0o755)
    hostile = d / "hostile"
    hostile.mkdir()
    os.chown(hostile, NOBODY, NOBODY)
    marker = hostile / "MARKER"
    payload = (f"import os\nopen({str(marker)!r}, 'a').write(__name__ + ' ran as uid %d\\n' % os.getuid())\n")
    files = {
        "tracer/__init__.py": payload,
        "tracer/probes/__init__.py": payload,
        "tracer/probes/compiler.py": payload + "raise SystemExit(0)\n",
        "bcc/__init__.py": payload,
        "json.py": payload,
        "struct.py": payload,
        "ctypes/__init__.py": payload,
        "sitecustomize.py": payload,
        "usercustomize.py": payload,
        "startup.py": payload,
    }
    script = "import os, sys\nfor name, text in %r.items():\n" \
             "    p = os.path.join(sys.argv[1], name)\n" \
             "    os.makedirs(os.path.dirname(p), exist_ok=True)\n" \
             "    open(p, 'w').write(text)\n" % files
    as_nobody("/usr/bin/python3", "-c", script, str(hostile))
    assert (hostile / "tracer" / "probes" / "compiler.py").stat().st_uid == NOBODY
    yield hostile, marker
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("via", ["cwd", "PYTHONPATH", "both"])
def test_planted_modules_never_run_in_the_compiler_child(trap, tmp_path, via):
    hostile, marker = trap
    env = dict(os.environ, CONNSCOPE_PROGRAM_CACHE=str(tmp_path / "programs"))  # empty: a compile
    if via in ("PYTHONPATH", "both"):
        env.update(PYTHONPATH=str(hostile), PYTHONSTARTUP=str(hostile / "startup.py"),
                   PYTHONINSPECT="", PYTHONUSERBASE=str(hostile))
    cwd = str(hostile) if via in ("cwd", "both") else "/"
    p = subprocess.run([sys.executable, "-I", "-c", SCRIPT], capture_output=True, text=True, env=env,
                       cwd=cwd, timeout=600)
    assert not marker.exists(), f"planted code ran as root: {marker.read_text()}"
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads(p.stdout.strip().splitlines()[-1])
    assert r["from_cache"] is False, "the program came from a cache: the compiler child did not run"
    assert not r["tracer"].startswith(str(hostile))
    assert len(os.listdir(tmp_path / "programs")) == 1   # compiled, stored, loaded
    assert not marker.exists()


def test_the_child_command_is_isolated():
    """What the test above relies on, stated: -I, the package by file path,
    cwd /, and nothing of the caller's environment but what bcc needs."""
    from tracer.probes import program

    cmd = program.child_command()
    assert cmd[:3] == [sys.executable, "-I", "-c"]
    assert cmd[4] == str(Path(program.__file__).resolve().parents[1] / "__init__.py")
    env = program.child_environment({"BCC_KERNEL_SOURCE": "/var/cache/connscope/kernel-tree/x"})
    assert env == {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C", "LC_ALL": "C",
                   "BCC_KERNEL_SOURCE": "/var/cache/connscope/kernel-tree/x"}
