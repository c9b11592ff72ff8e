"""`th-edit inspect MODEL`: architecture summary and, with --svd, per-head singular values."""

from __future__ import annotations

import json
from dataclasses import asdict

import click
import torch

from th_edit import ui
from th_edit.arch import adapter_for
from th_edit.linalg import ov_svd, qk_svd
from th_edit.models import DEFAULT_MODEL, load_config, resolve


@click.command("inspect")
@click.argument("model", default=DEFAULT_MODEL)
@click.option("--svd", is_flag=True, help="Also list the top singular values of every head's OV and QK.")
@click.option("--top", type=click.IntRange(min=0), default=5, show_default=True,
              help="How many singular values per matrix with --svd (0 = all).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output on stdout.")
@click.option("--trust-remote-code", is_flag=True, help="Allow the checkpoint's own config code to run.")
def inspect_command(model: str, svd: bool, top: int, as_json: bool, trust_remote_code: bool) -> None:
    """Summarize MODEL (default: smollm2-135m): architecture, sizes, norms, rotary, dtype.

    MODEL is an offline alias (smollm2-135m, gemma-3-270m), a .gguf file, a checkpoint
    directory, or a Hugging Face Hub id org/name[@revision].
    """
    resolved = resolve(model)
    config = load_config(resolved, trust_remote_code)
    adapter = adapter_for(config)
    tensors = resolved.tensors()
    info = asdict(adapter.info())
    dtypes = tensors.dtypes()
    summary = {
        "reference": model,
        "source": resolved.provenance(),
        "architecture": info,
        "dtype": {code.lower(): count for code, count in dtypes.items()},
        "parameters": tensors.total_parameters(),
    }
    rows = []
    if svd:
        for layer in ui.progress(range(adapter.n_layers), desc="SVD", unit="layer"):
            weights = adapter.layer_weights(tensors, layer, dtype=torch.float64)
            ov, qk = ov_svd(weights), qk_svd(weights)
            for head in range(adapter.n_heads):
                keep = slice(None) if top == 0 else slice(0, top)
                rows.append({
                    "layer": layer, "head": head, "kv_group": adapter.kv_group(head),
                    "ov": [round(float(s), 6) for s in ov.S[head, keep]],
                    "qk": [round(float(s), 6) for s in qk.S[head, keep]],
                })
        summary["svd"] = {
            "convention": "effective matrices (input norm folded, QK-norm and post-attention norm weights "
                          "folded); biases and rotary left out (QK is the unrotated bilinear form)",
            "heads": rows,
        }
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    _print_summary(summary)
    if svd:
        _print_svd(rows)


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
        ("dtype", ", ".join(f"{k} ({v:,} params)" for k, v in summary["dtype"].items())),
        ("parameters", f"{summary['parameters']:,}"),
    ]
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        click.echo(f"{key:<{width}}  {value}")


def _print_svd(rows: list[dict]) -> None:
    click.echo("\nsingular values (effective OV and QK; biases and rotary left out)")
    for row in rows:
        ov = " ".join(f"{s:8.3f}" for s in row["ov"])
        qk = " ".join(f"{s:8.3f}" for s in row["qk"])
        click.echo(f"{row['layer']:>3}.{row['head']:<3} OV {ov}   QK {qk}")
