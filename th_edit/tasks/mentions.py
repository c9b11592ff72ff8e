"""Where a task prompt mentions its candidates, in token positions (for reading attention).

Both tasks have the same shape: the answer is mentioned once (IOI: the indirect object IO;
laundry: the item never handled) and every other candidate twice (IOI: the subject, S1 and S2;
laundry: each handled item, in the list and again as handled). END is the last token, where the
answer is predicted.

Mentions are found in the text, not guessed from templates: each candidate (which carries its
leading space) is searched with word boundaries, and the character span is mapped to a token
through the fast tokenizer's offsets. The token ids are exactly those the benchmark feeds the
model (`add_special_tokens=True`: a BOS where the model wants one). A prompt whose mentions are
not exactly "answer once, others twice", or whose mention does not start a token of its own, is
ambiguous: `MentionError` says why, and `locate_mentions` skips and counts it rather than guess.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from th_edit.errors import UserError
from th_edit.tasks.prompts import TaskPrompt


class MentionError(ValueError):
    """A prompt whose candidate mentions cannot be placed unambiguously on tokens."""


@dataclass(frozen=True)
class Mentions:
    """Token positions (0-based, in `ids`) of one prompt's mentions."""

    ids: tuple[int, ...]  # the prompt's token ids, special tokens included (as the benchmark encodes)
    first: tuple[int, ...]  # per candidate: the token starting its first mention
    second: tuple[int | None, ...]  # per candidate: the token starting its second mention (None: the answer)
    answer: int  # index of the answer among the candidates

    @property
    def end(self) -> int:
        """The last token: where the next token (the answer) is predicted."""
        return len(self.ids) - 1

    @property
    def answer_first(self) -> int:
        """The answer's only mention (IOI: IO)."""
        return self.first[self.answer]

    @property
    def repeated_second(self) -> list[int]:
        """Second mentions of every repeated candidate, in candidate order (IOI: [S2]; laundry:
        the handled items)."""
        return [p for p in self.second if p is not None]

    @property
    def repeated_first(self) -> list[int]:
        """First mentions of every repeated candidate (IOI: [S1])."""
        return [f for f, s in zip(self.first, self.second) if s is not None]


def candidate_pattern(candidate: str) -> re.Pattern[str]:
    """The candidate as a whole word: no word character may touch it on either side (its own
    leading space, if any, is part of the match)."""
    head = r"(?<!\w)" if re.match(r"\w", candidate) else ""
    tail = r"(?!\w)" if re.search(r"\w$", candidate) else ""
    return re.compile(head + re.escape(candidate) + tail)


def _token_at(offsets: Sequence[tuple[int, int]], match: re.Match[str], candidate: str) -> int:
    """The token that starts the mention `match`: it contains the mention's first non-space
    character and begins inside the match (a token reaching back into the previous word would
    blend the mention with its context)."""
    word_start = match.start() + len(candidate) - len(candidate.lstrip())
    for index, (start, stop) in enumerate(offsets):
        if start < stop and start <= word_start < stop:
            if start < match.start():
                raise MentionError(f"{candidate!r} shares a token with the text before it")
            return index
    raise MentionError(f"{candidate!r} at character {word_start} is not covered by any token")


def mention_positions(tokenizer, prompt: TaskPrompt) -> Mentions:
    """Token positions of `prompt`'s candidate mentions; MentionError if they are ambiguous."""
    if not getattr(tokenizer, "is_fast", False):
        raise UserError("finding mentions needs a fast tokenizer (one that reports character offsets)")
    encoding = tokenizer(prompt.prompt, add_special_tokens=True, return_offsets_mapping=True)
    offsets = [tuple(o) for o in encoding["offset_mapping"]]
    first: list[int] = []
    second: list[int | None] = []
    for index, candidate in enumerate(prompt.candidates):
        matches = list(candidate_pattern(candidate).finditer(prompt.prompt))
        expected = 1 if index == prompt.answer_position else 2
        if len(matches) != expected:
            role = "the answer" if expected == 1 else "a repeated candidate"
            raise MentionError(f"{role} {candidate!r} is mentioned {len(matches)} times, expected {expected}")
        positions = [_token_at(offsets, m, candidate) for m in matches]
        first.append(positions[0])
        second.append(positions[1] if expected == 2 else None)
    every = first + [p for p in second if p is not None]
    if len(set(every)) != len(every):
        raise MentionError("two mentions start at the same token")
    if max(every) >= len(offsets) - 1:
        raise MentionError("a mention is the last token, where the answer is predicted")
    return Mentions(tuple(encoding["input_ids"]), tuple(first), tuple(second), prompt.answer_position)


def locate_mentions(tokenizer, prompts: Sequence[TaskPrompt]) -> tuple[list[tuple[int, Mentions]], Counter[str]]:
    """(index into `prompts`, mentions) of every unambiguous prompt, and the reasons the others
    were skipped, counted."""
    located: list[tuple[int, Mentions]] = []
    skipped: Counter[str] = Counter()
    for index, prompt in enumerate(prompts):
        try:
            located.append((index, mention_positions(tokenizer, prompt)))
        except MentionError as exc:
            # Count by the kind of problem, not the word, so the summary stays short.
            skipped[re.sub(r"'[^']*'|\"[^\"]*\"|\d+", "…", str(exc))] += 1
    return located, skipped
