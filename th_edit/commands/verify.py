"""`th-edit verify OUT_DIR`: check an edited checkpoint against its recipe and base."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from th_edit import ui
from th_edit.verify import verify


@click.command("verify")
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option("--base", "base", metavar="MODEL",
              help="Where the base model is now, if not where recipe.yaml's base_model says (its identity is still checked).")
def verify_command(out_dir: Path, base: str | None) -> None:
    """Recompute the edits of OUT_DIR from its recipe.yaml and base model, and check every file
    against its sha256 and every recomputable claim of provenance.json (weights, config and
    tokenizer files, base identity, scales and singular values). Writes nothing. Exit 1 on any
    mismatch."""
    problems = verify(out_dir, base)
    if problems:
        for problem in problems:
            click.echo(f"mismatch: {problem}", err=True)
        sys.exit(1)
    ui.info(f"{out_dir}: every file and every recomputed claim match provenance.json")
    click.echo("ok")
