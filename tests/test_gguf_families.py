"""Every family transformers' GGUF reader supports loads from a tiny GGUF written here: exact per-head
weights, the same logits as transformers' own GGUF load, and an edit that applies."""

from __future__ import annotations

import pytest
import torch
from exactness import TOL, check_layer
from test_models import assert_user_error, run_cli
from tiny_gguf import FAMILY_ARCHS, VOCAB, write_tiny_family_gguf, write_tiny_gguf

from th_edit import models
from th_edit.arch import adapter_for

pytestmark = pytest.mark.cli

RECIPE = ("base_model: {base}\nedits:\n"
          "  - {{layer: 1, head: 1, circuit: ov, components: [0, 1], scale: 2.0}}\n"
          "  - {{layer: 0, head: 0, circuit: qk, components: [0], scale: 0.5}}\n")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TH_EDIT_CACHE", str(tmp_path / "cache"))


@pytest.mark.parametrize("arch", ("llama", "gemma3", *FAMILY_ARCHS))
def test_family_loads_from_gguf_exactly_and_edits(tmp_path, cache, arch):
    from transformers import AutoModelForCausalLM

    write = write_tiny_gguf if arch in ("llama", "gemma3") else write_tiny_family_gguf  # the first two: K-quants too
    path = write(tmp_path / f"tiny-{arch}.gguf", arch)
    model = models.load_model(models.resolve(str(path)), dtype="float32", attn_implementation="eager")
    adapter = adapter_for(model.config)
    input_ids = torch.randint(3, VOCAB, (2, 9), generator=torch.Generator().manual_seed(1))
    for layer in range(adapter.n_layers):
        errors = check_layer(model, adapter, input_ids, layer)
        assert max(errors.values()) < TOL, (arch, layer, errors)

    reference = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=path.name, dtype=torch.float32,
                                                     attn_implementation="eager").eval()
    theirs_weights = reference.state_dict()
    assert {name: t.shape for name, t in model.state_dict().items()} == {n: t.shape for n, t in theirs_weights.items()}
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, theirs_weights[name]), (arch, name)
    with torch.no_grad():
        ours, theirs = model(input_ids).logits, reference(input_ids).logits
    assert model.config.model_type == reference.config.model_type
    assert torch.equal(ours, theirs)

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE.format(base=path))
    out = tmp_path / "out"
    result = run_cli("apply", str(recipe), "--out", str(out), "--no-bench", "--format", "safetensors")
    assert result.exit_code == 0, result.output
    edited = models.load_model(models.resolve(str(out)), dtype="float32")
    with torch.no_grad():
        assert not torch.allclose(edited(input_ids).logits, ours)


def test_a_family_transformers_cannot_read_from_gguf_is_one_line(tmp_path, cache):
    """A Mistral GGUF (llama.cpp's `llama` layout named "mistral"): transformers' reader looks the name up
    in the gguf package's tables, which lack it; th-edit says so in one line and caches nothing."""
    path = write_tiny_family_gguf(tmp_path / "tiny-mistral.gguf", "mistral")
    result = run_cli("--quiet", "inspect", str(path))
    assert_user_error(result, "cannot load tiny-mistral.gguf", "mistral")
    assert not any((tmp_path / "cache").rglob("config.json"))
