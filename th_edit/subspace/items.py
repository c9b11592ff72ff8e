"""Where the items of a laundry prompt sit among its tokens.

A laundry prompt mentions every item once in the first list (in `candidates` order) and every
item but the answer a second time in the "handled" list. With single-token items (what the
generator guarantees) each handled item's token occurs exactly twice and the answer's once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class ItemTokens:
    """Token indices (in the unpadded prompt) of each item's mentions, items in first-list order."""

    first: tuple[int, ...]  # first mention of item i
    second: tuple[int | None, ...]  # second mention of item i (None for the answer)

    @property
    def handled_order(self) -> tuple[int, ...]:
        """Item indices in the order they are mentioned again."""
        handled = [i for i, t in enumerate(self.second) if t is not None]
        return tuple(sorted(handled, key=lambda i: self.second[i]))

    def mentions(self, item: int) -> tuple[int, ...]:
        second = self.second[item]
        return (self.first[item],) if second is None else (self.first[item], second)


def locate_items(token_ids: Sequence[int], candidate_ids: Sequence[int], answer: int) -> ItemTokens:
    """Mentions of each candidate (its single token id) in `token_ids`.

    Raises ValueError when the prompt does not have the laundry shape for this tokenization:
    the answer must occur once, every other item twice, and every first mention must precede
    every second mention (the first list comes before the handled one).
    """
    first: list[int] = []
    second: list[int | None] = []
    for index, token in enumerate(candidate_ids):
        where = [t for t, tid in enumerate(token_ids) if tid == token]
        expected = 1 if index == answer else 2
        if len(where) != expected:
            raise ValueError(f"item {index} occurs {len(where)} times in the prompt, expected {expected}")
        first.append(where[0])
        second.append(where[1] if expected == 2 else None)
    if first != sorted(first):
        raise ValueError("the items' first mentions are not in candidate order")
    later = [t for t in second if t is not None]
    if later and min(later) < max(first):
        raise ValueError("an item is mentioned again before the first list ends")
    return ItemTokens(tuple(first), tuple(second))
