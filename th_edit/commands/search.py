"""`th-edit search MODEL`: find the channel edit that best fixes list recall under a side-effect budget."""

from __future__ import annotations

from pathlib import Path

import click

from th_edit import strict_json, ui
from th_edit.commands import options as opt
from th_edit.errors import UserError
from th_edit.limits import MAX_HEADS, MAX_PROMPTS, MAX_TRIALS
from th_edit.models import DEFAULT_MODEL
from th_edit.outputs import check_new_file, write_files
from th_edit.search.candidates import channel_candidates, read_channels
from th_edit.search.gradient import GradientSettings
from th_edit.search.lifecycle import existing_study, kept_if_worth_it, study_label
from th_edit.search.objective import OBJECTIVES
from th_edit.search.optimize import POLL_SECONDS, Limits, make_sampler
from th_edit.search.pipeline import (
    SearchReport,
    SearchSettings,
    check_chat_limit,
    evidence_header,
    ranked_candidates,
    recipe_of,
    search,
)
from th_edit.search.report import held_out_table, plot_frontier
from th_edit.search.shared import cap_of
from th_edit.search.storage import DEFAULT_STUDY, GRACE_FACTOR, StudyStore
from th_edit.search.study import (
    channels_fingerprint,
    check_same,
    open_study,
    recorded_candidates,
    settings_record,
    wait_for_study,
    with_candidates,
    with_model,
)
from th_edit.session import load as load_session

INTERRUPTED_EXIT = 130  # as th_edit.cli gives any command stopped by Ctrl-C (128 + SIGINT)
STORAGE_ENV = "TH_EDIT_STORAGE"  # --storage from the environment: a URL with a password stays out of `ps` and shell history


@click.command("search")
@click.argument("model", default=DEFAULT_MODEL)
@click.option("--kind", type=click.Choice(["inhibition"]), default="inhibition", show_default=True,
              help="Which channel's sender heads to search over.")
@click.option("--heads", "max_heads", type=click.IntRange(min=1, max=MAX_HEADS), default=8, show_default=True,
              help="Most candidate heads taken from the channel (strongest first).")
@click.option("--rank-by", type=click.Choice(["attribution", "weights"]), default="attribution", show_default=True,
              help="Order of each head's components: first-order effect on tuning recall, or channel weight z.")
@click.option("--channels", "channels_file", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="A channels.json from `th-edit channels` (default: run the channel analysis now).")
@opt.n_items_option("4-8", "List lengths N to improve (range or list).")
@click.option("--kl-budget", type=opt.FiniteFloat(min=0, min_open=True), default=0.02, show_default=True,
              help="Largest mean KL on neutral text, nats/token.")
@click.option("--max-ioi-drop", type=opt.FiniteFloat(min=0), default=2.0, show_default=True,
              help="Largest IOI accuracy drop, points.")
@click.option("--min-chat-agreement", type=opt.FiniteFloat(min=0, max=100), default=None, metavar="PCT",
              help="Smallest share (%) of neutral chat prompts whose first 16 greedy reply tokens stay the unedited "
                   "model's, checked on every fully scored trial (default: not constrained).")
@click.option("--method", type=click.Choice(["tpe", "gradient"]), default="tpe", show_default=True,
              help="tpe: Optuna's sampler over each head's top-k components and one scale; gradient: fit every "
                   "candidate component's scale by gradient descent, then round to a recipe (minutes, one process).")
@click.option("--trials", type=click.IntRange(min=1, max=MAX_TRIALS), default=60, show_default=True,
              help="TPE trials.")
@click.option("--steps", type=click.IntRange(min=1, max=10000), default=GradientSettings.steps, show_default=True,
              help="Optimizer steps of --method gradient.")
@opt.seed_option("Seeds the sampler and the tuning prompts.")
@click.option("--objective", type=click.Choice(OBJECTIVES), default="candidate", show_default=True,
              help="What counts as right on the tuning prompts: candidate (the answer outranks the other list items) "
                   "or top1 (it is the argmax over the vocabulary: what greedy generation says); IOI's drop is "
                   "judged the same way.")
@click.option("--tune-prompts", type=click.IntRange(min=2, max=MAX_PROMPTS), default=50, show_default=True,
              help="Tuning prompts per N.")
@click.option("--held-out-prompts", type=click.IntRange(min=2, max=MAX_PROMPTS), default=200, show_default=True,
              help="Held-out prompts per N (and IOI).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("out/search/recipe.yaml"),
              show_default=True, help="The recipe; search.json, frontier.png and the study journal go beside it.")
@click.option("--resume", is_flag=True, help="Continue the search recorded in the study (same settings).")
@opt.force_option("Replace existing output files (and start the study over).")
@click.option("--storage", envvar=STORAGE_ENV, metavar="URL",
              help="The study's database, shared by --worker processes: postgresql://user@host/db, mysql://..., "
                   f"sqlite:///file.db (also ${STORAGE_ENV}; default: a journal file beside --out, one process).")
@click.option("--study", "study_name", default=DEFAULT_STUDY, show_default=True, help="The study's name in --storage.")
@click.option("--worker", is_flag=True,
              help="Only run trials of the study that a search process (same options, no --worker) created; "
                   "it alone judges the result and writes the outputs.")
@click.option("--heartbeat", type=click.IntRange(min=1, max=3600), default=60, show_default=True, metavar="SECONDS",
              help=f"With --storage: a trial silent for {GRACE_FACTOR}x this long (its worker died) is failed and run again.")
@opt.device_options
def search_command(model: str, kind: str, max_heads: int, rank_by: str, channels_file: Path | None, n_items: opt.NItems,
                   kl_budget: float, max_ioi_drop: float, min_chat_agreement: float | None, method: str, trials: int,
                   steps: int, seed: int, tune_prompts: int, held_out_prompts: int, out: Path, resume: bool,
                   force: bool, storage: str | None, study_name: str, worker: bool, heartbeat: int, objective: str,
                   device: str, dtype: str) -> None:
    """Search how many of the best components of which channel heads of MODEL to rescale, and by
    how much, to improve list recall (laundry N items) under a KL budget; report the result and
    baselines on held-out prompts."""
    outputs = [out, out.with_suffix(".search.json"), out.with_suffix(".frontier.png")]
    store = StudyStore.parse(storage, out.with_suffix(".study.log"), study_name, heartbeat)
    settings = SearchSettings(n_items=tuple(n_items), trials=trials, seed=seed,
                              limits=Limits(kl_budget, max_ioi_drop / 100,
                                            None if min_chat_agreement is None else min_chat_agreement / 100),
                              tune_prompts=tune_prompts,
                              held_out_prompts=held_out_prompts, attribution=rank_by == "attribution",
                              objective=objective)
    mine = settings_record(settings, {"kind": kind, "heads": max_heads, "rank_by": rank_by,
                                      "channels_sha256": channels_fingerprint(channels_file)})
    if method == "gradient":
        if worker or resume:
            raise UserError(f"{'--worker' if worker else '--resume'} is for --method tpe: a gradient search runs in one "
                            "process and keeps no study")
        _gradient(model, kind, channels_file, max_heads, settings, GradientSettings(steps=steps), outputs, force, device,
                  dtype)
        return
    with store.redacting():
        if worker:
            _work(store, mine, settings, model, device, dtype)
            return
        for path in outputs:
            check_new_file(path, force)
        recorded = existing_study(store, resume, force, mine)
        channels = read_channels(channels_file, model, kind, max_heads)
        session = load_session(model, device=device, dtype=dtype)
        check_chat_limit(session, settings)
        mine = with_model(mine, session)
        if recorded is not None:
            check_same(recorded, mine, study_label(store))
        candidates, draft = channel_candidates(session, kind, channels, seed, max_heads)
        # Until the outputs are written, a failure removes a study this run began, unless it holds
        # finished trials (then the error line says how to resume them).
        with kept_if_worth_it(store):
            if recorded is None:
                candidates = ranked_candidates(session, candidates, settings)
                study = open_study(store, make_sampler(seed, trials), new_record=with_candidates(mine, candidates), cap=trials)
            else:
                candidates = recorded_candidates(recorded)
                study = open_study(store, make_sampler(seed, trials), cap=trials)
            ui.info(f"candidate heads: {', '.join(c.name for c in candidates)}")
            report = search(session, candidates, settings, draft=draft, study=study, ranked=True)
            if report.held_out:
                click.echo(held_out_table(report))
            written = _write_outputs(report, model, outputs, force)
    click.echo(f"wrote {', '.join(map(str, written))}")
    if report.held_out_interrupted:  # one line, whatever --quiet says, and the exit code of an interrupted command
        if report.chosen or report.unjudged:
            judged = ("judged on held-out prompts, not all baselines" if report.chosen else
                      "NOT judged on held-out prompts (tuning prompts only)")
            what = f"{out} is the best recipe so far, {judged}"
        else:
            what = "no recipe was chosen"
        click.echo(f"interrupted in the held-out evaluation: {what}; run again with --resume --force to finish it",
                   err=True)
        click.get_current_context().exit(INTERRUPTED_EXIT)


def _gradient(model: str, kind: str, channels_file: Path | None, max_heads: int, settings: SearchSettings,
              gradient: GradientSettings, outputs: list[Path], force: bool, device: str, dtype: str) -> None:
    """--method gradient: candidates, the fit, the held-out judgement and the outputs, in this process."""
    for path in outputs:
        check_new_file(path, force)
    channels = read_channels(channels_file, model, kind, max_heads)
    session = load_session(model, device=device, dtype=dtype)
    check_chat_limit(session, settings)
    candidates, draft = channel_candidates(session, kind, channels, settings.seed, max_heads)
    candidates = ranked_candidates(session, candidates, settings)
    ui.info(f"candidate heads: {', '.join(c.name for c in candidates)}")
    report = search(session, candidates, settings, draft=draft, ranked=True, method="gradient", gradient=gradient)
    click.echo(held_out_table(report))
    written = _write_outputs(report, model, outputs, force)
    click.echo(f"wrote {', '.join(map(str, written))}")


def _work(store: StudyStore, mine: dict, settings: SearchSettings, model: str, device: str, dtype: str) -> None:
    """--worker: join the study, check it runs this search, run trials until the study has enough."""
    if not store.shared:
        raise UserError("--worker needs --storage with a database URL (postgresql://, mysql:// or sqlite:///) "
                        "that the search process uses too")
    recorded = wait_for_study(store, POLL_SECONDS)
    check_same(recorded, mine, study_label(store))  # before the model loads
    session = load_session(model, device=device, dtype=dtype)
    check_same(recorded, with_model(mine, session), study_label(store))  # nothing is written to the study before this
    study = open_study(store, make_sampler(None, settings.trials))  # workers sample independently of each other
    report = search(session, recorded_candidates(recorded), settings, study=study, worker=True, ranked=True)
    ui.info(f"{study_label(store)}: {len(report.result.trials)} of {cap_of(study)} trials finished")


def _write_outputs(report: SearchReport, model: str, outputs: list[Path], force: bool) -> list[Path]:
    """search.json, and with a chosen recipe the recipe and its frontier plot: all or none."""
    recipe_path, report_path, plot_path = outputs
    writers = {report_path: lambda path: path.write_text(strict_json.dumps(report.as_dict(), indent=2) + "\n")}
    recipe = recipe_of(report, model, output_dir=f"out/{recipe_path.stem}")
    if recipe is not None:
        writers[recipe_path] = lambda path: path.write_text(recipe.to_yaml(header=evidence_header(report)))
        if report.held_out:  # none when Ctrl-C stopped the held-out evaluation before its first recipe
            writers[plot_path] = lambda path: plot_frontier(report, path)
    write_files(writers, force)
    return list(writers)
