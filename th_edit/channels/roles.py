"""Head roles from data (docs/method.md#roles-from-data): which heads do what, read off attention on generated prompts.

    m = th_edit.load("smollm2-135m")
    roles = repeated_roles(m, n_sequences=50)      # previous_token, duplicate_token, induction
    roles = ioi_roles(m, n_prompts=50)             # s_inhibition, name_mover, negative_mover, copy
    roles = laundry_roles(m, n_items=[3, 4, 5])    # inhibition, mover, negative_mover, copy
    print(roles["name_mover"])                     # the top heads; .as_dict() for JSON

Every role is a `RoleRanking`: all heads (or those the role admits), best first, each with its
mean score, a 95% interval over prompts (mean ± 1.96 sd/√n, `stats.mean_interval`) and n.

Attention scores (the attention weight, after softmax, from a query token to a key token):
* repeated random tokens (`tasks.repeated`: prefix + block + block), at each second-block
  position t (whose token also sits at t − half): previous_token t → t−1, duplicate_token
  t → t−half (the earlier occurrence), induction t → t−half+1 (the token after it); averaged
  over the second block per sequence, the interval is over sequences.
* IOI, from END (the last token): s_inhibition END → S2; name_mover and negative_mover END → IO.
* laundry, from END: inhibition END → the second mentions of the handled items (averaged over
  them); mover and negative_mover END → the answer's (only) mention.
Mentions are located in the text (`tasks.mentions`); prompts whose mentions are ambiguous are
skipped and counted (`RoleRanking.skipped`). Attention is the model's own (eager implementation,
switched on only while recording): a sliding-window layer (Gemma 3) gives 0 to keys outside its
window. Only the query rows needed are kept (END for the tasks), on the CPU.

Copy score (`copy_scores`): does a head's OV write a candidate token's own logit? For each
candidate token n (first token of each candidate, leading space included) and head h of layer l:
    x̃_n = norm_l(E[n])                  E: the token embedding; norm_l: layer l's input norm
                                        without its weight (x̃ of docs/method.md#folding-norms, so Gemma's √d scale
                                        and the norm weight, folded into W_V^eff, are accounted for)
    y   = x̃_n W_V^eff W_O^eff           the head's effective OV (Session.weights; Gemma's
                                        post-attention norm weight is folded into W_O^eff)
    ℓ   = (ñ(y) ⊙ g_final) W_Uᵀ          logits: ñ the final norm's normalization (LayerNorm: with
                                        mean removal), g_final its weight (Gemma: 1 + γ), W_U the
                                        unembedding rows of the candidate tokens (adapter ends)
    z_n = (ℓ[n] − mean_{m≠n} ℓ[m]) / sd_{m≠n} ℓ[m]
The head's copy score is the mean of z_n over the distinct candidate tokens (interval and n over
those tokens): > 0 copies the attended name into its own logit, < 0 suppresses it. Biases,
position embeddings (GPT-2), the MLPs and any logit soft-capping are left out: this reads the
weights, not a forward pass. z is scale-free, so only the directions of x̃, y and ℓ matter.
`name_mover`/`mover` rank heads with copy > 0 by attention, `negative_mover` those with copy < 0;
`copy` ranks every head by its copy score.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from th_edit import hooks, ui
from th_edit.errors import UserError
from th_edit.runtime import batched, candidate_token_ids, pad_id
from th_edit.session import Session
from th_edit.stats import mean_interval
from th_edit.tasks import registry
from th_edit.tasks.ioi import IOI
from th_edit.tasks.laundry import LAUNDRY
from th_edit.tasks.mentions import Mentions, locate_mentions
from th_edit.tasks.prompts import TaskPrompt
from th_edit.tasks.repeated import RepeatedSequence, generate_repeated

ROLES: dict[str, str] = {
    "previous_token": "repeated random tokens: attention t → t−1, second block",
    "duplicate_token": "repeated random tokens: attention t → the earlier occurrence of its token",
    "induction": "repeated random tokens: attention t → the token after the earlier occurrence of its token",
    "s_inhibition": "IOI: attention END → S2",
    "name_mover": "IOI: attention END → IO, heads with a positive copy score",
    "negative_mover": "attention END → the answer, heads with a negative copy score",
    "inhibition": "laundry: attention END → second mentions of the handled items (their mean)",
    "mover": "laundry: attention END → the answer, heads with a positive copy score",
    "copy": "copy score: z of a candidate token's own logit through the head's OV, over candidate tokens",
}


@dataclass(frozen=True)
class CopyScore:
    """A head's copy score: mean z over `n` candidate tokens, with its 95% interval."""

    mean: float
    low: float
    high: float
    n: int

    def as_dict(self) -> dict[str, float | int]:
        return {"mean": self.mean, "low": self.low, "high": self.high, "n": self.n}


@dataclass(frozen=True)
class HeadScore:
    """One head's score for a role: the mean over `n` prompts and its 95% interval."""

    layer: int
    head: int
    mean: float
    low: float
    high: float
    n: int
    copy: CopyScore | None = None

    @property
    def name(self) -> str:
        return f"{self.layer}.{self.head}"

    def as_dict(self) -> dict[str, object]:
        return {"layer": self.layer, "head": self.head, "mean": self.mean, "low": self.low, "high": self.high,
                "n": self.n, "copy": None if self.copy is None else self.copy.as_dict()}


@dataclass(frozen=True)
class RoleRanking:
    """Heads ranked for one role, best first; `setup` says what they were measured on."""

    role: str
    heads: tuple[HeadScore, ...]
    setup: dict[str, object] = field(default_factory=dict)

    @property
    def description(self) -> str:
        return ROLES[self.role]

    @property
    def skipped(self) -> int:
        """Prompts left out because their mentions were ambiguous."""
        return int(self.setup.get("skipped", 0))  # type: ignore[call-overload]

    def top(self, k: int = 5) -> list[HeadScore]:
        return list(self.heads[:k])

    def as_dict(self, top: int | None = None) -> dict[str, object]:
        heads = self.heads if top is None else self.heads[:top]
        return {"role": self.role, "description": self.description, "setup": dict(self.setup),
                "heads": [h.as_dict() for h in heads]}

    def __str__(self) -> str:
        rows = [[h.name, f"{h.mean:.3f}", f"[{h.low:.3f}, {h.high:.3f}]", str(h.n),
                 "" if h.copy is None else f"{h.copy.mean:+.2f}"] for h in self.top(10)]
        lines = ui.table(["head", "score", "95% interval", "n", "copy"], rows)
        return "\n".join([f"{self.role}: {self.description}", *lines])


# ----------------------------------------------------------------------------------------------
# Reading attention, batched like the benchmark

Consume = Callable[[int, torch.Tensor], None]


def record_attention(session: Session, sequences: Sequence[Sequence[int]], positions: hooks.Positions,
                     consume: Consume, batch_size: int = 16, desc: str = "attention") -> None:
    """Run every sequence (length-sorted batches, left-padded) and call consume(index, pattern)
    with its attention pattern [layers, heads, queries, keys], the queries at `positions` (an
    index into the padded batch: −1, the last token, is every sequence's END) and the padding
    columns removed, so key column p is the sequence's own token p."""
    if batch_size < 1:
        raise UserError(f"batch size must be at least 1, not {batch_size}")
    model, adapter = session.model, session.adapter
    pad = pad_id(_tokenizer(session))
    with torch.inference_mode(), hooks.recording(model, adapter, attention=True, positions=positions) as record:
        for indices, batch in batched(sequences, batch_size, pad, session.device, desc=desc):
            model(**batch, logits_to_keep=1)  # only attention is read: skip the full-vocabulary logits
            pattern = torch.stack([record.attention[layer].pop() for layer in range(adapter.n_layers)], dim=1)
            width = batch["input_ids"].shape[1]
            for row, index in enumerate(indices):
                consume(index, pattern[row, ..., width - len(sequences[index]):])


def _tokenizer(session: Session):
    if session.tokenizer is None:
        raise UserError(f"{session.reference} has no tokenizer: load it with th_edit.load(...) or pass one to Session")
    return session.tokenizer


def _check_lengths(session: Session, sequences: Sequence[Sequence[int]]) -> None:
    limit = session.max_length
    longest = max(len(s) for s in sequences)
    if limit is not None and longest > limit:
        raise UserError(f"a prompt is {longest} tokens long, more than the model's context of {limit}")


# ----------------------------------------------------------------------------------------------
# Rankings


def rank_heads(role: str, values: torch.Tensor, setup: dict[str, object], copy: dict[tuple[int, int], CopyScore] | None = None,
               admit: Callable[[CopyScore | None], bool] | None = None) -> RoleRanking:
    """Rank heads by their mean over prompts of `values` [prompts, layers, heads]; `admit`
    filters heads by their copy score."""
    n, layers, heads = values.shape
    scores = []
    for layer in range(layers):
        for head in range(heads):
            head_copy = None if copy is None else copy[(layer, head)]
            if admit is not None and not admit(head_copy):
                continue
            mean, low, high = mean_interval(values[:, layer, head].tolist())
            scores.append(HeadScore(layer, head, mean, low, high, n, head_copy))
    scores.sort(key=lambda s: (-s.mean, s.layer, s.head))
    return RoleRanking(role, tuple(scores), setup)


def _copy_ranking(copy: dict[tuple[int, int], CopyScore], setup: dict[str, object]) -> RoleRanking:
    scores = [HeadScore(layer, head, c.mean, c.low, c.high, c.n, c) for (layer, head), c in copy.items()]
    scores.sort(key=lambda s: (-s.mean, s.layer, s.head))
    return RoleRanking("copy", tuple(scores), setup)


def _mover_rankings(prefix: str, values: torch.Tensor, copy: dict[tuple[int, int], CopyScore],
                    setup: dict[str, object]) -> dict[str, RoleRanking]:
    return {
        prefix: rank_heads(prefix, values, setup, copy, admit=lambda c: c is not None and c.mean > 0),
        "negative_mover": rank_heads("negative_mover", values, setup, copy, admit=lambda c: c is not None and c.mean < 0),
        "copy": _copy_ranking(copy, setup),
    }


# ----------------------------------------------------------------------------------------------
# Copy scores (weights only)


def copy_scores(session: Session, token_ids: Sequence[int]) -> dict[tuple[int, int], CopyScore]:
    """Every head's copy score over the distinct `token_ids` (see the module docstring)."""
    adapter, source = session.adapter, session.parameters
    ids = torch.tensor(sorted(set(int(i) for i in token_ids)))
    if len(ids) < 3:
        raise UserError(f"copy scores need at least 3 distinct candidate tokens, the prompts have {len(ids)}")
    embedded = source.get(adapter.embedding_param())[ids].double()  # [N, d]
    unembed = adapter.unembedding(source)[ids].double()  # [N, d]
    final = adapter.final_norm()
    final_gain = final.gain(source, torch.float64)
    off_diagonal = ~torch.eye(len(ids), dtype=torch.bool)
    scores: dict[tuple[int, int], CopyScore] = {}
    for layer in ui.progress(range(adapter.n_layers), desc="copy scores", unit="layer"):
        weights = session.weights(layer)
        x = adapter.normalize(embedded, layer)
        written = torch.einsum("nd,hde,hef->hnf", x, weights.W_V, weights.W_O)  # [H, N, d]
        logits = (final.normalize(written) * final_gain) @ unembed.T  # [H, N inputs, N candidate logits]
        own = logits.diagonal(dim1=-2, dim2=-1)  # [H, N]
        others = logits[:, off_diagonal].reshape(adapter.n_heads, len(ids), len(ids) - 1)
        spread = others.std(-1)
        # A head that writes nothing (all logits equal) copies nothing: z = 0, not 0/0.
        z = torch.where(spread > 0, (own - others.mean(-1)) / spread.clamp_min(torch.finfo(torch.float64).tiny), 0.0)
        for head in range(adapter.n_heads):
            scores[(layer, head)] = CopyScore(*mean_interval(z[head].tolist()), n=len(ids))
    return scores


def _candidate_tokens(session: Session, prompts: Sequence[TaskPrompt]) -> list[int]:
    """First token of every candidate of every prompt (as the benchmark scores them)."""
    return [i for ids, _ in candidate_token_ids(_tokenizer(session), prompts) for i in ids]


# ----------------------------------------------------------------------------------------------
# Prompt families


def repeated_roles(session: Session, n_sequences: int = 50, half_length: int = 20, seed: int = 0,
                   batch_size: int = 16, sequences: Sequence[RepeatedSequence] | None = None) -> dict[str, RoleRanking]:
    """previous_token, duplicate_token and induction on repeated random-token sequences."""
    tokenizer = _tokenizer(session)
    generated = sequences is None
    if sequences is None:
        sequences = generate_repeated(tokenizer, n_sequences, half_length, seed,
                                      vocab_size=int(session.model.config.vocab_size))
    sequences = list(sequences)
    if len({(len(s.ids), s.prefix, s.half) for s in sequences}) != 1:
        raise ValueError("repeated sequences must share one length, prefix and block length")
    _check_lengths(session, [s.ids for s in sequences])
    queries = torch.tensor(list(sequences[0].second_half()))
    half = sequences[0].half
    layers, heads = session.adapter.n_layers, session.adapter.n_heads
    values = {role: torch.zeros(len(sequences), layers, heads) for role in ("previous_token", "duplicate_token", "induction")}

    def consume(index: int, pattern: torch.Tensor) -> None:  # pattern: [L, H, queries, keys]
        for role, back in (("previous_token", 1), ("duplicate_token", half), ("induction", half - 1)):
            keys = (queries - back).expand(layers, heads, -1).unsqueeze(-1)
            values[role][index] = pattern.gather(-1, keys).squeeze(-1).mean(-1)

    record_attention(session, [s.ids for s in sequences], queries.tolist(), consume, batch_size, "repeated tokens")
    setup = {"task": "repeated", "sequences": len(sequences), "half_length": half, "prefix": sequences[0].prefix,
             "seed": seed if generated else None}
    return {role: rank_heads(role, v, setup) for role, v in values.items()}


def _located(session: Session, prompts: Sequence[TaskPrompt], task: str) -> tuple[list[tuple[int, Mentions]], int]:
    if not prompts:
        raise UserError(f"no {task} prompts to read roles from")
    located, skipped = locate_mentions(_tokenizer(session), prompts)
    for reason, count in skipped.items():
        ui.warn(f"{count} {task} prompt(s) skipped: {reason}")
    if not located:
        raise UserError(f"every {task} prompt was skipped: their mentions are ambiguous for this tokenizer")
    _check_lengths(session, [m.ids for _, m in located])
    return located, sum(skipped.values())


def _end_values(session: Session, located: list[tuple[int, Mentions]], readers: dict[str, Callable[[Mentions], list[int]]],
                batch_size: int, desc: str) -> dict[str, torch.Tensor]:
    """Per role: attention END → the mean over the key positions `readers[role](mentions)` gives,
    [prompts, layers, heads]."""
    layers, heads = session.adapter.n_layers, session.adapter.n_heads
    values = {role: torch.zeros(len(located), layers, heads) for role in readers}

    def consume(index: int, pattern: torch.Tensor) -> None:  # pattern: [L, H, 1, keys]
        mentions = located[index][1]
        for role, keys in readers.items():
            values[role][index] = pattern[:, :, 0, keys(mentions)].mean(-1)

    record_attention(session, [m.ids for _, m in located], -1, consume, batch_size, desc)
    return values


def task_roles(session: Session, task: str, n_items: Sequence[int] = (3, 4, 5), n_prompts: int = 20, seed: int = 0,
               batch_size: int = 16, prompts: Sequence[TaskPrompt] | None = None) -> dict[str, RoleRanking]:
    """The inhibition and mover roles (named as `task` names them, registry.Task.role_names),
    negative_mover and copy on `task`'s prompts (`n_prompts` per N generated, or the task's prompts
    among `prompts`). Inhibition: END → the second mentions of the repeated candidates; movers:
    END → the answer's only mention."""
    spec = registry.get(task)
    generated = prompts is None
    if prompts is None:
        if n_prompts < 1:
            raise UserError(f"the number of prompts must be at least 1, not {n_prompts}")
        prompts = spec.prompts(_tokenizer(session), n_items, n_prompts, seed)
    prompts = [p for p in prompts if p.task == task]
    located, skipped = _located(session, prompts, task)
    values = _end_values(session, located, {"inhibition": lambda m: m.repeated_second, "answer": lambda m: [m.answer_first]},
                         batch_size, f"{task} attention")
    copy = copy_scores(session, _candidate_tokens(session, [prompts[i] for i, _ in located]))
    setup: dict[str, object] = {"task": task, "prompts": len(located), "skipped": skipped,
                                "seed": seed if generated else None}
    if spec.list_recall:
        setup["n_items"] = sorted({prompts[i].n_items for i, _ in located})
    inhibition = spec.role_names["inhibition"]
    return {inhibition: rank_heads(inhibition, values["inhibition"], setup),
            **_mover_rankings(spec.role_names["mover"], values["answer"], copy, setup)}


def ioi_roles(session: Session, n_prompts: int = 50, seed: int = 0, batch_size: int = 16,
              prompts: Sequence[TaskPrompt] | None = None) -> dict[str, RoleRanking]:
    """s_inhibition, name_mover, negative_mover and copy on IOI prompts (generated, or the IOI
    prompts among `prompts`)."""
    return task_roles(session, IOI.name, (), n_prompts, seed, batch_size, prompts)


def laundry_roles(session: Session, n_items: Sequence[int] = (3, 4, 5), n_prompts: int = 20, seed: int = 0,
                  batch_size: int = 16, prompts: Sequence[TaskPrompt] | None = None) -> dict[str, RoleRanking]:
    """inhibition, mover, negative_mover and copy on laundry prompts (`n_prompts` per N generated,
    or the laundry prompts among `prompts`)."""
    return task_roles(session, LAUNDRY.name, n_items, n_prompts, seed, batch_size, prompts)
