"""Llama family: Llama, Mistral, Qwen2 (q/k/v biases), Qwen3 (per-head QK-norm), SmolLM2.

Separate q/k/v/o nn.Linear projections (weights stored out×in), pre-attention RMSNorm,
grouped-query attention, RoPE applied after the projections.
"""

from __future__ import annotations

from th_edit.arch.base import (
    MAX_CONFIG_COUNT,
    MAX_CONFIG_SIZE,
    Adapter,
    ArchInfo,
    ConfigInt,
    NormSpec,
    Slot,
    linear_cols,
    linear_rows,
    vector_range,
)


class LlamaAdapter(Adapter):
    family = "llama"
    model_types = ("llama", "mistral", "qwen2", "qwen3")
    norm_offset = 0.0  # RMSNorm multiplies by γ
    config_ints = (
        *Adapter.config_ints,
        ConfigInt(("num_key_value_heads",), MAX_CONFIG_COUNT, nullable=True),  # null: one per query head
        ConfigInt(("head_dim",), MAX_CONFIG_SIZE, nullable=True),  # null: hidden_size / num_attention_heads
    )

    def _prefix(self, layer: int) -> str:
        return f"model.layers.{layer}"

    def _has_qk_norm(self) -> bool:
        return self.config.model_type == "qwen3"

    def info(self) -> ArchInfo:
        return ArchInfo(
            family=self.family, model_type=self.config.model_type, n_layers=self.n_layers, n_heads=self.n_heads,
            n_kv_heads=self.n_kv_heads, d_model=self.d_model, d_head=self.d_head,
            norm="RMSNorm (1+w)" if self.norm_offset else "RMSNorm",
            rotary="RoPE", qk_norm=self._has_qk_norm(), post_attention_norm=self.output_norm(0) is not None,
            parallel_residual=False, tied_embeddings=bool(getattr(self.config, "tie_word_embeddings", False)),
            vocab_size=self.config.vocab_size,
        )

    def _attn(self, layer: int) -> str:
        return f"{self._prefix(layer)}.self_attn"

    def q_slot(self, layer: int, head: int) -> Slot:
        return linear_rows(f"{self._attn(layer)}.q_proj.weight", head * self.d_head, (head + 1) * self.d_head)

    def k_slot(self, layer: int, kv_head: int) -> Slot:
        return linear_rows(f"{self._attn(layer)}.k_proj.weight", kv_head * self.d_head, (kv_head + 1) * self.d_head)

    def v_slot(self, layer: int, kv_head: int) -> Slot:
        return linear_rows(f"{self._attn(layer)}.v_proj.weight", kv_head * self.d_head, (kv_head + 1) * self.d_head)

    def o_slot(self, layer: int, head: int) -> Slot:
        return linear_cols(f"{self._attn(layer)}.o_proj.weight", head * self.d_head, (head + 1) * self.d_head)

    def bias_slots(self, layer: int, head: int) -> tuple[Slot | None, Slot | None, Slot | None]:
        # Bias presence varies within the family (Qwen2 has q/k/v biases, Llama only with
        # attention_bias=True); the config says which.
        if not self._has_qkv_bias():
            return None, None, None
        group = self.kv_group(head)
        attn = self._attn(layer)
        return (
            vector_range(f"{attn}.q_proj.bias", head * self.d_head, (head + 1) * self.d_head),
            vector_range(f"{attn}.k_proj.bias", group * self.d_head, (group + 1) * self.d_head),
            vector_range(f"{attn}.v_proj.bias", group * self.d_head, (group + 1) * self.d_head),
        )

    def _has_qkv_bias(self) -> bool:
        if self.config.model_type == "qwen2":
            return True
        return bool(getattr(self.config, "attention_bias", False))

    def o_bias(self, layer: int) -> str | None:
        if self.config.model_type in ("qwen2",) or not getattr(self.config, "attention_bias", False):
            return None
        return f"{self._attn(layer)}.o_proj.bias"

    def input_norm(self, layer: int) -> NormSpec:
        return NormSpec("rmsnorm", f"{self._prefix(layer)}.input_layernorm.weight", None,
                        float(self.config.rms_norm_eps), self.norm_offset)

    def qk_norm(self, layer: int) -> tuple[NormSpec, NormSpec] | None:
        if not self._has_qk_norm():
            return None
        eps = float(self.config.rms_norm_eps)
        attn = self._attn(layer)
        return (NormSpec("rmsnorm", f"{attn}.q_norm.weight", None, eps, self.norm_offset),
                NormSpec("rmsnorm", f"{attn}.k_norm.weight", None, eps, self.norm_offset))

    def attention_module(self, layer: int) -> str:
        return self._attn(layer)

    def output_projection_module(self, layer: int) -> str:
        return f"{self._attn(layer)}.o_proj"

    def input_norm_module(self, layer: int) -> str:
        return f"{self._prefix(layer)}.input_layernorm"

    def decoder_layer_module(self, layer: int) -> str:
        return self._prefix(layer)

    def embedding_param(self) -> str:
        return "model.embed_tokens.weight"

    def unembedding_param(self) -> str:
        return "lm_head.weight"

    def final_norm(self) -> NormSpec:
        # Gemma's final norm multiplies by (1 + γ) like its other norms (norm_offset).
        return NormSpec("rmsnorm", "model.norm.weight", None, float(self.config.rms_norm_eps), self.norm_offset)

    def final_norm_module(self) -> str:
        return "model.norm"
