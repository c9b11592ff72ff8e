"""Q- and K-composition through RoPE at chosen query−key offsets (docs/method.md#rotated-composition).

On a rotary model the receiver's query at position i meets a key at position j through
QK_Δ = W_Q R(Δ) W_Kᵀ, Δ = i − j (th_edit/arch/rotary.py); the unrotated QK is QK_0. For a set of offsets
with weights w_Δ (one offset, a range, or the offsets between END and the item mentions of the task
prompts, weighted by how often they occur) the receiver matrix is the horizontal stack
M = [√w_Δ QK_Δ]_Δ (K mode: [√w_Δ QK_Δᵀ]_Δ), so that

    C_k² = Σ_Δ w_Δ ‖v_kᵀ QK_Δ‖² / Σ_Δ w_Δ ‖QK_Δ‖_F²,

the weighted mean of the per-offset squared scores in the units of the receiver's norm; everything
else (z-scores, shares, full = recombined components) follows as for the unrotated form. M stays
factored: M Mᵀ = W_Q G W_Qᵀ with the d_head×d_head G = Σ_Δ w_Δ R(Δ) W_KᵀW_K R(Δ)ᵀ (K mode: W_K and
Σ_Δ w_Δ R(Δ)ᵀ W_QᵀW_Q R(Δ)), so with G = L Lᵀ the read factor is the d×d_head matrix W_Q L, whose thin
SVD gives the read directions and singular values `composition.py` multiplies the senders by.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import as_completed
from dataclasses import dataclass

import torch

from th_edit import ui
from th_edit.arch.base import Adapter
from th_edit.channels.parallel import worker_pool
from th_edit.checkpoint import TensorSource
from th_edit.errors import UserError
from th_edit.linalg import single_threaded

UNROTATED = "unrotated"
TASK = "task"
MAX_OFFSET = 1_000_000


@dataclass(frozen=True)
class Offsets:
    """Query−key offsets Δ ≥ 0 and their weights (summing to 1), and the form they were asked in."""

    form: str  # "0", "1-64", "task", ...
    weights: dict[int, float]

    def as_dict(self) -> dict[str, object]:
        return {"form": self.form, "offsets": {str(k): v for k, v in sorted(self.weights.items())}}


def parse_offsets(text: str) -> str:
    """Check an --offsets value: `unrotated` (today's form), `N`, `A-B` (uniform over A..B) or `task`."""
    text = text.strip()
    if text in (UNROTATED, TASK) or re.fullmatch(r"\d+", text):
        if text.isdigit() and int(text) > MAX_OFFSET:
            raise UserError(f"offset {text} is too large (at most {MAX_OFFSET})")
        return text
    match = re.fullmatch(r"(\d+)-(\d+)", text)
    if not match or int(match[1]) > int(match[2]) or int(match[2]) > MAX_OFFSET:
        raise UserError(f"--offsets {text!r}: write an offset (0), a range (1-64), 'task' or 'unrotated'")
    return text


def offsets_from(form: str, task_offsets: Sequence[int] = ()) -> Offsets:
    """The weighted offsets of a checked form; `task` weighs each observed offset by its count."""
    form = parse_offsets(form)
    if form == UNROTATED:
        raise ValueError("the unrotated form has no offsets")
    if form == TASK:
        counts = Counter(int(o) for o in task_offsets)
        if not counts:
            raise UserError("--offsets task: the task prompts gave no END-to-mention offsets")
    elif "-" in form:
        start, stop = map(int, form.split("-"))
        counts = Counter(range(start, stop + 1))
    else:
        counts = Counter([int(form)])
    total = sum(counts.values())
    return Offsets(form, {k: v / total for k, v in sorted(counts.items())})


def task_offsets(mentions: Sequence) -> list[int]:
    """END − position of every mention the data check reads (the answer's and the repeated items'
    second mentions), one per mention per prompt (`tasks.mentions.Mentions`)."""
    return [m.end - p for m in mentions for p in (m.answer_first, *m.repeated_second)]


@dataclass
class RotatedReads:
    """The read side of the q and k modes through RoPE at `offsets`, per query head (see module doc)."""

    offsets: Offsets
    q_directions: torch.Tensor  # [L, H, d, r]
    q_singular_values: torch.Tensor  # [L, H, r]
    k_directions: torch.Tensor
    k_singular_values: torch.Tensor


def offset_gram(gram: torch.Tensor, rotations: torch.Tensor, weights: torch.Tensor, transpose: bool) -> torch.Tensor:
    """Σ_Δ w_Δ R(Δ) A R(Δ)ᵀ (transpose: R(Δ)ᵀ A R(Δ)) for a batch of d_head×d_head A: [..., dh, dh]."""
    R = rotations.transpose(-1, -2) if transpose else rotations  # [n, dh, dh]
    out = torch.zeros_like(gram)
    for w, rotation in zip(weights.tolist(), R):
        out += w * (rotation @ gram @ rotation.T)
    return out


def _read_factor(W: torch.Tensor, G: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Left singular vectors and values of W L, G = L Lᵀ (G symmetric PSD): [H, d, r], [H, r]."""
    eigenvalues, eigenvectors = torch.linalg.eigh(G)
    L = eigenvectors * eigenvalues.clamp_min(0).sqrt()[..., None, :]
    X, S, _ = torch.linalg.svd(W @ L, full_matrices=False)
    return X, S


def rotated_reads(adapter: Adapter, source: TensorSource, offsets: Offsets, dtype: torch.dtype = torch.float32,
                  workers: int | None = None) -> RotatedReads:
    """q- and k-mode read directions of every query head through RoPE at `offsets` (float64 inside).
    A layer without RoPE (NoPE, learned positions) keeps its unrotated form, whatever the offsets."""
    L, H, d, dh = adapter.n_layers, adapter.n_heads, adapter.d_model, adapter.d_head
    r = min(d, dh)
    out = RotatedReads(offsets, *(torch.empty(L, H, *shape, dtype=dtype) for shape in ((d, r), (r,), (d, r), (r,))))
    deltas = torch.tensor(list(offsets.weights), dtype=torch.float64)
    weights = torch.tensor(list(offsets.weights.values()), dtype=torch.float64)

    def layer_reads(layer: int) -> None:
        weights_l = adapter.layer_weights(source, layer, dtype=torch.float64)
        rotary = adapter.rotary(layer)
        rotations = rotary.rotation(deltas) if rotary is not None else torch.eye(dh, dtype=torch.float64)[None]
        w = weights if rotary is not None else torch.ones(1, dtype=torch.float64)
        W_Q, W_K = weights_l.W_Q, weights_l.W_K  # [H, d, dh]
        with single_threaded():
            G_q = offset_gram(W_K.transpose(-1, -2) @ W_K, rotations, w, transpose=False)
            G_k = offset_gram(W_Q.transpose(-1, -2) @ W_Q, rotations, w, transpose=True)
            (qX, qS), (kX, kS) = _read_factor(W_Q, G_q), _read_factor(W_K, G_k)
        out.q_directions[layer], out.q_singular_values[layer] = qX[..., :r], qS[..., :r]
        out.k_directions[layer], out.k_singular_values[layer] = kX[..., :r], kS[..., :r]

    with worker_pool(workers) as pool:
        for done in ui.progress(as_completed([pool.submit(layer_reads, layer) for layer in range(L)]),
                                desc="rotated QK", total=L, unit="layer"):
            done.result()
    return out
