"""Pictures of the subspace: PNGs (matplotlib, headless) and one self-contained HTML (plotly).

All take the `subspace.json` record (`SubspaceResult.to_dict()`), so a saved analysis can be
re-plotted without the model.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and in CI; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from th_edit.errors import missing_package  # noqa: E402

VIEWS = ((25, -60), (25, 30), (88, -90))  # (elevation, azimuth) of the three fixed 3D views
POSITION_COLORS = [matplotlib.colormaps["tab10"](i) for i in range(10)]


def _axis_labels(record: Mapping) -> list[str]:
    basis = record["bases"][record["basis_used"]]
    shares = basis["explained_variance"]
    return [f"{record['basis_used']} {i + 1} ({100 * s:.0f}%)" for i, s in enumerate(shares)]


def _points(record: Mapping) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    points = record["points"]
    coordinates = np.array([p["coordinates"] for p in points], dtype=np.float64)
    colours = {"inhibited": np.array([p["inhibited_position"] for p in points]),
               "answer": np.array([p["answer_position"] for p in points])}
    return coordinates, colours, np.array([p["n_items"] for p in points])


def _scatter(axes, coordinates: np.ndarray, positions: np.ndarray, three_d: bool) -> None:
    for position in sorted(set(positions.tolist())):
        mask = positions == position
        xyz = [coordinates[mask, i] for i in range(3 if three_d else 2)]
        depth = {"depthshade": False} if three_d else {}
        axes.scatter(*xyz, s=7, alpha=0.65, color=POSITION_COLORS[position % 10], label=str(position), **depth)


def _centroid_paths(axes, record: Mapping, three_d: bool) -> None:
    rows = record["centroids"]["by_answer_position"]
    ns = sorted({r["n_items"] for r in rows})
    colour = matplotlib.colormaps["viridis"]
    for j, n in enumerate(ns):
        path = sorted((r for r in rows if r["n_items"] == n), key=lambda r: r["position"])
        xyz = np.array([r["coordinates"][:3 if three_d else 2] for r in path])
        c = colour(j / max(1, len(ns) - 1))
        axes.plot(*xyz.T, color=c, marker="o", markersize=3, linewidth=1.2, label=f"N={n}")
        if n == ns[-1]:  # number the positions along the longest list's path
            for r, point in zip(path, xyz):
                axes.text(*point, str(r["position"]), fontsize=7)


def projection_figure(record: Mapping) -> Figure:
    """Rows: points coloured by inhibited position, by answer position, and the per-N centroid
    paths (answer positions in order); columns: three fixed views (3D) or one (2D)."""
    coordinates, colours, _ = _points(record)
    labels = _axis_labels(record)
    three_d = coordinates.shape[1] >= 3
    columns = len(VIEWS) if three_d else 1
    figure = plt.figure(figsize=(4.6 * columns, 13))
    titles = ("colour: first-list position of the inhibited item", "colour: answer position",
              "centroids of the answer positions, per N, joined in position order (numbers: positions for the largest N)")
    for row in range(3):
        for column in range(columns):
            axes = figure.add_subplot(3, columns, row * columns + column + 1, projection="3d" if three_d else None)
            if row < 2:
                _scatter(axes, coordinates, colours["inhibited" if row == 0 else "answer"], three_d)
            else:
                _centroid_paths(axes, record, three_d)
            axes.set_xlabel(labels[0], fontsize=7)
            axes.set_ylabel(labels[1], fontsize=7)
            if three_d:
                axes.set_zlabel(labels[2], fontsize=7)
                axes.view_init(*VIEWS[column])
            axes.tick_params(labelsize=6)
            if column == 0:
                axes.set_title(titles[row], fontsize=9, loc="left")
            if column == columns - 1:
                axes.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.08, 1.0), title_fontsize=6,
                            title="N" if row == 2 else "position")
    channel = record["channel"]
    heads = ", ".join(f"{h['layer']}.{h['head']}" for h in channel["sender_heads"])
    figure.suptitle(f"{record['model']}: sender heads {heads} at the last token, {record['basis_used']} basis "
                    f"({record['setup']['n_prompts']} laundry prompts, N = {_ns(record)})", fontsize=10)
    figure.tight_layout()
    return figure


def _ns(record: Mapping) -> str:
    ns = record["setup"]["n_items"]
    return f"{ns[0]}..{ns[-1]}" if ns == list(range(ns[0], ns[-1] + 1)) else ", ".join(map(str, ns))


def traversal_figure(record: Mapping) -> Figure:
    """The traversal map: per grid point, the item the movers attend to most (top row) and the item
    predicted (bottom row), as the majority over the traversal prompts (faded where it is not
    unanimous); one panel per value of the third axis."""
    traversal = record["traversal"]
    axes_values = [np.array(a) for a in traversal["axes"]]
    count = traversal["traversed_axes"]
    n = traversal["n_items"]
    colours = ListedColormap(POSITION_COLORS[:max(n, 2)])
    grid = traversal["grid"]
    sizes = [len(a) for a in axes_values]
    slices = sizes[2] if count >= 3 else 1
    figure, panels = plt.subplots(2, slices, figsize=(2.6 * slices + 1.2, 5.6), squeeze=False)
    labels = _axis_labels(record)
    for row, which in enumerate(("attended", "predicted")):
        mode = np.array([g[f"{which}_mode"] for g in grid]).reshape(sizes)
        share = np.array([max(g[which]) for g in grid]).reshape(sizes)
        for s in range(slices):
            axes = panels[row, s]
            if count == 1:
                image, alpha, extent = mode[None, :], share[None, :], (*axes_values[0][[0, -1]], 0, 1)
            else:
                layer = (mode[:, :, s], share[:, :, s]) if count >= 3 else (mode, share)
                image, alpha = layer[0].T, layer[1].T  # rows: axis 2, columns: axis 1
                extent = (*axes_values[0][[0, -1]], *axes_values[1][[0, -1]])
            axes.imshow(image, origin="lower", extent=extent, aspect="auto", cmap=colours, vmin=-0.5,
                        vmax=max(n, 2) - 0.5, alpha=np.clip(alpha, 0.15, 1.0), interpolation="nearest")
            _mark_centroids(axes, traversal, axes_values, count, s)
            axes.tick_params(labelsize=6)
            if count >= 3:
                axes.set_title(f"{labels[2].split(' (')[0]} = {axes_values[2][s]:.2g}", fontsize=7)
            if s == 0:
                verb = "movers attend" if which == "attended" else "model predicts"
                axes.set_ylabel(f"{verb}\n{labels[1] if count > 1 else ''}", fontsize=7)
            if row == 1:
                axes.set_xlabel(labels[0], fontsize=7)
    handles = [matplotlib.patches.Patch(color=POSITION_COLORS[i], label=f"item {i}") for i in range(n)]
    figure.legend(handles=handles, loc="center right", fontsize=7, title="selects", title_fontsize=7)
    figure.suptitle(f"{record['model']}: signal {traversal['mode']}d by grid points (N = {n}, {traversal['n_prompts']} "
                    "prompts; colour = majority item, faded where prompts disagree; × = centroid of inhibited position)",
                    fontsize=8)
    figure.tight_layout(rect=(0, 0, 0.92, 0.95))
    return figure


def _mark_centroids(axes, traversal: Mapping, axes_values: list[np.ndarray], count: int, slice_index: int) -> None:
    """Centroids of the inhibited positions, drawn on the panel whose third-axis value is nearest."""
    for centroid in traversal["at_centroids"]:
        point = np.array(centroid["coordinates"])
        if traversal["mode"] == "add":
            continue  # offsets, not positions on this map
        if count >= 3 and int(np.abs(axes_values[2] - point[2]).argmin()) != slice_index:
            continue
        y = point[1] if count > 1 else 0.5
        axes.scatter([point[0]], [y], marker="x", color="black", s=22, linewidths=1)
        axes.annotate(str(centroid["inhibited_position"]), (point[0], y), fontsize=7, xytext=(2, 2),
                      textcoords="offset points")


def crowding_figure(record: Mapping) -> Figure:
    """Left: separation of each (N, answer position) centroid from its neighbours against its
    candidate accuracy. Right: per N, mean separation and accuracy."""
    crowd = record["crowding"]
    cells = crowd["cells"]
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.3))
    ns = sorted({c["n_items"] for c in cells})
    colour = matplotlib.colormaps["viridis"]
    for j, n in enumerate(ns):
        these = [c for c in cells if c["n_items"] == n]
        left.scatter([c["separation"] for c in these], [c["accuracy"] for c in these], color=colour(j / max(1, len(ns) - 1)),
                     label=f"N={n}", s=22)
    separations = [c["separation"] for c in cells if np.isfinite(c["separation"]) and c["separation"] > 0]
    if separations and max(separations) > 50 * min(separations):  # e.g. N = 2 far apart from the rest
        left.set_xscale("log")
    left.set_xlabel("separation from adjacent answer positions (× within-cell spread)")
    left.set_ylabel("candidate accuracy")
    left.set_ylim(-0.03, 1.03)
    left.legend(fontsize=7)
    low, high = crowd["pooled_ci95"]
    left.set_title(f"pooled Spearman ρ = {crowd['pooled_spearman']:.2f} [{low:.2f}, {high:.2f}]; within N: "
                   f"ρ = {crowd['within_n_spearman']:.2f}, p = {crowd['within_n_p']:.2g}", fontsize=8)
    by_n = crowd["by_n"]
    right.plot([r["n_items"] for r in by_n], [r["mean_separation"] for r in by_n], marker="o", color="C0")
    right.set_xticks(sorted({r["n_items"] for r in by_n}))  # N is a count: no fractional ticks
    right.set_xlabel("N (items in the list)")
    right.set_ylabel("mean separation of adjacent positions", color="C0")
    twin = right.twinx()
    twin.plot([r["n_items"] for r in by_n], [r["accuracy"] for r in by_n], marker="s", color="C3")
    twin.set_ylabel("candidate accuracy", color="C3")
    twin.set_ylim(0, 1.02)
    right.set_title("crowding with N", fontsize=8)
    figure.suptitle(f"{record['model']}: crowding in the {record['basis_used']} basis", fontsize=10)
    figure.tight_layout()
    return figure


def save_figure(figure: Figure, path: str | Path, dpi: int = 110) -> None:
    figure.savefig(path, dpi=dpi, format="png", bbox_inches="tight")
    plt.close(figure)


# ----------------------------------------------------------------------------------------------
# Interactive HTML


HTML_PANELS = ("by inhibited position", "by answer position", "traversal: the item the movers attend to most",
               "traversal: the item the model predicts")
HTML_HEIGHT = 1100  # pixels; the width follows the window (the page is responsive)


def html_figure(record: Mapping):
    """A plotly figure, 2 × 2: the points by inhibited and by answer position; the traversal grid
    coloured by what the movers attend to and by what the model predicts. Axes carry the basis
    directions' names; the width is left to the page (responsive) and the legend sits below the
    panels, so a narrow window shrinks the panels instead of pushing the legend out of view."""
    try:
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots
    except ImportError:
        raise missing_package("plotly", "the interactive HTML plot") from None
    coordinates, colours, ns = _points(record)
    three_d = coordinates.shape[1] >= 3
    kind = "scene" if three_d else "xy"
    figure = make_subplots(rows=2, cols=2, specs=[[{"type": kind}] * 2] * 2, horizontal_spacing=0.03,
                           vertical_spacing=0.06, subplot_titles=HTML_PANELS)
    hover = [f"N={p['n_items']} answer={p['answer_position']} inhibited={p['inhibited_position']} "
             f"{'correct' if p['candidate_correct'] else 'wrong'}" for p in record["points"]]
    hover = np.array(hover)

    def trace(xyz: np.ndarray, name: str, colour, group: str, title: str, text=None, size=3, symbol="circle"):
        rgb = f"rgb({int(255 * colour[0])},{int(255 * colour[1])},{int(255 * colour[2])})"
        common = dict(mode="markers", name=name, legendgroup=group, legendgrouptitle_text=title, text=text,
                      hoverinfo="text+name", marker=dict(size=size, color=rgb, symbol=symbol, opacity=0.75))
        if three_d:
            return go.Scatter3d(x=xyz[:, 0], y=xyz[:, 1], z=xyz[:, 2], **common)
        return go.Scatter(x=xyz[:, 0], y=xyz[:, 1], **common)

    for column, which in enumerate(("inhibited", "answer"), start=1):
        for position in sorted(set(colours[which].tolist())):
            mask = colours[which] == position
            figure.add_trace(trace(coordinates[mask], f"{which} {position}", POSITION_COLORS[position % 10], which,
                                   f"{which} position", hover[mask].tolist()), row=1, col=column)
    traversal = record["traversal"]
    grid = traversal["grid"]
    points = np.array([g["coordinates"] for g in grid], dtype=np.float64)
    wanted = 3 if three_d else 2
    if points.shape[1] < wanted:  # fewer traversed axes than plotted ones: the rest drawn at 0
        points = np.pad(points, ((0, 0), (0, wanted - points.shape[1])))
    for column, (which, verb) in enumerate((("attended", "movers attend"), ("predicted", "model predicts")), start=1):
        chosen = np.array([g[f"{which}_mode"] for g in grid])
        share = np.array([f"{verb} item {g[f'{which}_mode']} in {100 * max(g[which]):.0f}% of prompts" for g in grid])
        for item in sorted(set(chosen.tolist())):
            mask = chosen == item
            figure.add_trace(trace(points[mask], f"{verb}: item {item}", POSITION_COLORS[item % 10], f"traversal {which}",
                                   f"traversal: {verb}", share[mask].tolist(), size=4, symbol="square"), row=2, col=column)
    labels = _axis_labels(record)
    if traversal["mode"] == "add":  # the grid is of offsets added to the signal, not of positions
        grid_labels = [f"offset along {label}" for label in labels]
    else:
        grid_labels = labels
    for index in range(4):
        names = labels if index < 2 else grid_labels
        if three_d:
            figure.update_layout({f"scene{'' if index == 0 else index + 1}": dict(
                xaxis_title=names[0], yaxis_title=names[1], zaxis_title=names[2],
                camera=dict(eye=dict(x=1.6, y=1.6, z=1.1)))})  # a step back: the axis titles stay in view
        else:
            figure.update_xaxes(title_text=names[0], row=index // 2 + 1, col=index % 2 + 1)
            figure.update_yaxes(title_text=names[1], row=index // 2 + 1, col=index % 2 + 1)
    figure.update_layout(
        title=dict(text=f"{record['model']}: the positional subspace<br><sub>{record['basis_used']} basis, N = {_ns(record)}; "
                        f"traversal: {traversal['mode']}, N = {traversal['n_items']}, {traversal['n_prompts']} prompts</sub>",
                   font=dict(size=15)),
        autosize=True, height=HTML_HEIGHT, margin=dict(l=10, r=10, t=70, b=10),
        legend=dict(orientation="h", x=0, y=-0.02, yanchor="top", font=dict(size=10), groupclick="toggleitem"))
    return figure


def write_html(record: Mapping, path: str | Path) -> None:
    """A self-contained page: plotly's JavaScript is embedded, so it opens offline."""
    html_figure(record).write_html(str(path), include_plotlyjs=True, full_html=True, default_width="100%",
                                   default_height=f"{HTML_HEIGHT}px", config={"responsive": True})
