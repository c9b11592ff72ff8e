"""Running `th-edit` in-process in tests, and the one check every user error must pass.

A user error is exit code 2 and exactly one line, `error: ...`, on stderr: no traceback, no usage
text. Some commands print a result (apply's edit table) before they fail while writing; that stays on
stdout, so by default only stderr is held to one line. `alone=True` asks that the whole terminal
output (stdout and stderr together, as the user sees it) be that one line. The same check applies to
a real process (`subprocess.run(..., capture_output=True, text=True)`).
"""

from __future__ import annotations

import subprocess

from click.testing import CliRunner, Result

from th_edit.cli import main


def run_cli(*args: object, quiet: bool = True, env: dict[str, str] | None = None) -> Result:
    """`th-edit [--quiet] ARGS...` in-process (arguments are turned into strings)."""
    return CliRunner().invoke(main, [*(["--quiet"] if quiet else []), *map(str, args)], env=env)


def one_line_error(result: Result | subprocess.CompletedProcess, *fragments: str, alone: bool = False) -> str:
    """Assert that `result` (of `run_cli` or of a process) is a user error: exit code 2 and a single
    `error: ` line on stderr (`alone`: in the whole output) containing every fragment. Returns that line."""
    if isinstance(result, subprocess.CompletedProcess):
        code, stderr, everything = result.returncode, result.stderr, result.stdout + result.stderr
    else:
        code, stderr, everything = result.exit_code, result.stderr, result.output
    assert code == 2, everything
    lines = [line for line in (everything if alone else stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), everything
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]
