"""How a task prompt is asked in chat form, and which list item a free-text answer names.

The rule for free generation (completion or chat reply): the answer is right when the FIRST
candidate the text names is the answer. A candidate is named by its word (without the leading
space) as a whole word, in any letter case, or in its regular English plural (+s, +es, y -> ies):
" sock" is named by "sock", "Sock", "SOCKS"; " cherry" by "cherries"; " Mary" by "Mary's" (the
possessive ends the word). A text that names no candidate is wrong; a reply that repeats the
list before answering is wrong too (it names another item first), as a user reading it would find.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from th_edit.tasks.prompts import TaskPrompt


def _forms(word: str) -> list[str]:
    forms = [word, word + "s", word + "es"]
    if len(word) > 1 and word.lower().endswith("y") and word[-2].lower() not in "aeiou":
        forms.append(word[:-1] + "ies")
    return forms


def named_pattern(candidate: str) -> re.Pattern[str]:
    """The candidate's word or its plural, as a whole word, in any letter case."""
    word = candidate.strip()
    alternatives = "|".join(re.escape(f) for f in sorted(_forms(word), key=len, reverse=True))
    return re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)


def first_named(text: str, candidates: Sequence[str]) -> int | None:
    """The index of the candidate `text` names first (see the module's rule), or None."""
    best: tuple[int, int, int] | None = None  # (start, -length, index)
    for index, candidate in enumerate(candidates):
        match = named_pattern(candidate).search(text)
        if match and (best is None or (match.start(), -len(match.group())) < best[:2]):
            best = (match.start(), -len(match.group()), index)
    return None if best is None else best[2]


# What a free-text answer names first, by the rule above: what a user reading it would find.
NAMED_KINDS = ("answer", "other item", "no item")


def named_kind(text: str, prompt: TaskPrompt) -> str:
    """`answer` when the first list item `text` names is the prompt's answer, `other item` when it is
    another list item, `no item` when it names none (a deflection, a question back, a word off the list)."""
    named = first_named(text, prompt.candidates)
    return "no item" if named is None else "answer" if named == prompt.answer_position else "other item"


def chat_question(prompt: TaskPrompt) -> str:
    """The completion prompt asked as a user turn: the text with a blank where the answer goes."""
    return f"{prompt.prompt} ___\n\nWhat goes in the blank? Answer with one word."


def chat_messages(prompt: TaskPrompt) -> list[dict[str, str]]:
    """One user turn asking `prompt` (the task's own phrasing, see registry.Task.chat_question)."""
    from th_edit.tasks import registry  # the task modules import this one

    return [{"role": "user", "content": registry.get(prompt.task).ask_in_chat(prompt)}]
