"""Per-head effective weights and singular value decompositions of one model, computed once.

Everything that needs a head's OV or QK decomposition (edits, realized-value checks, `inspect`,
channel analysis, search) asks a `Decompositions` for it, so each head is decomposed once per
model however many edits are computed on it, and a head nobody asks about is never decomposed.
"""

from __future__ import annotations

from collections import OrderedDict

import torch

from th_edit.arch import Adapter, LayerWeights
from th_edit.checkpoint import TensorSource
from th_edit.linalg import FactoredMatrix, HeadSVD, factored_svd
from th_edit.linalg import circuit as circuit_of


def _svd(matrix: FactoredMatrix) -> HeadSVD:
    # Through this module's `factored_svd`: every decomposition a session makes passes here once.
    return factored_svd(matrix.left, matrix.right)


class Decompositions:
    """Float64 effective weights (a few layers kept) and per-head SVDs (all kept) of `source`.

    The cache assumes `source` does not change; call `clear()` after changing the weights.
    """

    def __init__(self, adapter: Adapter, source: TensorSource, layers_kept: int = 4):
        self.adapter, self.source = adapter, source
        self._layers: OrderedDict[int, LayerWeights] = OrderedDict()
        self._layers_kept = layers_kept
        self._heads: dict[tuple[int, int, str], HeadSVD] = {}

    def layer(self, layer: int) -> LayerWeights:
        """Effective weights of every query head of `layer` (float64)."""
        if layer in self._layers:
            self._layers.move_to_end(layer)
            return self._layers[layer]
        weights = self.adapter.layer_weights(self.source, layer, dtype=torch.float64)
        self._layers[layer] = weights
        while len(self._layers) > self._layers_kept:
            self._layers.popitem(last=False)
        return weights

    def head(self, layer: int, head: int, circuit: str) -> HeadSVD:
        """SVD of one head's effective OV (circuit "ov") or QK ("qk") matrix."""
        self.adapter.check_head(layer, head)
        key = (layer, head, circuit)
        if key not in self._heads:
            self._heads[key] = _svd(circuit_of(self.layer(layer), circuit)[head])
        return self._heads[key]

    def layer_svd(self, layer: int, circuit: str) -> HeadSVD:
        """Every head of a layer at once (batched), stacked on a leading head dimension."""
        missing = [h for h in range(self.adapter.n_heads) if (layer, h, circuit) not in self._heads]
        if missing:
            batched = _svd(circuit_of(self.layer(layer), circuit))
            for h in missing:
                self._heads[(layer, h, circuit)] = HeadSVD(batched.U[h], batched.S[h], batched.V[h])
        heads = [self._heads[(layer, h, circuit)] for h in range(self.adapter.n_heads)]
        return HeadSVD(torch.stack([s.U for s in heads]), torch.stack([s.S for s in heads]),
                       torch.stack([s.V for s in heads]))

    def clear(self) -> None:
        self._layers.clear()
        self._heads.clear()
