"""End to end on the real offline models: the example recipes, reloaded by plain transformers."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from th_edit.apply import compute, prepare_file
from th_edit.cli import main
from th_edit.edit import write_into_model
from th_edit.models import load_model, load_tokenizer

pytestmark = pytest.mark.real
RECIPES = Path(__file__).parent.parent / "recipes"
PROMPT = "I went to the laundromat with a shirt, a sock and a towel. I washed the towel and the sock, so the last thing left to wash was the"

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
        write_into_model(model, compute(prepared).cast)
        edited = model(**ids).logits[0]
    assert (edited - before).abs().max() > 1e-3  # the edit changes the model
    assert (reloaded - edited).abs().max() < 1e-4
    assert CliRunner().invoke(main, ["--quiet", "verify", str(out)]).exit_code == 0
