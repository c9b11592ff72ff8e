"""Effective per-head matrices reproduce each family's own forward pass (docs/method.md#folding-norms)."""

import pytest
import torch
from exactness import TOL, check_layer
from tiny import FAMILIES, VOCAB, tiny_config, tiny_model

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


# Options of a supported family that th-edit cannot decompose exactly: refused, naming why.
REFUSED = [
    ("olmoe", {"clip_qkv": 8.0}, "clip_qkv=8.0 is not supported: clamping q, k and v is not linear"),
]


@pytest.mark.parametrize("model_type, option, message", REFUSED)
def test_unsupported_options_are_refused(model_type, option, message):
    with pytest.raises(UserError, match=message):
        adapter_for(tiny_config(model_type, **option))


@pytest.mark.cli
def test_an_unsupported_option_is_one_error_line(tmp_path):
    from click.testing import CliRunner

    from th_edit.cli import main

    model_type, option, message = REFUSED[0]
    tiny_model(model_type).save_pretrained(tmp_path / "m")
    config = tmp_path / "m" / "config.json"
    config.write_text(config.read_text().replace('"clip_qkv": null', f'"clip_qkv": {option["clip_qkv"]}'))
    result = CliRunner().invoke(main, ["inspect", str(tmp_path / "m")])
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert result.output.startswith("error: ") and message in result.output


def _first_layer_errors(model_type: str, break_adapter) -> dict[str, float]:
    model = tiny_model(model_type)
    adapter = adapter_for(model.config)
    break_adapter(adapter)
    input_ids = torch.randint(0, VOCAB, (1, 6), generator=torch.Generator().manual_seed(2))
    return check_layer(model, adapter, input_ids, 0)


def test_granite_residual_multiplier_is_checked():
    """What the heads add to the residual stream is read from the model: leaving Granite's
    residual_multiplier out of W_O fails, though the attention module's own output still matches."""
    errors = _first_layer_errors("granite", lambda a: setattr(a, "out_gain", lambda source, layer, dtype=None: None))
    assert errors["residual"] > 1e-2 and errors["attn_out"] < TOL


def test_per_head_qk_layernorm_mean_removal_is_checked():
    """Cohere's QK-norm is a LayerNorm: folding it as an RMSNorm (no mean removal) fails."""
    from dataclasses import replace

    def as_rms(adapter):
        norms = adapter.qk_norm(0)
        adapter.qk_norm = lambda layer: tuple(replace(n, kind="rmsnorm") for n in norms)
    assert _first_layer_errors("cohere", as_rms)["q"] > 1e-2


def test_olmo2_post_norm_is_checked():
    assert _first_layer_errors("olmo2", lambda a: setattr(a, "output_norm", lambda layer: None))["post_norm"] > 1e-2


def test_shared_qk_norm_scale_is_one_per_token():
    """OLMo-2 / OLMoE: the fitted per-(token, head) scale of q and k is the same for every head."""
    for model_type in ("olmo2", "olmoe"):
        errors = _first_layer_errors(model_type, lambda a: None)
        assert errors["q_scale_shared"] < TOL and errors["k_scale_shared"] < TOL


@pytest.mark.parametrize("layout, kv_heads", [("blocks", 2), ("blocks", 1), ("per_head", 6), ("grouped", 2), ("grouped", 1)])
def test_fused_qkv_layouts_match_the_tests_own_split(layout, kv_heads):
    """Every fused layout a spec can name (GPT-2/Phi-3 blocks, Falcon multi-query, GPT-NeoX per head,
    Falcon's grouped new_decoder_architecture) puts each head's q, k, v where the test-side split of
    the fused output (exactness._split_fused, written from transformers' code) finds them."""
    from dataclasses import replace

    from exactness import _split_fused
    from transformers import LlamaConfig

    from th_edit.arch.families import LLAMA
    from th_edit.arch.family import adapter_type

    H, dh = 6, 8
    spec = replace(LLAMA, model_types=("test",), qkv="qkv", qkv_layout=layout, qkv_bias=True)
    adapter = adapter_type(spec)(LlamaConfig(hidden_size=H * dh, num_attention_heads=H, num_key_value_heads=kv_heads,
                                             num_hidden_layers=1, intermediate_size=8, vocab_size=8))
    width = (H + 2 * kv_heads) * dh
    positions = torch.arange(width, dtype=torch.float64).view(1, 1, width)  # each output index, as a value
    q, k, v = _split_fused(positions, layout, H, kv_heads, dh)
    source = {"model.layers.0.self_attn.qkv.bias": positions[0, 0]}
    for head in range(H):
        q_bias, k_bias, v_bias = (slot.read(source) for slot in adapter.bias_slots(0, head))
        group = adapter.kv_group(head)
        assert torch.equal(q_bias, q[0, 0, head]) and torch.equal(k_bias, k[0, 0, group]), (layout, head)
        assert torch.equal(v_bias, v[0, 0, group]), (layout, head)
        assert adapter.q_slot(0, head).index[0] == slice(int(q[0, 0, head, 0]), int(q[0, 0, head, -1]) + 1)


# ---- Phi-1/2, StableLM, GPT-J, Falcon, OPT: the layouts tiny.py's configs leave off

LAYOUT_VARIANTS = [
    ("falcon", {"new_decoder_architecture": False, "multi_query": True}),  # Falcon-7B: [Q | K | V], one KV head
    ("falcon", {"new_decoder_architecture": False, "multi_query": False, "num_kv_heads": 4,  # Falcon-RW: [h: q k v],
                "num_key_value_heads": 4, "parallel_attn": False}),  # sequential block (setattr skips post_init)
    ("falcon", {"new_decoder_architecture": False, "multi_query": True, "alibi": True}),  # ALiBi score bias
    ("falcon", {"num_ln_in_parallel_attn": 1}),  # new_decoder_architecture with one shared input_layernorm
    ("stablelm", {"use_parallel_residual": True, "qk_layernorm": False, "use_qkv_bias": False}),
    ("gptj", {"rotary_dim": 12}),  # RoPE on every dim
    ("opt", {"enable_bias": False}),
]


@pytest.mark.parametrize("model_type, overrides", LAYOUT_VARIANTS)
def test_layout_variants_reproduce_forward(model_type, overrides):
    model = tiny_model(model_type, **overrides)
    adapter = adapter_for(model.config)
    input_ids = torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(1))
    for layer in range(adapter.n_layers):
        errors = check_layer(model, adapter, input_ids, layer)
        assert max(errors.values()) < TOL, (layer, errors)
    if overrides.get("parallel_attn") is False:  # the sequential block's residual check ran
        assert "residual" in errors


def test_falcon_layouts_are_described():
    assert adapter_for(tiny_model("falcon", alibi=True).config).info().rotary.startswith("none (ALiBi")
    info = adapter_for(tiny_model("falcon", new_decoder_architecture=False, multi_query=True).config).info()
    assert (info.n_kv_heads, info.parallel_residual) == (1, True)
    info = adapter_for(tiny_model("gptj").config).info()
    assert info.rotary == "partial RoPE (6 of 12 dims, interleaved pairs)" and info.parallel_residual


def test_stablelm_qk_layernorm_removes_each_heads_mean():
    """StableLM's per-head QK LayerNorm: W_Q, W_K fold W (I − 11ᵀ/dh) diag(γ_h) — the forward check
    sees it only up to the per-token scale, so check the mean removal directly: with γ_h = 1 every
    column block sums to zero over the head's dims."""
    model = tiny_model("stablelm")
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "q_layernorm" in name or "k_layernorm" in name:
                param.fill_(1.0)
    w = adapter_for(model.config).layer_weights(ModelTensors(model), 0, dtype=torch.float64)
    for matrix in (w.W_Q, w.W_K):
        assert matrix.sum(-1).abs().max() < 1e-10 * matrix.abs().max()
    assert w.b_Q.sum(-1).abs().max() < 1e-10 and w.b_K.sum(-1).abs().max() < 1e-10


@pytest.mark.parametrize("model_type, overrides, fragment", [
    ("phi", {"qk_layernorm": True}, "phi with qk_layernorm=True is not supported"),
    ("opt", {"do_layer_norm_before": False}, "opt with do_layer_norm_before=False is not supported: each head's output"),
    ("opt", {"word_embed_proj_dim": 32}, "opt with word_embed_proj_dim=32 (hidden_size 48) is not supported"),
    ("opt", {"layer_norm_elementwise_affine": False}, "opt with layer_norm_elementwise_affine=False is not supported"),
    ("falcon", {"parallel_attn": False}, "falcon with new_decoder_architecture and parallel_attn=false is not supported"),
])
@pytest.mark.cli
def test_unsupported_options_are_one_error_line(tmp_path, model_type, overrides, fragment):
    from test_damaged_inputs import edit_config, one_line_error, run

    tiny_model(model_type).save_pretrained(tmp_path)
    edit_config(tmp_path, **overrides)
    one_line_error(run("inspect", tmp_path), fragment)
@pytest.mark.parametrize("model_type, key", [("mixtral", "num_local_experts"), ("qwen2_moe", "num_experts"),
                                             ("qwen3_moe", "moe_intermediate_size"), ("olmoe", "num_experts_per_tok")])
def test_expert_counts_are_checked_before_transformers_reads_them(model_type, key):
    from th_edit.arch import adapter_class

    with pytest.raises(UserError, match=f"{key} must be at most"):
        adapter_class(model_type).check_config({key: 10**12}, "config.json")
    adapter_class(model_type).check_config(tiny_config(model_type).to_dict(), "config.json")  # the tiny one passes
