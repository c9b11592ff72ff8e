"""`apply`: recipe in, edited checkpoint out. Shared by the `apply` and `verify` commands."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from th_edit import strict_json, ui
from th_edit.arch import Adapter, adapter_for
from th_edit.card import dtype_hint, formats_section, model_card, provenance, publishable_recipe, scrub
from th_edit.checkpoint import CheckpointTensors, sha256_file
from th_edit.edit import EDIT_COLUMNS, EditPlan, edit_rows, edit_summary, plan_edit
from th_edit.errors import UserError
from th_edit.export import (
    BENCHMARK_PLOT,
    CARD_FILE,
    GGUF_CARD,
    LOCAL_RECORD,
    RECIPE_FILE,
    check_target,
    side_file_root,
    side_file_sources,
    side_files,
    staging_directory,
    write_weights,
)
from th_edit.models import ResolvedModel, load_config, resolve
from th_edit.recipe import (
    DEFAULT_FORMATS,
    OUTPUT_FORMATS,
    Recipe,
    check_against_model,
    index_problems,
    problems_error,
    read_recipe,
    sized_benchmark,
)

# The key of a benchmark report's setup that records how apply sized it (absent: as the recipe says).
SIZING_KEY = "sizing"


@dataclass
class Prepared:
    """A validated recipe bound to its resolved base model."""

    recipe: Recipe
    recipe_text: str
    source: str  # where the recipe came from, for messages
    base: ResolvedModel
    adapter: Adapter
    tensors: CheckpointTensors
    formats: tuple[str, ...] = DEFAULT_FORMATS  # what `write` writes (output.formats, or apply --format)
    gguf_fallback: str = "q8_0"  # type of edited GGUF tensors the gguf package cannot re-quantize
    gguf_requant: str = "auto"  # --gguf-requant: auto moves an edit its original type swallows to a finer type

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


Computed = EditPlan  # the edit as the checkpoint will hold it (th_edit.edit.plan_edit)


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
    """The recipe file bound to its base model; every problem of the recipe, the schema's and the
    indices' alike, in one error."""
    validated, text = read_recipe(path)
    source, problems = str(path), list(validated.problems)
    if validated.base_model is None:  # then the schema says so among the problems
        raise problems_error(source, problems)
    try:
        base = resolve(validated.base_model)
    except UserError as exc:
        raise problems_error(source, [*problems, f"base_model: {exc}"]) from None
    adapter = adapter_for(load_config(base))
    problems += index_problems(validated.edits, adapter)
    if problems:
        raise problems_error(source, problems)
    assert validated.recipe is not None
    return Prepared(validated.recipe, text, source, base, adapter, base.tensors())


def choose_formats(prepared: Prepared, formats: tuple[str, ...] | None, gguf_fallback: str | None,
                   gguf_requant: str | None = None) -> None:
    """--format (repeatable) over the recipe's output.formats; every format checked against the
    base before any work (a GGUF output needs a GGUF base)."""
    chosen = tuple(dict.fromkeys(formats or prepared.recipe.output.formats or DEFAULT_FORMATS))
    unknown = [f for f in chosen if f not in OUTPUT_FORMATS]
    if unknown:
        raise UserError(f"--format: unknown format '{unknown[0]}'; choose from {', '.join(OUTPUT_FORMATS)}")
    prepared.formats = chosen
    prepared.gguf_fallback = gguf_fallback or prepared.gguf_fallback
    prepared.gguf_requant = gguf_requant or prepared.gguf_requant
    if "gguf" in chosen or gguf_fallback is not None:
        from th_edit.gguf_export import FALLBACK_TYPES, check_gguf_base

        if "gguf" in chosen:
            check_gguf_base(prepared.base, prepared.gguf_fallback)
        elif prepared.gguf_fallback not in FALLBACK_TYPES:
            raise UserError(f"--gguf-fallback: unknown type '{prepared.gguf_fallback}'; choose one of "
                            f"{', '.join(FALLBACK_TYPES)}")
    from th_edit.gguf_export import REQUANT_POLICIES

    if prepared.gguf_requant not in REQUANT_POLICIES:
        raise UserError(f"--gguf-requant: unknown policy '{prepared.gguf_requant}'; choose one of "
                        f"{', '.join(REQUANT_POLICIES)}")
    if "lora" in chosen and "safetensors" not in chosen:
        raise UserError("--format lora writes the adapter beside the edited checkpoint (into its adapter/ directory): "
                        "add --format safetensors")


@dataclass
class FormatOutput:
    """What one extra format wrote into the staging directory."""

    files: dict[str, str]  # file name -> sha256
    card_section: str | None = None  # appended to the model card
    notes: list[str] | None = None  # status lines for the user


def _write_gguf(staging: Path, name: str, prepared: Prepared, computed: Computed, recipe_sha256: str) -> FormatOutput:
    """<name>.<quantization>.gguf and its ollama Modelfile (th_edit.gguf_export)."""
    from th_edit.gguf_export import MODELFILE, card_section, fallback_lines, gguf_file_name, modelfile, write_gguf

    assert prepared.base.gguf_path is not None
    file = gguf_file_name(name, prepared.base.gguf_path)
    output = write_gguf(staging / file, prepared.base, prepared.adapter, prepared.tensors, computed.result, recipe_sha256,
                        prepared.gguf_fallback, requant=prepared.gguf_requant)
    (staging / MODELFILE).write_text(modelfile(file, prepared.base.gguf_path))
    for message in output.warnings:
        ui.warn(message)
    notes = fallback_lines(output)
    return FormatOutput({n: sha256_file(staging / n) for n in (file, MODELFILE)},
                        card_section(output, prepared.gguf_fallback, name), notes)


# The formats written beside the checkpoint's side files (safetensors is `write_weights`):
# format -> writer(staging directory, output directory name, prepared, computed, recipe sha256).
FORMAT_WRITERS: dict[str, Callable[[Path, str, Prepared, Computed, str], FormatOutput]] = {"gguf": _write_gguf}


def compute(prepared: Prepared) -> EditPlan:
    """The recipe's edit of the stored weights, cast to the output dtype, measured, with its warnings."""
    tensors = prepared.tensors
    return plan_edit(prepared.adapter, tensors, prepared.recipe.edits, lambda name: tensors.entry(name).torch_dtype,
                     prepared.out_dtype)


@dataclass
class BenchmarkRun:
    report: dict  # th_edit.bench paired report (JSON-able)
    text: str  # the rendered before/after table


def benchmark_session(prepared: Prepared):
    """The base model loaded once for the before/after benchmark, its weights rounded to the output
    dtype exactly as the export will write them (computation stays float32)."""
    from th_edit.models import load_model, load_tokenizer
    from th_edit.session import Session

    model = load_model(prepared.base, dtype="float32")
    if prepared.out_dtype is not None and prepared.out_dtype != torch.float32:
        model = model.to(prepared.out_dtype).to(torch.float32)  # round every weight as the export will
    return Session(model, load_tokenizer(prepared.base), reference=prepared.base.reference, resolved=prepared.base)


def run_benchmark(prepared: Prepared, computed: Computed, bench: str = "full", n_prompts: int | None = None
                  ) -> BenchmarkRun:
    """The recipe's `benchmark:` section (sized by `apply --bench` / `--n-prompts`, recorded in the
    report's setup for `verify`): paired before/after on identical prompts, plus KL. The "after"
    side swaps in exactly the tensors that will be written."""
    from th_edit import bench as benchmarks

    assert prepared.recipe.benchmark is not None
    settings = sized_benchmark(prepared.recipe.benchmark, bench, n_prompts)
    session = benchmark_session(prepared)
    seed = prepared.recipe.seed if settings.seed is None else settings.seed
    setup: dict[str, object] = {"weights": prepared.out_dtype_name, "compute": "float32"}
    if settings != prepared.recipe.benchmark:
        setup[SIZING_KEY] = {"bench": bench, "n_prompts": n_prompts}
    report = benchmarks.paired(session, computed, settings.tasks, settings.n_items,
                               settings.n_prompts, seed, settings.batch_size, kl=settings.kl, kl_texts=settings.kl_texts,
                               extra_setup=setup, keep_base_logits=False,
                               generation=settings.generation)
    note = sizing_note(report, prepared.recipe)
    return BenchmarkRun(report, report.text + (f"\n{note}" if note else ""))


def sizing_note(report: dict, recipe: Recipe) -> str | None:
    """One line under a benchmark smaller than the recipe's: what was run, and how to get the full table."""
    sizing = report["setup"].get(SIZING_KEY)
    if not sizing or recipe.benchmark is None:
        return None
    kl = report.get("side_effects", {}).get("neutral_kl")
    texts = f" and {kl['n_texts']} neutral texts" if isinstance(kl, dict) else ""
    return (f"(a smaller benchmark than the recipe's: {report['setup']['n_prompts_per_n']} prompts per N{texts}, "
            f"the recipe asks for {recipe.benchmark.n_prompts}; `th-edit apply` without --bench quick or --n-prompts "
            "gives the full table)")


def resolve_target(prepared: Prepared, out: Path | None) -> Path:
    """--out, else the recipe's output.dir, else out/<recipe file name without .yaml>."""
    if out is not None:
        return out
    if prepared.recipe.output.dir:
        return Path(prepared.recipe.output.dir).expanduser()
    return Path("out") / Path(prepared.source).stem


def extra_outputs(prepared: Prepared, computed: Computed, formats: tuple[str, ...]) -> tuple[dict[str, bytes], dict]:
    """The files of the formats other than the checkpoint itself ({path in the output directory: bytes})
    and their provenance records ({field: record}), computed before anything is written: a format
    the base cannot give is refused here."""
    files: dict[str, bytes] = {}
    records: dict[str, object] = {}
    if "lora" in formats:
        from th_edit.lora import checkpoint_adapter

        adapter, adapter_files = checkpoint_adapter(prepared, computed)
        files.update(adapter_files)
        records["adapter"] = adapter.record()
    return files, records


def write(prepared: Prepared, computed: Computed, target: Path, force: bool,
          benchmark: BenchmarkRun | None = None, extra: tuple[dict[str, bytes], dict] | None = None) -> dict[str, str]:
    """Write the complete checkpoint atomically; returns {weight file: sha256}.

    `extra`: the other formats' files and provenance records (`extra_outputs`).
    Nothing written names the base's location on this machine (card.scrub): a local base is
    named by its directory name and hashes. Where it is goes into LOCAL_RECORD, which push
    never uploads and verify reads."""
    base = prepared.base
    extra_files, extra_records = extra or ({}, {})
    recipe_text = publishable_recipe(prepared.recipe_text, prepared.recipe, base)
    report = scrub(benchmark.report, base) if benchmark else None
    with staging_directory(target, force) as staging, ThreadPoolExecutor(max_workers=1) as pool:
        # A hub revision or GGUF hash already pins the base; a local directory is pinned by its
        # files, hashed on a second thread while the weights are written (hashlib releases the GIL).
        base_hashes = pool.submit(_hash_files, prepared.tensors.files) if base.kind == "local" else None
        weights = write_weights(staging, prepared.tensors, computed.cast, prepared.out_dtype,
                                prepared.recipe.output.max_shard_bytes) if "safetensors" in prepared.formats else {}
        base_weights = base_hashes.result() if base_hashes else None
        files = side_files(base.path, side_file_root(base.path, base.kind), prepared.out_dtype)
        files[RECIPE_FILE] = recipe_text.encode()
        if benchmark is not None:
            from th_edit.plots import plot_accuracy  # matplotlib is slow to import

            plot_accuracy(report, staging / BENCHMARK_PLOT)
            files[BENCHMARK_PLOT] = (staging / BENCHMARK_PLOT).read_bytes()
        weights_bytes = sum((staging / name).stat().st_size for name in weights)
        recipe_sha256 = hashlib.sha256(files[RECIPE_FILE]).hexdigest()
        written = {fmt: FORMAT_WRITERS[fmt](staging, target.name, prepared, computed, recipe_sha256)
                   for fmt in prepared.formats if fmt in FORMAT_WRITERS}
        # One card per Hub repo (th_edit.hub): the checkpoint's README.md (the GGUF one when GGUF is all
        # there is), and beside a checkpoint the GGUF repo's own card; the adapter has its own in adapter/.
        sections = {fmt: out.card_section for fmt, out in written.items() if out.card_section}
        others = [formats_section(target.name, prepared.formats)] if len(prepared.formats) > 1 else []
        card_args = (target.name, prepared.recipe, recipe_text, base, computed.result.reports, prepared.out_dtype_name,
                     (report, scrub(benchmark.text, base)) if benchmark else None, BENCHMARK_PLOT if benchmark else None)
        main = tuple(f for f in prepared.formats if f != "gguf") if "safetensors" in prepared.formats else ("gguf",)
        files[CARD_FILE] = model_card(*card_args, weights_bytes if "safetensors" in main else None, formats=main,
                                      sections=[*(sections[f] for f in main if f in sections), *others]).encode()
        if "gguf" in prepared.formats and "gguf" not in main:
            files[GGUF_CARD] = model_card(*card_args, None, formats=("gguf",),
                                          sections=[sections["gguf"], *others]).encode()
        files.update(extra_files)
        for name, data in files.items():
            (staging / name).parent.mkdir(exist_ok=True)
            (staging / name).write_bytes(data)
        hashes = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
        for out in written.values():
            hashes.update(out.files)
            for note in out.notes or ():
                ui.info(note)
        record = provenance(prepared.recipe, recipe_sha256, base, base_weights, computed.result.reports, weights,
                            dict(sorted(hashes.items())), prepared.out_dtype_name, report, formats=prepared.formats,
                            gguf_fallback=prepared.gguf_fallback, gguf_requant=prepared.gguf_requant,
                            outputs=extra_records)
        (staging / "provenance.json").write_text(strict_json.dumps(record, indent=2) + "\n")
        if base.kind in ("local", "gguf"):
            local = {"base": str(base.gguf_path or base.path)}
            (staging / LOCAL_RECORD).write_text(strict_json.dumps(local, indent=2) + "\n")
    return weights


def _hash_files(files: list[Path]) -> dict[str, str]:
    return {path.name: sha256_file(path) for path in files}


def report_warnings(computed: Computed) -> None:
    for message in computed.warnings:
        ui.warn(message)


def apply_file(recipe: Path, out: Path | None = None, force: bool = False, benchmark: bool = True,
               echo: Callable[[str], None] = print, formats: tuple[str, ...] | None = None,
               gguf_fallback: str | None = None, gguf_requant: str | None = None, bench: str = "full",
               n_prompts: int | None = None) -> Path:
    """`th-edit apply` end to end: check the recipe and the target, compute the edit, show it,
    benchmark it (the recipe's `benchmark:` section, unless `benchmark=False`; `bench` "quick" and
    `n_prompts` make it smaller), write the checkpoint in each of `formats` (default: the recipe's
    output.formats).
    Tables go to `echo` (stdout), status lines to th_edit.ui. Returns the directory written."""
    prepared = prepare_file(recipe)
    choose_formats(prepared, formats, gguf_fallback, gguf_requant)
    target = resolve_target(prepared, out)
    check_target(target, force, [*prepared.base.inputs(), recipe])
    side_file_sources(prepared.base.path, side_file_root(prepared.base.path, prepared.base.kind))  # links checked now
    ui.info(f"editing {prepared.base.reference}: {len(prepared.recipe.edits)} edit(s)")
    computed = compute(prepared)
    report_warnings(computed)
    extra = extra_outputs(prepared, computed, prepared.formats)
    if ui.is_verbose():
        echo("\n".join(ui.table(EDIT_COLUMNS, edit_rows(computed.reports), left=0)))
    else:  # the full table is in the model card, and with `th-edit -v apply`
        echo("\n".join(edit_summary(computed.reports) + ["(every component: th-edit -v apply, or the model card)"]))
    run = None
    if prepared.recipe.benchmark is not None and benchmark:
        ui.info("benchmarking before and after the edit (--no-bench skips this)")
        run = run_benchmark(prepared, computed, bench, n_prompts)
        echo("\n" + run.text)
    weights = write(prepared, computed, target, force, run, extra)
    echo(f"wrote {target}")
    if "adapter" in extra[1]:
        modules = extra[1]["adapter"]["modules"]
        echo(f"wrote {target / extra[1]['adapter']['dir']}: PEFT LoRA adapter of {len(modules)} module(s), "
             f"rank {min(modules.values())} to {max(modules.values())}")
    hint = dtype_hint(prepared.out_dtype_name, sum((target / name).stat().st_size for name in weights)) if weights else None
    if hint:
        ui.info(f"hint: {hint}")
    return target
