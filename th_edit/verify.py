"""`verify`: recompute an edited checkpoint from its saved recipe and base, and compare.

Every file apply wrote is hashed in provenance.json, and every claim of provenance.json that
can be recomputed is: the weights (rebuilt and hashed, nothing written), config and tokenizer
files (derived from the base again), the base's identity, the edits' scales and singular values,
the output settings. provenance.json cannot hash itself; it is protected by that recomputation.
Not recomputed: benchmark numbers (`th-edit bench BASE --compare OUT_DIR` measures them again),
creation time and library versions (facts about the run, not about the files).
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

from th_edit.apply import SIZING_KEY, Prepared, compute, prepare, resolve_base
from th_edit.card import PROVENANCE_FIELDS, base_record
from th_edit.checkpoint import INDEX_FILE, sha256_file
from th_edit.errors import UserError
from th_edit.export import (
    LOCAL_RECORD,
    OWN_FILES,
    PROVENANCE_FILE,
    RECIPE_FILE,
    hash_weights,
    is_gguf_output,
    output_names,
    side_file_root,
    side_files,
)
from th_edit.gguf_export import RECORDED_REQUANT_DEFAULT, REQUANT_POLICIES
from th_edit.limits import MAX_PROMPTS
from th_edit.lora import ADAPTER_DIR, checkpoint_adapter
from th_edit.models import ResolvedModel
from th_edit.readers import decode_json, read_json, read_text
from th_edit.recipe import BENCH_SIZES, Recipe, parse_recipe, sized_benchmark
from th_edit.tasks import registry

REL_TOL = 1e-9  # the same computation on the same inputs: anything more is a real difference


def load_record(out_dir: Path) -> tuple[dict, str]:
    provenance_path, recipe_path = out_dir / PROVENANCE_FILE, out_dir / RECIPE_FILE
    if not out_dir.is_dir():
        raise UserError(f"no such directory: {out_dir}")
    if not provenance_path.is_file() or not recipe_path.is_file():
        raise UserError(f"{out_dir} is not a th-edit checkpoint (provenance.json and recipe.yaml are missing)")
    record, recipe_text = read_json(provenance_path), read_text(recipe_path)
    _check_shape(record, provenance_path)
    return record, recipe_text


def _check_shape(record: object, path: Path) -> None:
    """The fields verify reads, with their types: a damaged record is one clear line, not a traceback."""
    expected = {"recipe": dict, "base": dict, "edits": list, "weights_sha256": dict, "files_sha256": dict}
    if not isinstance(record, dict):
        raise UserError(f"{path} is not a th-edit provenance record (not a JSON object)")
    for key, kind in expected.items():
        if not isinstance(record.get(key), kind):
            raise UserError(f"{path}: field '{key}' is missing or not a JSON {'object' if kind is dict else 'array'}"
                            + (" (written by an older th-edit: apply the recipe again)" if key == "files_sha256" else ""))
    if not isinstance(record["recipe"].get("sha256"), str):
        raise UserError(f"{path}: field 'recipe.sha256' is missing")
    for i, edit in enumerate(record["edits"]):
        if not (isinstance(edit, dict) and {"layer", "head", "circuit"} <= edit.keys()
                and isinstance(edit.get("components"), list) and all(isinstance(c, dict) for c in edit["components"])):
            raise UserError(f"{path}: edits[{i}] is not an edit record (layer, head, circuit, components)")
    for key in ("weights_sha256", "files_sha256"):
        if not all(isinstance(v, str) for v in record[key].values()):
            raise UserError(f"{path}: field '{key}' must map file names to sha256 strings")


def verify(out_dir: Path, base: str | None = None) -> list[str]:
    """Return a list of mismatches (empty when the checkpoint is exactly what its recipe gives).
    `base` overrides where the base model is found (its identity is still checked)."""
    record, recipe_text = load_record(out_dir)
    recipe_source = str(out_dir / RECIPE_FILE)
    recipe = parse_recipe(recipe_text, recipe_source)
    resolved = _find_base(out_dir, record, recipe.base_model, base, recipe_source)
    prepared = prepare(recipe, recipe_text, recipe_source, resolved)
    derived = side_files(resolved.path, side_file_root(resolved.path, resolved.kind), prepared.out_dtype)

    problems = _check_files(out_dir, record, recipe_text, derived)
    problems += _check_base(prepared, record["base"], identity_only=base is not None)
    computed = compute(prepared)
    problems += _compare_edits(record["edits"], [r.as_dict() for r in computed.result.reports])
    problems += _compare_output(record.get("output"), prepared)

    output = record.get("output") if isinstance(record.get("output"), dict) else {}
    formats = output.get("formats", ["safetensors"])
    rebuilt = hash_weights(prepared.tensors, computed.cast, prepared.out_dtype, prepared.recipe.output.max_shard_bytes) \
        if "safetensors" in formats else {}
    recorded = record["weights_sha256"]
    if rebuilt != recorded:
        changed = sorted(n for n in set(rebuilt) | set(recorded) if rebuilt.get(n) != recorded.get(n))
        problems.append(f"recomputing the edit from recipe.yaml and the base gives different weights in: {', '.join(changed)}")
    problems += _compare_adapter(record, prepared, computed, derived)
    if "gguf" in formats:
        problems += _check_gguf(out_dir, record, prepared, computed, output.get("gguf_fallback", "q8_0"),
                                output.get("gguf_requant", RECORDED_REQUANT_DEFAULT))
    problems += _compare_side_files(record["files_sha256"], derived)
    problems += _compare_benchmark_setup(record.get("benchmark"), recipe)
    unknown = sorted(set(record) - set(PROVENANCE_FIELDS))
    problems += [f"provenance.json: field '{key}' is not one th-edit writes" for key in unknown]
    return problems


def _compare_adapter(record: dict, prepared: Prepared, computed, derived: dict[str, bytes]) -> list[str]:
    """The LoRA adapter (`apply --format lora`), when there is one, rebuilt from the recipe and the base:
    its files byte for byte (added to `derived`, which `_compare_side_files` compares) and its
    recorded modules, ranks and reconstruction errors (the equivalence claim)."""
    listed = any(name.startswith(f"{ADAPTER_DIR}/") for name in record["files_sha256"])
    if "adapter" not in record and not listed:
        return []
    if not isinstance(record.get("adapter"), dict):
        return ["provenance.json: adapter files are listed, but the adapter record is missing"]
    adapter, files = checkpoint_adapter(prepared, computed)
    derived.update(files)
    now, then = adapter.record(), record["adapter"]
    problems = [f"provenance.json: adapter.{key} is {then.get(key)!r}, but recomputing the adapter gives {value!r}"
                for key, value in now.items() if not _same_value(then.get(key), value)]
    problems += [f"provenance.json: adapter.{key} is not a field th-edit writes" for key in sorted(set(then) - set(now))]
    return problems


def _same_value(recorded: object, now: object) -> bool:
    if isinstance(now, dict) and isinstance(recorded, dict):
        return recorded.keys() == now.keys() and all(_same_value(recorded[k], now[k]) for k in now)
    if isinstance(now, float) and isinstance(recorded, (int, float)) and not isinstance(recorded, bool):
        # errors near zero (1e-16) differ by rounding between machines; the claim is that they are small
        return math.isclose(now, recorded, rel_tol=1e-6, abs_tol=1e-12)
    return _same(recorded, now)


def _check_gguf(out_dir: Path, record: dict, prepared: Prepared, computed, fallback: object,
                requant: object) -> list[str]:
    """The GGUF file rebuilt from the recipe and the base GGUF (in a scratch directory, removed
    after) has the recorded sha256; otherwise the tensors that differ are named."""
    import tempfile

    from th_edit.gguf_export import differing_tensors, write_gguf

    names = [name for name in record["files_sha256"] if name.endswith(".gguf")]
    if len(names) != 1 or prepared.base.gguf_path is None or not isinstance(fallback, str) \
            or requant not in REQUANT_POLICIES:
        return ["provenance.json: output.formats has gguf, but the record does not name one GGUF file of a GGUF base"]
    name = names[0]
    with tempfile.TemporaryDirectory(prefix="th-edit-verify-") as scratch:
        rebuilt = Path(scratch) / name
        write_gguf(rebuilt, prepared.base, prepared.adapter, prepared.tensors, computed.result, record["recipe"]["sha256"],
                   fallback, str(record.get("th_edit_version")), requant)
        if sha256_file(rebuilt) == record["files_sha256"][name]:
            return []
        written = out_dir / name
        changed = differing_tensors(rebuilt, written) if written.is_file() else []
        return [f"{name}: recomputing the GGUF from recipe.yaml and the base gives different bytes"
                + (f" (in {', '.join(changed[:5])}{' …' if len(changed) > 5 else ''})" if changed else "")]


def _compare_benchmark_setup(recorded: object, recipe: Recipe) -> list[str]:
    """The benchmark's numbers are not recomputed, but what it was asked to run is the recipe's
    `benchmark:` section: a report claiming other prompts (or none asked for) is caught."""
    settings = recipe.benchmark
    if recorded is None:
        return []  # `apply --no-bench`, or no benchmark section
    if settings is None:
        return ["provenance.json: benchmark is recorded, but the recipe has no benchmark section"]
    setup = recorded.get("setup") if isinstance(recorded, dict) else None
    if not isinstance(setup, dict):
        return ["provenance.json: benchmark.setup is missing"]
    sizing = setup.get(SIZING_KEY)
    if sizing is not None:  # `apply --bench quick` / `--n-prompts`: the recipe's section, sized as apply sizes it
        bench, n_prompts = (sizing.get("bench"), sizing.get("n_prompts")) if isinstance(sizing, dict) else (None, None)
        if bench not in BENCH_SIZES or not (n_prompts is None or (type(n_prompts) is int and 1 <= n_prompts <= MAX_PROMPTS)):
            return [f"provenance.json: benchmark.setup.{SIZING_KEY} is {sizing!r}, not a size apply gives"]
        settings = sized_benchmark(settings, bench, n_prompts)
    expected = {"tasks": list(settings.tasks), "seed": recipe.seed if settings.seed is None else settings.seed,
                "n_prompts_per_n": settings.n_prompts, "batch_size": settings.batch_size}
    if any(registry.get(task).list_recall for task in settings.tasks):
        expected["n_items"] = list(dict.fromkeys(settings.n_items))
    problems = [f"provenance.json: benchmark.setup.{key} is {setup.get(key)!r}, but the recipe asks for {value!r}"
                for key, value in expected.items() if setup.get(key) != value]
    return problems + _compare_kl_setup(recorded.get("side_effects"), settings.kl, settings.kl_texts)


def _compare_kl_setup(side_effects: object, measured: bool, texts: int | None) -> list[str]:
    """The neutral-text KL is there exactly when the recipe asks for it, on at most `kl_texts` texts."""
    kl = side_effects.get("neutral_kl") if isinstance(side_effects, dict) else None
    if not measured:
        return [] if kl is None else ["provenance.json: benchmark.side_effects.neutral_kl is recorded, but the recipe "
                                      "has benchmark.kl: false"]
    if not isinstance(kl, dict):
        return ["provenance.json: benchmark.side_effects.neutral_kl is missing, but the recipe asks for it"]
    n_texts = kl.get("n_texts")
    if texts is not None and not (isinstance(n_texts, int) and 0 < n_texts <= texts):
        return [f"provenance.json: benchmark.side_effects.neutral_kl.n_texts is {n_texts!r}, but the recipe asks for "
                f"at most {texts} (benchmark.kl_texts)"]
    return []


def _check_files(out_dir: Path, record: dict, recipe_text: str, derived: dict[str, bytes]) -> list[str]:
    """Every file in the directory is one apply wrote, with the sha256 it had then. For a changed
    JSON file that the base gives (config, tokenizer files) the changed fields are named."""
    problems = []
    if hashlib.sha256(recipe_text.encode()).hexdigest() != record["recipe"]["sha256"]:
        problems.append("recipe.yaml: sha256 differs from provenance.json (the recipe was changed after apply)")
    recorded = {**record["files_sha256"], **record["weights_sha256"]}
    present = {name for name in output_names(out_dir) if not name.startswith(".")} - {PROVENANCE_FILE}
    for name in sorted(set(recorded) - present):
        problems.append(f"{name}: listed in provenance.json but missing")
    for name in sorted(present - set(recorded)):
        kind = "weight file" if name.endswith(".safetensors") or name == INDEX_FILE else "file"
        problems.append(f"{name}: {kind} not listed in provenance.json (not written by apply; push does not upload it)")
    for name in sorted(present & set(recorded) - {RECIPE_FILE}):  # the recipe is checked against recipe.sha256 above
        path = out_dir / name
        if not path.is_file() or sha256_file(path) != recorded[name]:
            fields = _changed_fields(derived.get(name), path)
            problems.append(f"{name}: sha256 differs from provenance.json (the file was modified after apply)"
                            + (f"; changed fields: {', '.join(fields)}" if fields else ""))
    if record["files_sha256"].get(RECIPE_FILE, record["recipe"]["sha256"]) != record["recipe"]["sha256"]:
        problems.append("provenance.json: files_sha256 of recipe.yaml differs from recipe.sha256")
    return problems


def _changed_fields(expected: bytes | None, path: Path) -> list[str]:
    """Top-level keys whose values differ between two JSON objects (empty when either is not one)."""
    try:
        before, now = decode_json(expected or b""), decode_json(path.read_bytes())
    except (OSError, ValueError):  # not JSON (any more): there are no fields to name
        return []
    if not isinstance(before, dict) or not isinstance(now, dict):
        return []
    return sorted(k for k in before.keys() | now.keys() if before.get(k, KeyError) != now.get(k, KeyError))


def _find_base(out_dir: Path, record: dict, base_model: str, override: str | None, source: str) -> ResolvedModel:
    """--base; else the hub commit that was used; else where apply found a local base on this
    machine (LOCAL_RECORD); else the recipe's base_model."""
    if override is not None:
        return resolve_base(override, source)
    local = _local_base(out_dir)
    reference = _pinned_base(record) or local or base_model
    try:
        return resolve_base(reference, source)
    except UserError as exc:
        # A relative base_model path resolves against the current directory, as it did for apply.
        raise UserError(f"{exc} (pass --base MODEL to say where the base model is now)") from None


def _local_base(out_dir: Path) -> str | None:
    try:
        where = decode_json((out_dir / LOCAL_RECORD).read_bytes()).get("base")
    except (OSError, ValueError, AttributeError):  # a damaged hint is no hint: verify falls back to the recipe
        return None
    return where if isinstance(where, str) and Path(where).exists() else None


def _pinned_base(record: dict) -> str | None:
    """Re-resolve a hub base at the exact commit that was used."""
    base = record["base"]
    if base.get("kind") == "hub" and base.get("revision") and base.get("hub_id"):
        return f"{base['hub_id']}@{base['revision']}"
    return None


def _check_base(prepared: Prepared, recorded: dict, identity_only: bool) -> list[str]:
    """The base's record, recomputed. With --base the base may have another name, place or
    form (a GGUF file for an alias): then only what identifies it (revision, hashes) must match."""
    base = prepared.base
    now = base_record(base, {p.name: sha256_file(p) for p in prepared.tensors.files} if base.kind == "local" else None)
    if recorded.get("gguf_sha256") and now.get("gguf_sha256") != recorded["gguf_sha256"]:
        return [f"base model {base.reference}: GGUF sha256 {now.get('gguf_sha256')} "
                f"differs from the recorded {recorded['gguf_sha256']}"]
    if recorded.get("weight_files_sha256") and now.get("weight_files_sha256") != recorded["weight_files_sha256"]:
        return [f"base model {base.reference}: its weight files changed since apply"]
    keys = recorded.keys() | now.keys()
    if identity_only:
        keys = keys & {"gguf_sha256", "weight_files_sha256", "revision"}
    elif recorded.get("kind") == "hub":
        keys = keys - {"reference"}  # re-resolved as hub_id@revision: both are compared on their own
    return [f"provenance.json: base.{key} is {recorded.get(key)!r}, but the base gives {now.get(key)!r}"
            for key in sorted(keys) if recorded.get(key) != now.get(key)]


def _same(recorded: object, now: object) -> bool:
    if isinstance(recorded, bool) or isinstance(now, bool):
        return recorded == now
    if isinstance(recorded, (int, float)) and isinstance(now, (int, float)):
        return math.isclose(now, recorded, rel_tol=REL_TOL, abs_tol=1e-12)
    return recorded == now


FIELD_NAMES = {"realized": "realized singular value", "original": "singular value before the edit",
               "target": "target singular value", "scale": "scale"}


def _compare_edits(recorded: list[dict], recomputed: list[dict]) -> list[str]:
    """Both ways: every recorded component must be recomputed with the same scale and singular
    values (before, target, realized), every component the recipe edits must be on record, and
    each head's other recorded facts must match."""
    def components(entries: list[dict]) -> dict[tuple, dict]:
        return {(e["layer"], e["head"], e["circuit"], c.get("component")): c for e in entries for c in e["components"]}

    def heads(entries: list[dict]) -> dict[tuple, dict]:
        return {(e["layer"], e["head"], e["circuit"]): e for e in entries}

    then, now = components(recorded), components(recomputed)
    problems = []
    for key in sorted(then.keys() | now.keys(), key=str):
        where = f"layer {key[0]} head {key[1]} {str(key[2]).upper()} component {key[3]}"
        if key not in now:
            problems.append(f"provenance.json: {where}: in provenance.json but not edited by the recipe")
        elif key not in then:
            problems.append(f"provenance.json: {where}: edited by the recipe but missing from provenance.json")
        else:
            for name in sorted(then[key].keys() | now[key].keys()):
                if not _same(then[key].get(name), now[key].get(name)):
                    label = FIELD_NAMES.get(name, name)
                    problems.append(f"provenance.json: {where}: {label} {now[key].get(name)} differs from the recorded "
                                    f"{then[key].get(name)}")
    head_then, head_now = heads(recorded), heads(recomputed)
    for key in sorted(head_then.keys() & head_now.keys(), key=str):
        for name in sorted((head_then[key].keys() | head_now[key].keys()) - {"layer", "head", "circuit", "components"}):
            if not _same(head_then[key].get(name), head_now[key].get(name)):
                problems.append(f"provenance.json: layer {key[0]} head {key[1]} {str(key[2]).upper()}: {name} "
                                f"{head_now[key].get(name)} differs from the recorded {head_then[key].get(name)}")
    return problems


def _compare_output(recorded: object, prepared: Prepared) -> list[str]:
    now = {"dtype": prepared.out_dtype_name, "max_shard_size": prepared.recipe.output.max_shard_size}
    if not isinstance(recorded, dict):
        return ["provenance.json: field 'output' is missing"]
    return [f"provenance.json: output.{key} is {recorded.get(key)!r}, but the recipe gives {value!r}"
            for key, value in now.items() if recorded.get(key) != value]


def _compare_side_files(recorded: dict[str, str], derived: dict[str, bytes]) -> list[str]:
    """Config, generation config and tokenizer files are derived from the base again: a file
    changed together with its hash in provenance.json is still caught."""
    rebuilt = {name: hashlib.sha256(data).hexdigest() for name, data in derived.items()}
    # OWN_FILES come from the recipe and the run, not from the base: hash-checked only.
    listed = {name: digest for name, digest in recorded.items() if name not in OWN_FILES and not is_gguf_output(name)}
    problems = []
    for name in sorted(listed.keys() | rebuilt.keys()):
        if name not in rebuilt:
            problems.append(f"provenance.json: files_sha256 lists {name}, which the base does not give")
        elif name not in listed:
            problems.append(f"{name}: the base gives it, but provenance.json does not list it")
        elif listed[name] != rebuilt[name]:
            source = "the recipe and the base give" if name.startswith(f"{ADAPTER_DIR}/") else "the base gives"
            problems.append(f"{name}: differs from what {source} (sha256 {rebuilt[name][:12]}…, "
                            f"recorded {listed[name][:12]}…)")
    return problems
