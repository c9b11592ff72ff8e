"""The `th-edit` command group. Each subcommand lives in th_edit/commands/<name>.py."""

from __future__ import annotations

import sys

import click

from th_edit import __version__, ui
from th_edit.errors import UserError


class UserErrorsExit2(click.Group):
    """Turn a UserError anywhere below, and click's own usage errors (bad option values, unknown
    options or commands), into one line on stderr and exit code 2 (no traceback)."""

    def main(self, *args, **kwargs):
        if not kwargs.get("standalone_mode", True):
            return super().main(*args, **kwargs)
        try:
            result = super().main(*args, **{**kwargs, "standalone_mode": False})
        except click.exceptions.NoArgsIsHelpError as exc:
            exc.show()  # plain `th-edit`: the help text, as click would print it
            sys.exit(exc.exit_code)
        except click.UsageError as exc:
            # click prints usage, a hint and the error on three lines; one line names the fix.
            command = exc.ctx.command_path if exc.ctx is not None else "th-edit"
            click.echo(f"error: {exc.format_message()} (see '{command} --help')", err=True)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except click.exceptions.Abort:
            click.echo("aborted", err=True)
            sys.exit(1)
        # Non-standalone click returns the exit code of ctx.exit() (--help, --version) or the
        # command's return value (None): exit as standalone click would.
        sys.exit(result if isinstance(result, int) else 0)

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
