"""Exactness on the real offline models (docs/method.md#folding-norms), read straight from the checkpoint files."""

import pytest
import torch
from exactness import TOL, check_layer

from th_edit.arch import adapter_for
from th_edit.models import load_model, load_tokenizer, resolve

pytestmark = pytest.mark.real

PROMPT = "When Mary and John went to the store, John gave a drink to"


@pytest.fixture(scope="module", params=["smollm2-135m", "gemma-3-270m"])
def real(request):
    resolved = resolve(request.param)
    model = load_model(resolved, dtype="float32", attn_implementation="eager")
    return request.param, resolved, model, load_tokenizer(resolved)


def test_every_layer_reproduces_forward(real):
    name, resolved, model, tokenizer = real
    adapter = adapter_for(model.config)
    input_ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    source = resolved.tensors()  # the files on disk, not the loaded module
    worst = {}
    for layer in range(adapter.n_layers):
        errors = check_layer(model, adapter, input_ids, layer, source=source)
        for key, value in errors.items():
            worst[key] = max(worst.get(key, 0.0), value)
    assert max(worst.values()) < TOL, (name, worst)


def test_dequantized_model_is_sane(real):
    """The cached float32 checkpoint is the real model: it completes an easy prompt."""
    name, _, model, tokenizer = real
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        top = model(ids).logits[0, -1].topk(5).indices
    assert " Paris" in [tokenizer.decode(t) for t in top], name


@pytest.mark.parametrize("alias,family,layers,heads,kv,d_head", [
    ("smollm2-135m", "llama", 30, 9, 3, 64),
    ("gemma-3-270m", "gemma3", 18, 4, 1, 256),
])
def test_inspect_offline_aliases(alias, family, layers, heads, kv, d_head):
    import json

    from click.testing import CliRunner

    from th_edit.cli import main

    result = CliRunner().invoke(main, ["--quiet", "inspect", alias, "--svd", "--top", "2", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    arch = summary["architecture"]
    shape = (arch["family"], arch["n_layers"], arch["n_heads"], arch["n_kv_heads"], arch["d_head"])
    assert shape == (family, layers, heads, kv, d_head)
    assert len(summary["svd"]["heads"]) == layers * heads
    assert all(h["ov"][0] >= h["ov"][1] > 0 and h["qk"][0] >= h["qk"][1] > 0 for h in summary["svd"]["heads"])
