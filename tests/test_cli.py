"""The command line itself: click's usage errors follow the one-line, exit-2 rule too."""

import pytest
from cli_helpers import one_line_error, run_cli
from click.testing import CliRunner

from th_edit.cli import main


@pytest.mark.parametrize("args,fragment", [
    (["--bogus"], "No such option '--bogus'"),
    (["nosuch"], "No such command 'nosuch'"),
    (["apply"], "Missing argument 'RECIPE'"),
    (["bench", "--n-prompts", "0"], "'--n-prompts'"),
    (["bench", "--task", "sudoku"], "'--task'"),
    (["inspect", "--top", "many"], "'--top'"),
])
def test_usage_errors_are_one_line(args, fragment):
    line = one_line_error(run_cli(*args, quiet=False), fragment, alone=True)
    assert "--help" in line


def test_help_and_version_still_exit_0():
    for args in (["--help"], ["apply", "--help"], ["--version"]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0 and result.output.strip(), args
