"""`th-edit search MODEL`: find the channel edit that best fixes list recall under a side-effect budget."""

from __future__ import annotations

import contextlib
from pathlib import Path

import click

from th_edit import strict_json, ui
from th_edit.arch import adapter_for
from th_edit.commands import options as opt
from th_edit.errors import UserError
from th_edit.limits import MAX_HEADS, MAX_PROMPTS, MAX_TRIALS
from th_edit.models import DEFAULT_MODEL, load_config, resolve
from th_edit.outputs import check_new_file, resumable_file, write_files
from th_edit.readers import read_json
from th_edit.search.optimize import Limits, finished_trials, trim_partial_record
from th_edit.search.pipeline import SearchReport, SearchSettings, evidence_header, recipe_of, search
from th_edit.search.report import held_out_table, plot_frontier
from th_edit.search.space import candidates_from_channels, check_channels_fit
from th_edit.session import load as load_session

# Heads per role of the channel analysis a search runs itself (without --channels): at least this
# many, more when --heads asks for more candidates.
FRESH_TOP = 5


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
@click.option("--kl-budget", type=click.FloatRange(min=0, min_open=True), default=0.02, show_default=True,
              help="Largest mean KL on neutral text, nats/token.")
@click.option("--max-ioi-drop", type=click.FloatRange(min=0), default=2.0, show_default=True,
              help="Largest IOI accuracy drop, points.")
@click.option("--trials", type=click.IntRange(min=1, max=MAX_TRIALS), default=60, show_default=True)
@opt.seed_option("Seeds the sampler and the tuning prompts.")
@click.option("--tune-prompts", type=click.IntRange(min=2, max=MAX_PROMPTS), default=50, show_default=True,
              help="Tuning prompts per N.")
@click.option("--held-out-prompts", type=click.IntRange(min=2, max=MAX_PROMPTS), default=200, show_default=True,
              help="Held-out prompts per N (and IOI).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("out/search/recipe.yaml"),
              show_default=True, help="The recipe; search.json, frontier.png and the study journal go beside it.")
@click.option("--resume", is_flag=True, help="Continue the search recorded in the study journal beside --out.")
@opt.force_option()
@opt.device_options
def search_command(model: str, kind: str, max_heads: int, rank_by: str, channels_file: Path | None, n_items: opt.NItems,
                   kl_budget: float, max_ioi_drop: float, trials: int, seed: int, tune_prompts: int,
                   held_out_prompts: int, out: Path, resume: bool, force: bool, device: str, dtype: str) -> None:
    """Search how many of the best components of which channel heads of MODEL to rescale, and by
    how much, to improve list recall (laundry N items) under a KL budget; report the result and
    baselines on held-out prompts."""
    outputs = [out, out.with_suffix(".search.json"), out.with_suffix(".frontier.png")]
    journal = out.with_suffix(".study.log")
    for path in outputs:
        check_new_file(path, force)
    if resume and not journal.exists():
        raise UserError(f"--resume: there is no study journal at {journal} to continue (run without --resume to start)")
    if journal.exists() and not (resume or force):
        raise UserError(f"{journal} holds an earlier search: pass --resume to continue it or --force to start over")
    if journal.exists() and force and not resume:
        journal.unlink()
    settings = SearchSettings(n_items=tuple(n_items), trials=trials, seed=seed,
                              limits=Limits(kl_budget, max_ioi_drop / 100), tune_prompts=tune_prompts,
                              held_out_prompts=held_out_prompts, attribution=rank_by == "attribution")
    channels = read_json(channels_file) if channels_file is not None else None  # a damaged file: before the model loads
    if channels is not None:  # another model's channels: refused from the config, before the model loads
        check_channels_fit(channels, channels_file, model, adapter_for(load_config(resolve(model))).info(), kind, max_heads)
    session = load_session(model, device=device, dtype=dtype)
    candidates, draft = _channel_candidates(session, kind, channels, seed, max_heads)
    ui.info(f"candidate heads: {', '.join(c.name for c in candidates)}")
    # Until the outputs are written, a failure removes a journal this run began, unless it holds
    # finished trials (then the error line says how to resume them).
    with resumable_file(journal, _resumable_trials):
        report = search(session, candidates, settings, draft=draft, storage=journal)
        click.echo(held_out_table(report))
        written = _write_outputs(report, model, outputs, force)
    click.echo(f"wrote {', '.join(map(str, written))}")


def _resumable_trials(journal: Path) -> str | None:
    """After a failure: what the journal holds for --resume, None when nothing. A record cut short
    by the failure is removed first, so that a resumed run appends to a readable journal."""
    with contextlib.suppress(OSError):  # cannot trim: the count below reads past the half record anyway
        trim_partial_record(journal)
    done = finished_trials(journal)
    return f"{journal} keeps {done} finished trial(s): run again with --resume to use them" if done else None


def _write_outputs(report: SearchReport, model: str, outputs: list[Path], force: bool) -> list[Path]:
    """search.json, and with a chosen recipe the recipe and its frontier plot: all or none."""
    recipe_path, report_path, plot_path = outputs
    writers = {report_path: lambda path: path.write_text(strict_json.dumps(report.as_dict(), indent=2) + "\n")}
    recipe = recipe_of(report, model, output_dir=f"out/{recipe_path.stem}")
    if recipe is not None:
        writers[recipe_path] = lambda path: path.write_text(recipe.to_yaml(header=evidence_header(report)))
        writers[plot_path] = lambda path: plot_frontier(report, path)
    write_files(writers, force)
    return list(writers)


def _channel_candidates(session, kind: str, channels: object | None, seed: int, max_heads: int):
    """Candidate heads (and the channels' draft recipe, a baseline) from a channels.json record or a fresh analysis."""
    from th_edit.channels.find import ChannelSettings, draft_edits, find_channels

    if channels is not None:
        return candidates_from_channels(channels, kind, max_heads), draft_edits(channels)
    # Wider than `th-edit channels`' default (as many senders and movers as --heads asks for, at
    # least FRESH_TOP; every z-outlier whatever its share of the composition), weights and roles
    # only: the search itself is the test on data.
    settings = ChannelSettings(seed=seed, top=max(FRESH_TOP, max_heads), min_share=0.0, data_check=False)
    record = find_channels(session, (kind,), settings).as_dict()
    return candidates_from_channels(record, kind, max_heads), draft_edits(record)
