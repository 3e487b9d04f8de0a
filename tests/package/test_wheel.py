"""connscope as a package that installs like any other: a wheel built from
this checkout, installed into a fresh venv on the system interpreter (with
the distribution's bcc, as pipx --system-site-packages does) and run from a
directory that is not the checkout, with no test extras installed.

Ground truth: the recording the real Parquet sink wrote (tests/tui/recorded.py)
and what `report` and `replay` give from it in the checkout's own venv.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.tui import recorded

ROOT = Path(__file__).resolve().parents[2]
SYSTEM_PYTHON = "/usr/bin/python3"

pytestmark = pytest.mark.slow


def _run(cmd, **kw):
    kw.setdefault("timeout", 600)
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert proc.returncode == 0, f"{cmd}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
          "--disable-pip-version-check", "-w", str(out), str(ROOT)])
    (whl,) = out.glob("connscope-*.whl")
    return whl


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """A fresh venv with the wheel and its declared dependencies only."""
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        pytest.skip(f"{SYSTEM_PYTHON} is missing: the package is for the system interpreter "
                    "(bcc's bindings exist only there)")
    venv = tmp_path_factory.mktemp("venv") / "v"
    _run([SYSTEM_PYTHON, "-m", "venv", "--system-site-packages", str(venv)])
    _run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
          "--disable-pip-version-check", str(wheel)])
    return venv


def test_the_wheel_holds_every_file_the_package_reads(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for src in sorted((ROOT / "bpf").iterdir()):
        assert f"tracer/bpf/{src.name}" in names, f"{src.name} is not in the wheel"
    assert "tracer/tui/app.tcss" in names
    # one copy: the package's bpf/ is the top-level bpf/, not a second tree
    assert (ROOT / "tracer" / "bpf").resolve() == (ROOT / "bpf").resolve()


def test_installed_package_finds_its_sources_outside_the_checkout(installed, tmp_path):
    code = ("import tracer, tracer.events as e; "
            "from tracer.probes.program import source_text, MAIN_SOURCE; "
            "print(tracer.__file__); print(e.EVENT_HEADER.read_text()[:0] or 'ok'); "
            "print(len(source_text(MAIN_SOURCE)))")
    out = _run([str(installed / "bin" / "python"), "-c", code], cwd=tmp_path,
               env={"PATH": "/usr/bin:/bin"}).stdout.split()
    assert out[0].startswith(str(installed)), f"imported {out[0]}, not the installed package"
    assert out[1] == "ok" and int(out[2]) > 1000


def test_report_from_the_installed_package_equals_the_checkouts(installed, tmp_path):
    rec = recorded.write_recording(tmp_path / "rec")
    theirs = _run([str(installed / "bin" / "connscope"), "report", str(rec)], cwd=tmp_path)
    ours = _run([sys.executable, "-m", "tracer", "report", str(rec)], cwd=ROOT)
    assert theirs.stdout == ours.stdout
    assert recorded.HOST in theirs.stdout
    html = tmp_path / "r.html"
    _run([str(installed / "bin" / "connscope"), "report", str(rec), "--html", str(html)],
         cwd=tmp_path)
    assert html.read_text().lstrip().lower().startswith("<!doctype html")


REPLAY_HEADLESS = r"""
import asyncio, json, sys
from tracer.replay import ReplayController, load
from tracer.tui.app import build_app

timeline = load(sys.argv[1])
app = build_app(timeline.header, replay=ReplayController(timeline))

async def main():
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        await pilot.press("w")          # jump to the worst moment
        await pilot.pause()
        await pilot.press("q")
    print(json.dumps({"intervals": len(timeline)}))

asyncio.run(main())
"""


def test_replay_runs_from_the_installed_package_without_test_extras(installed, tmp_path):
    rec = recorded.write_recording(tmp_path / "rec")
    py = str(installed / "bin" / "python")
    # what a test extra would bring must not be there: this is the user's install
    missing = _run([py, "-c", "import importlib.util as u; "
                    "print([m for m in ('pytest', 'pandas', 'polars', 'duckdb') if u.find_spec(m)])"],
                   cwd=tmp_path).stdout.strip()
    assert missing == "[]", f"the user's venv has test extras: {missing}"
    out = _run([py, "-c", REPLAY_HEADLESS, str(rec)], cwd=tmp_path).stdout
    assert json.loads(out.strip().splitlines()[-1]) == {"intervals": recorded.INTERVALS}


def test_doctor_runs_from_the_installed_package(installed, tmp_path):
    proc = subprocess.run([str(installed / "bin" / "connscope"), "doctor", "--json"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "backend" in json.loads(proc.stdout)


def test_the_installed_package_serves_metrics(installed, tmp_path):
    """--metrics needs prometheus_client: a declared dependency, installed with
    the wheel (Debian's python3-prometheus-client is not what is imported)."""
    code = ("import urllib.request, prometheus_client as p; "
            "from tracer.sinks.metrics_endpoint import MetricsSink; "
            "s = MetricsSink('127.0.0.1', 0); "
            "u = f'http://127.0.0.1:{s.address[1]}/metrics'; "
            "print(p.__file__); print(urllib.request.urlopen(u, timeout=10).read().count(b'\\nconnscope_')); "
            "s.close()")
    out = _run([str(installed / "bin" / "python"), "-c", code], cwd=tmp_path,
               env={"PATH": "/usr/bin:/bin"}).stdout.split()
    assert out[0].startswith(str(installed)), f"imported {out[0]}, not the venv's"
    assert int(out[1]) >= 5   # the tracer's own totals, there before any event


def test_recover_runs_from_the_installed_package(installed, tmp_path):
    """`connscope recover` on a recorder killed with SIGKILL, from the user's
    install: every journaled row ends up in Parquet the wheel's pyarrow reads."""
    from tests.unit.test_recording_readable import killed_recording

    rec = tmp_path / "rec"
    journaled = killed_recording(rec)
    out = _run([str(installed / "bin" / "connscope"), "recover", str(rec)], cwd=tmp_path).stdout
    assert f"{journaled} rows recovered" in out, out
    count = _run([str(installed / "bin" / "python"), "-c",
                  "import sys, pyarrow.dataset as ds; "
                  "print(ds.dataset(sys.argv[1], format='parquet').count_rows())",
                  str(rec / "connects")], cwd=tmp_path).stdout
    assert int(count) == journaled


def test_pipx_install_gives_a_connscope_that_reports(tmp_path):
    """The README's other way in: `pipx install --system-site-packages ./`,
    in a pipx home of its own, run outside the checkout."""
    pipx = shutil.which("pipx")
    if pipx is None:
        pytest.skip("pipx is not installed (./run test installs the Debian package pipx)")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
           "PIPX_HOME": str(tmp_path / "pipx"), "PIPX_BIN_DIR": str(tmp_path / "bin")}
    _run([pipx, "install", "--system-site-packages", str(ROOT)], cwd=tmp_path, env=env)
    connscope = str(tmp_path / "bin" / "connscope")
    rec = recorded.write_recording(tmp_path / "rec")
    theirs = _run([connscope, "report", str(rec)], cwd=tmp_path, env=env)
    ours = _run([sys.executable, "-m", "tracer", "report", str(rec)], cwd=ROOT)
    assert theirs.stdout == ours.stdout
    doctor = subprocess.run([connscope, "doctor", "--json"], capture_output=True, text=True,
                            cwd=tmp_path, env=env, timeout=120)
    assert doctor.returncode == 0, doctor.stderr
    assert "backend" in json.loads(doctor.stdout)
