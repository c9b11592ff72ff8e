"""`th-edit bench MODEL`: laundry-list and IOI accuracy, optionally paired against a second model."""

from __future__ import annotations

from pathlib import Path

import click

from th_edit import bench, strict_json, ui
from th_edit.apply import prepare_file
from th_edit.commands import options as opt
from th_edit.errors import UserError
from th_edit.limits import MAX_KL_TEXTS
from th_edit.models import DEFAULT_MODEL, context_length, load_config, load_tokenizer, resolve
from th_edit.outputs import check_new_file, write_files
from th_edit.session import load as load_session
from th_edit.tasks import registry
from th_edit.tasks.prompts import TaskPrompt, read_jsonl, write_jsonl
from th_edit.tasks.sets import build_prompts, setup_record

GENERATION_OPTIONS = ("n_items", "n_prompts", "seed")


def _explicit(ctx: click.Context, name: str) -> bool:
    return ctx.get_parameter_source(name) not in (click.core.ParameterSource.DEFAULT, None)


def _check_option_combinations(ctx: click.Context, prompts_file: Path | None, export: Path | None) -> None:
    flags = {"n_items": "--n-items", "n_prompts": "--n-prompts", "seed": "--seed", "compare": "--compare",
             "out": "--out", "as_json": "--json", "prompts_file": "--prompts"}
    if prompts_file is not None:
        given = [flags[name] for name in GENERATION_OPTIONS if _explicit(ctx, name)]
        if given:
            raise UserError(f"{', '.join(given)} describe generated prompts and cannot be combined with --prompts")
    if export is not None:
        given = [flags[name] for name in ("prompts_file", "compare", "out", "as_json") if _explicit(ctx, name)]
        if given:
            raise UserError(f"--export-prompts only writes the prompt set; it cannot be combined with {', '.join(given)}")


OUT_FILES = ("bench.json", "accuracy.png")


def _check_destinations(export: Path | None, out: Path | None, force: bool) -> None:
    """Refuse paths that cannot be written, or hold files this run would overwrite (without
    --force), before any model is loaded, not after the whole run."""
    if export is not None:
        check_new_file(export, force)
    if out is not None:
        # The files go inside `out`: this also refuses an `out` that exists as a file.
        for name in OUT_FILES:
            check_new_file(out / name, force)


def _load_prompts(tokenizer, tasks: tuple[str, ...], prompts_file: Path | None, n_items: opt.NItems | str,
                  n_prompts: int, seed: int) -> tuple[list[TaskPrompt], dict[str, object]]:
    """The prompt set and the setup record that describes it in the report."""
    if prompts_file is not None:
        prompts = [p for p in read_jsonl(prompts_file) if p.task in tasks]
        if not prompts:
            raise UserError(f"{prompts_file} has no {' or '.join(tasks)} prompts")
        return prompts, {"tasks": list(tasks), "prompts": str(prompts_file)}
    n_items = opt.N_ITEMS.convert(n_items, None, None)  # also "2,3" as typed
    prompts = build_prompts(tokenizer, tasks, n_items, n_prompts, seed)
    setup = {"tasks": list(tasks), "prompts": "generated", "seed": seed, "n_prompts_per_n": n_prompts,
             **setup_record(tokenizer, tasks, n_items)}
    return prompts, setup


def _tasks(value: str) -> tuple[str, ...]:
    """--task: "all" or registered task names, comma-separated; anything else is click's usage error."""
    if value == "all":
        return registry.default_names()
    names = [name.strip() for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in registry.names()]
    if unknown or not names:
        raise click.BadParameter(f"{', '.join(map(repr, unknown)) or 'no task'}: tasks are {', '.join(registry.names())} "
                                 "(comma-separated), or all")
    return tuple(registry.in_order(names))


def _is_recipe(reference: str) -> bool:
    return reference.lower().endswith((".yaml", ".yml"))


def _same_vocabulary(first, second) -> bool:
    return first.get_vocab() == second.get_vocab()


@click.command("bench")
@click.argument("model", default=DEFAULT_MODEL)
@click.option("--task", default="all", show_default=True, metavar="TASK[,TASK...]",
              callback=lambda ctx, param, value: _tasks(value),
              help=f"Which tasks to run, comma-separated: {', '.join(registry.names())}, or all (the default set, "
                   "laundry and ioi).")
@opt.n_items_option("2-8")
@opt.n_prompts_option(200, "Prompts per N (and IOI prompts).")
@opt.seed_option("Seed of the generated prompt set.")
@click.option("--prompts", "prompts_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Score the prompts in this JSONL file instead of generating them.")
@click.option("--export-prompts", "export", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the generated prompt set to this JSONL file and exit.")
@opt.batch_size_option()
@opt.out_dir_option("Directory for bench.json and accuracy.png.")
@opt.json_option("Print the JSON report on stdout instead of tables.")
@opt.force_option("Overwrite existing output files (--out, --export-prompts).")
@click.option("--compare", metavar="OTHER_MODEL|RECIPE.yaml",
              help="Paired before/after: MODEL is before; after is OTHER_MODEL (same tokenizer required) "
                   "or MODEL with a recipe's edits applied in memory.")
@click.option("--kl-texts", type=click.IntRange(min=1, max=MAX_KL_TEXTS),
              help="With --compare: measure the KL on this many neutral texts (default: all, plain and chat-formatted).")
@click.option("--no-kl", is_flag=True, help="With --compare: skip the neutral-text KL.")
@click.option("--generation", is_flag=True,
              help="Also free generation: greedy continuation of each prompt and a greedy reply to it asked in the "
                   "model's chat template (right when the first list item named is the answer); with --compare also "
                   "greedy agreement on neutral prompts and KL on the model's own chat replies.")
@opt.device_options
@click.pass_context
def bench_command(ctx: click.Context, model: str, task: tuple[str, ...], n_items: opt.NItems, n_prompts: int, seed: int,
                  prompts_file: Path | None, export: Path | None, batch_size: int, out: Path | None,
                  as_json: bool, force: bool, compare: str | None, kl_texts: int | None, no_kl: bool, generation: bool,
                  device: str, dtype: str) -> None:
    """Measure list recall (laundry, N items) and IOI on MODEL (default: smollm2-135m).

    Accuracy is per N and per answer position with Wilson 95% intervals; with --compare the
    prompts are paired (exact McNemar test) and the KL between the two models on neutral text
    is reported as a side effect.
    """
    _check_option_combinations(ctx, prompts_file, export)
    _check_destinations(export, out, force)
    tasks = task  # the callback's tuple of task names
    resolved = resolve(model)
    tokenizer = load_tokenizer(resolved)
    prompts, setup = _load_prompts(tokenizer, tasks, prompts_file, n_items, n_prompts, seed)
    if export is not None:
        write_files({export: lambda path: write_jsonl(prompts, path)}, force)
        ui.info(f"wrote {len(prompts)} prompts to {export}")
        return
    # The tokenizer and the configs alone can tell whether every prompt is scorable: a bad prompt
    # file, or a prompt longer than either model's context, is refused (naming its line) before
    # any model is loaded or any edit computed.
    tokenized = bench.tokenize_prompts(tokenizer, prompts, prompts_file, _context(resolved, compare))
    recipe = _compare_recipe(compare, model, resolved) if compare else None
    session = load_session(model, device=device, dtype=dtype)
    setup.update(batch_size=batch_size, device=str(session.device), dtype=str(session.dtype).removeprefix("torch."))
    if compare is None:
        report = bench.run_single(session.model, tokenizer, prompts, model_info=resolved.provenance(), setup=setup,
                                  batch_size=batch_size, tokenized=tokenized, generation=generation)
    else:
        after = recipe if recipe is not None else load_session(compare, device=device, dtype=dtype)
        report = bench.paired(session, after, prompts=prompts, batch_size=batch_size, kl=not no_kl, kl_texts=kl_texts,
                              extra_setup=setup, keep_base_logits=False,  # one comparison: nothing to reuse
                              generation=generation)
        report["before"]["model"] = resolved.provenance()
        report["after"]["model"] = after.resolved.provenance() if recipe is None else {"reference": f"{model} + {compare}"}
    click.echo(strict_json.dumps(report, indent=2) if as_json else bench.render_report(report))
    if out is not None:
        _write_outputs(report, out, force)


def _context(resolved, compare: str | None) -> int | None:
    """The shortest context of the models a run scores: MODEL's, and OTHER_MODEL's with --compare."""
    configs = [load_config(resolved)]
    if compare and not _is_recipe(compare):
        configs.append(load_config(resolve(compare)))
    limits = [limit for config in configs if (limit := context_length(config)) is not None]
    return min(limits) if limits else None


def _compare_recipe(compare: str, model: str, resolved):
    """The recipe of `--compare RECIPE.yaml` (its base must be MODEL), or None for another model."""
    if not _is_recipe(compare):
        if not _same_vocabulary(load_tokenizer(resolved), load_tokenizer(resolve(compare))):
            raise UserError(f"{model} and {compare} have different tokenizers, so their prompts cannot be paired")
        return None
    prepared = prepare_file(Path(compare))  # validated against the base model's architecture
    if prepared.base.path != resolved.path:
        raise UserError(f"{compare}: its base_model ({prepared.recipe.base_model}) is not {model}; "
                        f"run `th-edit bench {prepared.recipe.base_model} --compare {compare}`")
    return prepared.recipe


def _write_outputs(report: dict, out: Path, force: bool) -> None:
    """bench.json and its plot: both or neither (a full disk leaves no half of them)."""
    from th_edit.plots import plot_accuracy  # matplotlib is slow to import; only --out needs it

    report_path, plot_path = (out / name for name in OUT_FILES)
    write_files({report_path: lambda path: path.write_text(strict_json.dumps(report, indent=2) + "\n"),
                 plot_path: lambda path: plot_accuracy(report, path)}, force)
    ui.info(f"wrote {report_path} and {plot_path}")
