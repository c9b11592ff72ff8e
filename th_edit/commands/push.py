"""`th-edit push OUT_DIR REPO_ID`: upload an edited checkpoint to the Hugging Face Hub."""

from __future__ import annotations

from pathlib import Path

import click

from th_edit import ui
from th_edit.hub import FORMAT_NAMES, PushPlan, plan_push, push
from th_edit.recipe import OUTPUT_FORMATS


@click.command("push")
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.argument("repo_id")
@click.option("--private", is_flag=True, help="Create the repo as private (if it does not exist yet).")
@click.option("--revision", help="Branch to push to (created if needed; default: main).")
@click.option("--dry-run", is_flag=True, help="Show what would be uploaded; contact nothing.")
@click.option("--format", "fmt", type=click.Choice(OUTPUT_FORMATS), default=None,
              help="Which output to push, each to a repo of its own: the safetensors checkpoint (default), the "
                   "GGUF file (default when apply wrote no checkpoint) or the LoRA adapter.")
def push_command(out_dir: Path, repo_id: str, private: bool, revision: str | None, dry_run: bool,
                 fmt: str | None) -> None:
    """Upload one format of what apply wrote in OUT_DIR (the files provenance.json lists, unchanged
    since; nothing else in the folder) to the Hub repo REPO_ID, created if needed, with the card the
    Hub expects of that format. The token comes from HF_TOKEN or your cached `hf auth login`;
    th-edit never prints or stores it."""
    plan = plan_push(out_dir, repo_id, private, revision, fmt)
    if dry_run:
        click.echo(f"would upload {FORMAT_NAMES[plan.format]}, {len(plan.files)} files ({plan.total_bytes / 1e6:.1f} MB) "
                   f"from {plan.folder} to {plan.repo_id}{'@' + plan.revision if plan.revision else ''}"
                   f"{' (private)' if plan.private else ''}:")
        renamed = dict(plan.sources)
        for name, size in plan.files:
            click.echo(f"  {name}  {size:,} bytes" + (f"  (from {renamed[name]})" if name in renamed else ""))
        others = sorted({p.name for p in plan.folder.iterdir()} - {name.split("/")[0] for name in plan.written})
        if others:
            click.echo(f"not uploaded (not written by apply): {', '.join(others)}")
        _other_formats(plan)
        return
    ui.info(f"pushing {FORMAT_NAMES[plan.format]} in {plan.folder} to {plan.repo_id} ...")
    url = push(plan)
    click.echo(f"pushed: {url}")
    _other_formats(plan)


def _other_formats(plan: PushPlan) -> None:
    for fmt in plan.left_out:
        ui.info(f"not pushed: {FORMAT_NAMES[fmt]} (a repo of its own: `th-edit push {plan.folder} REPO_ID --format {fmt}`)")
