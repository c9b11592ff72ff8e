"""The two bases of the positional subspace, and how they compare.

The *signal* is what the sender heads write into the residual stream at the last token of a
laundry prompt, summed over the sender heads: s = Σ_h z_h W_O^eff[h] (· the post-attention norm's
per-token scale, Gemma). Both bases are orthonormal d×k matrices (columns = directions):

- weights: the write directions v_k of the sender OV components, in the order given (the channel
  ranking), orthonormalized by Gram–Schmidt in that order; a direction that lies (to 1e-6) in the
  span of the earlier ones is skipped. The first `dims` that survive are the basis.
- data: the top `dims` principal axes of the signal over the prompts (centered PCA).

Every column is signed so that the mean coordinate of the signal along it is ≥ 0 (singular
vectors have no sign of their own). `explained` is the share of the signal's total centered
variance along each column; for the data basis these are the PCA ratios.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from th_edit.errors import UserError

Component = tuple[int, int, int]  # (layer, head, OV component), 0-based
DEPENDENT = 1e-6  # a direction whose part outside the earlier ones is shorter than this is skipped


@dataclass
class Basis:
    kind: str  # "weights" | "data"
    vectors: torch.Tensor  # [d, k] float64, orthonormal columns
    explained: torch.Tensor  # [k] share of the signal's centered variance along each column
    components: list[Component] = field(default_factory=list)  # weights: the component behind each column

    @property
    def dims(self) -> int:
        return self.vectors.shape[1]

    def coordinates(self, signal: torch.Tensor) -> torch.Tensor:
        """[P, k] coordinates of signals [P, d] (uncentered: the traversal replaces these)."""
        return signal.double() @ self.vectors


def variance_shares(signal: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """Share of the centered variance of `signal` [P, d] along each column of `vectors` [d, k]."""
    centered = signal.double() - signal.double().mean(0)
    total = centered.pow(2).sum()
    if total == 0:
        return torch.zeros(vectors.shape[1], dtype=torch.float64)
    return (centered @ vectors).pow(2).sum(0) / total


def _oriented(vectors: torch.Tensor, signal: torch.Tensor) -> torch.Tensor:
    means = signal.double().mean(0) @ vectors
    return vectors * torch.where(means < 0, -1.0, 1.0).to(vectors)


def write_directions(session, components: Sequence[Component]) -> torch.Tensor:
    """[d, n] unit write directions v_k of OV components (layer, head, k)."""
    columns = []
    for layer, head, k in components:
        svd = session.svd(layer, head, "ov")
        if not 0 <= k < svd.S.shape[0]:
            raise UserError(f"component {layer}.{head}:{k}: head {layer}.{head} has OV components 0..{svd.S.shape[0] - 1}")
        columns.append(svd.V[:, k].double())
    return torch.stack(columns, dim=1)


def weight_basis(session, components: Sequence[Component], dims: int, signal: torch.Tensor) -> Basis:
    """Orthonormalized write directions of the first `dims` independent sender components."""
    directions = write_directions(session, components)
    kept: list[torch.Tensor] = []
    used: list[Component] = []
    for column, component in zip(directions.T, components):
        for q in kept:
            column = column - (q @ column) * q
        if column.norm() > DEPENDENT:
            kept.append(column / column.norm())
            used.append(component)
        if len(kept) == dims:
            break
    if len(kept) < dims:
        raise UserError(f"the weight basis needs {dims} independent sender components, but only {len(kept)} were given "
                        "(give more components, lower --dims, or use --basis data)")
    vectors = _oriented(torch.stack(kept, dim=1), signal)
    return Basis("weights", vectors, variance_shares(signal, vectors), used)


def data_basis(signal: torch.Tensor, dims: int) -> Basis:
    """PCA of the signal [P, d]: its top `dims` principal axes."""
    signal = signal.double()
    if signal.shape[0] < 2:
        raise UserError("the data basis needs at least two prompts")
    centered = signal - signal.mean(0)
    _, S, Vh = torch.linalg.svd(centered, full_matrices=False)
    if dims > Vh.shape[0]:
        raise UserError(f"--dims {dims} is more than the {Vh.shape[0]} directions {signal.shape[0]} prompts can span")
    vectors = _oriented(Vh[:dims].T.contiguous(), signal)
    total = S.pow(2).sum()
    explained = S[:dims].pow(2) / total if total > 0 else torch.zeros(dims, dtype=torch.float64)
    return Basis("data", vectors, explained)


def principal_angles(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Principal angles in degrees (ascending) between the spans of orthonormal columns a, b."""
    cosines = torch.linalg.svdvals(a.double().T @ b.double()).clamp(-1.0, 1.0)
    return torch.rad2deg(torch.arccos(cosines))
