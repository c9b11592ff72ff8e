"""The `th-edit` command group. Each subcommand lives in th_edit/commands/<name>.py."""

from __future__ import annotations

import sys

import click

from th_edit import __version__, ui
from th_edit.errors import UserError


class UserErrorsExit2(click.Group):
    """Turn a UserError anywhere below into one line on stderr and exit code 2 (no traceback)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except UserError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


@click.group(cls=UserErrorsExit2, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="th-edit")
@click.option("-v", "--verbose", is_flag=True, help="More detail on stderr (library logs included).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars or status lines (warnings and errors still show).")
def main(verbose: bool, quiet: bool) -> None:
    """Find and edit the low-rank communication channels between attention heads,
    and ship the result as an ordinary Hugging Face checkpoint."""
    ui.configure(quiet=quiet, verbose=verbose)


def _register() -> None:
    from th_edit.commands import COMMANDS

    for command in COMMANDS:
        main.add_command(command)


_register()
