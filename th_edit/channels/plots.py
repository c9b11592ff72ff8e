"""PNG plots of a channel report: per-component heatmap, composition map into the top mover, weight vs data."""

from __future__ import annotations

from pathlib import Path

import torch

from th_edit.channels.factors import HeadId
from th_edit.channels.find import ChannelReport
from th_edit.plots import plt

HEATMAP_PAIRS = 10
HEATMAP_COMPONENTS = 16


def heatmap_columns(pairs: list) -> list[int]:
    """The components shown: 0..HEATMAP_COMPONENTS-1, and every channel component beyond them (a
    channel component of a large d_head, such as 20.0's component 23, must not fall off the map)."""
    marked = {k for p in pairs for k in p.reported if k >= HEATMAP_COMPONENTS}
    width = min((len(p.scores.z) for p in pairs), default=HEATMAP_COMPONENTS)
    return list(range(min(HEATMAP_COMPONENTS, width))) + sorted(marked)


def plot_component_heatmap(report: ChannelReport, path: Path) -> None:
    """Per-component composition scores C_k (z-scored) of the strongest channel pairs."""
    pairs = sorted((p for p in report.pairs if p.channel), key=lambda p: -float(p.scores.z.max()))[:HEATMAP_PAIRS]
    columns = heatmap_columns(pairs)
    figure, axes = plt.subplots(figsize=(max(7.5, 0.4 * len(columns) + 1.5), 0.45 * max(len(pairs), 2) + 1.6))
    if pairs:
        z = torch.stack([p.scores.z[columns].float() for p in pairs]).numpy()
        image = axes.imshow(z, aspect="auto", cmap="viridis")
        axes.set_yticks(range(len(pairs)), [f"{p.sender}→{p.receiver} {p.mode.upper()} ({p.channel})" for p in pairs],
                        fontsize=7)
        axes.set_xticks(range(len(columns)), [str(k) for k in columns], fontsize=7)
        for position in range(1, len(columns)):
            if columns[position] != columns[position - 1] + 1:  # components skipped here: mark the jump
                axes.axvline(position - 0.5, color="white", linewidth=2)
        axes.set_xlabel(f"sender OV component (0 = largest; {columns[:HEATMAP_COMPONENTS][-1] + 1} largest shown, "
                        "then the channel's others)" if len(columns) > HEATMAP_COMPONENTS else
                        "sender OV component (0 = largest)")
        figure.colorbar(image, ax=axes, label="z-score of the per-component composition")
        for row, p in enumerate(pairs):
            for k in p.reported:
                axes.text(columns.index(k), row, "●", ha="center", va="center", color="white", fontsize=7)
    axes.set_title("Per-component composition of the channel pairs (● = in the channel)", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


MAP_HEADS = 6  # inhibition heads (rows) and movers (columns) of the mover map, at least --top of each


def mover_map(report: ChannelReport) -> tuple[list[HeadId], list[HeadId], torch.Tensor, dict[tuple[HeadId, HeadId], int]]:
    """The inhibition channel as a map (METHOD: the inhibition heads' output is read by the movers'
    queries): rows the top inhibition heads, columns the top movers, each cell the full
    Q-composition score from that inhibition head into that mover (NaN where the mover does not sit
    in a later layer), and the number of channel components of each pair that has any."""
    count = max(MAP_HEADS, report.settings.top)
    senders = [HeadId(h.layer, h.head) for h in report.roles["inhibition"].top(count)]
    movers = [HeadId(h.layer, h.head) for h in report.roles["mover"].top(count)]
    full = report.scores.full_scores("q")
    values = torch.full((len(senders), len(movers)), float("nan"))
    for i, sender in enumerate(senders):
        for j, mover in enumerate(movers):
            if sender.layer < mover.layer:
                values[i, j] = float(full[sender.layer, sender.head, mover.layer, mover.head])
    channel = {(p.sender, p.receiver): len(p.reported) for p in report.pairs
               if p.channel == "inhibition" and p.mode == "q" and p.reported}
    return senders, movers, values, channel


def plot_mover_map(report: ChannelReport, path: Path) -> None:
    """Which movers each inhibition head feeds: full Q-composition, inhibition heads × movers."""
    senders, movers, values, channel = mover_map(report)
    figure, axes = plt.subplots(figsize=(1.0 + 0.75 * max(len(movers), 4), 1.4 + 0.5 * max(len(senders), 4)))
    if senders and movers:
        image = axes.imshow(values.numpy(), aspect="auto", cmap="magma")
        figure.colorbar(image, ax=axes, label="Q-composition into the mover (full Elhage score)")
        axes.set_xticks(range(len(movers)), [str(m) for m in movers], fontsize=8)
        axes.set_yticks(range(len(senders)), [str(s) for s in senders], fontsize=8)
        axes.set_xlabel("mover (best first; its queries read the inhibition head's output)")
        axes.set_ylabel("inhibition head (best first)")
        middle = float(values[~values.isnan()].mean()) if bool((~values.isnan()).any()) else 0.0
        for i, sender in enumerate(senders):
            for j, mover in enumerate(movers):
                value = float(values[i, j])
                if value != value:  # NaN: the mover is not in a later layer
                    axes.text(j, i, "–", ha="center", va="center", color="gray", fontsize=8)
                    continue
                mark = f"\n● {channel[sender, mover]}" if (sender, mover) in channel else ""
                axes.text(j, i, f"{value:.3f}{mark}", ha="center", va="center", fontsize=6.5,
                          color="black" if value > middle else "white")
    else:
        axes.text(0.5, 0.5, "no inhibition heads or movers were found", ha="center", va="center",
                  transform=axes.transAxes)
        axes.set_axis_off()
    axes.set_title(f"Which movers each inhibition head feeds (Q-composition, baseline {report.scores.baseline:.3f})\n"
                   "● n: n channel components; –: the mover is not in a later layer", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_weight_vs_data(report: ChannelReport, path: Path) -> None:
    """Each checked component: its weight score against its data score (attention shift when removed).
    Without a data check (--no-data-check) the plot says so instead of showing empty axes."""
    figure, axes = plt.subplots(figsize=(6.4, 4.6))
    checked = [p for p in report.pairs if p.checks]
    if not checked:
        reason = ("the data check was skipped (--no-data-check): only weight scores exist" if not report.settings.data_check
                  else "no channel pair was checked on data")
        axes.text(0.5, 0.5, f"No data scores to plot:\n{reason}.\nRun `th-edit channels` without --no-data-check\n"
                  "to remove each component and measure the attention shift.", ha="center", va="center", fontsize=9,
                  transform=axes.transAxes, wrap=True)
        axes.set_axis_off()
        axes.set_title("Weight score vs data score per component", fontsize=9)
        figure.tight_layout()
        figure.savefig(path, dpi=120)
        plt.close(figure)
        return
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
    axes.legend(fontsize=6, ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


PLOTS = {"components.png": plot_component_heatmap, "mover-map.png": plot_mover_map,
         "weight-vs-data.png": plot_weight_vs_data}
