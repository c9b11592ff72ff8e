"""`th-edit push OUT_DIR REPO_ID`: upload an edited checkpoint to the Hugging Face Hub."""

from __future__ import annotations

from pathlib import Path

import click

from th_edit import ui
from th_edit.hub import plan_push, push


@click.command("push")
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.argument("repo_id")
@click.option("--private", is_flag=True, help="Create the repo as private (if it does not exist yet).")
@click.option("--revision", help="Branch to push to (created if needed; default: main).")
@click.option("--dry-run", is_flag=True, help="Show what would be uploaded; contact nothing.")
def push_command(out_dir: Path, repo_id: str, private: bool, revision: str | None, dry_run: bool) -> None:
    """Upload the checkpoint apply wrote in OUT_DIR (the files provenance.json lists, unchanged
    since; nothing else in the folder) to the Hub repo REPO_ID, created if needed. The token
    comes from HF_TOKEN or your cached `hf auth login`; th-edit never prints or stores it."""
    plan = plan_push(out_dir, repo_id, private, revision)
    if dry_run:
        click.echo(f"would upload {len(plan.files)} files ({plan.total_bytes / 1e6:.1f} MB) from {plan.folder} "
                   f"to {plan.repo_id}{'@' + plan.revision if plan.revision else ''}"
                   f"{' (private)' if plan.private else ''}:")
        for name, size in plan.files:
            click.echo(f"  {name}  {size:,} bytes")
        others = sorted({p.name for p in plan.folder.iterdir()} - {name for name, _ in plan.files})
        if others:
            click.echo(f"not uploaded (not written by apply): {', '.join(others)}")
        return
    ui.info(f"pushing {plan.folder} to {plan.repo_id} ...")
    url = push(plan)
    click.echo(f"pushed: {url}")
