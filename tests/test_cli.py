"""The command line itself: click's usage errors follow the one-line, exit-2 rule too."""

import pytest
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
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], result.output
    assert "--help" in lines[0]


def test_help_and_version_still_exit_0():
    for args in (["--help"], ["apply", "--help"], ["--version"]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0 and result.output.strip(), args
