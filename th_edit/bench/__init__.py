"""Benchmarks: laundry-list recall and IOI accuracy of one model, or of a model before and after an edit.

    m = th_edit.load("smollm2-135m")
    report = th_edit.bench.laundry(m, n_items=[4, 5, 6], n_prompts=200)   # print(report) for tables
    with m.edited(recipe):
        after = th_edit.bench.laundry(m, n_items=[4, 5, 6], n_prompts=200)
    paired = th_edit.bench.paired(m, recipe, n_items=[4, 5, 6])           # McNemar and neutral-text KL
    paired = th_edit.bench.paired(m, recipe, generation=True)             # + free generation, chat, greedy agreement

Modules: scoring, generation (free generation, completion and chat), side_effects (KL, greedy
agreement), aggregate (accuracy rows, paired rows), reports (report
dicts), render (terminal tables); tokenizing and batching are th_edit.runtime's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import nullcontext

from th_edit import ui
from th_edit.bench.aggregate import accuracy_row, compare, paired_row, summarize
from th_edit.bench.generation import with_generation
from th_edit.bench.render import render_report
from th_edit.bench.reports import Report, run_paired, run_single
from th_edit.bench.scoring import PromptScore, score_prompts
from th_edit.bench.side_effects import kl_sum, neutral_kl, user_visible
from th_edit.errors import UserError
from th_edit.recipe import Edit, Recipe
from th_edit.runtime.batching import Batch, input_device, left_padded, length_batches
from th_edit.runtime.tokens import Tokenized, candidate_token_ids, tokenize_prompts
from th_edit.session import ComputedEdit, Session, Variant, swapped_parameters
from th_edit.tasks import TASKS, TaskPrompt, registry
from th_edit.tasks.ioi import IOI
from th_edit.tasks.laundry import LAUNDRY
from th_edit.tasks.neutral import NeutralSet, neutral_set
from th_edit.tasks.sets import build_prompts, lexicon_record, setup_record

DEFAULT_N_ITEMS = (2, 3, 4, 5, 6, 7, 8)
# `paired` keeps the unedited model's logits on the neutral texts in its session up to this size
# (float32; SmolLM2-135M's 146 texts: 0.66 GB), so later paired runs skip half the KL pass.
# Raise it to cache larger vocabularies (Gemma 3: 1.75 GB), or set 0 to never keep them.
UNEDITED_LOGITS_LIMIT_BYTES = 2**30


def prompt_set(session: Session, tasks: Sequence[str] = TASKS, n_items: Sequence[int] = DEFAULT_N_ITEMS,
               n_prompts: int = 200, seed: int = 0) -> tuple[list[TaskPrompt], dict[str, object]]:
    """Generated prompts for `session`'s tokenizer and the setup record that describes them."""
    prompts = build_prompts(_tokenizer(session), tasks, n_items, n_prompts, seed)
    setup: dict[str, object] = {"tasks": list(tasks), "prompts": "generated", "seed": seed, "n_prompts_per_n": n_prompts}
    setup.update(setup_record(_tokenizer(session), tasks, n_items))
    return prompts, setup


def run(session: Session, tasks: Sequence[str] = TASKS, n_items: Sequence[int] = DEFAULT_N_ITEMS, n_prompts: int = 200,
        seed: int = 0, batch_size: int = 16, prompts: Sequence[TaskPrompt] | None = None,
        generation: bool = False) -> Report:
    """Score `session`'s model as it is now (inside an `edited` block: the edited model)."""
    prompts, setup = _prompts(session, tasks, n_items, n_prompts, seed, prompts)
    tokenized = tokenize_prompts(_tokenizer(session), prompts, max_length=session.max_length)
    return run_single(session.model, _tokenizer(session), prompts, model_info={"reference": session.label},
                      setup={**setup, "batch_size": batch_size}, batch_size=batch_size, tokenized=tokenized,
                      generation=generation)


def laundry(session: Session, n_items: Sequence[int] = DEFAULT_N_ITEMS, n_prompts: int = 200, seed: int = 0,
            batch_size: int = 16) -> Report:
    """Laundry-list candidate/top-1 accuracy and logit difference per N and per answer position."""
    return run(session, (LAUNDRY.name,), n_items, n_prompts, seed, batch_size)


def ioi(session: Session, n_prompts: int = 200, seed: int = 0, batch_size: int = 16) -> Report:
    """IOI accuracy (ABBA and BABA balanced)."""
    return run(session, (IOI.name,), (), n_prompts, seed, batch_size)


def paired(session: Session, after: Recipe | Sequence[Edit] | ComputedEdit | Session, tasks: Sequence[str] = TASKS,
           n_items: Sequence[int] = DEFAULT_N_ITEMS, n_prompts: int = 200, seed: int = 0, batch_size: int = 16,
           prompts: Sequence[TaskPrompt] | None = None, kl: bool = True, kl_texts: int | None = None,
           extra_setup: Mapping[str, object] | None = None, keep_base_logits: bool = True,
           progress: bool = True, generation: bool = False) -> Report:
    """Paired before/after on identical prompts: `session` as it is vs. `after` — an edit of it
    (swapped in only while "after" runs) or another loaded model with the same tokenizer. Exact
    McNemar tests per N, and the KL on neutral text (`kl_texts` of them; `kl=False` skips it).
    `extra_setup` is recorded with the prompt-set description in the report's `setup`.
    `generation`: also free-generation accuracy (completion and chat, bench.generation) and the
    side effects a user reads (greedy agreement on neutral prompts, KL on the model's own chat replies).

    Run outside an `edited` block, the unedited model's scores and neutral-text logits are kept
    in `session` (Session.unedited), so comparing many edits on one session scores "before" once
    (the logits up to UNEDITED_LOGITS_LIMIT_BYTES; `keep_base_logits=False` for a one-off run).

    Progress bars (scoring before, scoring after, the KL pass; each with its ETA) go to stderr
    unless `progress=False` (or inside `th_edit.ui.silenced()`)."""
    with nullcontext() if progress else ui.silenced():
        return _paired(session, after, tasks, n_items, n_prompts, seed, batch_size, prompts, kl, kl_texts, extra_setup,
                       keep_base_logits, generation)


def _paired(session: Session, after: Recipe | Sequence[Edit] | ComputedEdit | Session, tasks: Sequence[str],
            n_items: Sequence[int], n_prompts: int, seed: int, batch_size: int, prompts: Sequence[TaskPrompt] | None,
            kl: bool, kl_texts: int | None, extra_setup: Mapping[str, object] | None, keep_base_logits: bool,
            generation: bool) -> Report:
    tokenizer = _tokenizer(session)
    prompts, setup = _prompts(session, tasks, n_items, n_prompts, seed, prompts)
    tokenized = tokenize_prompts(tokenizer, prompts, max_length=session.max_length)
    if isinstance(after, Session):
        if _tokenizer(after).get_vocab() != tokenizer.get_vocab():
            raise UserError(f"{session.reference} and {after.reference} have different tokenizers, so their prompts "
                            "cannot be paired")
        after_variant, after_name = Variant(after.model), after.reference
    else:
        after_variant, after_name = session.variant(after), f"{session.reference} + recipe edits"
    neutral = neutral_set(tokenizer, kl_texts) if kl else None
    # What depends only on the unedited model is computed once per session (see Session.unedited).
    before_scores = session.unedited(("before-scores", tuple(prompts), batch_size, generation),
                                     lambda: _before_scores(session, prompts, batch_size, tokenized, generation))
    base_logits = _cached_base_logits(session, neutral, batch_size) if neutral is not None and keep_base_logits else None
    return run_paired(Variant(session.model), after_variant, tokenizer, prompts,
                      before_info={"reference": session.reference}, after_info={"reference": after_name},
                      setup={**setup, "batch_size": batch_size, **(extra_setup or {})}, batch_size=batch_size,
                      tokenized=tokenized, neutral_texts=neutral, measure_kl=kl, before_scores=before_scores,
                      base_logits=base_logits, generation=generation)


def _before_scores(session: Session, prompts: list[TaskPrompt], batch_size: int, tokenized: Tokenized,
                   generation: bool) -> list[PromptScore]:
    scores = score_prompts(session.model, _tokenizer(session), prompts, batch_size, tokenized, desc="scoring before")
    if generation:
        scores = with_generation(session.model, _tokenizer(session), prompts, scores, batch_size, tokenized,
                                 label=" (before)")
    return scores


def _cached_base_logits(session: Session, neutral: NeutralSet, batch_size: int) -> list | None:
    """The session's store for the unedited model's neutral-text logits (filled by the first KL
    pass), or None when they would take more than UNEDITED_LOGITS_LIMIT_BYTES (then every paired
    run computes them again)."""
    vocabulary = session.model.get_output_embeddings().weight.shape[0]
    if sum(map(len, neutral.encoded)) * vocabulary * 4 > UNEDITED_LOGITS_LIMIT_BYTES:
        return None
    return session.unedited(("neutral-logits", tuple(map(tuple, neutral.encoded)), batch_size), list)


def _prompts(session: Session, tasks: Sequence[str], n_items: Sequence[int], n_prompts: int, seed: int,
             prompts: Sequence[TaskPrompt] | None) -> tuple[list[TaskPrompt], dict[str, object]]:
    if prompts is not None:
        return list(prompts), {"tasks": registry.in_order({p.task for p in prompts}), "prompts": "given"}
    return prompt_set(session, tasks, n_items, n_prompts, seed)


def _tokenizer(session: Session):
    if session.tokenizer is None:
        raise UserError(f"{session.reference} has no tokenizer: load it with th_edit.load(...) or pass one to Session")
    return session.tokenizer


__all__ = [
    "DEFAULT_N_ITEMS", "Batch", "PromptScore", "Report", "Tokenized", "Variant", "accuracy_row", "build_prompts",
    "candidate_token_ids", "compare", "input_device", "ioi", "kl_sum", "laundry", "left_padded", "length_batches",
    "lexicon_record", "neutral_kl", "paired", "paired_row", "prompt_set", "render_report", "run", "run_paired",
    "run_single", "score_prompts", "summarize", "swapped_parameters", "tokenize_prompts", "user_visible", "with_generation",
]
