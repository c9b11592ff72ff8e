"""Gemma 3 (text): Llama-like layout with (1+w) RMSNorms, per-head QK-norm, a post-attention
norm on the attention output, head_dim independent of d_model/n_heads, and GQA."""

from __future__ import annotations

from th_edit.arch.base import MAX_CONFIG_COUNT, ConfigInt, NormSpec, split_rope
from th_edit.arch.llama import LlamaAdapter


class Gemma3Adapter(LlamaAdapter):
    family = "gemma3"
    model_types = ("gemma3_text",)
    norm_offset = 1.0  # Gemma's RMSNorm multiplies by (1 + γ)
    # The older spelling of layer_types: every N-th layer is global (transformers divides by it).
    config_ints = (*LlamaAdapter.config_ints, ConfigInt(("sliding_window_pattern",), MAX_CONFIG_COUNT, nullable=True))

    @classmethod
    def legacy_rope_keys(cls, rope_parameters: dict) -> dict[str, object]:
        # 5.x nests RoPE by layer type; 4.x has rope_theta (+ rope_scaling) for the global layers and
        # rope_local_base_freq for the sliding-window ones (which 4.x cannot scale: a scaled local
        # RoPE has no 4.x spelling, and no Gemma 3 checkpoint uses one).
        keys: dict[str, object] = {}
        if isinstance(rope_parameters.get("full_attention"), dict):
            theta, _, scaling = split_rope(rope_parameters["full_attention"])
            keys["rope_scaling"] = scaling
            if theta is not None:
                keys["rope_theta"] = theta
        if isinstance(rope_parameters.get("sliding_attention"), dict):
            theta = rope_parameters["sliding_attention"].get("rope_theta")
            if theta is not None:
                keys["rope_local_base_freq"] = theta
        return keys

    @classmethod
    def legacy_config_keys(cls, config: dict) -> dict[str, object]:
        # transformers 4.50-4.52 derive which layers are global from sliding_window_pattern (every
        # N-th layer) instead of reading layer_types: write it when layer_types has that form.
        keys = super().legacy_config_keys(config)
        layer_types = config.get("layer_types")
        if isinstance(layer_types, list):
            for period in range(1, len(layer_types) + 2):
                if layer_types == ["full_attention" if (i + 1) % period == 0 else "sliding_attention"
                                   for i in range(len(layer_types))]:
                    keys["sliding_window_pattern"] = period
                    break
        return keys

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
