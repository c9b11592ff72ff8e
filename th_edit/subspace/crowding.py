"""Crowding: do the answer positions whose points sit close together in the subspace fail more?

Per list length N and answer position p (a *cell*), the centroid μ(N,p) of the prompts' subspace
coordinates. The separation of a cell is the distance from its centroid to the nearer of its
adjacent positions' centroids (p−1, p+1), divided by the pooled within-cell spread of that N
(the root mean squared distance of its prompts to their own cell's centroid), so that 1 means
"neighbours one typical scatter apart". Each cell's candidate accuracy is set against its
separation:

- pooled: Spearman ρ over all cells, with a 95% bootstrap interval (prompts resampled within
  their cells, centroids and accuracies recomputed);
- within N: the mean over the N with at least three positions of the Spearman ρ inside that N,
  and a two-sided permutation test that shuffles accuracies among the positions of the same N
  (it asks "within a list length, do the crowded positions fail more?", which the pooled ρ —
  where large N is both crowded and hard — cannot separate from N itself).

Crowded positions being the ones the model gets wrong shows up as ρ > 0. Per N, also: the span
of the answer positions' centroids (largest distance between two of them) and the Spearman ρ of
position against the centroids' first coordinate (±1: the positions lie in order along the first
basis direction).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from th_edit import stats as statistics  # `stats` names the bootstrap statistics below

N_BOOTSTRAP = 1000
N_PERMUTATIONS = 10000


def spearman(x: Sequence[float], y: Sequence[float], minimum: int = 3) -> float:
    """th_edit.stats.spearman in this report's convention, where an undefined number is nan (JSON null)."""
    rho = statistics.spearman(x, y, minimum)
    return float("nan") if rho is None else rho


def _statistics(coordinates: np.ndarray, correct: np.ndarray, cells: list[tuple[int, int]],
                picks: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Centroids, accuracies and separations of `cells` ((N, position) pairs) for R draws at once:
    picks[i] is [R, count] indices of the prompts making up cell i in each draw."""
    draws = picks[0].shape[0]
    centroids, squares, accuracy = [], [], []
    for pick in picks:
        x = coordinates[pick]  # [R, count, k]
        mean = x.mean(1)
        centroids.append(mean)
        squares.append(((x - mean[:, None]) ** 2).sum((1, 2)))
        accuracy.append(correct[pick].mean(1))
    distance = np.full((draws, len(cells)), np.nan)
    spread = np.zeros((draws, len(cells)))
    for n in sorted({n for n, _ in cells}):
        members = [i for i, (m, _) in enumerate(cells) if m == n]
        pooled = np.sqrt(sum(squares[i] for i in members) / sum(picks[i].shape[1] for i in members))
        where = {cells[i][1]: i for i in members}
        for i in members:
            position = cells[i][1]
            near = [np.linalg.norm(centroids[i] - centroids[where[q]], axis=1) for q in (position - 1, position + 1)
                    if q in where]
            if near:
                distance[:, i] = np.min(near, axis=0)
            spread[:, i] = pooled
    with np.errstate(divide="ignore", invalid="ignore"):
        separation = np.where(spread > 0, distance / spread, np.nan)
    return {"centroid": np.stack(centroids, 1), "accuracy": np.stack(accuracy, 1), "adjacent_distance": distance,
            "separation": separation, "within_spread": spread}


def _cells(n_items: np.ndarray, positions: np.ndarray) -> tuple[list[tuple[int, int]], list[np.ndarray]]:
    cells, members = [], []
    for n in sorted(set(n_items.tolist())):
        for position in range(n):
            found = np.flatnonzero((n_items == n) & (positions == position))
            if len(found):
                cells.append((n, position))
                members.append(found)
    return cells, members


def cell_table(coordinates: np.ndarray, n_items: np.ndarray, positions: np.ndarray, correct: np.ndarray) -> list[dict]:
    """One row per (N, position) cell: count, centroid, accuracy, separation (raw and normalized)."""
    cells, members = _cells(n_items, positions)
    stats = _statistics(coordinates, correct, cells, [m[None] for m in members])
    return [{"n_items": n, "position": p, "count": len(m), "centroid": stats["centroid"][0, i].tolist(),
             "accuracy": float(stats["accuracy"][0, i]), "adjacent_distance": float(stats["adjacent_distance"][0, i]),
             "separation": float(stats["separation"][0, i]), "within_spread": float(stats["within_spread"][0, i])}
            for i, ((n, p), m) in enumerate(zip(cells, members))]


def _finite_mean(values: Sequence[float]) -> float:
    """Mean of the finite values (nan when there are none: no position has a neighbour)."""
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def _within_n(rows: list[dict]) -> tuple[float, list[int]]:
    rhos, ns = [], []
    for n in sorted({r["n_items"] for r in rows}):
        cells = [r for r in rows if r["n_items"] == n]
        if len(cells) >= 3:
            rho = spearman([c["separation"] for c in cells], [c["accuracy"] for c in cells])
            if np.isfinite(rho):
                rhos.append(rho)
                ns.append(n)
    return (float(np.mean(rhos)) if rhos else float("nan")), ns


def crowding(coordinates: np.ndarray, n_items: np.ndarray, answer_positions: np.ndarray, correct: np.ndarray,
             seed: int = 0, n_bootstrap: int = N_BOOTSTRAP, n_permutations: int = N_PERMUTATIONS) -> dict:
    """Separation of the answer positions' centroids against candidate accuracy (see module doc)."""
    coordinates, n_items = np.asarray(coordinates, dtype=np.float64), np.asarray(n_items)
    answer_positions, correct = np.asarray(answer_positions), np.asarray(correct, dtype=np.float64)
    rows = cell_table(coordinates, n_items, answer_positions, correct)
    rho = spearman([r["separation"] for r in rows], [r["accuracy"] for r in rows])
    rng = np.random.default_rng(seed)

    # Bootstrap: resample prompts within each cell (all draws at once).
    cells, members = _cells(n_items, answer_positions)
    picks = [m[rng.integers(0, len(m), size=(n_bootstrap, len(m)))] for m in members]
    stats = _statistics(coordinates, correct, cells, picks)
    boot = [value for value in (spearman(s, a) for s, a in zip(stats["separation"], stats["accuracy"]))
            if np.isfinite(value)]
    interval = [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))] if boot else [float("nan")] * 2

    # Permutation test within N: shuffle accuracies among the positions of the same N. Ranks are
    # permuted along with the values, so each permutation's ρ is a dot product of fixed rank vectors.
    observed, used_ns = _within_n(rows)
    p_value = float("nan")
    if used_ns:
        permuted = np.zeros(n_permutations)
        for n in used_ns:
            cells = [r for r in rows if r["n_items"] == n]
            rs = statistics.average_ranks(np.array([c["separation"] for c in cells]))
            ra = statistics.average_ranks(np.array([c["accuracy"] for c in cells]))
            rs, ra = rs - rs.mean(), ra - ra.mean()
            order = np.argsort(rng.random((n_permutations, len(cells))), axis=1)
            permuted += (ra[order] @ rs) / np.sqrt((rs ** 2).sum() * (ra ** 2).sum())
        permuted /= len(used_ns)
        p_value = float((1 + np.sum(np.abs(permuted) >= abs(observed) - 1e-12)) / (1 + n_permutations))

    by_n = []
    for n in sorted({r["n_items"] for r in rows}):
        cells = [r for r in rows if r["n_items"] == n]
        in_n = n_items == n
        centroids = np.array([c["centroid"] for c in cells])
        span = float(max(np.linalg.norm(a - b) for a in centroids for b in centroids))
        by_n.append({"n_items": n, "accuracy": float(correct[in_n].mean()), "count": int(in_n.sum()),
                     "centroid_span": span,
                     "order_along_first_direction": spearman([c["position"] for c in cells], centroids[:, 0], minimum=2),
                     "mean_adjacent_distance": _finite_mean([c["adjacent_distance"] for c in cells]),
                     "mean_separation": _finite_mean([c["separation"] for c in cells])})
    return {
        "grouping": "answer position",
        "cells": rows,
        "by_n": by_n,
        "pooled_spearman": rho, "pooled_ci95": interval, "n_bootstrap": n_bootstrap,
        "within_n_spearman": observed, "within_n_ns": used_ns, "within_n_p": p_value, "n_permutations": n_permutations,
    }
