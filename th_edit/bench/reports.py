"""Benchmark reports (what `bench.json` and provenance hold): one model, or a paired before/after."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import torch

from th_edit import __version__
from th_edit.bench.aggregate import compare, summarize
from th_edit.bench.render import render_report
from th_edit.bench.scoring import PromptScore, score_prompts
from th_edit.bench.side_effects import kl_sum
from th_edit.runtime.tokens import Tokenized, tokenize_prompts
from th_edit.session import Variant
from th_edit.tasks import registry
from th_edit.tasks.neutral import NeutralSet, neutral_set
from th_edit.tasks.prompts import TaskPrompt, tasks_in


class Report(dict):
    """A JSON-able report (a plain dict) that prints as the terminal tables."""

    def __str__(self) -> str:
        return render_report(self)

    @property
    def text(self) -> str:
        return render_report(self)


def _header(kind: str, prompts: Sequence[TaskPrompt], setup: Mapping[str, object]) -> dict[str, object]:
    counts = {task: sum(p.task == task for p in prompts) for task in tasks_in(prompts)}
    return {"th_edit_version": __version__, "kind": kind, "setup": dict(setup),
            "prompt_counts": {**counts, "total": len(prompts)}}


def run_single(model: torch.nn.Module | Variant, tokenizer, prompts: Sequence[TaskPrompt], *,
               model_info: Mapping[str, object], setup: Mapping[str, object], batch_size: int = 16,
               tokenized: Tokenized | None = None) -> Report:
    """Score one model (or variant) and return the report. `tokenized`: `prompts` already
    tokenized and checked by tokenize_prompts (before the model was loaded, say)."""
    variant = model if isinstance(model, Variant) else Variant(model)
    started = time.perf_counter()
    with variant.active():
        scores = score_prompts(variant.model, tokenizer, prompts, batch_size, tokenized)
    return Report({**_header("single", prompts, setup), "model": dict(model_info),
                   "results": summarize(prompts, scores), "wall_seconds": time.perf_counter() - started})


def run_paired(before: Variant, after: Variant, tokenizer, prompts: Sequence[TaskPrompt], *,
               before_info: Mapping[str, object], after_info: Mapping[str, object], setup: Mapping[str, object],
               batch_size: int = 16, before_scores: Sequence[PromptScore] | None = None,
               neutral_texts: Sequence[str] | NeutralSet | None = None, tokenized: Tokenized | None = None,
               measure_kl: bool = True, base_logits: list[torch.Tensor] | None = None) -> Report:
    """Paired before/after report on identical prompts, with side effects.

    `before_scores` (from score_prompts on the same prompts) skips re-scoring "before", so a base
    model scored once can be compared with many edits. `neutral_texts`: plain strings, or a
    `NeutralSet` (default: the shipped set, chat-formatted part included). `tokenized`: `prompts`
    already tokenized and checked by tokenize_prompts. `measure_kl=False` skips the KL pass.
    `base_logits`: kl_sum's `base_cache` for "before" on these neutral texts and this batch size.
    """
    started = time.perf_counter()
    tokenized = tokenized or tokenize_prompts(tokenizer, prompts)
    if before_scores is None:
        with before.active():
            before_scores = score_prompts(before.model, tokenizer, prompts, batch_size, tokenized, desc="scoring before")
    elif len(before_scores) != len(prompts):
        raise ValueError("before_scores must score exactly `prompts`")
    with after.active():
        after_scores = score_prompts(after.model, tokenizer, prompts, batch_size, tokenized, desc="scoring after")
    paired = compare(prompts, before_scores, after_scores)
    # The guard task's change (IOI): the side effect an edit for recall must keep small.
    ioi = next((paired[t.name]["overall"] for t in registry.guards() if t.name in paired), None)
    kl = _neutral_kl(before, after, tokenizer, neutral_texts, batch_size, base_logits) if measure_kl else None
    return Report({
        **_header("paired", prompts, setup),
        "before": {"model": dict(before_info), "results": summarize(prompts, before_scores)},
        "after": {"model": dict(after_info), "results": summarize(prompts, after_scores)},
        "paired": paired,
        "side_effects": {"neutral_kl": kl, "ioi_accuracy_change": ioi["accuracy_change"] if ioi else None},
        "wall_seconds": time.perf_counter() - started,
    })


def _neutral_kl(before: Variant, after: Variant, tokenizer, texts: Sequence[str] | NeutralSet | None,
                batch_size: int, base_logits: list[torch.Tensor] | None) -> dict[str, object]:
    if texts is None or isinstance(texts, NeutralSet):
        neutral = texts or neutral_set(tokenizer)
        total, count = kl_sum(before.forward, after.forward, tokenizer, None, batch_size, encoded=neutral.encoded,
                              base_cache=base_logits)
        return {"mean_nats_per_token": total / count, "n_texts": len(neutral.encoded), "n_chat_texts": neutral.n_chat,
                "n_tokens": count}
    total, count = kl_sum(before.forward, after.forward, tokenizer, list(texts), batch_size, base_cache=base_logits)
    return {"mean_nats_per_token": total / count, "n_texts": len(texts), "n_tokens": count}
