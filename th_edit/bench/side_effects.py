"""Side effects of an edit: KL(base ‖ edited) of the next-token distributions on neutral text."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from th_edit.errors import UserError
from th_edit.runtime import Batch, batched, encode, pad_id

Forward = Callable[[Batch], torch.Tensor]  # batch -> logits [B, T, V]

# Upper bound on the elements of one batch's full-sequence logits in neutral_kl (float32: 128 MB).
# With a 262k vocabulary this caps a batch at 128 tokens; with 49k at about 680.
KL_MAX_BATCH_LOGITS = 2**25
# Elements per log-softmax chunk in neutral_kl (float64: 16 MB per temporary).
KL_CHUNK_LOGITS = 2**21


def neutral_kl(forward_base: Forward, forward_edited: Forward, tokenizer, texts: Sequence[str],
               batch_size: int = 16) -> float:
    """Mean KL(base ‖ edited) in nats per token over every non-pad position of `texts`.

    Each batch is run through `forward_base` and then `forward_edited` before the next batch, so
    either callable may swap tensors in and out of a shared model (see `Variant.forward`). Batches
    hold at most KL_MAX_BATCH_LOGITS logits and the log-softmaxes are taken in chunks of positions,
    so peak memory stays bounded even for a 262k vocabulary.
    """
    total, count = kl_sum(forward_base, forward_edited, tokenizer, texts, batch_size)
    return total / count


def kl_sum(forward_base: Forward, forward_edited: Forward, tokenizer, texts: Sequence[str] | None,
           batch_size: int = 16, encoded: Sequence[Sequence[int]] | None = None,
           base_cache: list[torch.Tensor] | None = None) -> tuple[float, int]:
    """(summed KL in nats, number of positions) — what neutral_kl averages. Give `texts`, or
    `encoded` token ids (e.g. chat-formatted text that already carries its special tokens).

    `base_cache`: a list that keeps the base model's logits at the real positions of each batch.
    An empty list is filled; a filled one (from a call with the same texts and batch size) is read
    instead of running `forward_base`, with the same result to the bit."""
    sequences = [list(e) for e in (encoded if encoded is not None else encode(tokenizer, texts or [])) if e]
    if not sequences:
        raise UserError("no neutral text to measure KL on")
    max_tokens = max(max(len(e) for e in sequences), KL_MAX_BATCH_LOGITS // max(len(tokenizer), 1))
    total, count = 0.0, 0
    with torch.inference_mode():
        for b, (_, batch) in enumerate(batched(sequences, batch_size, pad_id(tokenizer), max_tokens=max_tokens,
                                               desc="neutral-text KL")):
            cached = base_cache is not None and b < len(base_cache)
            base = base_cache[b] if cached else forward_base(batch)
            edited = forward_edited(batch)
            vocabulary = edited.shape[-1]
            positions = batch["attention_mask"].reshape(-1).nonzero().squeeze(1).to(edited.device)
            if base_cache is not None and not cached:
                base = base.reshape(-1, vocabulary)[positions]  # real positions only (a copy)
                base_cache.append(base)
            base_rows = torch.arange(len(positions), device=base.device) if base_cache is not None else positions
            total += _chunked_kl(base.reshape(-1, vocabulary), base_rows, edited.reshape(-1, vocabulary), positions)
            count += len(positions)
    return total, count


def _chunked_kl(base: torch.Tensor, base_rows: torch.Tensor, edited: torch.Tensor, positions: torch.Tensor) -> float:
    """Σ_i KL(softmax(base[base_rows[i]]) ‖ softmax(edited[positions[i]])), a few rows at a time.

    Rows are gathered chunk by chunk rather than all at once, so no full copy of either logits
    tensor is made; float64 keeps small KLs (near-identical rows) from drowning in rounding.
    """
    rows = max(1, KL_CHUNK_LOGITS // base.shape[-1])
    total = 0.0
    for start in range(0, len(positions), rows):
        log_p = torch.log_softmax(base[base_rows[start:start + rows]].double(), dim=-1)
        log_q = torch.log_softmax(edited[positions[start:start + rows]].double(), dim=-1)
        total += float((log_p.exp() * (log_p - log_q)).sum())
    return total
