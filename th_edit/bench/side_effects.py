"""Side effects of an edit: KL(base ‖ edited) of the next-token distributions on neutral text (mean,
95th percentile, maximum), and what changes in the greedy text on neutral prompts (`user_visible`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from th_edit.errors import UserError
from th_edit.runtime import Batch, batched, encode, pad_id
from th_edit.runtime.generate import greedy_continuations
from th_edit.runtime.tokens import chat_prompt_ids, has_chat_template
from th_edit.tasks.neutral import neutral_chat_questions, neutral_prompts

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
           base_cache: list[torch.Tensor] | None = None, per_position: list[torch.Tensor] | None = None,
           last_positions: Sequence[int] | None = None) -> tuple[float, int]:
    """(summed KL in nats, number of positions) — what neutral_kl averages. Give `texts`, or
    `encoded` token ids (e.g. chat-formatted text that already carries its special tokens).

    `base_cache`: a list that keeps the base model's logits at the real positions of each batch.
    An empty list is filled; a filled one (from a call with the same texts and batch size) is read
    instead of running `forward_base`, with the same result to the bit.

    `per_position`: a list that receives each batch's per-position KLs (float64, for percentiles).
    `last_positions`: per sequence, only its last k positions count (e.g. those predicting a reply);
    not combined with `base_cache`."""
    if last_positions is not None and base_cache is not None:
        raise ValueError("last_positions cannot be combined with base_cache")
    sequences = [list(e) for e in (encoded if encoded is not None else encode(tokenizer, texts or [])) if e]
    if not sequences:
        raise UserError("no neutral text to measure KL on")
    max_tokens = max(max(len(e) for e in sequences), KL_MAX_BATCH_LOGITS // max(len(tokenizer), 1))
    total, count = 0.0, 0
    with torch.inference_mode():
        for b, (indices, batch) in enumerate(batched(sequences, batch_size, pad_id(tokenizer), max_tokens=max_tokens,
                                               desc="neutral-text KL")):
            cached = base_cache is not None and b < len(base_cache)
            base = base_cache[b] if cached else forward_base(batch)
            edited = forward_edited(batch)
            vocabulary = edited.shape[-1]
            counted = batch["attention_mask"]
            if last_positions is not None:
                counted = torch.zeros_like(counted)
                for row, i in enumerate(indices):
                    if last_positions[i]:
                        counted[row, -last_positions[i]:] = 1
            positions = counted.reshape(-1).nonzero().squeeze(1).to(edited.device)
            if base_cache is not None and not cached:
                base = base.reshape(-1, vocabulary)[positions]  # real positions only (a copy)
                base_cache.append(base)
            base_rows = torch.arange(len(positions), device=base.device) if base_cache is not None else positions
            kls = _chunked_kl(base.reshape(-1, vocabulary), base_rows, edited.reshape(-1, vocabulary), positions)
            if per_position is not None:
                per_position.append(kls)
            total += float(kls.sum())
            count += len(positions)
    return total, count


def _chunked_kl(base: torch.Tensor, base_rows: torch.Tensor, edited: torch.Tensor, positions: torch.Tensor
                ) -> torch.Tensor:
    """Per i: KL(softmax(base[base_rows[i]]) ‖ softmax(edited[positions[i]])), a few rows at a time.

    Rows are gathered chunk by chunk rather than all at once, so no full copy of either logits
    tensor is made; float64 keeps small KLs (near-identical rows) from drowning in rounding.
    """
    rows = max(1, KL_CHUNK_LOGITS // base.shape[-1])
    parts = [torch.zeros(0, dtype=torch.float64)]
    for start in range(0, len(positions), rows):
        log_p = torch.log_softmax(base[base_rows[start:start + rows]].double(), dim=-1)
        log_q = torch.log_softmax(edited[positions[start:start + rows]].double(), dim=-1)
        parts.append((log_p.exp() * (log_p - log_q)).sum(-1).cpu())
    return torch.cat(parts)


def kl_summary(total: float, count: int, per_position: Sequence[torch.Tensor]) -> dict[str, float | int]:
    """Mean, 95th percentile and maximum of per-position KLs (nats), and how many positions."""
    values = torch.cat(list(per_position)) if per_position else torch.zeros(0, dtype=torch.float64)
    return {"mean_nats_per_token": total / count, "p95_nats": float(torch.quantile(values, 0.95)),
            "max_nats": float(values.max()), "n_tokens": count}


# Greedy tokens compared per neutral prompt: a change within them is a change a user reads.
AGREEMENT_TOKENS = 16


def neutral_chat_prompt_ids(tokenizer, model=None, limit: int | None = None) -> list[list[int]]:
    """The user turns of the shipped neutral chats in the model's chat format, ready for a greedy reply
    (none where the model has no chat format: runtime.tokens.chat_template)."""
    if not has_chat_template(tokenizer, model):
        return []
    return [chat_prompt_ids(tokenizer, messages, model) for messages in neutral_chat_questions()[:limit]]


def user_visible(before, after, tokenizer, batch_size: int = 16, limit: int | None = None) -> dict[str, object]:
    """Side effects in what the model says on neutral prompts (`before`, `after`: session Variants).

    greedy_agreement: the share of neutral prompts whose first AGREEMENT_TOKENS greedy tokens are
    the same after the edit — plain texts continued as completions, and the user turns of the
    neutral chats replied to in the model's chat format (where it has one: runtime.tokens.chat_template).
    chat_reply_kl: KL(before ‖ after) at the positions that predict the unedited model's own greedy
    reply to each neutral chat prompt (the text a chat user actually gets back).
    `limit`: at most that many prompts of each kind."""
    pad = pad_id(tokenizer)
    kinds = {"completion": encode(tokenizer, neutral_prompts()[:limit])}
    chats = neutral_chat_prompt_ids(tokenizer, before.model, limit)
    if chats:
        kinds["chat"] = chats
    agreement: dict[str, object] = {}
    base_replies: list[list[int]] = []
    for kind, prompts in kinds.items():
        runs = []
        for name, variant in (("before", before), ("after", after)):
            with variant.active() as model:
                runs.append(greedy_continuations(model, tokenizer, prompts, AGREEMENT_TOKENS, batch_size, pad,
                                                 desc=f"greedy {kind} ({name})"))
        same = sum(x == y for x, y in zip(*runs))
        agreement[kind] = {"share": same / len(prompts), "unchanged": same, "n_prompts": len(prompts)}
        if kind == "chat":
            base_replies = runs[0]
    result: dict[str, object] = {"greedy_tokens": AGREEMENT_TOKENS, "greedy_agreement": agreement, "chat_reply_kl": None}
    if base_replies:
        sequences = [p + r[:-1] for p, r in zip(kinds["chat"], base_replies) if r]
        counted = [len(r) for r in base_replies if r]
        per_position: list[torch.Tensor] = []
        total, count = kl_sum(before.forward, after.forward, tokenizer, None, batch_size, encoded=sequences,
                              per_position=per_position, last_positions=counted)
        result["chat_reply_kl"] = {**kl_summary(total, count, per_position), "n_replies": len(sequences)}
    return result
