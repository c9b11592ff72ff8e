"""`verify`: recompute an edited checkpoint from its saved recipe and base, and compare."""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
from pathlib import Path

from th_edit.apply import Prepared, compute, prepare
from th_edit.checkpoint import sha256_file, weight_files
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
    return record, recipe_path.read_text()


def verify(out_dir: Path) -> list[str]:
    """Return a list of mismatches (empty when the checkpoint is exactly what its recipe gives)."""
    record, recipe_text = load_record(out_dir)
    problems: list[str] = []

    if hashlib.sha256(recipe_text.encode()).hexdigest() != record["recipe"]["sha256"]:
        problems.append("recipe.yaml: sha256 differs from provenance.json (the recipe was changed after apply)")
    recorded = record["weights_sha256"]
    present = {p.name for p in weight_files(out_dir)}
    for name in sorted(set(recorded) - present):
        problems.append(f"{name}: listed in provenance.json but missing")
    for name in sorted(present - set(recorded)):
        problems.append(f"{name}: weight file not listed in provenance.json")
    for name in sorted(present & set(recorded)):
        if sha256_file(out_dir / name) != recorded[name]:
            problems.append(f"{name}: sha256 differs from provenance.json (the file was modified after apply)")

    prepared = prepare(parse_recipe(recipe_text, str(out_dir / "recipe.yaml")), recipe_text,
                       str(out_dir / "recipe.yaml"), base_override=_pinned_base(record))
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
    problems = []
    index = {(e["layer"], e["head"], e["circuit"]): e for e in recomputed}
    for entry in recorded:
        key = (entry["layer"], entry["head"], entry["circuit"])
        fresh = index.get(key)
        if fresh is None:
            problems.append(f"layer {key[0]} head {key[1]} {key[2].upper()}: in provenance.json but not in the recipe")
            continue
        fresh_components = {c["component"]: c for c in fresh["components"]}
        for component in entry["components"]:
            k = component["component"]
            now = fresh_components.get(k, {}).get("realized")
            then = component.get("realized")
            if now is None or then is None or not math.isclose(now, then, rel_tol=REALIZED_RTOL, abs_tol=1e-12):
                problems.append(
                    f"layer {key[0]} head {key[1]} {key[2].upper()} component {k}: realized singular value "
                    f"{now} differs from the recorded {then}"
                )
    return problems
