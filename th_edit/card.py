"""The model card (README.md) and provenance record written with every edited checkpoint."""

from __future__ import annotations

import datetime as dt
import platform
from importlib.metadata import PackageNotFoundError, version

import yaml

from th_edit import __version__
from th_edit.edit import EDIT_COLUMNS, HeadReport, edit_rows
from th_edit.models import ResolvedModel
from th_edit.recipe import Recipe

LIBRARIES = ("torch", "transformers", "safetensors", "huggingface_hub", "numpy", "gguf", "pydantic")
CONVENTIONS = (
    "Singular components of each query head's effective OV = W_V W_O and QK = W_Q W_K^T (input norm folded; "
    "QK-norm and post-attention norm weights folded; biases and rotary left out), 0 = largest. "
    "OV edits are written into the head's slice of the output projection, QK edits into its slice of the "
    "query projection; key/value projections are never touched."
)


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "th-edit": __version__}
    for name in LIBRARIES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            pass
    return versions


def provenance(recipe: Recipe, recipe_sha256: str, base: ResolvedModel, base_weights: dict[str, str] | None,
               reports: list[HeadReport], weights: dict[str, str], out_dtype: str,
               benchmark: dict | None = None) -> dict[str, object]:
    base_record = {k: v for k, v in base.provenance().items() if k != "path"}  # no machine-local paths
    if base_weights:
        base_record["weight_files_sha256"] = base_weights
    return {
        "tool": "th-edit",
        "th_edit_version": __version__,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "base": base_record,
        "recipe": {"file": "recipe.yaml", "sha256": recipe_sha256},
        "output": {"dtype": out_dtype, "max_shard_size": recipe.output.max_shard_size},
        "libraries": library_versions(),
        "conventions": CONVENTIONS,
        "edits": [report.as_dict() for report in reports],
        "weights_sha256": weights,
        "benchmark": benchmark,
    }


def _edit_table(reports: list[HeadReport]) -> str:
    lines = ["| " + " | ".join(EDIT_COLUMNS) + " |", "|" + " ---: |" * len(EDIT_COLUMNS)]
    lines += ["| " + " | ".join(row) + " |" for row in edit_rows(reports)]
    return "\n".join(lines)


def model_card(name: str, recipe: Recipe, recipe_text: str, base: ResolvedModel, reports: list[HeadReport],
               out_dtype: str, benchmark: tuple[dict, str] | None = None, benchmark_plot: str | None = None) -> str:
    """The README.md of an edited checkpoint; `benchmark` is (paired report, rendered table)."""
    front: dict[str, object] = {}
    if base.hub_id:  # a local path means nothing to the Hub
        front["base_model"] = base.hub_id
    front["library_name"] = "transformers"
    front["tags"] = ["th-edit", "model-editing"]
    n_components = sum(len(r.components) for r in reports)
    base_line = f"`{base.reference}`"
    if base.revision:
        base_line += f" at revision `{base.revision}`"
    if base.gguf_file:
        base_line += f" (GGUF file `{base.gguf_file}`, sha256 `{base.gguf_sha256}`)"
    parts = [
        "---\n" + yaml.safe_dump(front, sort_keys=False) + "---",
        f"# {name}",
        f"{base_line} with {n_components} singular component(s) of {len(reports)} attention head matrix(es) "
        f"rescaled by th-edit {__version__}. "
        "It is an ordinary checkpoint of the same architecture: plain `transformers` loads it, th-edit is not needed.",
    ]
    if recipe.description:
        parts.append(recipe.description.strip())
    if base.notes:
        parts.append("\n".join(f"**Note:** {note}." for note in base.notes))
    parts += [
        "## Edits",
        "Singular values σ of each head's effective matrix before the edit, the target (scale × σ) and the "
        f"value measured by re-decomposing the written weights ({out_dtype}).",
        _edit_table(reports),
        CONVENTIONS,
    ]
    if benchmark:
        report, text = benchmark
        parts += [
            "## Before / after",
            "Measured by th-edit on identical prompts before and after the edit (paired), in float32 on the "
            f"weights as written. Prompts generated from seed {report['setup']['seed']}; laundry = recall the "
            "one item of a list of N that is not mentioned again, IOI = indirect object identification. "
            "Full numbers (per N, per answer position, intervals) are in `provenance.json`.",
            "```text\n" + text.rstrip() + "\n```",
        ]
        if benchmark_plot:
            parts.append(f"![candidate accuracy before and after the edit]({benchmark_plot})")
    parts += [
        "## Recipe",
        "```yaml\n" + recipe_text.rstrip() + "\n```",
        "## Usage",
        "```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
        'model = AutoModelForCausalLM.from_pretrained("<this repo or directory>")\n'
        'tokenizer = AutoTokenizer.from_pretrained("<this repo or directory>")\n```',
        "## Provenance",
        "`provenance.json` records the base model (revision or file hash), library versions, the realized "
        "singular values of every edit and the sha256 of every weight file; `th-edit verify <dir>` recomputes "
        "the edits from `recipe.yaml` and checks them.",
    ]
    return "\n\n".join(parts) + "\n"
