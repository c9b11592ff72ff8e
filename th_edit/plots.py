"""PNG plots of benchmark reports (matplotlib, headless)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and in CI; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from th_edit.tasks import registry  # noqa: E402

# IOI also has two candidates, but it is another task: it gets its own column, this far to the
# right of the largest laundry N, instead of sitting on top of laundry N=2.
IOI_GAP = 1.5


def _series(report: Mapping) -> list[tuple[str, Mapping]]:
    """(label, per-task results) for every run in the report: one for single, two for paired."""
    if report["kind"] == "paired":
        return [(f"before ({report['before']['model'].get('reference', 'model')})", report["before"]["results"]),
                (f"after ({report['after']['model'].get('reference', 'model')})", report["after"]["results"])]
    return [(str(report["model"].get("reference", "model")), report["results"])]


def _list_tasks(series: Sequence[tuple[str, Mapping]]) -> tuple[list[str], list[str]]:
    """The tasks present in the report: list-recall tasks (curves over N), then fixed-N tasks
    (IOI: a column of its own right of the curves), each in registration order."""
    present = registry.in_order({task for _, results in series for task in results})
    return ([t for t in present if registry.get(t).list_recall], [t for t in present if not registry.get(t).list_recall])


def _laundry_ns(series: Sequence[tuple[str, Mapping]]) -> list[int]:
    lists, _ = _list_tasks(series)
    return sorted({row["n_items"] for _, results in series for task in lists if task in results
                   for row in results[task]["by_n"]})


def _errorbar(axes, x: float, rows: Sequence[Mapping], **style) -> None:
    y = [row["candidate_accuracy"] for row in rows]
    errors = [[row["candidate_accuracy"] - row["candidate_ci95"][0] for row in rows],
              [row["candidate_ci95"][1] - row["candidate_accuracy"] for row in rows]]
    axes.errorbar(x, y, yerr=errors, capsize=3, **style)


def accuracy_figure(report: Mapping) -> Figure:
    """Candidate accuracy against N with Wilson 95% error bars; IOI is a separate column on the right."""
    figure, axes = plt.subplots(figsize=(6.4, 4.4))
    series = _series(report)
    ns = _laundry_ns(series)
    lists, fixed = _list_tasks(series)
    column_x = {task: (ns[-1] if ns else 0.0) + IOI_GAP * (i + (1 if ns else 0)) for i, task in enumerate(fixed)}
    for index, (label, results) in enumerate(series):
        # Offset the runs a little so overlapping error bars stay readable.
        shift = 0.06 * (index - 0.5) * (len(series) > 1)
        style = {"color": f"C{index}"}
        for number, task in enumerate(t for t in lists if t in results):
            rows = results[task]["by_n"]
            _errorbar(axes, [row["n_items"] + shift for row in rows], rows, marker="o^vD"[number % 4],
                      linestyle=("-", "--", "-.", ":")[number % 4], label=f"{task}: {label}", **style)
        for task in (t for t in fixed if t in results):
            _errorbar(axes, [column_x[task] + shift], [results[task]["overall"]], marker="s", linestyle="none",
                      label=f"{task}: {label}", **style)
    _draw_chance_and_ticks(axes, ns, column_x)
    axes.set_xlabel("N (items in the list)")
    axes.set_ylabel("candidate accuracy")
    axes.set_ylim(0, 1.02)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    axes.set_title("Recall from a list: answer beats the other items (Wilson 95%)", fontsize=10)
    figure.tight_layout()
    return figure


def _draw_chance_and_ticks(axes, ns: Sequence[int], columns: Mapping[str, float]) -> None:
    """Chance level (1/N, and 1/N of each fixed-N task: IOI's two names) and x ticks: each N, then
    a column per fixed-N task ("IOI")."""
    ticks: list[float] = list(ns)
    labels = [str(n) for n in ns]
    if ns:
        axes.plot(ns, [1 / n for n in ns], color="gray", linestyle=":", label="chance (1/N)")
    for number, (task, x) in enumerate(columns.items()):
        axes.hlines(1 / registry.get(task).fixed_n_items, x - 0.3, x + 0.3, color="gray", linestyle=":")
        if ns and number == 0:  # a rule between the list curves and the fixed-N columns
            axes.axvline((ns[-1] + x) / 2, color="gray", linewidth=0.8)
        ticks.append(x)
        labels.append(task.upper())
    axes.set_xticks(ticks, labels)


def plot_accuracy(report: Mapping, path: str | Path) -> None:
    figure = accuracy_figure(report)
    figure.savefig(path, dpi=120)
    plt.close(figure)
