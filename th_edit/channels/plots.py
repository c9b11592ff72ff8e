"""PNG plots of a channel report: per-component heatmap, composition map into the top mover, weight vs data."""

from __future__ import annotations

from pathlib import Path

import torch

from th_edit.channels.factors import HeadId
from th_edit.channels.find import ChannelReport
from th_edit.plots import plt

HEATMAP_PAIRS = 10
HEATMAP_COMPONENTS = 16


def plot_component_heatmap(report: ChannelReport, path: Path) -> None:
    """Per-component composition scores C_k (z-scored) of the strongest channel pairs."""
    pairs = sorted((p for p in report.pairs if p.channel), key=lambda p: -float(p.scores.z.max()))[:HEATMAP_PAIRS]
    figure, axes = plt.subplots(figsize=(7.5, 0.45 * max(len(pairs), 2) + 1.6))
    if pairs:
        z = torch.stack([p.scores.z[:HEATMAP_COMPONENTS].float() for p in pairs]).numpy()
        image = axes.imshow(z, aspect="auto", cmap="viridis")
        axes.set_yticks(range(len(pairs)), [f"{p.sender}→{p.receiver} {p.mode.upper()} ({p.channel})" for p in pairs],
                        fontsize=7)
        axes.set_xticks(range(z.shape[1]))
        axes.set_xlabel("sender OV component (0 = largest)")
        figure.colorbar(image, ax=axes, label="z-score of the per-component composition")
        for row, p in enumerate(pairs):
            for k in p.reported:
                if k < HEATMAP_COMPONENTS:
                    axes.text(k, row, "●", ha="center", va="center", color="white", fontsize=7)
    axes.set_title("Per-component composition of the channel pairs (● = in the channel)", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_mover_map(report: ChannelReport, path: Path) -> None:
    """Full Q-composition from every earlier head into the top mover, as a layer × head map."""
    mover = report.roles["mover"].top(1)
    figure, axes = plt.subplots(figsize=(6.4, 5.2))
    if mover:
        receiver = HeadId(mover[0].layer, mover[0].head)
        full = report.scores.full_scores("q")[:, :, receiver.layer, receiver.head].float()
        full[receiver.layer:] = float("nan")
        image = axes.imshow(full.numpy(), aspect="auto", cmap="magma", origin="lower")
        figure.colorbar(image, ax=axes, label="Q-composition (full Elhage score)")
        axes.set_xlabel("sender head")
        axes.set_ylabel("sender layer")
        axes.axhline(receiver.layer - 0.5, color="white", linewidth=0.8)
        axes.set_title(f"What the top mover {receiver} reads in its queries (baseline {report.scores.baseline:.3f})",
                       fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_weight_vs_data(report: ChannelReport, path: Path) -> None:
    """Each checked component: its weight score against its data score (attention shift when removed)."""
    figure, axes = plt.subplots(figsize=(6.4, 4.6))
    checked = [p for p in report.pairs if p.checks]
    for index, pair in enumerate(checked):
        x = [c.target.weight_score for c in pair.checks]
        y = [c.data_score for c in pair.checks]
        axes.scatter(x, y, s=18, color=f"C{index % 10}", label=f"{pair.sender}→{pair.receiver} {pair.mode.upper()}")
    axes.axvline(report.scores.baseline, color="gray", linestyle=":", label="random-direction baseline")
    agreement = report.agreement()
    title = "Weight score vs data score per component"
    if agreement["median_spearman"] is not None:
        title += f"\n(median Spearman {agreement['median_spearman']:.2f}, top-1 agreement {agreement['top1_agreement']:.0%})"
    axes.set_title(title, fontsize=9)
    axes.set_xlabel("per-component composition score C_k (weights)")
    axes.set_ylabel("|receiver attention shift| when removed (data)")
    axes.grid(alpha=0.3)
    if checked:
        axes.legend(fontsize=6, ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


PLOTS = {"components.png": plot_component_heatmap, "mover-map.png": plot_mover_map,
         "weight-vs-data.png": plot_weight_vs_data}
