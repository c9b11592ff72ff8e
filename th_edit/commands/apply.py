"""`th-edit apply RECIPE`: edit the base model's weights and write a new checkpoint."""

from __future__ import annotations

from pathlib import Path

import click

from th_edit import ui
from th_edit.apply import compute, prepare_file, report_warnings, resolve_target, run_benchmark, write
from th_edit.edit import HeadReport
from th_edit.export import check_target


@click.command("apply")
@click.argument("recipe", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), help="Output directory (overrides output.dir).")
@click.option("--force", is_flag=True, help="Replace an existing output directory.")
@click.option("--no-bench", is_flag=True, help="Skip the recipe's before/after benchmark.")
def apply_command(recipe: Path, out: Path | None, force: bool, no_bench: bool) -> None:
    """Apply RECIPE (YAML) and write the edited model as an ordinary checkpoint."""
    prepared = prepare_file(recipe)
    target = resolve_target(prepared, out)
    check_target(target, force, prepared.base.path)
    ui.info(f"editing {prepared.base.reference}: {len(prepared.recipe.edits)} edit(s)")
    computed = compute(prepared)
    report_warnings(computed)
    click.echo(edit_table(computed.result.reports))
    benchmark = None
    if prepared.recipe.benchmark is not None and not no_bench:
        ui.info("benchmarking before and after the edit (--no-bench skips this)")
        benchmark = run_benchmark(prepared, computed)
        click.echo("\n" + benchmark.text)
    write(prepared, computed, target, force, benchmark)
    click.echo(f"wrote {target}")


def edit_table(reports: list[HeadReport]) -> str:
    lines = [f"{'layer.head':>10} {'circuit':>7} {'comp':>4} {'scale':>7} {'σ before':>10} {'σ target':>10} {'σ realized':>10}"]
    for report in reports:
        for c in report.components:
            realized = "-" if c.realized is None else f"{c.realized:10.5g}"
            lines.append(f"{report.layer:>5}.{report.head:<4} {report.circuit.upper():>7} {c.component:>4} "
                         f"{c.scale:>7g} {c.original:>10.5g} {c.target:>10.5g} {realized:>10}")
    return "\n".join(lines)
