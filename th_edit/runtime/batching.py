"""Batches of token sequences: length-sorted, left-padded by hand, on the model's input device,
and the one loop that runs them (`batched`; `CachedBatches` when the layers below some layer
never change between runs).

Prompts are sorted by length before batching (less padding) and left-padded with an attention
mask and position ids counted from each prompt's first real token, so a padded prompt sees
exactly the positions it would see alone (this matters for learned absolute positions, GPT-2).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch

from th_edit import ui
from th_edit.devices import input_device  # noqa: F401  (re-exported for the scoring code)
from th_edit.runtime.prefix import PrefixCache

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


def batched(sequences: Sequence[Sequence[int]], batch_size: int, pad_id: int, device: torch.device | str = "cpu",
            max_tokens: int | None = None, desc: str | None = None, unit: str = "batch"
            ) -> Iterator[tuple[list[int], Batch]]:
    """(indices into `sequences`, their left-padded batch) for every length batch, shortest first,
    with a progress bar named `desc` (none without one). The model is run by the caller, who reads
    what it needs (logits, attention, gradients) and puts row r back at sequence indices[r]."""
    groups = length_batches([len(s) for s in sequences], batch_size, max_tokens)
    for indices in (ui.progress(groups, desc=desc, unit=unit) if desc else groups):
        yield indices, left_padded([list(sequences[i]) for i in indices], pad_id, device)


class CachedBatches:
    """Sequences batched once (`groups[b]`: the indices of batch b), for running many variants of
    one model on them: `from_layer(layer)` keeps the residual stream entering `layer`, computed
    once with the model as it is then, so a variant that edits layers ≥ layer only runs those
    (`PrefixCache.forward(b)`: the full forward pass of the variant, bit for bit)."""

    def __init__(self, model: torch.nn.Module, adapter, sequences: Sequence[Sequence[int]], batch_size: int,
                 pad_id: int, device: torch.device | str, max_tokens: int | None = None):
        self.model, self.adapter = model, adapter
        self.groups: list[list[int]] = []
        self.batches: list[Batch] = []
        for indices, batch in batched(sequences, batch_size, pad_id, device, max_tokens):
            self.groups.append(indices)
            self.batches.append(batch)
        self._caches: dict[int, PrefixCache] = {}

    def from_layer(self, layer: int, advance: Callable[[], object] | None = None) -> PrefixCache:
        """The cache for `layer` (computed on first use; `advance` is called per batch then)."""
        if layer not in self._caches:
            self._caches[layer] = PrefixCache(self.model, self.adapter, layer, self.batches, advance)
        return self._caches[layer]
