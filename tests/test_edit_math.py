"""Exact edits (docs/method.md#exact-edits) computed in memory on tiny models of every family, without
the command line: the dense identities, which stored slices change, several components at once,
realized singular values, near ties and the refusals. `tests/test_apply.py` checks the same through
`th-edit apply` and the files it writes."""

from __future__ import annotations

import functools

import pytest
import torch
from tiny import FAMILIES, tiny_model

from th_edit.arch import adapter_for
from th_edit.checkpoint import ModelTensors
from th_edit.edit import Overlay, ambiguous_components, cast_for_output, compute_edits, measure_realized
from th_edit.errors import UserError
from th_edit.linalg import ov_svd, qk_svd, single_threaded
from th_edit.recipe import Edit

EDITS = [
    Edit(layer=1, head=1, circuit="ov", components=[0, 2], scale=2.5),
    Edit(layer=1, head=1, circuit="qk", components=[1], scale=0.0),
    Edit(layer=2, head=0, circuit="qk", components=[0], scale=1.7),
    Edit(layer=2, head=3, circuit="ov", components=[3], scale=0.0),
]


@pytest.fixture(autouse=True)
def one_thread():
    """Many tiny products: on a shared 2-core machine OpenMP's barriers only slow them down."""
    with single_threaded():
        yield


@functools.lru_cache(maxsize=None)
def parts(family: str):
    model = tiny_model(family)
    return adapter_for(model.config), ModelTensors(model)


def _scales(edits, layer: int, head: int, circuit: str) -> dict[int, float]:
    return {k: e.scale for e in edits if (e.layer, e.head, e.circuit) == (layer, head, circuit) for k in e.components}


def _dense(adapter, source, layer: int):
    weights = adapter.layer_weights(source, layer, dtype=torch.float64)
    return weights, weights.W_V @ weights.W_O, weights.W_Q @ weights.W_K.transpose(-1, -2)


@pytest.mark.parametrize("family", FAMILIES)
def test_stored_update_gives_the_dense_identities_on_the_effective_matrices(family):
    """OV' = OV (I + Σ(α−1) v vᵀ) and QK' = (I + Σ(α−1) a aᵀ) QK for every head of the edited layers,
    after the folded norm weights (input gain, Gemma's post-attention gain, LayerNorm's C) are undone
    in the stored W_O and W_Q: unedited heads stay exactly as they were."""
    adapter, source = parts(family)
    result = compute_edits(adapter, source, EDITS)
    edited = Overlay(source, result.tensors)
    for layer in (1, 2):
        before, OV, QK = _dense(adapter, source, layer)
        _, OV_new, QK_new = _dense(adapter, edited, layer)
        ov, qk = ov_svd(before), qk_svd(before)
        for head in range(adapter.n_heads):
            d = adapter.d_model
            M_ov, M_qk = torch.eye(d, dtype=torch.float64), torch.eye(d, dtype=torch.float64)
            for k, a in _scales(EDITS, layer, head, "ov").items():
                M_ov += (a - 1) * torch.outer(ov.V[head][:, k], ov.V[head][:, k])
            for k, a in _scales(EDITS, layer, head, "qk").items():
                M_qk += (a - 1) * torch.outer(qk.U[head][:, k], qk.U[head][:, k])
            torch.testing.assert_close(OV_new[head], OV[head] @ M_ov, rtol=0, atol=1e-12 * float(OV[head].abs().max()))
            torch.testing.assert_close(QK_new[head], M_qk @ QK[head], rtol=0, atol=1e-12 * float(QK[head].abs().max()))


@pytest.mark.parametrize("family", FAMILIES)
def test_only_w_o_and_w_q_slices_of_the_edited_heads_change(family):
    """Never W_K or W_V (shared by a GQA group), never another head's slice."""
    adapter, source = parts(family)
    result = compute_edits(adapter, source, EDITS)
    allowed: dict[str, torch.Tensor] = {}
    for e in EDITS:
        slot = (adapter.o_slot if e.circuit == "ov" else adapter.q_slot)(e.layer, e.head)
        mask = allowed.setdefault(slot.param, torch.zeros(source.get(slot.param).shape, dtype=torch.bool))
        mask[slot.index] = True
    assert set(result.tensors) == set(allowed)
    for name, new in result.tensors.items():
        assert new.dtype == torch.float64  # computed in float64; the caller casts
        changed = new != source.get(name).to(torch.float64)
        assert changed.any() and not (changed & ~allowed[name]).any(), name
        torch.testing.assert_close(result.intended_deltas[name], new - source.get(name).to(torch.float64), rtol=0, atol=0)


@pytest.mark.parametrize("family", ["llama", "gemma3_text", "gpt2"])
def test_components_named_in_separate_edits_compose_like_one_edit(family):
    adapter, source = parts(family)
    together = compute_edits(adapter, source, [Edit(layer=1, head=0, circuit="ov", components=[0, 1], scale=3.0),
                                               Edit(layer=1, head=0, circuit="qk", components=[0, 2], scale=0.5)])
    apart = compute_edits(adapter, source, [Edit(layer=1, head=0, circuit="ov", components=[0], scale=3.0),
                                            Edit(layer=1, head=0, circuit="qk", components=[2], scale=0.5),
                                            Edit(layer=1, head=0, circuit="ov", components=[1], scale=3.0),
                                            Edit(layer=1, head=0, circuit="qk", components=[0], scale=0.5)])
    assert set(together.tensors) == set(apart.tensors)
    for name in together.tensors:
        torch.testing.assert_close(apart.tensors[name], together.tensors[name], rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("family", FAMILIES)
def test_realized_singular_values_are_the_targets_and_the_others_stay(family):
    adapter, source = parts(family)
    result = compute_edits(adapter, source, EDITS)
    measure_realized(adapter, Overlay(source, result.tensors), result)
    for report in result.reports:
        for c in report.components:
            assert c.target == pytest.approx(c.scale * c.original)
            assert c.realized == pytest.approx(c.target, rel=1e-9, abs=1e-9 * c.original), (report.layer, report.head, c)
        assert report.max_untouched_change < 1e-9


def test_scale_one_changes_nothing_and_zero_removes_the_component():
    adapter, source = parts("qwen3")
    unchanged = compute_edits(adapter, source, [Edit(layer=0, head=2, circuit="qk", components=[0, 1], scale=1.0)])
    for name, tensor in unchanged.tensors.items():
        torch.testing.assert_close(tensor, source.get(name).to(torch.float64), rtol=1e-13, atol=1e-15)
    removed = compute_edits(adapter, source, [Edit(layer=0, head=2, circuit="ov", components=[1], scale=0.0)])
    weights, _, _ = _dense(adapter, Overlay(source, removed.tensors), 0)
    before = ov_svd(adapter.layer_weights(source, 0, dtype=torch.float64))
    v = before.V[2][:, 1]
    assert float((weights.W_V[2] @ (weights.W_O[2] @ v)).norm()) < 1e-12 * float(before.S[2, 0])


def test_a_zero_norm_weight_is_refused_for_an_exact_edit():
    model = tiny_model("llama")
    with torch.no_grad():
        model.model.layers[1].input_layernorm.weight[5] = 0.0
    adapter, source = adapter_for(model.config), ModelTensors(model)
    with pytest.raises(UserError, match="norm weight of exactly zero"):
        compute_edits(adapter, source, [Edit(layer=1, head=0, circuit="qk", components=[0], scale=2.0)])
    compute_edits(adapter, source, [Edit(layer=1, head=0, circuit="ov", components=[0], scale=2.0)])  # W_O: no input gain


def test_casting_refuses_an_overflow_and_reports_lost_precision():
    model = tiny_model("llama")
    with torch.no_grad():
        model.model.layers[1].self_attn.o_proj.weight.mul_(30000.0)  # entries of several hundred: fine in float16
    big = ModelTensors(model)
    name = "model.layers.1.self_attn.o_proj.weight"
    dtypes = {name: torch.float32}
    huge = compute_edits(adapter_for(model.config), big, [Edit(layer=1, head=1, circuit="ov", components=[0], scale=100.0)])
    with pytest.raises(UserError, match=r"edits\[0\]\.scale: .*overflow float16"):
        cast_for_output(huge, dtypes, torch.float16)
    adapter, source = parts("llama")
    tiny = compute_edits(adapter, source, [Edit(layer=1, head=1, circuit="ov", components=[5], scale=1.0001)])
    cast, warnings = cast_for_output(tiny, dtypes, torch.bfloat16)
    assert cast[name].dtype == torch.bfloat16
    assert len(warnings) == 1 and "casting to bfloat16 loses" in warnings[0]
    _, none = cast_for_output(tiny, dtypes, None)  # the checkpoint's own float32
    assert none == []


def test_near_tied_components_are_ambiguous_only_when_their_run_is_scaled_unevenly():
    s = torch.tensor([5.0, 3.0, 3.0 * (1 - 1e-4), 3.0 * (1 - 2e-4), 1.0], dtype=torch.float64)  # 1, 2, 3 tied
    assert ambiguous_components({1: 2.0}, s) == [1]
    assert ambiguous_components({1: 2.0, 2: 2.0, 3: 2.0}, s) == []
    assert ambiguous_components({0: 2.0, 4: 0.0}, s) == []
    assert sorted(ambiguous_components({2: 0.0, 3: 2.0}, s)) == [2, 3]
