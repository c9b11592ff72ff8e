"""PNG plots of benchmark reports (matplotlib, headless)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and in CI; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402


def _series(report: Mapping) -> list[tuple[str, Mapping]]:
    """(label, per-task results) for every run in the report: one for single, two for paired."""
    if report["kind"] == "paired":
        return [(f"before ({report['before']['model'].get('reference', 'model')})", report["before"]["results"]),
                (f"after ({report['after']['model'].get('reference', 'model')})", report["after"]["results"])]
    return [(str(report["model"].get("reference", "model")), report["results"])]


def plot_accuracy(report: Mapping, path: str | Path) -> None:
    """Candidate accuracy against N with Wilson 95% error bars; IOI (two names) is one point at N=2."""
    figure, axes = plt.subplots(figsize=(6.4, 4.4))
    n_values: set[int] = set()
    series = _series(report)
    for index, (label, results) in enumerate(series):
        color = f"C{index}"
        for task, marker, style in (("laundry", "o", "-"), ("ioi", "s", "none")):
            if task not in results:
                continue
            rows = results[task]["by_n"]
            x = [row["n_items"] for row in rows]
            y = [row["candidate_accuracy"] for row in rows]
            errors = [[row["candidate_accuracy"] - row["candidate_ci95"][0] for row in rows],
                      [row["candidate_ci95"][1] - row["candidate_accuracy"] for row in rows]]
            # Offset the runs a little so overlapping error bars stay readable.
            shifted = [v + 0.06 * (index - 0.5) * (len(series) > 1) for v in x]
            axes.errorbar(shifted, y, yerr=errors, color=color, marker=marker, linestyle=style, capsize=3,
                          label=f"{task}: {label}")
            n_values.update(x)
    if n_values:
        chance = sorted(n_values)
        axes.plot(chance, [1 / n for n in chance], color="gray", linestyle=":", label="chance (1/N)")
        axes.set_xticks(chance)
    axes.set_xlabel("N (items in the list)")
    axes.set_ylabel("candidate accuracy")
    axes.set_ylim(0, 1.02)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    axes.set_title("Recall from a list: answer beats the other items (Wilson 95%)", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
