"""`push --format`: each output format goes to a Hub repo of its own, the way the Hub expects it
(a GGUF repo with its own card, an adapter repo with the adapter at its top, the checkpoint without
the others), against a stand-in HfApi (no network); and the card front matter of each format."""

from __future__ import annotations

import json

import pytest
import yaml
from test_push import FakeApi, run_push
from tiny_gguf import write_tiny_gguf

from th_edit.card import model_card
from th_edit.cli import main
from th_edit.models import ResolvedModel
from th_edit.recipe import parse_recipe

EDITS = ("  - {layer: 1, head: 1, circuit: ov, components: [0, 1], scale: 2.0}\n"
         "  - {layer: 0, head: 2, circuit: qk, components: [0], scale: 0.5}\n")


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory):
    from click.testing import CliRunner

    root = tmp_path_factory.mktemp("push-formats")
    base = write_tiny_gguf(root / "tiny.gguf", "llama")
    recipe = root / "recipe.yaml"
    recipe.write_text(f"base_model: {base}\nedits:\n{EDITS}")
    mp = pytest.MonkeyPatch()
    mp.setenv("TH_EDIT_CACHE", str(root / "cache"))
    try:
        result = CliRunner().invoke(main, ["--quiet", "apply", str(recipe), "--out", str(root / "edited"), "--no-bench",
                                           "--format", "safetensors", "--format", "gguf", "--format", "lora"])
        assert result.exit_code == 0, result.output
    finally:
        mp.undo()
    return root / "edited"


class RecordingApi(FakeApi):
    """Also keeps what the real client would upload from the folder at the time of the call (through
    huggingface_hub's own filter; a scratch folder is gone after)."""

    def upload_folder(self, **kwargs):
        from pathlib import Path

        from huggingface_hub.utils import filter_repo_objects

        folder = Path(kwargs["folder_path"])
        names = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
        kept = filter_repo_objects(names, allow_patterns=kwargs["allow_patterns"])
        self.uploaded = {name: (folder / name).read_bytes() for name in kept}
        return super().upload_folder(**kwargs)


def _front(card: bytes) -> dict:
    return yaml.safe_load(card.decode().split("---")[1])


def test_default_push_is_the_checkpoint_without_the_other_formats(monkeypatch, out_dir):
    api = RecordingApi()
    result = run_push(monkeypatch, api, out_dir, "me/edited")
    assert result.exit_code == 0, result.output
    upload = api.calls[-1][2]
    assert upload["folder_path"] == str(out_dir)
    assert upload["delete_patterns"] == ["*.safetensors", "model.safetensors.index.json"]
    assert {"model.safetensors", "config.json", "README.md", "provenance.json", "recipe.yaml"} <= set(api.uploaded)
    others = ("Modelfile", "README.gguf.md")
    assert not [n for n in api.uploaded if n.endswith(".gguf") or n.startswith("adapter") or n in others]
    front = _front(api.uploaded["README.md"])
    assert front["library_name"] == "transformers" and "gguf" not in front["tags"]
    assert "--format gguf" in result.output and "--format lora" in result.output  # said where the others go


def test_gguf_repo_holds_the_gguf_its_modelfile_and_its_own_card(monkeypatch, out_dir):
    api = RecordingApi()
    result = run_push(monkeypatch, api, out_dir, "me/edited-GGUF", "--format", "gguf")
    assert result.exit_code == 0, result.output
    (gguf_name,) = [p.name for p in out_dir.glob("*.gguf")]
    assert set(api.uploaded) == {gguf_name, "Modelfile", "README.md", "recipe.yaml", "provenance.json"}
    assert api.uploaded[gguf_name] == (out_dir / gguf_name).read_bytes()
    assert api.uploaded["README.md"] == (out_dir / "README.gguf.md").read_bytes()
    card = api.uploaded["README.md"].decode()
    front = _front(api.uploaded["README.md"])
    assert front["library_name"] == "gguf" and "gguf" in front["tags"] and front["pipeline_tag"] == "text-generation"
    assert f"llama-cli -m {gguf_name}" in card and "ollama create" in card and "## Formats" in card
    assert api.calls[-1][2]["delete_patterns"] == ["*.gguf"]
    dry = run_push(monkeypatch, FakeApi(), out_dir, "me/edited-GGUF", "--format", "gguf", "--dry-run")
    assert "README.md" in dry.output and "(from README.gguf.md)" in dry.output


def test_adapter_repo_has_the_adapter_at_its_top(monkeypatch, out_dir):
    api = RecordingApi()
    result = run_push(monkeypatch, api, out_dir, "me/edited-lora", "--format", "lora")
    assert result.exit_code == 0, result.output
    assert set(api.uploaded) == {"adapter_config.json", "adapter_model.safetensors", "README.md", "recipe.yaml"}
    for name in ("adapter_config.json", "adapter_model.safetensors", "README.md"):
        assert api.uploaded[name] == (out_dir / "adapter" / name).read_bytes()
    assert _front(api.uploaded["README.md"])["library_name"] == "peft"
    assert json.loads(api.uploaded["adapter_config.json"])["peft_type"] == "LORA"


def test_a_format_the_output_lacks_is_refused_before_any_call(monkeypatch, out_dir, tmp_path):
    import shutil

    from click.testing import CliRunner

    only = tmp_path / "only"
    base = write_tiny_gguf(tmp_path / "tiny.gguf", "llama")
    (tmp_path / "r.yaml").write_text(f"base_model: {base}\nedits:\n{EDITS}")
    monkeypatch.setenv("TH_EDIT_CACHE", str(tmp_path / "cache"))
    assert CliRunner().invoke(main, ["--quiet", "apply", str(tmp_path / "r.yaml"), "--out", str(only), "--no-bench",
                                     "--format", "gguf"]).exit_code == 0
    api = RecordingApi()
    for fmt in ("lora", "safetensors"):
        result = run_push(monkeypatch, api, only, "me/x", "--format", fmt)
        assert result.exit_code == 2 and f"holds no {fmt} output" in result.output and api.calls == []
    result = run_push(monkeypatch, api, only, "me/x-GGUF")  # a GGUF-only output pushes its GGUF by default
    assert result.exit_code == 0, result.output
    assert set(api.uploaded) == {p.name for p in only.glob("*.gguf")} | {"Modelfile", "README.md", "recipe.yaml",
                                                                         "provenance.json"}
    assert _front(api.uploaded["README.md"])["library_name"] == "gguf"
    shutil.rmtree(only)


def test_verify_checks_the_gguf_card_like_every_file(out_dir, tmp_path):
    import shutil

    from click.testing import CliRunner

    copy = tmp_path / "copy"
    shutil.copytree(out_dir, copy)
    assert CliRunner().invoke(main, ["verify", str(copy)]).exit_code == 0
    (copy / "README.gguf.md").write_text((copy / "README.gguf.md").read_text() + "\nchanged\n")
    result = CliRunner().invoke(main, ["verify", str(copy)])
    assert result.exit_code != 0 and "README.gguf.md" in result.output


@pytest.mark.parametrize("formats,library,relation", [(("safetensors",), "transformers", "finetune"),
                                                      (("gguf",), "gguf", "finetune")])
def test_card_front_matter_per_format(tmp_path, formats, library, relation):
    recipe = "base_model: b\nedits:\n  - {layer: 0, head: 0, circuit: ov, components: [0], scale: 2}\n"
    base = ResolvedModel("alias", "alias", tmp_path, hub_id="org/base")
    front = yaml.safe_load(model_card("edited", parse_recipe(recipe), recipe, base, [], "float32",
                                      formats=formats).split("---")[1])
    assert front["base_model"] == "org/base" and front["base_model_relation"] == relation
    assert front["library_name"] == library and front["pipeline_tag"] == "text-generation"
    assert ("gguf" in front["tags"]) == (library == "gguf")
