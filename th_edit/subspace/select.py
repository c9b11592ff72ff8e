"""A small, data-driven stand-in for channel discovery, used when no channel is given.

On the laundry prompts of the survey (every layer recorded), at the last token:
- mover score of a head: its mean attention to the answer's (only) mention;
- inhibition score: its mean attention to the second mentions of the handled items, summed.
Sender heads are the `n_senders` best inhibition heads below a split layer L and movers the
`n_movers` best mover heads from L on, with L chosen to maximize the sum of their scores.
Each sender head's OV components are ranked by how strongly they feed the movers' queries,
s_k · √(Σ_B C_Q(k→B)²) with C_Q(k→B) = ‖v_kᵀ QK_B‖ / ‖QK_B‖_F (docs/method.md#composition-scores, per component). The
score compares components of one head, not of heads in different layers (Gemma's W_O^eff carries
its post-attention norm weight, whose per-token scale differs by layer), so the sender components
are taken round-robin over the sender heads, best inhibition head first: its best component,
the next head's best, its second best, ...
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from th_edit.errors import UserError
from th_edit.heads import HeadId
from th_edit.subspace.basis import Component
from th_edit.subspace.survey import Head, Survey

N_MOVERS = 3
N_SENDER_HEADS = 2


@dataclass
class Fallback:
    movers: list[Head]
    sender_heads: list[Head]
    components: list[Component]  # ranked, best first
    record: dict  # the scores behind the choice, for the report


def head_scores(survey: Survey) -> tuple[torch.Tensor, torch.Tensor]:
    """[layers, heads] mean mover and inhibition scores (survey layers must be every layer)."""
    mover = torch.stack([first[..., p.answer_position] for first, p in zip(survey.first_attention, survey.prompts)])
    inhibition = torch.stack([second.sum(-1) for second in survey.second_attention])
    return mover.mean(0), inhibition.mean(0)


def q_composition(session, component: Component, receiver: Head) -> float:
    """C_Q of one sender OV component into one receiver head's queries."""
    layer, head, k = component
    v = session.svd(layer, head, "ov").V[:, k]
    weights = session.weights(receiver[0])
    read = (v @ weights.W_Q[receiver[1]]) @ weights.W_K[receiver[1]].T  # v_kᵀ W_Q W_Kᵀ
    return float(read.norm() / session.svd(*receiver, "qk").S.norm())


def rank_components(session, head: Head, movers: list[Head]) -> list[tuple[Component, float]]:
    """Every OV component of one sender head with its score s_k · √(Σ_B C_Q²), best first."""
    layer, index = head
    S = session.svd(layer, index, "ov").S
    scored = []
    for k in range(S.shape[0]):
        composition = sum(q_composition(session, (layer, index, k), mover) ** 2 for mover in movers) ** 0.5
        scored.append(((layer, index, k), float(S[k]) * composition))
    return sorted(scored, key=lambda item: -item[1])


def round_robin(rankings: list[list[tuple[Component, float]]]) -> list[tuple[Component, float]]:
    """First of each ranking, then second of each, ..."""
    longest = max(len(r) for r in rankings)
    return [r[i] for i in range(longest) for r in rankings if i < len(r)]


def _top(scores: torch.Tensor, layers: range, count: int) -> list[Head]:
    """The `count` heads of `layers` with the highest scores, best first."""
    H = scores.shape[1]
    flat = scores[layers.start:layers.stop].flatten()
    return [HeadId(layers.start + int(i) // H, int(i) % H) for i in torch.argsort(flat, descending=True)[:count]]


def choose(session, survey: Survey, n_components: int, n_movers: int = N_MOVERS,
           n_senders: int = N_SENDER_HEADS) -> Fallback:
    n_layers = session.adapter.n_layers
    if survey.layers != list(range(n_layers)):
        raise ValueError("the fallback needs a survey of every layer")
    if n_layers < 2:
        raise UserError("the fallback needs at least two layers; give the channel with --components and --movers")
    mover_score, inhibition_score = head_scores(survey)

    def total(split: int) -> float:
        senders, movers = _top(inhibition_score, range(0, split), n_senders), _top(mover_score, range(split, n_layers), n_movers)
        return sum(float(inhibition_score[h]) for h in senders) + sum(float(mover_score[h]) for h in movers)

    split = max(range(1, n_layers), key=total)
    senders = _top(inhibition_score, range(0, split), n_senders)
    movers = sorted(_top(mover_score, range(split, n_layers), n_movers))
    ranked = round_robin([rank_components(session, head, movers) for head in senders])
    record = {
        "rule": "split layer L maximizing the summed scores of the top inhibition heads below L (last-token attention "
                "to the handled items' second mentions) and the top mover heads from L on (attention to the answer); "
                "each sender head's components ranked by s_k*sqrt(sum over movers of C_Q(k->mover)^2), taken "
                "round-robin over the sender heads (best inhibition head first)",
        "split_layer": split,
        "movers": [{"layer": layer, "head": h, "score": float(mover_score[layer, h])} for layer, h in movers],
        "senders": [{"layer": layer, "head": h, "score": float(inhibition_score[layer, h])} for layer, h in senders],
        "components": [{"layer": c[0], "head": c[1], "component": c[2], "score": s} for c, s in ranked[:max(n_components, 8)]],
    }
    return Fallback(movers, senders, [c for c, _ in ranked[:n_components]], record)
