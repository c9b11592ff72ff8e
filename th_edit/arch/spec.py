"""Family knowledge as data: where a decoder family keeps each attention head's weights and norms.

One `FamilySpec` per model_type says everything that differs between families only in names and
layout (module and parameter paths, separate or fused q/k/v and how the fused tensor is laid out,
norm kind and its (1+w) offset, which biases exist, per-head QK-norm, post-attention norm, parallel
residual, position encoding, config-int checks, the 4.x rope key names). `FamilyAdapter`
(family.py) reads a spec; a family gets code only where its math differs.
"""

from __future__ import annotations

from dataclasses import dataclass

from th_edit.arch.base import MAX_CONFIG_COUNT, MAX_CONFIG_SIZE, ConfigInt


@dataclass(frozen=True)
class ConfigFlag:
    """A yes/no that a family's config.json decides: the value of `key`, `default` where it is absent."""

    key: str
    default: bool

    def value(self, config) -> bool:
        found = getattr(config, self.key, None)
        return self.default if found is None else bool(found)


Flag = bool | ConfigFlag


def flag(value: Flag, config) -> bool:
    return value.value(config) if isinstance(value, ConfigFlag) else value


# How a fused q/k/v projection's output axis is laid out (H query heads, G KV heads, dh each):
BLOCKS = "blocks"  # [Q: H·dh | K: G·dh | V: G·dh]  (GPT-2 c_attn, Phi-3 qkv_proj, Falcon multi_query)
PER_HEAD = "per_head"  # [h0: q k v][h1: q k v]...  (GPT-NeoX query_key_value, Falcon without MQA; needs H = G)
GROUPED = "grouped"  # [g0: q·(H/G) k v][g1: ...]...  (Falcon new_decoder_architecture)
QKV_LAYOUTS = (BLOCKS, PER_HEAD, GROUPED)

CORE_CONFIG_INTS = (
    ConfigInt(("num_hidden_layers",), MAX_CONFIG_COUNT),
    ConfigInt(("num_attention_heads",), MAX_CONFIG_COUNT),
    ConfigInt(("hidden_size",), MAX_CONFIG_SIZE),
    ConfigInt(("intermediate_size",), MAX_CONFIG_SIZE),
    ConfigInt(("vocab_size",), MAX_CONFIG_SIZE),
)
GQA_CONFIG_INTS = (
    *CORE_CONFIG_INTS,
    ConfigInt(("num_key_value_heads",), MAX_CONFIG_COUNT, nullable=True),  # null: one per query head
    ConfigInt(("head_dim",), MAX_CONFIG_SIZE, nullable=True),  # null: hidden_size / num_attention_heads
)


@dataclass(frozen=True)
class FamilySpec:
    family: str  # the name th-edit shows (several model_types may share one)
    model_types: tuple[str, ...]
    # ---- paths: `layer` is a template with {layer}; the others are relative to it or to the attention module
    layer: str = "model.layers.{layer}"
    attention: str = "self_attn"
    q: str = "q_proj"
    k: str = "k_proj"
    v: str = "v_proj"
    qkv: str | None = None  # a fused projection (replaces q/k/v)
    qkv_layout: str = BLOCKS
    o: str = "o_proj"
    conv1d: bool = False  # weights stored in×out (GPT-2's Conv1D) instead of nn.Linear's out×in
    qkv_bias: Flag = False
    o_bias: Flag = False
    # ---- norms
    # the norm the attention reads through (shared with the MLP when parallel); None: the attention
    # reads the residual stream itself (OLMo-2 normalizes only outputs)
    input_norm: str | None = "input_layernorm"
    norm: str = "rmsnorm"  # "rmsnorm" | "layernorm" (input, QK, post-attention and final norms alike)
    norm_weight: bool = True  # False: no learned weight (OLMo's non-parametric LayerNorm)
    norm_bias: bool = False  # LayerNorm with a bias
    norm_offset: float = 0.0  # Gemma stores γ and multiplies by (1 + γ)
    eps_key: str | float = "rms_norm_eps"  # a number: the norm's fixed epsilon (not in the config)
    # norms on q and k after the projections, relative to the attention module: per head (weight of
    # d_head, or [heads, d_head]) or over all heads at once (weight of heads·d_head); see base._fold_qk_norm
    qk_norm: tuple[str, str] | None = None
    qk_norm_flag: Flag = True  # whether a model of the family has them (Cohere: use_qk_norm)
    post_attention_norm: str | None = None  # a norm on the attention output before the residual (Gemma)
    parallel_residual: Flag = False  # attention and MLP read the same residual stream
    # ---- positions: "rope" (its partial fraction read from the config) or "learned"
    positions: str = "rope"
    # ---- ends of the model
    embedding: str = "model.embed_tokens.weight"
    unembedding: str = "lm_head.weight"
    final_norm: str = "model.norm"
    tied_default: bool = False  # tie_word_embeddings when the config does not say
    # ---- config.json
    config_ints: tuple[ConfigInt, ...] = GQA_CONFIG_INTS
    legacy_theta_key: str = "rope_theta"  # 4.x's name for rope_parameters' rope_theta
    legacy_partial_rotary_key: str = "partial_rotary_factor"
    legacy_rope_type_key: str = "rope_type"  # "type": 4.x validates rope_scaling["type"] (OLMo, OLMo-2)
    # config keys that 5.x writes under a new name and 4.x reads under its old one: (new, old)
    legacy_renames: tuple[tuple[str, str], ...] = ()
    # options th-edit cannot decompose exactly: (config key, why), refused when the key is set
    refused_options: tuple[tuple[str, str], ...] = ()
    # ---- added for Phi-1/2, StableLM, GPT-J, Falcon and OPT (optional; defaults keep the families above)
    # options a model must keep at a value th-edit decomposes exactly: (config key, value, why), refused
    # when the config sets the key to anything else (absent: the config class's default, which is that value)
    required_options: tuple[tuple[str, object, str], ...] = ()
    # QK-norms kept as one module per head, `{path}.norms.{h}` (StableLM's LayerNormPerHead)
    qk_norm_per_head_modules: bool = False
    # RoPE on the first `config.<rotary_dim_key>` dims of each head (GPT-J) instead of a fraction
    rotary_dim_key: str | None = None
    rotary_interleaved: bool = False  # rotated pairs are adjacent dims (GPT-J, Cohere), not the two halves
    # ---- RoPE details beyond rope_parameters (arch/rotary.py)
    rope_theta_fixed: float | None = None  # a base the modeling code hard-codes instead of reading it (GPT-J)
    rope_layers_key: str | None = None  # config list, per layer, of whether it uses RoPE (SmolLM3's no_rope_layers)
    # ---- chat: the family's published turn format as a chat template (Jinja, as tokenizers carry them),
    # used only for a checkpoint whose tokenizer carries none (a base model, a GGUF without one)
    published_chat_template: str | None = None

    def __post_init__(self):
        if self.qkv_layout not in QKV_LAYOUTS:
            raise ValueError(f"{self.family}: unknown qkv_layout {self.qkv_layout!r}")
        if self.norm not in ("rmsnorm", "layernorm"):
            raise ValueError(f"{self.family}: unknown norm {self.norm!r}")
