"""Effective per-head matrices reproduce each family's own forward pass (docs/method.md#folding-norms)."""

import pytest
import torch
from exactness import TOL, check_layer
from tiny import FAMILIES, VOCAB, tiny_model

from th_edit.arch import SUPPORTED_MODEL_TYPES, adapter_for
from th_edit.checkpoint import ModelTensors
from th_edit.errors import UserError


@pytest.mark.parametrize("model_type", FAMILIES)
def test_effective_matrices_reproduce_forward(model_type):
    model = tiny_model(model_type)
    adapter = adapter_for(model.config)
    input_ids = torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(1))
    for layer in range(adapter.n_layers):
        errors = check_layer(model, adapter, input_ids, layer)
        assert max(errors.values()) < TOL, (layer, errors)


def test_a_wrong_fold_is_caught():
    """The check is sharp: dropping Gemma's (1 + γ) offset breaks it."""
    model = tiny_model("gemma3_text")
    adapter = adapter_for(model.config)
    adapter.norm_offset = 0.0
    input_ids = torch.randint(0, VOCAB, (1, 6), generator=torch.Generator().manual_seed(2))
    errors = check_layer(model, adapter, input_ids, 0)
    assert errors["v"] > 1e-2


def test_gemma_post_norm_is_checked():
    """The post-attention norm check does not rely on the adapter: leaving its fold out fails."""
    model = tiny_model("gemma3_text")
    adapter = adapter_for(model.config)
    adapter.output_norm = lambda layer: None
    input_ids = torch.randint(0, VOCAB, (1, 6), generator=torch.Generator().manual_seed(2))
    errors = check_layer(model, adapter, input_ids, 0)
    assert errors["post_norm"] > 1e-2


@pytest.mark.parametrize("model_type", ["gpt2", "gpt_neox"])
def test_layernorm_mean_removal_is_folded(model_type):
    """docs/method.md#folding-norms: W_eff = C diag(γ) W with C = I − 11ᵀ/d. The forward check cannot see C (x̃ is
    already centred), but C changes OV, QK and their SVDs: every column must sum to zero."""
    model = tiny_model(model_type)
    adapter = adapter_for(model.config)
    assert isinstance(dict(model.named_modules())[adapter.input_norm_module(0)], torch.nn.LayerNorm)
    for layer in range(adapter.n_layers):
        w = adapter.layer_weights(ModelTensors(model), layer, dtype=torch.float64)
        for name in ("W_Q", "W_K", "W_V"):
            matrix = getattr(w, name)
            assert matrix.sum(dim=1).abs().max() < 1e-10 * matrix.abs().max(), (layer, name)


@pytest.mark.parametrize("model_type", FAMILIES)
def test_head_dims_and_gqa(model_type):
    model = tiny_model(model_type)
    adapter = adapter_for(model.config)
    info = adapter.info()
    w = adapter.layer_weights(ModelTensors(model), 0)
    assert w.W_Q.shape == (info.n_heads, info.d_model, info.d_head)
    assert w.W_O.shape == (info.n_heads, info.d_head, info.d_model)
    # query heads of one KV group share W_K and W_V exactly
    for h in range(info.n_heads):
        g0 = [x for x in range(info.n_heads) if adapter.kv_group(x) == adapter.kv_group(h)][0]
        assert torch.equal(w.W_K[h], w.W_K[g0]) and torch.equal(w.W_V[h], w.W_V[g0])


def test_unsupported_architecture_names_supported_types():
    from transformers import BertConfig

    with pytest.raises(UserError) as excinfo:
        adapter_for(BertConfig())
    message = str(excinfo.value)
    assert "bert" in message and all(t in message for t in SUPPORTED_MODEL_TYPES)
