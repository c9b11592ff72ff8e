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


def _module_qkv(model, adapter: Adapter, layer: int, captured: dict) -> tuple[torch.Tensor, ...]:
    """The module's own pre-rotary q, k, v as [B, T, heads, dh] (k, v per KV head)."""
    family = adapter.family
    B, T = captured["x"].shape[:2]
    H, KV, dh, d = adapter.n_heads, adapter.n_kv_heads, adapter.d_head, adapter.d_model
    if family == "gpt2":
        q, k, v = captured["c_attn"].split(d, dim=-1)
        return q.view(B, T, H, dh), k.view(B, T, H, dh), v.view(B, T, H, dh)
    if family == "gpt_neox":
        qkv = captured["query_key_value"].view(B, T, H, 3 * dh)
        return qkv.chunk(3, dim=-1)
    v = captured["v_proj"].view(B, T, KV, dh)
    if "q_norm" in captured:  # after the per-head norm: [B, heads, T, dh] (Gemma) or [B, T, heads, dh] (Qwen3)
        q, k = captured["q_norm"], captured["k_norm"]
        if q.shape[1] != T:
            q, k = q.transpose(1, 2), k.transpose(1, 2)
        return q, k, v
    return captured["q_proj"].view(B, T, H, dh), captured["k_proj"].view(B, T, KV, dh), v


def _hook_targets(model, adapter: Adapter, layer: int) -> dict[str, str]:
    attn = adapter.attention_module(layer)
    targets = {"x": adapter.input_norm_module(layer), "attn": attn, "z": adapter.output_projection_module(layer)}
    names = dict(model.named_modules())
    for sub in ("c_attn", "query_key_value", "q_proj", "k_proj", "v_proj", "q_norm", "k_norm"):
        if f"{attn}.{sub}" in names:
            targets[sub] = f"{attn}.{sub}"
    block = adapter.input_norm_module(layer).rsplit(".", 1)[0]
    # Gemma's post_attention_layernorm really follows attention (it also has a separate
    # pre_feedforward_layernorm); Llama's same-named module is the pre-MLP norm. Decided from the
    # module layout, not from the adapter, so an adapter that forgets the post-norm is caught.
    if f"{block}.pre_feedforward_layernorm" in names:
        targets["post_norm"] = f"{block}.post_attention_layernorm"
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
            if key in ("x", "z"):
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
    mq, mk, mv = _module_qkv(model, adapter, layer, captured)
    groups = torch.tensor([adapter.kv_group(h) for h in range(adapter.n_heads)])
    mk, mv = mk[:, :, groups], mv[:, :, groups]  # expand KV heads to query heads
    compare = rel_err_up_to_scale if adapter.qk_norm(layer) else rel_err
    errors = {"q": compare(q, mq), "k": compare(k, mk), "v": rel_err(v, mv)}

    z = torch.einsum("bhts,bshe->bthe", pattern, v)  # each head's output with the module's pattern
    written = torch.einsum("bthe,hed->btd", z, w.W_O)  # into the residual stream (effective W_O)
    raw = written / w.out_gain if w.out_gain is not None else written
    errors["z"] = rel_err(z.flatten(2), captured["z"])
    errors["attn_out"] = rel_err(raw + w.b_O, captured["attn"])
    if "post_norm" in captured:
        gain = w.out_gain if w.out_gain is not None else 1.0  # an adapter without the fold fails here
        errors["post_norm"] = rel_err_up_to_scale(written + w.b_O * gain, captured["post_norm"])
    return errors
