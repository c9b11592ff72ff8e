"""One click command per module; `COMMANDS` is what the CLI group registers."""

from th_edit.commands.inspect import inspect_command

COMMANDS = [inspect_command]
