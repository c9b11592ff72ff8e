"""`th-edit channels MODEL`: find the inhibition and duplicate-token channels, check them on data, draft a recipe."""

from __future__ import annotations

import functools
import shlex
from collections.abc import Callable
from pathlib import Path

import click

from th_edit import strict_json, ui
from th_edit.arch import adapter_for
from th_edit.channels.composition import parse_pair
from th_edit.channels.datacheck import CONFIRM_TOP
from th_edit.channels.find import ChannelSettings, draft_edits, find_channels
from th_edit.channels.rotated import parse_offsets
from th_edit.commands import options as opt
from th_edit.errors import UserError
from th_edit.limits import MAX_HEADS, MAX_PROMPTS
from th_edit.models import DEFAULT_MODEL, load_config, resolve
from th_edit.outputs import check_new_file, write_files
from th_edit.recipe import Output, Recipe
from th_edit.session import load as load_session
from th_edit.tasks import registry

OUT_FILES = ("channels.json", "components.png", "mover-map.png", "weight-vs-data.png", "draft-recipe.yaml")


@click.command("channels")
@click.argument("model", default=DEFAULT_MODEL)
@click.option("--kind", type=click.Choice(["inhibition", "duplicate-token", "all"]), default="all", show_default=True)
@opt.task_option(registry.objective().name, "Prompts that define the roles and the data check.")
@opt.n_items_option("3-5", "List lengths N of the list-recall prompts.")
@opt.n_prompts_option(20, "Prompts per N (list recall) or in all (IOI).", minimum=2)
@click.option("--pair", "pairs", multiple=True, metavar="S:R", help="Also resolve this sender:receiver pair, e.g. 20.0:23.3.")
@click.option("--top", type=click.IntRange(min=1, max=MAX_HEADS), default=3, show_default=True,
              help="Heads taken from each role.")
@click.option("--z-threshold", type=opt.FiniteFloat(), default=3.0, show_default=True,
              help="z-score that puts a component in a channel.")
@click.option("--min-share", type=opt.FiniteFloat(min=0), default=1.0, show_default=True,
              help="A channel component also carries this many times an average component's share (1/rank) of "
                   "the pair's composition (0: z alone).")
@click.option("--check-prompts", type=click.IntRange(min=2, max=MAX_PROMPTS), default=16, show_default=True,
              help="Prompts of the data check (each ablation runs them all).")
@click.option("--check-alpha", type=opt.FiniteFloat(min=0), default=2.0, show_default=True,
              help="Besides removing it (0), the data check scales each component by this.")
@click.option("--offsets", default="unrotated", show_default=True, metavar="FORM",
              help="QK form of Q- and K-composition on rotary models: 'unrotated', an offset (0), a range (1-64, "
                   "uniform), or 'task' (the END-to-mention offsets of the task prompts, weighted by how often they "
                   "occur).")
@click.option("--no-data-check", is_flag=True, help="Weights and roles only (no ablations).")
@click.option("--data-check", "check_method", type=click.Choice(["attribution", "exact"]), default="attribution",
              show_default=True, help="attribution: a first-order estimate for every checked component from one "
              "backward pass per receiver, then exact ablations of the top --check-confirm per pair; exact: ablate "
              "every checked component (hundreds of forward passes).")
@click.option("--check-confirm", type=click.IntRange(min=0, max=MAX_HEADS), default=CONFIRM_TOP, show_default=True,
              help="With --data-check attribution: components per pair (largest estimated effect) removed exactly.")
@click.option("--draft-scale", type=opt.FiniteFloat(min=0), default=2.0, show_default=True,
              help="Scale of the draft recipe's inhibition components.")
@opt.seed_option()
@opt.out_dir_option("Directory for channels.json, plots and draft-recipe.yaml.")
@opt.json_option("Print channels.json on stdout instead of the summary.")
@opt.force_option()
@opt.device_options
def channels_command(model: str, kind: str, task: str, n_items: opt.NItems, n_prompts: int, pairs: tuple[str, ...], top: int,
                     z_threshold: float, min_share: float, check_prompts: int, check_alpha: float, offsets: str,
                     no_data_check: bool, check_method: str, check_confirm: int, draft_scale: float, seed: int,
                     out: Path | None, as_json: bool, force: bool, device: str, dtype: str) -> None:
    """Find MODEL's inhibition and duplicate-token channels from its weights, check them on data,
    and write a draft recipe that `th-edit apply` accepts."""
    from th_edit.channels.render import render_channels

    offsets = parse_offsets(offsets)
    wanted = [parse_pair(p) for p in pairs]
    _check_pairs(model, wanted)  # from the config alone, before the model loads
    if out is not None:
        for name in OUT_FILES:
            check_new_file(out / name, force)
    settings = ChannelSettings(task=task, n_items=tuple(n_items), n_prompts=n_prompts, top=top,
                               z_threshold=z_threshold, min_share=min_share, check_prompts=check_prompts, check_alpha=check_alpha,
                               offsets=offsets, data_check=not no_data_check, check_method=check_method,
                               check_confirm=check_confirm, seed=seed)
    session = load_session(model, device=device, dtype=dtype)
    kinds = ("inhibition", "duplicate_token") if kind == "all" else (kind.replace("-", "_"),)
    report = find_channels(session, kinds, settings, wanted)
    record = report.as_dict()
    click.echo(strict_json.dumps(record, indent=2) if as_json else render_channels(report))
    if out is not None:
        _write(report, record, model, draft_scale, out, force)


def _check_pairs(model: str, wanted) -> None:
    if not wanted:
        return
    info = adapter_for(load_config(resolve(model))).info()
    for sender, receiver in wanted:
        for head in (sender, receiver):
            if not (0 <= head.layer < info.n_layers and 0 <= head.head < info.n_heads):
                raise UserError(f"--pair {sender}:{receiver}: head {head} does not exist (layers 0..{info.n_layers - 1}, "
                                f"heads 0..{info.n_heads - 1})")
        if sender.layer >= receiver.layer:
            raise UserError(f"--pair {sender}:{receiver}: the sender's layer must be below the receiver's")


def _draft(record: dict, model: str, scale: float, out: Path) -> str | None:
    edits = draft_edits(record, scale)
    if not edits:
        return None
    evidence = [f"  {e['sender']['layer']}.{e['sender']['head']} OV {e['sender']['component']} -> "
                f"{e['receiver']['layer']}.{e['receiver']['head']} {e['receiver']['circuit'].upper()} "
                f"{e['receiver']['component']}: weight {e['weight_score']:.3f}, z {e['z']:+.1f}"
                + ("" if e["data"] is None else f", data {e['data']['data_score']:.3f}")
                for e in record["channels"].get("inhibition", [])]
    recipe = Recipe(base_model=model, description=f"Draft from th-edit channels: the inhibition channel's sender "
                    f"components amplified by {scale:g}.", edits=edits, output=Output())
    # The commands as they run from where `channels` ran: the model and --out exactly as given.
    model_arg, draft_path, channels_path = (shlex.quote(str(x)) for x in (model, out / "draft-recipe.yaml",
                                                                          out / "channels.json"))
    header = "\n".join([f"Draft recipe written by `th-edit channels` (inhibition channel, scale {scale:g}).",
                        "Evidence (sender OV component -> receiver component it meets best):", *evidence,
                        f"Check it with `th-edit bench {model_arg} --compare {draft_path}`;",
                        f"`th-edit search {model_arg} --channels {channels_path}` tunes it "
                        "(both from the directory `th-edit channels` ran in)."])
    return recipe.to_yaml(header=header)


def _write(report, record: dict, model: str, scale: float, out: Path, force: bool) -> None:
    from th_edit.channels.plots import PLOTS

    draft = _draft(record, model, scale, out)
    writers: dict[Path, Callable[[Path], object]] = {
        out / "channels.json": lambda path: path.write_text(strict_json.dumps(record, indent=2) + "\n"),
        **{out / name: functools.partial(plot, report) for name, plot in PLOTS.items()},
    }
    if draft:
        writers[out / "draft-recipe.yaml"] = lambda path: path.write_text(draft)
    write_files(writers, force)
    ui.info(f"wrote {', '.join(map(str, writers))}"
            + ("" if draft else " (no draft recipe: the inhibition channel has no component above the threshold)"))
