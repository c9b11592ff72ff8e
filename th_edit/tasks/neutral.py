"""Neutral text for measuring an edit's side effects (KL to the base model).

Two kinds: short plain English texts (th_edit/data/neutral.txt) and, for tokenizers with a chat
template, short user/assistant exchanges formatted with that template (data/neutral_chat.jsonl):
most models people edit are chat models, and their chat format is where they are used.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib.resources import files


def neutral_prompts() -> list[str]:
    """The shipped plain prompts (th_edit/data/neutral.txt), one per non-empty line."""
    text = files("th_edit").joinpath("data/neutral.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def neutral_chats() -> list[list[dict[str, str]]]:
    """The shipped user/assistant exchanges as chat messages."""
    text = files("th_edit").joinpath("data/neutral_chat.jsonl").read_text(encoding="utf-8")
    exchanges = [json.loads(line) for line in text.splitlines() if line.strip()]
    return [[{"role": "user", "content": e["user"]}, {"role": "assistant", "content": e["assistant"]}]
            for e in exchanges]


def neutral_chat_questions() -> list[list[dict[str, str]]]:
    """The user turns of the shipped exchanges alone: prompts for the model's own replies."""
    return [chat[:1] for chat in neutral_chats()]


@dataclass(frozen=True)
class NeutralSet:
    """Token ids of the neutral texts: plain ones first, then chat-formatted ones."""

    encoded: list[list[int]]
    n_chat: int

    def limited(self, limit: int | None) -> NeutralSet:
        """At most `limit` texts, plain and chat-formatted ones in their present proportion."""
        if limit is None or limit >= len(self.encoded):
            return self
        n_plain = len(self.encoded) - self.n_chat
        n_chat = round(limit * self.n_chat / len(self.encoded))
        return NeutralSet(self.encoded[:limit - n_chat] + self.encoded[n_plain:n_plain + n_chat], n_chat)


def neutral_set(tokenizer, limit: int | None = None, chat: bool = True) -> NeutralSet:
    """The neutral texts tokenized for `tokenizer`. `limit` caps their number, keeping plain and
    chat texts in their shipped proportion (a smaller, faster side-effect measure)."""
    plain = tokenizer(neutral_prompts(), add_special_tokens=True)["input_ids"]
    chats = _chat_ids(tokenizer) if chat else []
    return NeutralSet([list(ids) for ids in plain + chats], len(chats)).limited(limit)


def _chat_ids(tokenizer) -> list[list[int]]:
    if not getattr(tokenizer, "chat_template", None):
        return []
    # The template adds the model's own special tokens (BOS included), so nothing more is added.
    encoded = []
    for messages in neutral_chats():
        ids = tokenizer.apply_chat_template(messages, tokenize=True)
        ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
        encoded.append([int(i) for i in ids])
    return encoded
