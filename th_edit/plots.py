"""PNG plots of benchmark reports (matplotlib, headless)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and in CI; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

# IOI also has two candidates, but it is another task: it gets its own column, this far to the
# right of the largest laundry N, instead of sitting on top of laundry N=2.
IOI_GAP = 1.5


def _series(report: Mapping) -> list[tuple[str, Mapping]]:
    """(label, per-task results) for every run in the report: one for single, two for paired."""
    if report["kind"] == "paired":
        return [(f"before ({report['before']['model'].get('reference', 'model')})", report["before"]["results"]),
                (f"after ({report['after']['model'].get('reference', 'model')})", report["after"]["results"])]
    return [(str(report["model"].get("reference", "model")), report["results"])]


def _laundry_ns(series: Sequence[tuple[str, Mapping]]) -> list[int]:
    return sorted({row["n_items"] for _, results in series if "laundry" in results
                   for row in results["laundry"]["by_n"]})


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
    ioi_x = ns[-1] + IOI_GAP if ns else 0.0
    for index, (label, results) in enumerate(series):
        # Offset the runs a little so overlapping error bars stay readable.
        shift = 0.06 * (index - 0.5) * (len(series) > 1)
        style = {"color": f"C{index}"}
        if "laundry" in results:
            rows = results["laundry"]["by_n"]
            _errorbar(axes, [row["n_items"] + shift for row in rows], rows, marker="o", linestyle="-",
                      label=f"laundry: {label}", **style)
        if "ioi" in results:
            _errorbar(axes, [ioi_x + shift], [results["ioi"]["overall"]], marker="s", linestyle="none",
                      label=f"ioi: {label}", **style)
    _draw_chance_and_ticks(axes, ns, ioi_x if any("ioi" in results for _, results in series) else None)
    axes.set_xlabel("N (items in the list)")
    axes.set_ylabel("candidate accuracy")
    axes.set_ylim(0, 1.02)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    axes.set_title("Recall from a list: answer beats the other items (Wilson 95%)", fontsize=10)
    figure.tight_layout()
    return figure


def _draw_chance_and_ticks(axes, ns: Sequence[int], ioi_x: float | None) -> None:
    """Chance level (1/N, and 1/2 for IOI's two names) and x ticks: each N, then "IOI"."""
    ticks: list[float] = list(ns)
    labels = [str(n) for n in ns]
    if ns:
        axes.plot(ns, [1 / n for n in ns], color="gray", linestyle=":", label="chance (1/N)")
    if ioi_x is not None:
        axes.hlines(0.5, ioi_x - 0.3, ioi_x + 0.3, color="gray", linestyle=":")
        if ns:  # a rule between the laundry curve and the IOI column
            axes.axvline((ns[-1] + ioi_x) / 2, color="gray", linewidth=0.8)
        ticks.append(ioi_x)
        labels.append("IOI")
    axes.set_xticks(ticks, labels)


def plot_accuracy(report: Mapping, path: str | Path) -> None:
    figure = accuracy_figure(report)
    figure.savefig(path, dpi=120)
    plt.close(figure)
