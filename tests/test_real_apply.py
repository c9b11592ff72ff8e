"""End to end on the real offline models: the example recipes, reloaded by plain transformers."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from th_edit.apply import compute, prepare_file
from th_edit.cli import main
from th_edit.models import load_model, load_tokenizer
from th_edit.session import swapped_parameters

pytestmark = pytest.mark.real
RECIPES = Path(__file__).parent.parent / "recipes"
PROMPT = ("I went to the laundromat with a shirt, a sock and a towel. I washed the towel and the sock, "
          "so the last thing left to wash was the")

RELOAD = """
import sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
path = sys.argv[1]
tokenizer = AutoTokenizer.from_pretrained(path)
model = AutoModelForCausalLM.from_pretrained(path).eval()
with torch.no_grad():
    logits = model(**tokenizer(sys.argv[2], return_tensors="pt")).logits[0]
assert not any(name.startswith("th_edit") for name in sys.modules)
torch.save(logits, sys.argv[3])
"""


@pytest.mark.parametrize("recipe", ["smollm2-135m-example.yaml", "gemma-3-270m-example.yaml"])
def test_example_recipe_end_to_end(recipe, tmp_path):
    out = tmp_path / "edited"
    result = CliRunner().invoke(main, ["--quiet", "apply", str(RECIPES / recipe), "--out", str(out), "--no-bench"])
    assert result.exit_code == 0, result.output
    subprocess.run([sys.executable, "-c", RELOAD, str(out), PROMPT, str(tmp_path / "logits.pt")], check=True)
    reloaded = torch.load(tmp_path / "logits.pt")

    prepared = prepare_file(RECIPES / recipe)
    model = load_model(prepared.base)
    ids = load_tokenizer(prepared.base)(PROMPT, return_tensors="pt")
    with torch.no_grad():
        before = model(**ids).logits[0]
        with swapped_parameters(model, compute(prepared).cast):
            edited = model(**ids).logits[0]
    assert (edited - before).abs().max() > 1e-3  # the edit changes the model
    assert (reloaded - edited).abs().max() < 1e-4
    assert CliRunner().invoke(main, ["--quiet", "verify", str(out)]).exit_code == 0


def test_apply_benchmark_matches_bench_on_the_written_checkpoint(tmp_path):
    """apply's in-memory before/after equals `bench BASE --compare OUT_DIR` on the written files."""
    import json

    recipe = tmp_path / "r.yaml"
    recipe.write_text((RECIPES / "smollm2-135m-example.yaml").read_text().split("benchmark:")[0]
                      + "benchmark: {tasks: [laundry, ioi], n_items: [2, 3], n_prompts: 6, batch_size: 4}\n")
    out = tmp_path / "edited"
    result = CliRunner().invoke(main, ["--quiet", "apply", str(recipe), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "McNemar" in result.stdout and "neutral text: KL" in result.stdout
    card = (out / "README.md").read_text()
    assert "## Before / after" in card and "(benchmark.png)" in card and (out / "benchmark.png").stat().st_size > 1000
    assert 'from_pretrained("edited")' in card and "<this repo or directory>" not in card
    table = card.split("## Before / after")[1].split("## Recipe")[0]
    assert "\nioi:" in table and "IOI candidate accuracy" not in table  # the IOI result once: in its table
    assert "output.dtype: bfloat16" in card  # float32 weights: the size hint
    inline = json.loads((out / "provenance.json").read_text())["benchmark"]
    assert inline["prompt_counts"] == {"laundry": 12, "ioi": 6, "total": 18}

    bench = CliRunner().invoke(main, ["--quiet", "bench", "smollm2-135m", "--compare", str(out), "--n-items", "2,3",
                                      "--n-prompts", "6", "--batch-size", "4", "--json"])
    assert bench.exit_code == 0, bench.output
    written = json.loads(bench.stdout)
    for task in ("laundry", "ioi"):
        for side in ("before", "after"):
            assert _numbers(inline[side]["results"][task]) == pytest.approx(_numbers(written[side]["results"][task]), abs=1e-4)
    assert inline["side_effects"]["neutral_kl"]["mean_nats_per_token"] == pytest.approx(
        written["side_effects"]["neutral_kl"]["mean_nats_per_token"], rel=1e-3)
    assert inline["side_effects"]["neutral_kl"]["mean_nats_per_token"] > 0


def _numbers(tree) -> list[float]:
    """Every number in a nested report, in order."""
    if isinstance(tree, dict):
        return [x for key in sorted(tree) for x in _numbers(tree[key])]
    if isinstance(tree, list):
        return [x for item in tree for x in _numbers(item)]
    return [float(tree)] if isinstance(tree, (int, float)) else []
