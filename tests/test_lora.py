"""`apply --format lora`: the edit as a PEFT LoRA adapter. Base + adapter, loaded by PEFT itself on the
plain transformers base, must compute what the edited checkpoint computes, on every family."""

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from safetensors.torch import load_file, save_file
from tiny import FAMILIES, VOCAB, tiny_model
from transformers import AutoModelForCausalLM

from th_edit.cli import main
from th_edit.errors import UserError
from th_edit.lora import ADAPTER_DIR, module_kinds
from th_edit.verify import verify

# An OV and a QK edit in the same layer (different modules), two heads of one o_proj (ranks stack).
EDITS = [
    {"layer": 1, "head": 1, "circuit": "ov", "components": [0, 2], "scale": 2.5},
    {"layer": 1, "head": 0, "circuit": "ov", "components": [1], "scale": 0.0},
    {"layer": 1, "head": 1, "circuit": "qk", "components": [1, 3], "scale": 1.8},
    {"layer": 2, "head": 0, "circuit": "qk", "components": [0], "scale": 0.3},
]
TOLERANCE = 1e-5  # relative to the largest logit, float32


def run(*args):
    return CliRunner().invoke(main, ["--quiet", *map(str, args)])


def write_recipe(path: Path, base: Path, edits=EDITS) -> Path:
    path.write_text(yaml.safe_dump({"base_model": str(base), "seed": 0, "edits": edits}, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    made = {}
    for family in FAMILIES:
        base = root / family
        tiny_model(family).save_pretrained(base)
        out = root / f"{family}-edited"
        result = run("apply", write_recipe(root / f"{family}.yaml", base), "--out", out,
                     "--format", "safetensors", "--format", "lora")
        assert result.exit_code == 0, result.output
        assert f"wrote {out / ADAPTER_DIR}: PEFT LoRA adapter of 3 module(s), rank 1 to 3" in result.output
        made[family] = (base, out)
    return made


def logits(model, tokens):
    with torch.no_grad():
        return model(tokens).logits


@pytest.mark.parametrize("family", FAMILIES)
def test_base_plus_adapter_is_the_edited_checkpoint(family, outputs):
    from peft import PeftModel

    base_dir, out = outputs[family]
    tokens = torch.randint(0, VOCAB, (3, 17), generator=torch.Generator().manual_seed(1))
    patched = logits(AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval(), tokens)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    before = logits(base, tokens)
    with_adapter = logits(PeftModel.from_pretrained(base, out / ADAPTER_DIR).eval(), tokens)
    scale = float(patched.abs().max())
    assert float((with_adapter - patched).abs().max()) <= TOLERANCE * scale
    assert float((before - patched).abs().max()) > 1e-2 * scale  # the edit changes the logits: the check can fail


@pytest.mark.parametrize("family", FAMILIES)
def test_adapter_targets_exactly_the_edited_projections(family, outputs):
    from th_edit.arch import adapter_for

    base_dir, out = outputs[family]
    config = json.loads((out / ADAPTER_DIR / "adapter_config.json").read_text())
    arch = adapter_for(AutoModelForCausalLM.from_pretrained(base_dir).config)
    expected: dict[str, int] = {}
    for edit in EDITS:
        slot = arch.o_slot(edit["layer"], edit["head"]) if edit["circuit"] == "ov" else arch.q_slot(edit["layer"], edit["head"])
        name = slot.param.removesuffix(".weight")
        expected[name] = expected.get(name, 0) + len(edit["components"])
    assert sorted(config["target_modules"]) == sorted(expected)
    tensors = load_file(out / ADAPTER_DIR / "adapter_model.safetensors")
    for name, rank in expected.items():
        assert tensors[f"base_model.model.{name}.lora_A.weight"].shape[0] == rank
        assert tensors[f"base_model.model.{name}.lora_B.weight"].shape[1] == rank
    assert config["r"] == config["lora_alpha"] and config["alpha_pattern"] == config["rank_pattern"]
    record = json.loads((out / "provenance.json").read_text())
    assert record["adapter"]["modules"] == {name: expected[name] for name in sorted(expected)}
    assert record["adapter"]["relative_error_vs_edit"] < 1e-12
    assert record["adapter"]["relative_error_vs_written_weights"] < 1e-5  # float32 rounding of the written weights
    card = (out / ADAPTER_DIR / "README.md").read_text()
    assert "library_name: peft" in card and "PeftModel.from_pretrained" in card


def test_verify_recomputes_the_adapter(outputs, tmp_path):
    _, out = outputs["llama"]
    assert verify(out) == []
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    weights = copy / ADAPTER_DIR / "adapter_model.safetensors"
    tensors = load_file(weights)
    first = sorted(tensors)[0]
    tensors[first] = tensors[first] * 1.01
    save_file(tensors, weights, metadata={"format": "pt"})
    problems = verify(copy)
    assert any("adapter/adapter_model.safetensors" in p for p in problems)
    record = json.loads((copy / "provenance.json").read_text())
    record["files_sha256"]["adapter/adapter_model.safetensors"] = __import__("hashlib").sha256(weights.read_bytes()).hexdigest()
    record["adapter"]["relative_error_vs_written_weights"] = 0.5
    (copy / "provenance.json").write_text(json.dumps(record))
    problems = verify(copy)
    # the doctored file with a matching hash is still caught (rebuilt from the recipe), and so is the claim
    assert any("adapter/adapter_model.safetensors: differs" in p for p in problems)
    assert any("adapter.relative_error_vs_written_weights" in p for p in problems)


def test_force_replaces_a_checkpoint_with_an_adapter(outputs, tmp_path):
    base_dir, out = outputs["gpt2"]
    copy = tmp_path / "again"
    shutil.copytree(out, copy)
    recipe = write_recipe(tmp_path / "r.yaml", base_dir)
    result = run("apply", recipe, "--out", copy, "--force")  # safetensors only: the adapter goes
    assert result.exit_code == 0, result.output
    assert not (copy / ADAPTER_DIR).exists() and verify(copy) == []


def test_lora_without_the_checkpoint_is_refused(outputs, tmp_path):
    base_dir, _ = outputs["llama"]
    target = tmp_path / "only-lora"
    result = run("apply", write_recipe(tmp_path / "r.yaml", base_dir), "--out", target, "--format", "lora")
    assert result.exit_code == 2 and result.output.count("error:") == 1 and "Traceback" not in result.output
    assert not target.exists()


def test_a_module_peft_cannot_target_is_refused():
    config = tiny_model("llama").config
    assert module_kinds(config, ["model.layers.0.self_attn.o_proj"]) == {"model.layers.0.self_attn.o_proj": "linear"}
    with pytest.raises(UserError, match="PEFT cannot target model.layers.0.input_layernorm"):
        module_kinds(config, ["model.layers.0.input_layernorm"])


def test_write_adapter_api(outputs, tmp_path):
    from th_edit.lora import write_adapter

    base_dir, out = outputs["gpt_neox"]
    target = write_adapter(write_recipe(tmp_path / "r.yaml", base_dir), tmp_path / "adapter-only")
    assert sorted(p.name for p in target.iterdir()) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    assert (target / "adapter_model.safetensors").read_bytes() == (out / ADAPTER_DIR / "adapter_model.safetensors").read_bytes()


def test_push_uploads_the_adapter_files_to_a_repo_of_their_own(outputs):
    """push --format lora: the adapter's files at the top of the repo; the checkpoint's push leaves them out
    (the upload itself: tests/test_push_formats.py)."""
    from th_edit.hub import plan_push

    _, out = outputs["qwen3"]
    plan = plan_push(out, "someone/edited-lora", private=False, revision=None, fmt="lora")
    assert {name for name, _ in plan.files} == {"adapter_config.json", "adapter_model.safetensors", "README.md",
                                                "recipe.yaml"}
    assert dict(plan.sources)["README.md"] == "adapter/README.md"
    checkpoint = [name for name, _ in plan_push(out, "someone/edited", private=False, revision=None).files]
    assert "model.safetensors" in checkpoint and not [n for n in checkpoint if n.startswith("adapter/")]


def test_force_refuses_a_file_added_to_the_adapter_directory(outputs, tmp_path):
    base_dir, out = outputs["mistral"]
    copy = tmp_path / "mine"
    shutil.copytree(out, copy)
    (copy / ADAPTER_DIR / "notes.txt").write_text("mine")
    result = run("apply", write_recipe(tmp_path / "r.yaml", base_dir), "--out", copy, "--force")
    assert result.exit_code == 2 and "adapter/notes.txt" in result.output
    assert (copy / ADAPTER_DIR / "notes.txt").read_text() == "mine"


def test_push_refuses_an_adapter_directory_that_is_a_link(outputs, tmp_path):
    from th_edit.hub import plan_push

    _, out = outputs["qwen2"]
    copy = tmp_path / "linked"
    shutil.copytree(out, copy)
    shutil.move(copy / ADAPTER_DIR, tmp_path / "elsewhere")
    (copy / ADAPTER_DIR).symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UserError, match="symbolic link"):
        plan_push(copy, "someone/edited", private=False, revision=None)


def test_a_rounded_checkpoint_is_said_in_the_card(outputs, tmp_path):
    base_dir, _ = outputs["llama"]
    recipe = tmp_path / "bf16.yaml"
    recipe.write_text(yaml.safe_dump({"base_model": str(base_dir), "seed": 0, "edits": EDITS,
                                      "output": {"dtype": "bfloat16"}}, sort_keys=False))
    out = tmp_path / "bf16"
    result = run("apply", recipe, "--out", out, "--format", "safetensors", "--format", "lora")
    assert result.exit_code == 0, result.output
    assert "written in bfloat16" in (out / ADAPTER_DIR / "README.md").read_text()
    record = json.loads((out / "provenance.json").read_text())["adapter"]
    assert record["relative_error_vs_edit"] < 1e-12 < 1e-4 < record["relative_error_vs_written_weights"]
    assert verify(out) == []
