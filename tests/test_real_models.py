"""Exactness on the real offline models (METHOD.md §1), read straight from the checkpoint files."""

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
