"""`th-edit apply RECIPE`: edit the base model's weights and write a new checkpoint."""

from __future__ import annotations

from pathlib import Path

import click

from th_edit.apply import FORMATS, apply_file
from th_edit.commands import options as opt


@click.command("apply")
@click.argument("recipe", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), help="Output directory (overrides output.dir).")
@opt.force_option("Replace an earlier th-edit checkpoint (or an empty directory) at the output path; nothing else.")
@click.option("--no-bench", is_flag=True, help="Skip the recipe's before/after benchmark.")
@click.option("--format", "formats", type=click.Choice(FORMATS), multiple=True, default=("safetensors",), show_default=True,
              help="Output format, repeatable: safetensors (the edited checkpoint, always written), lora (the edit as a "
                   "PEFT LoRA adapter, in adapter/ of the output directory).")
def apply_command(recipe: Path, out: Path | None, force: bool, no_bench: bool, formats: tuple[str, ...]) -> None:
    """Apply RECIPE (YAML) and write the edited model as an ordinary checkpoint."""
    apply_file(recipe, out, force, benchmark=not no_bench, echo=click.echo, formats=formats)
