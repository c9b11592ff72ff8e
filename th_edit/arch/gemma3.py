"""Gemma 3 (text): Llama-like layout with (1+w) RMSNorms, per-head QK-norm, a post-attention
norm on the attention output, head_dim independent of d_model/n_heads, and GQA."""

from __future__ import annotations

from th_edit.arch.base import NormSpec
from th_edit.arch.llama import LlamaAdapter


class Gemma3Adapter(LlamaAdapter):
    family = "gemma3"
    model_types = ("gemma3_text",)
    norm_offset = 1.0  # Gemma's RMSNorm multiplies by (1 + γ)

    def _has_qk_norm(self) -> bool:
        return True

    def _has_qkv_bias(self) -> bool:
        return bool(getattr(self.config, "attention_bias", False))

    def o_bias(self, layer: int) -> str | None:
        return f"{self._attn(layer)}.o_proj.bias" if getattr(self.config, "attention_bias", False) else None

    def output_norm(self, layer: int) -> NormSpec | None:
        # What a head writes reaches the residual stream through this norm: its weight is part
        # of the write direction (its per-token scale, shared by all heads, is not).
        return NormSpec("rmsnorm", f"{self._prefix(layer)}.post_attention_layernorm.weight", None,
                        float(self.config.rms_norm_eps), self.norm_offset)
