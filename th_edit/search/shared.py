"""Trials of one study run by any number of processes, with an exact global cap.

Optuna's own engines do the distribution: the storage (a database for many processes) hands each
trial a number, heartbeats let the next process that looks fail a trial whose worker died, and
`RetryFailedTrialCallback` (`RetryHeartbeatStaleTrialCallback` since Optuna 4.9) queues it again
with the same parameters. What is added here is the cap,
exact where Optuna's `MaxTrialsCallback` may overshoot (it stops a process after its trial, when
others may already have started theirs):

  a trial runs only if fewer than `cap` trials numbered below it are finished, running or queued.

Trial numbers follow creation order and a trial that may still finish is always counted, so at most
`cap` trials finish; a trial over the cap fails at once (marked `surplus`, ignored by the sampler).
Processes keep starting trials until `cap` have finished, so a failed or dead trial is made up.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Iterator

from th_edit.search.study import CAP_ATTR

MAX_RETRIES = 2  # a trial whose worker died is run again at most this often (then a new one replaces it)
SURPLUS_ATTR = "surplus"


class SurplusTrial(Exception):
    """A trial started after `cap` others that may finish: it fails without being evaluated."""


def cap_of(study) -> int:
    return int(study.user_attrs[CAP_ATTR])


def claim_slot(trial) -> None:
    """Called first in the objective: fail this trial if it is over the study's cap."""
    import optuna

    live = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)
    study = trial.study
    below = sum(t.number < trial.number for t in study.get_trials(deepcopy=False, states=live))
    if below >= cap_of(study):
        trial.set_user_attr(SURPLUS_ATTR, True)
        _surplus_numbers.add(trial.number)
        raise SurplusTrial(f"trial {trial.number} is over the cap of {cap_of(study)} trials")


class RetryWithinCap:
    """Optuna's RetryFailedTrialCallback for a trial whose worker died, unless the cap is reached
    (a retry nobody would run would stay queued for ever)."""

    def __init__(self, max_retry: int = MAX_RETRIES):
        import optuna

        # Renamed in Optuna 4.9; the old name warns there.
        retry = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None) or optuna.storages.RetryFailedTrialCallback
        with warnings.catch_warnings():  # "experimental" since Optuna 2.8
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self._retry = retry(max_retry=max_retry)

    def __call__(self, study, trial) -> None:
        import optuna

        if study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)).__len__() < cap_of(study):
            self._retry(study, trial)


def run_trials(study, run_one: Callable[[], None], worker: bool, poll_seconds: float) -> Iterator[int]:
    """Run trials until `cap` have finished in the study, by this and any other process; yields once
    for every trial that finishes (here or elsewhere), for a progress bar.

    A worker leaves then. The search process also waits until no trial is running (a dead worker's
    trial ends as failed after the grace period), so that it judges a study that no longer changes.
    Without heartbeats (a journal: one process only) a trial left running is from a run that was
    stopped, and is failed at once."""
    import optuna
    from optuna.storages import fail_stale_trials

    logging.getLogger("optuna.study._optimize").addFilter(_not_surplus)  # a surplus trial is no warning
    state = optuna.trial.TrialState
    heartbeat = getattr(study._storage, "get_heartbeat_interval", lambda: None)() is not None
    if not heartbeat:
        for trial in study.get_trials(deepcopy=False, states=(state.RUNNING,)):
            study.tell(trial.number, state=state.FAIL)
    seen = None
    while True:
        if heartbeat:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                fail_stale_trials(study)
        trials = study.get_trials(deepcopy=False)
        count = {s: sum(t.state == s for t in trials) for s in (state.COMPLETE, state.RUNNING, state.WAITING)}
        if seen is not None:
            yield from range(count[state.COMPLETE] - seen)
        seen = count[state.COMPLETE]
        cap = cap_of(study)
        if count[state.COMPLETE] >= cap and (worker or count[state.RUNNING] + count[state.WAITING] == 0):
            return
        if count[state.WAITING] or sum(count.values()) < cap:  # a queued trial over the cap fails at once
            run_one()
        else:  # the last trials run elsewhere: wait for them (and for a dead worker's to go stale)
            time.sleep(poll_seconds)


_surplus_numbers: set[int] = set()


def _not_surplus(record: logging.LogRecord) -> bool:
    """Optuna logs two warnings for a failed trial; a surplus trial is no failure worth one."""
    words = record.getMessage().split(" ", 2)
    return not (len(words) == 3 and words[0] == "Trial" and words[1].isdigit() and int(words[1]) in _surplus_numbers
                and words[2].startswith("failed"))
