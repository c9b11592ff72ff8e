"""Neutral English text for measuring an edit's side effects (KL to the base model)."""

from __future__ import annotations

from importlib.resources import files


def neutral_prompts() -> list[str]:
    """The shipped prompts (th_edit/data/neutral.txt), one per non-empty line."""
    text = files("th_edit").joinpath("data/neutral.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]
