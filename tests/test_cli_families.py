"""The commands end to end on tiny checkpoints of Phi-1/2, StableLM, GPT-J, Falcon and OPT: channels
(without the data check), a two-trial search, subspace, and bench comparing the base
with the search's recipe applied in memory; the recipe applies."""

import json

import pytest
from click.testing import CliRunner
from tiny import tiny_checkpoint

from th_edit.cli import main

END_TO_END = ("phi", "stablelm", "gptj", "falcon", "opt")


def run(*args):
    result = CliRunner().invoke(main, ["--quiet", *map(str, args)])
    assert result.exit_code == 0, result.output
    return result


@pytest.mark.parametrize("family", END_TO_END)
def test_commands_run_end_to_end(family, tmp_path):
    from th_edit.commands.bench import bench_command

    main.add_command(bench_command)
    base = tiny_checkpoint(tmp_path / "m", family, seed=2)
    run("channels", base, "--no-data-check", "--n-items", "3", "--n-prompts", "6", "--top", "2", "--z-threshold", "1",
        "--out", tmp_path / "ch")
    assert json.loads((tmp_path / "ch" / "channels.json").read_text())["pairs"]
    # The search reads the candidate heads from a channel report (one written here: a tiny random model
    # need not have an inhibition channel, and running the analysis again would only cost time).
    channels = tmp_path / "channels.json"
    channels.write_text(json.dumps({"channels": {"inhibition": []}, "pairs": [
        {"sender": "1.0", "receiver": "2.1", "channel": "inhibition", "z": [3.0, 1.0, 0.5]},
        {"sender": "1.2", "receiver": "2.1", "channel": "inhibition", "z": [0.1, 2.0]}]}))
    recipe = tmp_path / "s" / "recipe.yaml"
    run("search", base, "--channels", channels, "--n-items", "2-3", "--trials", "2",
        "--tune-prompts", "4", "--held-out-prompts", "4", "--kl-budget", "1", "--max-ioi-drop", "100", "--out", recipe)
    assert len(json.loads(recipe.with_suffix(".search.json").read_text())["trials"]) == 2
    run("subspace", base, "--n-items", "2-3", "--n-prompts", "4", "--grid", "2", "--traverse-prompts", "2",
        "--components", "1.0:0,1.1:0,1.2:1", "--movers", "2.3", "--out", tmp_path / "sub")
    run("bench", base, "--n-items", "2-3", "--n-prompts", "4", "--compare", recipe, "--kl-texts", "2",
        "--out", tmp_path / "b")
    assert (tmp_path / "b" / "bench.json").exists()
    run("apply", recipe, "--no-bench", "--out", tmp_path / "edited")
