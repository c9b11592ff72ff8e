"""The whole subspace analysis of one model: basis, projections, traversal, crowding.

Definitions used throughout (also written into subspace.json):
- signal: the sum over the sender heads (the distinct heads of the sender components) of what
  each writes into the residual stream at the last token (z_h W_O^eff[h] · scale).
- inhibited position of a prompt: among the handled items, the one whose second mention gets
  the most last-token attention from the sender heads (summed over them); its position in the
  first list (0-based). One point per prompt needs one item; for N = 2 there is only one.
- selected item (baseline and traversal): the item whose mentions (first and second, summed)
  get the most last-token attention from the mover heads (summed over them); predicted item:
  the candidate with the highest logit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from th_edit import ui
from th_edit.errors import UserError
from th_edit.subspace import select as fallback
from th_edit.subspace.basis import Basis, Component, data_basis, principal_angles, weight_basis
from th_edit.subspace.crowding import crowding
from th_edit.subspace.spec import check_channel
from th_edit.subspace.survey import Head, Survey, survey
from th_edit.subspace.traverse import MODES, grid_axes, grid_points, regions, select
from th_edit.tasks.laundry import generate_laundry
from th_edit.tasks.prompts import TaskPrompt

BASES = ("weights", "data")
DEFAULT_N_ITEMS = (2, 3, 4, 5, 6, 7, 8)


@dataclass
class SubspaceResult:
    reference: str
    setup: dict
    channel: dict
    bases: dict[str, Basis | None]
    angles: torch.Tensor | None
    used: Basis
    survey: Survey
    coordinates: torch.Tensor  # [P, dims] of the signal in the used basis
    inhibited: torch.Tensor  # [P] inhibited position
    attended: torch.Tensor  # [P] item the movers attend to most, without intervention
    traversal: dict
    crowding: dict
    notes: list[str] = field(default_factory=list)

    def points(self) -> list[dict]:
        return [{"n_items": p.n_items, "answer_position": p.answer_position, "inhibited_position": int(inh),
                 "attended_position": int(att), "candidate_correct": bool(ok), "frame": p.template,
                 "coordinates": [float(c) for c in coords]}
                for p, inh, att, ok, coords in zip(self.survey.prompts, self.inhibited, self.attended,
                                                   self.survey.candidate_correct, self.coordinates)]

    def centroids(self, by: str) -> list[dict]:
        """Per N and position (inhibited or answer position): count and centroid coordinates."""
        groups = self.inhibited if by == "inhibited" else self.survey.answer_positions
        rows = []
        for n in sorted(set(self.survey.n_items.tolist())):
            for position in range(n):
                mask = (self.survey.n_items == n) & (groups == position)
                if mask.any():
                    rows.append({"n_items": n, "position": position, "count": int(mask.sum()),
                                 "coordinates": self.coordinates[mask].mean(0).tolist()})
        return rows

    def to_dict(self) -> dict:
        def basis_record(basis: Basis | None) -> dict | None:
            if basis is None:
                return None
            record = {"vectors": basis.vectors.T.tolist(), "explained_variance": basis.explained.tolist(),
                      "explained_total": float(basis.explained.sum())}
            if basis.kind == "weights":
                record["components"] = [{"layer": layer, "head": h, "component": k} for layer, h, k in basis.components]
            return record

        return {
            "model": self.reference,
            "setup": self.setup,
            "definitions": DEFINITIONS,
            "channel": self.channel,
            "basis_used": self.used.kind,
            "bases": {kind: basis_record(b) for kind, b in self.bases.items()},
            "principal_angles_deg": None if self.angles is None else self.angles.tolist(),
            "candidate_accuracy": float(self.survey.candidate_correct.double().mean()),
            "movers_attend_answer": float((self.attended == self.survey.answer_positions).double().mean()),
            "centroids": {"by_inhibited_position": self.centroids("inhibited"),
                          "by_answer_position": self.centroids("answer")},
            "points": self.points(),
            "traversal": self.traversal,
            "crowding": self.crowding,
            "notes": self.notes,
        }


DEFINITIONS = {
    "signal": "sum over the sender heads of what each adds to the residual stream at the last token "
              "(z_h W_O^eff[h], times the post-attention norm's per-token scale where the model has one)",
    "weights_basis": "write directions v_k of the sender OV components in the given order, Gram-Schmidt "
                     "orthonormalized, the first `dims` independent ones",
    "data_basis": "top `dims` principal axes of the signal over all prompts (centered PCA)",
    "explained_variance": "share of the signal's total centered variance along each basis vector",
    "coordinates": "signal @ basis (uncentered)",
    "inhibited_position": "first-list position (0-based) of the handled item whose second mention gets the most "
                          "last-token attention from the sender heads",
    "attended_position": "first-list position of the item whose mentions get the most last-token attention from the "
                         "mover heads",
    "intervention": "residual stream after the last sender layer, last token only: replace adds B(p - B^T s), "
                    "add adds B p (s: the signal in the same forward pass, B: the basis)",
}


def _argmax_handled(scores: torch.Tensor, prompt: TaskPrompt) -> int:
    masked = scores.clone()
    masked[prompt.answer_position] = -torch.inf
    return int(masked.argmax())


def analyze(session, components: Sequence[Component] | None = None, movers: Sequence[Head] | None = None, *,
            basis: str = "weights", dims: int = 3, n_items: Sequence[int] = DEFAULT_N_ITEMS, n_prompts: int = 40,
            seed: int = 0, prompts: Sequence[TaskPrompt] | None = None, traverse_n: int | None = None,
            traverse_prompts: int = 16, grid: int = 7, mode: str = "replace", batch_size: int = 16,
            source: str = "given") -> SubspaceResult:
    """Find, project, traverse and measure the positional subspace of `session`'s model.

    `components` (sender OV components, ranked) and `movers` (mover heads) define the channel;
    leave both out to pick them with the small fallback of th_edit.subspace.select.
    """
    if basis not in BASES:
        raise UserError(f"basis must be one of {', '.join(BASES)}, not {basis!r}")
    if mode not in MODES:
        raise UserError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    if dims < 1 or grid < 2 or traverse_prompts < 1:
        raise UserError("dims must be ≥ 1, grid ≥ 2 and traverse_prompts ≥ 1")
    if (components is None) != (movers is None):
        raise UserError("give both the sender components and the mover heads, or neither (to pick them from data)")
    if session.tokenizer is None:
        raise UserError(f"{session.reference} has no tokenizer: load it with th_edit.load(...)")
    generate = prompts is None
    if prompts is None:
        prompts = generate_laundry(session.tokenizer, list(n_items), n_prompts, seed)
    n_layers = session.adapter.n_layers
    if components is None:
        recorded = survey(session, prompts, range(n_layers), batch_size)
        chosen = fallback.choose(session, recorded, dims)
        components, movers, source = chosen.components, chosen.movers, "fallback"
        channel = {"source": source, "fallback": chosen.record}
    else:
        components, movers = list(components), list(movers)
        check_channel(session.adapter, components, movers, source)
        layers = {layer for layer, _, _ in components} | {layer for layer, _ in movers}
        recorded = survey(session, prompts, layers, batch_size)
        channel = {"source": source}
    sender_heads = list(dict.fromkeys((layer, head) for layer, head, _ in components))
    singular_values = []
    for layer, head, k in components:
        S = session.svd(layer, head, "ov").S
        if k >= S.shape[0]:
            raise UserError(f"{source}: component {layer}.{head}:{k} does not exist (head {layer}.{head} has OV "
                            f"components 0..{S.shape[0] - 1})")
        singular_values.append(float(S[k]))
    channel.update({
        "components": [{"layer": layer, "head": h, "component": k, "singular_value": s}
                       for (layer, h, k), s in zip(components, singular_values)],
        "sender_heads": [{"layer": layer, "head": h} for layer, h in sender_heads],
        "movers": [{"layer": layer, "head": h} for layer, h in movers],
        "intervention_layer": max(layer for layer, _ in sender_heads),
    })

    signal = recorded.head_outputs(session, sender_heads).sum(1)  # [P, d]
    notes: list[str] = []
    data = data_basis(signal, dims)
    try:
        weights: Basis | None = weight_basis(session, components, dims, signal)
    except UserError as exc:
        if basis == "weights":
            raise
        weights = None
        notes.append(f"no weight basis: {exc}")
    used = weights if basis == "weights" else data
    assert used is not None
    angles = principal_angles(weights.vectors, data.vectors) if weights is not None else None
    coordinates = used.coordinates(signal)
    inhibited = torch.tensor([_argmax_handled(s, p) for s, p in
                              zip(recorded.item_attention(sender_heads, "second"), recorded.prompts)])
    attended = torch.tensor([int(s.argmax()) for s in recorded.item_attention(movers, "all")])

    traversal = _traverse(session, recorded, coordinates, inhibited, sender_heads, movers, used, traverse_n,
                          traverse_prompts, grid, mode, batch_size)
    crowd = crowding(coordinates.numpy(), recorded.n_items.numpy(), recorded.answer_positions.numpy(),
                     recorded.candidate_correct.numpy(), seed=seed)
    generated = {"prompts": "generated", "n_prompts_per_n": n_prompts, "seed": seed} if generate else {"prompts": "given"}
    setup = {"n_items": sorted(set(recorded.n_items.tolist())), "n_prompts": len(recorded.prompts), **generated,
             "dims": dims, "basis": basis,
             "mode": mode, "grid": grid, "device": str(session.device), "dtype": str(session.dtype).removeprefix("torch.")}
    return SubspaceResult(session.reference, setup, channel, {"weights": weights, "data": data}, angles, used, recorded,
                          coordinates, inhibited, attended, traversal, crowd, notes)


def _traverse(session, recorded: Survey, coordinates: torch.Tensor, inhibited: torch.Tensor, sender_heads, movers,
              used: Basis, traverse_n: int | None, traverse_prompts: int, grid: int, mode: str, batch_size: int) -> dict:
    """Grid traversal on prompts of one N, plus the same at the centroids of the inhibited positions."""
    sizes = recorded.n_items
    n = traverse_n if traverse_n is not None else int(sizes.max())
    chosen = [i for i in range(len(recorded.prompts)) if int(sizes[i]) == n][:traverse_prompts]
    if not chosen:
        raise UserError(f"no prompts with N = {n} to traverse (N present: {sorted(set(sizes.tolist()))})")
    prompts = [recorded.prompts[i] for i in chosen]
    axes_count = min(used.dims, 3)
    axes = grid_axes(coordinates, grid, axes_count, mode)
    points = grid_points(axes, used.dims)
    in_n = sizes == n
    centroid_positions = sorted(set(inhibited[in_n].tolist()))
    centroids = torch.stack([coordinates[in_n & (inhibited == k)].mean(0) for k in centroid_positions])
    if mode == "add":  # the centroids as offsets from the mean signal
        centroids = centroids - coordinates[in_n].mean(0)
    ui.info(f"traversing {len(points)} grid points and {len(centroids)} centroids on {len(prompts)} prompts (N = {n})")
    found = select(session, prompts, sender_heads, movers, used.vectors, torch.cat([points, centroids]), mode, batch_size)
    attended, predicted = found.fractions("attended"), found.fractions("predicted")
    shape = [grid] * axes_count
    attended_mode, predicted_mode = attended.argmax(1), predicted.argmax(1)
    grid_count = len(points)
    baseline_attended = torch.tensor([int(s.argmax()) for s in recorded.item_attention(movers, "all")])[chosen]
    baseline_predicted = torch.tensor([int(recorded.candidate_logits[i].argmax()) for i in chosen])
    answers = torch.tensor([p.answer_position for p in prompts])
    return {
        "n_items": n, "n_prompts": len(prompts), "mode": mode, "traversed_axes": axes_count,
        "axes": [a.tolist() for a in axes],
        "grid": [{"coordinates": points[g, :axes_count].tolist(), "attended": attended[g].tolist(),
                  "predicted": predicted[g].tolist(), "attended_mode": int(attended_mode[g]),
                  "predicted_mode": int(predicted_mode[g])} for g in range(grid_count)],
        "regions": {
            "attended": {str(k): v for k, v in regions(attended_mode[:grid_count].reshape(shape)).items()},
            "predicted": {str(k): v for k, v in regions(predicted_mode[:grid_count].reshape(shape)).items()},
        },
        "at_centroids": [{"inhibited_position": k, "coordinates": centroids[j].tolist(),
                          "attended": attended[grid_count + j].tolist(), "predicted": predicted[grid_count + j].tolist()}
                         for j, k in enumerate(centroid_positions)],
        "baseline": {"attended": np.bincount(baseline_attended.numpy(), minlength=n).tolist(),
                     "predicted": np.bincount(baseline_predicted.numpy(), minlength=n).tolist(),
                     "answer": np.bincount(answers.numpy(), minlength=n).tolist(),
                     "attended_answer": float((baseline_attended == answers).double().mean()),
                     "predicted_answer": float((baseline_predicted == answers).double().mean())},
    }
