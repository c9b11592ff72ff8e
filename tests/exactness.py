"""Check an adapter's effective per-head matrices against the module's own forward pass.

Used for tiny random models (every family) and for the real offline models. The test side knows
the transformers module layout independently of th_edit, so a wrong slice in an adapter cannot
be mirrored here.
"""

from __future__ import annotations

import torch

from th_edit.arch import Adapter
from th_edit.checkpoint import ModelTensors, TensorSource

TOL = 1e-4


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.double() - expected.double()).norm() / expected.double().norm()).item()


def rel_err_up_to_scale(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Error after the best positive scale per vector (last dim): QK-norm and post-norms
    multiply by a positive per-token factor that the effective matrices leave out."""
    a, e = actual.double(), expected.double()
    scale = (a * e).sum(-1, keepdim=True) / (a * a).sum(-1, keepdim=True)
    if not (scale > 0).all():  # a norm never flips signs: a negative fit is a mismatch
        return float("inf")
    return rel_err(a * scale, e)


# How transformers' own attention modules compute q, k, v, per model_type: written here from
# transformers' modeling code, not read from th_edit's adapters, so that a wrong adapter cannot be
# mirrored. A fused projection's name and the layout of its output axis, or None for separate
# q_proj/k_proj/v_proj (read after q_norm/k_norm where the module has them). A model_type missing
# here fails the check: a new family needs its layout written down.
FUSED_QKV: dict[str, tuple[str, str] | None] = {
    "gpt2": ("c_attn", "blocks"),  # [Q | K | V]
    "gpt_neox": ("query_key_value", "per_head"),  # view(B, T, H, 3·dh): [h: q k v]
    "llama": None, "mistral": None, "qwen2": None, "qwen3": None, "gemma3_text": None,
    "mixtral": None, "qwen2_moe": None, "qwen3_moe": None, "olmoe": None, "smollm3": None, "granite": None,
    "phi3": ("qkv_proj", "blocks"),  # q, k, v = qkv[..., :H·dh], the next KV·dh, the rest
    "gemma2": None, "olmo": None, "olmo2": None, "cohere": None, "cohere2": None,
}


# Where a norm follows the attention before the residual (the same name is Llama's pre-MLP norm).
POST_ATTENTION_NORM = {"gemma3_text": "post_attention_layernorm", "gemma2": "post_attention_layernorm",
                       "olmo2": "post_attention_layernorm"}
# Sequential blocks: the module whose input is the residual stream after the attention sublayer,
# so that what the heads add to the residual (multipliers included) is checked, not only the
# attention module's output.
RESIDUAL_AFTER_ATTENTION = {
    "llama": "post_attention_layernorm", "mistral": "post_attention_layernorm", "qwen2": "post_attention_layernorm",
    "qwen3": "post_attention_layernorm", "gemma3_text": "pre_feedforward_layernorm",
    "mixtral": "post_attention_layernorm", "qwen2_moe": "post_attention_layernorm",
    "qwen3_moe": "post_attention_layernorm", "olmoe": "post_attention_layernorm",
    "smollm3": "post_attention_layernorm", "granite": "post_attention_layernorm", "phi3": "post_attention_layernorm",
    "gemma2": "pre_feedforward_layernorm", "olmo": "post_attention_layernorm", "olmo2": "mlp",
}
# QK-norms over all heads at once: one per-token scale shared by every head of the layer.
SHARED_QK_NORM = {"olmoe", "olmo2"}

# ---- Phi-1/2, StableLM, GPT-J, Falcon, OPT (from transformers' modeling_<family>.py)
FUSED_QKV |= {"phi": None, "stablelm": None, "gptj": None, "opt": None}
# Falcon's config picks its split of query_key_value: [g: q·(H/G) k v] for new_decoder_architecture,
# [Q | K | V] (one KV head) for multi_query, else view(..., H, 3, dh): [h: q k v].
FUSED_QKV_BY_CONFIG = {
    "falcon": lambda c: ("query_key_value", "grouped" if c.new_decoder_architecture else "blocks" if c.multi_query
                         else "per_head"),
}
QK_NORM_MODULES = {"stablelm": ("q_layernorm", "k_layernorm")}  # StableLmLayerNormPerHead: [B, H, T, dh]
# Sequential blocks only: the module is absent from a parallel one (StableLM use_parallel_residual,
# Falcon parallel_attn), which the check then skips.
RESIDUAL_AFTER_ATTENTION |= {"stablelm": "post_attention_layernorm", "falcon": "post_attention_layernorm",
                             "opt": "final_layer_norm"}


def _fused(config) -> tuple[str, str] | None:
    if config.model_type in FUSED_QKV_BY_CONFIG:
        return FUSED_QKV_BY_CONFIG[config.model_type](config)
    return FUSED_QKV[config.model_type]


def _split_fused(fused: torch.Tensor, layout: str, H: int, KV: int, dh: int) -> tuple[torch.Tensor, ...]:
    B, T = fused.shape[:2]
    if layout == "blocks":
        q, k, v = fused.split([H * dh, KV * dh, KV * dh], dim=-1)
        return q.view(B, T, H, dh), k.view(B, T, KV, dh), v.view(B, T, KV, dh)
    if layout == "per_head":
        return fused.view(B, T, H, 3 * dh).chunk(3, dim=-1)
    if layout == "grouped":  # [g: q·(H/KV) k v]
        grouped = fused.view(B, T, KV, H // KV + 2, dh)
        return grouped[:, :, :, :-2].flatten(2, 3), grouped[:, :, :, -2], grouped[:, :, :, -1]
    raise ValueError(layout)


def _per_head(t: torch.Tensor, T: int, heads: int, dh: int) -> torch.Tensor:
    """[B, T, heads, dh] from a module output [B, T, heads·dh], [B, T, heads, dh] or [B, heads, T, dh]."""
    if t.dim() == 4:
        return t if t.shape[1] == T else t.transpose(1, 2)
    return t.unflatten(-1, (heads, dh))


def _module_qkv(model, adapter: Adapter, captured: dict) -> tuple[torch.Tensor, ...]:
    """The module's own pre-rotary q, k, v as [B, T, heads, dh] (k, v per KV head)."""
    T = captured["x"].shape[1]
    H, KV, dh = adapter.n_heads, adapter.n_kv_heads, adapter.d_head
    fused = _fused(model.config)
    if fused is not None:
        return _split_fused(captured[fused[0]], fused[1], H, KV, dh)
    q = captured["q_norm"] if "q_norm" in captured else captured["q_proj"]
    k = captured["k_norm"] if "k_norm" in captured else captured["k_proj"]
    return _per_head(q, T, H, dh), _per_head(k, T, KV, dh), _per_head(captured["v_proj"], T, KV, dh)


def _hook_targets(model, adapter: Adapter, layer: int) -> dict[str, str]:
    attn = adapter.attention_module(layer)
    targets = {"x": adapter.input_norm_module(layer), "attn": attn, "z": adapter.output_projection_module(layer)}
    names = dict(model.named_modules())
    fused = _fused(model.config)
    for sub in (fused[0],) if fused else ("q_proj", "k_proj", "v_proj", "q_norm", "k_norm"):
        if f"{attn}.{sub}" in names:
            targets[sub] = f"{attn}.{sub}"
    for key, sub in zip(("q_norm", "k_norm"), QK_NORM_MODULES.get(model.config.model_type, ())):
        if f"{attn}.{sub}" in names:
            targets[key] = f"{attn}.{sub}"
    block = adapter.decoder_layer_module(layer)
    if model.config.model_type in POST_ATTENTION_NORM:
        targets["post_norm"] = f"{block}.{POST_ATTENTION_NORM[model.config.model_type]}"
    if f"{block}.{RESIDUAL_AFTER_ATTENTION.get(model.config.model_type)}" in names:
        targets["residual_after"] = f"{block}.{RESIDUAL_AFTER_ATTENTION[model.config.model_type]}"
    return targets


def check_layer(model, adapter: Adapter, input_ids: torch.Tensor, layer: int,
                source: TensorSource | None = None) -> dict[str, float]:
    """Relative errors of q, k, v, the attention output (and Gemma's post-norm output) for one layer."""
    source = source or ModelTensors(model)
    modules = dict(model.named_modules())
    captured: dict[str, torch.Tensor] = {}
    handles = []
    for key, name in _hook_targets(model, adapter, layer).items():
        def hook(module, args, output, key=key):
            if key in ("x", "z", "residual_after"):
                captured[key] = args[0].detach()
            else:
                captured[key] = (output[0] if isinstance(output, tuple) else output).detach()
        handles.append(modules[name].register_forward_hook(hook))
    try:
        with torch.no_grad():
            out = model(input_ids, output_attentions=True)
    finally:
        for handle in handles:
            handle.remove()
    pattern = out.attentions[layer].double()  # [B, H, T, T], the module's own attention pattern

    w = adapter.layer_weights(source, layer, dtype=torch.float64)
    x_tilde = adapter.normalize(captured["x"].double(), layer)
    q = torch.einsum("btd,hde->bthe", x_tilde, w.W_Q) + w.b_Q
    k = torch.einsum("btd,hde->bthe", x_tilde, w.W_K) + w.b_K
    v = torch.einsum("btd,hde->bthe", x_tilde, w.W_V) + w.b_V
    mq, mk, mv = _module_qkv(model, adapter, captured)
    groups = torch.tensor([adapter.kv_group(h) for h in range(adapter.n_heads)])
    mk, mv = mk[:, :, groups], mv[:, :, groups]  # expand KV heads to query heads
    compare = rel_err_up_to_scale if adapter.qk_norm(layer) else rel_err
    errors = {"q": compare(q, mq), "k": compare(k, mk), "v": rel_err(v, mv)}

    z = torch.einsum("bhts,bshe->bthe", pattern, v)  # each head's output with the module's pattern
    written = torch.einsum("bthe,hed->btd", z, w.W_O)  # into the residual stream (effective W_O)
    raw = written / w.out_gain if w.out_gain is not None else written
    errors["z"] = rel_err(z.flatten(2), captured["z"])
    errors["attn_out"] = rel_err(raw + w.b_O, captured["attn"])
    gain = w.out_gain if w.out_gain is not None else 1.0  # an adapter without the fold fails here
    if "post_norm" in captured:
        errors["post_norm"] = rel_err_up_to_scale(written + w.b_O * gain, captured["post_norm"])
    if "residual_after" in captured:  # what the layer's heads add to the residual stream
        compare = rel_err_up_to_scale if "post_norm" in captured else rel_err
        errors["residual"] = compare(written + w.b_O * gain, captured["residual_after"].view_as(captured["x"]) - captured["x"])
    if model.config.model_type in SHARED_QK_NORM:  # the per-token scale is one for all heads
        errors["q_scale_shared"] = _scale_spread(q, mq)
        errors["k_scale_shared"] = _scale_spread(k, mk)
    return errors


def _scale_spread(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max over tokens of the relative spread across heads of the best per-(token, head) scale."""
    a, e = actual.double(), expected.double()
    scale = (a * e).sum(-1) / (a * a).sum(-1)  # [B, T, H]
    return ((scale.amax(-1) - scale.amin(-1)) / scale.abs().amax(-1)).max().item()
