"""Score task prompts from the logits of their last position.

Only the last position's logits are computed (`logits_to_keep=1`), so memory never scales with
vocabulary × sequence × batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from th_edit.errors import UserError
from th_edit.runtime import Batch, Tokenized, batched, input_device, tokenize_prompts
from th_edit.tasks.prompts import TaskPrompt

LastLogits = Callable[[Batch], torch.Tensor]  # batch -> logits of the last position [B, V]


@dataclass(frozen=True)
class PromptScore:
    candidate_correct: bool  # the answer's first token beats every other candidate's first token
    top1_correct: bool  # the answer's first token is the argmax over the whole vocabulary
    logit_diff: float  # answer logit minus the best other candidate's logit
    # Free generation (bench.generation; None: not measured): the first list item the greedy
    # continuation names is the answer, after the completion prompt / in a chat reply; what it
    # names first (tasks.answers.NAMED_KINDS); the text itself.
    generation_correct: bool | None = None
    chat_correct: bool | None = None
    generation_named: str | None = None
    chat_named: str | None = None
    generation_text: str | None = None
    chat_text: str | None = None


def score_row(logits: torch.Tensor, ids: list[int], answer: int) -> PromptScore:
    candidate_logits = logits[ids]
    answer_logit = candidate_logits[answer]
    others = torch.cat([candidate_logits[:answer], candidate_logits[answer + 1:]])
    best_other = others.max()
    return PromptScore(
        candidate_correct=bool(answer_logit > best_other),
        top1_correct=int(logits.argmax()) == ids[answer],
        logit_diff=float(answer_logit - best_other),
    )


def model_last_logits(model: torch.nn.Module) -> LastLogits:
    """The plain forward pass, computing logits for the last position only."""
    return lambda batch: model(**batch, logits_to_keep=1).logits[:, -1]


def score_prompts(model: torch.nn.Module, tokenizer, prompts: Sequence[TaskPrompt], batch_size: int = 16,
                  tokenized: Tokenized | None = None, desc: str = "scoring",
                  last_logits: LastLogits | None = None) -> list[PromptScore]:
    """Score every prompt from the last position's logits; results are in the order of `prompts`.

    `last_logits` replaces the plain forward pass of `model` (e.g. one that reuses cached states).
    """
    if batch_size < 1:
        raise UserError(f"batch size must be at least 1, not {batch_size}")
    tokenized = tokenized or tokenize_prompts(tokenizer, prompts)
    if len(tokenized.encoded) != len(prompts):
        raise ValueError("`tokenized` must come from exactly `prompts`")
    forward = last_logits or model_last_logits(model)
    scores: list[PromptScore | None] = [None] * len(prompts)
    with torch.inference_mode():
        for indices, batch in batched(tokenized.encoded, batch_size, tokenized.pad_id, input_device(model), desc=desc):
            last = forward(batch).float().cpu()
            for row, i in enumerate(indices):
                scores[i] = score_row(last[row], *tokenized.targets[i])
    return scores  # type: ignore[return-value]  # every slot was filled
