"""Generated prompt sets for several tasks at once, with a word on how the tokenizer left the lexicon."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from th_edit import ui
from th_edit.errors import UserError
from th_edit.tasks.ioi import NAMES, generate_ioi, usable_names
from th_edit.tasks.laundry import frames_left_out, generate_laundry, lexicon_survival
from th_edit.tasks.prompts import TaskPrompt


def build_prompts(tokenizer, tasks: Sequence[str], n_items: Sequence[int], n_per_n: int, seed: int) -> list[TaskPrompt]:
    """Generated prompts: laundry for every distinct N in `n_items` (n_per_n each, a repeated N
    counts once), then n_per_n IOI prompts. Says how much of the vocabulary the tokenizer left."""
    if n_per_n < 1:
        raise UserError(f"the number of prompts must be at least 1, not {n_per_n}")
    prompts: list[TaskPrompt] = []
    if "laundry" in tasks:
        prompts += generate_laundry(tokenizer, n_items, n_per_n, seed)
        _report_lexicon(lexicon_survival(tokenizer), n_items)
    if "ioi" in tasks:
        prompts += generate_ioi(tokenizer, n_per_n, seed)
        ui.debug(f"ioi: {len(usable_names(tokenizer))} of {len(NAMES)} names are single tokens")
    return prompts


def lexicon_record(tokenizer) -> dict[str, dict[str, int]]:
    """Per laundry frame, how many lexicon items are single tokens for this tokenizer (for reports)."""
    return {frame: {"single_token_items": usable, "lexicon_items": total}
            for frame, (usable, total) in lexicon_survival(tokenizer).items()}


def _span(values: Sequence[int]) -> str:
    low, high = min(values), max(values)
    return str(low) if low == high else f"{low}-{high}"


def _report_lexicon(survival: Mapping[str, tuple[int, int]], n_items: Sequence[int]) -> None:
    """One status line on how many lexicon items are single tokens, and a warning per frame that
    is too small for some N (those lists silently rotate over fewer frames otherwise)."""
    usable = {name: counts[0] for name, counts in survival.items()}
    ui.info(f"laundry-list lexicon: {len(survival)} frames, {_span(list(usable.values()))} single-token items "
            f"each (of {_span([total for _, total in survival.values()])})")
    for name, (count, total) in survival.items():
        ui.debug(f"laundry frame '{name}': {count} of {total} items are single tokens")
    for name, ns in frames_left_out(usable, n_items).items():
        ui.warn(f"laundry frame '{name}' has only {usable[name]} single-token items, so it is not used for "
                f"N={', '.join(map(str, ns))}")
