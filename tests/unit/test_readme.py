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


def _commands_section(text: str) -> str:
    start = text.index("## Commands")
    return text[start:text.index("\n## ", start + 1)]


def _documented_names():
    """(where, name) for every command and every option a user can type,
    walked from the click group itself (so a new one is seen at once)."""
    import click

    from tracer.cli import cli

    def options(where, command):
        for param in command.params:
            if isinstance(param, click.Option):
                for name in [*param.opts, *param.secondary_opts]:
                    yield where, name
        # -h/--help is added by click, not in params
        for name in command.get_help_option_names(click.Context(command)):
            yield where, name

    yield from options("connscope", cli)
    for name, command in cli.commands.items():
        yield "commands", f"connscope {name}"
        yield from options(f"connscope {name}", command)


def test_every_command_and_option_is_in_the_readme():
    """The README's Commands section names every command and every option of
    each (issue 14: report, replay and --max-size were missing once)."""
    section = _commands_section(README.read_text())
    names = list(_documented_names())
    assert len(names) > 20      # the walk found the group's commands and options
    import re

    missing = sorted({f"{where}: {name}" for where, name in names
                      if not re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", section)})
    assert not missing, f"not in README.md's Commands section: {missing}"


def test_the_readme_walk_sees_a_new_option():
    """The check above cannot pass vacuously: an option nobody documented is found."""
    import click

    from tracer.cli import cli

    extra = click.Option(["--surely-undocumented"], is_flag=True)
    cli.commands["top"].params.append(extra)
    try:
        names = {n for _, n in _documented_names()}
        assert "--surely-undocumented" in names
        assert "--surely-undocumented" not in _commands_section(README.read_text())
    finally:
        cli.commands["top"].params.remove(extra)
