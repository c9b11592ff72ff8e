"""Greedy continuations of many token sequences at once: the tokens a user would see.

Sequences go through the same length-sorted, left-padded batches as every other forward pass
(`batching.batched`), and each batch through the model's own `generate` with sampling off, so
position ids, masks and the key/value cache are handled as transformers handles them for that
family. A continuation stops after `n_tokens` or at the end-of-sequence token (kept).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from th_edit.runtime.batching import batched, input_device


def eos_ids(model: torch.nn.Module, tokenizer) -> set[int]:
    """Every token that ends a turn: the tokenizer's EOS and the model's generation config's."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids |= set(configured) if isinstance(configured, (list, tuple)) else ({configured} if configured is not None else set())
    return ids


def greedy_continuations(model: torch.nn.Module, tokenizer, sequences: Sequence[Sequence[int]], n_tokens: int,
                         batch_size: int = 16, pad_id: int = 0, desc: str | None = None) -> list[list[int]]:
    """The first `n_tokens` greedy tokens after each of `sequences` (fewer where an EOS ends it,
    the EOS included), in the order of `sequences`."""
    stops = eos_ids(model, tokenizer)
    out: list[list[int] | None] = [None] * len(sequences)
    with torch.inference_mode():
        for indices, batch in batched(sequences, batch_size, pad_id, input_device(model), desc=desc):
            # generate counts positions from the attention mask itself (left padding included).
            generated = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                       max_new_tokens=n_tokens, min_new_tokens=0, do_sample=False, num_beams=1,
                                       temperature=None, top_p=None, top_k=None, pad_token_id=pad_id,
                                       eos_token_id=sorted(stops) or None)
            new = generated[:, batch["input_ids"].shape[1]:].tolist()
            for row, i in enumerate(indices):
                out[i] = _until_stop(new[row], stops)
    return out  # type: ignore[return-value]  # every slot was filled


def _until_stop(tokens: list[int], stops: set[int]) -> list[int]:
    for k, token in enumerate(tokens):
        if token in stops:
            return tokens[:k + 1]
    return tokens
