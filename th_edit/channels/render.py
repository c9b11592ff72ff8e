"""Terminal summary of a channel report."""

from __future__ import annotations

from th_edit import ui
from th_edit.channels.find import KINDS, ChannelReport

ROLES_SHOWN = ("inhibition", "mover", "negative_mover", "duplicate_token", "induction")


def render_channels(report: ChannelReport, top: int = 5) -> str:
    lines = [f"channels of {report.model} ({report.settings.task} prompts, seed {report.settings.seed}); "
             f"random-direction baseline {report.scores.baseline:.4f}", "", "roles (attention from END, mean over prompts)"]
    form = getattr(report.scores, "form", {"form": "unrotated"})
    if form["form"] != "unrotated":  # docs/method.md#rotated-composition
        offsets = [int(o) for o in form["offsets"]]
        lines.insert(1, f"Q- and K-composition through RoPE at offsets {form['form']} "
                        f"({len(offsets)} offset{'s' * (len(offsets) > 1)}, {min(offsets)}..{max(offsets)})")
    shown = [role for role in ROLES_SHOWN if role in report.roles]
    heads = _aligned([[f"{h.name} ({h.mean:.2f})" for h in report.roles[role].top(top)] for role in shown])
    lines += ui.table(["role", "top heads (score)"], [[role, "  ".join(cells)] for role, cells in zip(shown, heads)],
                      left=2)
    for kind in KINDS:
        entries = report.channel(kind)
        if not any(p.channel == kind for p in report.pairs):
            continue
        lines += ["", f"{kind.replace('_', '-')} channel: sender component → receiver component "
                      f"(z ≥ {report.settings.z_threshold:g}, share ≥ {report.settings.min_share:g}/rank)"]
        if not entries:
            lines.append("  no component stands out for any examined pair")
            continue
        rows = []
        senders = _fields([[f"{e['sender']['layer']}.{e['sender']['head']}", "OV", str(e["sender"]["component"])]
                           for e in entries])
        receivers = _fields([[f"{e['receiver']['layer']}.{e['receiver']['head']}", e["receiver"]["circuit"].upper(),
                              str(e["receiver"]["component"])] for e in entries])
        estimated = False
        for e, sender, receiver in zip(entries, senders, receivers):
            s, r, data = e["sender"], e["receiver"], e["data"]
            mark = "" if data is None or "0.0" in data["measured"] else "~"  # ~: a first-order estimate
            estimated = estimated or bool(mark)
            rows.append([sender, receiver, e["mode"].upper(),
                         f"{e['weight_score']:.3f}", f"{e['z']:+.1f}", f"{s['share']:.1%}", f"{r['cosine']:.2f}",
                         "-" if data is None else f"{mark}{data['data_score']:.3f}",
                         "-" if data is None else f"{mark}{data['logit_diff_change']['0.0']:+.2f}"])
        lines += ui.table(["sender", "receiver", "mode", "weight", "z", "share", "cosine", "data", "Δ logit diff (α=0)"],
                          rows)
        if estimated:
            lines.append("  ~: first-order estimate (attribution), not among the pair's components removed exactly")
    agreement = report.agreement()
    if agreement["pairs_checked"]:
        lines += ["", f"weights vs data over {agreement['pairs_checked']} checked pair(s):"]
        for label, suffix in (("weight score C_k", ""), ("s_k·C_k (what the component carries)", "_weighted")):
            median = agreement["median_spearman" + suffix]
            lines.append(f"  {label}: top-1 agreement {agreement['top1_agreement' + suffix]:.0%}, median Spearman "
                         f"{'-' if median is None else format(median, '.2f')}")
    user_pairs = [p for p in report.pairs if p.channel is None]
    for pair in user_pairs:
        links = "; ".join(f"{k} → {v['circuit'].upper()} {v['component']} (cos {v['cosine']:.2f})"
                          for k, v in pair.links.items())
        lines.append(f"pair {pair.sender}:{pair.receiver} {pair.mode.upper()}: full {pair.scores.full:.4f} "
                     f"(z {pair.scores.full_z:+.1f}); strongest components {links}")
    return "\n".join(lines)


def _fields(rows: list[list[str]]) -> list[str]:
    """Cells made of several fields ("9.3 OV 0", "20.0 OV 12"), each field right-aligned to its
    widest value, so the fields line up from row to row whatever the number of digits."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))] if rows else []
    return [" ".join(field.rjust(width) for field, width in zip(row, widths)) for row in rows]


def _aligned(lists: list[list[str]]) -> list[list[str]]:
    """Lists of head entries ("9.3 (0.25)", "20.0 (0.30)"), each padded to the widest entry, so
    the n-th head of every row starts in the same column."""
    width = max((len(cell) for cells in lists for cell in cells), default=0)
    return [[cell.rjust(width) for cell in cells] for cells in lists]
