import click


@click.group(invoke_without_command=True)
@click.pass_context
def cli(ctx):
    """connscope: TCP connection tracer."""


def main():
    cli()
