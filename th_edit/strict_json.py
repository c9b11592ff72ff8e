"""JSON that every parser accepts: Python's json writes NaN and Infinity as bare words, which are
not JSON (RFC 8259) and which strict readers (JavaScript, jq, the Hub) refuse.

Every JSON text th-edit writes or prints goes through `dumps` (tests/test_data_safety.py fails on
a json.dump(s) anywhere else in the package), so the rule lives in one place."""

from __future__ import annotations

import json
import math
from typing import Literal


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


def dumps(value: object, *, non_finite: Literal["null", "refuse"] = "null", **kwargs) -> str:
    """json.dumps of `value`, never with a bare NaN: a non-finite float is written as null, or with
    non_finite="refuse" raises ValueError (for a file copied from a base model, whose NaN is damage
    to report, not a number th-edit failed to compute)."""
    return json.dumps(finite_or_null(value) if non_finite == "null" else value, allow_nan=False, **kwargs)


def shown(value: object) -> str:
    """`value` as it was written in a JSON input, for an error message quoting it: a NaN the user
    wrote is shown as NaN. Never for output."""
    return json.dumps(value, ensure_ascii=False)
