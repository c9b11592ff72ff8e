"""Tokenize a prompt set once and check that it can be scored, before any model is loaded."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from th_edit import ui
from th_edit.errors import UserError
from th_edit.tasks.prompts import TaskPrompt


def pad_id(tokenizer) -> int:
    for token_id in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return token_id
    return 0  # any id will do: padded positions are masked out


def encode(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    # add_special_tokens: models trained with a BOS (Gemma) need it; others add nothing.
    return tokenizer(list(texts), add_special_tokens=True)["input_ids"]


def _where(prompt: TaskPrompt, number: int, source: str | Path | None) -> str:
    """Where a prompt came from, for error messages: its file line if read from `source`."""
    if source is not None and prompt.line is not None:
        return f"{source} line {prompt.line}"
    return f"prompt {number}"


def candidate_token_ids(tokenizer, prompts: Sequence[TaskPrompt],
                        source: str | Path | None = None) -> list[tuple[list[int], int]]:
    """Per prompt: the first token id of each candidate, and the answer's index among them.

    Needs only the tokenizer, so a bad prompt file is refused before any model is loaded; errors
    name `source` and the prompt's file line when the prompts were read from a file.
    """
    first_token: dict[str, int] = {}
    multi_token = 0
    result = []
    for number, prompt in enumerate(prompts, start=1):
        for candidate in prompt.candidates:
            if candidate not in first_token:
                ids = tokenizer.encode(candidate, add_special_tokens=False)
                if not ids:
                    raise UserError(f"{_where(prompt, number, source)}: candidate {candidate!r} encodes to no tokens")
                multi_token += len(ids) > 1
                first_token[candidate] = ids[0]
        ids = [first_token[c] for c in prompt.candidates]
        if len(set(ids)) != len(ids):
            raise UserError(
                f"{_where(prompt, number, source)}: two candidates start with the same token, so they cannot be "
                f"told apart ({', '.join(repr(c) for c in prompt.candidates)})"
            )
        result.append((ids, prompt.candidates.index(prompt.answer)))
    if multi_token:
        ui.warn(f"{multi_token} candidate(s) are several tokens for this tokenizer: only their first token is scored")
    return result


@dataclass(frozen=True)
class Tokenized:
    """A prompt set tokenized once, reused for every model scored on it."""

    encoded: list[list[int]]
    targets: list[tuple[list[int], int]]  # per prompt: candidate first-token ids, answer index
    pad_id: int


def tokenize_prompts(tokenizer, prompts: Sequence[TaskPrompt], source: str | Path | None = None,
                     max_length: int | None = None) -> Tokenized:
    """Tokenize and check `prompts` (see candidate_token_ids; `source` is the file they came from).

    `max_length`: the model's context. A longer prompt is refused (naming it) rather than scored
    for minutes on positions the model was never trained on.
    """
    encoded = encode(tokenizer, [p.prompt for p in prompts])
    if max_length is not None:
        for number, (prompt, ids) in enumerate(zip(prompts, encoded), start=1):
            if len(ids) > max_length:
                raise UserError(f"{_where(prompt, number, source)}: the prompt is {len(ids)} tokens long, more than "
                                f"the model's context of {max_length}")
    return Tokenized(encoded, candidate_token_ids(tokenizer, prompts, source), pad_id(tokenizer))


def chat_template(tokenizer, model=None) -> str | None:
    """The template chat prompts are built with: the tokenizer's own, else (for a tokenizer that
    carries none: a base checkpoint, a GGUF without one) the published turn format of `model`'s
    family (th_edit.arch), else None."""
    own = getattr(tokenizer, "chat_template", None)
    if own:
        return own
    from th_edit.arch import published_chat_template

    config = getattr(model, "config", None)
    return published_chat_template(getattr(config, "model_type", None)) if config is not None else None


def has_chat_template(tokenizer, model=None) -> bool:
    return chat_template(tokenizer, model) is not None


def chat_prompt_ids(tokenizer, messages: Sequence[dict[str, str]], model=None) -> list[int]:
    """`messages` in the model's own chat format, ending where the assistant's reply starts:
    tokenizer.apply_chat_template with add_generation_prompt=True, exactly as transformers does it
    (the template adds the model's special tokens, BOS included). A tokenizer without a template
    uses the published turn format of `model`'s family (chat_template); with neither, the
    prompts are refused in one line rather than given a guessed format."""
    own = getattr(tokenizer, "chat_template", None)
    template = None if own else chat_template(tokenizer, model)
    if not own and template is None:
        raise UserError("the tokenizer has no chat template and its family publishes none th-edit knows, so "
                        "chat-formatted prompts cannot be built for this model")
    ids = tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=True,
                                        **({"chat_template": template} if template else {}))
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    return [int(i) for i in ids]
