"""The TUI gives the terminal back as it found it: run `connscope replay DIR`
in a real terminal (tmux), press q, and compare the terminal's modes (tty
settings, alternate screen, cursor, mouse reporting, keypad) before and after."""
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.tui import recorded

ROOT = Path(__file__).resolve().parents[2]
MODES = "#{alternate_on} #{cursor_flag} #{mouse_any_flag} #{mouse_button_flag} " \
        "#{mouse_standard_flag} #{mouse_sgr_flag} #{keypad_flag} #{keypad_cursor_flag}"

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None,
                                reason="needs tmux to run the TUI in a real terminal")


def tmux(*args) -> str:
    return subprocess.run(["tmux", *args], capture_output=True, text=True, check=True,
                          timeout=10).stdout


def wait_for(session: str, predicate, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    screen = ""
    while time.monotonic() < deadline:
        screen = tmux("capture-pane", "-p", "-t", session)
        if predicate(screen):
            return screen
        time.sleep(0.2)
    raise AssertionError(f"timed out; the screen was:\n{screen}")


@pytest.mark.parametrize("quit_key", ["q", "C-c"])
def test_terminal_is_restored_on_exit(tmp_path, quit_key):
    rec = recorded.write_recording(tmp_path / "rec")
    session = f"connscope-test-{uuid.uuid4().hex[:8]}"
    before, after = tmp_path / "stty-before", tmp_path / "stty-after"
    tmux("new-session", "-d", "-s", session, "-x", "120", "-y", "40",
         "env", "PS1=READY$ ", "TERM=xterm-256color", "bash", "--norc", "--noprofile")
    try:
        wait_for(session, lambda s: "READY$" in s)
        modes_before = tmux("display", "-p", "-t", session, MODES).split()
        tmux("send-keys", "-t", session,
             f"cd {ROOT} && stty -g > {before} && clear && {sys.executable} -m tracer replay {rec}"
             f"; echo EXIT=$?", "Enter")
        wait_for(session, lambda s: "REPLAY" in s and "interval 1/20" in s)
        assert tmux("display", "-p", "-t", session, "#{alternate_on}").strip() == "1"
        tmux("send-keys", "-t", session, quit_key)
        screen = wait_for(session, lambda s: "EXIT=" in s)
        assert "EXIT=0" in screen or (quit_key == "C-c" and "EXIT=" in screen), screen
        assert "Traceback" not in screen
        tmux("send-keys", "-t", session, f"stty -g > {after}", "Enter")
        deadline = time.monotonic() + 10
        while not (after.exists() and after.read_text()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert after.read_text() == before.read_text()          # tty modes (echo, icanon...)
        assert tmux("display", "-p", "-t", session, MODES).split() == modes_before
        screen = wait_for(session, lambda s: s.rstrip().endswith("READY$"))
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
