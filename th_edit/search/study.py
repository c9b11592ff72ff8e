"""What a search's study records about how it was started, and the check that a worker (or a
--resume) runs the same search: same model weights and dtype, same candidate source, same tuning
set, limits and seed. The record is written once, when the study is created; a process whose
settings differ is refused, naming the first differing field, before it writes to the study.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

from th_edit import ui
from th_edit.errors import UserError
from th_edit.search.objective import guard_measure
from th_edit.search.space import Candidate
from th_edit.search.storage import StudyStore

RECORD_ATTR = "th_edit_settings"  # study user attribute: the record below
CAP_ATTR = "th_edit_trials"  # study user attribute: the number of finished trials the study is to reach
# Fields that may differ: the cap is the search process's to set (a resume may raise it), and the
# model's name is only a name (workers on other machines reach the same weights by other paths).
NOT_COMPARED = ("settings.trials", "model.reference")
# Fields recorded since a change of what a search means: a study without one was recorded before the
# change and is refused (with why) where this run's value is not None, even though nothing else differs.
ADDED_WITH_A_CHANGE = {"guard_measure": "IOI was judged by the objective's measure (under --objective top1 it was "
                                        "judged by candidate accuracy then)"}


def channels_fingerprint(channels_file: Path | None) -> str | None:
    """Where the candidate heads come from: a channels.json (by content) or a fresh analysis (None)."""
    if channels_file is None:
        return None
    from th_edit.checkpoint import sha256_file

    return sha256_file(channels_file)


def model_identity(session) -> dict[str, object]:
    """The model a trial runs on: sha256 of its weight files (or GGUF file), architecture, compute dtype."""
    from th_edit.card import public_reference
    from th_edit.checkpoint import sha256_file, weight_files

    info = session.info
    identity: dict[str, object] = {"architecture": f"{info.family} {info.n_layers}x{info.n_heads}",
                                   "dtype": str(session.dtype).removeprefix("torch.")}
    resolved = session.resolved
    if resolved is not None:
        identity["reference"] = public_reference(resolved)  # never a path on this machine
        identity["weights_sha256"] = ({resolved.gguf_file: resolved.gguf_sha256} if resolved.gguf_sha256 else
                                      {path.name: sha256_file(path) for path in weight_files(resolved.path)})
    return identity


def settings_record(settings, options: dict[str, object]) -> dict[str, object]:
    """Everything but the model and the candidates: the search settings and the CLI options that
    choose the candidates (`options`: kind, heads, rank_by, channels fingerprint)."""
    return {"options": dict(options), "settings": _plain(asdict(settings)),
            "guard_measure": guard_measure(settings.objective)}


def with_model(record: dict[str, object], session) -> dict[str, object]:
    return {"model": model_identity(session), **record}


def with_candidates(record: dict[str, object], candidates: list[Candidate]) -> dict[str, object]:
    return {**record, "candidates": [_plain(asdict(c)) for c in candidates]}


def recorded_candidates(record: dict[str, object]) -> list[Candidate]:
    return [Candidate(c["layer"], c["head"], c["circuit"], tuple(c["components"]), c.get("evidence", ""))
            for c in record["candidates"]]


def check_same(recorded: dict[str, object] | None, mine: dict[str, object], study: str) -> None:
    """Refuse (one line naming the first differing field) unless every field of `mine` is the
    study's. Called twice: without the model before it loads (a wrong tuning set costs no load),
    then with it."""
    if recorded is None:
        raise UserError(f"{study} records no settings (it was written by an older th-edit, or not by th-edit): "
                        "start over with --force or use another --study")
    theirs, ours = _flat(recorded), _flat(mine)
    for key, value in ours.items():
        if key in NOT_COMPARED:
            continue
        if key not in theirs and value is None:  # a setting added since the study began, here off: the same search
            continue
        if key not in theirs and key in ADDED_WITH_A_CHANGE:
            raise UserError(f"{study} was recorded before {ADDED_WITH_A_CHANGE[key]}: its trials were judged "
                            "differently; start over with --force or use another --study")
        if theirs.get(key, "(none)") != value:
            raise UserError(f"{study} was started with {key} = {_short(theirs.get(key))}, this run has {_short(value)}: "
                            "start it with the study's settings, or use another --study")


def _plain(value):
    """JSON-shaped: tuples as lists (what the storage gives back), so that records compare equal."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _flat(record: dict, prefix: str = "") -> dict[str, object]:
    """{"settings": {"limits": {"kl_budget": x}}} -> {"settings.limits.kl_budget": x}, in record order."""
    flat: dict[str, object] = {}
    for key, value in record.items():
        if isinstance(value, dict) and key != "weights_sha256":
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _short(value: object) -> str:
    if isinstance(value, dict):  # weight hashes: the first file's, shortened
        return "{" + ", ".join(f"{k}: {str(v)[:12]}…" for k, v in list(value.items())[:2]) + "}"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def recorded_settings(store: StudyStore) -> dict[str, object] | None:
    """The record of the study `store` names (which must exist); None if it holds none."""
    import optuna

    with store.redacting(f"reading study '{store.name}' in {store.shown}"):
        study = optuna.load_study(study_name=store.name, storage=store.optuna_storage())
        return study.user_attrs.get(RECORD_ATTR)


def wait_for_study(store: StudyStore, poll_seconds: float) -> dict[str, object] | None:
    """A worker started before the search process has created the study waits for it (Ctrl-C stops
    the wait); returns the study's record."""
    import optuna

    told = False
    while True:
        if store.exists():
            with store.redacting(f"reading study '{store.name}' in {store.shown}"):
                attrs = optuna.load_study(study_name=store.name, storage=store.optuna_storage()).user_attrs
            if CAP_ATTR in attrs:  # set after the record: the study is ready
                return attrs.get(RECORD_ATTR)
        if not told:
            ui.info(f"waiting for the search process to create study '{store.name}' in {store.shown}")
            told = True
        time.sleep(poll_seconds)


def open_study(store: StudyStore, sampler, *, new_record: dict[str, object] | None = None, cap: int | None = None):
    """The study, created with `new_record` when given (else it must exist); `cap` (the search
    process's --trials) is written last, which tells waiting workers that the study is ready."""
    import optuna

    from th_edit.search.shared import RetryWithinCap

    storage = store.optuna_storage(RetryWithinCap() if store.shared else None)
    with store.redacting(f"opening study '{store.name}' in {store.shown}"):
        if new_record is not None:
            study = optuna.create_study(study_name=store.name, storage=storage, sampler=sampler, direction="maximize")
            study.set_user_attr(RECORD_ATTR, new_record)
        else:
            study = optuna.load_study(study_name=store.name, storage=storage, sampler=sampler)
        if cap is not None:
            study.set_user_attr(CAP_ATTR, cap)
    return study


def finished_in(store: StudyStore) -> int:
    """How many trials the study has finished (0: none, or no such study)."""
    import optuna

    try:
        if not store.exists():
            return 0
        study = optuna.load_study(study_name=store.name, storage=store.optuna_storage())
        return len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
    except Exception:  # noqa: BLE001 - only a note for an error line that is being raised anyway
        return 0


def delete_study(store: StudyStore) -> None:
    import optuna

    with store.redacting(f"deleting study '{store.name}' in {store.shown}"):
        optuna.delete_study(study_name=store.name, storage=store.optuna_storage())
