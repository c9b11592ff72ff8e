"""Check weight-predicted channel components against the model's behaviour (docs/method.md#data-check).

For a sender component k (OV component k of sender head A) and a receiver head B, scale that
component's share of A's output by α with an activation hook (no weight changes; for a Q-composition
channel at END only, since B's query at END is what reads it; for K and V at every position) and
measure on task prompts:
  * the receiver's attention shift at END: the change of
        attention(END → the answer's mention) − mean attention(END → the repeated items' second mentions)
    (IOI: END → IO minus END → S2), averaged over prompts;
  * the change of the task's logit difference (answer minus the best other candidate).
The data score of a component is the size of the attention shift when it is removed (α = 0).
Everything runs from the lowest sender layer on (`PrefixCache`), under eager attention.

Two methods (`method`):
  * "exact": every target is ablated (α = 0) and scaled (α = check_alpha) with a hook, one forward
    pass per (sender component, positions, α) — hundreds on a real model;
  * "attribution" (default): one forward pass and one backward pass per receiver (and one for the
    logit difference) per batch give the derivative of both measures with respect to every
    component's scale (`th_edit.runtime.attribution`), so each target's change at α is estimated as
    (α − 1)·derivative; then only the `confirm_top` targets per pair with the largest estimated
    removal effect are ablated exactly at α = 0 (their data score is measured; the others' and every
    α ≠ 0 stay first-order estimates, marked in `measured`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

import torch

from th_edit import hooks, ui
from th_edit.channels.factors import HeadId
from th_edit.errors import UserError
from th_edit.runtime import CachedBatches, candidate_token_ids, pad_id
from th_edit.runtime.attribution import component_derivatives, head_slice, ov_directions, tracked_head_outputs
from th_edit.session import Session
from th_edit.tasks.mentions import Mentions, locate_mentions
from th_edit.tasks.prompts import TaskPrompt

METHODS = ("attribution", "exact")
CONFIRM_TOP = 1  # per pair, the targets with the largest estimated removal effect that are then ablated exactly


@dataclass(frozen=True)
class Target:
    """One sender component and one receiver whose reading of it is to be checked."""

    sender: HeadId
    component: int
    receiver: HeadId
    mode: str  # "q" | "k" | "v"
    weight_score: float
    weight_z: float


@dataclass
class ComponentCheck:
    target: Target
    attention_shift: dict[float, float] = field(default_factory=dict)  # α -> mean change of the receiver's preference
    logit_diff_change: dict[float, float] = field(default_factory=dict)  # α -> mean change of the logit difference
    # The α whose changes above were measured by ablation; at any other α they are the first-order estimates.
    measured: set[float] = field(default_factory=set)
    estimated_shift: dict[float, float] = field(default_factory=dict)  # α -> first-order estimate (attribution only)
    estimated_logit_diff_change: dict[float, float] = field(default_factory=dict)

    @property
    def data_score(self) -> float:
        """|attention shift| when the component is removed (α = 0)."""
        return abs(self.attention_shift[0.0])

    def _estimated(self, alpha: float, shift: float, logit_diff: float) -> None:
        self.estimated_shift[alpha] = self.attention_shift[alpha] = shift
        self.estimated_logit_diff_change[alpha] = self.logit_diff_change[alpha] = logit_diff

    def as_dict(self) -> dict[str, object]:
        t = self.target
        return {"sender": {"layer": t.sender.layer, "head": t.sender.head, "component": t.component},
                "receiver": {"layer": t.receiver.layer, "head": t.receiver.head}, "mode": t.mode,
                "weight_score": t.weight_score, "weight_z": t.weight_z, "data_score": self.data_score,
                "attention_shift": {str(a): v for a, v in self.attention_shift.items()},
                "logit_diff_change": {str(a): v for a, v in self.logit_diff_change.items()},
                "measured": [str(a) for a in sorted(self.measured)],
                **({"estimated_attention_shift": {str(a): v for a, v in self.estimated_shift.items()},
                    "estimated_logit_diff_change": {str(a): v for a, v in self.estimated_logit_diff_change.items()}}
                   if self.estimated_shift else {})}


class _Prompts:
    """Task prompts batched once, with their mentions and candidate ids, and the residual stream
    entering each sender layer cached (a check of a layer-l sender runs layers ≥ l only)."""

    def __init__(self, session: Session, prompts: Sequence[TaskPrompt], batch_size: int):
        located, skipped = locate_mentions(session.tokenizer, prompts)
        if not located:
            raise UserError("every prompt of the data check was skipped: their mentions are ambiguous for this tokenizer")
        self.session = session
        self.mentions: list[Mentions] = [m for _, m in located]
        self.targets = candidate_token_ids(session.tokenizer, [prompts[i] for i, _ in located])
        self.cached = CachedBatches(session.model, session.adapter, [m.ids for m in self.mentions], batch_size,
                                    pad_id(session.tokenizer), session.device)
        self.groups, self.batches, self.from_layer = self.cached.groups, self.cached.batches, self.cached.from_layer


def _preference(attention: torch.Tensor, mentions: Mentions, offset: int) -> torch.Tensor:
    """attention(END → the answer) − mean attention(END → the repeated items' second mentions), from
    the receiver's attention row at END ([T]; the prompt starts at `offset`, after left padding)."""
    repeated = [p + offset for p in mentions.repeated_second]
    return attention[mentions.answer_first + offset] - attention[repeated].mean()


def _logit_diff(values: torch.Tensor, answer_index: int) -> torch.Tensor:
    """The answer's logit minus the best other candidate's (`values`: the candidates' logits)."""
    others = torch.cat([values[:answer_index], values[answer_index + 1:]])
    return values[answer_index] - others.max()


def _measure(session: Session, prompts: _Prompts, receivers: Sequence[HeadId], layer: int = 0
             ) -> tuple[dict[HeadId, torch.Tensor], torch.Tensor]:
    """Per receiver, per prompt: attention(END→answer) − mean attention(END→repeated); and per prompt
    the logit difference — for the model as it runs now (hooks included), from `layer` on."""
    cache = prompts.from_layer(layer)
    layers = sorted({r.layer for r in receivers})
    preference = {r: torch.zeros(len(prompts.mentions)) for r in receivers}
    logit_diff = torch.zeros(len(prompts.mentions))
    with hooks.recording(session.model, session.adapter, layers, attention=True, positions=-1) as record:
        for b, group in enumerate(prompts.groups):
            last = cache.forward(b, logits_to_keep=1)[:, -1].float().cpu()
            width = prompts.batches[b]["input_ids"].shape[1]
            patterns = {layer: record.attention[layer].pop() for layer in layers}  # [B, H, 1, T]
            for row, i in enumerate(group):
                mentions, offset = prompts.mentions[i], width - len(prompts.mentions[i].ids)
                for receiver in receivers:
                    preference[receiver][i] = _preference(patterns[receiver.layer][row, receiver.head, 0], mentions, offset)
                ids, answer_index = prompts.targets[i]
                logit_diff[i] = _logit_diff(last[row, ids], answer_index)
    return preference, logit_diff


Condition = tuple[HeadId, int, str]  # sender, component, "end" (Q mode: the last token only) or "all" positions


def _condition(target: Target) -> Condition:
    return target.sender, target.component, "end" if target.mode == "q" else "all"


@contextmanager
def _attention_rows(model: torch.nn.Module, adapter, layers: Sequence[int]) -> Iterator[dict[int, torch.Tensor]]:
    """Each forward pass leaves in the yielded dict the attention of `layers` from the last query
    position ([B, H, T]), inside the autograd graph (eager attention)."""
    rows: dict[int, torch.Tensor] = {}
    with ExitStack() as stack:
        for layer in layers:
            def keep(module, args, output, layer=layer):
                rows[layer] = output[1][:, :, -1]
            handle = model.get_submodule(adapter.attention_module(layer)).register_forward_hook(keep)
            stack.callback(handle.remove)
        yield rows


def estimate_derivatives(session: Session, prompts: _Prompts, targets: Sequence[Target]
                         ) -> dict[Target, tuple[float, float]]:
    """{target: (d mean preference of its receiver / dα, d mean logit difference / dα) at α = 1}, for
    scaling the target's sender component at its positions: one forward pass per batch, one backward
    pass per receiver and one for the logit difference (docs/method.md#data-check)."""
    adapter = session.adapter
    senders = sorted({t.sender for t in targets})
    receivers = sorted({t.receiver for t in targets})
    directions = {s: tuple(t.float() for t in ov_directions(session, s.layer, s.head)) for s in senders}
    wheres = {s: sorted({_condition(t)[2] for t in targets if t.sender == s}) for s in senders}
    # Sums over prompts of the derivative for every component: per (sender, where, receiver or None: logit difference).
    totals: dict[tuple[HeadId, str, HeadId | None], torch.Tensor] = {}
    cache = prompts.from_layer(senders[0].layer)
    sender_layers = sorted({s.layer for s in senders})
    with torch.enable_grad(), tracked_head_outputs(session.model, adapter, sender_layers) as z, \
            _attention_rows(session.model, adapter, sorted({r.layer for r in receivers})) as rows:
        for b in ui.progress(range(len(prompts.groups)), desc="data check (attribution)", unit="batch"):
            last = cache.forward(b, logits_to_keep=1)[:, -1].float()
            width = prompts.batches[b]["input_ids"].shape[1]
            objectives: dict[HeadId | None, torch.Tensor] = {}
            for row, i in enumerate(prompts.groups[b]):
                mentions, offset = prompts.mentions[i], width - len(prompts.mentions[i].ids)
                for receiver in receivers:
                    value = _preference(rows[receiver.layer][row, receiver.head].float(), mentions, offset)
                    objectives[receiver] = objectives.get(receiver, 0) + value
                ids, answer_index = prompts.targets[i]
                objectives[None] = objectives.get(None, 0) + _logit_diff(last[row, ids], answer_index)
            for receiver, objective in objectives.items():
                reached = [s for s in senders if receiver is None or s.layer < receiver.layer]
                if not reached:
                    continue
                layers = sorted({s.layer for s in reached})
                grads = dict(zip(layers, torch.autograd.grad(objective, [z[layer] for layer in layers],
                                                             retain_graph=True, allow_unused=True)))
                for sender in reached:
                    if grads[sender.layer] is None:  # cannot reach the objective: no effect
                        continue
                    zh = head_slice(z[sender.layer], adapter, sender.head)
                    g = head_slice(grads[sender.layer], adapter, sender.head)
                    for where in wheres[sender]:
                        d = component_derivatives(zh, g, *directions[sender], last_only=where == "end").sum(dim=0)
                        key = (sender, where, receiver)
                        totals[key] = totals.get(key, 0) + d.double()
    n = len(prompts.mentions)

    def mean(key) -> torch.Tensor | None:
        return None if key not in totals else totals[key] / n

    out = {}
    for t in targets:
        sender, component, where = _condition(t)
        shift, logit_diff = mean((sender, where, t.receiver)), mean((sender, where, None))
        out[t] = (0.0 if shift is None else float(shift[component]), 0.0 if logit_diff is None else float(logit_diff[component]))
    return out


def _ablate(session: Session, prompts: _Prompts, conditions: dict[Condition, list[ComponentCheck]], alphas: Sequence[float],
            base: tuple[dict[HeadId, torch.Tensor], torch.Tensor], desc: str) -> None:
    """Scale each condition's sender component by each α with a hook and record the measured changes
    in its checks: one forward pass per (condition, α) serves every receiver of that component."""
    base_preference, base_logit_diff = base
    # Sender by sender, lowest layer first, so each layer's cached states are made once, when first needed.
    steps = [(key, alpha) for key in sorted(conditions, key=lambda k: (k[0].layer, k[0].head, k[1])) for alpha in alphas]
    for (sender, component, where), alpha in ui.progress(steps, desc=desc, unit="ablation"):
        read, write = hooks.ov_component(session, sender.layer, sender.head, component)
        scale = hooks.DirectionScale(sender.layer, sender.head, read, write, alpha, -1 if where == "end" else None)
        group = conditions[(sender, component, where)]
        with hooks.scaled(session.model, session.adapter, [scale]):
            preference, logit_diff = _measure(session, prompts, sorted({c.target.receiver for c in group}), sender.layer)
        for check in group:
            receiver = check.target.receiver
            check.attention_shift[alpha] = float((preference[receiver] - base_preference[receiver]).mean())
            check.logit_diff_change[alpha] = float((logit_diff - base_logit_diff).mean())
            check.measured.add(alpha)


def _pair(target: Target) -> tuple[HeadId, HeadId, str]:
    return target.sender, target.receiver, target.mode


def check_components(session: Session, prompts: Sequence[TaskPrompt], targets: Sequence[Target],
                     alphas: Sequence[float] = (0.0, 2.0), batch_size: int = 16, method: str = "exact",
                     confirm_top: int = CONFIRM_TOP) -> list[ComponentCheck]:
    """Scale each target's sender component by each α and measure its receiver (see module doc)."""
    if method not in METHODS:
        raise ValueError(f"unknown data check method {method!r}")
    if not targets:
        return []
    alphas = tuple(dict.fromkeys([0.0, *alphas]))
    checks = [ComponentCheck(t) for t in targets]
    receivers = sorted({t.receiver for t in targets})
    # no_grad, not inference_mode: the attribution method differentiates through the cached batches.
    with torch.no_grad(), hooks.eager_attention(session.model):
        batched = _Prompts(session, prompts, batch_size)
        base = _measure(session, batched, receivers, min(t.sender.layer for t in targets))
        if method == "exact":
            conditions: dict[Condition, list[ComponentCheck]] = {}
            for check in checks:
                conditions.setdefault(_condition(check.target), []).append(check)
            _ablate(session, batched, conditions, alphas, base, "data check")
            return checks
        derivatives = estimate_derivatives(session, batched, targets)
        by_pair: dict[tuple[HeadId, HeadId, str], list[ComponentCheck]] = {}
        for check in checks:
            d_shift, d_logit_diff = derivatives[check.target]
            for alpha in alphas:
                check._estimated(alpha, (alpha - 1.0) * d_shift, (alpha - 1.0) * d_logit_diff)
            by_pair.setdefault(_pair(check.target), []).append(check)
        confirm: dict[Condition, list[ComponentCheck]] = {}
        for group in by_pair.values():
            for check in sorted(group, key=lambda c: -abs(c.estimated_shift[0.0]))[:confirm_top]:
                confirm.setdefault(_condition(check.target), [])
        for check in checks:  # an ablation made for one pair serves every check of that condition
            if _condition(check.target) in confirm:
                confirm[_condition(check.target)].append(check)
        _ablate(session, batched, confirm, (0.0,), base, "data check (confirm)")
    return checks
