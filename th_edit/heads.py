"""A query head, `layer.head` (0-based, as in recipes and the CLI): one type and one parser for
every package (channels, subspace, search)."""

from __future__ import annotations

import re
from typing import NamedTuple

from th_edit.errors import UserError

_HEAD = re.compile(r"([0-9]+)\.([0-9]+)")


class HeadId(NamedTuple):
    """A query head; a tuple (layer, head), so it unpacks, sorts and hashes like one."""

    layer: int
    head: int

    def __str__(self) -> str:
        return f"{self.layer}.{self.head}"


def parse_head(text: str) -> HeadId:
    """`"20.3"` → HeadId(20, 3); a UserError naming the text otherwise."""
    match = _HEAD.fullmatch(text.strip())
    if not match:
        raise UserError(f"'{text}' is not a head: write layer.head, e.g. 20.3")
    return HeadId(int(match.group(1)), int(match.group(2)))
