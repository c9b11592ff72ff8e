"""Rotary position embeddings as data: which dims of a head rotate together, and how fast (docs/method.md#rotated-composition).

RoPE rotates each pair (i, j) of a head's d_head dims by the angle p·θ_m, p the token's position and
θ_m the pair's inverse frequency. With row vectors (q' = q R(p)) a pair's 2×2 block is
[[cos, sin], [−sin, cos]] on (first, second), as transformers' rotate_half / rotate_every_two do it:
q'_i = q_i cos − q_j sin, q'_j = q_j cos + q_i sin. Rotations of one layout commute and
R(a) R(b)ᵀ = R(a − b), so a query at position i meets a key at position j through
q R(i − j) kᵀ: the score's bilinear form depends only on the offset Δ = i − j, QK_Δ = W_Q R(Δ) W_Kᵀ.

Pairs are the two halves of the rotated dims (Llama, NeoX: (m, m + R/2)) or adjacent dims (GPT-J,
Cohere: (2m, 2m + 1)); R ≤ d_head dims rotate (partial rotary: the first R), the rest pass through.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Rotary:
    """One layer's RoPE: inverse frequencies θ_m of its pairs (radians per token) and their layout."""

    inv_freq: torch.Tensor  # [R/2] float64
    interleaved: bool  # pairs (2m, 2m+1) instead of (m, m + R/2)
    d_head: int

    @property
    def rotary_dims(self) -> int:
        return 2 * self.inv_freq.numel()

    def pairs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(first, second) dim of every rotated pair, [R/2] each."""
        m = torch.arange(self.inv_freq.numel())
        return (2 * m, 2 * m + 1) if self.interleaved else (m, m + self.inv_freq.numel())

    def rotation(self, offsets: torch.Tensor | float | int) -> torch.Tensor:
        """R(Δ) for each offset: [n, d_head, d_head] float64 (orthogonal; q R(Δ) rotates a row vector q)."""
        offsets = torch.as_tensor(offsets, dtype=torch.float64).reshape(-1)
        angle = offsets[:, None] * self.inv_freq[None, :]  # [n, R/2]
        cos, sin = torch.cos(angle), torch.sin(angle)
        R = torch.eye(self.d_head, dtype=torch.float64).repeat(len(offsets), 1, 1)
        first, second = self.pairs()
        R[:, first, first], R[:, second, second] = cos, cos
        R[:, first, second], R[:, second, first] = sin, -sin
        return R


def default_inv_freq(theta: float, dims: int) -> torch.Tensor:
    """θ_m = theta^(−2m/dims), computed in float32 exactly as transformers does (then widened), so that
    positions far out rotate by the very angles the model uses."""
    return (1.0 / (theta ** (torch.arange(0, dims, 2, dtype=torch.int64).float() / dims))).double()
