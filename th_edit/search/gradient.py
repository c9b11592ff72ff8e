"""The search by gradient (docs/method.md#search): fit one log-scale per candidate component, round to a recipe.

Scaling OV component k of a head by α_k is, in the head's output z, z ← z + (α_k − 1)(z · read_k) write_k
(`hooks.components_scaled`, the same directions as the weight edit: docs/method.md#exact-edits), so the
edited model's forward pass is differentiable in α. With θ_k = ln α_k (θ = 0: the unedited model) a
standard optimizer (Adam) minimises, on minibatches of the *tuning* prompts only,

    − R(θ) + ψ(KL(θ)/κ − 1, λ, ρ) + ψ(ΔIOI(θ)/δ − 1, μ, ρ)

R: the mean log-probability of the objective task's answer among its candidates (the smooth version of
candidate accuracy; with `--objective top1` over the whole vocabulary, the smooth version of top-1
accuracy); KL: mean KL(unedited ‖ edited) per token on neutral tuning texts, kept under a target κ a
little below the budget; ΔIOI: the fall of the guard tasks' mean answer log-probability (among the
candidates, or over the vocabulary under `top1`, as the objective's), kept under δ;
ψ(g, λ, ρ) = (ρ/2)·max(0, g + λ/ρ)² − λ²/(2ρ), the augmented Lagrangian term of an inequality g ≤ 0,
whose multiplier rises by ρ·g after every step (λ ← max(0, λ + ρ g)).

The fitted scales are rounded to a recipe: each to a grid in log space (`quantum`), those within
`tolerance` of 1 dropped, the rest grouped per head by equal scale into recipe edits. The rounded recipe
is then scored exactly (`TrialEvaluator`, the weights written by `plan_edit`) on the full tuning set and
judged by the same limits as a TPE trial; if over them, the fitted log-scales are shrunk towards 0 and
rounded again, a few times. If within them with KL still under the fit's target κ (minibatch noise and
the optimizer's step size leave a fit short of its budget), they are grown by the inverse factor while
tuning accuracy rises: a line search along the fitted direction, every point scored exactly. Each exact
scoring is one trial of the `SearchResult` (its best feasible one is chosen), so the held-out judgement,
report and recipe are the TPE search's. The minibatch order is seeded: a fit is reproducible.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from th_edit import ui
from th_edit.linalg import near_ties
from th_edit.recipe import Edit
from th_edit.runtime import PrefixCache, left_padded, pad_id, tokenize_prompts
from th_edit.search.evaluate import TrialEvaluator
from th_edit.search.optimize import Limits, SearchResult, Trial
from th_edit.search.space import Candidate
from th_edit.session import Session
from th_edit.tasks import registry
from th_edit.tasks.neutral import NeutralSet
from th_edit.tasks.prompts import TaskPrompt

LOG_SCALE_RANGE = (math.log(0.5), math.log(4.0))  # α from halving to ×4, as in the TPE range and a bit below


@dataclass(frozen=True)
class GradientSettings:
    steps: int = 40
    learning_rate: float = 0.08
    batch_prompts: int = 16  # objective-task prompts per step
    batch_guard_prompts: int = 8  # guard-task (IOI) prompts per step
    batch_texts: int = 4  # neutral texts per step
    kl_target: float = 0.7  # of the KL budget: the fit aims below it (minibatch noise, rounding, held-out texts)
    ioi_slack: float = 0.05  # nats: how far the guard tasks' mean answer log-probability may fall in the fit
    penalty: float = 10.0  # ρ of the augmented Lagrangian
    tolerance: float = 0.05  # a rounded scale within this of 1 is dropped
    quantum: float = 0.05  # rounding grid of ln α
    shrink: float = 0.8  # per round the fitted log-scales are multiplied by it (over the limits) or divided (budget left)
    # Exact scorings of rounded recipes at most. Growing stops by itself (KL target, accuracy); a binding
    # --min-chat-agreement can need ten shrinks (0.8^10 ≈ 0.11 of the fitted log-scales) to be met.
    max_rounds: int = 12


def tied_runs(singular_values: torch.Tensor) -> list[list[int]]:
    """The runs of near-tied singular values (linalg.near_ties) of one head, each a list of ≥ 2 indices."""
    runs: list[list[int]] = []
    for k in near_ties(singular_values):  # ascending: k and k + 1 are tied
        if runs and runs[-1][-1] == k:
            runs[-1].append(k + 1)
        else:
            runs.append([k, k + 1])
    return runs


def rounded_edits(candidates: Sequence[Candidate], log_scales: Sequence[torch.Tensor], quantum: float,
                  tolerance: float, ties: Sequence[Sequence[Sequence[int]]] | None = None) -> list[Edit]:
    """The recipe of fitted log-scales: scales within `tolerance` of 1 dropped, the others' ln α rounded to the grid,
    one edit per (head, scale) with its components in ascending order.

    `ties`: per candidate, its head's runs of near-tied singular values (`tied_runs`). Within a run the SVD's
    directions are any rotation of each other, so only an edit that scales the whole run alike is the same
    whatever basis the SVD picked: every member of a run that holds a fitted component gets the run's mean
    ln α (a member that was not fitted counts as 0, unscaled)."""
    edits = []
    ties = ties if ties is not None else [[] for _ in candidates]
    for candidate, theta, runs in sorted(zip(candidates, log_scales, ties), key=lambda item: (item[0].layer, item[0].head)):
        fitted = dict(zip(candidate.components, theta.tolist()))
        for run in runs:
            if any(k in fitted for k in run):
                mean = sum(fitted.get(k, 0.0) for k in run) / len(run)
                fitted.update({k: mean for k in run})
        by_scale: dict[float, list[int]] = {}
        for component, value in fitted.items():
            if abs(math.exp(value) - 1.0) > tolerance:
                by_scale.setdefault(round(math.exp(quantum * round(value / quantum)), 3), []).append(component)
        edits += [Edit(layer=candidate.layer, head=candidate.head, circuit="ov", components=sorted(components), scale=scale)
                  for scale, components in sorted(by_scale.items())]
    return edits


class _Minibatches:
    """Sequences cut once into seeded, shuffled minibatches, each with the residual stream entering
    `layer` cached (computed under no_grad, so that a forward pass from there can be differentiated)."""

    def __init__(self, session: Session, sequences: Sequence[Sequence[int]], size: int, layer: int, rng: random.Random):
        order = list(range(len(sequences)))
        rng.shuffle(order)
        self.groups = [order[i:i + size] for i in range(0, len(order), size)]
        batches = [left_padded([list(sequences[i]) for i in group], pad_id(session.tokenizer), session.device)
                   for group in self.groups]
        with torch.no_grad():
            self.cache = PrefixCache(session.model, session.adapter, layer, batches)

    def __len__(self) -> int:
        return len(self.groups)


def _answer_log_probs(cache: PrefixCache, b: int, group: list[int], targets, over_vocabulary: bool = False) -> torch.Tensor:
    """[rows] log-probability of each prompt's answer among its candidates, or over the whole vocabulary
    (`over_vocabulary`: the smooth version of top-1 accuracy, what greedy decoding emits)."""
    last = cache.forward(b, logits_to_keep=1)[:, -1].float()
    if over_vocabulary:
        log_p = torch.log_softmax(last, dim=-1)
        return torch.stack([log_p[row, targets[i][0][targets[i][1]]] for row, i in enumerate(group)])
    return torch.stack([torch.log_softmax(last[row, targets[i][0]], dim=-1)[targets[i][1]] for row, i in enumerate(group)])


def _log_probs(cache: PrefixCache, b: int) -> torch.Tensor:
    """log softmax of the logits at the real (non-pad) positions of batch b, [tokens, vocabulary]."""
    logits = cache.forward(b)
    keep = cache.batches[b]["attention_mask"].reshape(-1).bool()
    return torch.log_softmax(logits.reshape(-1, logits.shape[-1])[keep].float(), dim=-1)


def _lagrangian(g: torch.Tensor, multiplier: float, rho: float) -> torch.Tensor:
    return (rho / 2) * torch.clamp(g + multiplier / rho, min=0) ** 2 - multiplier ** 2 / (2 * rho)


def fit_log_scales(session: Session, prompts: Sequence[TaskPrompt], neutral: NeutralSet, candidates: Sequence[Candidate],
                   limits: Limits, seed: int, settings: GradientSettings = GradientSettings(),
                   objective: str = "candidate") -> list[torch.Tensor]:
    """One fitted ln α per component of each (OV) candidate, float64 on the CPU. `objective` (search.objective):
    candidate maximizes the answer's log-probability among the candidates, top1 over the whole vocabulary."""
    from th_edit.hooks import ComponentScales, components_scaled, ov_components

    rng = random.Random(seed)
    over_vocabulary = objective == "top1"  # the objective's and the guard's answer log-probs alike (search.objective)
    layer = min(c.layer for c in candidates)
    objective_name = registry.objective().name
    parts = {}
    for guard in (False, True):  # the objective task's prompts, the guard tasks' prompts
        chosen = [p for p in prompts if (registry.get(p.task).guard if guard else p.task == objective_name)]
        if chosen:
            tokenized = tokenize_prompts(session.tokenizer, chosen, max_length=session.max_length)
            size = settings.batch_guard_prompts if guard else settings.batch_prompts
            parts[guard] = (_Minibatches(session, tokenized.encoded, size, layer, rng), tokenized.targets)
    texts = _Minibatches(session, neutral.encoded, settings.batch_texts, layer, rng) if neutral.encoded else None
    with torch.no_grad():  # the unedited model's text log-probs are recomputed per step: a vocabulary-wide cache is GBs
        base_guard = ([_answer_log_probs(parts[True][0].cache, b, g, parts[True][1], over_vocabulary).mean()
                       for b, g in enumerate(parts[True][0].groups)] if True in parts else [])

    directions = [ov_components(session, c.layer, c.head, c.components) for c in candidates]
    thetas = [torch.zeros(len(c.components), dtype=torch.float32, requires_grad=True) for c in candidates]
    optimizer = torch.optim.Adam(thetas, lr=settings.learning_rate)
    kl_multiplier = ioi_multiplier = 0.0
    rho = settings.penalty
    kl_target = settings.kl_target * limits.kl_budget
    for step in ui.progress(range(settings.steps), desc="gradient fit", unit="step"):
        if texts is not None:
            with torch.no_grad():
                base_text = _log_probs(texts.cache, step % len(texts))
        scales = [ComponentScales(c.layer, c.head, read.float(), write.float(), theta.exp())
                  for c, (read, write), theta in zip(candidates, directions, thetas)]
        with torch.enable_grad(), components_scaled(session.model, session.adapter, scales):
            batches, targets = parts[False]
            b = step % len(batches)
            loss = -_answer_log_probs(batches.cache, b, batches.groups[b], targets, over_vocabulary).mean()
            kl_g = ioi_g = None
            if texts is not None:
                t = step % len(texts)
                log_q = _log_probs(texts.cache, t)
                kl = (base_text.exp() * (base_text - log_q)).sum(-1).mean()
                kl_g = kl / kl_target - 1.0
                loss = loss + _lagrangian(kl_g, kl_multiplier, rho)
            if True in parts:
                guards, guard_targets = parts[True]
                g = step % len(guards)
                drop = base_guard[g] - _answer_log_probs(guards.cache, g, guards.groups[g], guard_targets,
                                                         over_vocabulary).mean()
                ioi_g = drop / settings.ioi_slack - 1.0
                loss = loss + _lagrangian(ioi_g, ioi_multiplier, rho)
            grads = torch.autograd.grad(loss, thetas)
        for theta, grad in zip(thetas, grads):
            theta.grad = grad
        optimizer.step()
        with torch.no_grad():
            for theta in thetas:
                theta.clamp_(*LOG_SCALE_RANGE)
        if kl_g is not None:
            kl_multiplier = max(0.0, kl_multiplier + rho * float(kl_g.detach()))
        if ioi_g is not None:
            ioi_multiplier = max(0.0, ioi_multiplier + rho * float(ioi_g.detach()))
        ui.debug(f"gradient step {step}: loss {float(loss.detach()):.4f}"
                 + (f", KL {float(kl_g.detach() + 1) * kl_target:.4f}" if kl_g is not None else ""))
    return [theta.detach().double() for theta in thetas]


def gradient_search(session: Session, evaluator: TrialEvaluator, candidates: Sequence[Candidate], neutral: NeutralSet,
                    limits: Limits, seed: int, settings: GradientSettings = GradientSettings()) -> SearchResult:
    """Fit, round, and score rounded recipes exactly on the tuning set until one is within the limits.

    Every exact scoring is a "full" trial of the result (its `best` is the chosen recipe)."""
    ov = [c for c in candidates if c.circuit == "ov"]
    if len(ov) < len(candidates):
        ui.warn("the gradient search fits OV components only: QK candidates are left out")
    result = SearchResult()
    if not ov:
        return result
    try:
        log_scales = fit_log_scales(session, evaluator.prompts, neutral, ov, limits, seed, settings, evaluator.objective)
    except KeyboardInterrupt:
        result.interrupted = True
        ui.warn("interrupted: the gradient fit found nothing to keep")
        return result
    ties = [tied_runs(session.svd(c.layer, c.head, "ov").S) for c in ov]
    try:
        _line_search(session, evaluator, ov, log_scales, ties, limits, settings, result)
    except KeyboardInterrupt:  # the exact scorings so far are kept: the best feasible one is the best so far
        result.interrupted = True
        ui.warn("interrupted: no more exact scorings; the ones finished are kept")
    return result


def _line_search(session: Session, evaluator: TrialEvaluator, ov: Sequence[Candidate], log_scales: Sequence[torch.Tensor],
                 ties: Sequence[Sequence[Sequence[int]]], limits: Limits, settings: GradientSettings,
                 result: SearchResult) -> None:
    """Exact scorings of the fitted log-scales times a factor (module doc), appended to `result` as they finish."""
    kl_target = settings.kl_target * limits.kl_budget
    factor, direction, best_accuracy, tried = 1.0, 0, -1.0, set()  # direction: +1 growing, −1 shrinking, 0 undecided
    for _ in range(settings.max_rounds):
        scaled = [(factor * theta).clamp(*LOG_SCALE_RANGE) for theta in log_scales]
        edits = rounded_edits(ov, scaled, settings.quantum, settings.tolerance, ties)
        key = tuple((e.layer, e.head, tuple(e.components), e.scale) for e in edits)
        if not edits or (key in tried and direction == 0):
            break
        if key in tried:  # the grid rounded this factor to a recipe already scored: keep going the same way
            factor = factor / settings.shrink if direction > 0 else factor * settings.shrink
            continue
        tried.add(key)
        scores = evaluator.evaluate(session.compute(edits, measure=False),
                                    desc=f"exact scoring {len(result.trials) + 1} (scales x{factor:.3g})")
        feasible = all(v <= 0 for v in limits.violations(scores, evaluator.base))
        result.trials.append(Trial(len(result.trials), edits, scores, "full", feasible))
        if direction >= 0 and feasible and (scores.kl or 0.0) < kl_target and scores.mean_laundry > best_accuracy:
            best_accuracy, direction, factor = scores.mean_laundry, 1, factor / settings.shrink  # budget left: grow
        elif direction <= 0 and not feasible:
            direction, factor = -1, factor * settings.shrink
        else:
            break
