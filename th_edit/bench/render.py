"""Terminal tables of benchmark reports (also embedded in model cards)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from th_edit import ui
from th_edit.tasks import registry
from th_edit.tasks.answers import NAMED_KINDS


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _ci(interval: Sequence[float], percent: bool = True) -> str:
    low, high = interval
    return f"[{100 * low:.1f}, {100 * high:.1f}]" if percent else f"[{low:+.2f}, {high:+.2f}]"


def _label(task: str, n_items: object) -> str:
    return registry.get(task).label(n_items)


def _position_name(task: str, position: int) -> str:
    return registry.get(task).position_name(position)


def _one_row(task: str) -> bool:
    """A fixed-N task (IOI) has a single N: an "all" row would repeat it."""
    return not registry.get(task).list_recall


def _model_name(info: Mapping[str, object]) -> str:
    return str(info.get("reference", "model"))


def _labelled_rows(task: str, table: Mapping[str, object]) -> list[tuple[str, Mapping[str, object]]]:
    """(label, row) per N, then the overall row as "all" (left out for a task reported in one row)."""
    rows = [(_label(task, row["n_items"]), row) for row in table["by_n"]]
    return rows if _one_row(task) else [*rows, ("all", table["overall"])]


def render_results(task: str, results: Mapping[str, object], title: str) -> list[str]:
    rows = []
    for label, row in _labelled_rows(task, results):
        rows.append([label, str(row["n"]), _pct(row["candidate_accuracy"]), _ci(row["candidate_ci95"]),
                     _pct(row["top1_accuracy"]), _ci(row["top1_ci95"]),
                     f"{row['mean_logit_diff']:+.2f}", _ci(row["logit_diff_ci95"], percent=False)])
    lines = [title]
    lines += ui.table(["", "n", "candidate", "95% CI", "top-1", "95% CI", "logit diff", "95% CI"], rows)
    lines += _generation_lines(task, results)
    lines += _position_lines(task, results["by_position"])
    return lines


GENERATION_NAMES = {"generation": "generation", "chat": "chat"}


def _generation_lines(task: str, results: Mapping[str, object]) -> list[str]:
    """Free-generation accuracy (completion, chat) per N, where it was measured."""
    measured = [m for m in GENERATION_NAMES if f"{m}_accuracy" in results["overall"]]
    if not measured:
        return []
    rows = []
    for label, row in _labelled_rows(task, results):
        rows.append([label, *(cell for m in measured for cell in (_pct(row[f"{m}_accuracy"]), _ci(row[f"{m}_ci95"]))),
                     *(_named(row.get(f"{m}_named"), row["n"]) for m in measured)])
    return ui.table(["free generation", *(h for m in measured for h in (GENERATION_NAMES[m], "95% CI")),
                     *(f"{GENERATION_NAMES[m]} names" for m in measured)], rows)


def _named(counts: Mapping[str, int] | None, n: int) -> str:
    """What the texts name first, as answer / another list item / no list item, % (tasks.answers.named_kind)."""
    return "-" if counts is None else "/".join(f"{100 * counts[kind] / n:.0f}" for kind in NAMED_KINDS)


def _metric_lines(task: str, comparison: Mapping[str, object]) -> list[str]:
    """Before/after of top-1 and the free-generation metrics per N (paired reports)."""
    metrics = list(comparison["overall"].get("metrics", {}))
    if not metrics:
        return []
    rows = []
    for label, row in _labelled_rows(task, comparison):
        cells = [label]
        for metric in metrics:
            m = row["metrics"][metric]
            cells += [f"{_pct(m['before_accuracy'])} → {_pct(m['after_accuracy'])}", f"{100 * m['accuracy_change']:+.1f}",
                      _ci(_change_interval(m, row["n"])), f"{m['mcnemar_p']:.2g}"]
        rows.append(cells)
    names = {"top1": "top-1", **GENERATION_NAMES}
    headers = [""] + [h for m in metrics for h in (names[m], "Δ pts", "Δ 95% CI", "p")]
    return ui.table(headers, rows) + _named_change_lines(task, comparison)


def _named_change_lines(task: str, comparison: Mapping[str, object]) -> list[str]:
    """What the generated texts name first, before → after, per N (paired reports with --generation)."""
    measured = [m for m in GENERATION_NAMES if "before_named" in comparison["overall"]["metrics"].get(m, {})]
    if not measured:
        return []
    rows = []
    for label, row in _labelled_rows(task, comparison):
        metrics = row["metrics"]
        rows.append([label, *(f"{_named(metrics[m]['before_named'], row['n'])} → {_named(metrics[m]['after_named'], row['n'])}"
                       for m in measured)])
    return ui.table(["names first (%: answer/other item/no item)", *(GENERATION_NAMES[m] for m in measured)], rows)


def _change_interval(metric: Mapping[str, object], n: int) -> list[float]:
    """An approximate 95% interval of a paired accuracy change: (c - b)/n ± 1.96·sqrt(b + c - (c - b)²/n)/n."""
    b, c = metric["b_right_to_wrong"], metric["c_wrong_to_right"]
    half = 1.96 * max(b + c - (c - b) ** 2 / n, 0.0) ** 0.5 / n
    return [metric["accuracy_change"] - half, metric["accuracy_change"] + half]


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
    lines += _generation_note(report["results"])
    return "\n".join(lines)


def render_paired(report: Mapping[str, object]) -> str:
    before, after = _model_name(report["before"]["model"]), _model_name(report["after"]["model"])
    lines: list[str] = []
    for task, comparison in report["paired"].items():
        lines.append(f"{task}: before = {before}, after = {after}, {report['prompt_counts'][task]} paired prompts")
        rows = []
        for label, row in _labelled_rows(task, comparison):
            rows.append([label, str(row["n"]),
                         _pct(row["before_accuracy"]), _ci(row["before_ci95"]),
                         _pct(row["after_accuracy"]), _ci(row["after_ci95"]),
                         f"{100 * row['accuracy_change']:+.1f}", str(row["b_right_to_wrong"]),
                         str(row["c_wrong_to_right"]), f"{row['mcnemar_p']:.3g}",
                         f"{row['mean_logit_diff_change']:+.2f}"])
        lines += ui.table(["", "n", "before", "95% CI", "after", "95% CI", "Δ pts", "b", "c", "McNemar p",
                         "Δ logit diff"], rows)
        lines += _metric_lines(task, comparison)
        lines.append("")
    kl = report["side_effects"]["neutral_kl"]
    if kl is None:
        lines.append("neutral text: KL not measured")
    else:
        lines.append(f"neutral text: KL(before ‖ after) = {kl['mean_nats_per_token']:.4g} nats/token "
                     f"over {kl['n_tokens']} tokens ({kl['n_texts']} texts{_chat_note(kl)}){_spread(kl)}")
    lines += _visible_lines(report["side_effects"].get("user_visible"))
    lines.append("b: right before, wrong after; c: wrong before, right after; McNemar: exact two-sided test on b, c.")
    # A report written before generation metrics existed (an older provenance.json) has no per-task results.
    lines += _generation_note(report["after"].get("results", {}))
    return "\n".join(lines)


def _spread(kl: Mapping[str, object]) -> str:
    return f"; 95th percentile {kl['p95_nats']:.4g}, max {kl['max_nats']:.4g}" if "p95_nats" in kl else ""


def _visible_lines(visible: Mapping[str, object] | None) -> list[str]:
    if not visible:
        return []
    agreement = visible["greedy_agreement"]
    shares = ", ".join(f"{kind} {_pct(a['share'])} ({a['unchanged']}/{a['n_prompts']})" for kind, a in agreement.items())
    lines = [f"neutral prompts: first {visible['greedy_tokens']} greedy tokens unchanged: {shares}"]
    reply = visible.get("chat_reply_kl")
    if reply:
        lines.append(f"own chat replies: KL = {reply['mean_nats_per_token']:.4g} nats/token over {reply['n_tokens']} tokens "
                     f"of {reply['n_replies']} replies{_spread(reply)}")
    elif "chat" not in agreement:
        lines.append("own chat replies: not measured (no chat template for this model)")
    return lines


def _chat_note(kl: Mapping[str, object]) -> str:
    chat = kl.get("n_chat_texts")
    return f", {chat} of them chat-formatted" if chat else ""


def _generation_note(results: Mapping[str, object]) -> list[str]:
    if not any("generation_accuracy" in r["overall"] for r in results.values()):
        return []
    return ["generation: greedy continuation of the prompt; chat: greedy reply to it asked in the model's chat template; "
            "right when the first list item named is the answer (any case, plural counts); names: the share of texts whose "
            "first list item named is the answer / another list item, and that name no list item."]


def render_report(report: Mapping[str, object]) -> str:
    return render_paired(report) if report["kind"] == "paired" else render_single(report)
