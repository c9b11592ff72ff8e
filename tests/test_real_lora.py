"""The shipped SmolLM2 recipe as a LoRA adapter: PEFT on the plain transformers base (the dequantized
checkpoint the alias resolves to) gives the edited checkpoint's logits."""

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from th_edit.cli import main
from th_edit.lora import ADAPTER_DIR
from th_edit.models import resolve

pytestmark = pytest.mark.real
RECIPE = Path(__file__).parent.parent / "recipes" / "smollm2-135m-recall.yaml"
PROMPTS = ["I went to the laundromat with a shirt, a sock and a towel. I washed the towel and the sock, "
           "so the last thing left to wash was the", "The capital of France is"]


def test_shipped_recipe_adapter_matches_the_edited_checkpoint(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "edited"
    result = CliRunner().invoke(main, ["--quiet", "apply", str(RECIPE), "--out", str(out), "--no-bench",
                                       "--format", "safetensors", "--format", "lora"])
    assert result.exit_code == 0, result.output
    base_dir = resolve("smollm2-135m").path
    tokenizer = AutoTokenizer.from_pretrained(out)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    patched = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    inputs = [tokenizer(prompt, return_tensors="pt") for prompt in PROMPTS]
    with torch.no_grad():
        before = [base(**ids).logits for ids in inputs]
        edited = [patched(**ids).logits for ids in inputs]
        with_adapter = PeftModel.from_pretrained(base, out / ADAPTER_DIR).eval()  # wraps `base` in place
        adapted = [with_adapter(**ids).logits for ids in inputs]
    for old, new, lora in zip(before, edited, adapted):
        scale = float(new.abs().max())
        assert float((old - new).abs().max()) > 1e-3 * scale  # the edit changes the logits
        gap = float((lora - new).abs().max()) / scale
        print(f"smollm2-135m recall recipe: max |adapter - checkpoint| / max |logit| = {gap:.2e}, "
              f"edit changes logits by {float((old - new).abs().max()) / scale:.2e}")
        assert gap <= 1e-5
    sizes = {name: (out / name).stat().st_size for name in ("model.safetensors", f"{ADAPTER_DIR}/adapter_model.safetensors")}
    print(f"sizes: {sizes}")
    assert CliRunner().invoke(main, ["--quiet", "verify", str(out)]).exit_code == 0
