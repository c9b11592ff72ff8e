"""`verify`: recompute an edited checkpoint from its saved recipe and base, and compare."""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
from pathlib import Path

from th_edit.apply import Prepared, compute, prepare, resolve_base
from th_edit.checkpoint import INDEX_FILE, sha256_file
from th_edit.errors import UserError
from th_edit.export import write_weights
from th_edit.recipe import parse_recipe

REALIZED_RTOL = 1e-9  # the same computation on the same inputs: anything more is a real difference


def load_record(out_dir: Path) -> tuple[dict, str]:
    provenance_path, recipe_path = out_dir / "provenance.json", out_dir / "recipe.yaml"
    if not out_dir.is_dir():
        raise UserError(f"no such directory: {out_dir}")
    if not provenance_path.is_file() or not recipe_path.is_file():
        raise UserError(f"{out_dir} is not a th-edit checkpoint (provenance.json and recipe.yaml are missing)")
    try:
        record = json.loads(provenance_path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{provenance_path} is not valid JSON ({exc})") from None
    _check_shape(record, provenance_path)
    return record, recipe_path.read_text()


def _check_shape(record: object, path: Path) -> None:
    """The fields verify reads, with their types: a damaged record is one clear line, not a traceback."""
    expected = {"recipe": dict, "base": dict, "edits": list, "weights_sha256": dict}
    if not isinstance(record, dict):
        raise UserError(f"{path} is not a th-edit provenance record (not a JSON object)")
    for key, kind in expected.items():
        if not isinstance(record.get(key), kind):
            raise UserError(f"{path}: field '{key}' is missing or not a JSON {'object' if kind is dict else 'array'}")
    if not isinstance(record["recipe"].get("sha256"), str):
        raise UserError(f"{path}: field 'recipe.sha256' is missing")
    for i, edit in enumerate(record["edits"]):
        if not (isinstance(edit, dict) and {"layer", "head", "circuit"} <= edit.keys()
                and isinstance(edit.get("components"), list) and all(isinstance(c, dict) for c in edit["components"])):
            raise UserError(f"{path}: edits[{i}] is not an edit record (layer, head, circuit, components)")


def verify(out_dir: Path, base: str | None = None) -> list[str]:
    """Return a list of mismatches (empty when the checkpoint is exactly what its recipe gives).
    `base` overrides where the base model is found (its identity is still checked)."""
    record, recipe_text = load_record(out_dir)
    problems: list[str] = []

    if hashlib.sha256(recipe_text.encode()).hexdigest() != record["recipe"]["sha256"]:
        problems.append("recipe.yaml: sha256 differs from provenance.json (the recipe was changed after apply)")
    recorded = record["weights_sha256"]
    # Everything that could be loaded as weights, not only what the index names: a stray file
    # would be uploaded by push and could shadow the real ones.
    present = {p.name for p in out_dir.glob("*.safetensors")} | ({INDEX_FILE} if (out_dir / INDEX_FILE).is_file() else set())
    for name in sorted(set(recorded) - present):
        problems.append(f"{name}: listed in provenance.json but missing")
    for name in sorted(present - set(recorded)):
        problems.append(f"{name}: weight file not listed in provenance.json")
    for name in sorted(present & set(recorded)):
        if sha256_file(out_dir / name) != recorded[name]:
            problems.append(f"{name}: sha256 differs from provenance.json (the file was modified after apply)")

    recipe_source = str(out_dir / "recipe.yaml")
    recipe = parse_recipe(recipe_text, recipe_source)
    try:
        resolved = resolve_base(base or _pinned_base(record) or recipe.base_model, recipe_source)
    except UserError as exc:
        if base is not None:
            raise
        # A relative base_model path resolves against the current directory, as it did for apply.
        raise UserError(f"{exc} (pass --base MODEL to say where the base model is now)") from None
    prepared = prepare(recipe, recipe_text, recipe_source, resolved)
    problems += _check_base(prepared, record["base"])
    computed = compute(prepared)
    problems += _compare_realized(record["edits"], [r.as_dict() for r in computed.result.reports])

    with tempfile.TemporaryDirectory(prefix=".th-edit-verify-", dir=out_dir.parent) as scratch:
        rebuilt = write_weights(Path(scratch), prepared.tensors, computed.cast, prepared.out_dtype,
                                prepared.recipe.output.max_shard_bytes)
    if rebuilt != recorded:
        changed = sorted(n for n in set(rebuilt) | set(recorded) if rebuilt.get(n) != recorded.get(n))
        problems.append(f"recomputing the edit from recipe.yaml and the base gives different weights in: {', '.join(changed)}")
    return problems


def _pinned_base(record: dict) -> str | None:
    """Re-resolve a hub base at the exact commit that was used."""
    base = record["base"]
    if base.get("kind") == "hub" and base.get("revision") and base.get("hub_id"):
        return f"{base['hub_id']}@{base['revision']}"
    return None


def _check_base(prepared: Prepared, recorded: dict) -> list[str]:
    base = prepared.base
    if recorded.get("gguf_sha256") and base.gguf_sha256 != recorded["gguf_sha256"]:
        return [f"base model {base.reference}: GGUF sha256 {base.gguf_sha256} "
                f"differs from the recorded {recorded['gguf_sha256']}"]
    if recorded.get("weight_files_sha256"):
        now = {p.name: sha256_file(p) for p in prepared.tensors.files}
        if now != recorded["weight_files_sha256"]:
            return [f"base model {base.reference}: its weight files changed since apply"]
    return []


def _compare_realized(recorded: list[dict], recomputed: list[dict]) -> list[str]:
    """Both ways: every recorded component must be recomputed with the same realized value, and
    every component the recipe edits must be on record."""
    def components(entries: list[dict]) -> dict[tuple, object]:
        return {(e["layer"], e["head"], e["circuit"], c.get("component")): c.get("realized")
                for e in entries for c in e["components"]}

    then, now = components(recorded), components(recomputed)
    problems = []
    for key in sorted(then.keys() | now.keys(), key=str):
        where = f"layer {key[0]} head {key[1]} {str(key[2]).upper()} component {key[3]}"
        if key not in now:
            problems.append(f"{where}: in provenance.json but not edited by the recipe")
        elif key not in then:
            problems.append(f"{where}: edited by the recipe but missing from provenance.json")
        elif not (isinstance(then[key], (int, float)) and isinstance(now[key], (int, float))
                  and math.isclose(now[key], then[key], rel_tol=REALIZED_RTOL, abs_tol=1e-12)):
            problems.append(f"{where}: realized singular value {now[key]} differs from the recorded {then[key]}")
    return problems
