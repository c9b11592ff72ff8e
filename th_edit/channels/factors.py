"""Per-head SVD factors of every query head's effective OV and QK, for the whole model (docs/method.md#singular-components).

`head_factors` reads one layer at a time through an architecture adapter and keeps only the thin
SVD factors (d×r and r values per head; r = d_head), never a d×d matrix:

    OV_h = W_V^eff W_O   = Σ_k s_k u_k v_kᵀ     u_k: read (source side), v_k: write direction
    QK_h = W_Q^eff W_K^effᵀ = Σ_j σ_j a_j b_jᵀ   a_j: query-side read,    b_j: key-side read

Under grouped-query attention every *query* head gets its own factors (its own W_Q and W_O, its
group's W_K and W_V). The factors also carry, per KV group, an orthonormal basis of the group's
W_K^eff and W_V^eff columns: every b_j (resp. u_k) of every query head of that group lies in that
dh-dimensional span, which lets the all-pairs composition kernel share one d×dh product per group
instead of one per query head (see `composition.py`).
"""

from __future__ import annotations

from concurrent.futures import as_completed
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch

from th_edit import ui
from th_edit.arch.base import Adapter
from th_edit.channels.parallel import worker_pool
from th_edit.checkpoint import TensorSource
from th_edit.errors import UserError
from th_edit.heads import HeadId, parse_head  # noqa: F401  (re-exported: th_edit.channels API)
from th_edit.linalg import HeadSVD, ov_svd, qk_svd

if TYPE_CHECKING:
    from th_edit.channels.rotated import RotatedReads


@dataclass
class HeadFactors:
    """SVD factors of every query head, stacked as [n_layers, n_heads, ...] in `dtype`.

    ov.U [L, H, d, r]: u_k, ov.S [L, H, r]: s_k (descending), ov.V [L, H, d, r]: write directions v_k;
    qk.U: a_j, qk.S: σ_j, qk.V: b_j. k_basis / v_basis [L, G, d, dh]: orthonormal bases of each KV
    group's W_K^eff / W_V^eff (G = n_kv_heads). Query head h belongs to group `kv_group[h]`.
    """

    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_model: int
    d_head: int
    kv_group: tuple[int, ...]
    ov: HeadSVD
    qk: HeadSVD
    k_basis: torch.Tensor
    v_basis: torch.Tensor
    # q/k read sides through RoPE at chosen offsets (channels/rotated.py); None: the unrotated QK
    rotated: RotatedReads | None = None

    def with_rotation(self, rotated: RotatedReads | None) -> HeadFactors:
        """The same factors, with q- and k-composition scored through `rotated` (None: unrotated)."""
        return replace(self, rotated=rotated)

    @property
    def form(self) -> dict[str, object]:
        """Which QK form the q and k modes use, as channels.json records it."""
        return {"form": "unrotated"} if self.rotated is None else self.rotated.offsets.as_dict()

    @property
    def rank(self) -> int:
        """Number of singular components per head (= d_head)."""
        return self.ov.S.shape[-1]

    @property
    def dtype(self) -> torch.dtype:
        return self.ov.V.dtype

    def check_head(self, head: HeadId) -> None:
        if not (0 <= head.layer < self.n_layers and 0 <= head.head < self.n_heads):
            raise UserError(f"head {head} does not exist: the model has layers 0..{self.n_layers - 1} "
                            f"and heads 0..{self.n_heads - 1}")

    def heads(self) -> list[HeadId]:
        """Every query head, in the flat order used by all score tensors (layer-major)."""
        return [HeadId(layer, head) for layer in range(self.n_layers) for head in range(self.n_heads)]

    def flat(self, head: HeadId) -> int:
        return head.layer * self.n_heads + head.head

    def group_is_contiguous(self) -> bool:
        """True when query heads of a KV group are consecutive (h // heads_per_group), as in every adapter."""
        per_group = self.n_heads // self.n_kv_heads
        return all(group == head // per_group for head, group in enumerate(self.kv_group))


def head_factors(adapter: Adapter, source: TensorSource, dtype: torch.dtype = torch.float32,
                 workers: int | None = None) -> HeadFactors:
    """Effective OV/QK SVD factors of every query head of the model behind `adapter` and `source`.

    Each layer's effective weights and SVDs are computed in float64 (the same `linalg` SVDs that
    `apply` edits, so component indices agree) and stored in `dtype` (float32 halves the memory; its
    rounding, ~1e-7 relative, is far below anything reported). Layers are independent and run on
    `workers` threads (`source.get` must be thread-safe, as th-edit's sources are).
    """
    L, H, G, d, dh = adapter.n_layers, adapter.n_heads, adapter.n_kv_heads, adapter.d_model, adapter.d_head
    r = min(d, dh)

    def empty(*shape: int) -> torch.Tensor:
        return torch.empty(*shape, dtype=dtype)

    ov = HeadSVD(U=empty(L, H, d, r), S=empty(L, H, r), V=empty(L, H, d, r))
    qk = HeadSVD(U=empty(L, H, d, r), S=empty(L, H, r), V=empty(L, H, d, r))
    k_basis, v_basis = empty(L, G, d, r), empty(L, G, d, r)
    kv_group = tuple(adapter.kv_group(h) for h in range(H))
    first_of_group = [kv_group.index(g) for g in range(G)]

    def factor_layer(layer: int) -> None:
        weights = adapter.layer_weights(source, layer, dtype=torch.float64)
        for target, svd in ((ov, ov_svd(weights)), (qk, qk_svd(weights))):
            target.U[layer], target.S[layer], target.V[layer] = svd.U, svd.S, svd.V
        # Thin QR: Q spans the columns of W_K (W_V) even when they are rank-deficient.
        k_basis[layer] = torch.linalg.qr(weights.W_K[first_of_group]).Q
        v_basis[layer] = torch.linalg.qr(weights.W_V[first_of_group]).Q

    # Many small ops per layer: one thread each (see parallel.py), layers side by side.
    with worker_pool(workers) as pool:
        for done in ui.progress(as_completed([pool.submit(factor_layer, layer) for layer in range(L)]),
                                desc="head SVDs", total=L, unit="layer"):
            done.result()
    return HeadFactors(n_layers=L, n_heads=H, n_kv_heads=G, d_model=d, d_head=dh, kv_group=kv_group,
                       ov=ov, qk=qk, k_basis=k_basis, v_basis=v_basis)
