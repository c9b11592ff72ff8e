"""Aggregate prompt scores: accuracy per task, per N and per answer position; paired before/after."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from th_edit.bench.scoring import PromptScore
from th_edit.stats import mcnemar_exact, mean_interval, wilson_interval
from th_edit.tasks.answers import NAMED_KINDS
from th_edit.tasks.prompts import TaskPrompt, tasks_in


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
        **_generation_rows(scores),
    }


# Free-generation metrics (bench.generation), present in a row only where they were measured.
GENERATION_METRICS = ("generation", "chat")


def _measured(scores: Sequence[PromptScore], metric: str) -> list[bool] | None:
    values = [getattr(s, f"{metric}_correct") for s in scores]
    return None if not values or any(v is None for v in values) else values


def named_counts(scores: Sequence[PromptScore], metric: str) -> dict[str, int]:
    """How many texts name first the answer, another list item, no list item (tasks.answers.NAMED_KINDS)."""
    kinds = [getattr(s, f"{metric}_named") for s in scores]
    return {kind: kinds.count(kind) for kind in NAMED_KINDS}


def _generation_rows(scores: Sequence[PromptScore]) -> dict[str, object]:
    row: dict[str, object] = {}
    for metric in GENERATION_METRICS:
        values = _measured(scores, metric)
        if values is not None:
            right = sum(values)
            row[f"{metric}_accuracy"] = right / len(values)
            row[f"{metric}_ci95"] = list(wilson_interval(right, len(values)))
            row[f"{metric}_named"] = named_counts(scores, metric)
    return row


def paired_metric(before: Sequence[bool], after: Sequence[bool]) -> dict[str, object]:
    """Before/after accuracy of one right/wrong metric on paired prompts, with the exact McNemar test."""
    n = len(before)
    right_before, right_after = sum(before), sum(after)
    b = sum(x and not y for x, y in zip(before, after))
    c = sum(y and not x for x, y in zip(before, after))
    return {"before_accuracy": right_before / n, "before_ci95": list(wilson_interval(right_before, n)),
            "after_accuracy": right_after / n, "after_ci95": list(wilson_interval(right_after, n)),
            "accuracy_change": (right_after - right_before) / n, "b_right_to_wrong": b, "c_wrong_to_right": c,
            "mcnemar_p": mcnemar_exact(b, c)}


def _paired_metrics(before: Sequence[PromptScore], after: Sequence[PromptScore]) -> dict[str, dict]:
    """top-1 (always) and the generation metrics measured on both sides, each as paired_metric."""
    metrics = {"top1": paired_metric([s.top1_correct for s in before], [s.top1_correct for s in after])}
    for metric in GENERATION_METRICS:
        values_before, values_after = _measured(before, metric), _measured(after, metric)
        if values_before is not None and values_after is not None:
            metrics[metric] = {**paired_metric(values_before, values_after),
                               "before_named": named_counts(before, metric), "after_named": named_counts(after, metric)}
    return metrics


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
        "metrics": _paired_metrics(before, after),
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
