"""A few `general.*` values from a GGUF file's key-value header (license, languages), for the model card.

gguf's GGUFReader maps the whole file and parses every tensor's description (17 s for SmolLM2's
on a busy machine); the header's key-value pairs come first, so reading them alone is instant.
Layout (GGUF v2/v3, little-endian): magic, u32 version, u64 tensor count, u64 key-value count,
then per pair: key (u64 length + UTF-8), u32 value type, value. Best effort: a file that is not
what it should be gives {} (the card then says what it could not find), never an error.
"""

from __future__ import annotations

import struct
from collections.abc import Collection
from pathlib import Path
from typing import BinaryIO

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_MAX_ITEMS = 10_000_000  # more than any vocabulary: a larger count means a damaged header


class _Damaged(Exception):
    pass


def read_gguf_metadata(path: Path, keys: Collection[str]) -> dict[str, object]:
    """The values of `keys` found in the header of the GGUF file at `path` (strings, numbers, lists)."""
    found: dict[str, object] = {}
    try:
        with open(path, "rb") as f:
            if f.read(4) != b"GGUF" or _unpack(f, "<I") not in (2, 3):
                return {}
            _unpack(f, "<Q")  # tensor count
            for _ in range(min(_unpack(f, "<Q"), _MAX_ITEMS)):
                key = _string(f)
                wanted = key in keys
                value = _value(f, _unpack(f, "<I"), wanted)
                if wanted:
                    found[key] = value
                    if len(found) == len(keys):
                        break
    except (OSError, _Damaged, struct.error, UnicodeDecodeError):
        return found
    return found


def _unpack(f: BinaryIO, fmt: str):
    size = struct.calcsize(fmt)
    data = f.read(size)
    if len(data) != size:
        raise _Damaged
    return struct.unpack(fmt, data)[0]


def _string(f: BinaryIO, keep: bool = True) -> str | None:
    length = _unpack(f, "<Q")
    if length > 1 << 24:
        raise _Damaged
    if not keep:
        f.seek(length, 1)
        return None
    data = f.read(length)
    if len(data) != length:
        raise _Damaged
    return data.decode("utf-8")


def _value(f: BinaryIO, kind: int, keep: bool):
    if kind in _SCALARS:
        return _unpack(f, _SCALARS[kind])
    if kind == _STRING:
        return _string(f, keep)
    if kind == _ARRAY:
        item_kind, count = _unpack(f, "<I"), _unpack(f, "<Q")
        if count > _MAX_ITEMS:
            raise _Damaged
        if not keep and item_kind in _SCALARS:
            f.seek(count * struct.calcsize(_SCALARS[item_kind]), 1)
            return None
        items = [_value(f, item_kind, keep) for _ in range(count)]
        return items if keep else None
    raise _Damaged
