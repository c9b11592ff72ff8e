"""The largest count a user may ask for, for every count option of every command and every count
field of a recipe, in one place.

Each bound is far beyond any real use (the defaults are 16 to 200 prompts), and small enough that
a typo (an extra zero, or twenty) is refused in one line before anything is built, instead of
allocating memory until the machine gives up. The README's option lists quote these numbers.
"""

from __future__ import annotations

MAX_PROMPTS = 100_000  # prompts per N (and IOI prompts); data-check, tuning, held-out and traversal prompts
MAX_KL_TEXTS = 100_000  # bench --kl-texts (all shipped neutral texts are used when it is larger)
MAX_BATCH_SIZE = 4_096  # prompts per forward pass
MAX_TRIALS = 10_000  # search --trials (each trial scores the tuning prompts)
MAX_HEADS = 1_000  # search --heads, channels --top
MAX_SINGULAR_VALUES = 100_000  # inspect --top
MAX_DIMS = 16  # subspace --dims
MAX_GRID = 15  # subspace --grid: points per axis, up to 3 axes (15³ traversal points)
MAX_SEED = 2**32 - 1  # --seed and a recipe's seeds: numpy and Optuna take seeds 0..2³²−1


def digits_at_most(digits: str, maximum: int) -> int | None:
    """The decimal number `digits` if it is at most `maximum`, else None. A number is compared by
    its length before int() meets it: thousands of digits are refused at once, not converted."""
    digits = digits.lstrip("0") or "0"
    if len(digits) > len(str(maximum)):
        return None
    value = int(digits)
    return value if value <= maximum else None


def shown_number(digits: str) -> str:
    """A number as typed, cut short for an error line."""
    return digits if len(digits) <= 20 else digits[:20] + "…"
