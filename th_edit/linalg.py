"""Factored linear algebra on per-head matrices (docs/method.md#singular-components): never build a d×d matrix.

OV_h = W_V W_O and QK_h = W_Q W_Kᵀ have rank ≤ d_head. A thin QR of the tall left factor
(W = Q R, Q: d×dh orthonormal columns) turns the SVD of the d×d product into the SVD of a small
dh×d matrix:  W R' = Q (R R') = (Q U) S Vᵀ.  Everything is batched over heads.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from th_edit.arch.base import LayerWeights

NEAR_TIE_RTOL = 1e-3  # docs/method.md#singular-components: closer singular values than this have no stable order


@dataclass
class HeadSVD:
    """Thin SVD M = U diag(S) Vᵀ of per-head d×d products, batched over leading dims.

    U: [..., d, r] left (read) directions, S: [..., r] descending, V: [..., d, r] right
    directions: for OV the write directions v_k, for QK the key-side reads b_k.
    """

    U: torch.Tensor
    S: torch.Tensor
    V: torch.Tensor


@contextlib.contextmanager
def single_threaded() -> Iterator[None]:
    """Run small decompositions on one thread.

    They gain nothing from more, and on a busy machine OpenMP's spinning barriers turned a
    10 ms batched SVD into 10 s (measured on 2 cores with another process running).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def factored_svd(left: torch.Tensor, right: torch.Tensor) -> HeadSVD:
    """SVD of left @ right with left: [..., d, r] and right: [..., r, d], via QR of `left`."""
    with single_threaded():
        Q, R = torch.linalg.qr(left)
        # Decompose the tall (d×r) transpose: LAPACK is several times faster on it than on r×d.
        V, S, Uh_small = torch.linalg.svd((R @ right).transpose(-1, -2), full_matrices=False)
        return HeadSVD(U=Q @ Uh_small.transpose(-1, -2), S=S, V=V)


def factored_svdvals(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """Singular values only (descending) of left @ right, left: [..., d, r], right: [..., r, d].

    With left = Q₁R₁ and rightᵀ = Q₂R₂, left @ right = Q₁ (R₁R₂ᵀ) Q₂ᵀ has the singular values of the
    small r×r matrix R₁R₂ᵀ: two QRs and an r×r decomposition without vectors, several times
    cheaper than factored_svd (same values to ~1e-15 relative)."""
    with single_threaded():
        R_left = torch.linalg.qr(left, mode="r").R
        R_right = torch.linalg.qr(right.transpose(-1, -2), mode="r").R
        return torch.linalg.svdvals(R_left @ R_right.transpose(-1, -2))


@dataclass(frozen=True)
class FactoredMatrix:
    """M = left @ right, never formed (the idea of TransformerLens' FactoredMatrix, with only what
    th-edit needs): left [..., d, r], right [..., r, d], batched over leading (head) dims."""

    left: torch.Tensor
    right: torch.Tensor

    def __getitem__(self, heads: int | slice) -> FactoredMatrix:
        return FactoredMatrix(self.left[heads], self.right[heads])

    def __matmul__(self, x: torch.Tensor) -> torch.Tensor:
        """M x, as left (right x): two thin products."""
        return self.left @ (self.right @ x)

    def svd(self) -> HeadSVD:
        return factored_svd(self.left, self.right)

    def svdvals(self) -> torch.Tensor:
        return factored_svdvals(self.left, self.right)

    def norm(self) -> torch.Tensor:
        """Frobenius norm (per head): the root of the squared singular values' sum."""
        return self.svdvals().norm(dim=-1)


CIRCUITS = ("ov", "qk")


def circuit(weights: LayerWeights, name: str) -> FactoredMatrix:
    """A layer's effective OV_h = W_V^eff W_O or QK_h = W_Q^eff (W_K^eff)ᵀ (unrotated, bias-free form)
    for every query head: the one place the pairing of factors is written."""
    if name == "ov":
        return FactoredMatrix(weights.W_V, weights.W_O)
    if name == "qk":
        return FactoredMatrix(weights.W_Q, weights.W_K.transpose(-1, -2))
    raise ValueError(f"circuit must be 'ov' or 'qk', not {name!r}")


def ov_svd(weights: LayerWeights) -> HeadSVD:
    """OV_h = W_V^eff W_O for every query head of a layer."""
    return circuit(weights, "ov").svd()


def qk_svd(weights: LayerWeights) -> HeadSVD:
    """QK_h = W_Q^eff (W_K^eff)ᵀ for every query head of a layer (unrotated, bias-free form)."""
    return circuit(weights, "qk").svd()


def near_ties(singular_values: torch.Tensor, rtol: float = NEAR_TIE_RTOL) -> list[int]:
    """Indices k whose singular value is within `rtol` (relative) of component k+1's."""
    s = singular_values.double()
    gaps = (s[:-1] - s[1:]) / s[:-1].clamp_min(torch.finfo(torch.float64).tiny)
    return [int(k) for k in torch.nonzero(gaps < rtol).flatten()]
