"""What apply writes (and push may publish) holds only what a checkpoint needs, and never the
location of a local base on this machine."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_apply import EDITS, write_recipe
from tiny import tiny_model

from th_edit.card import base_record, model_card, public_reference, scrub
from th_edit.cli import main
from th_edit.export import LOCAL_RECORD
from th_edit.models import ResolvedModel
from th_edit.recipe import parse_recipe

SECRET = "AWS_SECRET_ACCESS_KEY=th-edit-test-secret-42"


@pytest.fixture()
def base(tmp_path):
    """A local base directory with everything a real one may hold besides the checkpoint."""
    base = tmp_path / "models" / "my-base"
    tiny_model("llama").save_pretrained(base)
    (tmp_path / "secret").write_text(SECRET)
    (base / ".env").symlink_to(tmp_path / "secret")  # a dotfile, through a link that leaves the base
    (base / "notes.txt").write_text(SECRET)
    (base / "train.py").write_text("import os  # " + SECRET)
    (base / "optimizer.pt").write_bytes(b"pickle" + SECRET.encode())
    (base / "tokenizer").mkdir()
    (base / "tokenizer" / "tok.json").write_text(json.dumps({"model_max_length": 64}))
    (base / "tokenizer_config.json").symlink_to(base / "tokenizer" / "tok.json")  # a link inside the base: fine
    (base / "chat_template.jinja").write_text("{{ messages }}")
    return base


def apply(tmp_path, base, *extra):
    recipe = write_recipe(tmp_path / "r.yaml", base, EDITS, dir=str(tmp_path / "out"))
    return CliRunner().invoke(main, ["--quiet", "apply", str(recipe), *extra])


def test_only_allow_listed_files_are_copied(tmp_path, base):
    result = apply(tmp_path, base)
    assert result.exit_code == 0, result.output
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == sorted([
        LOCAL_RECORD, "README.md", "chat_template.jinja", "config.json", "generation_config.json", "model.safetensors",
        "provenance.json", "recipe.yaml", "tokenizer_config.json"])
    # Followed through the symlink inside the base (then made portable: same settings, rewritten layout).
    assert json.loads((out / "tokenizer_config.json").read_text())["model_max_length"] == 64
    for path in out.iterdir():
        assert SECRET.encode() not in path.read_bytes(), path.name
    assert not any(p.is_symlink() for p in out.iterdir())


def test_a_link_out_of_the_base_is_refused_before_any_work(tmp_path, base):
    (tmp_path / "elsewhere.json").write_text("{}")
    (base / "tokenizer.json").symlink_to(tmp_path / "elsewhere.json")
    result = apply(tmp_path, base)
    assert result.exit_code == 2 and result.stdout == "", result.output  # refused before the edit table
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "tokenizer.json" in lines[0] and "leads out of the base" in lines[0]
    assert not (tmp_path / "out").exists()


def test_no_published_file_names_the_local_path(tmp_path, base):
    assert apply(tmp_path, base).exit_code == 0
    out = tmp_path / "out"
    for path in out.iterdir():
        if path.name == LOCAL_RECORD:  # verify's note of where the base is: never pushed
            continue
        text = path.read_bytes().decode("utf-8", "replace")
        assert str(tmp_path) not in text and "/models/my-base" not in text, path.name
    record = json.loads((out / "provenance.json").read_text())
    assert record["base"]["reference"] == "my-base" and record["base"]["weight_files_sha256"]
    assert "path" not in record["base"]
    recipe = parse_recipe((out / "recipe.yaml").read_text())
    assert recipe.base_model == "my-base" and recipe.output.dir == "out"
    card = (out / "README.md").read_text()
    assert "`my-base`" in card
    assert json.loads((out / LOCAL_RECORD).read_text())["base"] == str(base)


def test_push_never_publishes_the_local_record(tmp_path, base):
    assert apply(tmp_path, base).exit_code == 0
    result = CliRunner().invoke(main, ["push", str(tmp_path / "out"), "me/edited", "--dry-run"])
    assert result.exit_code == 0, result.output
    listed = [line.split()[0] for line in result.output.splitlines() if line.startswith("  ")]
    assert LOCAL_RECORD not in listed and "provenance.json" in listed and "model.safetensors" in listed


def test_records_of_a_gguf_base_name_the_file_only(tmp_path):
    gguf = tmp_path / "private" / "dir" / "model.Q4.gguf"
    base = ResolvedModel(str(gguf), "gguf", tmp_path / "cache" / "model.Q4-abc", gguf_file=gguf.name, gguf_sha256="ab" * 32,
                         notes=[f"weights dequantized to float32 from {gguf}"], gguf_path=gguf)
    assert public_reference(base) == "model.Q4.gguf"
    record = base_record(base, None)
    assert str(tmp_path) not in json.dumps(record) and record["reference"] == "model.Q4.gguf"
    assert record["notes"] == ["weights dequantized to float32 from model.Q4.gguf"]
    report = {"setup": {"seed": 0}, "before": {"model": {"reference": str(gguf)}},
              "after": {"model": {"reference": f"{gguf} + recipe edits"}}}
    assert scrub(report, base)["after"]["model"]["reference"] == "model.Q4.gguf + recipe edits"
    recipe = parse_recipe(f"base_model: {gguf}\nedits:\n  - {{layer: 0, head: 0, circuit: ov, components: [0], scale: 2}}\n")
    card = model_card("edited", recipe, f"base_model: {gguf}\n", base, [], "float32",
                      (report, f"laundry: before = {gguf}, after = {gguf} + recipe edits"))
    assert str(tmp_path) not in card and "model.Q4.gguf" in card


def test_card_usage_names_the_directory_and_ioi_once(tmp_path):
    base = ResolvedModel("smollm2-135m", "alias", Path("/nowhere"), hub_id="HuggingFaceTB/SmolLM2-135M-Instruct")
    recipe = parse_recipe("base_model: smollm2-135m\nedits:\n  - {layer: 0, head: 0, circuit: ov, components: [0], scale: 2}\n")
    from th_edit.bench import PromptScore, compare, render_report
    from th_edit.tasks.prompts import TaskPrompt

    prompts = [TaskPrompt("ioi", "When Mary and John left, John waved to", " Mary", (" Mary", " John"), 2, 0)] * 6
    # right among the candidates, not the top-1 over the vocabulary: the top-1 row shows other percentages
    right, wrong = PromptScore(True, False, 1.0), PromptScore(False, False, -1.0)
    text = render_report({"kind": "paired", "prompt_counts": {"ioi": 6}, "before": {"model": {"reference": "a"}},
                          "after": {"model": {"reference": "b"}}, "paired": compare(prompts, [right] * 6, [right] * 5 + [wrong]),
                          "side_effects": {"neutral_kl": {"mean_nats_per_token": 0.01, "n_texts": 3, "n_tokens": 30},
                                           "ioi_accuracy_change": -1 / 6}})
    card = model_card("my-edit", recipe, "base_model: smollm2-135m\n", base, [], "float32",
                      ({"setup": {"seed": 0}}, text), weights_bytes=538_000_000)
    assert 'from_pretrained("my-edit")' in card and "<this repo or directory>" not in card
    assert card.count("100.0%") == 1  # the IOI accuracy is in the table, not repeated below it
    assert "output.dtype: bfloat16" in card and "538 MB" in card


def test_apply_hints_at_bfloat16_for_a_float32_checkpoint(tmp_path, base):
    result = CliRunner().invoke(main, ["apply", str(write_recipe(tmp_path / "r.yaml", base, EDITS)), "--out",
                                       str(tmp_path / "o")])
    assert result.exit_code == 0 and "hint:" in result.stderr and "output.dtype: bfloat16" in result.stderr
    result = CliRunner().invoke(main, ["apply", str(write_recipe(tmp_path / "b.yaml", base, EDITS, dtype="bfloat16")),
                                       "--out", str(tmp_path / "b")])
    assert result.exit_code == 0 and "hint:" not in result.stderr
