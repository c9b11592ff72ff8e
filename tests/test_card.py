"""The model card: Hub front matter (license and language from the base, pipeline_tag), a `generate`
example that runs, plain plurals, and a card that says when the edit was not benchmarked."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from test_apply import EDITS, write_recipe
from tiny import tiny_checkpoint

from th_edit.card import base_license, model_card
from th_edit.cli import main
from th_edit.gguf_metadata import read_gguf_metadata
from th_edit.models import ResolvedModel
from th_edit.recipe import parse_recipe

RECIPE = "base_model: b\nedits:\n  - {layer: 0, head: 0, circuit: ov, components: [0], scale: 2}\n"


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---")[1])


def local(path: Path) -> ResolvedModel:
    return ResolvedModel(str(path), "local", path)


def card_for(base: ResolvedModel, recipe_text: str = RECIPE, benchmark=None) -> str:
    return model_card("edited", parse_recipe(recipe_text), recipe_text, base, [], "float32", benchmark)


def write_gguf(path: Path, **general) -> Path:
    """A GGUF file written by the gguf package itself (not by th-edit's reader), one tiny tensor."""
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    if "license" in general:
        writer.add_license(general["license"])
    if "languages" in general:
        writer.add_languages(general["languages"])
    writer.add_array("tokenizer.ggml.tokens", [f"tok{i}" for i in range(3000)])  # a long array before nothing else
    writer.add_tensor("w", np.zeros((2, 2), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_license_and_language_from_the_base_readme(tmp_path):
    (tmp_path / "README.md").write_text("---\nlicense: mit\nlanguage:\n- en\n- fr\ntags: [x]\n---\n# base\n")
    card = card_for(local(tmp_path))
    front = front_matter(card)
    assert front["license"] == "mit" and front["language"] == ["en", "fr"]
    assert front["pipeline_tag"] == "text-generation" and front["library_name"] == "transformers"
    assert "**License:** `mit`, the base's (read from the base's README front matter)" in card


def test_license_and_language_from_the_gguf_header(tmp_path):
    gguf_file = write_gguf(tmp_path / "m.gguf", license="apache-2.0", languages=["en"])
    import gguf

    reader = gguf.GGUFReader(str(gguf_file))  # the gguf package reads the same values
    assert reader.fields["general.license"].contents() == "apache-2.0"
    assert read_gguf_metadata(gguf_file, ["general.license", "general.languages"]) == {
        "general.license": "apache-2.0", "general.languages": ["en"]}
    base = ResolvedModel(str(gguf_file), "gguf", tmp_path / "cache-entry", gguf_file="m.gguf", gguf_path=gguf_file)
    front = front_matter(card_for(base))
    assert front["license"] == "apache-2.0" and front["language"] == ["en"]
    assert base_license(base).source == "the base's GGUF metadata, `general.license`"


def test_no_license_found_is_said_and_no_key_is_invented(tmp_path):
    gguf_file = write_gguf(tmp_path / "m.gguf")
    (tmp_path / "damaged.gguf").write_bytes(b"GGUF" + bytes(10))
    for base in (local(tmp_path / "nowhere"),
                 ResolvedModel("b", "gguf", tmp_path, gguf_file="m.gguf", gguf_path=gguf_file),
                 ResolvedModel("b", "gguf", tmp_path, gguf_file="damaged.gguf", gguf_path=tmp_path / "damaged.gguf")):
        card = card_for(base)
        front = front_matter(card)
        assert "license" not in front and "language" not in front and front["pipeline_tag"] == "text-generation"
        assert "**License:** not stated" in card


def test_plurals_are_words(tmp_path):
    card = card_for(local(tmp_path))
    assert "(es)" not in card and "(s) of" not in card
    assert "0 singular components of 0 attention head matrices" in card


@pytest.mark.parametrize("section, reason", [("", "the recipe has no `benchmark:` section"),
                                             ("benchmark: {n_items: [3]}\n", "--no-bench` skipped")])
def test_a_card_without_benchmark_says_so(tmp_path, section, reason):
    card = card_for(local(tmp_path), RECIPE + section)
    assert "**Not benchmarked**" in card and reason in card
    assert f"`th-edit bench BASE --compare recipe.yaml`, BASE being the path of `{tmp_path.name}`" in card
    hub = card_for(ResolvedModel("org/base", "hub", tmp_path, hub_id="org/base"), RECIPE + section)
    assert "From this directory, `th-edit bench org/base --compare recipe.yaml` compares" in hub


def test_apply_no_bench_card_says_not_benchmarked_and_its_generate_example_runs(tmp_path):
    """End to end: apply --no-bench on a base with a tokenizer and a licensed README; the card's
    Python example (load and generate) runs as written from the directory above the checkpoint."""
    base = tiny_checkpoint(tmp_path / "base", "llama")
    (base / "README.md").write_text("---\nlicense: apache-2.0\n---\n")
    recipe = write_recipe(tmp_path / "r.yaml", base, EDITS, dir=str(tmp_path / "work" / "edited"))
    recipe.write_text(recipe.read_text() + "benchmark: {n_items: [3]}\n")
    result = CliRunner().invoke(main, ["--quiet", "apply", str(recipe), "--no-bench"])
    assert result.exit_code == 0, result.output
    card = (tmp_path / "work" / "edited" / "README.md").read_text()
    assert front_matter(card)["license"] == "apache-2.0"
    assert "**Not benchmarked**" in card and "--no-bench" in card
    code = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    assert "model.generate(" in code
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path / "work", capture_output=True, text=True,
                         timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 0, run.stderr


def test_apply_benchmark_with_generation_reaches_provenance_and_card(tmp_path):
    """A recipe's `benchmark: {generation: true}`: apply reports free generation (completion and
    chat), greedy agreement and KL on the model's own chat replies, in provenance and in the card."""
    base = tiny_checkpoint(tmp_path / "base", "llama")
    recipe = write_recipe(tmp_path / "r.yaml", base, EDITS, dir=str(tmp_path / "edited"))
    recipe.write_text(recipe.read_text() + "benchmark: {tasks: [laundry], n_items: [3], n_prompts: 4, kl_texts: 8, "
                                           "generation: true}\n")
    result = CliRunner().invoke(main, ["--quiet", "apply", str(recipe)])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "edited" / "provenance.json").read_text())["benchmark"]
    assert set(report["paired"]["laundry"]["overall"]["metrics"]) == {"top1", "generation", "chat"}
    visible = report["side_effects"]["user_visible"]
    assert set(visible["greedy_agreement"]) == {"completion", "chat"} and visible["chat_reply_kl"]["n_replies"] == 32
    card = (tmp_path / "edited" / "README.md").read_text()
    assert "greedy tokens unchanged" in card and "own chat replies" in card and "95th percentile" in card
