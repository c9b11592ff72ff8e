"""JSON that every parser accepts: Python's json writes NaN and Infinity as bare words, which are
not JSON (RFC 8259) and which strict readers (JavaScript, jq, the Hub) refuse."""

from __future__ import annotations

import json
import math


def finite_or_null(value: object) -> object:
    """A copy of `value` with every NaN or infinite float replaced by None (JSON null): a number
    that could not be computed (a mean over no prompts, say) is absent, not a fake number."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite_or_null(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(item) for item in value]
    return value


def dumps(value: object, **kwargs) -> str:
    """json.dumps of `value` with non-finite floats written as null (never as bare NaN)."""
    return json.dumps(finite_or_null(value), allow_nan=False, **kwargs)
