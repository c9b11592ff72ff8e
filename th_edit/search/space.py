"""What a search may edit: candidate singular components, and how a trial's choices become a recipe."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from th_edit import ui
from th_edit.errors import UserError
from th_edit.recipe import Edit

TOP_K = (1, 2, 4, 8, 16, 32)  # how many of a head's best components a trial may edit
MAX_COMPONENTS = 32  # more than this is no longer a channel; the whole head is a baseline of its own


@dataclass(frozen=True)
class Candidate:
    """One head a search may edit: a trial rescales the first k of `components` (best first) by one
    scale, k chosen from `k_choices`. The channel picks the head; the order of its components comes
    from the channel's weight scores or, on tuning prompts, from their first-order effect on recall
    (`search.attribution`)."""

    layer: int
    head: int
    circuit: str  # "ov" | "qk"
    components: tuple[int, ...]
    evidence: str = ""

    @property
    def name(self) -> str:
        return f"{self.layer}.{self.head}.{self.circuit}"

    def k_choices(self) -> list[int]:
        n = len(self.components)
        return [0, *sorted({k for k in TOP_K if k < n} | {n})] if n else [0]


def check_channels_fit(record: object, source: object, model: str, info, kind: str = "inhibition",
                       limit: int = 8) -> None:
    """Refuse a channels.json of another model: a candidate head or component that `info` (the
    model's ArchInfo) does not have. One that fits but was recorded for another name is a warning."""
    recorded = record.get("model") if isinstance(record, Mapping) else None
    for candidate in candidates_from_channels(record, kind, limit):  # type: ignore[arg-type]
        component = max(candidate.components, default=0)
        if not (candidate.layer < info.n_layers and candidate.head < info.n_heads and component < info.d_head):
            raise UserError(f"{source} is not a channel analysis of {model}"
                            + (f" (it was made for {recorded})" if recorded else "")
                            + f": it names head {candidate.layer}.{candidate.head} component {component}, but {model} "
                              f"has {info.n_layers} layers of {info.n_heads} heads with {info.d_head} components")
    if recorded and recorded != model:
        ui.warn(f"{source} was made for {recorded}, not {model}; its heads fit {model}, so it is used")


def candidates_from_channels(record: Mapping, kind: str = "inhibition", limit: int = 8) -> list[Candidate]:
    """The sender heads of a `channels.json` channel, up to `limit`: heads with reported channel
    entries first (their strongest z first), then the other senders of the pairs examined for it.
    Each head's components are ordered by their best z over its receivers."""
    channels = record.get("channels", {}) if isinstance(record, Mapping) else {}
    entries = channels.get(kind) if isinstance(channels, Mapping) else None
    entries = entries if isinstance(entries, list) else []
    pair_components = _pair_components(record, kind)
    if not entries and not pair_components:
        raise UserError(f"channels.json has no '{kind}' channel: neither channels.{kind} entries nor pairs examined for it")
    reported: dict[tuple[int, int, int], float] = {}
    evidence: dict[tuple[int, int], str] = {}
    for i, entry in enumerate(entries):
        try:
            sender, receiver = entry["sender"], entry["receiver"]
            key = (int(sender["layer"]), int(sender["head"]), int(sender["component"]))
            score, z = float(entry.get("weight_score", 0.0)), float(entry.get("z", 0.0))
        except (KeyError, TypeError, ValueError):
            raise UserError(f"channels.json: channels.{kind}[{i}] is not a channel entry "
                            "(sender.layer/head/component and receiver expected)") from None
        reported[key] = max(z, reported.get(key, z))
        evidence.setdefault(key[:2], f"{kind} channel: OV component {key[2]} -> receiver {receiver.get('layer')}."
                                     f"{receiver.get('head')}, weight score {score:.3g}, z {z:+.1f}")
    best_z: dict[tuple[int, int, int], float] = {}
    for z, key, _ in pair_components:
        best_z[key] = max(z, best_z.get(key, z))
    # Reported components rank above every unreported one; within each group, by z.
    ranked = sorted(set(reported) | set(best_z), key=lambda key: (key in reported, reported.get(key, best_z.get(key))),
                    reverse=True)
    heads: dict[tuple[int, int], list[int]] = {}
    for layer, head, component in ranked:
        heads.setdefault((layer, head), []).append(component)
    return [Candidate(layer, head, "ov", tuple(components[:MAX_COMPONENTS]),
                      evidence.get((layer, head), f"sender of the {kind} channel's pairs (below the channel threshold)"))
            for (layer, head), components in list(heads.items())[:limit]]


def _pair_components(record: Mapping, kind: str) -> list[tuple[float, tuple[int, int, int], str]]:
    """(z, (layer, head, component), receiver) of every sender component of the pairs examined for `kind`."""
    out = []
    for pair in record.get("pairs", []) if isinstance(record.get("pairs"), list) else []:
        if not isinstance(pair, Mapping) or pair.get("channel") != kind:
            continue
        try:
            layer, head = (int(x) for x in str(pair["sender"]).split("."))
            out += [(float(z), (layer, head, k), str(pair["receiver"])) for k, z in enumerate(pair["z"])
                    if z is not None]
        except (KeyError, TypeError, ValueError):
            continue
    return out


def edits_for(choices: Mapping[Candidate, tuple[int, float]]) -> list[Edit]:
    """One recipe edit per chosen head: its first k components, at its scale, in a stable order."""
    return [Edit(layer=c.layer, head=c.head, circuit=c.circuit, components=sorted(c.components[:k]), scale=float(scale))
            for c, (k, scale) in sorted(choices.items(), key=lambda item: (item[0].layer, item[0].head, item[0].circuit))
            if k > 0]


def whole_head_edits(heads: Sequence[tuple[int, int]], scale: float, d_head: int) -> list[Edit]:
    """Every OV component of each head scaled alike: the blunt baseline a channel edit must beat."""
    return [Edit(layer=layer, head=head, circuit="ov", components=list(range(d_head)), scale=scale)
            for layer, head in sorted(set(heads))]
