"""The terminal summary of a subspace analysis, and its files written atomically."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from th_edit import strict_json
from th_edit.errors import UserError
from th_edit.outputs import check_creatable, write_files
from th_edit.subspace.crowding import spearman

OUTPUT_FILES = ("subspace.json", "subspace.png", "traversal.png", "crowding.png", "subspace.html")


def _numbers(values, digits: int = 2) -> str:
    return " ".join(f"{v:.{digits}f}" for v in values)


def _share(fraction: float) -> str:
    return f"{100 * fraction:.0f}%"


def _top(fractions) -> str:
    best = max(range(len(fractions)), key=lambda i: fractions[i])
    return f"{best} ({_share(fractions[best])})"


def summary(record: Mapping) -> str:
    channel, setup, bases = record["channel"], record["setup"], record["bases"]
    components = ", ".join(f"{c['layer']}.{c['head']}:{c['component']}" for c in channel["components"])
    movers = ", ".join(f"{m['layer']}.{m['head']}" for m in channel["movers"])
    lines = [
        f"subspace of {record['model']}: {setup['dims']} dims, {record['basis_used']} basis",
        f"channel ({channel['source']}): sender components {components}; movers {movers}",
        f"signal: sum of the sender heads' outputs at the last token of {setup['n_prompts']} laundry prompts "
        f"(N = {', '.join(map(str, setup['n_items']))}); candidate accuracy {_share(record['candidate_accuracy'])}, "
        f"movers attend most to the answer in {_share(record['movers_attend_answer'])}",
        "explained variance (share of the signal's centered variance per direction):",
    ]
    for kind in ("weights", "data"):
        basis = bases.get(kind)
        if basis is not None:
            lines.append(f"  {kind:<8} {_numbers(basis['explained_variance'])}  (total {basis['explained_total']:.2f})")
        else:
            lines.append(f"  {kind:<8} (not available)")
    if record["principal_angles_deg"] is not None:
        lines.append(f"principal angles, weights vs data: {_numbers(record['principal_angles_deg'], 1)} degrees")
    traversal = record["traversal"]
    lines += [
        f"traversal ({traversal['mode']} after layer {channel['intervention_layer']}, N = {traversal['n_items']}, "
        f"{traversal['n_prompts']} prompts, {len(traversal['grid'])} grid points):",
    ]
    for which, verb in (("attended", "movers attend"), ("predicted", "model predicts")):
        regions = traversal["regions"][which]
        contiguous = all(count == 1 for count in regions.values())
        pieces = ", ".join(f"item {k}: {v}" for k, v in regions.items())
        lines.append(f"  {verb}: {len(regions)} items selected somewhere; regions per item {pieces} "
                     f"({'contiguous' if contiguous else 'not contiguous'})")
    baseline = traversal["baseline"]
    lines.append(f"  without intervention: movers attend most to the answer in {_share(baseline['attended_answer'])} of "
                 f"these prompts, the model picks it in {_share(baseline['predicted_answer'])}")
    if traversal["at_centroids"]:
        lines.append("  at the centroid of each inhibited position (position: movers' top item, model's top item):")
        lines.append("    " + "; ".join(f"{c['inhibited_position']}: {_top(c['attended'])}, {_top(c['predicted'])}"
                                        for c in traversal["at_centroids"]))
    crowd = record["crowding"]
    low, high = crowd["pooled_ci95"]
    lines += [
        f"crowding ({crowd['grouping']}s): pooled Spearman rho(separation, accuracy) = {crowd['pooled_spearman']:.2f} "
        f"[{low:.2f}, {high:.2f}]; within N: rho = {crowd['within_n_spearman']:.2f}, permutation p = {crowd['within_n_p']:.3g}",
        "  order along direction 1: Spearman rho of position against the centroids' first coordinate "
        "(+1: position 0 lowest, the last highest; -1: the reverse)",
        "  N  accuracy  mean separation  mean adjacent distance  centroid span  answer order  inhibited order",
    ]
    inhibited = _inhibited_order(record)
    for row in crowd["by_n"]:
        lines.append(f"  {row['n_items']:<2} {100 * row['accuracy']:7.0f}%  {row['mean_separation']:15.2f}  "
                     f"{row['mean_adjacent_distance']:22.3g}  {row['centroid_span']:13.3g}  "
                     f"{row['order_along_first_direction']:12.2f}  {inhibited.get(row['n_items'], float('nan')):15.2f}")
    lines += [f"note: {note}" for note in record.get("notes", [])]
    return "\n".join(lines)


def _inhibited_order(record: Mapping) -> dict[int, float]:
    """Per N, the order of the inhibited positions' centroids along the first direction (the
    answer positions' is crowding's `order_along_first_direction`): the two can run opposite ways."""
    rows = record["centroids"]["by_inhibited_position"]
    return {n: spearman([r["position"] for r in rows if r["n_items"] == n],
                        [r["coordinates"][0] for r in rows if r["n_items"] == n], minimum=2)
            for n in sorted({r["n_items"] for r in rows})}


def check_outputs(out: Path, force: bool) -> None:
    """Refuse, before any work, a target that exists as a file or holds earlier outputs (without --force)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"output path {out} exists and is not a directory")
    existing = [name for name in OUTPUT_FILES if (out / name).exists()]
    if existing and not force:
        raise UserError(f"{out} already holds {', '.join(existing)} (pass --force to replace)")
    check_creatable(out / OUTPUT_FILES[0])


def write_outputs(record: Mapping, out: str | Path, force: bool = False) -> list[Path]:
    """subspace.json, the three PNGs and the HTML in `out`: all of them or (a full disk, an
    error, Ctrl-C) none, and no directory made for them (outputs.write_files)."""
    from th_edit.subspace import plots

    out = Path(out)
    check_outputs(out, force)
    writers: dict[Path, Callable[[Path], object]] = {
        out / "subspace.json": lambda path: path.write_text(strict_json.dumps(record, indent=1) + "\n", encoding="utf-8"),
        out / "subspace.png": lambda path: plots.save_figure(plots.projection_figure(record), path),
        out / "traversal.png": lambda path: plots.save_figure(plots.traversal_figure(record), path),
        out / "crowding.png": lambda path: plots.save_figure(plots.crowding_figure(record), path),
        out / "subspace.html": lambda path: plots.write_html(record, path),
    }
    write_files(writers, force)
    return list(writers)
