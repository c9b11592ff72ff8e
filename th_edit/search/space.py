"""What a search may edit: candidate singular components, and how a trial's choices become a recipe."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from th_edit.errors import UserError
from th_edit.recipe import Edit


@dataclass(frozen=True)
class Candidate:
    """One component a search may rescale, with the evidence that put it on the list."""

    layer: int
    head: int
    circuit: str  # "ov" | "qk"
    component: int
    evidence: str = ""

    @property
    def name(self) -> str:
        return f"{self.layer}.{self.head}.{self.circuit}{self.component}"


def candidates_from_channels(record: Mapping, kind: str = "inhibition", limit: int = 16) -> list[Candidate]:
    """Sender OV components of a `channels.json` channel: the reported ones (z above the threshold),
    strongest first, then — up to `limit` — the next best by z among the pairs examined for that
    channel, so the search can also try components just under the threshold. Each component once."""
    channels = record.get("channels", {}) if isinstance(record, Mapping) else {}
    entries = channels.get(kind) if isinstance(channels, Mapping) else None
    entries = entries if isinstance(entries, list) else []
    pair_components = _pair_components(record, kind)
    if not entries and not pair_components:
        raise UserError(f"channels.json has no '{kind}' channel: neither channels.{kind} entries nor pairs examined for it")
    found: dict[tuple[int, int, int], Candidate] = {}
    for i, entry in enumerate(entries):
        try:
            sender, receiver = entry["sender"], entry["receiver"]
            key = (int(sender["layer"]), int(sender["head"]), int(sender["component"]))
            score, z = float(entry.get("weight_score", 0.0)), float(entry.get("z", 0.0))
        except (KeyError, TypeError, ValueError):
            raise UserError(f"channels.json: channels.{kind}[{i}] is not a channel entry "
                            "(sender.layer/head/component and receiver expected)") from None
        if key not in found:
            found[key] = Candidate(*key[:2], "ov", key[2], evidence=(
                f"{kind} channel: sender {key[0]}.{key[1]} OV component {key[2]} -> receiver "
                f"{receiver.get('layer')}.{receiver.get('head')}, weight score {score:.3g}, z {z:+.1f}"))
    for z, key, receiver in sorted(pair_components, reverse=True):
        if len(found) >= limit:
            break
        found.setdefault(key, Candidate(*key[:2], "ov", key[2], evidence=(
            f"below the channel threshold: sender {key[0]}.{key[1]} OV component {key[2]} -> receiver {receiver}, "
            f"z {z:+.1f}")))
    return list(found.values())[:limit]


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


def edits_for(choices: Mapping[Candidate, float]) -> list[Edit]:
    """One recipe edit per (head, circuit, scale), components grouped, in a stable order."""
    grouped: dict[tuple[int, int, str, float], list[int]] = {}
    for candidate, scale in sorted(choices.items(), key=lambda item: (item[0].layer, item[0].head, item[0].circuit,
                                                                       item[0].component)):
        grouped.setdefault((candidate.layer, candidate.head, candidate.circuit, float(scale)), []).append(candidate.component)
    return [Edit(layer=layer, head=head, circuit=circuit, components=components, scale=scale)
            for (layer, head, circuit, scale), components in grouped.items()]


def whole_head_edits(heads: Sequence[tuple[int, int]], scale: float, d_head: int) -> list[Edit]:
    """Every OV component of each head scaled alike: the blunt baseline a channel edit must beat."""
    return [Edit(layer=layer, head=head, circuit="ov", components=list(range(d_head)), scale=scale)
            for layer, head in sorted(set(heads))]
