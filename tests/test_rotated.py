"""RoPE-aware Q- and K-composition (docs/method.md#rotated-composition) against dense products that rotate
with each model's OWN rotary embedding, on a tiny model of every rotary layout th-edit reads."""

from __future__ import annotations

import functools
import importlib
import inspect

import pytest
import torch
from tiny import tiny_model

from th_edit.arch import adapter_for
from th_edit.channels import HeadId, composition_scores, head_factors
from th_edit.channels.rotated import offsets_from, parse_offsets, rotated_reads, task_offsets
from th_edit.checkpoint import ModelTensors
from th_edit.errors import UserError
from th_edit.linalg import single_threaded

# Llama (half-split, GQA), NeoX (partial 1/4), Phi and StableLM (partial 1/2), GPT-J (interleaved, rotary_dim),
# Gemma 3 (QK-norm, per-layer-type RoPE), Cohere (interleaved, full), Qwen3, Falcon.
ROTARY_FAMILIES = ("llama", "gpt_neox", "phi", "stablelm", "gptj", "gemma3_text", "cohere", "qwen3", "falcon")
POSITION = 3  # keys sit here, queries Δ later: only the offset may matter


@pytest.fixture(autouse=True)
def one_thread():
    with single_threaded():
        yield


@functools.lru_cache(maxsize=None)
def parts(model_type: str):
    model = tiny_model(model_type)
    adapter = adapter_for(model.config)
    source = ModelTensors(model)
    return model, adapter, source, head_factors(adapter, source, dtype=torch.float64)


def module_rotation(model, adapter, layer: int, position: int) -> torch.Tensor:
    """R(position) [dh, dh] as the model's own code rotates a query: the rows of the identity, as d_head
    tokens of one head at `position`, through its rotary embedding module and apply function."""
    dh = adapter.d_head
    basis = torch.eye(dh)[None, None]  # [batch, heads, tokens, dh]
    positions = torch.full((1, dh), position)
    embedding = next(m for name, m in model.named_modules() if name.endswith("rotary_emb"))
    modeling = importlib.import_module(type(model).__module__)
    kwargs = {}
    if "layer_type" in inspect.signature(embedding.forward).parameters:
        kwargs["layer_type"] = model.config.layer_types[layer]
    first, second = embedding(basis, positions, **kwargs)
    if model.config.model_type == "gptj":  # (sin, cos) [1, tokens, R/2]; tensors laid out [batch, tokens, heads, dh]
        sin, cos = first, second
        width = 2 * sin.shape[-1]
        x = basis.transpose(1, 2)
        rotated = modeling.apply_rotary_pos_emb(x[..., :width], sin, cos)
        return torch.cat([rotated, x[..., width:]], -1).transpose(1, 2)[0, 0].double()
    cos, sin = first, second
    width = cos.shape[-1]  # partial rotary: the modeling code rotates the first `width` dims only
    rotated, _ = modeling.apply_rotary_pos_emb(basis[..., :width], basis[..., :width], cos, sin)
    return torch.cat([rotated, basis[..., width:]], -1)[0, 0].double()


@functools.lru_cache(maxsize=None)
def own_relative_rotation(model_type: str, layer: int, offset: int) -> torch.Tensor:
    """R(p+Δ) R(p)ᵀ from the module's own rotations: what a query at p+Δ meets a key at p through."""
    model, adapter, _, _ = parts(model_type)
    return module_rotation(model, adapter, layer, POSITION + offset) @ module_rotation(model, adapter, layer, POSITION).T


@functools.lru_cache(maxsize=None)
def layer_weights(model_type: str, layer: int):
    _, adapter, source, _ = parts(model_type)
    return adapter.layer_weights(source, layer, dtype=torch.float64)


def dense_rotated_qk(model_type: str, layer: int, head: int, offset: int) -> torch.Tensor:
    """W_Q R(p+Δ) R(p)ᵀ W_Kᵀ, d×d, with the module's own rotations."""
    w = layer_weights(model_type, layer)
    return w.W_Q[head] @ own_relative_rotation(model_type, layer, offset) @ w.W_K[head].T


@pytest.mark.parametrize("model_type", ROTARY_FAMILIES)
@pytest.mark.parametrize("offset", [0, 1, 7, 50])
def test_rotation_is_the_modules_own(model_type, offset):
    _, adapter, _, _ = parts(model_type)
    for layer in range(adapter.n_layers):
        mine = adapter.rotary(layer).rotation(offset)[0]
        torch.testing.assert_close(mine, own_relative_rotation(model_type, layer, offset), atol=2e-6, rtol=0)
        if offset:
            assert (mine - torch.eye(adapter.d_head, dtype=torch.float64)).abs().max() > 1e-3  # it does rotate


def expected_scores(model_type: str, weights: dict[int, float], mode: str) -> dict[tuple, torch.Tensor]:
    """C_k² = Σ_Δ w ‖v_kᵀ M_Δ‖² / Σ_Δ w ‖M_Δ‖_F² per (sender, receiver), M_Δ = QK_Δ (q) or QK_Δᵀ (k), dense."""
    _, adapter, _, factors = parts(model_type)
    out = {}
    for rl in range(1, adapter.n_layers):
        for rh in range(adapter.n_heads):
            Ms = {o: dense_rotated_qk(model_type, rl, rh, o) for o in weights}
            Ms = {o: (M if mode == "q" else M.T) for o, M in Ms.items()}
            norm2 = sum(w * Ms[o].square().sum() for o, w in weights.items())
            for sl in range(rl):
                for sh in range(adapter.n_heads):
                    V = factors.ov.V[sl, sh]  # [d, r] write directions
                    num = sum(w * (V.T @ Ms[o]).square().sum(-1) for o, w in weights.items())
                    out[(HeadId(sl, sh), HeadId(rl, rh))] = (num / norm2).sqrt()
    return out


@pytest.mark.parametrize("model_type", ROTARY_FAMILIES)
@pytest.mark.parametrize("form", ["0", "9", "weighted"])
def test_rotated_scores_equal_dense(model_type, form):
    _, adapter, source, factors = parts(model_type)
    offsets = offsets_from("task", [0, 3, 3, 50, 50, 50]) if form == "weighted" else offsets_from(form)
    rotated = factors.with_rotation(rotated_reads(adapter, source, offsets, dtype=torch.float64))
    scores = composition_scores(rotated, ("q", "k"), dtype=torch.float64)
    assert scores.form == offsets.as_dict()
    s2 = factors.ov.S.square()
    for mode in ("q", "k"):
        for (sender, receiver), want in expected_scores(model_type, offsets.weights, mode).items():
            pair = scores.pair(sender, receiver, mode)
            torch.testing.assert_close(pair.components, want, atol=2e-6, rtol=0)
            s = s2[sender.layer, sender.head]
            full = ((s * want.square()).sum() / s.sum()).sqrt()  # full² = Σ s² C² / Σ s² holds for the stack
            assert pair.full == pytest.approx(float(full), abs=2e-6)


@pytest.mark.parametrize("model_type", ["llama", "gptj", "gpt_neox"])
def test_offset_zero_is_todays_form_and_other_offsets_are_not(model_type):
    _, adapter, source, factors = parts(model_type)
    today = composition_scores(factors, ("q", "k"), dtype=torch.float64)
    at = {o: composition_scores(factors.with_rotation(rotated_reads(adapter, source, offsets_from(o), torch.float64)),
                                ("q", "k"), dtype=torch.float64) for o in ("0", "40")}
    assert today.form == {"form": "unrotated"}
    for mode in ("q", "k"):
        torch.testing.assert_close(at["0"].components[mode], today.components[mode], atol=1e-9, rtol=0, equal_nan=True)
        gap = (at["40"].components[mode] - today.components[mode]).nan_to_num().abs().max()
        assert gap > 1e-3


def test_layers_without_rope_keep_the_unrotated_form():
    model = tiny_model("smollm3")  # no_rope_layers=[1, 1, 0]: layer 2 has no RoPE
    adapter, source = adapter_for(model.config), ModelTensors(model)
    factors = head_factors(adapter, source, dtype=torch.float64)
    today = composition_scores(factors, ("q",), dtype=torch.float64).component_scores("q")
    far = composition_scores(factors.with_rotation(rotated_reads(adapter, source, offsets_from("30"), dtype=torch.float64)),
                             ("q",), dtype=torch.float64).component_scores("q")
    torch.testing.assert_close(far[:, :, :, 2], today[:, :, :, 2], atol=1e-9, rtol=0, equal_nan=True)
    assert (far[:, :, :, 1] - today[:, :, :, 1]).nan_to_num().abs().max() > 1e-3
    assert adapter_for(tiny_model("gpt2").config).rotary(0) is None


def test_offset_forms():
    assert offsets_from("5").weights == {5: 1.0}
    assert offsets_from("1-4").weights == {1: 0.25, 2: 0.25, 3: 0.25, 4: 0.25}
    assert offsets_from("task", [4, 4, 9, 1]).as_dict() == {"form": "task", "offsets": {"1": 0.25, "4": 0.5, "9": 0.25}}
    for bad in ("-3", "5-2", "x", "1-", "2.5", "99999999"):
        with pytest.raises(UserError):
            parse_offsets(bad)
    with pytest.raises(UserError):
        offsets_from("task", [])


def test_task_offsets_are_end_to_mention_distances():
    from th_edit.tasks.mentions import Mentions

    mention = Mentions(ids=tuple(range(20)), first=(2, 4, 6), second=(None, 12, 15), answer=0)
    assert sorted(task_offsets([mention])) == [4, 7, 17]  # END 19: answer at 2, second mentions at 12 and 15
