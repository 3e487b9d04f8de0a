"""The README's schema section is generated from tracer/schema.py; it must not drift."""
from pathlib import Path

from tracer.schema import describe_markdown

README = Path(__file__).resolve().parents[2] / "README.md"


def test_schema_section_matches_code():
    text = README.read_text()
    begin, end = "<!-- schema:begin -->\n", "\n<!-- schema:end -->"
    assert begin in text and end in text
    section = text[text.index(begin) + len(begin):text.index(end)]
    assert section == describe_markdown(), (
        "README schema is stale: regenerate the section between the markers with "
        "python -c 'from tracer.schema import describe_markdown; print(describe_markdown())'")


def test_first_screen_has_exactly_two_setup_commands():
    first_screen = README.read_text().splitlines()[:24]
    commands = [line.strip() for line in first_screen if line.strip().startswith("sudo ./run")]
    assert [c.split()[2] for c in commands] == ["top", "test"]
