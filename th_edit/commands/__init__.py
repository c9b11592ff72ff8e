"""One click command per module; `COMMANDS` is what the CLI group registers."""

from th_edit.commands.apply import apply_command
from th_edit.commands.bench import bench_command
from th_edit.commands.channels import channels_command
from th_edit.commands.inspect import inspect_command
from th_edit.commands.push import push_command
from th_edit.commands.search import search_command
from th_edit.commands.subspace import subspace_command
from th_edit.commands.verify import verify_command

COMMANDS = [inspect_command, channels_command, search_command, subspace_command, apply_command, bench_command,
            verify_command, push_command]
