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
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from th_edit import hooks, ui
from th_edit.channels.factors import HeadId
from th_edit.errors import UserError
from th_edit.runtime import CachedBatches, candidate_token_ids, pad_id
from th_edit.session import Session
from th_edit.tasks.mentions import Mentions, locate_mentions
from th_edit.tasks.prompts import TaskPrompt


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

    @property
    def data_score(self) -> float:
        """|attention shift| when the component is removed (α = 0)."""
        return abs(self.attention_shift[0.0])

    def as_dict(self) -> dict[str, object]:
        t = self.target
        return {"sender": {"layer": t.sender.layer, "head": t.sender.head, "component": t.component},
                "receiver": {"layer": t.receiver.layer, "head": t.receiver.head}, "mode": t.mode,
                "weight_score": t.weight_score, "weight_z": t.weight_z, "data_score": self.data_score,
                "attention_shift": {str(a): v for a, v in self.attention_shift.items()},
                "logit_diff_change": {str(a): v for a, v in self.logit_diff_change.items()}}


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
                answer = mentions.answer_first + offset
                repeated = [p + offset for p in mentions.repeated_second]
                for receiver in receivers:
                    attention = patterns[receiver.layer][row, receiver.head, 0]
                    preference[receiver][i] = attention[answer] - attention[repeated].mean()
                ids, answer_index = prompts.targets[i]
                values = last[row, ids]
                others = torch.cat([values[:answer_index], values[answer_index + 1:]])
                logit_diff[i] = values[answer_index] - others.max()
    return preference, logit_diff


def check_components(session: Session, prompts: Sequence[TaskPrompt], targets: Sequence[Target],
                     alphas: Sequence[float] = (0.0, 2.0), batch_size: int = 16) -> list[ComponentCheck]:
    """Scale each target's sender component by each α and measure its receiver (see module doc)."""
    if not targets:
        return []
    alphas = tuple(dict.fromkeys([0.0, *alphas]))
    checks = [ComponentCheck(t) for t in targets]
    # One forward pass per (sender component, positions, α) serves every receiver of that component.
    conditions: dict[tuple[HeadId, int, str], list[ComponentCheck]] = {}
    for check in checks:
        t = check.target
        conditions.setdefault((t.sender, t.component, "end" if t.mode == "q" else "all"), []).append(check)
    receivers = sorted({t.receiver for t in targets})
    with torch.inference_mode(), hooks.eager_attention(session.model):
        batched = _Prompts(session, prompts, batch_size)
        base_preference, base_logit_diff = _measure(session, batched, receivers, min(t.sender.layer for t in targets))
        # Sender by sender, lowest layer first, so each layer's cached states are made once, when first needed.
        steps = [(key, alpha) for key in sorted(conditions, key=lambda k: (k[0].layer, k[0].head, k[1])) for alpha in alphas]
        for (sender, component, where), alpha in ui.progress(steps, desc="data check", unit="ablation"):
            read, write = hooks.ov_component(session, sender.layer, sender.head, component)
            scale = hooks.DirectionScale(sender.layer, sender.head, read, write, alpha, -1 if where == "end" else None)
            group = conditions[(sender, component, where)]
            with hooks.scaled(session.model, session.adapter, [scale]):
                preference, logit_diff = _measure(session, batched, sorted({c.target.receiver for c in group}),
                                                  sender.layer)
            for check in group:
                receiver = check.target.receiver
                check.attention_shift[alpha] = float((preference[receiver] - base_preference[receiver]).mean())
                check.logit_diff_change[alpha] = float((logit_diff - base_logit_diff).mean())
    return checks
