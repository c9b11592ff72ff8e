"""What a search maximizes on the objective task's tuning prompts: which prompts count as right.

`candidate`: the answer outranks the other list items (the search's original objective).
`top1`: the answer is the argmax over the whole vocabulary — the token greedy generation emits,
so an edit chosen by it changes what the model says, not only how it ranks the list. Both come
from the same last-position logits, so neither costs a trial more than the other. The guard task
(IOI) is judged by the same measure as the objective: under `top1` an edit that keeps IO above S
but lets another token win over the vocabulary breaks the IOI limit, as a user would see it.
"""

from __future__ import annotations

from th_edit.bench.scoring import PromptScore
from th_edit.errors import UserError

OBJECTIVES = ("candidate", "top1")


def is_right(score: PromptScore, objective: str) -> bool:
    if objective == "candidate":
        return score.candidate_correct
    if objective == "top1":
        return score.top1_correct
    raise UserError(f"unknown search objective {objective!r}: objectives are {', '.join(OBJECTIVES)}")


def guard_measure(objective: str) -> str | None:
    """How the guard task is judged, as a study records it (search.study): None where it never changed
    (candidate: IOI by candidate accuracy, as always), "top1" where it did (studies recorded before it
    judged IOI by candidate accuracy under `top1` too, so they cannot be resumed as the same search)."""
    is_right(PromptScore(False, False, 0.0), objective)  # an unknown objective is refused here
    return "top1" if objective == "top1" else None
