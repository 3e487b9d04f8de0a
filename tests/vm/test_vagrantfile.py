"""vagrant/Vagrantfile parses and defines the three distribution machines.

`vagrant validate` runs offline; it catches Ruby and config errors, not box
or provider problems (those need a real hypervisor)."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

VAGRANT_DIR = Path(__file__).resolve().parents[2] / "vagrant"


@pytest.mark.skipif(shutil.which("vagrant") is None,
                    reason="vagrant is not installed (apt-get install vagrant): Vagrantfile not validated")
def test_vagrantfile_validates(tmp_path):
    env = dict(os.environ, VAGRANT_CWD=str(VAGRANT_DIR),
               # Keep vagrant's state out of the source tree and $HOME.
               VAGRANT_DOTFILE_PATH=str(tmp_path / "dotfile"), VAGRANT_HOME=str(tmp_path / "home"),
               VAGRANT_CHECKPOINT_DISABLE="1")
    proc = subprocess.run(["vagrant", "validate", "--ignore-provider"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "validated successfully" in proc.stdout
    for machine in ("jammy", "noble", "bookworm"):
        assert f"==> {machine}:" in proc.stdout
