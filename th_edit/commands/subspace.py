"""`th-edit subspace MODEL`: the positional-index subspace of the inhibition channel."""

from __future__ import annotations

from pathlib import Path

import click

from th_edit import strict_json, ui
from th_edit.arch import adapter_for
from th_edit.commands import options as opt
from th_edit.errors import UserError
from th_edit.limits import MAX_DIMS, MAX_GRID, MAX_PROMPTS
from th_edit.models import DEFAULT_MODEL, load_config, resolve
from th_edit.session import load as load_session
from th_edit.tasks.laundry import MAX_ITEMS, MIN_ITEMS


@click.command("subspace")
@click.argument("model", default=DEFAULT_MODEL)
@click.option("--components", help="Sender OV components, ranked: LAYER.HEAD:COMPONENT[,...], e.g. 20.0:1,20.5:0.")
@click.option("--movers", help="Mover heads: LAYER.HEAD[,...], e.g. 23.3,25.1 (with --components).")
@click.option("--channels", "channels_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Read the sender components (channels.inhibition) and movers (roles.mover) from a channels.json.")
@click.option("--basis", type=click.Choice(["weights", "data"]), default="weights", show_default=True,
              help="Weight basis (orthonormalized write directions) or data basis (PCA of the heads' outputs).")
@click.option("--dims", type=click.IntRange(min=2, max=MAX_DIMS), default=3, show_default=True, help="Subspace dimensions.")
@opt.n_items_option("2-8", "List lengths N: a range (2-8) or a list (2,3,5).")
@opt.n_prompts_option(40, "Laundry prompts per N.", minimum=2)
@opt.seed_option("Seed of the prompts (and of the statistics).")
@click.option("--traverse-n", type=click.IntRange(min=MIN_ITEMS, max=MAX_ITEMS),
              help="N of the traversal prompts (default: the largest N).")
@click.option("--traverse-prompts", type=click.IntRange(min=1, max=MAX_PROMPTS), default=16, show_default=True,
              help="Prompts per traversal point.")
@click.option("--grid", type=click.IntRange(min=2, max=MAX_GRID), default=7, show_default=True,
              help="Traversal grid points per axis (over the first min(dims, 3) directions).")
@click.option("--mode", type=click.Choice(["replace", "add"]), default="replace", show_default=True,
              help="Replace the sender heads' component in the subspace by the point, or add the point to it.")
@opt.batch_size_option()
@opt.out_dir_option("Directory for subspace.json, subspace.png, traversal.png, crowding.png and subspace.html.")
@opt.force_option("Replace those files if --out already holds them.")
@opt.json_option("Print subspace.json on stdout instead of the summary.")
@opt.device_options
def subspace_command(model: str, components: str | None, movers: str | None, channels_file: Path | None, basis: str,
                     dims: int, n_items: opt.NItems, n_prompts: int, seed: int, traverse_n: int | None, traverse_prompts: int,
                     grid: int, mode: str, batch_size: int, out: Path | None, force: bool, as_json: bool, device: str,
                     dtype: str) -> None:
    """Find, plot and traverse the subspace in which the inhibition channel of MODEL indexes
    list items, and measure how positions crowd as lists grow (default model: smollm2-135m).

    The channel comes from --components and --movers, or --channels channels.json; with
    neither, a small data-driven fallback picks the heads (see the README).
    """
    from th_edit import subspace

    if channels_file is not None and (components or movers):
        raise UserError("--channels cannot be combined with --components/--movers")
    if (components is None) != (movers is None):
        raise UserError("--components and --movers go together")
    sizes = list(n_items)
    if traverse_n is not None and traverse_n not in sizes:
        raise UserError(f"--traverse-n {traverse_n} is not one of --n-items ({n_items})")
    if out is not None:
        subspace.check_outputs(out, force)
    sender, mover, source = None, None, "given"
    if channels_file is not None:
        sender, mover = subspace.read_channels(channels_file)
        source = str(channels_file)
    elif components is not None:
        sender, mover, source = subspace.parse_components(components), subspace.parse_heads(movers), "--components/--movers"
    if sender is not None:  # a channel that does not fit the model is refused before loading it
        subspace.check_channel(adapter_for(load_config(resolve(model))), sender, mover, source)
    session = load_session(model, device=device, dtype=dtype)
    result = subspace.analyze(session, sender, mover, basis=basis, dims=dims, n_items=sizes, n_prompts=n_prompts,
                              seed=seed, traverse_n=traverse_n, traverse_prompts=traverse_prompts, grid=grid, mode=mode,
                              batch_size=batch_size, source=source)
    record = result.to_dict()
    click.echo(strict_json.dumps(record, indent=1) if as_json else subspace.summary(record))
    if out is not None:
        written = subspace.write_outputs(record, out, force)
        ui.info(f"wrote {', '.join(str(p) for p in written)}")
