"""tracer.safe_text: names other users choose are shown, never obeyed."""
from tracer.safe_text import printable, printable_name


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
