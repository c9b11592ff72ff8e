"""Repeated random-token sequences: a random block of tokens, then the same block again.

In the second copy every token has one earlier occurrence (exactly half a block back), which is
what previous-token, duplicate-token and induction heads are read from (docs/method.md#roles-from-data). The
special tokens the tokenizer puts before a text (a BOS, for models trained with one) come first,
exactly as the benchmark encodes its prompts; nothing is added for a tokenizer that adds nothing.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from th_edit.errors import UserError


@dataclass(frozen=True)
class RepeatedSequence:
    """prefix + block + block, as token ids."""

    ids: tuple[int, ...]
    prefix: int  # special tokens before the first block
    half: int  # block length

    def second_half(self) -> range:
        """Positions of the second block: position t repeats the token at t − half."""
        return range(self.prefix + self.half, self.prefix + 2 * self.half)


def special_prefix(tokenizer) -> list[int]:
    """The ids a tokenizer puts before any text with `add_special_tokens=True` (e.g. [BOS])."""
    with_specials = list(tokenizer("x", add_special_tokens=True)["input_ids"])
    plain = list(tokenizer("x", add_special_tokens=False)["input_ids"])
    for start in range(len(with_specials) - len(plain) + 1):
        if with_specials[start:start + len(plain)] == plain:
            return with_specials[:start]
    raise ValueError("the tokenizer's special tokens change the text's own tokens")


def random_token_pool(tokenizer, vocab_size: int | None = None) -> list[int]:
    """Ids a random sequence may use: the tokenizer's vocabulary (capped at the model's
    `vocab_size`) without special or added tokens (Gemma's thousands of `<unusedN>` never trained)."""
    size = len(tokenizer) if vocab_size is None else min(len(tokenizer), vocab_size)
    excluded = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}))
    return [i for i in range(size) if i not in excluded]


def generate_repeated(tokenizer, n_sequences: int, half_length: int, seed: int,
                      vocab_size: int | None = None) -> list[RepeatedSequence]:
    """`n_sequences` sequences of `half_length` distinct random tokens repeated once, seeded.

    Tokens are distinct within a block, so each second-block token has exactly one earlier
    occurrence. `vocab_size`: the model's, when it is smaller than the tokenizer's.
    """
    if n_sequences < 1:
        raise UserError(f"the number of sequences must be at least 1, not {n_sequences}")
    if half_length < 2:
        raise UserError(f"a repeated block needs at least 2 tokens, not {half_length}")
    pool = random_token_pool(tokenizer, vocab_size)
    if len(pool) < half_length:
        raise UserError(f"the tokenizer has only {len(pool)} ordinary tokens, fewer than a block of {half_length}")
    prefix = special_prefix(tokenizer)
    rng = random.Random(f"repeated:{seed}:{half_length}")
    sequences = []
    for _ in range(n_sequences):
        block = rng.sample(pool, half_length)
        sequences.append(RepeatedSequence(tuple(prefix + block + block), len(prefix), half_length))
    return sequences
