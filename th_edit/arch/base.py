"""What every architecture adapter provides, and the folding math they share.

An adapter knows, for one model family, where each attention head's weights live in the state
dict and how the layer's norms act on them. From that it produces the *effective* per-head
matrices of docs/method.md#conventions (row-vector convention):

    q = x̃ W_Q + b_Q,  k = x̃ W_K + b_K,  v = x̃ W_V + b_V,  head output written = z W_O

where x̃ is the residual stream normalized but not yet scaled by the norm's weight
(`normalize`). The norm weight g is folded into W_Q/W_K/W_V (LayerNorm: also its mean removal
C = I − 11ᵀ/d, and its bias into b_*); per-head QK-norm weights are folded on the right of
W_Q/W_K (their per-token scale is positive and ignored); a post-attention norm weight (Gemma) is
folded on the right of W_O, so that W_O maps into the residual stream itself.

Adapters also say exactly which tensor slice holds each head's W_Q and W_O, which is where edits
are written back (`Slot`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch

from th_edit.arch.rotary import Rotary
from th_edit.checkpoint import CheckpointTensors, TensorSource
from th_edit.errors import UserError
from th_edit.strict_json import shown


@dataclass(frozen=True)
class Slot:
    """Where one head's matrix lives inside a stored parameter.

    `index` indexes the parameter as stored; `transpose` says whether the stored block is the
    transpose of the math-orientation matrix (nn.Linear stores out×in, Conv1D stores in×out).
    """

    param: str
    index: tuple[slice, ...]
    transpose: bool

    def read(self, source: TensorSource) -> torch.Tensor:
        block = source.get(self.param)[self.index]
        return block.T if self.transpose else block

    def write(self, tensor: torch.Tensor, value: torch.Tensor) -> None:
        """Write a math-orientation block into `tensor` (the stored parameter) in place."""
        tensor[self.index] = (value.T if self.transpose else value).to(tensor.dtype)


@dataclass(frozen=True)
class NormSpec:
    kind: str  # "layernorm" | "rmsnorm" | "none" (OLMo-2 reads the residual stream as it is)
    weight: str | None  # None: no learned weight (OLMo's LayerNorm), the gain is ones of `size`
    bias: str | None
    eps: float
    offset: float  # Gemma stores γ and multiplies by (1 + γ)
    size: int = 0  # the normalized width, for a norm without weight
    # per-head norms kept as separate modules (StableLM): their weights, head-major, replace `weight`
    weights: tuple[str, ...] = ()

    def gain(self, source: TensorSource, dtype: torch.dtype) -> torch.Tensor:
        if self.weights:
            return torch.cat([source.get(name).to(dtype).flatten() for name in self.weights]) + self.offset
        if self.weight is None:
            return torch.ones(self.size, dtype=dtype)
        # A per-head norm may store its weight as [heads, dh] (Cohere): flat, head-major.
        return source.get(self.weight).to(dtype).flatten() + self.offset

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """x̃: x normalized over its last axis as this norm does, before its weight and bias."""
        if self.kind == "none":
            return x
        if self.kind == "layernorm":
            centered = x - x.mean(-1, keepdim=True)
            return centered * torch.rsqrt(centered.pow(2).mean(-1, keepdim=True) + self.eps)
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)


@dataclass(frozen=True)
class ArchInfo:
    family: str
    model_type: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_model: int
    d_head: int
    norm: str  # human-readable norm kind
    rotary: str  # human-readable rotary description
    qk_norm: bool
    post_attention_norm: bool
    parallel_residual: bool
    tied_embeddings: bool
    vocab_size: int


@dataclass
class LayerWeights:
    """Effective weights of every query head of one layer (H = query heads, GQA expanded)."""

    layer: int
    W_Q: torch.Tensor  # [H, d, dh]
    W_K: torch.Tensor  # [H, d, dh]  (the head's KV group)
    W_V: torch.Tensor  # [H, d, dh]
    W_O: torch.Tensor  # [H, dh, d]
    b_Q: torch.Tensor  # [H, dh]
    b_K: torch.Tensor  # [H, dh]
    b_V: torch.Tensor  # [H, dh]
    b_O: torch.Tensor  # [d]  output-projection bias (not per head)
    in_gain: torch.Tensor  # [d]  g of the input norm, folded into W_Q/W_K/W_V
    out_gain: torch.Tensor | None  # [d]  post-attention norm weight folded into W_O, if any


# Bounds of the sizes and counts read from config.json: far beyond any real model (the largest
# have ~130 layers, ~130 heads, widths ~50 000 and vocabularies ~260 000), and small enough that
# nothing built from them can exhaust memory (transformers makes per-layer lists from the layer
# count as it reads the config, before any weight is matched).
MAX_CONFIG_COUNT = 100_000  # layers, heads
MAX_CONFIG_SIZE = 10_000_000  # widths, vocabulary


@dataclass(frozen=True)
class ConfigInt:
    """A size or count in config.json: a positive integer (not a float, string or bool) up to `maximum`."""

    keys: tuple[str, ...]  # its spellings in config.json (transformers maps GPT-2's generic names to its own)
    maximum: int
    nullable: bool = False  # null asks the config class to derive it (head_dim, num_key_value_heads)


class Adapter(ABC):
    family: ClassVar[str]
    model_types: ClassVar[tuple[str, ...]]
    # The sizes and counts of this family's config.json that the adapter reads or that size the
    # model transformers builds; checked by `check_config` before transformers reads the file.
    config_ints: ClassVar[tuple[ConfigInt, ...]] = (
        ConfigInt(("num_hidden_layers",), MAX_CONFIG_COUNT),
        ConfigInt(("num_attention_heads",), MAX_CONFIG_COUNT),
        ConfigInt(("hidden_size",), MAX_CONFIG_SIZE),
        ConfigInt(("intermediate_size",), MAX_CONFIG_SIZE),
        ConfigInt(("vocab_size",), MAX_CONFIG_SIZE),
    )

    @classmethod
    def check_config(cls, raw: dict, source: object) -> None:
        """Refuse a config.json (as read from `source`, before transformers builds anything from
        it) whose sizes and counts are not positive integers within bounds: transformers' config
        classes check types but not values, and divide by, or allocate lists of, these numbers."""
        for field in cls.config_ints:
            for key in field.keys:
                if key in raw and not (raw[key] is None and field.nullable):
                    _check_config_int(raw[key], key, field.maximum, source)

    def __init__(self, config):
        self.config = config
        self.n_layers: int = _positive(config, "num_hidden_layers")
        self.n_heads: int = _positive(config, "num_attention_heads")
        self.n_kv_heads: int = _positive(config, "num_key_value_heads", default=self.n_heads)
        self.d_model: int = _positive(config, "hidden_size")
        if getattr(config, "head_dim", None) is None and self.d_model % self.n_heads:
            raise UserError(f"config.json: hidden_size {self.d_model} is not a multiple of num_attention_heads "
                            f"{self.n_heads} (and there is no head_dim)")
        self.d_head: int = _positive(config, "head_dim", default=self.d_model // self.n_heads)
        if self.n_heads % self.n_kv_heads:
            raise UserError(f"config.json: num_attention_heads {self.n_heads} does not split into "
                            f"num_key_value_heads {self.n_kv_heads} KV groups")

    # Whether a decoder layer's forward returns a tuple (hidden states first: Falcon) rather than the
    # hidden states themselves; a module standing in for a layer must answer the same way.
    decoder_layer_returns_tuple: ClassVar[bool] = False

    # ---- family-specific layout -------------------------------------------------------------

    @abstractmethod
    def info(self) -> ArchInfo: ...

    @abstractmethod
    def q_slot(self, layer: int, head: int) -> Slot: ...

    @abstractmethod
    def k_slot(self, layer: int, kv_head: int) -> Slot: ...

    @abstractmethod
    def v_slot(self, layer: int, kv_head: int) -> Slot: ...

    @abstractmethod
    def o_slot(self, layer: int, head: int) -> Slot: ...

    @abstractmethod
    def bias_slots(self, layer: int, head: int) -> tuple[Slot | None, Slot | None, Slot | None]:
        """(q, k, v) bias slices of this query head, or None where there is no bias."""

    @abstractmethod
    def o_bias(self, layer: int) -> str | None: ...

    @abstractmethod
    def input_norm(self, layer: int) -> NormSpec: ...

    def qk_norm(self, layer: int) -> tuple[NormSpec, NormSpec] | None:
        """Per-head norms applied to q and k after projection (Gemma 3, Qwen3)."""
        return None

    def output_norm(self, layer: int) -> NormSpec | None:
        """A norm applied to the attention output before it joins the residual (Gemma)."""
        return None

    def rotary(self, layer: int) -> Rotary | None:
        """The RoPE that rotates this layer's q and k after the projections (arch/rotary.py); None for a
        layer without one (learned positions, ALiBi, a NoPE layer)."""
        return None

    # Module paths, for hooks on a live model.
    @abstractmethod
    def attention_module(self, layer: int) -> str: ...

    @abstractmethod
    def output_projection_module(self, layer: int) -> str:
        """The module whose input is the heads' outputs z, concatenated head-major."""

    @abstractmethod
    def input_norm_module(self, layer: int) -> str: ...

    @abstractmethod
    def decoder_layer_module(self, layer: int) -> str:
        """The whole block of `layer`: its output is the residual stream after the layer."""

    # Ends of the model: token embedding, final norm, unembedding (logits = final_norm(x) W_Uᵀ).
    @abstractmethod
    def embedding_param(self) -> str:
        """The token embedding [V, d] (before any scaling the model applies, e.g. Gemma's √d)."""

    @abstractmethod
    def unembedding_param(self) -> str:
        """The output projection's weight [V, d] (the embedding itself when tied)."""

    @abstractmethod
    def final_norm(self) -> NormSpec:
        """The norm applied to the residual stream after the last layer, before the unembedding."""

    @abstractmethod
    def final_norm_module(self) -> str: ...

    # ---- config.json as transformers 4.x reads it ----------------------------------------------

    @classmethod
    def legacy_config_keys(cls, config: dict) -> dict[str, object]:
        """Keys to add to a config.json written by transformers 5.x so that 4.x (>= 4.50) reads the
        same model from it; {} when nothing differs."""
        rope = config.get("rope_parameters")
        return cls.legacy_rope_keys(rope) if isinstance(rope, dict) else {}

    @classmethod
    def legacy_rope_keys(cls, rope_parameters: dict) -> dict[str, object]:
        """Top-level config keys that say to transformers 4.x what `rope_parameters` says to 5.x.

        4.x ignores `rope_parameters` and silently falls back to its defaults (rope_theta 10000);
        5.x still reads these keys, and they must not contradict `rope_parameters` (it lets a
        non-null `rope_scaling` replace it). Llama-style families: rope_theta, rope_scaling and
        partial_rotary_factor at the top level (a family with other names sets the two class
        attributes below)."""
        theta, partial, scaling = split_rope(rope_parameters)
        if scaling is not None and cls.legacy_rope_type_key != "rope_type" and "rope_type" in scaling:
            scaling = {cls.legacy_rope_type_key: scaling["rope_type"],
                       **{k: v for k, v in scaling.items() if k != "rope_type"}}
        keys: dict[str, object] = {"rope_scaling": scaling}
        if theta is not None:
            keys[cls.legacy_theta_key] = theta
        if partial is not None:
            keys[cls.legacy_partial_rotary_key] = partial
        return keys

    legacy_theta_key = "rope_theta"
    legacy_partial_rotary_key = "partial_rotary_factor"
    legacy_rope_type_key = "rope_type"  # the scaling type's key inside 4.x's rope_scaling ("type" for some)

    # ---- shared ------------------------------------------------------------------------------

    def kv_group(self, head: int) -> int:
        """The KV head whose W_K/W_V query head `head` uses (grouped-query attention)."""
        return head // (self.n_heads // self.n_kv_heads)

    def check_head(self, layer: int, head: int) -> None:
        if not 0 <= layer < self.n_layers:
            raise IndexError(f"layer {layer} out of range 0..{self.n_layers - 1}")
        if not 0 <= head < self.n_heads:
            raise IndexError(f"head {head} out of range 0..{self.n_heads - 1}")

    def in_gain(self, source: TensorSource, layer: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        return self.input_norm(layer).gain(source, dtype)

    def out_gain(self, source: TensorSource, layer: int, dtype: torch.dtype = torch.float64) -> torch.Tensor | None:
        spec = self.output_norm(layer)
        return None if spec is None else spec.gain(source, dtype)

    def output_scale(self, layer: int, attention_output: torch.Tensor) -> torch.Tensor:
        """Per-token factor [..., 1] by which the post-attention norm (Gemma) scales the output
        projection's output o = Σ_h z_h W_O[h] (+ b_O) before its weight, which W_O^eff already
        holds: head h adds exactly z_h W_O^eff[h] · factor to the residual stream. Ones when the
        layer has no such norm. Computed in float32 at least, as the norm itself computes."""
        spec = self.output_norm(layer)
        o = attention_output.float() if attention_output.dtype in (torch.float16, torch.bfloat16) else attention_output
        if spec is None:
            return torch.ones_like(o[..., :1])
        if spec.kind != "rmsnorm":  # a LayerNorm here would also shift the output, not only scale it
            raise NotImplementedError(f"no per-head decomposition through a post-attention {spec.kind}")
        return torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + spec.eps)

    def normalize(self, x: torch.Tensor, layer: int) -> torch.Tensor:
        """x̃: the residual stream normalized by the layer's input norm, before its weight."""
        return self.input_norm(layer).normalize(x)

    def unembedding(self, source: TensorSource) -> torch.Tensor:
        """The unembedding [V, d] (logits = final-normed residual @ its transpose). A checkpoint of a
        model with tied embeddings may store only the embedding."""
        name = self.unembedding_param()
        if name not in source and self.info().tied_embeddings:
            name = self.embedding_param()
        return source.get(name)

    def ties_embeddings(self, stored: CheckpointTensors) -> bool:
        """Whether the model transformers 5 loads from `stored` uses its token embedding as its
        unembedding. The config must ask for it (info().tied_embeddings), and then transformers
        ties the two only when the checkpoint holds one of them, or both with equal values: a
        separate unembedding with other values is kept as it is (with a warning)."""
        if not self.info().tied_embeddings:
            return False
        unembedding, embedding = self.unembedding_param(), self.embedding_param()
        if unembedding not in stored or embedding not in stored:
            return True
        return stored.same_values(unembedding, embedding)

    def layer_weights(self, source: TensorSource, layer: int, dtype: torch.dtype = torch.float32) -> LayerWeights:
        source = _Memo(source)  # every head slices the same few parameters: read each once
        norm = self.input_norm(layer)
        gain = norm.gain(source, torch.float64)
        beta = source.get(norm.bias).to(torch.float64) if norm.bias else None
        qk_norms = self.qk_norm(layer)
        q_gain = qk_norms[0].gain(source, torch.float64) if qk_norms else None
        k_gain = qk_norms[1].gain(source, torch.float64) if qk_norms else None
        out_gain = self.out_gain(source, layer)

        def fold(raw: torch.Tensor, raw_bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
            raw = raw.to(torch.float64)
            bias = raw_bias.to(torch.float64) if raw_bias is not None else torch.zeros(raw.shape[1], dtype=torch.float64)
            if beta is not None:  # LayerNorm's bias enters through the projection
                bias = bias + beta @ raw
            folded = gain[:, None] * raw
            if norm.kind == "layernorm":  # C diag(g) W: remove the column means (C = I − 11ᵀ/d)
                folded = folded - folded.mean(0, keepdim=True)
            return folded, bias

        rows: dict[str, list[torch.Tensor]] = {k: [] for k in ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V")}
        for head in range(self.n_heads):
            group = self.kv_group(head)
            bq, bk, bv = (slot.read(source) if slot else None for slot in self.bias_slots(layer, head))
            W_Q, b_Q = fold(self.q_slot(layer, head).read(source), bq)
            W_K, b_K = fold(self.k_slot(layer, group).read(source), bk)
            W_V, b_V = fold(self.v_slot(layer, group).read(source), bv)
            if qk_norms is not None:
                W_Q, b_Q = _fold_qk_norm(qk_norms[0], q_gain, head, W_Q, b_Q)
                W_K, b_K = _fold_qk_norm(qk_norms[1], k_gain, group, W_K, b_K)
            W_O = self.o_slot(layer, head).read(source).to(torch.float64)
            if out_gain is not None:
                W_O = W_O * out_gain
            for key, value in zip(rows, (W_Q, W_K, W_V, W_O, b_Q, b_K, b_V)):
                rows[key].append(value)
        o_bias = self.o_bias(layer)
        b_O = source.get(o_bias).to(torch.float64) if o_bias else torch.zeros(self.d_model, dtype=torch.float64)
        stacked = {k: torch.stack(v).to(dtype) for k, v in rows.items()}
        return LayerWeights(
            layer=layer, b_O=b_O.to(dtype), in_gain=gain.to(dtype),
            out_gain=None if out_gain is None else out_gain.to(dtype), **stacked,
        )


def _fold_qk_norm(norm: NormSpec, gain: torch.Tensor, head: int, W: torch.Tensor,
                  b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold a QK-norm into one head's W and b (on the right: it acts on the head's q or k).

    A per-head norm (gain of d_head: Qwen3, Gemma; or one gain per head, Cohere) is exact up to its
    positive per-token scale, one per head. A norm over all heads at once (gain of heads·d_head:
    OLMo-2, OLMoE) has the same per-head weight fold, and one per-token scale shared by every head
    of the layer (the RMS of all heads' q together). A LayerNorm also removes each head's mean
    over d_head (Cohere): W (I − 11ᵀ/dh)."""
    dh = W.shape[1]
    if gain.numel() != dh:
        gain = gain[head * dh:(head + 1) * dh]
    if norm.kind == "layernorm":
        W, b = W - W.mean(1, keepdim=True), b - b.mean()
    return W * gain, b * gain


class _Memo:
    def __init__(self, source: TensorSource):
        self.source = source
        self.seen: dict[str, torch.Tensor] = {}

    def __contains__(self, name: object) -> bool:
        return name in self.source

    def get(self, name: str) -> torch.Tensor:
        if name not in self.seen:
            self.seen[name] = self.source.get(name)
        return self.seen[name]


def _positive(config, field: str, default: int | None = None) -> int:
    """A count from the config that must be a positive integer (the config class does not always check)."""
    value = getattr(config, field, None)
    if value is None and default is not None:
        return default
    _check_config_int(value, field, MAX_CONFIG_SIZE, "config.json")
    return value


def _check_config_int(value: object, key: str, maximum: int, source: object) -> None:
    # bool is an int to Python, but `true` is no count.
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise UserError(f"{source}: {key} must be a positive integer, not {_shown(value)}")
    if value > maximum:
        raise UserError(f"{source}: {key} must be at most {maximum:,}, not {_shown(value)}")


def _shown(value: object) -> str:
    """A config value as JSON, cut short (a number may have thousands of digits)."""
    text = shown(value) if isinstance(value, (int, float, str, bool)) or value is None else type(value).__name__
    return text if len(text) <= 24 else text[:24] + "…"


def split_rope(rope: dict) -> tuple[float | None, float | None, dict | None]:
    """(rope_theta, partial_rotary_factor, rope_scaling) of a flat `rope_parameters` dict, where
    rope_scaling is the rest, in the 4.x spelling: None for plain RoPE."""
    rest = {k: v for k, v in rope.items() if k not in ("rope_theta", "partial_rotary_factor")}
    plain = rest.get("rope_type", rest.get("type", "default")) == "default" and set(rest) <= {"rope_type", "type"}
    return rope.get("rope_theta"), rope.get("partial_rotary_factor"), None if plain else rest


def linear_rows(param: str, start: int, stop: int) -> Slot:
    """Rows start:stop of an nn.Linear weight (out×in): math block is its transpose (in×…)."""
    return Slot(param, (slice(start, stop), slice(None)), transpose=True)


def linear_cols(param: str, start: int, stop: int) -> Slot:
    """Columns start:stop of an nn.Linear weight (out×in): math block (…×out) is its transpose."""
    return Slot(param, (slice(None), slice(start, stop)), transpose=True)


def vector_range(param: str, start: int, stop: int) -> Slot:
    return Slot(param, (slice(start, stop),), transpose=False)
