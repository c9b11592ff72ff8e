"""Every supported family as data: one `FamilySpec` per group of model_types (spec.py), bound to
`FamilyAdapter` or, where a family's math differs, to the subclass that holds that code."""

from __future__ import annotations

from dataclasses import replace

from th_edit.arch.base import MAX_CONFIG_COUNT, MAX_CONFIG_SIZE, Adapter, ConfigInt
from th_edit.arch.family import adapter_type
from th_edit.arch.gemma import GemmaAdapter
from th_edit.arch.spec import BLOCKS, CORE_CONFIG_INTS, GQA_CONFIG_INTS, PER_HEAD, ConfigFlag, FamilySpec

# GPT-2: fused c_attn (Conv1D, in×out: [d, 3d] = [Q | K | V]), c_proj Conv1D, pre-attention
# LayerNorm with bias, learned absolute positions.
GPT2 = FamilySpec(
    "gpt2", ("gpt2",), layer="transformer.h.{layer}", attention="attn", qkv="c_attn", qkv_layout=BLOCKS, o="c_proj",
    conv1d=True, qkv_bias=True, o_bias=True, input_norm="ln_1", norm="layernorm", norm_bias=True,
    eps_key="layer_norm_epsilon", positions="learned", embedding="transformer.wte.weight", final_norm="transformer.ln_f",
    tied_default=True,
    # GPT-2's own names; transformers also accepts the generic ones for the first four (attribute_map).
    config_ints=(
        ConfigInt(("n_layer", "num_hidden_layers"), MAX_CONFIG_COUNT),
        ConfigInt(("n_head", "num_attention_heads"), MAX_CONFIG_COUNT),
        ConfigInt(("n_embd", "hidden_size"), MAX_CONFIG_SIZE),
        ConfigInt(("n_positions", "max_position_embeddings"), MAX_CONFIG_SIZE),  # learned positions: a weight
        ConfigInt(("n_inner",), MAX_CONFIG_SIZE, nullable=True),  # null: 4 * n_embd
        ConfigInt(("vocab_size",), MAX_CONFIG_SIZE),
    ),
)

# GPT-NeoX / Pythia: fused query_key_value laid out per head, LayerNorm with bias, partial rotary,
# usually a parallel residual. 4.x overwrites rope_theta with rotary_emb_base and
# partial_rotary_factor with rotary_pct.
GPT_NEOX = FamilySpec(
    "gpt_neox", ("gpt_neox",), layer="gpt_neox.layers.{layer}", attention="attention", qkv="query_key_value",
    qkv_layout=PER_HEAD, o="dense", qkv_bias=ConfigFlag("attention_bias", True), o_bias=ConfigFlag("attention_bias", True),
    norm="layernorm", norm_bias=True, eps_key="layer_norm_eps", parallel_residual=ConfigFlag("use_parallel_residual", True),
    embedding="gpt_neox.embed_in.weight", final_norm="gpt_neox.final_layer_norm", config_ints=CORE_CONFIG_INTS,
    legacy_theta_key="rotary_emb_base", legacy_partial_rotary_key="rotary_pct",
)

# Llama family: separate q/k/v/o nn.Linear, pre-attention RMSNorm, GQA, RoPE after the projections;
# biases only with attention_bias.
LLAMA = FamilySpec("llama", ("llama", "mistral"), qkv_bias=ConfigFlag("attention_bias", False),
                   o_bias=ConfigFlag("attention_bias", False))
QWEN2 = replace(LLAMA, model_types=("qwen2",), qkv_bias=True, o_bias=False)  # q/k/v biases always, none on o
QWEN3 = replace(LLAMA, model_types=("qwen3",), qk_norm=("q_norm", "k_norm"))  # per-head RMSNorm on q and k

# Gemma 3 (text): (1+w) RMSNorms, per-head QK-norm, a post-attention norm, head_dim free.
GEMMA3 = replace(
    QWEN3, family="gemma3", model_types=("gemma3_text",), norm_offset=1.0, post_attention_norm="post_attention_layernorm",
    # The older spelling of layer_types: every N-th layer is global (transformers divides by it).
    config_ints=(*GQA_CONFIG_INTS, ConfigInt(("sliding_window_pattern",), MAX_CONFIG_COUNT, nullable=True)),
)

ADAPTERS: tuple[type[Adapter], ...] = (
    adapter_type(GPT2), adapter_type(GPT_NEOX), adapter_type(LLAMA), adapter_type(QWEN2), adapter_type(QWEN3),
    adapter_type(GEMMA3, GemmaAdapter),
)
