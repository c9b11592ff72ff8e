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


def candidates_from_channels(record: Mapping, kind: str = "inhibition", limit: int = 12) -> list[Candidate]:
    """Sender OV components of a `channels.json` channel (strongest first, each component once)."""
    channels = record.get("channels", {}) if isinstance(record, Mapping) else {}
    entries = channels.get(kind) if isinstance(channels, Mapping) else None
    if not isinstance(entries, list) or not entries:
        raise UserError(f"channels.json has no '{kind}' channel entries (channels.{kind} is missing or empty)")
    found: dict[tuple[int, int, int], Candidate] = {}
    for i, entry in enumerate(entries):
        try:
            sender, receiver = entry["sender"], entry["receiver"]
            key = (int(sender["layer"]), int(sender["head"]), int(sender["component"]))
            score = float(entry.get("weight_score", 0.0))
        except (KeyError, TypeError, ValueError):
            raise UserError(f"channels.json: channels.{kind}[{i}] is not a channel entry "
                            "(sender.layer/head/component and receiver expected)") from None
        if key not in found:
            found[key] = Candidate(*key[:2], "ov", key[2], evidence=(
                f"{kind} channel: sender {key[0]}.{key[1]} OV component {key[2]} -> receiver "
                f"{receiver.get('layer')}.{receiver.get('head')}, weight score {score:.3g}"))
    return list(found.values())[:limit]


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
