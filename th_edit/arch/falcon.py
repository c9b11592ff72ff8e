"""Falcon's code beyond its spec (families.py): its config picks the fused q/k/v layout, the KV head
count, the input norm and whether the block is parallel.

transformers' FalconAttention splits query_key_value three ways:
  new_decoder_architecture  [g: q·(H/G) k v] per KV group     (GROUPED, G = num_kv_heads)
  multi_query               [Q: H·dh | K: dh | V: dh]         (BLOCKS, one KV head)
  otherwise                 [h: q k v] per head               (PER_HEAD)
ALiBi adds a position bias to the attention scores: the QK bilinear form is the score before it
(as RoPE's is the unrotated one), so ALiBi models decompose as the rotary ones do.
"""

from __future__ import annotations

from dataclasses import replace

from th_edit.arch.base import ArchInfo
from th_edit.arch.family import FamilyAdapter
from th_edit.arch.spec import BLOCKS, GROUPED, PER_HEAD
from th_edit.errors import UserError


class FalconAdapter(FamilyAdapter):
    decoder_layer_returns_tuple = True  # FalconDecoderLayer returns (hidden states, attention weights)

    def __init__(self, config):
        super().__init__(config)
        if self.new_decoder and not self._flag("parallel_attn", True):
            # transformers builds input_layernorm but its forward reads ln_attn: such a model cannot run
            raise UserError("falcon with new_decoder_architecture and parallel_attn=false is not supported: "
                            "transformers' Falcon cannot run it")
        kv_heads = getattr(config, "num_kv_heads", None) or self.n_heads
        self.n_kv_heads = kv_heads if self.new_decoder else 1 if self._flag("multi_query", True) else self.n_heads
        if self.n_kv_heads < 1 or self.n_heads % self.n_kv_heads:
            raise UserError(f"config.json: num_attention_heads {self.n_heads} does not split into "
                            f"num_kv_heads {self.n_kv_heads} KV groups")

    def _flag(self, key: str, default: bool) -> bool:
        value = getattr(self.config, key, None)
        return default if value is None else bool(value)

    @property
    def new_decoder(self) -> bool:
        return self._flag("new_decoder_architecture", False)

    def qkv_layout(self) -> str:
        return GROUPED if self.new_decoder else BLOCKS if self._flag("multi_query", True) else PER_HEAD

    def input_norm_module(self, layer: int) -> str:
        # new_decoder_architecture has two norms (ln_attn, ln_mlp) unless num_ln_in_parallel_attn is 1
        two_norms = self.new_decoder and getattr(self.config, "num_ln_in_parallel_attn", None) in (None, 2)
        return f"{self._prefix(layer)}.{'ln_attn' if two_norms else 'input_layernorm'}"

    def rotary(self, layer: int):
        return None if self._flag("alibi", False) else super().rotary(layer)

    def info(self) -> ArchInfo:
        info = super().info()
        rotary = "none (ALiBi: an additive score bias; QK is the form before it)" if self._flag("alibi", False) else info.rotary
        return replace(info, rotary=rotary, parallel_residual=self.new_decoder or self._flag("parallel_attn", True))
