"""Free-generation accuracy: what the model says, not only how it ranks the candidates.

Two forms of each prompt: the completion prompt itself, continued greedily for
COMPLETION_TOKENS tokens, and the prompt asked as a user turn in the model's own chat format
(tasks.answers.chat_messages, runtime.tokens.chat_prompt_ids), replied to greedily for
CHAT_TOKENS tokens. Either is right when the first list item the text names is the answer
(the rule, plural and capitalized forms included, is tasks.answers').
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

from th_edit.bench.scoring import PromptScore
from th_edit.runtime.generate import greedy_continuations
from th_edit.runtime.tokens import Tokenized, chat_prompt_ids, has_chat_template, pad_id, tokenize_prompts
from th_edit.tasks.answers import chat_messages, first_named
from th_edit.tasks.prompts import TaskPrompt

COMPLETION_TOKENS = 6  # the answer is the next word: a few tokens cover a multi-token spelling of it
CHAT_TOKENS = 24  # a chat reply may open with a phrase ("The last thing left was the ...")


def answers_right(tokenizer, prompts: Sequence[TaskPrompt], continuations: Sequence[Sequence[int]]) -> list[bool]:
    texts = tokenizer.batch_decode([list(c) for c in continuations], skip_special_tokens=True)
    return [first_named(text, p.candidates) == p.answer_position for p, text in zip(prompts, texts)]


def chat_encoded(tokenizer, prompts: Sequence[TaskPrompt], model: torch.nn.Module | None = None) -> list[list[int]]:
    return [chat_prompt_ids(tokenizer, chat_messages(p), model) for p in prompts]


def with_generation(model: torch.nn.Module, tokenizer, prompts: Sequence[TaskPrompt], scores: Sequence[PromptScore],
                    batch_size: int = 16, tokenized: Tokenized | None = None, chat: bool | None = None,
                    label: str = "") -> list[PromptScore]:
    """`scores` with generation_correct (and chat_correct: `chat` None means "where the tokenizer
    has a chat template, or the family a published turn format") filled in for `model` as it is now."""
    tokenized = tokenized or tokenize_prompts(tokenizer, prompts)
    pad = pad_id(tokenizer)
    completions = greedy_continuations(model, tokenizer, tokenized.encoded, COMPLETION_TOKENS, batch_size, pad,
                                       desc=f"generating{label}")
    right = answers_right(tokenizer, prompts, completions)
    chat_right: list[bool | None] = [None] * len(prompts)
    if chat or (chat is None and has_chat_template(tokenizer, model)):
        replies = greedy_continuations(model, tokenizer, chat_encoded(tokenizer, prompts, model), CHAT_TOKENS, batch_size, pad,
                                       desc=f"chat replies{label}")
        chat_right = list(answers_right(tokenizer, prompts, replies))
    return [dataclasses.replace(s, generation_correct=g, chat_correct=c) for s, g, c in zip(scores, right, chat_right)]
