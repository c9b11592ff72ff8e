"""`apply`: recipe in, edited checkpoint out. Shared by the `apply` and `verify` commands."""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch

from th_edit import strict_json, ui
from th_edit.arch import Adapter, adapter_for
from th_edit.card import model_card, provenance
from th_edit.checkpoint import CheckpointTensors, sha256_file
from th_edit.edit import EditResult, Overlay, cast_for_output, compute_edits, measure_realized
from th_edit.errors import UserError
from th_edit.export import copy_side_files, staging_directory, write_weights
from th_edit.models import ResolvedModel, load_config, resolve
from th_edit.recipe import Recipe, check_against_model, load_recipe

BENCHMARK_PLOT = "benchmark.png"


@dataclass
class Prepared:
    """A validated recipe bound to its resolved base model."""

    recipe: Recipe
    recipe_text: str
    source: str  # where the recipe came from, for messages
    base: ResolvedModel
    adapter: Adapter
    tensors: CheckpointTensors

    @property
    def out_dtype(self) -> torch.dtype | None:
        dtype = self.recipe.output.dtype
        return None if dtype == "keep" else getattr(torch, dtype)

    @property
    def out_dtype_name(self) -> str:
        if self.out_dtype is not None:
            return str(self.out_dtype).removeprefix("torch.")
        stored = {e.torch_dtype for e in self.tensors.entries.values() if e.torch_dtype.is_floating_point}
        return ", ".join(sorted(str(d).removeprefix("torch.") for d in stored))


@dataclass
class Computed:
    """The edit, cast to the output dtype, with realized singular values measured."""

    result: EditResult
    cast: dict[str, torch.Tensor]  # parameter name -> tensor as it will be written
    warnings: list[str] = field(default_factory=list)


def resolve_base(reference: str, source: str) -> ResolvedModel:
    try:
        return resolve(reference)
    except UserError as exc:
        raise UserError(f"{source}: base_model: {exc}") from None


def prepare(recipe: Recipe, recipe_text: str, source: str, base: ResolvedModel | None = None) -> Prepared:
    """Resolve the base model (unless given) and check the recipe's indices against it."""
    base = base or resolve_base(recipe.base_model, source)
    adapter = adapter_for(load_config(base))
    check_against_model(recipe, adapter, source)
    return Prepared(recipe, recipe_text, source, base, adapter, base.tensors())


def prepare_file(path: Path) -> Prepared:
    recipe, text = load_recipe(path)
    return prepare(recipe, text, str(path))


def compute(prepared: Prepared) -> Computed:
    tensors = prepared.tensors
    result = compute_edits(prepared.adapter, tensors, prepared.recipe.edits)
    stored = {name: tensors.entry(name).torch_dtype for name in result.tensors}
    cast, warnings = cast_for_output(result, stored, prepared.out_dtype)
    measure_realized(prepared.adapter, Overlay(tensors, cast, prepared.out_dtype), result)
    for report in result.reports:
        for k in report.ambiguous:
            warnings.append(
                f"layer {report.layer} head {report.head} {report.circuit.upper()} component {k}: its singular value "
                "is within 1e-3 (relative) of a neighbour's, so which direction index k names is not stable"
            )
    return Computed(result, cast, warnings)


@dataclass
class BenchmarkRun:
    report: dict  # th_edit.bench paired report (JSON-able)
    text: str  # the rendered before/after table


def edited_variants(prepared: Prepared, computed: Computed):
    """The base model once in memory, as "before" and "after" (edited tensors swapped in only
    while "after" runs). Weights are those that will be written (rounded to the output dtype),
    computation is float32."""
    from th_edit.bench import Variant
    from th_edit.models import load_model, load_tokenizer

    model = load_model(prepared.base, dtype="float32")
    if prepared.out_dtype is not None and prepared.out_dtype != torch.float32:
        model = model.to(prepared.out_dtype).to(torch.float32)  # round every weight as the export will
    return load_tokenizer(prepared.base), Variant(model), Variant(model, computed.cast)


def run_benchmark(prepared: Prepared, computed: Computed) -> BenchmarkRun:
    """The recipe's `benchmark:` section: paired before/after on identical prompts, plus KL."""
    from th_edit.bench import build_prompts, lexicon_record, render_report, run_paired

    settings = prepared.recipe.benchmark
    assert settings is not None
    tokenizer, before, after = edited_variants(prepared, computed)
    seed = prepared.recipe.seed if settings.seed is None else settings.seed
    prompts = build_prompts(tokenizer, settings.tasks, settings.n_items, settings.n_prompts, seed)
    setup = {"tasks": list(settings.tasks), "prompts": "generated", "seed": seed,
             "n_prompts_per_n": settings.n_prompts, "n_items": list(settings.n_items),
             "batch_size": settings.batch_size, "weights": prepared.out_dtype_name, "compute": "float32"}
    if "laundry" in settings.tasks:
        setup["laundry_lexicon"] = lexicon_record(tokenizer)
    reference = prepared.base.reference
    report = run_paired(before, after, tokenizer, prompts, before_info={"reference": reference},
                        after_info={"reference": f"{reference} + recipe edits"}, setup=setup,
                        batch_size=settings.batch_size)
    return BenchmarkRun(report, render_report(report))


def resolve_target(prepared: Prepared, out: Path | None) -> Path:
    if out is not None:
        return out
    if prepared.recipe.output.dir:
        return Path(prepared.recipe.output.dir).expanduser()
    raise UserError(f"{prepared.source}: output.dir is not set (set it in the recipe or pass --out)")


def write(prepared: Prepared, computed: Computed, target: Path, force: bool,
          benchmark: BenchmarkRun | None = None) -> dict[str, str]:
    """Write the complete checkpoint atomically; returns {weight file: sha256}."""
    base = prepared.base
    with staging_directory(target, force) as staging, ThreadPoolExecutor(max_workers=1) as pool:
        # A hub revision or GGUF hash already pins the base; a local directory is pinned by its
        # files, hashed on a second thread while the weights are written (hashlib releases the GIL).
        base_hashes = pool.submit(_hash_files, prepared.tensors.files) if base.kind == "local" else None
        weights = write_weights(staging, prepared.tensors, computed.cast, prepared.out_dtype,
                                prepared.recipe.output.max_shard_bytes)
        base_weights = base_hashes.result() if base_hashes else None
        copy_side_files(base.path, staging, prepared.out_dtype)
        (staging / "recipe.yaml").write_text(prepared.recipe_text)
        if benchmark is not None:
            from th_edit.plots import plot_accuracy  # matplotlib is slow to import

            plot_accuracy(benchmark.report, staging / BENCHMARK_PLOT)
        record = provenance(
            prepared.recipe, hashlib.sha256(prepared.recipe_text.encode()).hexdigest(), base, base_weights,
            computed.result.reports, weights, prepared.out_dtype_name, benchmark.report if benchmark else None,
        )
        (staging / "provenance.json").write_text(strict_json.dumps(record, indent=2) + "\n")
        card = model_card(target.name, prepared.recipe, prepared.recipe_text, base, computed.result.reports,
                          prepared.out_dtype_name, (benchmark.report, benchmark.text) if benchmark else None,
                          BENCHMARK_PLOT if benchmark else None)
        (staging / "README.md").write_text(card)
    return weights


def _hash_files(files: list[Path]) -> dict[str, str]:
    return {path.name: sha256_file(path) for path in files}


def report_warnings(computed: Computed) -> None:
    for message in computed.warnings:
        ui.warn(message)
