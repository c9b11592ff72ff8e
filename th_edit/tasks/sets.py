"""Generated prompt sets for several tasks at once, with a word on how the tokenizer left the lexicon."""

from __future__ import annotations

from collections.abc import Sequence

from th_edit.errors import UserError
from th_edit.tasks import registry
from th_edit.tasks.prompts import TaskPrompt


def build_prompts(tokenizer, tasks: Sequence[str], n_items: Sequence[int], n_per_n: int, seed: int,
                  split: str | None = None) -> list[TaskPrompt]:
    """Generated prompts, task by task in registration order: a list task for every distinct N in
    `n_items` (n_per_n each, a repeated N counts once), a fixed-N task (IOI) n_per_n. Says how much
    of the vocabulary the tokenizer left. `split`: "tuning" or "held_out" (see registry.Task)."""
    if n_per_n < 1:
        raise UserError(f"the number of prompts must be at least 1, not {n_per_n}")
    prompts: list[TaskPrompt] = []
    for name in registry.in_order(tasks):
        task = registry.get(name)
        prompts += task.prompts(tokenizer, n_items, n_per_n, seed, split)
        task.announce(tokenizer, n_items)
    return prompts


def setup_record(tokenizer, tasks: Sequence[str], n_items: Sequence[int]) -> dict[str, object]:
    """What a report's `setup` says about generated prompts beyond tasks, seed and counts."""
    record: dict[str, object] = {}
    chosen = [registry.get(name) for name in registry.in_order(tasks)]
    if any(task.list_recall for task in chosen):
        record["n_items"] = list(dict.fromkeys(n_items))
    for task in chosen:
        record.update(task.setup_record(tokenizer))
    return record


def lexicon_record(tokenizer) -> dict[str, dict[str, int]]:
    """Per laundry frame, how many lexicon items are single tokens for this tokenizer (for reports)."""
    from th_edit.tasks.laundry import lexicon_record as laundry_lexicon

    return laundry_lexicon(tokenizer)
