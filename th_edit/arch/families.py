"""Every supported family as data: one `FamilySpec` per group of model_types (spec.py), bound to
`FamilyAdapter` or, where a family's math differs, to the subclass that holds that code."""

from __future__ import annotations

from dataclasses import replace

from th_edit.arch.base import MAX_CONFIG_COUNT, MAX_CONFIG_SIZE, Adapter, ConfigInt
from th_edit.arch.falcon import FalconAdapter
from th_edit.arch.family import adapter_type
from th_edit.arch.gemma import GemmaAdapter
from th_edit.arch.opt import OptAdapter
from th_edit.arch.scaled import GraniteAdapter, Phi3Adapter
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
    # Gemma's documented turns: <start_of_turn>user ... <end_of_turn>, the reply after <start_of_turn>model.
    published_chat_template=(
        "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
        "{{ m['content'] | trim }}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"),
)

# Mixture-of-experts models with ordinary attention: only the attention is read or edited, and
# the experts (whatever their storage) pass through load, edit and export untouched.
# Expert counts and widths size the model transformers builds, like the layer count does.
MOE_CONFIG_INTS = (
    *GQA_CONFIG_INTS,
    ConfigInt(("num_local_experts",), MAX_CONFIG_COUNT), ConfigInt(("num_experts",), MAX_CONFIG_COUNT),
    ConfigInt(("num_experts_per_tok",), MAX_CONFIG_COUNT), ConfigInt(("moe_intermediate_size",), MAX_CONFIG_SIZE),
    ConfigInt(("shared_expert_intermediate_size",), MAX_CONFIG_SIZE),
)
MIXTRAL = replace(LLAMA, family="mixtral", model_types=("mixtral",), config_ints=MOE_CONFIG_INTS)
QWEN2_MOE = replace(LLAMA, family="qwen2_moe", model_types=("qwen2_moe",), qkv_bias=ConfigFlag("qkv_bias", True),
                    o_bias=False, config_ints=MOE_CONFIG_INTS)
QWEN3_MOE = replace(QWEN3, family="qwen3_moe", model_types=("qwen3_moe",), config_ints=MOE_CONFIG_INTS,
                    legacy_renames=(("num_local_experts", "num_experts"),))  # 4.x: 128 experts by default
# OLMoE: RMSNorm on q and on k over all heads at once (one per-token scale shared by the heads).
CLIP_QKV = ("clip_qkv", "clamping q, k and v is not linear: no per-head matrix reproduces it")
OLMOE = replace(LLAMA, family="olmoe", model_types=("olmoe",), qk_norm=("q_norm", "k_norm"), refused_options=(CLIP_QKV,),
                config_ints=MOE_CONFIG_INTS)

# Llama-shaped families that differ only in what the attention is fed (RoPE scaling, NoPE layers,
# sliding windows: all outside the per-head matrices).
SMOLLM3 = replace(LLAMA, family="smollm3", model_types=("smollm3",), rope_layers_key="no_rope_layers")
GRANITE = replace(LLAMA, family="granite", model_types=("granite",))  # multipliers: GraniteAdapter
PHI3 = replace(LLAMA, family="phi3", model_types=("phi3",), qkv="qkv_proj", qkv_layout=BLOCKS, qkv_bias=False,
               o_bias=False)  # fused [Q | K | V] with GQA; 4.x rope spelling: Phi3Adapter

# Gemma 2: Gemma 3's norms without QK-norm; soft-capping acts on the score after QK.
GEMMA2 = replace(GEMMA3, family="gemma2", model_types=("gemma2",), qk_norm=None, config_ints=GQA_CONFIG_INTS)

# OLMo: LayerNorm without weight or bias (fixed eps 1e-5); OLMo-2: no input norm, RMSNorm on the
# attention output, q and k normed over all heads at once.
OLMO = replace(LLAMA, family="olmo", model_types=("olmo",), norm="layernorm", norm_weight=False, eps_key=1e-5,
               refused_options=(CLIP_QKV,), legacy_rope_type_key="type")
OLMO2 = replace(LLAMA, family="olmo2", model_types=("olmo2",), input_norm=None, qk_norm=("q_norm", "k_norm"),
                post_attention_norm="post_attention_layernorm", legacy_rope_type_key="type")

# Cohere: one LayerNorm without bias feeds attention and MLP in parallel; optional per-head QK
# LayerNorm (weight [heads, d_head]); logit_scale multiplies the logits by a constant.
COHERE = replace(LLAMA, family="cohere", model_types=("cohere",), norm="layernorm", eps_key="layer_norm_eps",
                 qk_norm=("q_norm", "k_norm"), qk_norm_flag=ConfigFlag("use_qk_norm", False), parallel_residual=True,
                 tied_default=True, rotary_interleaved=True)  # its rotate_half pairs adjacent dims
COHERE2 = replace(COHERE, family="cohere2", model_types=("cohere2",), qk_norm=None)

ADAPTERS: tuple[type[Adapter], ...] = (
    adapter_type(GPT2), adapter_type(GPT_NEOX), adapter_type(LLAMA), adapter_type(QWEN2), adapter_type(QWEN3),
    adapter_type(GEMMA3, GemmaAdapter), adapter_type(MIXTRAL), adapter_type(QWEN2_MOE), adapter_type(QWEN3_MOE),
    adapter_type(OLMOE), adapter_type(SMOLLM3), adapter_type(GRANITE, GraniteAdapter), adapter_type(PHI3, Phi3Adapter),
    adapter_type(GEMMA2), adapter_type(OLMO), adapter_type(OLMO2), adapter_type(COHERE), adapter_type(COHERE2),
)


# ---- Phi-1/2, StableLM, GPT-J, Falcon, OPT ------------------------------------------------------

# Phi-1/2: separate q/k/v with biases, `dense` output with bias, one LayerNorm read by the attention
# and the MLP in parallel, partial RoPE. Its optional QK LayerNorm has a bias, added after the
# per-token scale: q·k is then no fixed bilinear form up to a positive scale.
PHI = FamilySpec(
    "phi", ("phi",), qkv_bias=True, o="dense", o_bias=True, norm="layernorm", norm_bias=True, eps_key="layer_norm_eps",
    parallel_residual=True, final_norm="model.final_layernorm",
    refused_options=(("qk_layernorm", "its QK LayerNorms add a bias after normalizing, so the attention score is "
                      "not one bilinear form of the residual stream (up to a per-token scale)"),),
)

# StableLM: Llama's layout with LayerNorms (bias), partial RoPE, optional q/k/v biases, an optional
# per-head QK LayerNorm without bias (one module per head: its mean removal W(I − 11ᵀ/dh) and weight
# fold into W_Q/W_K, its per-token scale is positive) and an optional parallel residual.
STABLELM = FamilySpec(
    "stablelm", ("stablelm",), qkv_bias=ConfigFlag("use_qkv_bias", False), norm="layernorm", norm_bias=True,
    eps_key="layer_norm_eps", qk_norm=("q_layernorm", "k_layernorm"), qk_norm_flag=ConfigFlag("qk_layernorm", False),
    qk_norm_per_head_modules=True, parallel_residual=ConfigFlag("use_parallel_residual", False),
)

# GPT-J: separate q/k/v/out_proj without biases, one LayerNorm (ln_1) shared by the parallel
# attention and MLP, RoPE on the first rotary_dim dims of each head with interleaved pairs (the QK
# form is the unrotated one either way). GPT-2's config names; lm_head has a bias (constant per token).
GPTJ = FamilySpec(
    "gptj", ("gptj",), layer="transformer.h.{layer}", attention="attn", o="out_proj", input_norm="ln_1", norm="layernorm",
    norm_bias=True, eps_key="layer_norm_epsilon", parallel_residual=True, embedding="transformer.wte.weight",
    final_norm="transformer.ln_f", rotary_dim_key="rotary_dim", rotary_interleaved=True, rope_theta_fixed=10000.0,
    config_ints=(
        ConfigInt(("n_layer", "num_hidden_layers"), MAX_CONFIG_COUNT),
        ConfigInt(("n_head", "num_attention_heads"), MAX_CONFIG_COUNT),
        ConfigInt(("n_embd", "hidden_size"), MAX_CONFIG_SIZE),
        ConfigInt(("n_positions", "max_position_embeddings"), MAX_CONFIG_SIZE),
        ConfigInt(("n_inner",), MAX_CONFIG_SIZE, nullable=True),  # null: 4 * n_embd
        ConfigInt(("rotary_dim",), MAX_CONFIG_SIZE, nullable=True),  # null: RoPE on every dim
        ConfigInt(("vocab_size",), MAX_CONFIG_SIZE),
    ),
)

# Falcon: fused query_key_value whose layout, KV head count and input norm(s) its config picks
# (falcon.py), FalconLinear (out×in), LayerNorms with bias, biases only with `bias`, RoPE or ALiBi.
FALCON = FamilySpec(
    "falcon", ("falcon",), layer="transformer.h.{layer}", attention="self_attention", qkv="query_key_value", o="dense",
    qkv_bias=ConfigFlag("bias", False), o_bias=ConfigFlag("bias", False), norm="layernorm", norm_bias=True,
    eps_key="layer_norm_epsilon", embedding="transformer.word_embeddings.weight", final_norm="transformer.ln_f",
    tied_default=True,
    config_ints=(
        ConfigInt(("num_hidden_layers",), MAX_CONFIG_COUNT),
        ConfigInt(("num_attention_heads",), MAX_CONFIG_COUNT),
        ConfigInt(("num_kv_heads",), MAX_CONFIG_COUNT, nullable=True),  # null: num_attention_heads
        ConfigInt(("hidden_size",), MAX_CONFIG_SIZE),
        ConfigInt(("ffn_hidden_size",), MAX_CONFIG_SIZE, nullable=True),  # null: 4 * hidden_size
        ConfigInt(("vocab_size",), MAX_CONFIG_SIZE),
    ),
)

# OPT: separate q/k/v/out_proj with biases (enable_bias), pre-attention LayerNorm, learned absolute
# positions (their table starts 2 rows in: a weight th-edit never edits). Post-LN OPT (OPT-350m)
# normalizes each head's output together with the residual stream it joins: refused.
_POST_LN = "each head's output is normalized together with the residual stream (post-LN), so no head writes a fixed map"
OPT = FamilySpec(
    "opt", ("opt",), layer="model.decoder.layers.{layer}", o="out_proj", qkv_bias=ConfigFlag("enable_bias", True),
    o_bias=ConfigFlag("enable_bias", True), input_norm="self_attn_layer_norm", norm="layernorm", norm_bias=True,
    eps_key=1e-5, positions="learned", embedding="model.decoder.embed_tokens.weight",
    final_norm="model.decoder.final_layer_norm", tied_default=True,
    config_ints=(
        *CORE_CONFIG_INTS[:3], ConfigInt(("ffn_dim",), MAX_CONFIG_SIZE), ConfigInt(("vocab_size",), MAX_CONFIG_SIZE),
        ConfigInt(("max_position_embeddings",), MAX_CONFIG_SIZE),  # learned positions: a weight
        ConfigInt(("word_embed_proj_dim",), MAX_CONFIG_SIZE, nullable=True),
    ),
    required_options=(
        ("do_layer_norm_before", True, _POST_LN),
        ("layer_norm_elementwise_affine", True, "its LayerNorms without weight and bias are not implemented"),
    ),
    refused_options=(("_remove_final_layer_norm", "the model then has no final norm before its unembedding"),),
)

ADAPTERS = (
    *ADAPTERS, adapter_type(PHI), adapter_type(STABLELM), adapter_type(GPTJ), adapter_type(FALCON, FalconAdapter),
    adapter_type(OPT, OptAdapter),
)
