"""Gemma's code beyond its spec (families.py): the config spellings transformers 4.x reads."""

from __future__ import annotations

from th_edit.arch.base import split_rope
from th_edit.arch.family import FamilyAdapter


class GemmaAdapter(FamilyAdapter):
    """Gemma 3 writes its RoPE by layer type, and 4.50-4.52 read which layers are global from a period."""

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
