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
from th_edit.tasks.answers import chat_messages, named_kind
from th_edit.tasks.prompts import TaskPrompt

COMPLETION_TOKENS = 6  # the answer is the next word: a few tokens cover a multi-token spelling of it
CHAT_TOKENS = 24  # a chat reply may open with a phrase ("The last thing left was the ...")


def decoded(tokenizer, continuations: Sequence[Sequence[int]]) -> list[str]:
    return tokenizer.batch_decode([list(c) for c in continuations], skip_special_tokens=True)


def chat_encoded(tokenizer, prompts: Sequence[TaskPrompt], model: torch.nn.Module | None = None) -> list[list[int]]:
    return [chat_prompt_ids(tokenizer, chat_messages(p), model) for p in prompts]


def with_generation(model: torch.nn.Module, tokenizer, prompts: Sequence[TaskPrompt], scores: Sequence[PromptScore],
                    batch_size: int = 16, tokenized: Tokenized | None = None, chat: bool | None = None,
                    label: str = "") -> list[PromptScore]:
    """`scores` with the generation fields (and the chat ones: `chat` None means "where the tokenizer
    has a chat template, or the family a published turn format") filled in for `model` as it is now:
    the decoded text, what it names first (tasks.answers.named_kind) and whether that is the answer."""
    tokenized = tokenized or tokenize_prompts(tokenizer, prompts)
    pad = pad_id(tokenizer)
    completions = decoded(tokenizer, greedy_continuations(model, tokenizer, tokenized.encoded, COMPLETION_TOKENS,
                                                          batch_size, pad, desc=f"generating{label}"))
    scores = _with_texts(scores, prompts, completions, "generation")
    if chat or (chat is None and has_chat_template(tokenizer, model)):
        replies = decoded(tokenizer, greedy_continuations(model, tokenizer, chat_encoded(tokenizer, prompts, model),
                                                          CHAT_TOKENS, batch_size, pad, desc=f"chat replies{label}"))
        scores = _with_texts(scores, prompts, replies, "chat")
    return scores


def _with_texts(scores: Sequence[PromptScore], prompts: Sequence[TaskPrompt], texts: Sequence[str],
                metric: str) -> list[PromptScore]:
    kinds = [named_kind(text, p) for text, p in zip(texts, prompts)]
    return [dataclasses.replace(s, **{f"{metric}_text": text, f"{metric}_named": kind, f"{metric}_correct": kind == "answer"})
            for s, text, kind in zip(scores, texts, kinds)]


def generation_examples(prompts: Sequence[TaskPrompt], sides: dict[str, Sequence[PromptScore]]) -> list[dict[str, object]]:
    """What the model says, to read beside the counts: the first prompt of each (task, N), its chat question,
    and per side ("before", "after", or "model") the completion and the chat reply with what each names first."""
    seen: set[tuple[str, int | None]] = set()
    examples = []
    for i, prompt in enumerate(prompts):
        key = (prompt.task, prompt.n_items)
        if key in seen or any(scores[i].generation_text is None for scores in sides.values()):
            continue
        seen.add(key)
        examples.append({
            "task": prompt.task, "n_items": prompt.n_items, "prompt": prompt.prompt,
            "chat_question": chat_messages(prompt)[0]["content"], "answer": prompt.answer,
            **{side: {"completion": scores[i].generation_text, "completion_names": scores[i].generation_named,
                      "chat": scores[i].chat_text, "chat_names": scores[i].chat_named}
               for side, scores in sides.items()},
        })
    return examples
