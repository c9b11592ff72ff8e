"""Evaluate many edits of one loaded model quickly: list recall, IOI and neutral-text KL.

What no trial changes is computed once: the tokenized, padded batches; the residual stream below the
lowest layer any trial may edit (`PrefixCache`); the unedited model's scores and its next-token
log-probabilities on the neutral texts (for the KL). A trial then runs only the layers it can change.
Results equal a plain forward pass of the edited model (tests check this).

Prompts and texts are split into a small "quick" part (a few prompts of every N, a few texts) and the
rest, so a trial can be judged cheaply first and only promising ones pay for the full set.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch

from th_edit import ui
from th_edit.bench.scoring import PromptScore, score_row
from th_edit.bench.side_effects import AGREEMENT_TOKENS
from th_edit.errors import UserError
from th_edit.runtime import CachedBatches, pad_id, tokenize_prompts
from th_edit.runtime.generate import greedy_continuations
from th_edit.search.objective import is_right
from th_edit.session import ComputedEdit, Session
from th_edit.tasks import registry
from th_edit.tasks.neutral import NeutralSet
from th_edit.tasks.prompts import TaskPrompt

# The unedited model's log-probs on the neutral texts are kept in memory (float32) up to this size.
KL_CACHE_LIMIT_BYTES = 3 * 2**30


@dataclass(frozen=True)
class TrialScores:
    """One edit on one prompt set: accuracy per laundry N, IOI accuracy, KL on the neutral texts."""

    laundry: dict[int, float]  # N -> accuracy by the search's objective (candidate or top-1, search.objective)
    ioi: float | None
    kl: float | None
    n_prompts: int
    logit_diff: float | None = None  # mean over laundry prompts: answer minus best other candidate
    # Share of the neutral chat prompts whose first greedy reply tokens are the unedited model's (None: not measured).
    chat_agreement: float | None = None

    @property
    def mean_laundry(self) -> float:
        return sum(self.laundry.values()) / len(self.laundry)

    def as_dict(self) -> dict[str, object]:
        return {"laundry_accuracy": {str(n): a for n, a in self.laundry.items()},
                "mean_laundry_accuracy": self.mean_laundry, "ioi_accuracy": self.ioi, "neutral_kl": self.kl,
                "n_prompts": self.n_prompts, "mean_laundry_logit_diff": self.logit_diff,
                "neutral_chat_agreement": self.chat_agreement}


Advance = Callable[[], object] | None  # a progress bar's step (th_edit.ui.bar), called once per batch run


class _PromptPart:
    """Some prompts, batched once; `start_at` caches the residual stream entering `layer`."""

    def __init__(self, session: Session, prompts: Sequence[TaskPrompt], batch_size: int):
        self.prompts = list(prompts)
        self.tokenized = tokenize_prompts(session.tokenizer, self.prompts, max_length=session.max_length)
        self.batches = CachedBatches(session.model, session.adapter, self.tokenized.encoded, batch_size,
                                     self.tokenized.pad_id, session.device)
        self.groups = self.batches.groups

    def start_at(self, layer: int, advance: Advance = None) -> None:
        self.cache = self.batches.from_layer(layer, advance)

    def scores(self, advance: Advance = None) -> list[PromptScore]:
        scores: list[PromptScore | None] = [None] * len(self.prompts)
        for b, group in enumerate(self.groups):
            last = self.cache.forward(b, logits_to_keep=1)[:, -1].float().cpu()
            for row, i in enumerate(group):
                scores[i] = score_row(last[row], *self.tokenized.targets[i])
            if advance is not None:
                advance()
        return scores  # type: ignore[return-value]


class _TextPart:
    """Neutral texts, batched once; `start_at` caches the residual stream entering `layer` and keeps
    the unedited model's log-probs at every real position."""

    def __init__(self, session: Session, encoded: Sequence[Sequence[int]], batch_size: int):
        vocabulary = session.model.get_output_embeddings().weight.shape[0]
        # A batch's full logits stay under 2**25 elements, as in th_edit.bench.side_effects.
        max_tokens = max(max(map(len, encoded)), 2**25 // vocabulary)
        self.batches = CachedBatches(session.model, session.adapter, encoded, batch_size, pad_id(session.tokenizer),
                                     session.device, max_tokens)
        self.groups = self.batches.groups

    def start_at(self, layer: int, advance: Advance = None) -> None:
        self.cache = self.batches.from_layer(layer, advance)
        self.base = []
        for b in range(len(self.groups)):
            self.base.append(self.log_probs(b))
            if advance is not None:
                advance()

    def log_probs(self, b: int) -> torch.Tensor:
        """log softmax of the current model's logits at the real (non-pad) positions of batch b."""
        logits = self.cache.forward(b)
        keep = self.cache.batches[b]["attention_mask"].reshape(-1).bool()
        return torch.log_softmax(logits.reshape(-1, logits.shape[-1])[keep].float(), dim=-1).cpu()

    def kl_sum(self, advance: Advance = None) -> tuple[float, int]:
        total, count = 0.0, 0
        for b, log_p in enumerate(self.base):
            # float32 terms, float64 sum: the KL of near-identical models stays exact to ~1e-6.
            total += float((log_p.exp() * (log_p - self.log_probs(b))).sum(dtype=torch.float64))
            count += log_p.shape[0]
            if advance is not None:
                advance()
        return total, count


def split_quick(prompts: Sequence[TaskPrompt], per_group: int) -> tuple[list[int], list[int]]:
    """Indices of the first `per_group` prompts of every (task, N) group, and of the rest (order kept)."""
    seen: dict[tuple[str, int], int] = {}
    quick, rest = [], []
    for i, prompt in enumerate(prompts):
        key = (prompt.task, prompt.n_items)
        seen[key] = seen.get(key, 0) + 1
        (quick if seen[key] <= per_group else rest).append(i)
    return quick, rest


class TrialEvaluator:
    """Scores for `prompts` (laundry and IOI) and the KL on `neutral`, for any edit of layers ≥ `layer`.

    `quick_prompts` per (task, N) and `quick_texts` neutral texts form the cheap first look.
    """

    def __init__(self, session: Session, prompts: Sequence[TaskPrompt], neutral: NeutralSet | None, layer: int,
                 batch_size: int = 16, quick_prompts: int = 10, quick_texts: int = 16, objective: str = "candidate",
                 chat: Sequence[Sequence[int]] | None = None):
        """`chat`: neutral chat prompts (token ids, in the model's chat format) on which a full scoring also
        measures greedy agreement with the unedited model (`chat_agreement`)."""
        self.session, self.layer, self.batch_size = session, layer, batch_size
        is_right(PromptScore(False, False, 0.0), objective)  # an unknown objective is refused here
        self.objective = objective
        self.prompts = list(prompts)
        vocabulary = session.model.get_output_embeddings().weight.shape[0]
        if neutral is not None and sum(map(len, neutral.encoded)) * vocabulary * 4 > KL_CACHE_LIMIT_BYTES:
            raise UserError(f"{len(neutral.encoded)} neutral texts are too many to cache for this vocabulary "
                            f"({vocabulary}): measure the KL on fewer")
        quick, rest = split_quick(prompts, quick_prompts)
        # Where each given prompt sits in quick + rest, to hand scores back in the given order.
        position = {index: i for i, index in enumerate(quick + rest)}
        self._order = [position[i] for i in range(len(prompts))]
        self.parts = [_PromptPart(session, [prompts[i] for i in part], batch_size) for part in (quick, rest) if part]
        self.texts = []
        if neutral is not None:
            encoded = neutral.encoded
            self.texts = [_TextPart(session, part, batch_size) for part in (encoded[:quick_texts], encoded[quick_texts:])
                          if part]
        # Every batch runs twice: once below `layer` (cached), once above it (the unedited model's scores or log-probs).
        batches = sum(len(part.groups) for part in [*self.parts, *self.texts])
        with torch.inference_mode(), ui.bar(batches * (2 if layer else 1), f"caching the unedited model below layer {layer}",
                                            unit="batch") as advance:
            for part in [*self.parts, *self.texts]:
                part.start_at(layer, advance)
            base_scores = [p.scores(advance) for p in self.parts]
        self.chat = [list(c) for c in chat or []]
        self.chat_base = self._replies("greedy chat replies (unedited)") if self.chat else []
        self.base = self._summarize(base_scores, 0.0 if self.texts else None)
        self.quick_base = self._summarize(base_scores[:1], 0.0 if self.texts else None)
        self.base_prompt_scores = self._in_order(base_scores)

    # ---- trials ----------------------------------------------------------------------------------

    def evaluate(self, edit: ComputedEdit | None, quick: bool = False, kl: bool = True, desc: str | None = None
                 ) -> TrialScores:
        """Scores with `edit` swapped in (None: the unedited model): the quick part only, or everything;
        with a progress bar named `desc` (none without one)."""
        if edit is not None:
            lowest = min(r.layer for r in edit.reports)
            if lowest < self.layer:
                raise ValueError(f"the edit touches layer {lowest}, below the cached layer {self.layer}")
        n_parts = 1 if quick else len(self.parts)
        n_texts = (1 if quick else len(self.texts)) if kl else 0
        with (torch.inference_mode(), (self.session.edited(edit) if edit is not None else nullcontext())):
            with self._bar(desc, n_parts, n_texts) as advance:
                scores = self._summarize([p.scores(advance) for p in self.parts[:n_parts]], self._kl_parts(n_texts, advance))
            if quick or not self.chat or edit is None:
                return scores
            return dataclasses.replace(scores, chat_agreement=self._agreement(desc and f"{desc}: chat replies"))

    def chat_agreement_of(self, edit: ComputedEdit, desc: str | None = None) -> float | None:
        """The greedy agreement on the chat prompts with `edit` swapped in (None without chat prompts)."""
        if not self.chat:
            return None
        with torch.inference_mode(), self.session.edited(edit):
            return self._agreement(desc)

    def _replies(self, desc: str | None) -> list[list[int]]:
        return greedy_continuations(self.session.model, self.session.tokenizer, self.chat, AGREEMENT_TOKENS,
                                    self.batch_size, pad_id(self.session.tokenizer), desc=desc)

    def _agreement(self, desc: str | None) -> float:
        """Share of the chat prompts whose greedy reply (the model as it is now) equals the unedited model's."""
        return sum(a == b for a, b in zip(self._replies(desc), self.chat_base)) / len(self.chat)

    def kl_of(self, edit: ComputedEdit, desc: str | None = None) -> float | None:
        """The KL on every neutral text with `edit` swapped in (no prompt is scored)."""
        with torch.inference_mode(), self.session.edited(edit), self._bar(desc, 0, len(self.texts)) as advance:
            return self._kl_parts(len(self.texts), advance)

    def prompt_scores(self, edit: ComputedEdit | None, desc: str | None = None) -> list[PromptScore]:
        """Every prompt's score with `edit` swapped in, in the order the prompts were given."""
        with (torch.inference_mode(), (self.session.edited(edit) if edit is not None else nullcontext()),
              self._bar(desc, len(self.parts), 0) as advance):
            return self._in_order([p.scores(advance) for p in self.parts])

    @contextmanager
    def _bar(self, desc: str | None, n_parts: int, n_texts: int) -> Iterator[Advance]:
        """A progress bar over the batches of the first `n_parts` prompt parts and `n_texts` text parts."""
        if desc is None:
            yield None
            return
        total = sum(len(p.groups) for p in self.parts[:n_parts]) + sum(len(t.groups) for t in self.texts[:n_texts])
        with ui.bar(total, desc, unit="batch") as advance:
            yield advance

    def _in_order(self, part_scores: list[list[PromptScore]]) -> list[PromptScore]:
        flat = [score for scores in part_scores for score in scores]
        return [flat[i] for i in self._order]

    def _kl_parts(self, n_texts: int, advance: Advance = None) -> float | None:
        if not n_texts or not self.texts:
            return None
        sums = [part.kl_sum(advance) for part in self.texts[:n_texts]]
        return sum(s for s, _ in sums) / sum(c for _, c in sums)

    def _summarize(self, part_scores: list[list[PromptScore]], kl: float | None) -> TrialScores:
        by_n: dict[int, list[bool]] = {}
        ioi: list[bool] = []
        diffs: list[float] = []
        for part, scores in zip(self.parts, part_scores):
            for prompt, score in zip(part.prompts, scores):
                guard = registry.get(prompt.task).guard  # IOI: kept, not improved — by the same measure
                bucket = ioi if guard else by_n.setdefault(prompt.n_items, [])
                bucket.append(is_right(score, self.objective))
                if not guard:
                    diffs.append(score.logit_diff)
        laundry = {n: sum(v) / len(v) for n, v in sorted(by_n.items())}
        return TrialScores(laundry, sum(ioi) / len(ioi) if ioi else None, kl, sum(map(len, by_n.values())) + len(ioi),
                           sum(diffs) / len(diffs) if diffs else None)
