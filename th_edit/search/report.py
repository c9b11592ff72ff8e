"""Terminal table and the accuracy–KL frontier plot of a search's held-out results."""

from __future__ import annotations

from pathlib import Path

from th_edit import ui
from th_edit.search.pipeline import SearchReport
from th_edit.tasks import registry


def held_out_table(report: SearchReport) -> str:
    if not report.held_out:
        return "no recipe was chosen (no fully scored trial met the limits): nothing to evaluate on held-out prompts"
    objective = registry.objective()
    first = report.held_out[0].paired[objective.name]["by_n"]
    ns = [row["n_items"] for row in first]
    settings = report.settings
    lines = [f"held-out prompts (seed {settings.held_out_seed}, frames {', '.join(map(str, objective.splits['held_out']))}, "
             f"{first[0]['n']} per N): change in candidate accuracy, points"]
    chat = any(h.chat_agreement is not None for h in report.held_out)
    headers = ["recipe", *(f"N={n}" for n in ns), "mean", "KL", "IOI Δ", *(["chat same"] if chat else [])]
    rows = [["unedited (accuracy)", *(f"{100 * row['before_accuracy']:.1f}%" for row in first), "", "0", "",
             *(["100%"] if chat else [])]]
    for held in report.held_out:
        by_n = {row["n_items"]: row for row in held.paired[objective.name]["by_n"]}
        rows.append([held.label, *(_change(by_n[n]) for n in ns), f"{100 * held.mean_gain():+.1f}",
                     "-" if held.kl is None else f"{held.kl:.4f}",
                     "-" if held.ioi_change is None else f"{100 * held.ioi_change:+.1f}",
                     *([("-" if held.chat_agreement is None else f"{100 * held.chat_agreement:.0f}%")] if chat else [])])
    lines += ui.table(headers, rows)
    lines += _top1_lines(report, objective.name, ns)
    lines += _transfer_lines(report)
    lines.append("* McNemar p < 0.01 (exact, paired on identical prompts); KL in nats/token on held-out neutral texts"
                 + ("; chat same: held-out neutral chat prompts whose first 16 greedy reply tokens are unchanged"
                    if chat else ""))
    return "\n".join(lines)


def _top1_lines(report: SearchReport, task: str, ns: list[int]) -> list[str]:
    """The same recipes by top-1 accuracy over the vocabulary (what greedy generation emits)."""
    first = {row["n_items"]: row for row in report.held_out[0].paired[task]["by_n"]}
    if not all("metrics" in row for row in first.values()):
        return []
    ioi = any(h.ioi_top1_change is not None for h in report.held_out)
    rows = [["unedited (top-1)", *(f"{100 * first[n]['metrics']['top1']['before_accuracy']:.1f}%" for n in ns), "",
             *([""] if ioi else [])]]
    for held in report.held_out:
        by_n = {row["n_items"]: row["metrics"]["top1"] for row in held.paired[task]["by_n"]}
        gains = [by_n[n]["accuracy_change"] for n in ns]
        rows.append([held.label, *(_change(by_n[n]) for n in ns), f"{100 * sum(gains) / len(gains):+.1f}",
                     *([("-" if held.ioi_top1_change is None else f"{100 * held.ioi_top1_change:+.1f}")] if ioi else [])])
    return [f"change in top-1 accuracy (over the whole vocabulary), points (search objective: {report.settings.objective})",
            *ui.table(["recipe", *(f"N={n}" for n in ns), "mean", *(["IOI top-1 Δ"] if ioi else [])], rows)]


def _transfer_lines(report: SearchReport) -> list[str]:
    """The chosen recipe on forms the search never saw: per form, candidate and top-1 accuracy per N."""
    if not report.transfer:
        return []
    ns = [row["n_items"] for row in next(iter(report.transfer.values()))["by_n"]]
    rows = []
    for task, paired in report.transfer.items():
        by_n = {row["n_items"]: row for row in paired["by_n"]}
        for metric, pick in (("candidate", lambda row: row), ("top-1", lambda row: row["metrics"]["top1"])):
            cells = [f"{100 * pick(by_n[n])['before_accuracy']:.0f}% {_change(pick(by_n[n]))}" for n in ns]
            mean = sum(pick(by_n[n])["accuracy_change"] for n in ns) / len(ns)
            rows.append([f"{task} ({metric})", *cells, f"{100 * mean:+.1f}"])
    per_n = next(iter(report.transfer.values()))["by_n"][0]["n"]
    return [f"the chosen recipe on forms the search never saw ({per_n} prompts per N, every frame): unedited accuracy and "
            "change, points", *ui.table(["form (metric)", *(f"N={n}" for n in ns), "mean"], rows)]


def _change(row: dict) -> str:
    return f"{100 * row['accuracy_change']:+.1f}{'*' if row['mcnemar_p'] < 0.01 else ''}"


def plot_frontier(report: SearchReport, path: Path) -> None:
    """Held-out mean accuracy gain against KL for the search result and the baselines."""
    from th_edit.plots import plt

    figure, axes = plt.subplots(figsize=(6.4, 4.4))
    whole = [h for h in report.held_out if h.kind == "whole-head"]
    if whole:
        axes.plot([h.kl for h in whole], [100 * h.mean_gain() for h in whole], "o-", color="C0",
                  label="whole-head OV scaling (same heads)")
        for h in whole:
            axes.annotate(h.label.rsplit(" ", 1)[-1], (h.kl, 100 * h.mean_gain()), fontsize=7,
                          textcoords="offset points", xytext=(4, -8))
    for h in report.held_out:
        if h.kind == "search":
            axes.plot([h.kl], [100 * h.mean_gain()], "*", color="C3", markersize=14, label="search (channel components)")
        elif h.kind == "draft":
            axes.plot([h.kl], [100 * h.mean_gain()], "D", color="C2", markersize=8, label="channels draft recipe")
    axes.axvline(report.settings.limits.kl_budget, color="gray", linestyle=":", label="KL budget")
    axes.axhline(0, color="gray", linewidth=0.8)
    axes.set_xlabel("KL(before ‖ after) on held-out neutral text, nats/token")
    axes.set_ylabel("held-out laundry accuracy gain, points (mean over N)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    axes.set_title("Accuracy–side-effect frontier (held-out prompts)", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
