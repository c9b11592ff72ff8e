"""OPT's code beyond its spec (families.py): the embedding width must be the model width.

OPT-350m embeds into word_embed_proj_dim and maps to hidden_size with project_in (and back with
project_out before the unembedding): the token embedding and unembedding are then not vectors
of the residual stream, which the channel roles read them as. That checkpoint is also post-LN
(do_layer_norm_before: false), refused by the spec.
"""

from __future__ import annotations

from th_edit.arch.family import FamilyAdapter
from th_edit.errors import UserError


class OptAdapter(FamilyAdapter):
    def __init__(self, config):
        super().__init__(config)
        width = getattr(config, "word_embed_proj_dim", None)
        if width not in (None, self.d_model):
            raise UserError(f"opt with word_embed_proj_dim={width!r} (hidden_size {self.d_model}) is not supported: "
                            "its token embedding and unembedding live outside the residual stream (project_in/project_out)")
