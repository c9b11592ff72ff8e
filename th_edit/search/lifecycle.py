"""A TPE search's study over its life: started, continued (--resume) or started over (--force), and after
a failure kept only when it holds finished trials (then the error line says how to resume them)."""

from __future__ import annotations

import contextlib
from pathlib import Path

from th_edit.errors import UserError
from th_edit.outputs import resumable_file
from th_edit.search.optimize import finished_trials, trim_partial_record
from th_edit.search.storage import StudyStore
from th_edit.search.study import check_same, delete_study, finished_in, recorded_settings


def study_label(store: StudyStore) -> str:
    return f"study '{store.name}' in {store.shown}"


def existing_study(store: StudyStore, resume: bool, force: bool, mine: dict) -> dict | None:
    """The record of the study this run continues (checked against `mine` before the model loads),
    None when it starts a new one (after --force removed an old one)."""
    if not store.exists():
        if resume:
            where = f"study journal at {store.journal}" if store.journal is not None else study_label(store)
            raise UserError(f"--resume: there is no {where} to continue (run without --resume to start)")
        if store.journal is not None and store.journal.exists():  # a journal without this study (or any)
            if not (resume or force):
                raise UserError(f"{store.journal} holds an earlier search: pass --resume to continue it or --force to "
                                "start over")
            if force and not resume:
                store.journal.unlink()
        return None
    if resume:
        recorded = recorded_settings(store)
        check_same(recorded, mine, study_label(store))
        return recorded
    if not force:
        what = f"{store.journal} holds an earlier search" if store.journal else f"{study_label(store)} exists"
        raise UserError(f"{what}: pass --resume to continue it or --force to start over")
    if store.journal is not None:
        store.journal.unlink()
    else:
        delete_study(store)
    return None


@contextlib.contextmanager
def kept_if_worth_it(store: StudyStore):
    """resumable_file for the journal; for a database, a failed run that created the study and
    finished no trial deletes it (it would block the next run), else the error line says how to resume."""
    if store.journal is not None:
        with resumable_file(store.journal, lambda journal: _resumable_trials(journal, store.name)):
            yield
        return
    existed = store.exists()
    try:
        yield
    except BaseException as exc:
        done = finished_in(store)
        if not existed and not done:
            with contextlib.suppress(Exception):
                delete_study(store)
        if isinstance(exc, UserError) and done:
            raise UserError(f"{exc}; {study_label(store)} keeps {done} finished trial(s): run again with --resume to use them"
                            ) from None
        raise


def _resumable_trials(journal: Path, study_name: str) -> str | None:
    """After a failure: what the journal holds for --resume, None when nothing. A record cut short
    by the failure is removed first, so that a resumed run appends to a readable journal."""
    with contextlib.suppress(OSError):  # cannot trim: the count below reads past the half record anyway
        trim_partial_record(journal)
    done = finished_trials(journal, study_name)
    return f"{journal} keeps {done} finished trial(s): run again with --resume to use them" if done else None
