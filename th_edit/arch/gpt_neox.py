"""GPT-NeoX / Pythia: fused query_key_value nn.Linear whose output is laid out per head
([h0: q k v][h1: q k v]...), dense output projection, LayerNorm with bias, partial rotary,
usually a parallel residual (attention and MLP read the same residual)."""

from __future__ import annotations

from th_edit.arch.base import Adapter, ArchInfo, NormSpec, Slot, linear_cols, linear_rows, vector_range


class GPTNeoXAdapter(Adapter):
    family = "gpt_neox"
    model_types = ("gpt_neox",)

    def _prefix(self, layer: int) -> str:
        return f"gpt_neox.layers.{layer}"

    # GPT-NeoX's own names: 4.x overwrites rope_theta with rotary_emb_base (default 10000) and
    # partial_rotary_factor with rotary_pct (default 0.25); 5.x reads the same two.
    legacy_theta_key = "rotary_emb_base"
    legacy_partial_rotary_key = "rotary_pct"

    def _rotary_fraction(self) -> float:
        rope = getattr(self.config, "rope_parameters", None) or {}
        return float(rope.get("partial_rotary_factor", getattr(self.config, "rotary_pct", 1.0)))

    def info(self) -> ArchInfo:
        fraction = self._rotary_fraction()
        rotary = "RoPE" if fraction == 1.0 else f"partial RoPE ({int(self.d_head * fraction)} of {self.d_head} dims)"
        return ArchInfo(
            family=self.family, model_type=self.config.model_type, n_layers=self.n_layers, n_heads=self.n_heads,
            n_kv_heads=self.n_heads, d_model=self.d_model, d_head=self.d_head, norm="LayerNorm", rotary=rotary,
            qk_norm=False, post_attention_norm=False,
            parallel_residual=bool(getattr(self.config, "use_parallel_residual", True)),
            tied_embeddings=bool(getattr(self.config, "tie_word_embeddings", False)),
            vocab_size=self.config.vocab_size,
        )

    def _qkv_rows(self, which: int, head: int) -> tuple[int, int]:
        start = head * 3 * self.d_head + which * self.d_head
        return start, start + self.d_head

    def _qkv(self, layer: int, suffix: str) -> str:
        return f"{self._prefix(layer)}.attention.query_key_value.{suffix}"

    def q_slot(self, layer: int, head: int) -> Slot:
        return linear_rows(self._qkv(layer, "weight"), *self._qkv_rows(0, head))

    def k_slot(self, layer: int, kv_head: int) -> Slot:
        return linear_rows(self._qkv(layer, "weight"), *self._qkv_rows(1, kv_head))

    def v_slot(self, layer: int, kv_head: int) -> Slot:
        return linear_rows(self._qkv(layer, "weight"), *self._qkv_rows(2, kv_head))

    def o_slot(self, layer: int, head: int) -> Slot:
        return linear_cols(f"{self._prefix(layer)}.attention.dense.weight", head * self.d_head, (head + 1) * self.d_head)

    def bias_slots(self, layer: int, head: int) -> tuple[Slot | None, Slot | None, Slot | None]:
        if not getattr(self.config, "attention_bias", True):
            return None, None, None
        bias = self._qkv(layer, "bias")
        return tuple(vector_range(bias, *self._qkv_rows(i, head)) for i in range(3))  # type: ignore[return-value]

    def o_bias(self, layer: int) -> str | None:
        return f"{self._prefix(layer)}.attention.dense.bias" if getattr(self.config, "attention_bias", True) else None

    def input_norm(self, layer: int) -> NormSpec:
        ln = f"{self._prefix(layer)}.input_layernorm"
        return NormSpec("layernorm", f"{ln}.weight", f"{ln}.bias", float(self.config.layer_norm_eps), 0.0)

    def attention_module(self, layer: int) -> str:
        return f"{self._prefix(layer)}.attention"

    def output_projection_module(self, layer: int) -> str:
        return f"{self._prefix(layer)}.attention.dense"

    def input_norm_module(self, layer: int) -> str:
        return f"{self._prefix(layer)}.input_layernorm"

    def decoder_layer_module(self, layer: int) -> str:
        return self._prefix(layer)

    def embedding_param(self) -> str:
        return "gpt_neox.embed_in.weight"

    def unembedding_param(self) -> str:
        return "lm_head.weight"  # transformers 5 name (older checkpoints' embed_out is renamed on load)

    def final_norm(self) -> NormSpec:
        return NormSpec("layernorm", "gpt_neox.final_layer_norm.weight", "gpt_neox.final_layer_norm.bias",
                        float(self.config.layer_norm_eps), 0.0)

    def final_norm_module(self) -> str:
        return "gpt_neox.final_layer_norm"
