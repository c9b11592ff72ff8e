"""Held-out evaluation of a chosen recipe and of the baselines it must beat, on the same prompts.

Only numbers from here are results: the held-out prompts use another seed, other laundry frames and
other IOI templates than the tuning prompts, and are generated after the search has chosen. The
transfer judgement goes further: list recall in forms no search tunes on (people, places: other
things listed, other phrasings; registry.transfer_forms), every frame of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from th_edit import ui
from th_edit.bench.aggregate import compare
from th_edit.errors import UserError
from th_edit.recipe import Edit
from th_edit.search.evaluate import TrialEvaluator
from th_edit.session import Session
from th_edit.tasks import registry
from th_edit.tasks.prompts import tasks_in


@dataclass
class HeldOut:
    """One recipe on the held-out prompts, paired with the unedited model."""

    label: str
    kind: str  # "search" | "whole-head" | "draft"
    edits: list[Edit]
    paired: dict  # th_edit.bench.aggregate.compare(): per task, overall and per N
    kl: float | None
    chat_agreement: float | None = None  # share of held-out neutral chat prompts whose greedy reply is unchanged

    def gain(self, n: int | None = None) -> float:
        """Laundry accuracy change (absolute), for one N or over all of them."""
        laundry = self.paired[registry.objective().name]
        rows = [laundry["overall"]] if n is None else [r for r in laundry["by_n"] if r["n_items"] == n]
        return rows[0]["accuracy_change"]

    def mean_gain(self) -> float:
        rows = self.paired[registry.objective().name]["by_n"]
        return sum(r["accuracy_change"] for r in rows) / len(rows)

    @property
    def ioi_change(self) -> float | None:
        """The guard task's (IOI) candidate-accuracy change, overall."""
        ioi = self._guard()
        return ioi["overall"]["accuracy_change"] if ioi else None

    @property
    def ioi_top1_change(self) -> float | None:
        """The guard task's top-1 accuracy change over the vocabulary: an IO kept above S can still lose
        to another token, which candidate accuracy does not see."""
        ioi = self._guard()
        return ioi["overall"]["metrics"]["top1"]["accuracy_change"] if ioi and "metrics" in ioi["overall"] else None

    def _guard(self) -> dict | None:
        return next((self.paired[t.name] for t in registry.guards() if t.name in self.paired), None)

    def as_dict(self) -> dict[str, object]:
        return {"label": self.label, "kind": self.kind, "edits": [e.model_dump() for e in self.edits],
                "paired": self.paired, "neutral_kl": self.kl, "neutral_chat_agreement": self.chat_agreement,
                "mean_laundry_gain": self.mean_gain()}


def evaluate_held_out(session: Session, evaluator: TrialEvaluator, label: str, kind: str,
                      edits: Sequence[Edit]) -> HeldOut:
    edit = session.compute(list(edits), measure=False)
    for message in edit.warnings:
        ui.warn(f"{label}: {message}")
    after = evaluator.prompt_scores(edit, desc=f"held-out prompts: {label}")
    kl = evaluator.kl_of(edit, desc=f"held-out KL: {label}") if evaluator.texts else None
    agreement = evaluator.chat_agreement_of(edit, desc=f"held-out chat replies: {label}")
    paired = compare(evaluator.prompts, evaluator.base_prompt_scores, after)
    return HeldOut(label, kind, list(edits), paired, kl, agreement)


def evaluate_transfer(session: Session, prompts: Sequence, edits: Sequence[Edit], batch_size: int) -> dict:
    """The chosen recipe on prompts of forms the search never saw (per task, per N: candidate and top-1
    accuracy before/after, paired: bench.aggregate.compare). A form this tokenizer cannot score (two
    candidates that start with the same token) is left out with a warning: the search's result stands."""
    edit = session.compute(list(edits), measure=False)
    layer = min(r.layer for r in edit.reports)
    paired: dict = {}
    for task in tasks_in(prompts):
        mine = [p for p in prompts if p.task == task]
        try:
            evaluator = TrialEvaluator(session, mine, None, layer, batch_size)
        except UserError as error:
            ui.warn(f"forms never seen: {task} left out ({error})")
            continue
        after = evaluator.prompt_scores(edit, desc=f"forms never seen: {task}")
        paired |= compare(evaluator.prompts, evaluator.base_prompt_scores, after)
    return paired
