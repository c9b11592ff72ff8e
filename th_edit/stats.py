"""Small exact statistics for benchmark reports (no scipy)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction

import numpy as np

Z95 = 1.959963984540054  # two-sided 95% normal quantile


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion; it stays inside [0, 1] and is sane at 0/n and n/n."""
    if n == 0:
        return 0.0, 1.0
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in 0..{n}, got {successes}")
    p = successes / n
    z2 = z * z
    denominator = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denominator
    # At 0/n and n/n the bound is exactly 0 or 1; rounding would leave it a hair inside, which
    # puts the point estimate outside its own interval (and breaks error bars).
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: a sign test on the b + c discordant pairs.

    p = min(1, 2 P[X <= min(b, c)]) with X ~ Bin(b + c, 1/2), computed with exact integers.
    """
    if b < 0 or c < 0:
        raise ValueError("discordant counts must be non-negative")
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1))
    return float(min(Fraction(1), Fraction(2 * tail, 2**n)))


def mean_interval(values: list[float], z: float = Z95) -> tuple[float, float, float]:
    """(mean, low, high): mean ± z·sd/√n with the sample sd; a single value gets a zero-width interval."""
    n = len(values)
    if n == 0:
        raise ValueError("the mean of no values is undefined")
    mean = math.fsum(values) / n
    if n == 1:
        return mean, mean, mean
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    half = z * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def average_ranks(values: np.ndarray) -> np.ndarray:
    """0-based ranks, ties sharing the mean of the ranks they span ([1, 2, 2, 3] -> [0, 1.5, 1.5, 3])."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    first = np.cumsum(counts) - counts  # rank of each distinct value's first occurrence
    return (first + (counts - 1) / 2.0)[inverse]


def spearman(x: Sequence[float], y: Sequence[float], minimum: int = 3) -> float | None:
    """Spearman's rank correlation: Pearson's on average ranks, over the pairs where both values
    are finite. None where it is undefined: fewer than `minimum` (at least 2) such pairs, or one
    side constant. The one implementation (channels' agreement, subspace's crowding)."""
    if len(x) != len(y):
        raise ValueError("x and y must have the same length")
    xs, ys = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    keep = np.isfinite(xs) & np.isfinite(ys)
    xs, ys = xs[keep], ys[keep]
    if len(xs) < max(2, minimum):
        return None
    rx, ry = average_ranks(xs), average_ranks(ys)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denominator = math.sqrt(float((rx ** 2).sum()) * float((ry ** 2).sum()))
    return float((rx * ry).sum()) / denominator if denominator > 0 else None
