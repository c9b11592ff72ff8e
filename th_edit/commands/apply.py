"""`th-edit apply RECIPE`: edit the base model's weights and write a new checkpoint."""

from __future__ import annotations

from pathlib import Path

import click

from th_edit import ui
from th_edit.apply import compute, prepare_file, report_warnings, resolve_target, run_benchmark, write
from th_edit.card import dtype_hint
from th_edit.edit import EDIT_COLUMNS, edit_rows
from th_edit.export import check_target, side_file_root, side_file_sources


@click.command("apply")
@click.argument("recipe", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), help="Output directory (overrides output.dir).")
@click.option("--force", is_flag=True,
              help="Replace an earlier th-edit checkpoint (or an empty directory) at the output path; nothing else.")
@click.option("--no-bench", is_flag=True, help="Skip the recipe's before/after benchmark.")
def apply_command(recipe: Path, out: Path | None, force: bool, no_bench: bool) -> None:
    """Apply RECIPE (YAML) and write the edited model as an ordinary checkpoint."""
    prepared = prepare_file(recipe)
    target = resolve_target(prepared, out)
    check_target(target, force, [*prepared.base.inputs(), recipe])
    side_file_sources(prepared.base.path, side_file_root(prepared.base.path, prepared.base.kind))  # links checked now
    ui.info(f"editing {prepared.base.reference}: {len(prepared.recipe.edits)} edit(s)")
    computed = compute(prepared)
    report_warnings(computed)
    click.echo("\n".join(ui.table(EDIT_COLUMNS, edit_rows(computed.result.reports), left=0)))
    benchmark = None
    if prepared.recipe.benchmark is not None and not no_bench:
        ui.info("benchmarking before and after the edit (--no-bench skips this)")
        benchmark = run_benchmark(prepared, computed)
        click.echo("\n" + benchmark.text)
    weights = write(prepared, computed, target, force, benchmark)
    click.echo(f"wrote {target}")
    hint = dtype_hint(prepared.out_dtype_name, sum((target / name).stat().st_size for name in weights))
    if hint:
        ui.info(f"hint: {hint}")
