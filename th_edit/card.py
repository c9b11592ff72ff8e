"""The model card (README.md) and provenance record written with every edited checkpoint."""

from __future__ import annotations

import datetime as dt
import platform
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TypeVar

import yaml

from th_edit import __version__, strict_json
from th_edit.edit import EDIT_COLUMNS, HeadReport, edit_rows
from th_edit.gguf_metadata import read_gguf_metadata
from th_edit.models import ResolvedModel
from th_edit.recipe import Recipe, replace_values

T = TypeVar("T")
# The card's `generate` example: a list-recall question of the kind the edits are about.
GENERATE_PROMPT = ("I had a shirt, a scarf and a towel to wash. I washed the shirt and the towel. "
                   "The one I have not washed yet is the")
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


def public_reference(base: ResolvedModel) -> str:
    """How files that can be published name the base: a local directory or GGUF file by its
    name (its hashes identify it), never by its path on this machine; aliases and hub ids as given."""
    if base.kind == "local":
        return base.path.name
    if base.kind == "gguf" and base.gguf_file:
        return base.gguf_file
    return base.reference


def local_paths(base: ResolvedModel) -> list[str]:
    """Spellings of the base's location on this machine that must not reach a publishable file."""
    if base.kind not in ("local", "gguf"):
        return []
    spellings = {str(base.path), base.reference, str(Path(base.reference).expanduser().absolute())}
    if base.gguf_path is not None:
        spellings |= {str(base.gguf_path)}
    public = public_reference(base)
    return sorted((s for s in spellings if s and s != public), key=len, reverse=True)


def scrub(value: T, base: ResolvedModel) -> T:
    """`value` (text, or JSON-like data) with every local spelling of the base's location
    replaced by its public name. A safety net behind the fields that name the base directly
    (benchmark labels, notes, free text)."""
    paths, public = local_paths(base), public_reference(base)
    if not paths:
        return value

    def clean(item):
        if isinstance(item, str):
            for path in paths:
                item = item.replace(path, public)
            return item
        if isinstance(item, dict):
            return {clean(k): clean(v) for k, v in item.items()}
        if isinstance(item, (list, tuple)):
            return type(item)(clean(v) for v in item)
        return item

    return clean(value)


def publishable_recipe(recipe_text: str, recipe: Recipe, base: ResolvedModel) -> str:
    """The recipe as saved with the checkpoint: verbatim, except that a local base_model and an
    absolute output.dir are replaced by their names (the checkpoint may be pushed)."""
    replacements = {}
    public = public_reference(base)
    if base.kind in ("local", "gguf") and recipe.base_model != public:
        replacements[("base_model",)] = public
    out_dir = recipe.output.dir
    if out_dir and (Path(out_dir).is_absolute() or out_dir.startswith("~")):
        replacements[("output", "dir")] = Path(out_dir).name
    return replace_values(recipe_text, replacements) if replacements else recipe_text


def base_record(base: ResolvedModel, base_weights: dict[str, str] | None) -> dict[str, object]:
    """The base as provenance.json names it: public name, kind, hub revision or file hashes."""
    record = {k: v for k, v in base.provenance().items() if k != "path"}  # no machine-local paths
    record["reference"] = public_reference(base)
    if base_weights:
        record["weight_files_sha256"] = base_weights
    return scrub(record, base)


# The top-level fields of provenance.json, as `provenance` writes them (verify flags any other).
PROVENANCE_FIELDS = ("tool", "th_edit_version", "created_at", "base", "recipe", "output", "libraries", "conventions",
                     "edits", "weights_sha256", "files_sha256", "benchmark", "adapter")


def provenance(recipe: Recipe, recipe_sha256: str, base: ResolvedModel, base_weights: dict[str, str] | None,
               reports: list[HeadReport], weights: dict[str, str], files: dict[str, str], out_dtype: str,
               benchmark: dict | None = None, formats: tuple[str, ...] = ("safetensors",),
               gguf_fallback: str | None = None, outputs: dict[str, object] | None = None,
               gguf_requant: str | None = None) -> dict[str, object]:
    """`weights` and `files` are {name: sha256} of the weight files and of every other file
    written beside them (provenance.json itself excepted: every claim in it is recomputed by
    `th-edit verify` instead). `outputs`: the records of the other output formats ({"adapter": ...})."""
    return scrub({
        "tool": "th-edit",
        "th_edit_version": __version__,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "base": base_record(base, base_weights),
        "recipe": {"file": "recipe.yaml", "sha256": recipe_sha256},
        "output": {"dtype": out_dtype, "max_shard_size": recipe.output.max_shard_size, "formats": list(formats),
                   **({"gguf_fallback": gguf_fallback} if "gguf" in formats and gguf_fallback else {}),
                   **({"gguf_requant": gguf_requant} if "gguf" in formats and gguf_requant else {})},
        "libraries": library_versions(),
        "conventions": CONVENTIONS,
        "edits": [report.as_dict() for report in reports],
        "weights_sha256": weights,
        "files_sha256": files,
        "benchmark": benchmark,
        **(outputs or {}),
    }, base)


def _edit_table(reports: list[HeadReport]) -> str:
    lines = ["| " + " | ".join(EDIT_COLUMNS) + " |", "|" + " ---: |" * len(EDIT_COLUMNS)]
    lines += ["| " + " | ".join(row) + " |" for row in edit_rows(reports)]
    return "\n".join(lines)


def dtype_hint(out_dtype: str, weights_bytes: int) -> str | None:
    """A float32 checkpoint is twice the size it needs to be for most uses: say so, with the numbers."""
    if out_dtype != "float32":
        return None
    return (f"the weights are float32 ({weights_bytes / 1e6:.0f} MB); `output.dtype: bfloat16` in the recipe "
            f"halves that (≈ {weights_bytes / 2e6:.0f} MB), rounding every weight to bfloat16")


@dataclass(frozen=True)
class BaseLicense:
    """What the base says about its license and languages, and where that was read (None: nowhere)."""

    license: str | None = None
    languages: tuple[str, ...] = ()
    source: str | None = None


def base_license(base: ResolvedModel) -> BaseLicense:
    """The base's `license` and `language` from its README front matter (a local or hub checkpoint)
    or its GGUF header (`general.license`, `general.languages`); an edited checkpoint is a
    derivative of the base, so the base's license is the one its card states. Best effort."""
    front = _front_matter(base.path / "README.md")
    license_, languages = front.get("license"), front.get("language")
    source = "the base's README front matter" if license_ else None
    if base.gguf_path is not None and (not license_ or not languages):
        header = read_gguf_metadata(base.gguf_path, ("general.license", "general.languages"))
        if not license_ and header.get("general.license"):
            license_, source = header["general.license"], "the base's GGUF metadata, `general.license`"
        languages = languages or header.get("general.languages")
    if isinstance(languages, str):
        languages = [languages]
    languages = tuple(x for x in languages if isinstance(x, str) and x) if isinstance(languages, list) else ()
    return BaseLicense(license_ if isinstance(license_, str) and license_.strip() else None, languages,
                       source if isinstance(license_, str) and license_.strip() else None)


def _front_matter(readme: Path) -> dict:
    """The YAML block between the first two `---` lines of a model card, or {}."""
    try:
        text = readme.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return {}
    if not text.startswith("---"):
        return {}
    block = text[3:].split("\n---", 1)[0]
    try:
        value = yaml.safe_load(block)
    except yaml.YAMLError:
        return {}
    return value if isinstance(value, dict) else {}


def _plural(count: int, one: str, many: str) -> str:
    return f"{count} {one if count == 1 else many}"


def _not_benchmarked(recipe: Recipe, base: ResolvedModel) -> str:
    why = ("`th-edit apply --no-bench` skipped the recipe's `benchmark:` section" if recipe.benchmark is not None
           else "the recipe has no `benchmark:` section")
    if base.kind in ("local", "gguf"):  # its path stays private: the card names the file or directory only
        command = f"`th-edit bench BASE --compare recipe.yaml`, BASE being the path of `{public_reference(base)}`,"
    else:
        command = f"`th-edit bench {public_reference(base)} --compare recipe.yaml`"
    return (f"**Not benchmarked**: {why}, so nothing here measures what the edit does. From this directory, "
            f"{command} compares the base with and without the edit on identical prompts.")


# Where each format goes on the Hub (th_edit.hub.push --format): the repo-name suffixes the
# examples use are the Hub's habit (…-GGUF, …-lora), not a rule.
FORMAT_REPO_SUFFIX = {"safetensors": "", "gguf": "-GGUF", "lora": "-lora"}
FORMAT_TITLES = {"safetensors": "the edited checkpoint (safetensors, transformers)", "gguf": "the patched GGUF file "
                 "(llama.cpp, ollama, LM Studio)", "lora": "the edit as a PEFT LoRA adapter (PEFT, vLLM)"}


def formats_section(name: str, formats: tuple[str, ...]) -> str:
    """The card section of an output written in several formats: each one is a Hub repo of its own."""
    rows = [f"- {FORMAT_TITLES[f]}: `th-edit push {name} USER/{name}{FORMAT_REPO_SUFFIX[f]} --format {f}`" for f in formats]
    return ("## Formats\n\nth-edit wrote this edit in several formats; each goes to a Hub repo of its own, with the "
            "card and metadata the Hub expects of it:\n\n" + "\n".join(rows))


def model_card(name: str, recipe: Recipe, recipe_text: str, base: ResolvedModel, reports: list[HeadReport],
               out_dtype: str, benchmark: tuple[dict, str] | None = None, benchmark_plot: str | None = None,
               weights_bytes: int | None = None, formats: tuple[str, ...] = ("safetensors",),
               sections: list[str] | None = None) -> str:
    """The README.md of an edited checkpoint named `name` (its directory); `benchmark` is
    (paired report, rendered table). A local base is named by its directory name only."""
    front: dict[str, object] = {}
    if base.hub_id:  # a local path means nothing to the Hub
        front["base_model"] = base.hub_id
        front["base_model_relation"] = "finetune"  # the Hub's word for changed weights of the same architecture
    inherited = base_license(base)
    if inherited.license:
        front["license"] = inherited.license
    if inherited.languages:
        front["language"] = list(inherited.languages)
    # A repo of only a GGUF file is a GGUF repo to the Hub; otherwise transformers loads it.
    front["library_name"] = "transformers" if "safetensors" in formats else "gguf"
    front["pipeline_tag"] = "text-generation"
    front["tags"] = ["th-edit", "model-editing", *(["gguf"] if "gguf" in formats else [])]
    n_components = sum(len(r.components) for r in reports)
    base_line = f"`{public_reference(base)}`"
    if base.kind == "local":
        base_line = f"The local checkpoint {base_line} (sha256 of its weight files in `provenance.json`)"
    if base.revision:
        base_line += f" at revision `{base.revision}`"
    if base.gguf_file:
        base_line += f" (GGUF file `{base.gguf_file}`, sha256 `{base.gguf_sha256}`)"
    parts = [
        "---\n" + yaml.safe_dump(front, sort_keys=False) + "---",
        f"# {name}",
        f"{base_line} with {_plural(n_components, 'singular component', 'singular components')} of "
        f"{_plural(len(reports), 'attention head matrix', 'attention head matrices')} rescaled by th-edit {__version__}. "
        + ("It is an ordinary checkpoint of the same architecture: plain `transformers` loads it, th-edit is not needed."
           if "safetensors" in formats else "It is a GGUF file of the same architecture as the base (see GGUF below)."),
    ]
    if inherited.license:
        parts.append(f"**License:** `{inherited.license}`, the base's (read from {inherited.source}): this checkpoint "
                     "is a derivative of the base, whose license terms apply to it.")
    else:
        parts.append("**License:** not stated. The base's license could not be read (no `license` in its README "
                     "front matter or GGUF metadata), so this card names none; this checkpoint is a derivative of "
                     "the base, whose license terms apply to it: add them before publishing.")
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
    if not benchmark:
        parts += ["## Before / after", _not_benchmarked(recipe, base)]
    else:
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
    parts += list(sections or ())
    parts += ["## Recipe", "```yaml\n" + recipe_text.rstrip() + "\n```"]
    if "safetensors" in formats:
        parts += [
            "## Usage",
            f"Load it from this directory (`{name}`) or, once pushed, from its Hub repo id:",
            "```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
            f"model = AutoModelForCausalLM.from_pretrained({strict_json.dumps(name, ensure_ascii=False)})\n"
            f"tokenizer = AutoTokenizer.from_pretrained({strict_json.dumps(name, ensure_ascii=False)})\n\n"
            f"inputs = tokenizer({strict_json.dumps(GENERATE_PROMPT)}, return_tensors=\"pt\")\n"
            "output = model.generate(**inputs, max_new_tokens=8, do_sample=False)\n"
            "print(tokenizer.decode(output[0][inputs[\"input_ids\"].shape[1]:], skip_special_tokens=True))\n```",
        ]
    hint = dtype_hint(out_dtype, weights_bytes) if weights_bytes else None
    if hint:
        parts.append(f"Size: {hint[0].upper()}{hint[1:]}.")
    parts += [
        "## Provenance",
        "`provenance.json` records the base model (revision or file hashes), library versions, the realized "
        "singular values of every edit and the sha256 of every file written with it; `th-edit verify <dir>` "
        "recomputes the edits from `recipe.yaml` and the base, and checks every file and claim.",
    ]
    return scrub("\n\n".join(parts) + "\n", base)
