"""Benchmark reports (what `bench.json` and provenance hold): one model, or a paired before/after."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import torch

from th_edit import __version__
from th_edit.bench.aggregate import compare, summarize
from th_edit.bench.render import render_report
from th_edit.bench.scoring import PromptScore, score_prompts
from th_edit.bench.generation import generation_examples, with_generation
from th_edit.bench.side_effects import kl_sum, kl_summary, user_visible
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
               tokenized: Tokenized | None = None, generation: bool = False) -> Report:
    """Score one model (or variant) and return the report. `tokenized`: `prompts` already
    tokenized and checked by tokenize_prompts (before the model was loaded, say). `generation`:
    also free generation, completion and chat (bench.generation)."""
    variant = model if isinstance(model, Variant) else Variant(model)
    started = time.perf_counter()
    with variant.active():
        scores = score_prompts(variant.model, tokenizer, prompts, batch_size, tokenized)
        if generation:
            scores = with_generation(variant.model, tokenizer, prompts, scores, batch_size, tokenized)
    return Report({**_header("single", prompts, setup), "model": dict(model_info),
                   "results": summarize(prompts, scores),
                   **({"examples": generation_examples(prompts, {"model": scores})} if generation else {}),
                   "wall_seconds": time.perf_counter() - started})


def run_paired(before: Variant, after: Variant, tokenizer, prompts: Sequence[TaskPrompt], *,
               before_info: Mapping[str, object], after_info: Mapping[str, object], setup: Mapping[str, object],
               batch_size: int = 16, before_scores: Sequence[PromptScore] | None = None,
               neutral_texts: Sequence[str] | NeutralSet | None = None, tokenized: Tokenized | None = None,
               measure_kl: bool = True, base_logits: list[torch.Tensor] | None = None,
               generation: bool = False) -> Report:
    """Paired before/after report on identical prompts, with side effects.

    `before_scores` (from score_prompts on the same prompts) skips re-scoring "before", so a base
    model scored once can be compared with many edits. `neutral_texts`: plain strings, or a
    `NeutralSet` (default: the shipped set, chat-formatted part included). `tokenized`: `prompts`
    already tokenized and checked by tokenize_prompts. `measure_kl=False` skips the KL pass.
    `base_logits`: kl_sum's `base_cache` for "before" on these neutral texts and this batch size.
    `generation`: also free generation (completion and chat) on the prompts, and the user-visible
    side effects on neutral prompts (greedy agreement, KL on the model's own chat replies);
    `before_scores` must then carry the generation fields.
    """
    started = time.perf_counter()
    tokenized = tokenized or tokenize_prompts(tokenizer, prompts)
    if before_scores is None:
        with before.active():
            before_scores = score_prompts(before.model, tokenizer, prompts, batch_size, tokenized, desc="scoring before")
            if generation:
                before_scores = with_generation(before.model, tokenizer, prompts, before_scores, batch_size, tokenized,
                                                label=" (before)")
    elif len(before_scores) != len(prompts):
        raise ValueError("before_scores must score exactly `prompts`")
    with after.active():
        after_scores = score_prompts(after.model, tokenizer, prompts, batch_size, tokenized, desc="scoring after")
        if generation:
            after_scores = with_generation(after.model, tokenizer, prompts, after_scores, batch_size, tokenized,
                                           label=" (after)")
    paired = compare(prompts, before_scores, after_scores)
    # The guard task's change (IOI): the side effect an edit for recall must keep small.
    ioi = next((paired[t.name]["overall"] for t in registry.guards() if t.name in paired), None)
    kl = _neutral_kl(before, after, tokenizer, neutral_texts, batch_size, base_logits) if measure_kl else None
    visible = user_visible(before, after, tokenizer, batch_size) if generation else None
    return Report({
        **_header("paired", prompts, setup),
        "before": {"model": dict(before_info), "results": summarize(prompts, before_scores)},
        "after": {"model": dict(after_info), "results": summarize(prompts, after_scores)},
        "paired": paired,
        "side_effects": {"neutral_kl": kl, "ioi_accuracy_change": ioi["accuracy_change"] if ioi else None,
                         "user_visible": visible},
        **({"examples": generation_examples(prompts, {"before": before_scores, "after": after_scores})} if generation else {}),
        "wall_seconds": time.perf_counter() - started,
    })


def _neutral_kl(before: Variant, after: Variant, tokenizer, texts: Sequence[str] | NeutralSet | None,
                batch_size: int, base_logits: list[torch.Tensor] | None) -> dict[str, object]:
    if texts is None or isinstance(texts, NeutralSet):
        neutral = texts or neutral_set(tokenizer)
        per_position: list[torch.Tensor] = []
        total, count = kl_sum(before.forward, after.forward, tokenizer, None, batch_size, encoded=neutral.encoded,
                              base_cache=base_logits, per_position=per_position)
        return {**kl_summary(total, count, per_position), "n_texts": len(neutral.encoded), "n_chat_texts": neutral.n_chat}
    per_position = []
    total, count = kl_sum(before.forward, after.forward, tokenizer, list(texts), batch_size, base_cache=base_logits,
                          per_position=per_position)
    return {**kl_summary(total, count, per_position), "n_texts": len(texts)}
