"""The shipped example recipes' checkpoints load identically under transformers 4.x and 5.x.

transformers 4.x runs in the `.venv-tf4` virtual environment that `make test` creates (`make tf4`);
without it these tests skip, saying so.
"""

import pytest
from click.testing import CliRunner
from test_real_apply import PROMPT, RECIPES
from tf4 import probe, probe_here, tf4_python

from th_edit.cli import main

pytestmark = pytest.mark.real
# Longer than Gemma 3's 512-token sliding window, so the local-attention layers' reading of the
# window and of rope_local_base_freq is compared too, not only the global layers'.
LONG = " ".join(f"Item {i}: a shirt, a sock and a towel went to the laundromat." for i in range(30))


@pytest.mark.parametrize("recipe", ["smollm2-135m-example.yaml", "gemma-3-270m-example.yaml"])
def test_example_checkpoint_is_the_same_model_in_transformers_4(recipe, tmp_path):
    python = tf4_python()
    out = tmp_path / "edited"
    result = CliRunner().invoke(main, ["--quiet", "apply", str(RECIPES / recipe), "--out", str(out), "--no-bench"])
    assert result.exit_code == 0, result.output
    spec = {"dirs": [str(out)], "prompts": [PROMPT, LONG], "generate": 20, "generate_prompts": 1}
    old, new = probe(python, spec, tmp_path, "tf4")[str(out)], probe_here(spec)[str(out)]
    assert old["version"].startswith("4.") and new["version"].startswith("5.")
    assert not any(old["loading_info"].values()), old["loading_info"]
    assert old["tokenizer"] == new["tokenizer"]
    assert old["ids"] == new["ids"] and len(new["ids"][1]) > 512
    for before, after in zip(new["logits"], old["logits"]):
        assert (before - after).abs().max() <= 1e-4
    assert old["generated"] == new["generated"] and [len(tokens) for tokens in new["generated"]] == [20]
