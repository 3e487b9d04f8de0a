"""tracer.safe_text: names other users choose are shown, never obeyed."""
from tracer.safe_text import faithful_text, printable, printable_name


def test_terminal_controls_are_shown_escaped():
    hostile = "\x1bc\x1b]0;pwned\x1b\\"      # reset screen, set window title (15 bytes)
    shown = printable(hostile)
    assert "\x1b" not in shown
    assert shown == "\\ec\\e]0;pwned\\e\\\\"


def test_newlines_cannot_forge_log_lines():
    assert printable("a\nb\rc\td") == "a\\nb\\rc\\td"
    assert "\n" not in printable("x\u2028y\u2029z\x85")


def test_c1_and_bidi_controls_are_escaped():
    assert printable("a\x9b31mb") == "a\\x9b31mb"
    assert printable("evil\u202etxt.exe") == "evil\\u202etxt.exe"
    assert printable("\u2066x\u2069") == "\\u2066x\\u2069"


def test_plain_and_unicode_names_are_unchanged():
    for name in ("nginx", "postgres: wal", "[kworker/0:1]", "ключ", "服务器", "[red]x"):
        assert printable(name) == name


def test_backslash_is_unambiguous():
    # a name that is literally backslash-e is not shown like an ESC byte
    assert printable("\\e") != printable("\x1b")


def test_none_and_cached_names():
    assert printable(None) == ""
    assert printable_name("a\x1bb") == "a\\eb"
    assert printable_name(None) == ""


def test_faithful_text_keeps_every_byte():
    assert faithful_text(b"nginx") == "nginx"
    assert faithful_text(b"caf\xc3\xa9") == "caf\u00e9"
    assert faithful_text(b"a\xffb") == "a\\xffb"
    assert faithful_text(b"a\xfeb") != faithful_text(b"a\xffb")
    assert faithful_text(b"\x1b[2J") == "\x1b[2J"     # kept; only display escapes it
    assert printable(faithful_text(b"\x1b\xff")) == "\\e\\\\xff"


def test_procfs_comm_is_the_name_a_real_process_gave_itself(tmp_path):
    """A child renames itself with prctl(PR_SET_NAME) to bytes that are not
    UTF-8 and hold ESC, markup and a newline; /proc gives it back faithfully."""
    import subprocess
    import sys

    from tracer.probes import procfs

    name = b"\xff\x1b]0;x\x07[/x]\na\n"     # 15 bytes, ending in a newline of its own
    child = subprocess.Popen(
        [sys.executable, "-c",
         "import ctypes, sys; libc = ctypes.CDLL(None);"
         f"libc.prctl(15, {name!r}, 0, 0, 0); print('ok', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert child.stdout.readline() == b"ok\n"
        assert procfs.comm(child.pid) == "\\xff\x1b]0;x\x07[/x]\na\n"
    finally:
        child.stdin.close()
        child.wait(10)


def test_fast_path_changes_nothing_the_full_escape_would_change():
    """printable() returns a text as is when isprintable(); that must hold for
    exactly the characters the table and the category check leave alone."""
    import unicodedata

    from tracer.safe_text import _TABLE

    for cp in range(0x30000):
        ch = chr(cp)
        if 0xd800 <= cp < 0xe000:
            continue
        slow = ch.translate(_TABLE)
        if slow == ch and unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp"):
            slow = f"\\u{cp:04x}"
        assert printable(ch) == slow, hex(cp)


def test_error_messages_are_escaped_once():
    from tracer.safe_text import printable_message

    assert printable_message("cannot read /tmp/\x1b]0;x\x07") == "cannot read /tmp/\\e]0;x\\x07"
    # already escaped where it was made: left alone, not doubled
    path = printable("/tmp/\x1bc")
    assert printable_message(f"no data in {path}") == "no data in /tmp/\\ec"
    assert printable_message(ValueError("a\nb")) == "a\\nb"
