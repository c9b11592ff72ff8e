"""GGUF output: the base's own GGUF file with the edited tensors re-quantized, everything else verbatim.

A GGUF base (the shipped aliases, or any .gguf file) is dequantized to float32 for editing
(th_edit.models). Writing the edit back as GGUF does not re-quantize the model: the patched file
copies the base's metadata (in order, plus two th_edit.* keys) and the bytes of every tensor the
recipe does not touch; only the edited projections (attn_q for a QK edit, attn_output for an OV
edit) are quantized again from the float64 edit, to their original type when the `gguf` package
can quantize it, else to the `--gguf-fallback` type. The written tensors are dequantized again and
the edited heads re-decomposed, so the card reports the singular values a GGUF runtime really
computes with.

Re-quantizing can swallow an edit: a 4-bit type's rounding step is larger than a small scale's
change (SmolLM2's Q4_1 loses most of a x1.077 edit). `--gguf-requant auto` (the default) therefore
stores an edited tensor whose realized singular values miss the intended change by more than apply's
1% rule in the fallback type instead, and if that still misses, in F16; `keep` always writes the
original type (the smallest file) and only warns.

Layouts (the knowledge transformers' GGUF loader, transformers/modeling_gguf_pytorch_utils.py,
uses in reverse): tensor names follow the `gguf` package's own name map (model.layers.N.self_attn.
q_proj.weight -> blk.N.attn_q.weight); a tensor's numpy shape is the PyTorch Linear shape (out, in);
llama.cpp's `llama` architecture stores q_proj (and k_proj) with the rows of each head permuted
from the half-split rotary layout of Hugging Face checkpoints to interleaved pairs, so a QK edit is
permuted the same way before it is quantized.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from th_edit import __version__
from th_edit.arch import Adapter
from th_edit.arch.gguf_layout import PATCHABLE_ARCHS
from th_edit.checkpoint import TensorSource
from th_edit.edit import UNTOUCHED_LIMIT, EditResult, HeadReport, Overlay, measure_realized
from th_edit.errors import UserError
from th_edit.export import MODELFILE
from th_edit.models import ResolvedModel

FALLBACK_TYPES = ("q8_0", "f16")
DEFAULT_FALLBACK = "q8_0"
REQUANT_POLICIES = ("auto", "keep")
DEFAULT_REQUANT = "auto"
# Files written before --gguf-requant existed re-quantized every edited tensor to its original type.
RECORDED_REQUANT_DEFAULT = "keep"
# Why an edited tensor is not in its original type (GGUFTensorReport.reason).
UNSUPPORTED = "unsupported"  # the gguf package cannot quantize the original type
IMPRECISE = "imprecise"  # the original type misses the intended change by more than the 1% rule
VERSION_KEY = "th_edit.version"
RECIPE_KEY = "th_edit.recipe_sha256"


def _qtype(name: str):
    import gguf

    return gguf.GGMLQuantizationType[name.upper()]


@dataclass
class GGUFTensorReport:
    name: str  # GGUF tensor name, e.g. blk.20.attn_output.weight
    original_type: str
    written_type: str
    reason: str | None = None  # UNSUPPORTED or IMPRECISE when written_type is not original_type


@dataclass
class GGUFOutput:
    """What write_gguf wrote and measured."""

    file: str
    tensors: list[GGUFTensorReport]
    reports: list[HeadReport]  # realized singular values of the dequantized written tensors
    warnings: list[str] = field(default_factory=list)

    @property
    def fallback(self) -> list[GGUFTensorReport]:
        return [t for t in self.tensors if t.original_type != t.written_type]


def check_gguf_base(base: ResolvedModel, fallback: str) -> str:
    """Refuse, before any work, a base the GGUF output cannot come from; returns its GGUF architecture."""
    if fallback not in FALLBACK_TYPES:
        raise UserError(f"--gguf-fallback: unknown type '{fallback}'; choose one of {', '.join(FALLBACK_TYPES)}")
    if base.gguf_path is None:
        raise UserError(f"--format gguf needs a GGUF base, and {base.reference} is a safetensors checkpoint: write "
                        "safetensors and convert the written directory with llama.cpp's convert_hf_to_gguf.py")
    arch = _read_arch(base.gguf_path)
    if arch not in PATCHABLE_ARCHS:
        raise UserError(f"--format gguf: GGUF architecture '{arch}' is not one th-edit can patch "
                        f"({', '.join(PATCHABLE_ARCHS)}); write safetensors and convert them with llama.cpp's "
                        "convert_hf_to_gguf.py")
    return arch


def _read_arch(path: Path) -> str:
    import gguf

    field_ = gguf.GGUFReader(path).fields.get("general.architecture")
    return str(field_.contents()) if field_ is not None else "?"


def gguf_file_name(target_name: str, base_gguf: Path) -> str:
    """<output directory name>.<base's quantization>.gguf, the usual naming of GGUF repos."""
    import gguf

    file_type = gguf.GGUFReader(base_gguf).fields.get("general.file_type")
    try:
        kind = gguf.LlamaFileType(int(file_type.contents())).name.removeprefix("MOSTLY_") if file_type else None
    except ValueError:
        kind = None
    return f"{target_name}.{kind}.gguf" if kind else f"{target_name}.gguf"


def rotary_permute(weight: np.ndarray, n_head: int) -> np.ndarray:
    """Hugging Face q/k rows (each head: first half, second half of the rotary pairs) -> llama.cpp's
    (each head: pairs interleaved)."""
    rows = weight.shape[0]
    return weight.reshape(n_head, 2, rows // n_head // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def rotary_unpermute(weight: np.ndarray, n_head: int) -> np.ndarray:
    rows = weight.shape[0]
    return weight.reshape(n_head, rows // n_head // 2, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


class _Layout:
    """How one GGUF file stores the Hugging Face parameters th-edit edits."""

    def __init__(self, reader, arch: str):
        import gguf

        self.arch = arch
        self.n_head = int(reader.fields[f"{arch}.attention.head_count"].contents())
        n_blocks = int(reader.fields[f"{arch}.block_count"].contents())
        arch_enum = {name: key for key, name in gguf.MODEL_ARCH_NAMES.items()}[arch]
        self.names = gguf.get_tensor_name_map(arch_enum, n_blocks)
        self.permuted = PATCHABLE_ARCHS[arch]

    def gguf_name(self, hf_name: str) -> str:
        name = self.names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise UserError(f"--format gguf: no GGUF tensor corresponds to {hf_name} in a '{self.arch}' file")
        return name

    def _is_q(self, gguf_name: str) -> bool:
        return self.permuted and gguf_name.endswith("attn_q.weight")

    def to_file(self, gguf_name: str, weight: np.ndarray) -> np.ndarray:
        return rotary_permute(weight, self.n_head) if self._is_q(gguf_name) else weight

    def from_file(self, gguf_name: str, weight: np.ndarray) -> np.ndarray:
        return rotary_unpermute(weight, self.n_head) if self._is_q(gguf_name) else weight


def quantize(weight: np.ndarray, original, fallback: str):
    """(bytes array, type written): the original type where the gguf package quantizes it, else the fallback."""
    import gguf

    try:
        return gguf.quants.quantize(weight, original), original
    except (NotImplementedError, gguf.quants.QuantError):
        target = _qtype(fallback)
        return gguf.quants.quantize(weight, target), target


def _ladder(fallback: str, requant: str) -> list[str]:
    """The types `auto` tries after the original one, coarsest first."""
    return [] if requant == "keep" else list(dict.fromkeys([fallback, "f16"]))


def write_gguf(path: Path, base: ResolvedModel, adapter: Adapter, source: TensorSource, result: EditResult,
               recipe_sha256: str, fallback: str = DEFAULT_FALLBACK, version: str = __version__,
               requant: str = DEFAULT_REQUANT) -> GGUFOutput:
    """Write the patched copy of the base's GGUF file to `path` and measure the edit as written.
    `source` is the float32 dequantized base (what the edit was computed from); `version` is the
    th-edit version recorded in the file (verify rebuilds an older file with the version it names);
    `requant` is the --gguf-requant policy (module docstring)."""
    import gguf

    arch = check_gguf_base(base, fallback)
    if requant not in REQUANT_POLICIES:
        raise UserError(f"--gguf-requant: unknown policy '{requant}'; choose one of {', '.join(REQUANT_POLICIES)}")
    assert base.gguf_path is not None
    reader = gguf.GGUFReader(base.gguf_path)
    layout = _Layout(reader, arch)
    by_gguf = {layout.gguf_name(name): name for name in result.tensors}
    stored = {t.name: t for t in reader.tensors}
    missing = sorted(set(by_gguf) - set(stored))
    if missing:
        raise UserError(f"--format gguf: {base.gguf_path.name} has no tensor {missing[0]}")

    weights = {g: layout.to_file(g, result.tensors[h].to(torch.float32).numpy()) for g, h in by_gguf.items()}
    replaced: dict[str, tuple[np.ndarray, object]] = {}
    dequantized: dict[str, torch.Tensor] = {}
    reasons: dict[str, str | None] = {}

    def write_as(gguf_name: str, qtype=None) -> None:
        """Quantize one edited tensor (to its original type when `qtype` is None) and read it back."""
        original = stored[gguf_name].tensor_type
        if qtype is None:
            data, written = quantize(weights[gguf_name], original, fallback)
            reasons[gguf_name] = UNSUPPORTED if written != original else None
        else:
            data, written = gguf.quants.quantize(weights[gguf_name], qtype), qtype
            reasons[gguf_name] = IMPRECISE
        replaced[gguf_name] = (data, written)
        back = layout.from_file(gguf_name, gguf.quants.dequantize(data, written))
        dequantized[by_gguf[gguf_name]] = torch.from_numpy(np.ascontiguousarray(back, dtype=np.float32))

    for gguf_name in sorted(by_gguf):
        write_as(gguf_name)
    measured = _measure(adapter, source, dequantized, result)
    for step in _ladder(fallback, requant):  # auto: the tensors that miss the edit, one type finer each round
        qtype = _qtype(step)
        finer = sorted(g for g in _imprecise_tensors(measured, result, layout)
                       if gguf.GGML_QUANT_SIZES[replaced[g][1]][1] / gguf.GGML_QUANT_SIZES[replaced[g][1]][0]
                       < gguf.GGML_QUANT_SIZES[qtype][1] / gguf.GGML_QUANT_SIZES[qtype][0])
        if not finer:
            break
        for gguf_name in finer:
            write_as(gguf_name, qtype)
        measured = _measure(adapter, source, dequantized, result)
    tensor_reports = [GGUFTensorReport(g, stored[g].tensor_type.name, replaced[g][1].name, reasons[g])
                      for g in sorted(by_gguf)]

    writer = gguf.GGUFWriter(path, arch)
    writer.data_alignment = reader.alignment
    for name, value in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":  # written by the writer itself
            continue
        types = value.types
        writer.add_key_value(name, value.contents(), types[0], types[1] if len(types) > 1 else None)
    writer.add_key_value(VERSION_KEY, version, gguf.GGUFValueType.STRING)
    writer.add_key_value(RECIPE_KEY, recipe_sha256, gguf.GGUFValueType.STRING)
    for tensor in reader.tensors:
        data, qtype = replaced.get(tensor.name, (tensor.data, tensor.tensor_type))
        writer.add_tensor(tensor.name, data, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file(progress=False)
    writer.close()
    return GGUFOutput(path.name, tensor_reports, measured.reports, quantization_warnings(measured.reports, tensor_reports))


def _measure(adapter: Adapter, source: TensorSource, dequantized: dict[str, torch.Tensor], result: EditResult) -> EditResult:
    measured = copy.deepcopy(result)
    measure_realized(adapter, Overlay(source, dequantized), measured)
    return measured


def _edit_gap(report: HeadReport) -> float:
    """How far the realized edited singular values miss the intended change, relative to that change."""
    return max((abs(c.realized - c.target) / abs(c.target - c.original) for c in report.components
                if c.realized is not None and c.target != c.original), default=0.0)


def _imprecise_tensors(measured: EditResult, result: EditResult, layout: _Layout) -> set[str]:
    """GGUF names of the edited tensors holding a head whose edit misses by more than the 1% rule."""
    slots = {(e.layer, e.head, e.circuit): slot.param for e, slot in result.written}
    return {layout.gguf_name(slots[(r.layer, r.head, r.circuit)]) for r in measured.reports
            if _edit_gap(r) > UNTOUCHED_LIMIT}


def quantization_warnings(reports: list[HeadReport], tensors: list[GGUFTensorReport]) -> list[str]:
    """apply's 1% rule, for the quantized file: an edited singular value that misses its target by
    more than 1% of the intended change, or an untouched one that moves by more than 1%."""
    types = "/".join(sorted({t.written_type for t in tensors}))
    lines = []
    for r in reports:
        gap = _edit_gap(r)
        what = f"GGUF ({types}): layer {r.layer} head {r.head} {r.circuit.upper()}"
        if gap > UNTOUCHED_LIMIT:
            lines.append(f"{what}: re-quantizing misses the intended change of the edited singular values by up to "
                         f"{gap:.1%}")
        if r.max_untouched_change is not None and r.max_untouched_change > UNTOUCHED_LIMIT:
            lines.append(f"{what}: components the recipe does not name changed by up to {r.max_untouched_change:.1%} "
                         "from re-quantizing")
    return lines


def worst_gap(output: GGUFOutput) -> float:
    return max((_edit_gap(r) for r in output.reports), default=0.0)


def fallback_lines(output: GGUFOutput) -> list[str]:
    """One line per reason an edited tensor is not in its original type (empty when all are)."""
    lines = []
    for reason in (UNSUPPORTED, IMPRECISE):
        moved = [t for t in output.fallback if t.reason == reason]
        if not moved:
            continue
        kinds = "/".join(sorted({t.original_type for t in moved}))
        if reason == UNSUPPORTED:
            written = "/".join(sorted({t.written_type for t in moved}))
            lines.append(f"{len(moved)} edited GGUF tensor(s) stored as {written} instead of {kinds}: the gguf package "
                         f"cannot quantize {kinds} (--gguf-fallback q8_0|f16 picks the type)")
        else:
            pairs = ", ".join(sorted({f"{t.original_type}→{t.written_type}" for t in moved}))
            lines.append(f"{len(moved)} edited GGUF tensor(s) stored in a finer type ({pairs}): in their original type "
                         f"they missed the intended change of the edited singular values by more than "
                         f"{UNTOUCHED_LIMIT:.0%} (--gguf-requant keep writes the original type anyway)")
    return lines


# ----------------------------------------------------------------------------------------------
# Running it elsewhere: an ollama Modelfile and the card's section


def _chat_template(base_gguf: Path) -> str | None:
    import gguf

    value = gguf.GGUFReader(base_gguf).fields.get("tokenizer.chat_template")
    return str(value.contents()) if value is not None else None


# ollama's TEMPLATE is a Go template, not the Jinja one stored in the GGUF: the two chat formats of
# the shipped bases, recognised by their turn markers; others leave ollama to read the GGUF's own.
_OLLAMA_TEMPLATES = {
    "<|im_start|>": ('{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}'
                     '<|im_start|>assistant\n', "<|im_end|>"),
    "<start_of_turn>": ('{{- range .Messages }}<start_of_turn>{{ if eq .Role "assistant" }}model{{ else }}{{ .Role }}'
                        '{{ end }}\n{{ .Content }}<end_of_turn>\n{{ end }}<start_of_turn>model\n', "<end_of_turn>"),
}


def modelfile(gguf_name: str, base_gguf: Path) -> str:
    """An ollama Modelfile for the patched file (`ollama create NAME -f Modelfile`)."""
    lines = [f"FROM ./{gguf_name}"]
    template = _chat_template(base_gguf) or ""
    for marker, (go_template, stop) in _OLLAMA_TEMPLATES.items():
        if marker in template:
            lines += [f'TEMPLATE """{go_template}"""', f'PARAMETER stop "{stop}"']
            break
    else:
        lines.append("# no TEMPLATE: ollama reads the chat template stored in the GGUF file")
    return "\n".join(lines) + "\n"


def card_section(output: GGUFOutput, fallback: str, name: str) -> str:
    types = ", ".join(f"`{t.name}` {t.original_type}→{t.written_type}" for t in output.tensors)
    parts = [
        "## GGUF",
        f"`{output.file}` is the base's GGUF file with only the edited tensors re-quantized ({types}); every other "
        "tensor and all metadata are byte for byte the base's (plus the keys `th_edit.version` and "
        "`th_edit.recipe_sha256`). llama.cpp, ollama and LM Studio load it like the base.",
        f"Re-quantized, the edited singular values are within {worst_gap(output):.1%} of the intended change "
        "(measured by dequantizing the written tensors and re-decomposing the edited heads).",
    ]
    parts += [f"**Note:** {line}." for line in fallback_lines(output)]
    parts += [
        "```sh\nllama-cli -m " + output.file + " -p \"The capital of France is\" -n 16\n"
        f"ollama create {name} -f {MODELFILE} && ollama run {name}\n```",
        "```python\nfrom llama_cpp import Llama\n\n"
        f"llm = Llama(model_path=\"{output.file}\")\n"
        "print(llm(\"The capital of France is\", max_tokens=16)[\"choices\"][0][\"text\"])\n```",
    ]
    return "\n\n".join(parts)


def differing_tensors(one: Path, other: Path) -> list[str]:
    """Names of the tensors whose type or bytes differ between two GGUF files (metadata: '(metadata)')."""
    import gguf

    a, b = gguf.GGUFReader(one), gguf.GGUFReader(other)
    names = [] if [(k, f.contents()) for k, f in a.fields.items()] == [(k, f.contents()) for k, f in b.fields.items()] \
        else ["(metadata)"]
    theirs = {t.name: t for t in b.tensors}
    for tensor in a.tensors:
        other_tensor = theirs.pop(tensor.name, None)
        if other_tensor is None or other_tensor.tensor_type != tensor.tensor_type or \
                bytes(other_tensor.data) != bytes(tensor.data):
            names.append(tensor.name)
    return names + sorted(theirs)
