"""`inspect --svd`: a table with headers, rows in layer/head order, --layer/--head filters, and the
same singular values that the edits use (factored_svd), from the cheaper values-only path."""

import json

import pytest
import torch
from cli_helpers import one_line_error
from click.testing import CliRunner
from tiny import tiny_model

from th_edit.arch import adapter_for
from th_edit.checkpoint import CheckpointTensors
from th_edit.cli import main
from th_edit.linalg import ov_svd, qk_svd


@pytest.fixture(scope="module")
def gemma(tmp_path_factory):
    """Gemma 3: GQA (4 query heads, 2 KV heads), head_dim independent of d_model."""
    path = tmp_path_factory.mktemp("gemma") / "m"
    tiny_model("gemma3_text").save_pretrained(path)
    return path


def run(*args):
    return CliRunner().invoke(main, ["--quiet", "inspect", *map(str, args)])


def heads(path, *args):
    result = run(path, "--svd", "--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["svd"]["heads"]


def test_values_equal_the_full_decomposition(gemma):
    rows = heads(gemma, "--top", "0")
    adapter = adapter_for(tiny_model("gemma3_text").config)
    tensors = CheckpointTensors(gemma)
    for layer in range(adapter.n_layers):
        weights = adapter.layer_weights(tensors, layer, dtype=torch.float64)
        ov, qk = ov_svd(weights).S, qk_svd(weights).S
        for row in (r for r in rows if r["layer"] == layer):
            assert row["ov"] == pytest.approx(ov[row["head"]].tolist(), rel=1e-9, abs=1e-6)
            assert row["qk"] == pytest.approx(qk[row["head"]].tolist(), rel=1e-9, abs=1e-6)
            assert row["kv_group"] == row["head"] // 2


def test_table_has_headers_and_rows_in_layer_head_order(gemma):
    result = run(gemma, "--svd", "--top", "3")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:3] == ["layer", "head", "kv"])
    assert lines[start].split() == ["layer", "head", "kv", "OV", "σ0", "OV", "σ1", "OV", "σ2", "QK", "σ0", "QK", "σ1",
                                    "QK", "σ2"]
    keys = [tuple(int(x) for x in line.split()[:2]) for line in lines[start + 1:]]
    assert keys == [(layer, head) for layer in range(3) for head in range(4)]


@pytest.mark.parametrize("args, expected", [
    (["--layer", "1"], [(1, h) for h in range(4)]),
    (["--head", "3"], [(layer, 3) for layer in range(3)]),
    (["--layer", "1-2", "--head", "0,3"], [(1, 0), (1, 3), (2, 0), (2, 3)]),
    (["--layer", "2,0", "--head", "1-1"], [(0, 1), (2, 1)]),
])
def test_layer_and_head_filters(gemma, args, expected):
    assert [(row["layer"], row["head"]) for row in heads(gemma, *args)] == expected


@pytest.mark.parametrize("args, message", [
    (["--svd", "--layer", "3"], "--layer: 3 is out of range (the model has layers 0..2)"),
    (["--svd", "--head", "2-9"], "--head: 9 is out of range (the model has heads 0..3)"),
    (["--svd", "--layer", "2-1"], "--layer: the range 2-1 is empty"),
    (["--svd", "--head", "x"], "--head: expected a number"),
    (["--layer", "1"], "add --svd"),
    # Bounded by their digits before anything is built: out of range, not "expected a number".
    (["--svd", "--layer", "99999999999999999999"], "--layer: 99999999999999999999 is out of range (the model has layers 0..2)"),
    (["--svd", "--head", "0-" + "9" * 5000], "--head: 99999999999999999999… is out of range (the model has heads 0..3)"),
    (["--svd", "--layer", "0002"], None),
])
def test_filter_errors(gemma, args, message):
    result = run(gemma, *args)
    if message is None:  # leading zeros are still a number
        assert result.exit_code == 0, result.output
        return
    one_line_error(result, message, alone=True)


# ---- tied embeddings: what the loaded model does, not only what config.json asks -------------


def _tied_line(path) -> str:
    result = run(path)
    assert result.exit_code == 0, result.output
    return next(line for line in result.stdout.splitlines() if line.startswith("tied embeddings")).split()[-1]


@pytest.mark.parametrize("stored, expected", [("separate", "no"), ("equal", "yes"), ("absent", "yes")])
def test_tied_embeddings_says_what_transformers_loads(tmp_path, stored, expected):
    """tie_word_embeddings asks transformers to tie; it does so unless the checkpoint stores a
    separate lm_head with other values (then it keeps both, with a warning)."""
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM

    model = tiny_model("llama")
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": True}))
    state = load_file(tmp_path / "model.safetensors")
    if stored == "equal":
        state["lm_head.weight"] = state["model.embed_tokens.weight"].clone()
    elif stored == "absent":
        del state["lm_head.weight"]
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert (loaded.lm_head.weight is loaded.model.embed_tokens.weight) == (expected == "yes")
    assert _tied_line(tmp_path) == expected


# ---- the parameter count is printed once ------------------------------------------------------


def test_parameter_count_is_printed_once(gemma, tmp_path):
    """One dtype: the count appears on the `parameters` line only; several: each dtype's share too."""
    from safetensors.torch import load_file, save_file

    result = run(gemma)
    assert result.exit_code == 0, result.output
    total = f"{json.loads(run(gemma, '--json').stdout)['parameters']:,}"
    assert result.stdout.count(total) == 1, result.stdout
    mixed = tmp_path / "mixed"
    tiny_model("llama").save_pretrained(mixed)
    state = load_file(mixed / "model.safetensors")
    state["lm_head.weight"] = state["lm_head.weight"].half()
    save_file(state, mixed / "model.safetensors", metadata={"format": "pt"})
    lines = run(mixed).stdout.splitlines()
    dtype_line = next(line for line in lines if line.startswith("dtype"))
    assert "f16 (" in dtype_line and "f32 (" in dtype_line and " params)" in dtype_line
