"""Families whose math differs from their spec in one place each: code, kept small."""

from __future__ import annotations

import torch

from th_edit.arch.base import split_rope
from th_edit.arch.family import FamilyAdapter
from th_edit.checkpoint import TensorSource


class GraniteAdapter(FamilyAdapter):
    """Granite adds `residual_multiplier` · (attention output) to the residual stream: the factor is
    part of what every head writes, so W_O^eff holds it (like a post-attention norm's weight, it is
    divided out again when an edit is written into o_proj). `attention_multiplier` replaces
    1/√d_head as the score scale and, like that scale in every family, stays outside QK (the
    bilinear form q·k); `embedding_multiplier` and `logits_scaling` scale the ends of the model by
    constants, which leave every direction th-edit reads unchanged."""

    def out_gain(self, source: TensorSource, layer: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        return torch.full((self.d_model,), float(self.config.residual_multiplier), dtype=dtype)


class Phi3Adapter(FamilyAdapter):
    """Phi-3's 4.x config accepts only `rope_scaling = {type: longrope, short_factor, long_factor}`,
    with original_max_position_embeddings at the top level."""

    @classmethod
    def legacy_rope_keys(cls, rope_parameters: dict) -> dict[str, object]:
        keys = super().legacy_rope_keys(rope_parameters)
        theta, partial, scaling = split_rope(rope_parameters)
        if scaling is not None:
            keys["rope_scaling"] = {"type": scaling.get("rope_type", scaling.get("type")),
                                    "short_factor": scaling.get("short_factor"), "long_factor": scaling.get("long_factor")}
            if "original_max_position_embeddings" in scaling:
                keys["original_max_position_embeddings"] = scaling["original_max_position_embeddings"]
        return keys
