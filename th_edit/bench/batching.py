"""Batches of token sequences: length-sorted, left-padded by hand, on the model's input device.

Prompts are sorted by length before batching (less padding) and left-padded with an attention
mask and position ids counted from each prompt's first real token, so a padded prompt sees
exactly the positions it would see alone (this matters for learned absolute positions, GPT-2).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from th_edit.devices import input_device  # noqa: F401  (re-exported for the scoring code)

Batch = dict[str, torch.Tensor]


def length_batches(lengths: Sequence[int], batch_size: int, max_tokens: int | None = None) -> list[list[int]]:
    """Indices grouped into batches of similar length (less padding); a batch of b sequences
    padded to length t stays within b ≤ batch_size and b·t ≤ max_tokens (one sequence at least)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        # `order` is ascending, so the newcomer sets the padded length.
        too_many_tokens = max_tokens is not None and (len(current) + 1) * lengths[i] > max_tokens
        if current and (len(current) == batch_size or too_many_tokens):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def left_padded(sequences: Sequence[Sequence[int]], pad_id: int, device: torch.device | str = "cpu") -> Batch:
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        if sequence:
            input_ids[row, width - len(sequence):] = torch.tensor(sequence, dtype=torch.long)
            attention_mask[row, width - len(sequence):] = 1
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}
    return {k: v.to(device) for k, v in batch.items()}
