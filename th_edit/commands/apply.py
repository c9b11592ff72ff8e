"""`th-edit apply RECIPE`: edit the base model's weights and write a new checkpoint."""

from __future__ import annotations

from pathlib import Path

import click

from th_edit.apply import apply_file
from th_edit.commands import options as opt
from th_edit.errors import UserError
from th_edit.gguf_export import DEFAULT_REQUANT, FALLBACK_TYPES, REQUANT_POLICIES
from th_edit.recipe import OUTPUT_FORMATS


@click.command("apply")
@click.argument("recipe", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), help="Output directory (overrides output.dir).")
@opt.force_option("Replace an earlier th-edit checkpoint (or an empty directory) at the output path; nothing else.")
@click.option("--no-bench", is_flag=True, help="Skip the recipe's before/after benchmark.")
@opt.bench_size_option("Size of the recipe's benchmark: quick (at most 30 prompts per N and IOI, 32 neutral texts: "
                        "a first look, same rows, wider intervals) or full (as the recipe says).")
@opt.n_prompts_option(None, "Prompts per N (and IOI) of the benchmark, whatever the recipe or --bench say.")
@click.option("--format", "formats", type=click.Choice(OUTPUT_FORMATS), multiple=True,
              help="What to write (repeatable; overrides output.formats, default safetensors): the safetensors "
                   "checkpoint, the patched GGUF file of a GGUF base, a LoRA adapter.")
@click.option("--gguf-fallback", type=click.Choice(FALLBACK_TYPES), default=None,
              help="Type of edited GGUF tensors whose original type the gguf package cannot quantize (K-quants, "
                   "IQ types). [default: q8_0]")
@click.option("--gguf-requant", type=click.Choice(REQUANT_POLICIES), default=None,
              help="auto: an edited GGUF tensor whose re-quantization misses the intended change by more than 1% is "
                   "stored in the fallback type (then F16) instead; keep: always its original type (smallest file). "
                   f"[default: {DEFAULT_REQUANT}]")
def apply_command(recipe: Path, out: Path | None, force: bool, no_bench: bool, formats: tuple[str, ...],
                  gguf_fallback: str | None, gguf_requant: str | None, bench: str, n_prompts: int | None) -> None:
    """Apply RECIPE (YAML) and write the edited model as an ordinary checkpoint."""
    if no_bench and (bench != "full" or n_prompts is not None):
        raise UserError("--no-bench skips the benchmark that --bench and --n-prompts size: give one or the other")
    apply_file(recipe, out, force, benchmark=not no_bench, echo=click.echo, formats=formats or None,
               gguf_fallback=gguf_fallback, gguf_requant=gguf_requant, bench=bench, n_prompts=n_prompts)
