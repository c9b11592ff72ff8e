"""The edit as a PEFT LoRA adapter: `adapter/` beside the edited checkpoint (`th-edit apply --format lora`).

A th-edit edit is low-rank by construction (docs/method.md §4): scaling k components of a head's OV
changes its slice of the output projection by P @ Q of rank k, a QK edit its slice of the query
projection likewise (th_edit.edit.update_factors gives P and Q, in math orientation in×out). In the
row-vector convention a LoRA module computes y = x Wᵀ + x Aᵀ Bᵀ · scaling, so the head's factors
are A = Pᵀ (its rows placed at the module's input features the head reads) and B = Qᵀ (placed at
the output features it writes); the heads edited in one module are stacked, so the module's rank is
the number of components edited in it. lora_alpha equals the rank of every module (rank_pattern,
alpha_pattern), so every scaling is 1: a client that reads only the global r and lora_alpha gets
scaling 1 as well. A q edit inside a fused projection (GPT-2's c_attn, GPT-NeoX's query_key_value)
is a LoRA on the fused module whose B is zero outside the head's query features.

The factors come from the edit's directions, not from an SVD of a dense delta; how far B @ A is
from the change the checkpoint holds (its weights as written, cast to the output dtype) is
measured and recorded in provenance.json (`adapter`), and `th-edit verify` recomputes every file
of the adapter, and that measure, from the recipe and the base.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from th_edit import __version__, strict_json
from th_edit.edit import EditPlan
from th_edit.errors import UserError

ADAPTER_DIR = "adapter"  # inside the output directory (transformers would load adapter_config.json at the top)
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
CARD_FILE = "README.md"
ADAPTER_FILES = tuple(f"{ADAPTER_DIR}/{name}" for name in (CONFIG_FILE, WEIGHTS_FILE, CARD_FILE))
ADAPTER_DTYPE = torch.float32
# B @ A against the float64 change the edit computed: the same products in another order, so a
# larger gap is a bug in the factors, never rounding.
FACTOR_TOLERANCE = 1e-9


@dataclass
class LoraModule:
    """One targeted module: its LoRA factors (float64) with delta W (out×in) = B @ A."""

    name: str  # module path in the transformers model, e.g. model.layers.3.self_attn.o_proj
    param: str  # the weight it changes
    kind: str  # "linear" | "conv1d" (transformers' Conv1D, weight stored in×out: PEFT's fan_in_fan_out)
    A: torch.Tensor  # r × in
    B: torch.Tensor  # out × r

    @property
    def rank(self) -> int:
        return self.A.shape[0]

    def delta(self) -> torch.Tensor:
        """B @ A as the stored weight holds it (Conv1D stores in×out)."""
        product = self.B @ self.A
        return product.T if self.kind == "conv1d" else product


@dataclass
class LoraAdapter:
    modules: list[LoraModule]
    factor_error: float  # max over modules of ‖B A − intended change‖ / ‖intended change‖ (float64)
    written_error: float  # the same against the change the checkpoint holds (its weights as written)

    def record(self) -> dict[str, object]:
        """The adapter's entry in provenance.json (recomputed by verify)."""
        return {"dir": ADAPTER_DIR, "dtype": str(ADAPTER_DTYPE).removeprefix("torch."),
                "modules": {m.name: m.rank for m in self.modules},
                "relative_error_vs_edit": self.factor_error, "relative_error_vs_written_weights": self.written_error}


def module_kinds(config, names: list[str]) -> dict[str, str]:
    """The kind of each named module of the model `config` describes (built on the meta device:
    no weights), refusing any that PEFT's LoRA cannot target as a linear map."""
    from transformers import AutoModelForCausalLM
    from transformers.pytorch_utils import Conv1D

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    modules = dict(model.named_modules())
    kinds = {}
    for name in names:
        module = modules.get(name)
        if isinstance(module, torch.nn.Linear):
            kinds[name] = "linear"
        elif isinstance(module, Conv1D):
            kinds[name] = "conv1d"
        else:
            what = "no such module" if module is None else f"a {type(module).__name__}"
            raise UserError(f"--format lora: PEFT cannot target {name} ({what}; LoRA adapters target linear "
                            "projections): write the edited checkpoint instead")
    return kinds


def build_adapter(plan: EditPlan, config, base_values) -> LoraAdapter:
    """The LoRA factors of `plan`, one module per edited projection. `config` is the base model's
    transformers config; `base_values(param)` gives a parameter as the base stores it."""
    result = plan.result
    params = list(dict.fromkeys(slot.param for _, slot in result.written))
    for param in params:
        if not param.endswith(".weight") or result.tensors[param].dim() != 2:
            raise UserError(f"--format lora: PEFT cannot target the parameter {param} (not a 2-D module weight)")
    names = {param: param.removesuffix(".weight") for param in params}
    kinds = module_kinds(config, list(names.values()))
    parts: dict[str, tuple[list[torch.Tensor], list[torch.Tensor]]] = {p: ([], []) for p in params}
    for (_, slot), (P, Q) in zip(result.written, result.factors):
        stored = result.tensors[slot.param].shape
        linear = kinds[names[slot.param]] == "linear"
        # nn.Linear stores out×in (its math block is the transpose), Conv1D in×out.
        if slot.transpose != linear or len(slot.index) != 2:
            raise UserError(f"--format lora: the edited slice of {slot.param} is not laid out as its module computes")
        out_axis, in_axis = (0, 1) if linear else (1, 0)
        A = torch.zeros(P.shape[1], stored[in_axis], dtype=torch.float64)
        B = torch.zeros(stored[out_axis], Q.shape[0], dtype=torch.float64)
        A[:, slot.index[in_axis]] = P.T
        B[slot.index[out_axis], :] = Q.T
        parts[slot.param][0].append(A)
        parts[slot.param][1].append(B)
    modules = [LoraModule(names[p], p, kinds[names[p]], torch.cat(parts[p][0], 0), torch.cat(parts[p][1], 1))
               for p in params]
    factor_error = written_error = 0.0
    for module in modules:
        delta = module.delta()
        intended = result.intended_deltas[module.param]
        written = plan.values[module.param].to(torch.float64) - base_values(module.param).to(torch.float64)
        factor_error = max(factor_error, _relative(delta, intended))
        written_error = max(written_error, _relative(delta, written))
    if factor_error > FACTOR_TOLERANCE:
        raise RuntimeError(f"LoRA factors reproduce the edit only to {factor_error:.2e} (relative): a bug in th_edit.lora")
    return LoraAdapter(modules, factor_error, written_error)


def _relative(approx: torch.Tensor, exact: torch.Tensor) -> float:
    scale = float(exact.norm())
    return float((approx - exact).norm()) / scale if scale > 0 else float((approx - exact).norm())


def _pattern(name: str) -> str:
    """A rank_pattern key that PEFT matches against exactly this module (its keys are regexes)."""
    return re.escape(name)


def adapter_config(adapter: LoraAdapter, base_name: str | None) -> dict[str, object]:
    """adapter_config.json: PEFT's LoraConfig fields. Global r and lora_alpha equal (the largest
    rank), every module's lora_alpha equal to its rank: scaling 1 everywhere."""
    top = max(m.rank for m in adapter.modules)
    ranks = {_pattern(m.name): m.rank for m in adapter.modules}
    conv1d = {m.kind for m in adapter.modules} == {"conv1d"}
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_name,
        "target_modules": sorted(m.name for m in adapter.modules),
        "r": top,
        "lora_alpha": top,
        "rank_pattern": ranks,
        "alpha_pattern": dict(ranks),
        "use_rslora": False,
        "use_dora": False,
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": conv1d,
        "inference_mode": True,
        "modules_to_save": None,
    }


def adapter_tensors(adapter: LoraAdapter) -> dict[str, torch.Tensor]:
    """adapter_model.safetensors as PEFT saves it: base_model.model.<module>.lora_A/B.weight."""
    tensors = {}
    for module in adapter.modules:
        tensors[f"base_model.model.{module.name}.lora_A.weight"] = module.A.to(ADAPTER_DTYPE).contiguous()
        tensors[f"base_model.model.{module.name}.lora_B.weight"] = module.B.to(ADAPTER_DTYPE).contiguous()
    return tensors


def adapter_card(adapter: LoraAdapter, base_name: str | None, hub_id: str | None, base_note: str | None) -> str:
    import yaml

    front: dict[str, object] = {}
    if hub_id:
        front["base_model"] = hub_id
        front["base_model_relation"] = "adapter"
    front.update({"library_name": "peft", "pipeline_tag": "text-generation", "tags": ["th-edit", "model-editing", "lora"]})
    base = strict_json.dumps(base_name or "BASE_MODEL")
    rows = "\n".join(f"| `{m.name}` | {m.rank} |" for m in adapter.modules)
    total = sum(m.rank for m in adapter.modules)
    parts = [
        "---\n" + yaml.safe_dump(front, sort_keys=False) + "---",
        "# th-edit LoRA adapter",
        f"The rank-component edit of a th-edit recipe (`../recipe.yaml` when written by `th-edit apply --format lora`) "
        f"as a PEFT LoRA adapter of the base `{base_name or 'named in the recipe'}`, written by th-edit {__version__}: "
        "base + adapter computes what the edited checkpoint computes, and the edit can be switched on and off "
        "per request. Every scaling is 1 (lora_alpha = rank); the factors come from the edited singular directions, "
        "not from a fit.",
    ]
    if base_note:
        parts.append(f"**Note:** {base_note}")
    parts += [
        f"{len(adapter.modules)} module(s), {total} component(s) in all (rank = components edited in the module):",
        "| module | rank |\n| --- | ---: |\n" + rows,
        f"Largest relative difference between B·A and the change the edited checkpoint holds: "
        f"{adapter.written_error:.2e} (float64 factors; stored as float32).",
        "## Usage",
        "```python\nfrom peft import PeftModel\nfrom transformers import AutoModelForCausalLM\n\n"
        f"base = AutoModelForCausalLM.from_pretrained({base})\n"
        "model = PeftModel.from_pretrained(base, \"adapter\")  # this directory\n```",
        "Served with vLLM's LoRA support (rank up to the largest above: `--max-lora-rank`):",
        f"```bash\nvllm serve {base_name or 'BASE_MODEL'} --enable-lora --max-lora-rank "
        f"{_vllm_rank(max(m.rank for m in adapter.modules))} --lora-modules th-edit=adapter\n```",
    ]
    return "\n\n".join(parts) + "\n"


def _vllm_rank(rank: int) -> int:
    """The smallest --max-lora-rank vLLM accepts (one of its fixed sizes) that holds `rank`."""
    for size in (8, 16, 32, 64, 128, 256, 320, 512):
        if rank <= size:
            return size
    return rank


def adapter_files(adapter: LoraAdapter, base_name: str | None, hub_id: str | None,
                  base_note: str | None = None) -> dict[str, bytes]:
    """The adapter's files, {path relative to the output directory: bytes}; the same inputs give the
    same bytes (verify recomputes them)."""
    from safetensors.torch import save

    config = strict_json.dumps(adapter_config(adapter, base_name), indent=2, sort_keys=True) + "\n"
    weights = save(adapter_tensors(adapter), metadata={"format": "pt"})
    card = adapter_card(adapter, base_name, hub_id, base_note)
    return {ADAPTER_FILES[0]: config.encode(), ADAPTER_FILES[1]: weights, ADAPTER_FILES[2]: card.encode()}


def write_adapter(recipe: Path, out: Path, force: bool = False) -> Path:
    """Python API: apply `recipe` and write only its LoRA adapter, as a directory `out`
    (adapter_config.json, adapter_model.safetensors, README.md). `th-edit apply --format lora`
    writes the same files into `adapter/` of the edited checkpoint, with provenance."""
    from th_edit.apply import compute, prepare_file
    from th_edit.export import check_target, staging_directory

    prepared = prepare_file(recipe)
    check_target(out, force, [*prepared.base.inputs(), recipe])
    _, files = checkpoint_adapter(prepared, compute(prepared))
    with staging_directory(out, force) as staging:
        for name, data in files.items():
            (staging / Path(name).name).write_bytes(data)
    return out


def base_names(base) -> tuple[str, str | None, str | None]:
    """(base_model_name_or_path, hub id for the card, a note) for a resolved base model: the Hub id
    where there is one, else its public name (th_edit.card.public_reference)."""
    from th_edit.card import public_reference

    note = None
    if base.kind in ("alias", "gguf"):
        note = ("the factors were computed from the base's weights as dequantized from its GGUF file, and reproduce the "
                "edited checkpoint exactly on those weights; on the original weights of the Hub model they make the same "
                "low-rank change, which then differs from the edit by the quantization error.")
    return base.hub_id or public_reference(base), base.hub_id, note


def checkpoint_adapter(prepared, computed: EditPlan) -> tuple[LoraAdapter, dict[str, bytes]]:
    """The adapter of an `apply` run (th_edit.apply.Prepared) and its files under ADAPTER_DIR."""
    adapter = build_adapter(computed, prepared.adapter.config, prepared.tensors.get)
    base_name, hub_id, note = base_names(prepared.base)
    if prepared.recipe.output.dtype != "keep":
        rounding = (f"the edited checkpoint was written in {prepared.recipe.output.dtype}: base + adapter equals it up to "
                    "that rounding of every weight.")
        note = f"{note} Also, {rounding}" if note else rounding[0].upper() + rounding[1:]
    return adapter, adapter_files(adapter, base_name, hub_id, note)
