"""Text that other users control, made safe to show.

Process names (any 15 bytes, set with prctl(PR_SET_NAME)), file names found in
a recording directory and metadata read back from a recording are data. On a
terminal, an ESC byte in them would be a command (clear the screen, set the
title, forge colours) and a newline would forge a line in a log. `printable`
turns every character that a terminal or a log would interpret into a visible
escape, so what is shown is what the other process chose, byte for byte, and
nothing more. Parquet keeps the unescaped text; only what is shown goes
through here. Rich/Textual markup is a separate matter: display code passes
names as `rich.text.Text` (or escapes them), never as markup.
"""
from __future__ import annotations

import unicodedata
from functools import lru_cache

# Characters shown as an escape instead of themselves: C0 controls, DEL, C1
# controls (0x9b is a one-byte CSI on some terminals), the backslash (so that
# an escape shown is never ambiguous with the same text typed literally), and
# Unicode characters that reorder or split lines (bidi overrides and isolates,
# line and paragraph separators).
_ESCAPED = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7f, *range(0x80, 0xa0))}
_ESCAPED.update({ord("\\"): "\\\\", 0x09: "\\t", 0x0a: "\\n", 0x0d: "\\r", 0x1b: "\\e"})
for _c in (0x061c, 0x200e, 0x200f, *range(0x202a, 0x202f), *range(0x2066, 0x206a),
           0x2028, 0x2029, 0xfeff):
    _ESCAPED[_c] = f"\\u{_c:04x}"
_TABLE = str.maketrans(_ESCAPED)


def faithful_text(raw: bytes) -> str:
    """Text of bytes another process chose (a task comm), losing nothing: valid
    UTF-8 as is, every other byte as `\\xNN` (backslashreplace). "replace"
    would turn every invalid byte into the same U+FFFD, so one name could pass
    for another. This is what Parquet keeps; what is shown goes through
    `printable` as well (which shows that backslash as `\\\\`)."""
    return raw.decode("utf-8", "backslashreplace")


def printable(text: object) -> str:
    """`text` with every character a terminal or log would act on shown as an
    escape (`\\e`, `\\n`, `\\x07`, `\\u202e`...). None becomes ''. Also
    escapes any other Unicode control or format character (category Cc/Cf)."""
    if text is None:
        return ""
    s = str(text)
    # Fast path (5x): isprintable() is False for every character changed below
    # (categories Cc, Cf, Zl, Zp); only the backslash needs its own look.
    if s.isprintable() and "\\" not in s:
        return s
    s = s.translate(_TABLE)
    if s.isascii():
        return s
    return "".join(ch if unicodedata.category(ch) not in ("Cc", "Cf", "Zl", "Zp")
                   else f"\\u{ord(ch):04x}" for ch in s)


def printable_message(text: object) -> str:
    """A message for one Error: line: as is when nothing in it would act on a
    terminal (those that quote names escape them where they are made: a second
    pass would double their backslashes), else `printable` of all of it."""
    s = str(text)
    return s if s.isprintable() else printable(s)


@lru_cache(maxsize=4096)
def printable_name(name: str | None) -> str:
    """`printable` for process names: few distinct values, seen many times."""
    return printable(name)
