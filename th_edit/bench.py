"""Benchmark engine: score task prompts, aggregate, compare two variants, measure side effects.

Scoring runs the model once per batch of prompts, keeping only the last position's logits
(`logits_to_keep=1`), so memory never scales with vocabulary × sequence × batch. Batches are
formed from prompts sorted by length and left-padded by hand, with an attention mask and
position ids counted from each prompt's first real token: a padded prompt then sees exactly the
positions it would see alone (this matters for learned absolute positions, e.g. GPT-2).

A "variant" is a model, optionally with some parameters temporarily replaced. That lets `apply`
score an edit before writing it: one model in memory, the edited tensors swapped in for the
"after" passes and swapped back out afterwards.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from th_edit import __version__, ui
from th_edit.errors import UserError
from th_edit.stats import mcnemar_exact, mean_interval, wilson_interval
from th_edit.tasks.ioi import NAMES, generate_ioi, usable_names
from th_edit.tasks.laundry import frames_left_out, generate_laundry, lexicon_survival
from th_edit.tasks.neutral import neutral_prompts
from th_edit.tasks.prompts import TaskPrompt, tasks_in

Batch = dict[str, torch.Tensor]
Forward = Callable[[Batch], torch.Tensor]  # batch -> logits [B, T, V]

# Upper bound on the elements of one batch's full-sequence logits in neutral_kl (float32: 128 MB).
# With a 262k vocabulary this caps a batch at 128 tokens; with 49k at about 680.
KL_MAX_BATCH_LOGITS = 2**25
# Elements per log-softmax chunk in neutral_kl (float64: 16 MB per temporary).
KL_CHUNK_LOGITS = 2**21


@dataclass(frozen=True)
class PromptScore:
    candidate_correct: bool  # the answer's first token beats every other candidate's first token
    top1_correct: bool  # the answer's first token is the argmax over the whole vocabulary
    logit_diff: float  # answer logit minus the best other candidate's logit


# ----------------------------------------------------------------------------------------------
# Variants: a model with some parameters temporarily replaced


@contextmanager
def swapped_parameters(model: torch.nn.Module, replacements: Mapping[str, torch.Tensor]) -> Iterator[None]:
    """Copy `replacements` (parameter name -> tensor) into the model, and restore the originals on exit."""
    saved: dict[str, torch.Tensor] = {}
    try:
        with torch.no_grad():
            for name, tensor in replacements.items():
                parameter = model.get_parameter(name)
                if parameter.shape != tensor.shape:
                    raise ValueError(f"{name}: replacement shape {tuple(tensor.shape)} != {tuple(parameter.shape)}")
                saved[name] = parameter.detach().clone()
                parameter.copy_(tensor)
        yield
    finally:
        with torch.no_grad():
            for name, original in saved.items():
                model.get_parameter(name).copy_(original)


@dataclass
class Variant:
    """A model as benchmarked: optionally with parameters swapped in only while it runs."""

    model: torch.nn.Module
    replacements: Mapping[str, torch.Tensor] = field(default_factory=dict)

    @contextmanager
    def active(self) -> Iterator[torch.nn.Module]:
        with swapped_parameters(self.model, self.replacements):
            yield self.model

    def forward(self, batch: Batch) -> torch.Tensor:
        """Full-sequence logits: the `Forward` that neutral_kl expects."""
        device = _device(self.model)
        with self.active():
            return self.model(**{k: v.to(device) for k, v in batch.items()}).logits


# ----------------------------------------------------------------------------------------------
# Tokens and batches


def _pad_id(tokenizer) -> int:
    for token_id in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return token_id
    return 0  # any id will do: padded positions are masked out


def _encode(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    # add_special_tokens: models trained with a BOS (Gemma) need it; others add nothing.
    return tokenizer(list(texts), add_special_tokens=True)["input_ids"]


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


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


# ----------------------------------------------------------------------------------------------
# Scoring


def _where(prompt: TaskPrompt, number: int, source: str | Path | None) -> str:
    """Where a prompt came from, for error messages: its file line if read from `source`."""
    if source is not None and prompt.line is not None:
        return f"{source} line {prompt.line}"
    return f"prompt {number}"


def candidate_token_ids(tokenizer, prompts: Sequence[TaskPrompt],
                        source: str | Path | None = None) -> list[tuple[list[int], int]]:
    """Per prompt: the first token id of each candidate, and the answer's index among them.

    Needs only the tokenizer, so a bad prompt file is refused before any model is loaded; errors
    name `source` and the prompt's file line when the prompts were read from a file.
    """
    first_token: dict[str, int] = {}
    multi_token = 0
    result = []
    for number, prompt in enumerate(prompts, start=1):
        for candidate in prompt.candidates:
            if candidate not in first_token:
                ids = tokenizer.encode(candidate, add_special_tokens=False)
                if not ids:
                    raise UserError(f"{_where(prompt, number, source)}: candidate {candidate!r} encodes to no tokens")
                multi_token += len(ids) > 1
                first_token[candidate] = ids[0]
        ids = [first_token[c] for c in prompt.candidates]
        if len(set(ids)) != len(ids):
            raise UserError(
                f"{_where(prompt, number, source)}: two candidates start with the same token, so they cannot be "
                f"told apart ({', '.join(repr(c) for c in prompt.candidates)})"
            )
        result.append((ids, prompt.candidates.index(prompt.answer)))
    if multi_token:
        ui.warn(f"{multi_token} candidate(s) are several tokens for this tokenizer: only their first token is scored")
    return result


def _score_row(logits: torch.Tensor, ids: list[int], answer: int) -> PromptScore:
    candidate_logits = logits[ids]
    answer_logit = candidate_logits[answer]
    others = torch.cat([candidate_logits[:answer], candidate_logits[answer + 1:]])
    best_other = others.max()
    return PromptScore(
        candidate_correct=bool(answer_logit > best_other),
        top1_correct=int(logits.argmax()) == ids[answer],
        logit_diff=float(answer_logit - best_other),
    )


@dataclass(frozen=True)
class Tokenized:
    """A prompt set tokenized once, reused for every model scored on it."""

    encoded: list[list[int]]
    targets: list[tuple[list[int], int]]  # per prompt: candidate first-token ids, answer index
    pad_id: int


def tokenize_prompts(tokenizer, prompts: Sequence[TaskPrompt], source: str | Path | None = None) -> Tokenized:
    """Tokenize and check `prompts` (see candidate_token_ids; `source` is the file they came from)."""
    return Tokenized(_encode(tokenizer, [p.prompt for p in prompts]), candidate_token_ids(tokenizer, prompts, source),
                     _pad_id(tokenizer))


def score_prompts(model: torch.nn.Module, tokenizer, prompts: Sequence[TaskPrompt], batch_size: int = 16,
                  tokenized: Tokenized | None = None) -> list[PromptScore]:
    """Score every prompt from the last position's logits; results are in the order of `prompts`."""
    if batch_size < 1:
        raise UserError(f"batch size must be at least 1, not {batch_size}")
    tokenized = tokenized or tokenize_prompts(tokenizer, prompts)
    if len(tokenized.encoded) != len(prompts):
        raise ValueError("`tokenized` must come from exactly `prompts`")
    device = _device(model)
    batches = length_batches([len(e) for e in tokenized.encoded], batch_size)
    scores: list[PromptScore | None] = [None] * len(prompts)
    with torch.inference_mode():
        for indices in ui.progress(batches, desc="scoring", unit="batch"):
            batch = left_padded([tokenized.encoded[i] for i in indices], tokenized.pad_id, device)
            last = model(**batch, logits_to_keep=1).logits[:, -1].float()
            for row, i in enumerate(indices):
                scores[i] = _score_row(last[row], *tokenized.targets[i])
    return scores  # type: ignore[return-value]  # every slot was filled


# ----------------------------------------------------------------------------------------------
# Side effects: KL on neutral text


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


def kl_sum(forward_base: Forward, forward_edited: Forward, tokenizer, texts: Sequence[str],
           batch_size: int = 16) -> tuple[float, int]:
    """(summed KL in nats, number of positions) — what neutral_kl averages."""
    encoded = [e for e in _encode(tokenizer, texts) if e]
    if not encoded:
        raise UserError("no neutral text to measure KL on")
    max_tokens = max(max(len(e) for e in encoded), KL_MAX_BATCH_LOGITS // max(len(tokenizer), 1))
    batches = length_batches([len(e) for e in encoded], batch_size, max_tokens)
    pad_id = _pad_id(tokenizer)
    total, count = 0.0, 0
    with torch.inference_mode():
        for indices in ui.progress(batches, desc="neutral KL", unit="batch"):
            batch = left_padded([encoded[i] for i in indices], pad_id)
            base = forward_base(batch)
            edited = forward_edited(batch)
            positions = batch["attention_mask"].reshape(-1).nonzero().squeeze(1).to(base.device)
            total += _chunked_kl(base.reshape(-1, base.shape[-1]), edited.reshape(-1, edited.shape[-1]), positions)
            count += len(positions)
    return total, count


def _chunked_kl(base: torch.Tensor, edited: torch.Tensor, positions: torch.Tensor) -> float:
    """Σ over `positions` (row indices) of KL(softmax(base) ‖ softmax(edited)), a few rows at a time.

    Rows are gathered chunk by chunk rather than all at once, so no full copy of either logits
    tensor is made; float64 keeps small KLs (near-identical rows) from drowning in rounding.
    """
    rows = max(1, KL_CHUNK_LOGITS // base.shape[-1])
    total = 0.0
    for start in range(0, len(positions), rows):
        chunk = positions[start:start + rows]
        log_p = torch.log_softmax(base[chunk].double(), dim=-1)
        log_q = torch.log_softmax(edited[chunk].double(), dim=-1)
        total += float((log_p.exp() * (log_p - log_q)).sum())
    return total


# ----------------------------------------------------------------------------------------------
# Prompt sets


def build_prompts(tokenizer, tasks: Sequence[str], n_items: Sequence[int], n_per_n: int, seed: int) -> list[TaskPrompt]:
    """Generated prompts: laundry for every distinct N in `n_items` (n_per_n each, a repeated N
    counts once), then n_per_n IOI prompts. Says how much of the vocabulary the tokenizer left."""
    if n_per_n < 1:
        raise UserError(f"the number of prompts must be at least 1, not {n_per_n}")
    prompts: list[TaskPrompt] = []
    if "laundry" in tasks:
        prompts += generate_laundry(tokenizer, n_items, n_per_n, seed)
        _report_lexicon(lexicon_survival(tokenizer), n_items)
    if "ioi" in tasks:
        prompts += generate_ioi(tokenizer, n_per_n, seed)
        ui.debug(f"ioi: {len(usable_names(tokenizer))} of {len(NAMES)} names are single tokens")
    return prompts


def lexicon_record(tokenizer) -> dict[str, dict[str, int]]:
    """Per laundry frame, how many lexicon items are single tokens for this tokenizer (for reports)."""
    return {frame: {"single_token_items": usable, "lexicon_items": total}
            for frame, (usable, total) in lexicon_survival(tokenizer).items()}


def _span(values: Sequence[int]) -> str:
    low, high = min(values), max(values)
    return str(low) if low == high else f"{low}-{high}"


def _report_lexicon(survival: Mapping[str, tuple[int, int]], n_items: Sequence[int]) -> None:
    """One status line on how many lexicon items are single tokens, and a warning per frame that
    is too small for some N (those lists silently rotate over fewer frames otherwise)."""
    usable = {name: counts[0] for name, counts in survival.items()}
    ui.info(f"laundry-list lexicon: {len(survival)} frames, {_span(list(usable.values()))} single-token items "
            f"each (of {_span([total for _, total in survival.values()])})")
    for name, (count, total) in survival.items():
        ui.debug(f"laundry frame '{name}': {count} of {total} items are single tokens")
    for name, ns in frames_left_out(usable, n_items).items():
        ui.warn(f"laundry frame '{name}' has only {usable[name]} single-token items, so it is not used for "
                f"N={', '.join(map(str, ns))}")


# ----------------------------------------------------------------------------------------------
# Aggregation


def _groups(prompts: Sequence[TaskPrompt], key: Callable[[TaskPrompt], object]) -> dict[object, list[int]]:
    groups: dict[object, list[int]] = {}
    for i, prompt in enumerate(prompts):
        groups.setdefault(key(prompt), []).append(i)
    return dict(sorted(groups.items(), key=lambda item: item[0]))  # type: ignore[arg-type, return-value]


def accuracy_row(scores: Sequence[PromptScore]) -> dict[str, object]:
    n = len(scores)
    right = sum(s.candidate_correct for s in scores)
    top1 = sum(s.top1_correct for s in scores)
    mean, low, high = mean_interval([s.logit_diff for s in scores])
    return {
        "n": n,
        "candidate_accuracy": right / n, "candidate_ci95": list(wilson_interval(right, n)),
        "top1_accuracy": top1 / n, "top1_ci95": list(wilson_interval(top1, n)),
        "mean_logit_diff": mean, "logit_diff_ci95": [low, high],
    }


def summarize(prompts: Sequence[TaskPrompt], scores: Sequence[PromptScore]) -> dict[str, dict]:
    """Per task: overall, per N, and per (N, answer position) accuracy rows."""
    summary = {}
    for task in tasks_in(prompts):
        mine = [i for i, p in enumerate(prompts) if p.task == task]
        task_prompts = [prompts[i] for i in mine]
        task_scores = [scores[i] for i in mine]
        pick = lambda idx: [task_scores[i] for i in idx]  # noqa: E731
        summary[task] = {
            "overall": accuracy_row(task_scores),
            "by_n": [{"n_items": n, **accuracy_row(pick(idx))}
                     for n, idx in _groups(task_prompts, lambda p: p.n_items).items()],
            "by_position": [{"n_items": n, "answer_position": pos, **accuracy_row(pick(idx))}
                            for (n, pos), idx in _groups(task_prompts, lambda p: (p.n_items, p.answer_position)).items()],
        }
    return summary


def paired_row(before: Sequence[PromptScore], after: Sequence[PromptScore]) -> dict[str, object]:
    n = len(before)
    right_before = sum(s.candidate_correct for s in before)
    right_after = sum(s.candidate_correct for s in after)
    b = sum(x.candidate_correct and not y.candidate_correct for x, y in zip(before, after))
    c = sum(y.candidate_correct and not x.candidate_correct for x, y in zip(before, after))
    change, low, high = mean_interval([y.logit_diff - x.logit_diff for x, y in zip(before, after)])
    return {
        "n": n,
        "before_accuracy": right_before / n, "before_ci95": list(wilson_interval(right_before, n)),
        "after_accuracy": right_after / n, "after_ci95": list(wilson_interval(right_after, n)),
        "accuracy_change": (right_after - right_before) / n,
        "b_right_to_wrong": b, "c_wrong_to_right": c, "mcnemar_p": mcnemar_exact(b, c),
        "mean_logit_diff_change": change, "logit_diff_change_ci95": [low, high],
    }


def compare(prompts: Sequence[TaskPrompt], before: Sequence[PromptScore], after: Sequence[PromptScore]) -> dict[str, dict]:
    """Per task: the paired before/after comparison, overall and per N."""
    if not len(prompts) == len(before) == len(after):
        raise ValueError("before and after must score the same prompts")
    comparison = {}
    for task in tasks_in(prompts):
        mine = [i for i, p in enumerate(prompts) if p.task == task]
        by_n = _groups([prompts[i] for i in mine], lambda p: p.n_items)
        pair = lambda idx: paired_row([before[mine[i]] for i in idx], [after[mine[i]] for i in idx])  # noqa: E731
        comparison[task] = {
            "overall": pair(range(len(mine))),
            "by_n": [{"n_items": n, **pair(idx)} for n, idx in by_n.items()],
        }
    return comparison


# ----------------------------------------------------------------------------------------------
# Reports (bench.json)


def _header(kind: str, prompts: Sequence[TaskPrompt], setup: Mapping[str, object]) -> dict[str, object]:
    counts = {task: sum(p.task == task for p in prompts) for task in tasks_in(prompts)}
    return {"th_edit_version": __version__, "kind": kind, "setup": dict(setup),
            "prompt_counts": {**counts, "total": len(prompts)}}


def run_single(model: torch.nn.Module | Variant, tokenizer, prompts: Sequence[TaskPrompt], *,
               model_info: Mapping[str, object], setup: Mapping[str, object], batch_size: int = 16,
               tokenized: Tokenized | None = None) -> dict:
    """Score one model (or variant) and return the report. `tokenized`: `prompts` already
    tokenized and checked by tokenize_prompts (before the model was loaded, say)."""
    variant = model if isinstance(model, Variant) else Variant(model)
    started = time.perf_counter()
    with variant.active():
        scores = score_prompts(variant.model, tokenizer, prompts, batch_size, tokenized)
    return {**_header("single", prompts, setup), "model": dict(model_info),
            "results": summarize(prompts, scores), "wall_seconds": time.perf_counter() - started}


def run_paired(before: Variant, after: Variant, tokenizer, prompts: Sequence[TaskPrompt], *,
               before_info: Mapping[str, object], after_info: Mapping[str, object], setup: Mapping[str, object],
               batch_size: int = 16, before_scores: Sequence[PromptScore] | None = None,
               neutral_texts: Sequence[str] | None = None, tokenized: Tokenized | None = None) -> dict:
    """Paired before/after report on identical prompts, with side effects.

    `before_scores` (from score_prompts on the same prompts) skips re-scoring "before", so a base
    model scored once can be compared with many edits. `neutral_texts` defaults to the shipped set.
    `tokenized`: `prompts` already tokenized and checked by tokenize_prompts.
    """
    started = time.perf_counter()
    tokenized = tokenized or tokenize_prompts(tokenizer, prompts)
    if before_scores is None:
        with before.active():
            before_scores = score_prompts(before.model, tokenizer, prompts, batch_size, tokenized)
    elif len(before_scores) != len(prompts):
        raise ValueError("before_scores must score exactly `prompts`")
    with after.active():
        after_scores = score_prompts(after.model, tokenizer, prompts, batch_size, tokenized)
    texts = list(neutral_texts) if neutral_texts is not None else neutral_prompts()
    kl_total, kl_count = kl_sum(before.forward, after.forward, tokenizer, texts, batch_size)
    paired = compare(prompts, before_scores, after_scores)
    ioi = paired.get("ioi", {}).get("overall")
    return {
        **_header("paired", prompts, setup),
        "before": {"model": dict(before_info), "results": summarize(prompts, before_scores)},
        "after": {"model": dict(after_info), "results": summarize(prompts, after_scores)},
        "paired": paired,
        "side_effects": {
            "neutral_kl": {"mean_nats_per_token": kl_total / kl_count, "n_texts": len(texts), "n_tokens": kl_count},
            "ioi_accuracy_change": ioi["accuracy_change"] if ioi else None,
        },
        "wall_seconds": time.perf_counter() - started,
    }


# ----------------------------------------------------------------------------------------------
# Terminal tables


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _ci(interval: Sequence[float], percent: bool = True) -> str:
    low, high = interval
    return f"[{100 * low:.1f}, {100 * high:.1f}]" if percent else f"[{low:+.2f}, {high:+.2f}]"


def _label(task: str, n_items: object) -> str:
    return "ioi" if task == "ioi" else f"N={n_items}"


def _position_name(task: str, position: int) -> str:
    # For IOI, the IO mentioned first is the ABBA order.
    return ("ABBA", "BABA")[position] if task == "ioi" else f"p{position}"


def _model_name(info: Mapping[str, object]) -> str:
    return str(info.get("reference", "model"))


def render_results(task: str, results: Mapping[str, object], title: str) -> list[str]:
    rows = []
    for row in [*results["by_n"], {"n_items": "all", **results["overall"]}]:
        label = "all" if row["n_items"] == "all" else _label(task, row["n_items"])
        if task == "ioi" and label == "all":
            continue  # IOI has a single N: "all" would repeat it
        rows.append([label, str(row["n"]), _pct(row["candidate_accuracy"]), _ci(row["candidate_ci95"]),
                     _pct(row["top1_accuracy"]), _ci(row["top1_ci95"]),
                     f"{row['mean_logit_diff']:+.2f}", _ci(row["logit_diff_ci95"], percent=False)])
    lines = [title]
    lines += ui.table(["", "n", "candidate", "95% CI", "top-1", "95% CI", "logit diff", "95% CI"], rows)
    lines += _position_lines(task, results["by_position"])
    return lines


def _position_lines(task: str, by_position: Sequence[Mapping[str, object]]) -> list[str]:
    """Candidate accuracy as a matrix: one row per N, one column per answer position."""
    width = max(row["n_items"] for row in by_position)
    cells: dict[object, list[str]] = {}
    for row in by_position:
        cells.setdefault(row["n_items"], [""] * width)[row["answer_position"]] = f"{100 * row['candidate_accuracy']:.0f}"
    headers = ["by answer position (%)", *(_position_name(task, p) for p in range(width))]
    return ui.table(headers, [[_label(task, n), *values] for n, values in cells.items()])


def render_single(report: Mapping[str, object]) -> str:
    lines: list[str] = []
    for task, results in report["results"].items():
        title = f"{task}: {_model_name(report['model'])}, {report['prompt_counts'][task]} prompts"
        lines += render_results(task, results, title) + [""]
    lines.append("candidate: the answer beats the other candidates; top-1: it is the argmax over the vocabulary; "
                 "logit diff: answer minus best other candidate. Intervals: Wilson 95% (accuracy), mean ± 1.96 SE.")
    return "\n".join(lines)


def render_paired(report: Mapping[str, object]) -> str:
    before, after = _model_name(report["before"]["model"]), _model_name(report["after"]["model"])
    lines: list[str] = []
    for task, comparison in report["paired"].items():
        lines.append(f"{task}: before = {before}, after = {after}, {report['prompt_counts'][task]} paired prompts")
        rows = []
        for row in [*comparison["by_n"], {"n_items": "all", **comparison["overall"]}]:
            if task == "ioi" and row["n_items"] == "all":
                continue
            rows.append(["all" if row["n_items"] == "all" else _label(task, row["n_items"]), str(row["n"]),
                         _pct(row["before_accuracy"]), _ci(row["before_ci95"]),
                         _pct(row["after_accuracy"]), _ci(row["after_ci95"]),
                         f"{100 * row['accuracy_change']:+.1f}", str(row["b_right_to_wrong"]),
                         str(row["c_wrong_to_right"]), f"{row['mcnemar_p']:.3g}",
                         f"{row['mean_logit_diff_change']:+.2f}"])
        lines += ui.table(["", "n", "before", "95% CI", "after", "95% CI", "Δ pts", "b", "c", "McNemar p",
                         "Δ logit diff"], rows)
        lines.append("")
    kl = report["side_effects"]["neutral_kl"]
    lines.append(f"neutral text: KL(before ‖ after) = {kl['mean_nats_per_token']:.4g} nats/token "
                 f"over {kl['n_tokens']} tokens ({kl['n_texts']} texts)")
    if report["side_effects"]["ioi_accuracy_change"] is not None:
        ioi = report["paired"]["ioi"]["overall"]
        lines.append(f"IOI candidate accuracy: {_pct(ioi['before_accuracy'])} -> {_pct(ioi['after_accuracy'])} "
                     f"(McNemar p = {ioi['mcnemar_p']:.3g})")
    lines.append("b: right before, wrong after; c: wrong before, right after; McNemar: exact two-sided test on b, c.")
    return "\n".join(lines)


def render_report(report: Mapping[str, object]) -> str:
    return render_paired(report) if report["kind"] == "paired" else render_single(report)
