"""GPT-2: fused c_attn (Conv1D, weights stored in×out: [d, 3d] = [Q | K | V]), c_proj Conv1D,
pre-attention LayerNorm with bias, learned absolute positions (no rotary)."""

from __future__ import annotations

from th_edit.arch.base import MAX_CONFIG_COUNT, MAX_CONFIG_SIZE, Adapter, ArchInfo, ConfigInt, NormSpec, Slot, vector_range


class GPT2Adapter(Adapter):
    family = "gpt2"
    model_types = ("gpt2",)
    # GPT-2's own names; transformers also accepts the generic ones for the first four (attribute_map).
    config_ints = (
        ConfigInt(("n_layer", "num_hidden_layers"), MAX_CONFIG_COUNT),
        ConfigInt(("n_head", "num_attention_heads"), MAX_CONFIG_COUNT),
        ConfigInt(("n_embd", "hidden_size"), MAX_CONFIG_SIZE),
        ConfigInt(("n_positions", "max_position_embeddings"), MAX_CONFIG_SIZE),  # learned positions: a weight
        ConfigInt(("n_inner",), MAX_CONFIG_SIZE, nullable=True),  # null: 4 * n_embd
        ConfigInt(("vocab_size",), MAX_CONFIG_SIZE),
    )

    def _prefix(self, layer: int) -> str:
        return f"transformer.h.{layer}"

    def info(self) -> ArchInfo:
        return ArchInfo(
            family=self.family, model_type=self.config.model_type, n_layers=self.n_layers, n_heads=self.n_heads,
            n_kv_heads=self.n_heads, d_model=self.d_model, d_head=self.d_head, norm="LayerNorm",
            rotary="none (learned absolute positions)", qk_norm=False, post_attention_norm=False,
            parallel_residual=False, tied_embeddings=bool(getattr(self.config, "tie_word_embeddings", True)),
            vocab_size=self.config.vocab_size,
        )

    def _qkv_cols(self, which: int, head: int) -> slice:
        start = which * self.d_model + head * self.d_head
        return slice(start, start + self.d_head)

    def q_slot(self, layer: int, head: int) -> Slot:
        return Slot(f"{self._prefix(layer)}.attn.c_attn.weight", (slice(None), self._qkv_cols(0, head)), transpose=False)

    def k_slot(self, layer: int, kv_head: int) -> Slot:
        return Slot(f"{self._prefix(layer)}.attn.c_attn.weight", (slice(None), self._qkv_cols(1, kv_head)), transpose=False)

    def v_slot(self, layer: int, kv_head: int) -> Slot:
        return Slot(f"{self._prefix(layer)}.attn.c_attn.weight", (slice(None), self._qkv_cols(2, kv_head)), transpose=False)

    def o_slot(self, layer: int, head: int) -> Slot:
        rows = slice(head * self.d_head, (head + 1) * self.d_head)
        return Slot(f"{self._prefix(layer)}.attn.c_proj.weight", (rows, slice(None)), transpose=False)

    def bias_slots(self, layer: int, head: int) -> tuple[Slot | None, Slot | None, Slot | None]:
        bias = f"{self._prefix(layer)}.attn.c_attn.bias"
        return tuple(  # type: ignore[return-value]
            vector_range(bias, cols.start, cols.stop) for cols in (self._qkv_cols(i, head) for i in range(3))
        )

    def o_bias(self, layer: int) -> str | None:
        return f"{self._prefix(layer)}.attn.c_proj.bias"

    def input_norm(self, layer: int) -> NormSpec:
        ln = f"{self._prefix(layer)}.ln_1"
        return NormSpec("layernorm", f"{ln}.weight", f"{ln}.bias", float(self.config.layer_norm_epsilon), 0.0)

    def attention_module(self, layer: int) -> str:
        return f"{self._prefix(layer)}.attn"

    def output_projection_module(self, layer: int) -> str:
        return f"{self._prefix(layer)}.attn.c_proj"

    def input_norm_module(self, layer: int) -> str:
        return f"{self._prefix(layer)}.ln_1"

    def decoder_layer_module(self, layer: int) -> str:
        return self._prefix(layer)

    def embedding_param(self) -> str:
        return "transformer.wte.weight"

    def unembedding_param(self) -> str:
        return "lm_head.weight"

    def final_norm(self) -> NormSpec:
        return NormSpec("layernorm", "transformer.ln_f.weight", "transformer.ln_f.bias",
                        float(self.config.layer_norm_epsilon), 0.0)

    def final_norm_module(self) -> str:
        return "transformer.ln_f"
