"""Composition scores (METHOD.md §3) against brute-force dense d×d products on tiny models of every family."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from tiny import FAMILIES, tiny_model

from th_edit.arch import adapter_for
from th_edit.channels import (
    HeadId,
    composition_scores,
    head_factors,
    parse_head,
    parse_pair,
    resolve_pair,
)
from th_edit.channels import composition as composition_module
from th_edit.checkpoint import ModelTensors
from th_edit.errors import UserError
from th_edit.linalg import single_threaded

MODES = ("q", "k", "v")


@pytest.fixture(autouse=True)
def one_thread():
    """Thousands of tiny dense products: on a shared 2-core machine OpenMP's barriers make them crawl."""
    with single_threaded():
        yield


@functools.lru_cache(maxsize=None)
def model_parts(model_type: str):
    model = tiny_model(model_type)
    adapter = adapter_for(model.config)
    source = ModelTensors(model)
    weights = [adapter.layer_weights(source, layer, dtype=torch.float64) for layer in range(adapter.n_layers)]
    return adapter, source, weights


@functools.lru_cache(maxsize=None)
def computed(model_type: str, dtype: torch.dtype = torch.float64):
    adapter, source, _ = model_parts(model_type)
    factors = head_factors(adapter, source, dtype=dtype)
    return factors, composition_scores(factors, dtype=dtype)


def dense_ov(weights, head: HeadId) -> torch.Tensor:
    w = weights[head.layer]
    return w.W_V[head.head] @ w.W_O[head.head]


def dense_qk(weights, head: HeadId) -> torch.Tensor:
    w = weights[head.layer]
    return w.W_Q[head.head] @ w.W_K[head.head].T


def dense_receiver(weights, head: HeadId, mode: str) -> torch.Tensor:
    """The d×d matrix a sender's output meets: QK (q), QKᵀ (k) or OV (v) of the receiver."""
    return {"q": dense_qk, "k": lambda w, h: dense_qk(w, h).T, "v": dense_ov}[mode](weights, head)


def dense_scores(weights, sender: HeadId, receiver_matrix: torch.Tensor, rank: int) -> tuple[float, torch.Tensor]:
    """Brute force: the Elhage score and ‖v_kᵀ M‖/‖M‖ for the top `rank` right singular vectors of OV_A."""
    ov = dense_ov(weights, sender)
    full = torch.linalg.norm(ov @ receiver_matrix) / (torch.linalg.norm(ov) * torch.linalg.norm(receiver_matrix))
    write = torch.linalg.svd(ov).Vh[:rank]  # rows v_kᵀ
    components = torch.linalg.vector_norm(write @ receiver_matrix, dim=-1) / torch.linalg.norm(receiver_matrix)
    return float(full), components


def ordered_pairs(adapter):
    heads = [HeadId(layer, head) for layer in range(adapter.n_layers) for head in range(adapter.n_heads)]
    return [(a, b) for a in heads for b in heads if a.layer < b.layer]


@functools.lru_cache(maxsize=None)
def brute_force(model_type: str, mode: str, transpose_k: bool = True):
    """Dense full and per-component scores of every ordered pair: {(A, B): (full, components)}."""
    adapter, _, weights = model_parts(model_type)
    rank = min(adapter.d_model, adapter.d_head)
    out = {}
    for sender, receiver in ordered_pairs(adapter):
        matrix = dense_receiver(weights, receiver, mode if transpose_k else ("q" if mode == "k" else mode))
        out[sender, receiver] = dense_scores(weights, sender, matrix, rank)
    return out


# ----------------------------------------------------------------------------------------------
# Exactness


@pytest.mark.parametrize("model_type", FAMILIES)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-6)])
def test_every_mode_matches_dense_products(model_type, dtype, tol):
    """Full and per-component scores of every ordered pair, q/k/v, against d×d products in float64."""
    _, scores = computed(model_type, dtype)
    for mode in MODES:
        full, components = scores.full_scores(mode), scores.component_scores(mode)
        for (a, b), (dense_full, dense_components) in brute_force(model_type, mode).items():
            assert abs(float(full[a.layer, a.head, b.layer, b.head]) - dense_full) < tol, (mode, a, b)
            ours = components[a.layer, a.head, :, b.layer, b.head].double()
            assert torch.allclose(ours, dense_components, rtol=0, atol=tol), (mode, a, b)


@pytest.mark.parametrize("model_type", FAMILIES)
def test_full_score_is_the_s_weighted_mean_of_component_scores(model_type):
    """full² = Σ s_k² C_k² / Σ s_k², with the full score from dense products, not from the components."""
    factors, scores = computed(model_type)
    checked = 0
    for mode in MODES:
        for (a, b), (dense_full, _) in brute_force(model_type, mode).items():
            s = factors.ov.S[a.layer, a.head]
            C = scores.pair(a, b, mode).components
            recombined = math.sqrt(float((s.square() * C.square()).sum() / s.square().sum()))
            assert abs(recombined - dense_full) < 1e-12
            # the identity is not trivially true: weighting by s_k instead of s_k² breaks it
            wrong = math.sqrt(float((s * C.square()).sum() / s.sum()))
            checked += abs(wrong - dense_full) > 1e-6
    assert checked > 0


@pytest.mark.parametrize("model_type", ["gpt2", "llama", "gemma3_text"])
def test_shares_are_each_components_part_of_the_dense_composition(model_type):
    """share_k = ‖s_k u_k v_kᵀ M‖_F² / ‖OV_A M‖_F², from dense products; the shares sum to 1."""
    adapter, _, weights = model_parts(model_type)
    _, scores = computed(model_type)
    for mode in MODES:
        for a, b in ordered_pairs(adapter)[::7]:
            ov, matrix = dense_ov(weights, a), dense_receiver(weights, b, mode)
            U, S, Vh = torch.linalg.svd(ov)
            rank = min(adapter.d_model, adapter.d_head)
            dense = torch.stack([torch.linalg.norm(S[k] * torch.outer(U[:, k], Vh[k]) @ matrix) ** 2 for k in range(rank)])
            dense = dense / torch.linalg.norm(ov @ matrix) ** 2
            shares = scores.pair(a, b, mode).shares
            assert torch.allclose(shares, dense, rtol=0, atol=1e-10), (mode, a, b)
            assert abs(float(shares.sum()) - 1) < 1e-12


@pytest.mark.parametrize("model_type", FAMILIES)
@pytest.mark.parametrize("mode", MODES)
def test_receiver_resolution_cosines_and_identity(model_type, mode):
    """c_kj = |v_kᵀ a_j| (q), |v_kᵀ b_j| (k), |v_kᵀ u'_j| (v) against dense SVDs, and
    C_k² = Σ_j σ_j² c_kj² / Σ_j σ_j² against the all-pairs scores."""
    adapter, _, weights = model_parts(model_type)
    factors, scores = computed(model_type)
    rank = factors.rank
    for sender, receiver in ordered_pairs(adapter)[::3]:
        resolution = resolve_pair(factors, sender, receiver, mode)
        write = torch.linalg.svd(dense_ov(weights, sender)).Vh[:rank]
        receiver_dense = torch.linalg.svd(dense_ov(weights, receiver) if mode == "v" else dense_qk(weights, receiver))
        read = {"q": receiver_dense.U[:, :rank], "k": receiver_dense.Vh[:rank].T, "v": receiver_dense.U[:, :rank]}[mode]
        # A zero singular value's direction is arbitrary (StableLM's QK LayerNorm removes each head's
        # mean: W_Q, W_K have rank d_head − 1): compare the directions that carry something.
        carried = receiver_dense.S[:rank] > 1e-9 * receiver_dense.S[0]
        assert torch.allclose(resolution.cosines[:, carried], (write @ read).abs()[:, carried], atol=1e-10)
        assert torch.allclose(resolution.receiver_singular_values, receiver_dense.S[:rank], rtol=1e-10)
        expected = scores.pair(sender, receiver, mode).components
        assert torch.allclose(resolution.component_scores(), expected, atol=1e-12)
        assert torch.allclose(resolution.shares().sum(-1), expected.square(), atol=1e-12)


def test_links_read_as_a_channel():
    factors, _ = computed("llama")
    resolution = resolve_pair(factors, HeadId(0, 1), HeadId(2, 4), "q")
    best = resolution.links(1)[0]
    k, j = divmod(int(resolution.cosines.argmax()), resolution.cosines.shape[1])
    assert (best.sender_component, best.receiver_component) == (k, j)
    assert str(best).startswith(f"sender 0.1 component {k} → receiver 2.4 QK component {j} (cosine ")
    by_share = resolution.links(1, by="share", sender_component=2)[0]
    assert by_share.sender_component == 2
    assert by_share.share == pytest.approx(float(resolution.shares()[2].max()))
    assert resolve_pair(factors, HeadId(0, 1), HeadId(2, 4), "v").links(1)[0].receiver_matrix == "OV"


# ----------------------------------------------------------------------------------------------
# Conventions


def test_only_earlier_layers_send():
    adapter, _, _ = model_parts("gpt2")
    factors, scores = computed("gpt2")
    L = adapter.n_layers
    sender_layer = torch.arange(L)[:, None, None, None, None]
    receiver_layer = torch.arange(L)[None, None, None, :, None]
    valid = (sender_layer < receiver_layer).expand(L, adapter.n_heads, factors.rank, L, adapter.n_heads)
    for mode in MODES:
        components = scores.component_scores(mode)
        assert torch.isnan(components[~valid]).all() and not torch.isnan(components[valid]).any()
        full = scores.full_scores(mode)
        assert torch.equal(torch.isnan(full), ~valid[:, :, 0])
        assert torch.isnan(scores.component_z(mode)[..., 0, :]).all()  # layer-0 receivers have no senders
    for sender, receiver in [(HeadId(1, 0), HeadId(1, 2)), (HeadId(2, 0), HeadId(1, 0))]:
        with pytest.raises(UserError, match="below the receiver"):
            scores.pair(sender, receiver, "q")
        with pytest.raises(UserError, match="below the receiver"):
            resolve_pair(factors, sender, receiver, "q")
    top = scores.top_components(HeadId(2, 1), "v", n=1000)
    assert len(top) == 2 * adapter.n_heads * factors.rank
    assert all(item.sender.layer < 2 for item in top)
    assert [item.score for item in top] == sorted((item.score for item in top), reverse=True)


def test_gqa_query_heads_get_their_own_scores():
    """Llama tiny: 6 query heads in 2 KV groups. Heads of one group share W_K/W_V but not W_Q/W_O."""
    adapter, _, weights = model_parts("llama")
    factors, scores = computed("llama")
    assert factors.kv_group == tuple(adapter.kv_group(h) for h in range(adapter.n_heads)) == (0, 0, 0, 1, 1, 1)
    # the shared-group fast path is the one under test for k and v
    assert composition_module._layer_reader(factors, 1, "k", torch.float64).mix is not None
    sender, (first, second) = HeadId(0, 4), (HeadId(2, 0), HeadId(2, 1))  # two query heads of group 0
    for mode in MODES:
        a = scores.pair(sender, first, mode).components
        b = scores.pair(sender, second, mode).components
        assert (a - b).abs().max() > 1e-3, mode
        for receiver, ours in ((first, a), (second, b)):
            _, dense = dense_scores(weights, sender, dense_receiver(weights, receiver, mode), factors.rank)
            assert torch.allclose(ours, dense, atol=1e-12)
    # senders of one group differ too (their own W_O)
    assert (scores.pair(HeadId(0, 0), first, "v").components - scores.pair(HeadId(0, 1), first, "v").components
            ).abs().max() > 1e-3


def test_shared_group_path_equals_per_head_path(monkeypatch):
    factors, shared = computed("qwen2")
    monkeypatch.setattr(type(factors), "group_is_contiguous", lambda self: False)
    assert composition_module._layer_reader(factors, 1, "v", torch.float64).mix is None
    direct = composition_scores(factors, dtype=torch.float64)
    for mode in MODES:
        assert torch.allclose(direct.components[mode], shared.components[mode], atol=1e-13, equal_nan=True)


def test_k_mode_uses_qk_transposed():
    """K-composition reads QK_Bᵀ: the result must match it, and must not match QK_B (the cyclic pitfall)."""
    for model_type in ("gpt2", "llama"):
        _, scores = computed(model_type)
        right = brute_force(model_type, "k")
        wrong = brute_force(model_type, "k", transpose_k=False)
        components = scores.component_scores("k")
        worst_right = worst_wrong = 0.0
        for a, b in right:
            ours = components[a.layer, a.head, :, b.layer, b.head]
            worst_right = max(worst_right, float((ours - right[a, b][1]).abs().max()))
            worst_wrong = max(worst_wrong, float((ours - wrong[a, b][1]).abs().max()))
        assert worst_right < 1e-12 and worst_wrong > 1e-2, (model_type, worst_right, worst_wrong)


def test_z_scores_against_earlier_layer_senders():
    """z of a receiver: (C − mean) / sample std over every component of every earlier-layer sender."""
    adapter, _, _ = model_parts("mistral")
    factors, scores = computed("mistral")
    receiver = HeadId(2, 3)
    for mode in MODES:
        dense = brute_force("mistral", mode)
        earlier = torch.cat([dense[a, b][1] for a, b in dense if b == receiver])
        assert earlier.numel() == 2 * adapter.n_heads * factors.rank
        mean, std = earlier.mean(), earlier.std(correction=1)
        pair = scores.pair(HeadId(1, 2), receiver, mode)
        expected = (dense[HeadId(1, 2), receiver][1] - mean) / std
        assert torch.allclose(pair.z, expected, atol=1e-9)
        z_all = scores.component_z(mode)[1, 2, :, 2, 3].double()
        assert torch.allclose(z_all, expected, atol=1e-5)  # float32 view
        # sharp: a distribution that also held layer-2 senders gives another answer
        same_layer = torch.cat([dense_scores(model_parts("mistral")[2], HeadId(2, h),
                                             dense_receiver(model_parts("mistral")[2], receiver, mode), factors.rank)[1]
                                for h in range(adapter.n_heads)])
        wider = torch.cat([earlier, same_layer])
        assert (pair.z - (dense[HeadId(1, 2), receiver][1] - wider.mean()) / wider.std()).abs().max() > 1e-3
        # full-score z: against every earlier-layer sender's full score
        fulls = torch.tensor([dense[a, b][0] for a, b in dense if b == receiver], dtype=torch.float64)
        assert pair.full_z == pytest.approx(float((dense[HeadId(1, 2), receiver][0] - fulls.mean()) / fulls.std()),
                                            abs=1e-9)


def test_baseline_is_a_random_directions_score():
    """E‖vᵀM‖² = ‖M‖_F²/d for unit v uniform on the sphere: the RMS score of random directions is 1/√d."""
    adapter, _, weights = model_parts("gemma3_text")
    _, scores = computed("gemma3_text")
    assert scores.baseline == pytest.approx(1 / math.sqrt(adapter.d_model))
    directions = torch.randn(20000, adapter.d_model, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    directions /= directions.norm(dim=-1, keepdim=True)
    matrix = dense_qk(weights, HeadId(2, 1))
    rms = (directions @ matrix).norm(dim=-1).div(torch.linalg.norm(matrix)).square().mean().sqrt()
    assert float(rms) == pytest.approx(scores.baseline, rel=0.03)


def test_tiles_and_workers_do_not_change_the_result():
    factors, reference = computed("qwen3")
    tiny_tiles = composition_scores(factors, ("v", "k"), dtype=torch.float64, tile_bytes=1024, workers=3)
    one_worker = composition_scores(factors, ("q",), dtype=torch.float64, workers=1)
    for mode, scores in (("v", tiny_tiles), ("k", tiny_tiles), ("q", one_worker)):
        assert torch.allclose(scores.components[mode], reference.components[mode], atol=1e-14, equal_nan=True)
        assert torch.allclose(scores.full[mode], reference.full[mode], atol=1e-14, equal_nan=True)
    with pytest.raises(UserError, match="not computed"):
        one_worker.full_scores("v")


def test_float32_factors_are_the_default():
    factors, scores = computed("gpt2", torch.float32)
    assert factors.dtype == torch.float32 and scores.components["q"].dtype == torch.float32
    assert scores.full["q"].dtype == torch.float64


def test_parsing_heads_and_pairs():
    assert parse_pair("20.0:23.1") == (HeadId(20, 0), HeadId(23, 1))
    assert str(parse_head(" 3.11 ")) == "3.11"
    for text in ("20.0-23.0", "20:23.0", "a.b:1.0"):
        with pytest.raises(UserError, match="layer.head|sender:receiver"):
            parse_pair(text)
    factors, _ = computed("gpt2")
    with pytest.raises(UserError, match="does not exist"):
        resolve_pair(factors, HeadId(0, 0), HeadId(3, 0), "q")
    with pytest.raises(UserError, match="mode"):
        resolve_pair(factors, HeadId(0, 0), HeadId(1, 0), "x")
