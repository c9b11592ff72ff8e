"""Composition scores between attention heads, whole and per singular component (docs/method.md#composition-scores).

For a sender head A (layer l_A) and a receiver head B in a later layer (l_B > l_A), with
OV_A = Σ_k s_k u_k v_kᵀ:

    mode  receiver matrix M_B   full score (Elhage et al.)              per component k of A
    q     QK_B                  ‖OV_A QK_B‖_F  / (‖OV_A‖_F ‖QK_B‖_F)    C_q = ‖v_kᵀ QK_B‖₂  / ‖QK_B‖_F
    k     QK_Bᵀ                 ‖OV_A QK_Bᵀ‖_F / (‖OV_A‖_F ‖QK_B‖_F)    C_k = ‖v_kᵀ QK_Bᵀ‖₂ / ‖QK_B‖_F
    v     OV_B                  ‖OV_A OV_B‖_F  / (‖OV_A‖_F ‖OV_B‖_F)    C_v = ‖v_kᵀ OV_B‖₂  / ‖OV_B‖_F

Per-component scores do not depend on s_k and recombine exactly: full² = Σ_k s_k² C_k² / Σ_k s_k²
(that is how `full` is computed here). A random unit direction scores ≈ 1/√d_model (`baseline`).

How all pairs are computed without a d×d matrix. With the receiver's thin SVD M_B = X Σ Yᵀ
(Y with orthonormal columns), ‖vᵀ M_B‖ = ‖vᵀ X Σ‖: right-multiplying a row vector by Yᵀ keeps its
norm. (Only a factor with orthonormal *rows* may be dropped on the right: the Frobenius norm is not
invariant under cyclic permutation, so ‖v_kᵀ QK_B‖ ≠ ‖v_kᵀ W_K W_Qᵀ‖ in general, and K mode must
use QK_Bᵀ = B Σ Aᵀ.) So each receiver contributes a d×r read factor

    q: A_B Σ_B / ‖Σ_B‖      k: B_B Σ_B / ‖Σ_B‖      v: U'_B S'_B / ‖S'_B‖

and the scores of every sender component are the block row norms of one big product
[write directions of all senders, (L·H·r)×d] × [read factors, d×(…)]. The product is tiled by
receiver layer and sender rows, and only rows of senders in earlier layers are multiplied: its
memory is one tile (`tile_bytes`), whatever the number of heads. Under grouped-query attention the
k and v read factors of all query heads of a KV group lie in the span of the group's W_K (W_V):
with an orthonormal basis Q_g of that span, vᵀ F_h = (vᵀ Q_g)(Q_gᵀ F_h), so the d-long product is
done once per group and each query head only adds a dh×r product. Every path is checked against
dense d×d products in tests/test_composition.py.

On a rotary model the q and k modes can be scored through RoPE at chosen query−key offsets instead of the
unrotated QK (`HeadFactors.with_rotation`, channels/rotated.py, docs/method.md#rotated-composition): only the
receiver's read factors change.

Receiver resolution (`resolve_pair`): the sender component k meets receiver component j with the
cosine c_kj = |v_kᵀ a_j| (q), |v_kᵀ b_j| (k) or |v_kᵀ u'_j| (v), and C_k² = Σ_j σ_j² c_kj² / Σ_j σ_j².

z-scores: for each receiver and mode, against the empirical distribution of the per-component
scores of every component of every sender in an earlier layer (mean and sample standard deviation,
n − 1); full-score z-scores likewise against every earlier-layer sender's full score. Receivers in
layer 0 have no senders: their statistics and z-scores are NaN, as are all scores with l_A ≥ l_B.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from th_edit import ui
from th_edit.channels.factors import HeadFactors, HeadId, parse_head
from th_edit.channels.parallel import default_workers, worker_pool
from th_edit.errors import UserError

MODES: tuple[str, ...] = ("q", "k", "v")
RECEIVER_MATRIX = {"q": "QK", "k": "QK", "v": "OV"}
DEFAULT_TILE_BYTES = 8 * 1024 * 1024  # per worker; 4–32 MB measured alike on SmolLM2


def check_modes(modes: Sequence[str] | str) -> tuple[str, ...]:
    modes = (modes,) if isinstance(modes, str) else tuple(modes)
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise UserError(f"unknown composition mode {', '.join(map(repr, unknown)) or '(none)'}: use q, k or v")
    return tuple(dict.fromkeys(modes))


def parse_pair(text: str) -> tuple[HeadId, HeadId]:
    """`"20.0:23.0"` → (sender 20.0, receiver 23.0)."""
    sender, colon, receiver = text.partition(":")
    if not colon:
        raise UserError(f"'{text}' is not a head pair: write sender:receiver, e.g. 20.0:23.0")
    return parse_head(sender), parse_head(receiver)


def check_pair(factors: HeadFactors, sender: HeadId, receiver: HeadId) -> None:
    factors.check_head(sender)
    factors.check_head(receiver)
    if sender.layer >= receiver.layer:
        raise UserError(f"pair {sender}:{receiver}: the sender's layer must be below the receiver's "
                        "(a head only reads what earlier layers wrote)")


# ----------------------------------------------------------------------------------------------
# Receiver read factors


def _normalized(singular_values: torch.Tensor) -> torch.Tensor:
    """Σ / ‖Σ‖ (‖M‖_F = ‖Σ‖), with a zero matrix left at zero instead of NaN."""
    norm = torch.linalg.vector_norm(singular_values, dim=-1, keepdim=True)
    return singular_values / norm.clamp_min(torch.finfo(singular_values.dtype).tiny)


class ReadSide(NamedTuple):
    """The receiver side of one mode (docs/method.md#receiver-resolution): its directions and singular values, per query head."""

    directions: torch.Tensor  # [L, H, d, r]: a_j (q), b_j (k), u'_j (v)
    singular_values: torch.Tensor  # [L, H, r]: σ_j (q, k), s'_j (v)
    group_basis: torch.Tensor | None  # [L, G, d, dh] spanning the directions of a KV group, if shared


def read_side(factors: HeadFactors, mode: str, unrotated: bool = False) -> ReadSide:
    """The receiver side of `mode`; q and k through RoPE when the factors carry a rotated form
    (docs/method.md#rotated-composition) unless `unrotated` (the editable QK components)."""
    rotated = None if unrotated else factors.rotated
    if rotated is not None and mode == "q":
        return ReadSide(rotated.q_directions, rotated.q_singular_values, None)
    if rotated is not None and mode == "k":  # every k read lies in the span of the group's W_K still
        return ReadSide(rotated.k_directions, rotated.k_singular_values, factors.k_basis)
    if mode == "q":
        return ReadSide(factors.qk.U, factors.qk.S, None)  # W_Q is per query head: nothing to share
    if mode == "k":
        return ReadSide(factors.qk.V, factors.qk.S, factors.k_basis)
    return ReadSide(factors.ov.U, factors.ov.S, factors.v_basis)


@dataclass
class _LayerReader:
    """One mode's read factors for all query heads of one receiver layer.

    `columns` [d, width] multiplies the sender rows; with `mix` [G, dh, per_group·r] (shared group
    basis) a second, small product per query head follows.
    """

    columns: torch.Tensor
    mix: torch.Tensor | None
    n_heads: int
    rank: int

    @property
    def width(self) -> int:
        return self.columns.shape[1]

    def norms(self, block: torch.Tensor) -> torch.Tensor:
        """Row norms per receiver head of `block` = sender rows @ columns: [n, width] → [n, H]."""
        n = block.shape[0]
        if self.mix is None:
            return torch.linalg.vector_norm(block.unflatten(1, (self.n_heads, self.rank)), dim=-1)
        groups, dh, _ = self.mix.shape
        per_group = self.n_heads // groups
        projected = torch.bmm(block.unflatten(1, (groups, dh)).transpose(0, 1), self.mix)  # [G, n, per_group·r]
        norms = torch.linalg.vector_norm(projected.unflatten(2, (per_group, self.rank)), dim=-1)  # [G, n, per_group]
        return norms.transpose(0, 1).reshape(n, self.n_heads)


def _shares_group_basis(factors: HeadFactors, side: ReadSide) -> bool:
    """Whether one d×dh product per KV group plus a dh×r one per query head beats one d×r per query head."""
    if side.group_basis is None or not factors.group_is_contiguous():
        return False
    G, H, d, dh, r = factors.n_kv_heads, factors.n_heads, factors.d_model, side.group_basis.shape[-1], factors.rank
    return G * dh * d + H * dh * r < H * r * d


def _layer_reader(factors: HeadFactors, layer: int, mode: str, dtype: torch.dtype) -> _LayerReader:
    side = read_side(factors, mode)
    H, r, d = factors.n_heads, factors.rank, factors.d_model
    read = side.directions[layer].to(dtype) * _normalized(side.singular_values[layer].to(dtype))[:, None, :]  # [H, d, r]
    if not _shares_group_basis(factors, side):
        return _LayerReader(read.permute(1, 0, 2).reshape(d, H * r), None, H, r)
    G = factors.n_kv_heads
    group_basis = side.group_basis[layer].to(dtype)  # [G, d, dh]
    mix = group_basis.transpose(1, 2)[list(factors.kv_group)] @ read  # [H, dh, r]: Q_gᵀ F_h
    mix = mix.unflatten(0, (G, H // G)).permute(0, 2, 1, 3).reshape(G, group_basis.shape[2], (H // G) * r)
    return _LayerReader(group_basis.permute(1, 0, 2).reshape(d, -1), mix.contiguous(), H, r)


# ----------------------------------------------------------------------------------------------
# All pairs


class ComponentScore(NamedTuple):
    sender: HeadId
    component: int
    receiver: HeadId
    mode: str
    score: float
    z: float

    def __str__(self) -> str:
        return (f"sender {self.sender} component {self.component} → receiver {self.receiver} "
                f"({self.mode.upper()}-composition {self.score:.4f}, z {self.z:+.2f})")


@dataclass
class PairScores:
    """Every score of one sender → receiver pair in one mode."""

    sender: HeadId
    receiver: HeadId
    mode: str
    full: float
    full_z: float
    components: torch.Tensor  # [r] per-component scores C_k
    z: torch.Tensor  # [r] their z-scores for this receiver
    sender_singular_values: torch.Tensor  # [r] s_k
    baseline: float

    @property
    def shares(self) -> torch.Tensor:
        """[r] each sender component's share of the pair's full composition, s_k² C_k² / Σ_j s_j² C_j²
        (they sum to 1: docs/method.md#composition-scores). C_k alone ignores s_k: a component that barely
        writes anything can still point where the receiver reads."""
        weighted = (self.sender_singular_values.double() * self.components.double()) ** 2
        return weighted / weighted.sum() if float(weighted.sum()) > 0 else torch.zeros_like(weighted)

    def to_dict(self) -> dict[str, object]:
        return {
            "sender": str(self.sender), "receiver": str(self.receiver), "mode": self.mode,
            "full": self.full, "full_z": self.full_z, "baseline": self.baseline,
            "components": [float(x) for x in self.components], "z": [float(x) for x in self.z],
            "sender_singular_values": [float(x) for x in self.sender_singular_values],
            "shares": [float(x) for x in self.shares],
        }


@dataclass
class CompositionScores:
    """Composition scores of every sender → receiver pair with l_A < l_B (NaN elsewhere).

    Flat indices: head (l, h) is l·H + h; sender component k of head A is flat(A)·r + k.
    `components[mode]` [L·H·r, L·H] (compute dtype, float32 by default), `full[mode]` [L·H, L·H]
    (float64); the per-receiver statistics behind the z-scores are [L·H] (float64). Use the
    accessors for [layer, head, ...] views.
    """

    n_layers: int
    n_heads: int
    rank: int
    d_model: int
    modes: tuple[str, ...]
    sender_singular_values: torch.Tensor  # [L, H, r] float64
    components: dict[str, torch.Tensor]
    full: dict[str, torch.Tensor]
    component_mean: dict[str, torch.Tensor]
    component_std: dict[str, torch.Tensor]
    full_mean: dict[str, torch.Tensor]
    full_std: dict[str, torch.Tensor]
    form: dict[str, object] = field(default_factory=lambda: {"form": "unrotated"})  # HeadFactors.form

    @property
    def baseline(self) -> float:
        """Score of a random unit direction: ≈ 1/√d_model (E‖vᵀM‖² = ‖M‖_F²/d for v uniform on the sphere)."""
        return 1.0 / math.sqrt(self.d_model)

    def _mode(self, mode: str) -> str:
        (mode,) = check_modes(mode)
        if mode not in self.modes:
            raise UserError(f"mode {mode} was not computed (computed: {', '.join(self.modes)})")
        return mode

    def component_scores(self, mode: str) -> torch.Tensor:
        """[L_A, H_A, r, L_B, H_B] view of the per-component scores."""
        L, H, r = self.n_layers, self.n_heads, self.rank
        return self.components[self._mode(mode)].view(L, H, r, L, H)

    def full_scores(self, mode: str) -> torch.Tensor:
        """[L_A, H_A, L_B, H_B] view of the full (Elhage) scores."""
        L, H = self.n_layers, self.n_heads
        return self.full[self._mode(mode)].view(L, H, L, H)

    def component_z(self, mode: str) -> torch.Tensor:
        """[L_A, H_A, r, L_B, H_B] z-scores of the per-component scores, per receiver (float32)."""
        mode = self._mode(mode)
        mean, std = self.component_mean[mode].float(), self.component_std[mode].float()
        return ((self.components[mode].float() - mean) / std).view(self.n_layers, self.n_heads, self.rank,
                                                                  self.n_layers, self.n_heads)

    def full_z(self, mode: str) -> torch.Tensor:
        """[L_A, H_A, L_B, H_B] z-scores of the full scores against earlier-layer senders, per receiver."""
        mode = self._mode(mode)
        z = (self.full[mode] - self.full_mean[mode]) / self.full_std[mode]
        return z.view(self.n_layers, self.n_heads, self.n_layers, self.n_heads)

    def _flat(self, head: HeadId) -> int:
        if not (0 <= head.layer < self.n_layers and 0 <= head.head < self.n_heads):
            raise UserError(f"head {head} does not exist: the model has layers 0..{self.n_layers - 1} "
                            f"and heads 0..{self.n_heads - 1}")
        return head.layer * self.n_heads + head.head

    def pair(self, sender: HeadId, receiver: HeadId, mode: str) -> PairScores:
        mode = self._mode(mode)
        a, b = self._flat(sender), self._flat(receiver)
        if sender.layer >= receiver.layer:
            raise UserError(f"pair {sender}:{receiver}: the sender's layer must be below the receiver's")
        r = self.rank
        components = self.components[mode][a * r:(a + 1) * r, b].double()
        mean, std = self.component_mean[mode][b], self.component_std[mode][b]
        full = float(self.full[mode][a, b])
        return PairScores(
            sender=sender, receiver=receiver, mode=mode, full=full,
            full_z=float((full - self.full_mean[mode][b]) / self.full_std[mode][b]),
            components=components, z=(components - mean) / std,
            sender_singular_values=self.sender_singular_values[sender.layer, sender.head],
            baseline=self.baseline,
        )

    def top_components(self, receiver: HeadId, mode: str, n: int = 10) -> list[ComponentScore]:
        """The `n` sender components (all earlier layers) with the highest score into `receiver`."""
        mode = self._mode(mode)
        b = self._flat(receiver)
        prefix = receiver.layer * self.n_heads * self.rank  # rows of senders in earlier layers
        column = self.components[mode][:prefix, b].double()
        values, rows = torch.topk(column, min(n, prefix))
        mean, std = self.component_mean[mode][b], self.component_std[mode][b]
        out = []
        for value, row in zip(values.tolist(), rows.tolist()):
            sender, k = divmod(row, self.rank)
            out.append(ComponentScore(HeadId(*divmod(sender, self.n_heads)), k, receiver, mode, value,
                                      float((value - mean) / std)))
        return out


def composition_scores(factors: HeadFactors, modes: Sequence[str] = MODES, *, dtype: torch.dtype = torch.float32,
                       tile_bytes: int = DEFAULT_TILE_BYTES, workers: int | None = None) -> CompositionScores:
    """Full and per-component composition scores of every sender → receiver pair (l_A < l_B).

    The big products run in `dtype` (float32 by default: against float64 dense products its error
    was ≤ 4e-7 relative on SmolLM2, and is tested ≤ 2e-6 absolute on tiny models) on `workers`
    threads (default: torch's thread count), each multiplying its own tiles of at most `tile_bytes`
    (see `parallel.worker_pool`). Memory beyond the result: one tile per worker plus one receiver
    layer's read factors.
    """
    modes = check_modes(modes)
    L, H, r, d = factors.n_layers, factors.n_heads, factors.rank, factors.d_model
    # Rows v_kᵀ of every sender, s-free; senders in the last layer have no receiver.
    senders = factors.ov.V[:-1].to(dtype).transpose(-1, -2).reshape(-1, d).contiguous()
    components = {m: torch.full((L * H * r, L * H), math.nan, dtype=dtype) for m in modes}
    element = torch.empty((), dtype=dtype).element_size()

    def score_rows(readers: list[_LayerReader], columns: torch.Tensor, layer: int, start: int, stop: int) -> None:
        product = senders[start:stop] @ columns
        offset = 0
        for mode, reader in zip(modes, readers):
            block = product[:, offset:offset + reader.width]
            components[mode][start:stop, layer * H:(layer + 1) * H] = reader.norms(block)
            offset += reader.width

    n_workers = max(1, workers or default_workers())
    with worker_pool(n_workers) as pool:
        for layer in ui.progress(range(1, L), desc="composition", unit="layer"):
            readers = [_layer_reader(factors, layer, mode, dtype) for mode in modes]
            columns = torch.cat([reader.columns for reader in readers], dim=1)
            prefix = layer * H * r  # only senders in earlier layers
            rows = max(1, min(tile_bytes // (columns.shape[1] * element), -(-prefix // n_workers)))
            tiles = [pool.submit(score_rows, readers, columns, layer, start, min(start + rows, prefix))
                     for start in range(0, prefix, rows)]
            for tile in tiles:
                tile.result()
        s = factors.ov.S.double().reshape(L * H, r)
        weights = s.square() / s.square().sum(-1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
        full = {m: _full_from_components(components[m], weights, L) for m in modes}
        stats = {m: _receiver_stats(components[m], H * r, H, L) for m in modes}
        full_stats = {m: _receiver_stats(full[m], H, H, L) for m in modes}
    return CompositionScores(
        n_layers=L, n_heads=H, rank=r, d_model=d, modes=modes,
        sender_singular_values=factors.ov.S.double(), components=components, full=full,
        component_mean={m: stats[m][0] for m in modes}, component_std={m: stats[m][1] for m in modes},
        full_mean={m: full_stats[m][0] for m in modes}, full_std={m: full_stats[m][1] for m in modes},
        form=factors.form,
    )


def _full_from_components(components: torch.Tensor, weights: torch.Tensor, layers: int) -> torch.Tensor:
    """full² = Σ_k s_k² C_k² / Σ_k s_k², one sender layer at a time (bounded float64 temporaries)."""
    n_senders, r = weights.shape
    heads = n_senders // layers
    full = torch.empty(n_senders, components.shape[1], dtype=torch.float64)
    for layer in range(layers):
        senders = slice(layer * heads, (layer + 1) * heads)
        block = components[layer * heads * r:(layer + 1) * heads * r].double().view(heads, r, -1)
        full[senders] = torch.einsum("hk,hkj->hj", weights[senders], block.square()).sqrt()
    return full


def _receiver_stats(scores: torch.Tensor, rows_per_layer: int, heads: int, layers: int
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and sample std (n − 1) of each receiver's column over the rows of earlier-layer senders."""
    mean = torch.full((layers * heads,), math.nan, dtype=torch.float64)
    std = mean.clone()
    for layer in range(1, layers):
        block = scores[:layer * rows_per_layer, layer * heads:(layer + 1) * heads].double()
        mean[layer * heads:(layer + 1) * heads] = block.mean(0)
        if block.shape[0] > 1:
            std[layer * heads:(layer + 1) * heads] = block.std(0)
    return mean, std


# ----------------------------------------------------------------------------------------------
# Receiver resolution


class ComponentLink(NamedTuple):
    """One sender component meeting one receiver component: a single cosine (docs/method.md#receiver-resolution)."""

    sender: HeadId
    sender_component: int
    receiver: HeadId
    receiver_matrix: str  # "QK" (q, k modes) or "OV" (v mode)
    receiver_component: int
    cosine: float  # c_kj
    share: float  # σ_j² c_kj² / Σ σ²: this link's part of C_k² (they sum to C_k² over j)

    def __str__(self) -> str:
        return (f"sender {self.sender} component {self.sender_component} → receiver {self.receiver} "
                f"{self.receiver_matrix} component {self.receiver_component} (cosine {self.cosine:.3f})")


@dataclass
class ReceiverResolution:
    """Sender-component × receiver-component cosines of one pair in one mode."""

    sender: HeadId
    receiver: HeadId
    mode: str
    cosines: torch.Tensor  # [r_A, r_B] float64, c_kj
    sender_singular_values: torch.Tensor  # [r_A] s_k
    receiver_singular_values: torch.Tensor  # [r_B] σ_j (q, k) or s'_j (v)

    @property
    def receiver_matrix(self) -> str:
        return RECEIVER_MATRIX[self.mode]

    def shares(self) -> torch.Tensor:
        """[r_A, r_B] σ_j² c_kj² / Σ_j σ_j²."""
        weights = self.receiver_singular_values.square()
        return self.cosines.square() * weights / weights.sum().clamp_min(torch.finfo(torch.float64).tiny)

    def component_scores(self) -> torch.Tensor:
        """[r_A] C_k recombined from the cosines: C_k² = Σ_j σ_j² c_kj² / Σ_j σ_j²."""
        return self.shares().sum(-1).sqrt()

    def links(self, n: int | None = None, by: str = "cosine", sender_component: int | None = None) -> list[ComponentLink]:
        """The strongest component links, by `cosine` or by `share`; optionally of one sender component only."""
        if by not in ("cosine", "share"):
            raise ValueError(f"by must be 'cosine' or 'share', not {by!r}")
        shares = self.shares()
        values = self.cosines if by == "cosine" else shares
        rows = range(values.shape[0]) if sender_component is None else [sender_component]
        candidates = [(float(values[k, j]), k, j) for k in rows for j in range(values.shape[1])]
        candidates.sort(key=lambda item: -item[0])
        return [ComponentLink(self.sender, k, self.receiver, self.receiver_matrix, j, float(self.cosines[k, j]),
                              float(shares[k, j]))
                for _, k, j in candidates[:n]]

    def to_dict(self) -> dict[str, object]:
        return {
            "sender": str(self.sender), "receiver": str(self.receiver), "mode": self.mode,
            "receiver_matrix": self.receiver_matrix,
            "cosines": [[float(x) for x in row] for row in self.cosines],
            "sender_singular_values": [float(x) for x in self.sender_singular_values],
            "receiver_singular_values": [float(x) for x in self.receiver_singular_values],
        }


def resolve_pair(factors: HeadFactors, sender: HeadId, receiver: HeadId, mode: str) -> ReceiverResolution:
    """The c_kj cosine matrix of one sender → receiver pair (l_A < l_B) in one mode, in float64."""
    (mode,) = check_modes(mode)
    check_pair(factors, sender, receiver)
    side = read_side(factors, mode, unrotated=True)  # receiver components are those an edit can scale
    write = factors.ov.V[sender.layer, sender.head].double()  # [d, r_A] columns v_k
    read = side.directions[receiver.layer, receiver.head].double()  # [d, r_B] a_j / b_j / u'_j
    return ReceiverResolution(
        sender=sender, receiver=receiver, mode=mode, cosines=(write.T @ read).abs(),
        sender_singular_values=factors.ov.S[sender.layer, sender.head].double(),
        receiver_singular_values=side.singular_values[receiver.layer, receiver.head].double(),
    )
