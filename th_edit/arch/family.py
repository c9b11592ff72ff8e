"""The one adapter class that reads a `FamilySpec` (spec.py): slots, norms, module paths and info.

A family whose math differs (a multiplier, a shared norm, a different config spelling) subclasses
`FamilyAdapter` and overrides only that; `adapter_type` binds a spec to a class.
"""

from __future__ import annotations

from dataclasses import replace
from typing import ClassVar

from th_edit.arch.base import Adapter, ArchInfo, NormSpec, Slot, linear_cols, linear_rows, vector_range
from th_edit.arch.rotary import Rotary, default_inv_freq
from th_edit.arch.spec import BLOCKS, GROUPED, PER_HEAD, FamilySpec, flag
from th_edit.errors import UserError


class FamilyAdapter(Adapter):
    spec: ClassVar[FamilySpec]

    def __init__(self, config):
        super().__init__(config)
        self.norm_offset = self.spec.norm_offset  # an instance attribute: a test breaks it on purpose
        for key, why in self.spec.refused_options:
            if getattr(config, key, None) not in (None, False, 0):
                raise UserError(f"{config.model_type} with {key}={getattr(config, key)!r} is not supported: {why}")
        for key, required, why in self.spec.required_options:
            if getattr(config, key, required) not in (None, required):
                raise UserError(f"{config.model_type} with {key}={getattr(config, key)!r} is not supported: {why}")
        if self.spec.qkv and self.qkv_layout() == PER_HEAD and self.n_kv_heads != self.n_heads:
            raise AssertionError(f"{self.family}: a per-head fused q/k/v layout has one KV head per query head")

    # ---- paths ----------------------------------------------------------------------------------

    def _prefix(self, layer: int) -> str:
        return self.spec.layer.format(layer=layer)

    def _attn(self, layer: int) -> str:
        return f"{self._prefix(layer)}.{self.spec.attention}"

    def attention_module(self, layer: int) -> str:
        return self._attn(layer)

    def output_projection_module(self, layer: int) -> str:
        return f"{self._attn(layer)}.{self.spec.o}"

    def input_norm_module(self, layer: int) -> str:
        """The module whose input is the residual stream the attention reads (the q projection
        where there is no input norm)."""
        if self.spec.input_norm is None:
            return f"{self._attn(layer)}.{self.spec.qkv or self.spec.q}"
        return f"{self._prefix(layer)}.{self.spec.input_norm}"

    def decoder_layer_module(self, layer: int) -> str:
        return self._prefix(layer)

    def embedding_param(self) -> str:
        return self.spec.embedding

    def unembedding_param(self) -> str:
        return self.spec.unembedding

    def final_norm_module(self) -> str:
        return self.spec.final_norm

    # ---- q/k/v/o slices -------------------------------------------------------------------------

    def qkv_layout(self) -> str:
        """The fused projection's layout (spec.py); Falcon's depends on its config."""
        return self.spec.qkv_layout

    def _qkv_range(self, which: int, head: int) -> tuple[str, int, int]:
        """(projection, start, stop) of q (which=0, query head), k or v (1, 2: KV head) on the
        projection's output axis."""
        spec, dh = self.spec, self.d_head
        if spec.qkv is None:
            return (spec.q, spec.k, spec.v)[which], head * dh, (head + 1) * dh
        H, G, layout = self.n_heads, self.n_kv_heads, self.qkv_layout()
        if layout == BLOCKS:
            start = (0, H * dh, (H + G) * dh)[which] + head * dh
        elif layout == PER_HEAD:
            start = head * 3 * dh + which * dh
        elif layout == GROUPED:
            per_group = H // G
            group, member = (head // per_group, head % per_group) if which == 0 else (head, per_group + which - 1)
            start = group * (per_group + 2) * dh + member * dh
        return spec.qkv, start, start + dh

    def q_slot(self, layer: int, head: int) -> Slot:
        return self._weight_slot(layer, 0, head)

    def k_slot(self, layer: int, kv_head: int) -> Slot:
        return self._weight_slot(layer, 1, kv_head)

    def v_slot(self, layer: int, kv_head: int) -> Slot:
        return self._weight_slot(layer, 2, kv_head)

    def _weight_slot(self, layer: int, which: int, head: int) -> Slot:
        projection, start, stop = self._qkv_range(which, head)
        param = f"{self._attn(layer)}.{projection}.weight"
        if self.spec.conv1d:  # stored in×out: the head's columns, already in math orientation
            return Slot(param, (slice(None), slice(start, stop)), transpose=False)
        return linear_rows(param, start, stop)

    def o_slot(self, layer: int, head: int) -> Slot:
        param, start, stop = f"{self.output_projection_module(layer)}.weight", head * self.d_head, (head + 1) * self.d_head
        if self.spec.conv1d:
            return Slot(param, (slice(start, stop), slice(None)), transpose=False)
        return linear_cols(param, start, stop)

    def bias_slots(self, layer: int, head: int) -> tuple[Slot | None, Slot | None, Slot | None]:
        if not flag(self.spec.qkv_bias, self.config):
            return None, None, None
        slots = []
        for which, index in ((0, head), (1, self.kv_group(head)), (2, self.kv_group(head))):
            projection, start, stop = self._qkv_range(which, index)
            slots.append(vector_range(f"{self._attn(layer)}.{projection}.bias", start, stop))
        return tuple(slots)  # type: ignore[return-value]

    def o_bias(self, layer: int) -> str | None:
        return f"{self.output_projection_module(layer)}.bias" if flag(self.spec.o_bias, self.config) else None

    # ---- norms ----------------------------------------------------------------------------------

    def _norm(self, path: str) -> NormSpec:
        spec = self.spec
        eps = spec.eps_key if isinstance(spec.eps_key, float) else float(getattr(self.config, spec.eps_key))
        weight = f"{path}.weight" if spec.norm_weight else None
        bias = f"{path}.bias" if spec.norm_bias else None
        return NormSpec(spec.norm, weight, bias, eps, self.norm_offset, size=self.d_model)

    def input_norm(self, layer: int) -> NormSpec:
        if self.spec.input_norm is None:
            return NormSpec("none", None, None, 0.0, 0.0, size=self.d_model)
        return self._norm(self.input_norm_module(layer))

    def qk_norm(self, layer: int) -> tuple[NormSpec, NormSpec] | None:
        if self.spec.qk_norm is None or not flag(self.spec.qk_norm_flag, self.config):
            return None
        q_path, k_path = (f"{self._attn(layer)}.{path}" for path in self.spec.qk_norm)
        if self.spec.qk_norm_per_head_modules:  # one norm module per head (no bias): weights head-major
            return self._per_head_norms(q_path, self.n_heads), self._per_head_norms(k_path, self.n_kv_heads)
        return self._norm(q_path), self._norm(k_path)

    def _per_head_norms(self, path: str, heads: int) -> NormSpec:
        weights = tuple(f"{path}.norms.{h}.weight" for h in range(heads))
        return replace(self._norm(path), weight=None, bias=None, weights=weights)

    def output_norm(self, layer: int) -> NormSpec | None:
        # What a head writes reaches the residual stream through this norm: its weight is part
        # of the write direction (its per-token scale, shared by all heads, is not).
        post = self.spec.post_attention_norm
        return None if post is None else self._norm(f"{self._prefix(layer)}.{post}")

    def final_norm(self) -> NormSpec:
        return self._norm(self.spec.final_norm)

    @classmethod
    def legacy_config_keys(cls, config: dict) -> dict[str, object]:
        keys = super().legacy_config_keys(config)
        for new, old in cls.spec.legacy_renames:
            if new in config and old not in config:
                keys[old] = config[new]
        return keys

    # ---- rotary positions -----------------------------------------------------------------------

    def _rope_parameters(self, layer: int) -> tuple[dict, str | None]:
        """This layer's RoPE parameters (5.x `rope_parameters`, nested by layer type for Gemma 3; 4.x's
        top-level keys otherwise) and its layer type where they are nested by it."""
        config = self.config
        rope = getattr(config, "rope_parameters", None)
        layer_types = getattr(config, "layer_types", None)
        if isinstance(rope, dict) and layer_types and isinstance(rope.get(layer_types[layer]), dict):
            return rope[layer_types[layer]], layer_types[layer]
        if isinstance(rope, dict) and rope:
            return rope, None
        scaling = getattr(config, "rope_scaling", None) or {}
        return {"rope_theta": getattr(config, self.spec.legacy_theta_key, None) or 10000.0,
                "partial_rotary_factor": getattr(config, self.spec.legacy_partial_rotary_key, None) or 1.0,
                **scaling}, None

    def rotary(self, layer: int) -> Rotary | None:
        spec = self.spec
        if spec.positions != "rope":
            return None
        if spec.rope_layers_key is not None:
            uses_rope = getattr(self.config, spec.rope_layers_key, None)
            if uses_rope is not None and not uses_rope[layer]:
                return None
        params, layer_type = self._rope_parameters(layer)
        if spec.rotary_dim_key is not None:  # GPT-J: its own rotary_dim, frequencies over those dims
            dims = min(getattr(self.config, spec.rotary_dim_key, None) or self.d_head, self.d_head)
            theta = spec.rope_theta_fixed or float(params.get("rope_theta") or 10000.0)
            return Rotary(default_inv_freq(theta, dims), spec.rotary_interleaved, self.d_head)
        rope_type = params.get("rope_type", params.get("type", "default"))
        if rope_type == "default":
            dims = int(self.d_head * float(params.get("partial_rotary_factor") or 1.0))
            inv_freq = default_inv_freq(float(params["rope_theta"]), dims)
        else:  # scaled RoPE (linear, llama3, yarn, ...): transformers' own initializer, as the model calls it
            from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

            kwargs = {"layer_type": layer_type} if layer_type is not None else {}
            inv_freq = ROPE_INIT_FUNCTIONS[rope_type](self.config, None, **kwargs)[0].double()
        return Rotary(inv_freq, spec.rotary_interleaved, self.d_head)

    # ---- description ----------------------------------------------------------------------------

    def _rotary(self) -> str:
        if self.spec.positions == "learned":
            return "none (learned absolute positions)"
        if self.spec.rotary_dim_key is not None:
            dims = getattr(self.config, self.spec.rotary_dim_key, None) or self.d_head
            pairs = ", interleaved pairs" if self.spec.rotary_interleaved else ""
            return f"RoPE{pairs}" if dims >= self.d_head else f"partial RoPE ({dims} of {self.d_head} dims{pairs})"
        rope = getattr(self.config, "rope_parameters", None) or {}
        fraction = float(rope.get("partial_rotary_factor", getattr(self.config, "partial_rotary_factor", None) or 1.0))
        return "RoPE" if fraction == 1.0 else f"partial RoPE ({int(self.d_head * fraction)} of {self.d_head} dims)"

    def info(self) -> ArchInfo:
        spec = self.spec
        norm = {"rmsnorm": "RMSNorm", "layernorm": "LayerNorm"}[spec.norm] + (" (1+w)" if self.norm_offset else "")
        norm += "" if spec.norm_weight else " without weight"
        norm = norm if spec.input_norm else f"{norm} on outputs only"
        return ArchInfo(
            family=self.family, model_type=self.config.model_type, n_layers=self.n_layers, n_heads=self.n_heads,
            n_kv_heads=self.n_kv_heads, d_model=self.d_model, d_head=self.d_head, norm=norm, rotary=self._rotary(),
            qk_norm=self.qk_norm(0) is not None, post_attention_norm=self.output_norm(0) is not None,
            parallel_residual=flag(spec.parallel_residual, self.config),
            tied_embeddings=bool(getattr(self.config, "tie_word_embeddings", spec.tied_default)),
            vocab_size=self.config.vocab_size,
        )


def adapter_type(spec: FamilySpec, base: type[FamilyAdapter] = FamilyAdapter) -> type[FamilyAdapter]:
    """The adapter class of one spec (a subclass of `base`, which holds any code the family needs)."""
    name = "".join(part.capitalize() for part in spec.model_types[0].split("_")) + "Adapter"
    return type(name, (base,), {
        "spec": spec, "family": spec.family, "model_types": spec.model_types, "config_ints": spec.config_ints,
        "legacy_theta_key": spec.legacy_theta_key, "legacy_partial_rotary_key": spec.legacy_partial_rotary_key,
        "legacy_rope_type_key": spec.legacy_rope_type_key,
    })
