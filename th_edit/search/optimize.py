"""The search: Optuna's TPE sampler over how many of each candidate head's best components to
rescale, and by how much.

Objective: mean laundry-list candidate accuracy over the requested N on the *tuning* prompts.
Constraints (Optuna's constrained TPE): KL on neutral tuning texts ≤ budget, IOI accuracy not more
than `max_ioi_drop` below the unedited model's, and (when asked) the share of neutral chat prompts
whose greedy reply stays the same at least `min_chat_agreement`. Each trial is an in-memory edit of
one loaded model, judged first on a quick subset; only trials that look useful there are scored on
the full tuning set, and only those fully scored can be chosen. The sampler is seeded, so a search is reproducible; its
journal file makes it resumable. Held-out prompts play no part here.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from th_edit import ui
from th_edit.recipe import Edit
from th_edit.search.evaluate import TrialEvaluator, TrialScores
from th_edit.search.shared import SurplusTrial, cap_of, claim_slot, run_trials
from th_edit.search.space import Candidate, edits_for
from th_edit.search.storage import DEFAULT_STUDY
from th_edit.search.study import CAP_ATTR
from th_edit.session import Session

# α of a chosen head's components, sampled log-uniformly. Components are ranked by the gain of
# amplifying them, so the range starts just below 1 (mild damping stays possible) and ends at 4.
SCALE_RANGE = (0.8, 4.0)
STUDY_NAME = DEFAULT_STUDY
POLL_SECONDS = 1.0  # how often a process waiting for other processes' last trials looks again


@dataclass(frozen=True)
class Limits:
    kl_budget: float = 0.02  # nats/token on the neutral tuning texts
    max_ioi_drop: float = 0.02  # IOI candidate accuracy may fall by at most this (absolute)
    # The share of neutral tuning chat prompts whose first greedy reply tokens must stay unchanged
    # (None: not constrained, not measured during the search).
    min_chat_agreement: float | None = None

    def violations(self, scores: TrialScores, base: TrialScores) -> list[float]:
        """Optuna constraint values (feasible when all ≤ 0), named by CONSTRAINTS. The chat agreement is
        measured on fully scored trials only: a quick look does not count against it."""
        kl = scores.kl if scores.kl is not None else 0.0
        ioi_drop = (base.ioi - scores.ioi) if scores.ioi is not None and base.ioi is not None else 0.0
        values = [kl - self.kl_budget, ioi_drop - self.max_ioi_drop]
        if self.min_chat_agreement is not None:
            agreement = scores.chat_agreement if scores.chat_agreement is not None else 1.0
            values.append(self.min_chat_agreement - agreement)
        return values


CONSTRAINTS = ("kl_over_budget", "ioi_drop_over_limit", "chat_agreement_below_limit")


@dataclass
class Trial:
    number: int
    edits: list[Edit]
    scores: TrialScores
    stage: str  # "quick" (judged on the quick subset only) | "full"
    feasible: bool

    def as_dict(self) -> dict[str, object]:
        return {"number": self.number, "stage": self.stage, "feasible": self.feasible,
                "edits": [e.model_dump() for e in self.edits], "scores": self.scores.as_dict()}


@dataclass
class SearchResult:
    trials: list[Trial] = field(default_factory=list)
    interrupted: bool = False

    @property
    def best(self) -> Trial | None:
        """The fully scored feasible trial with the highest tuning accuracy (then logit difference,
        then the earliest)."""
        eligible = [t for t in self.trials if t.stage == "full" and t.feasible and t.edits]
        return max(eligible, key=lambda t: (t.scores.mean_laundry, t.scores.logit_diff or 0.0, -t.number), default=None)


def choices_of(trial, candidates: Sequence[Candidate]) -> dict[Candidate, tuple[int, float]]:
    """The sampler's decisions: per candidate head, how many of its best components to edit (0: the
    head is left alone) and their scale."""
    chosen = {}
    for i, candidate in enumerate(candidates):
        k = trial.suggest_categorical(f"k_{i}", candidate.k_choices())
        if k:
            chosen[candidate] = (k, round(trial.suggest_float(f"scale_{i}", *SCALE_RANGE, log=True), 3))
    return chosen


def make_sampler(seed: int | None, trials: int):
    import optuna

    with warnings.catch_warnings():  # `group` (conditional search spaces) is marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True,
                                          n_startup_trials=min(10, max(1, trials // 4)))


def run_search(session: Session, evaluator: TrialEvaluator, candidates: Sequence[Candidate], trials: int, seed: int,
               limits: Limits, storage: Path | None = None, study_name: str = STUDY_NAME,
               on_trial: Callable[[Trial], None] | None = None, study=None, worker: bool = False) -> SearchResult:
    """Run (or resume, from `storage`) the search; Ctrl-C stops it and keeps what was found.

    `study`: an opened study (`search.study.open_study`), maybe shared with other processes; its
    cap then decides how many trials finish. `worker`: run trials only, until the cap is reached."""
    import optuna

    # Not WARNING: Optuna logs a trial stopped by Ctrl-C (or failed) with its traceback, and the
    # exception itself is what th-edit reports.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    result = SearchResult()
    base = evaluator.base
    warned: set[str] = set()  # a warning about an edit (a near-tied component, say) is shown once per search

    def objective(trial) -> float:
        claim_slot(trial)
        edits = edits_for(choices_of(trial, candidates))
        if not edits:
            scores, stage = base, "full"
        else:
            edit = session.compute(edits, measure=False)
            ui.warn_new(edit.warnings, warned)
            scores, stage = evaluator.evaluate(edit, quick=True, desc=f"trial {trial.number}: quick look"), "quick"
            quick_base = evaluator.quick_base
            if _worth_full(scores, quick_base, limits):
                scores, stage = evaluator.evaluate(edit, desc=f"trial {trial.number}: full scoring"), "full"
        violations = limits.violations(scores, base)
        for name, value in zip(CONSTRAINTS, violations):
            trial.set_constraint(name, value)
        record = Trial(trial.number, edits, scores, stage, all(v <= 0 for v in violations))
        trial.set_user_attr("record", record.as_dict())
        if on_trial:
            on_trial(record)
        return scores.mean_laundry

    if study is None:
        study = optuna.create_study(study_name=study_name, direction="maximize", sampler=make_sampler(seed, trials),
                                    storage=_journal(storage) if storage else None, load_if_exists=True)
        study.set_user_attr(CAP_ATTR, trials)
    complete = (optuna.trial.TrialState.COMPLETE,)
    done = len(study.get_trials(deepcopy=False, states=complete))
    if done and not worker:
        ui.info(f"resuming: {done} trial(s) already in the study")
    ticks = run_trials(study, lambda: _optimize_one(study, objective), worker, poll_seconds=POLL_SECONDS)
    try:
        for _ in ui.progress(ticks, desc="search", total=max(0, cap_of(study) - done), unit="trial"):
            pass
    except KeyboardInterrupt:
        result.interrupted = True
        ui.warn("interrupted: no more trials; the ones finished are kept")
    # Every finished trial, whichever process ran it, in trial order.
    result.trials = [_restored(t) for t in study.get_trials(deepcopy=False, states=complete)]
    return result


def _optimize_one(study, objective: Callable) -> None:
    """One trial. Optuna hides a storage write that fails as the trial is told (a full disk under
    the journal) behind `assert False, "Should not reach."`: the OSError is raised instead, so
    that it can be reported as what it is."""
    try:
        study.optimize(objective, n_trials=1, gc_after_trial=False, catch=(SurplusTrial,))
    except AssertionError as exc:
        cause = exc.__context__
        if not isinstance(cause, OSError):
            raise
        raise cause from None


def _worth_full(quick: TrialScores, quick_base: TrialScores, limits: Limits) -> bool:
    """Full scoring only for trials that gain on the quick subset (in accuracy, or — accuracy on a few
    prompts being coarse — in logit difference at equal accuracy) and are not clearly over budget."""
    over_budget = quick.kl is not None and quick.kl > 1.5 * limits.kl_budget
    if over_budget or quick.mean_laundry < quick_base.mean_laundry:
        return False
    if quick.mean_laundry > quick_base.mean_laundry:
        return True
    return quick.logit_diff is not None and quick_base.logit_diff is not None and quick.logit_diff > quick_base.logit_diff


def _journal(path: Path):
    import optuna
    from optuna.storages.journal import JournalFileBackend

    return optuna.storages.JournalStorage(JournalFileBackend(str(path)))


def finished_trials(storage: Path, study_name: str = STUDY_NAME) -> int:
    """How many completed trials a search journal records: 0 when it records none, or is empty or
    unreadable (a journal cut short by a full disk), so that nothing in it is worth resuming."""
    import optuna

    if not storage.is_file():  # JournalFileBackend would create it
        return 0
    try:
        study = optuna.load_study(study_name=study_name, storage=_journal(storage))
    except (KeyError, ValueError, OSError):  # no study in it yet, or a damaged journal
        return 0
    return sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)


def trim_partial_record(storage: Path) -> None:
    """Cut a journal back to its last complete line. A write cut short (a full disk) leaves half a
    record at the end; Optuna skips it when reading, but the next run would append after it and
    make one corrupt line in the middle, and the whole journal unreadable."""
    with open(storage, "r+b") as journal:
        end = journal.seek(0, os.SEEK_END)
        position = end
        while position > 0:
            start = max(0, position - 65536)
            journal.seek(start)
            newline = journal.read(position - start).rfind(b"\n")
            if newline >= 0:
                position = start + newline + 1
                break
            position = start
        if position < end:
            journal.truncate(position)


def _restored(frozen) -> Trial:
    """A finished trial read back from the journal (a resumed search)."""
    record = frozen.user_attrs["record"]
    scores = record["scores"]
    trial_scores = TrialScores({int(n): a for n, a in scores["laundry_accuracy"].items()}, scores["ioi_accuracy"],
                               scores["neutral_kl"], scores["n_prompts"], scores.get("mean_laundry_logit_diff"),
                               scores.get("neutral_chat_agreement"))
    return Trial(record["number"], [Edit(**e) for e in record["edits"]], trial_scores, record["stage"], record["feasible"])


def summary_line(trial: Trial, base: TrialScores) -> str:
    kl = "-" if trial.scores.kl is None else f"{trial.scores.kl:.4f}"
    gain = 100 * (trial.scores.mean_laundry - base.mean_laundry)
    return (f"trial {trial.number:>3} [{trial.stage:>5}] {len(trial.edits)} edit(s)  tuning accuracy "
            f"{100 * trial.scores.mean_laundry:5.1f}% ({gain:+.1f} pts)  KL {kl}  {'ok' if trial.feasible else 'over limits'}")
