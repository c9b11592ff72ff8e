"""Exact rank-component edits written into standard weights (docs/method.md#exact-edits).

Scaling OV component k of head h by α:  OV' = OV (I + (α−1) v_k v_kᵀ), written into W_O only.
Scaling QK component k by α:            QK' = (I + (α−1) a_k a_kᵀ) QK,  written into W_Q only.

Effective matrices carry folded norm weights, so the stored weights get the same update
conjugated by those weights:
    W_Q ← diag(g)⁻¹ M diag(g) W_Q          g: input-norm gain (γ, or 1+γ for Gemma)
    W_O ← W_O diag(go) M diag(go)⁻¹        go: post-attention norm gain (Gemma), else identity
with M = I + Σ_k (α_k−1) x_k x_kᵀ (x = a or v; orthonormal, so the components compose).
LayerNorm's mean removal C commutes with M because a_k lies in range(C).
W_Q and W_O belong to one query head, so an edit never reaches another head through GQA-shared
K/V weights, and it commutes with RoPE, which acts after the projection.
Everything is computed in float64; the caller casts to the checkpoint's dtype.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from th_edit.arch import Adapter, Slot
from th_edit.checkpoint import TensorSource
from th_edit.decompose import Decompositions
from th_edit.errors import UserError
from th_edit.linalg import HeadSVD, circuit, near_ties
from th_edit.recipe import Edit

ALIGNED = 0.99  # |cos| above which a re-SVD direction is "the same component"


@dataclass(frozen=True)
class HeadEdit:
    """All components of one (layer, head, circuit) scaled together."""

    layer: int
    head: int
    circuit: str  # "ov" | "qk"
    scales: dict[int, float]  # component -> α
    edit_indices: tuple[int, ...]  # which recipe edits contributed (for messages)


@dataclass
class ComponentReport:
    component: int
    scale: float
    original: float
    target: float
    realized: float | None = None
    realized_index: int | None = None  # index of the matched component after the edit
    alignment: float | None = None  # |cos| between the original and matched directions


@dataclass
class HeadReport:
    layer: int
    head: int
    circuit: str
    components: list[ComponentReport]
    max_untouched_change: float | None = None  # max relative change of the other singular values
    ambiguous: list[int] = field(default_factory=list)  # targeted components with a near-tied neighbour

    def as_dict(self) -> dict[str, object]:
        return {
            "layer": self.layer, "head": self.head, "circuit": self.circuit,
            "components": [vars(c) for c in self.components],
            "max_untouched_relative_change": self.max_untouched_change,
            "ambiguous_components": self.ambiguous,
        }


@dataclass
class EditResult:
    """New values (float64, full parameters) for every parameter an edit touched."""

    tensors: dict[str, torch.Tensor]
    reports: list[HeadReport]
    intended_deltas: dict[str, torch.Tensor]  # parameter -> new − old (float64), for cast-loss checks
    originals: dict[tuple[int, int, str], HeadSVD]  # (layer, head, circuit) -> SVD before the edit
    written: list[tuple[HeadEdit, Slot]]  # which slice each head edit was written into
    # Per entry of `written`: the exact low-rank change of its block, (P, Q) with new − old = P @ Q in
    # math orientation (in×out), P: in×r, Q: r×out, r = the head's edited components (th_edit.lora).
    factors: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)


EDIT_COLUMNS = ("layer", "head", "circuit", "component", "scale", "σ before", "σ target", "σ realized")


def _sigma(value: float) -> str:
    # Fixed decimals, so that right-aligned σ columns line up on the decimal point.
    return f"{value:.4f}" if value < 1e4 else f"{value:.5g}"


def edit_rows(reports: list[HeadReport]) -> list[list[str]]:
    """One row per edited component, formatted for tables (terminal and model card)."""
    return [
        [str(r.layer), str(r.head), r.circuit.upper(), str(c.component), f"{c.scale:g}", _sigma(c.original),
         _sigma(c.target), "-" if c.realized is None else _sigma(c.realized)]
        for r in reports for c in r.components
    ]


def edit_summary(reports: list[HeadReport]) -> list[str]:
    """A few lines instead of the full table: components per circuit and head, scales, and the
    largest gap between a realized and a target singular value (relative to σ before)."""
    components = [(r, c) for r in reports for c in r.components]
    if not components:
        return []
    per_circuit = {circuit: [r for r in reports if r.circuit == circuit] for circuit in ("ov", "qk")}
    counts = ", ".join(f"{sum(len(r.components) for r in heads)} {circuit.upper()} component(s) in {len(heads)} head(s)"
                       for circuit, heads in per_circuit.items() if heads)
    scales = sorted({c.scale for _, c in components})
    scale_text = f"scale {scales[0]:g}" if len(scales) == 1 else f"scales {scales[0]:g} to {scales[-1]:g}"
    lines = [f"edits: {counts}; {scale_text}"]
    measured = [(abs(c.realized - c.target) / c.original, r, c) for r, c in components
                if c.realized is not None and c.original > 0]
    if measured:
        gap, r, c = max(measured, key=lambda item: item[0])
        lines.append(f"realized singular values: within {100 * gap:.2g}% of σ before of their targets "
                     f"(worst: layer {r.layer} head {r.head} {r.circuit.upper()} component {c.component})")
    return lines


def group_edits(edits: list[Edit]) -> list[HeadEdit]:
    grouped: dict[tuple[int, int, str], dict[int, float]] = defaultdict(dict)
    origins: dict[tuple[int, int, str], list[int]] = defaultdict(list)
    for i, edit in enumerate(edits):
        key = (edit.layer, edit.head, edit.circuit)
        origins[key].append(i)
        for component in edit.components:
            grouped[key][component] = edit.scale
    return [HeadEdit(*key, dict(sorted(scales.items())), tuple(origins[key])) for key, scales in sorted(grouped.items())]


def ambiguous_components(scales: dict[int, float], singular_values: torch.Tensor) -> list[int]:
    """The edited components whose direction the edit depends on but the SVD does not pin down:
    those in a run of near-tied singular values (linalg.near_ties) whose members the edit does not
    all scale alike (an unnamed one counts as scale 1). Within a tied run any rotation of the
    singular vectors is an equally valid SVD, so scaling the whole run alike is the same edit
    whatever basis the SVD picked, and needs no warning."""
    tied = set(near_ties(singular_values))  # k in tied: components k and k+1 are near-tied
    ambiguous = []
    for k in scales:
        start, end = k, k
        while start - 1 in tied:
            start -= 1
        while end in tied:
            end += 1
        if len({scales.get(j, 1.0) for j in range(start, end + 1)}) > 1:
            ambiguous.append(k)
    return ambiguous


def compute_edits(adapter: Adapter, source: TensorSource, edits: list[Edit],
                  decompositions: Decompositions | None = None) -> EditResult:
    """New float64 values of every parameter the edits touch, computed from `source`.

    `decompositions` (of the same `source`) lets many edits of one model share head SVDs.
    """
    decompositions = decompositions or Decompositions(adapter, source)
    new: dict[str, torch.Tensor] = {}
    reports: list[HeadReport] = []
    originals: dict[tuple[int, int, str], HeadSVD] = {}
    written: list[tuple[HeadEdit, Slot]] = []
    factors: list[tuple[torch.Tensor, torch.Tensor]] = []
    for head_edit in group_edits(edits):
        layer, h, circuit = head_edit.layer, head_edit.head, head_edit.circuit
        svd = decompositions.head(layer, h, circuit)
        originals[(layer, h, circuit)] = svd
        reports.append(HeadReport(
            layer, h, circuit,
            [ComponentReport(k, a, float(svd.S[k]), a * float(svd.S[k])) for k, a in head_edit.scales.items()],
            ambiguous=ambiguous_components(head_edit.scales, svd.S),
        ))
        ks = list(head_edit.scales)
        coeffs = torch.tensor([head_edit.scales[k] - 1.0 for k in ks], dtype=torch.float64)
        weights = decompositions.layer(layer)
        if circuit == "ov":
            directions, slot, gain = svd.V[:, ks], adapter.o_slot(layer, h), weights.out_gain  # write directions v_k
        else:
            directions, slot, gain = svd.U[:, ks], adapter.q_slot(layer, h), weights.in_gain  # query-side reads a_k
        if gain is not None and bool((gain == 0).any()):
            raise UserError(
                f"edits[{head_edit.edit_indices[0]}]: layer {layer} has a norm weight of exactly zero, so an exact "
                f"{circuit.upper()} edit cannot be written into the stored weights"
            )
        if slot.param not in new:
            new[slot.param] = source.get(slot.param).to(torch.float64).clone()
        block = slot.read(new)  # current (possibly already edited) block, math orientation
        P, Q = update_factors(block, directions, coeffs, gain, circuit)
        slot.write(new[slot.param], block + P @ Q)
        written.append((head_edit, slot))
        factors.append((P, Q))

    deltas = {name: tensor - source.get(name).to(torch.float64) for name, tensor in new.items()}
    # Computed head by head in (layer, head, circuit) order; reported in the recipe's order, so that
    # `edit.reports[i]` is about the recipe's i-th head (the head of its first edit).
    order = {(e.layer, e.head, e.circuit): e.edit_indices[0] for e in group_edits(edits)}
    reports.sort(key=lambda r: order[(r.layer, r.head, r.circuit)])
    return EditResult(new, reports, deltas, originals, written, factors)


def update_factors(block: torch.Tensor, X: torch.Tensor, coeffs: torch.Tensor, gain: torch.Tensor | None,
                   circuit: str) -> tuple[torch.Tensor, torch.Tensor]:
    """M = I + X diag(c) Xᵀ, conjugated by the folded gain, applied to `block` as a low-rank update:
    (P, Q) with the new block = block + P @ Q, of rank len(c) (the edited components)."""
    ones = torch.ones(X.shape[0], dtype=torch.float64)
    g = gain if gain is not None else ones
    if circuit == "ov":  # W_O (dh×d) ← W_O diag(g) M diag(g)⁻¹
        return ((block * g) @ X) * coeffs, X.T / g
    # W_Q (d×dh) ← diag(g)⁻¹ M diag(g) W_Q
    return (X / g[:, None]) * coeffs, X.T @ (g[:, None] * block)


def measure_realized(adapter: Adapter, edited: TensorSource, result: EditResult) -> None:
    """Re-SVD every edited head from `edited` (the weights as they will be written, already cast)
    and fill in the realized singular values, matched by direction since scaling can reorder them.
    Also records the largest relative change of the head's *other* singular values: a cast to a
    short dtype after a large edit moves them too."""
    after = Decompositions(adapter, edited)
    for report in result.reports:
        old = result.originals[(report.layer, report.head, report.circuit)]
        new = after.head(report.layer, report.head, report.circuit)
        # Match on the left and right directions together: |cos u|·|cos v|.
        match = (old.U.T @ new.U).abs() * (old.V.T @ new.V).abs()  # [r_old, r_new]
        for comp in report.components:
            j = int(match[comp.component].argmax())
            alignment = float(match[comp.component, j])
            if alignment >= ALIGNED:
                comp.realized, comp.realized_index = float(new.S[j]), j
            else:
                # A (near-)zero singular value has no stable direction (α = 0 ablations):
                # measure the edited matrix along the original pair instead, ‖M' v_k‖.
                comp.realized = _gain_along(after.layer(report.layer), report.circuit, report.head,
                                            old.V[:, comp.component])
            comp.alignment = alignment
        targeted = {c.component for c in report.components}
        # A singular value that is zero up to rounding has no relative change to speak of (a
        # per-head QK LayerNorm removes each head's mean: its QK has rank d_head − 1).
        floor = NULL_SINGULAR_VALUE * float(old.S.max())
        changes = [
            abs(float(new.S[int(match[k].argmax())]) - float(old.S[k])) / float(old.S[k])
            for k in range(old.S.shape[0]) if k not in targeted and float(old.S[k]) > floor
        ]
        report.max_untouched_change = max(changes, default=0.0)


UNTOUCHED_LIMIT = 0.01  # relative change of a component no edit names, above which the user is warned
NULL_SINGULAR_VALUE = 1e-6  # relative to the head's largest: below it a singular value counts as zero


def untouched_warnings(result: EditResult) -> list[str]:
    """One line per edited head whose *other* singular values moved by more than 1% (measured by
    `measure_realized`): a cast to a short dtype after a large scale rounds the whole head."""
    return [f"layer {r.layer} head {r.head} {r.circuit.upper()}: components the recipe does not name changed by up to "
            f"{100 * r.max_untouched_change:.1f}% (more than {100 * UNTOUCHED_LIMIT:g}%), from rounding to the output "
            "dtype after a large scale; a float32 output or a smaller scale avoids it"
            for r in result.reports if r.max_untouched_change is not None and r.max_untouched_change > UNTOUCHED_LIMIT]


def _gain_along(weights, name: str, head: int, v: torch.Tensor) -> float:
    """‖M' v‖ for the edited OV' = W_V W_O or QK' = W_Q W_Kᵀ of one head."""
    return float((circuit(weights, name)[head] @ v).norm())


def ambiguity_warnings(result: EditResult) -> list[str]:
    """One line per edited component whose direction the SVD does not pin down (ambiguous_components).
    Needs no measuring: it is known from the singular values before the edit."""
    return [f"layer {r.layer} head {r.head} {r.circuit.upper()} component {k}: its singular value is within 1e-3 "
            "(relative) of a neighbour's that the recipe scales differently, so which direction index k names is "
            "not stable (scale the whole tied run alike to make the edit basis-independent)"
            for r in result.reports for k in r.ambiguous]


@dataclass
class EditPlan:
    """An edit computed, cast and (optionally) measured, with every warning about it: the one plan
    that both sinks take — the checkpoint writer (`th_edit.apply.write`) and a live model
    (`Session.edited` / `Session.apply`, benchmarks, search)."""

    result: EditResult
    values: dict[str, torch.Tensor]  # parameter name -> new value as it will be written / swapped in
    warnings: list[str] = field(default_factory=list)

    @property
    def reports(self) -> list[HeadReport]:
        return self.result.reports

    @property
    def cast(self) -> dict[str, torch.Tensor]:
        """The values as the checkpoint writer calls them (cast to the output dtype)."""
        return self.values


def plan_edit(adapter: Adapter, source: TensorSource, edits: list[Edit], stored_dtype: Callable[[str], torch.dtype],
              out_dtype: torch.dtype | None = None, *, decompositions: Decompositions | None = None,
              measure: bool = True) -> EditPlan:
    """The one edit computation: new float64 values from `source`, cast to `out_dtype` (None: each
    parameter's `stored_dtype`), realized singular values measured from the cast values (`measure`;
    a search skips it for speed), and the warnings: cast losses, untouched components that moved
    (only when measured) and near-tied components (always)."""
    result = compute_edits(adapter, source, edits, decompositions)
    values, warnings = cast_for_output(result, {name: stored_dtype(name) for name in result.tensors}, out_dtype)
    if measure:
        measure_realized(adapter, Overlay(source, values, out_dtype), result)
        warnings += untouched_warnings(result)
    warnings += ambiguity_warnings(result)
    return EditPlan(result, values, warnings)


class Overlay:
    """A tensor source with some parameters replaced and, optionally, floats cast to the output
    dtype: the weights exactly as they will be written."""

    def __init__(self, base: TensorSource, replaced: dict[str, torch.Tensor], dtype: torch.dtype | None = None):
        self.base, self.replaced, self.dtype = base, replaced, dtype

    def __contains__(self, name: object) -> bool:
        return name in self.replaced or name in self.base

    def get(self, name: str) -> torch.Tensor:
        if name in self.replaced:
            return self.replaced[name]
        tensor = self.base.get(name)
        return tensor.to(self.dtype) if self.dtype is not None and tensor.is_floating_point() else tensor



def cast_for_output(result: EditResult, source_dtypes: dict[str, torch.dtype], out_dtype: torch.dtype | None
                    ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Cast edited parameters to the output dtype. Per head edit (a large edit elsewhere in the same
    parameter must not hide a small one): refuse an overflow, warn where the cast loses > 1% of
    the intended change."""
    cast = {name: tensor.to(out_dtype or source_dtypes[name]) for name, tensor in result.tensors.items()}
    realized_deltas = {
        name: cast[name].to(torch.float64) - (tensor - result.intended_deltas[name]).to(cast[name].dtype).to(torch.float64)
        for name, tensor in result.tensors.items()
    }
    warnings = []
    for head_edit, slot in result.written:
        dtype_name = str(cast[slot.param].dtype).removeprefix("torch.")
        what = f"layer {head_edit.layer} head {head_edit.head} {head_edit.circuit.upper()}"
        if not bool(torch.isfinite(slot.read(cast)).all()):
            first = head_edit.edit_indices[0]
            raise UserError(f"edits[{first}].scale: the edited {what} weights overflow {dtype_name}; use a smaller scale")
        intended, realized = slot.read(result.intended_deltas), slot.read(realized_deltas)
        if intended.abs().max() == 0:
            continue
        loss = float((realized - intended).norm() / intended.norm())
        if loss > 0.01:
            warnings.append(f"{what}: casting to {dtype_name} loses {loss:.1%} of the intended change")
    return cast, warnings
