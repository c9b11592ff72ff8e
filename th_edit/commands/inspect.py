"""`th-edit inspect MODEL`: architecture summary and, with --svd, per-head singular values."""

from __future__ import annotations

import re
from dataclasses import asdict, replace

import click
import torch

from th_edit import strict_json, ui
from th_edit.arch import Adapter, adapter_for
from th_edit.checkpoint import CheckpointTensors
from th_edit.commands import options as opt
from th_edit.errors import UserError
from th_edit.limits import MAX_SINGULAR_VALUES, digits_at_most, shown_number
from th_edit.linalg import circuit, single_threaded
from th_edit.models import DEFAULT_MODEL, load_config, resolve

SVD_CONVENTION = ("effective matrices (input norm folded, QK-norm and post-attention norm weights folded); "
                  "biases and rotary left out (QK is the unrotated bilinear form)")


@click.command("inspect")
@click.argument("model", default=DEFAULT_MODEL)
@click.option("--svd", is_flag=True, help="Also list the top singular values of every head's OV and QK.")
@click.option("--top", type=click.IntRange(min=0, max=MAX_SINGULAR_VALUES), default=5, show_default=True,
              help="How many singular values per matrix with --svd (0 = all).")
@click.option("--layer", "layers", metavar="L", help="With --svd: only these layers (e.g. 20, 20-23 or 1,5,9).")
@click.option("--head", "heads", metavar="H", help="With --svd: only these heads (e.g. 3, 0-2 or 1,4).")
@opt.json_option("Machine-readable output on stdout.")
@click.option("--trust-remote-code", is_flag=True, help="Allow the checkpoint's own config code to run.")
def inspect_command(model: str, svd: bool, top: int, layers: str | None, heads: str | None, as_json: bool,
                    trust_remote_code: bool) -> None:
    """Summarize MODEL (default: smollm2-135m): architecture, sizes, norms, rotary, dtype.

    MODEL is an offline alias (smollm2-135m, gemma-3-270m), a .gguf file, a checkpoint
    directory, or a Hugging Face Hub id org/name[@revision].
    """
    if (layers or heads) and not svd:
        raise UserError("--layer and --head select rows of the --svd table: add --svd")
    resolved = resolve(model)
    adapter = adapter_for(load_config(resolved, trust_remote_code))
    chosen_layers = parse_indices(layers, adapter.n_layers, "--layer")
    chosen_heads = parse_indices(heads, adapter.n_heads, "--head")
    tensors = resolved.tensors()
    summary = {
        "reference": model,
        "source": resolved.provenance(),
        # What the loaded model does, which the config alone does not say (a separately stored unembedding).
        "architecture": asdict(replace(adapter.info(), tied_embeddings=adapter.ties_embeddings(tensors))),
        "dtype": {code.lower(): count for code, count in tensors.dtypes().items()},
        "parameters": tensors.total_parameters(),
    }
    if svd:
        summary["svd"] = {"convention": SVD_CONVENTION,
                          "heads": svd_rows(adapter, tensors, chosen_layers, chosen_heads, top)}
    if as_json:
        click.echo(strict_json.dumps(summary, indent=2))
        return
    _print_summary(summary)
    if svd:
        _print_svd(summary["svd"]["heads"])


def parse_indices(text: str | None, count: int, option: str) -> list[int]:
    """'20' / '20-23' / '1,5,9' (or a mix: '0-2,7') -> sorted indices, each in 0..count-1; None -> all."""
    if text is None:
        return list(range(count))
    cleaned = text.replace(" ", "")
    if not re.fullmatch(r"\d+(-\d+)?(,\d+(-\d+)?)*", cleaned):
        raise UserError(f"{option}: expected a number, a range like 20-23 or a list like 1,5,9, got '{text}'")
    chosen: set[int] = set()
    for part in cleaned.split(","):
        low, _, high = part.partition("-")
        first, last = (_index(digits, count, option) for digits in (low, high or low))
        if first > last:
            raise UserError(f"{option}: the range {part} is empty")
        chosen.update(range(first, last + 1))
    return sorted(chosen)


def _index(digits: str, count: int, option: str) -> int:
    """One index of --layer/--head, in 0..count-1 (bounded before any range is built from it)."""
    value = digits_at_most(digits, count - 1)
    if value is None:
        raise UserError(f"{option}: {shown_number(digits.lstrip('0'))} is out of range "
                        f"(the model has {option.strip('-')}s 0..{count - 1})")
    return value


def svd_rows(adapter: Adapter, tensors: CheckpointTensors, layers: list[int], heads: list[int], top: int) -> list[dict]:
    """Singular values of the chosen heads' OV and QK, sorted by layer then head."""
    keep = slice(None) if top == 0 else slice(0, top)
    index = torch.tensor(heads)
    rows = []
    # One thread: these are many small float64 operations, which OpenMP only slows down (measured:
    # 12 s instead of 0.4 s to build SmolLM2's per-head matrices on a busy 2-core machine).
    with single_threaded():
        for layer in ui.progress(layers, desc="SVD", unit="layer"):
            weights = adapter.layer_weights(tensors, layer, dtype=torch.float64)
            ov, qk = (circuit(weights, name)[index].svdvals() for name in ("ov", "qk"))
            for i, head in enumerate(heads):
                rows.append({
                    "layer": layer, "head": head, "kv_group": adapter.kv_group(head),
                    "ov": [round(float(s), 6) for s in ov[i, keep]],
                    "qk": [round(float(s), 6) for s in qk[i, keep]],
                })
    return sorted(rows, key=lambda row: (row["layer"], row["head"]))


def _print_summary(summary: dict) -> None:
    arch, source = summary["architecture"], summary["source"]
    yes = lambda flag: "yes" if flag else "no"  # noqa: E731
    groups = arch["n_heads"] // arch["n_kv_heads"]
    origin = source["kind"]
    if source.get("gguf_file"):
        origin += f", dequantized from {source['gguf_file']}"
    if source.get("revision"):
        origin += f", revision {source['revision']}"
    lines = [
        ("model", f"{summary['reference']} ({origin})"),
        ("checkpoint", source["path"]),
        ("family", f"{arch['family']} (model_type {arch['model_type']})"),
        ("layers", arch["n_layers"]),
        ("heads", f"{arch['n_heads']} query, {arch['n_kv_heads']} KV" + (f" (GQA, {groups} per group)" if groups > 1 else "")),
        ("d_model", arch["d_model"]),
        ("d_head", arch["d_head"]),
        ("norm", arch["norm"]),
        ("rotary", arch["rotary"]),
        ("qk-norm", yes(arch["qk_norm"])),
        ("post-attn norm", yes(arch["post_attention_norm"])),
        ("parallel residual", yes(arch["parallel_residual"])),
        ("tied embeddings", yes(arch["tied_embeddings"])),
        ("vocab", arch["vocab_size"]),
        # The count per dtype only when there are several (with one it would repeat the total below).
        ("dtype", ", ".join(f"{k} ({v:,} params)" if len(summary["dtype"]) > 1 else k for k, v in summary["dtype"].items())),
        ("parameters", f"{summary['parameters']:,}"),
    ]
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        click.echo(f"{key:<{width}}  {value}")


def _print_svd(rows: list[dict]) -> None:
    """A table: layer, head, KV group, then OV σ0.. and QK σ0.. (σk is the recipe's component k)."""
    click.echo("\nsingular values σk of each head's effective OV and QK (biases and rotary left out; "
               "k is the component index recipes use)")
    if not rows:
        return
    count = len(rows[0]["ov"])
    headers = ["layer", "head", "kv", *(f"OV σ{k}" for k in range(count)), *(f"QK σ{k}" for k in range(count))]
    cells = [[str(row["layer"]), str(row["head"]), str(row["kv_group"]),
              *(f"{s:.3f}" for s in row["ov"]), *(f"{s:.3f}" for s in row["qk"])] for row in rows]
    for line in ui.table(headers, cells, left=0):
        click.echo(line)
