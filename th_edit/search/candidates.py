"""Where a search's candidate heads come from: a channels.json record (checked against the model's
config before the model loads) or the search's own channel analysis."""

from __future__ import annotations

from pathlib import Path

from th_edit.arch import adapter_for
from th_edit.models import load_config, resolve
from th_edit.readers import read_json
from th_edit.recipe import Edit
from th_edit.search.space import Candidate, candidates_from_channels, check_channels_fit

# Heads per role of the channel analysis a search runs itself (without --channels): at least this
# many, more when --heads asks for more candidates.
FRESH_TOP = 5


def read_channels(channels_file: Path | None, model: str, kind: str, max_heads: int) -> object | None:
    """The --channels record, checked before the model loads: a damaged file, or another model's channels
    (from the config), is refused."""
    channels = read_json(channels_file) if channels_file is not None else None
    if channels is not None:
        check_channels_fit(channels, channels_file, model, adapter_for(load_config(resolve(model))).info(), kind, max_heads)
    return channels


def channel_candidates(session, kind: str, channels: object | None, seed: int,
                       max_heads: int) -> tuple[list[Candidate], list[Edit]]:
    """Candidate heads (and the channels' draft recipe, a baseline) from a channels.json record or a fresh analysis."""
    from th_edit.channels.find import ChannelSettings, draft_edits, find_channels

    if channels is not None:
        return candidates_from_channels(channels, kind, max_heads), draft_edits(channels)
    # Wider than `th-edit channels`' default (as many senders and movers as --heads asks for, at
    # least FRESH_TOP; every z-outlier whatever its share of the composition), weights and roles
    # only: the search itself is the test on data.
    settings = ChannelSettings(seed=seed, top=max(FRESH_TOP, max_heads), min_share=0.0, data_check=False)
    record = find_channels(session, (kind,), settings).as_dict()
    return candidates_from_channels(record, kind, max_heads), draft_edits(record)
