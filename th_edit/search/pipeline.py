"""The whole search on one loaded model: tuning prompts → search → held-out evaluation with baselines."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from th_edit import ui
from th_edit.errors import UserError
from th_edit.limits import MAX_SEED
from th_edit.recipe import Benchmark, Edit, Output, Recipe
from th_edit.bench.side_effects import neutral_chat_prompt_ids
from th_edit.runtime.tokens import has_chat_template
from th_edit.search.attribution import ranked_by_attribution
from th_edit.search.evaluate import TrialEvaluator, TrialScores
from th_edit.search.gradient import GradientSettings, gradient_search
from th_edit.search.heldout import HeldOut, evaluate_held_out, evaluate_transfer
from th_edit.search.optimize import Limits, SearchResult, run_search, summary_line
from th_edit.search.space import Candidate, whole_head_edits
from th_edit.session import Session
from th_edit.tasks import registry
from th_edit.tasks.neutral import NeutralSet, neutral_set

# Tuning and held-out prompts never share a frame, a template (each task's fixed split,
# registry.Task.split_record) or a seed. The search improves the objective task (laundry) and
# guards the guard tasks (IOI).
HELD_OUT_SEED_OFFSET = 7919


def searched_tasks() -> list[str]:
    return [registry.objective().name, *(t.name for t in registry.guards())]


def split_record() -> dict[str, tuple]:
    """The tuning / held-out split of every searched task, as search.json records it."""
    return {key: value for name in searched_tasks() for key, value in registry.get(name).split_record.items()}


@dataclass(frozen=True)
class SearchSettings:
    n_items: tuple[int, ...] = (4, 5, 6, 7, 8)
    trials: int = 60
    seed: int = 0
    limits: Limits = Limits()
    tune_prompts: int = 50  # per N (and IOI)
    held_out_prompts: int = 200  # per N (and IOI)
    quick_prompts: int = 10  # per N (and IOI) in the cheap first look
    tune_kl_texts: int = 48
    batch_size: int = 16
    whole_head_scales: tuple[float, ...] = (1.25, 1.5, 2.0, 2.5, 3.0)
    attribution: bool = True  # order each head's components by their first-order effect on tuning recall
    objective: str = "candidate"  # which tuning prompts count as right: candidate or top1 (search.objective)

    @property
    def held_out_seed(self) -> int:
        return (self.seed + HELD_OUT_SEED_OFFSET) % (MAX_SEED + 1)  # another seed, within what numpy takes


@dataclass
class SearchReport:
    settings: SearchSettings
    candidates: list[Candidate]
    base_tuning: TrialScores
    result: SearchResult
    held_out: list[HeldOut] = field(default_factory=list)
    wall_seconds: float = 0.0
    held_out_interrupted: bool = False  # Ctrl-C during the held-out evaluation: `held_out` is incomplete
    # The chosen recipe on forms the search never saw (registry.transfer_forms, held-out seed):
    # bench.aggregate.compare()'s per-task paired rows; None when not evaluated.
    transfer: dict | None = None
    method: str = "tpe"  # "tpe" | "gradient"
    gradient: GradientSettings | None = None  # the gradient fit's settings (method "gradient")

    @property
    def chosen(self) -> HeldOut | None:
        return next((h for h in self.held_out if h.kind == "search"), None)

    @property
    def unjudged(self) -> bool:
        """The search chose a recipe, but Ctrl-C stopped the held-out evaluation before it was judged:
        the recipe written is the best so far on the tuning prompts only."""
        return self.held_out_interrupted and self.chosen is None and self.result.best is not None

    def as_dict(self) -> dict[str, object]:
        best = self.result.best
        return {
            "settings": {**asdict(self.settings), "held_out_seed": self.settings.held_out_seed,
                         **split_record()},
            "method": self.method,
            **({"gradient": asdict(self.gradient)} if self.gradient is not None else {}),
            "candidates": [asdict(c) for c in self.candidates],
            "base_tuning": self.base_tuning.as_dict(),
            "trials": [t.as_dict() for t in self.result.trials],
            "chosen_trial": best.number if best else None,
            "interrupted": self.result.interrupted,
            "held_out_interrupted": self.held_out_interrupted,
            "held_out": [h.as_dict() for h in self.held_out],
            "transfer": self.transfer,
            "wall_seconds": self.wall_seconds,
        }


def split_neutral(neutral: NeutralSet) -> tuple[NeutralSet, NeutralSet]:
    """Even-numbered texts for tuning, odd-numbered ones held out (plain and chat alike)."""
    n_plain = len(neutral.encoded) - neutral.n_chat
    plain, chats = neutral.encoded[:n_plain], neutral.encoded[n_plain:]
    return (NeutralSet(plain[0::2] + chats[0::2], len(chats[0::2])),
            NeutralSet(plain[1::2] + chats[1::2], len(chats[1::2])))


def split_chat(session: Session) -> tuple[list[list[int]], list[list[int]]]:
    """The neutral chat questions in the model's chat format (none without one): even-numbered ones for
    tuning, odd-numbered ones held out, like the neutral texts."""
    chats = neutral_chat_prompt_ids(session.tokenizer, session.model)
    return chats[0::2], chats[1::2]


def check_chat_limit(session: Session, settings: SearchSettings) -> None:
    """A chat-agreement limit needs the model's chat format: refused at once (before any search work) without one."""
    if settings.limits.min_chat_agreement is not None and not has_chat_template(session.tokenizer, session.model):
        raise UserError("--min-chat-agreement needs the model's chat format, and this model has none th-edit knows "
                        "(no chat template in its tokenizer, no published turn format for its family)")


def tuning_prompts(session: Session, settings: SearchSettings):
    return _generated(session, settings.n_items, settings.tune_prompts, settings.seed, "tuning")


def held_out_prompts(session: Session, settings: SearchSettings):
    return _generated(session, settings.n_items, settings.held_out_prompts, settings.held_out_seed, "held_out")


def _generated(session: Session, n_items: Sequence[int], n_prompts: int, seed: int, split: str):
    return [prompt for name in searched_tasks()
            for prompt in registry.get(name).prompts(session.tokenizer, n_items, n_prompts, seed, split)]


def transfer_prompts(session: Session, settings: SearchSettings):
    """Every frame of every transfer form (none is ever tuned on), held-out seed, as many prompts per N as held out."""
    return [prompt for task in registry.transfer_forms()
            for prompt in task.prompts(session.tokenizer, settings.n_items, settings.held_out_prompts,
                                       settings.held_out_seed, None)]


def ranked_candidates(session: Session, candidates: Sequence[Candidate], settings: SearchSettings) -> list[Candidate]:
    """The candidates as the search samples them: with --rank-by attribution, each head's components
    re-ranked on the tuning prompts (heads with no helpful component dropped)."""
    if settings.attribution:
        prompts = tuning_prompts(session, settings)
        candidates = ranked_by_attribution(session, [p for p in prompts if p.task == registry.objective().name], candidates)
    if not candidates:
        raise UserError("no candidate head has a component whose amplification helps list recall on the tuning prompts")
    return list(candidates)


def search(session: Session, candidates: Sequence[Candidate], settings: SearchSettings = SearchSettings(),
           draft: Sequence[Edit] | None = None, storage: Path | None = None, held_out=held_out_prompts,
           study=None, worker: bool = False, ranked: bool = False, method: str = "tpe",
           gradient: GradientSettings | None = None, transfer=transfer_prompts) -> SearchReport:
    """Search on tuning prompts, then evaluate the chosen recipe and the baselines on held-out prompts.

    `held_out` makes the held-out prompt set and `transfer` the prompts of forms no search tunes on
    (replaceable for tests; None: no transfer judgement); both are called only after the search has
    chosen, so they cannot influence the choice. `study`: an opened (maybe shared) study
    instead of `storage`; `worker`: run trials only, no held-out evaluation; `ranked`: the
    candidates are `ranked_candidates` already (the ones a shared study records). `method`:
    "tpe" (Optuna's sampler, `search.optimize`) or "gradient" (a fit of every candidate component's
    scale, `search.gradient`, with `gradient` settings; no study); both choose on tuning prompts only.
    """
    started = time.perf_counter()
    tune_neutral, held_neutral = split_neutral(neutral_set(session.tokenizer))
    tune_neutral = tune_neutral.limited(settings.tune_kl_texts)
    check_chat_limit(session, settings)
    tune_chat, held_chat = split_chat(session)
    prompts = tuning_prompts(session, settings)
    if not ranked:
        candidates = ranked_candidates(session, candidates, settings)
    lowest = min(c.layer for c in candidates)
    tuning = TrialEvaluator(session, prompts, tune_neutral, lowest, settings.batch_size, settings.quick_prompts,
                            objective=settings.objective,
                            chat=tune_chat if settings.limits.min_chat_agreement is not None else None)
    base, quick_base = tuning.base, tuning.quick_base
    if method == "gradient":
        gradient = gradient or GradientSettings()
        result = gradient_search(session, tuning, candidates, tune_neutral, settings.limits, settings.seed, gradient)
        for trial in result.trials:
            ui.debug(summary_line(trial, base))
    else:
        result = run_search(session, tuning, candidates, settings.trials, settings.seed, settings.limits, storage,
                            on_trial=lambda t: ui.debug(summary_line(t, quick_base if t.stage == "quick" else base)),
                            study=study, worker=worker)
    report = SearchReport(settings, list(candidates), base, result, method=method,
                          gradient=gradient if method == "gradient" else None)
    if worker:  # the search process judges the study, once
        return report
    del tuning  # its cached states and log-probs: the held-out evaluator needs the memory
    best = result.best
    if result.interrupted and best is not None:
        ui.warn("interrupted: judging the best recipe so far on held-out prompts (Ctrl-C again writes it unjudged)")
    recipes: list[tuple[str, str, list[Edit]]] = []
    if best is not None and best.scores.mean_laundry <= base.mean_laundry:
        ui.warn("no trial raised tuning accuracy above the unedited model's: the chosen recipe only raises the "
                "answer's logit difference (more trials, or other heads, may do better)")
    if best is not None:
        recipes.append(("search (channel components)", "search", best.edits))
        heads = sorted({(e.layer, e.head) for e in best.edits if e.circuit == "ov"})
        recipes += [(f"whole-head OV x{scale:g}", "whole-head", whole_head_edits(heads, scale, session.info.d_head))
                    for scale in settings.whole_head_scales]
    if draft:
        recipes.append(("channels draft recipe", "draft", list(draft)))
    try:
        if recipes:
            lowest = min(e.layer for _, _, edits in recipes for e in edits)
            evaluator = TrialEvaluator(session, held_out(session, settings), held_neutral, lowest, settings.batch_size,
                                       chat=held_chat)
            for label, kind, edits in ui.progress(recipes, desc="held-out evaluation", unit="recipe"):
                report.held_out.append(evaluate_held_out(session, evaluator, label, kind, edits))
            del evaluator
            prompts = transfer(session, settings) if transfer is not None and report.chosen is not None else []
            if prompts:
                report.transfer = evaluate_transfer(session, prompts, report.chosen.edits, settings.batch_size)
    except KeyboardInterrupt:  # what the search found is kept: the caller writes it, marked as not (fully) judged
        report.held_out_interrupted = True
    report.wall_seconds = time.perf_counter() - started
    return report


def recipe_of(report: SearchReport, base_model: str, output_dir: str | None = None) -> Recipe | None:
    """The chosen edits as a recipe `th-edit apply` accepts, with a before/after benchmark on prompts
    no search saw (a fresh seed). After Ctrl-C in the held-out evaluation, the best trial's edits,
    said to be judged on the tuning prompts only."""
    chosen = report.chosen
    if chosen is None and not report.unjudged:
        return None
    how = (f"{len(report.result.trials)} trials" if report.method == "tpe" else
           f"gradient fit, {report.gradient.steps if report.gradient else '?'} steps")
    edits = chosen.edits if chosen is not None else report.result.best.edits  # type: ignore[union-attr]
    found = (f"Found by th-edit search (seed {report.settings.seed}, {how})" if chosen else
             (f"Best so far of an interrupted th-edit search (seed {report.settings.seed}, {how}; NOT judged on "
              "held-out prompts)"))
    return Recipe(base_model=base_model, seed=(report.settings.held_out_seed + 1) % (MAX_SEED + 1),
                  description=(f"{found}: rescales {sum(len(e.components) for e in edits)} component(s) of channel heads "
                               "to improve recall from a list."),
                  edits=edits, output=Output(dir=output_dir),
                  benchmark=Benchmark(tasks=searched_tasks(), n_items=list(range(2, 11)), n_prompts=200))


def evidence_header(report: SearchReport) -> str:
    """Comment lines for the written recipe: where each component came from and what it did."""
    chosen = report.chosen
    lines = ["Written by `th-edit search`. Held-out results (other seed, frames and templates than the search):"]
    best = report.result.best
    if report.unjudged and best is not None:
        lines = ["Written by `th-edit search`, interrupted: the BEST SO FAR, NOT judged on held-out prompts.",
                 f"  trial {best.number} of {len(report.result.trials)}, on the tuning prompts: mean accuracy "
                 f"{100 * report.base_tuning.mean_laundry:.1f}% -> {100 * best.scores.mean_laundry:.1f}%"
                 + ("" if best.scores.kl is None else f", neutral-text KL {best.scores.kl:.4f} nats/token"),
                 "  (run the same search again with --resume to judge it; `th-edit apply` benchmarks it on fresh prompts)"]
    if chosen is not None:
        for row in chosen.paired[registry.objective().name]["by_n"]:
            top1 = row.get("metrics", {}).get("top1")
            lines.append(f"  N={row['n_items']}: {100 * row['before_accuracy']:.1f}% -> {100 * row['after_accuracy']:.1f}% "
                         f"(McNemar p = {row['mcnemar_p']:.2g}, {row['n']} prompts)"
                         + ("" if top1 is None else f"; top-1 {100 * top1['before_accuracy']:.1f}% -> "
                            f"{100 * top1['after_accuracy']:.1f}% (p = {top1['mcnemar_p']:.2g})"))
        if chosen.kl is not None:
            lines.append(f"  neutral-text KL {chosen.kl:.4f} nats/token; IOI change {100 * (chosen.ioi_change or 0):+.1f} pts"
                         + ("" if chosen.ioi_top1_change is None else f" (top-1 {100 * chosen.ioi_top1_change:+.1f})")
                         + ("" if chosen.chat_agreement is None else
                            f"; neutral chat replies unchanged {100 * chosen.chat_agreement:.0f}%"))
    edited: dict[tuple[int, int, str], list[Edit]] = {}
    for e in chosen.edits if chosen else []:
        edited.setdefault((e.layer, e.head, e.circuit), []).append(e)
    for candidate in report.candidates:
        edits = edited.get((candidate.layer, candidate.head, candidate.circuit))
        if not edits or not candidate.evidence:
            continue
        if len(edits) == 1:  # TPE: a head's top k components at one scale
            what = f"top {len(edits[0].components)} component(s) x{edits[0].scale:g}"
        else:  # a gradient fit: each component its own (rounded) scale
            scales = sorted(e.scale for e in edits)
            what = f"{sum(len(e.components) for e in edits)} component(s) x{scales[0]:g} to x{scales[-1]:g}"
        lines.append(f"  {candidate.name} ({what}): {candidate.evidence}")
    return "\n".join(lines)
