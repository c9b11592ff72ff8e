"""Which sender components and mover heads to analyze: from the command line or a channels.json.

    --components 20.0:1,20.5:0   OV component 1 of head 20.0 and component 0 of head 20.5
    --movers 23.3,25.1           heads 23.3 and 25.1
    --channels channels.json     `channels.inhibition` (sender components, in file order, each once)
                                 and `roles.mover` (mover heads, in file order)
"""

from __future__ import annotations

import re
from pathlib import Path

from th_edit.errors import UserError
from th_edit.heads import HeadId, parse_head
from th_edit.readers import read_json
from th_edit.subspace.basis import Component
from th_edit.subspace.survey import Head

_COMPONENT = re.compile(r"([0-9]+\.[0-9]+):([0-9]+)")


def parse_components(text: str, option: str = "--components") -> list[Component]:
    """'20.0:1,20.5:0' -> [(20, 0, 1), (20, 5, 0)] (layer.head:component, duplicates dropped)."""
    items = [part.strip() for part in text.split(",") if part.strip()]
    if not items:
        raise UserError(f"{option}: expected LAYER.HEAD:COMPONENT[,...], e.g. 20.0:1,20.5:0")
    parsed = []
    for item in items:
        match = _COMPONENT.fullmatch(item)
        if not match:
            raise UserError(f"{option}: '{item}' is not LAYER.HEAD:COMPONENT (e.g. 20.0:1)")
        head = parse_head(match.group(1))
        parsed.append((head.layer, head.head, int(match.group(2))))
    return list(dict.fromkeys(parsed))  # type: ignore[arg-type]


def parse_heads(text: str, option: str = "--movers") -> list[Head]:
    """'23.3,25.1' -> [(23, 3), (25, 1)] (duplicates dropped)."""
    items = [part.strip() for part in text.split(",") if part.strip()]
    if not items:
        raise UserError(f"{option}: expected LAYER.HEAD[,...], e.g. 23.3,25.1")
    parsed = []
    for item in items:
        try:
            parsed.append(parse_head(item))
        except UserError:
            raise UserError(f"{option}: '{item}' is not LAYER.HEAD (e.g. 23.3)") from None
    return list(dict.fromkeys(parsed))


def _integer(entry: dict, key: str, where: str) -> int:
    value = entry.get(key) if isinstance(entry, dict) else None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise UserError(f"{where}: '{key}' must be a non-negative integer")
    return value


def read_channels(path: Path) -> tuple[list[Component], list[Head]]:
    """Sender components of `channels.inhibition` and mover heads of `roles.mover`, in file order."""
    data = read_json(Path(path))
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object with 'channels' and 'roles'")
    channels = data.get("channels")
    inhibition = channels.get("inhibition") if isinstance(channels, dict) else None
    if not isinstance(inhibition, list) or not inhibition:
        raise UserError(f"{path}: 'channels.inhibition' must be a non-empty list")
    components = []
    for number, entry in enumerate(inhibition):
        sender = entry.get("sender") if isinstance(entry, dict) else None
        where = f"{path}: channels.inhibition[{number}].sender"
        if not isinstance(sender, dict):
            raise UserError(f"{where} is missing")
        components.append((_integer(sender, "layer", where), _integer(sender, "head", where),
                           _integer(sender, "component", where)))
    roles = data.get("roles")
    movers_field = roles.get("mover") if isinstance(roles, dict) else None
    if not isinstance(movers_field, list) or not movers_field:
        raise UserError(f"{path}: 'roles.mover' must be a non-empty list")
    movers = [HeadId(_integer(e, "layer", f"{path}: roles.mover[{i}]"), _integer(e, "head", f"{path}: roles.mover[{i}]"))
              for i, e in enumerate(movers_field)]
    return list(dict.fromkeys(components)), list(dict.fromkeys(movers))


def check_channel(adapter, components: list[Component], movers: list[Head], source: str) -> None:
    """Heads exist in the model, and every mover comes after the last sender layer."""
    for layer, head, k in components:
        if not (0 <= layer < adapter.n_layers and 0 <= head < adapter.n_heads):
            raise UserError(f"{source}: sender head {layer}.{head} does not exist (layers 0..{adapter.n_layers - 1}, "
                            f"heads 0..{adapter.n_heads - 1})")
        if k >= adapter.d_head:  # an OV matrix has at most d_head components
            raise UserError(f"{source}: component {layer}.{head}:{k} does not exist (head {layer}.{head} has OV "
                            f"components 0..{adapter.d_head - 1})")
    for layer, head in movers:
        if not (0 <= layer < adapter.n_layers and 0 <= head < adapter.n_heads):
            raise UserError(f"{source}: mover head {layer}.{head} does not exist (layers 0..{adapter.n_layers - 1}, "
                            f"heads 0..{adapter.n_heads - 1})")
    last_sender = max(layer for layer, _, _ in components)
    early = [f"{layer}.{head}" for layer, head in movers if layer <= last_sender]
    if early:
        raise UserError(f"{source}: mover head(s) {', '.join(early)} do not come after the last sender layer "
                        f"({last_sender}); the intervention sits after that layer")
