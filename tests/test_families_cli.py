"""`channels`, `search`, `subspace` and `bench --compare` end to end on every family's tiny checkpoint."""

import json

import pytest
import yaml
from click.testing import CliRunner
from tiny import FAMILIES, tiny_checkpoint, word_tokenizer

from th_edit.cli import main


def run(*args):
    result = CliRunner().invoke(main, ["--quiet", *map(str, args)])
    assert result.exit_code == 0, result.output
    return result


def keep_the_saved_tokenizer(monkeypatch, family: str) -> None:
    """transformers 5 forces its own tokenizer class on some model types whatever tokenizer_config.json says
    (qwen2: Qwen2Tokenizer, which rebuilds the test's word-level tokenizer as a byte-level BPE that splits
    the words). Real checkpoints of those families ship that tokenizer; the tiny one here is the word
    tokenizer, so for this test transformers takes the saved tokenizer.json as it stands."""
    from transformers.models.auto import tokenization_auto

    forced = getattr(tokenization_auto, "MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS", None)
    if forced is not None and family in forced:
        monkeypatch.setattr(tokenization_auto, "MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS", forced - {family})


@pytest.mark.parametrize("family", FAMILIES)
def test_commands_run_end_to_end(family, tmp_path, monkeypatch):
    base = tiny_checkpoint(tmp_path / "m", family, seed=2)
    keep_the_saved_tokenizer(monkeypatch, family)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    if tokenizer.get_vocab() != word_tokenizer().get_vocab() or tokenizer("the sock").input_ids != \
            word_tokenizer()("the sock").input_ids:
        # a transformers whose forced tokenizer classes keep_the_saved_tokenizer does not know how to lift
        pytest.skip(f"transformers loads the test's word tokenizer as {type(tokenizer).__name__} for {family}")
    run("channels", base, "--no-data-check", "--n-items", "3", "--n-prompts", "4", "--top", "2", "--out", tmp_path / "ch")
    assert json.loads((tmp_path / "ch" / "channels.json").read_text())["roles"]

    channels = tmp_path / "pairs.json"
    channels.write_text(json.dumps({"channels": {"inhibition": []}, "pairs": [
        {"sender": "1.0", "receiver": "2.1", "channel": "inhibition", "z": [3.0, 1.0, 0.5]}]}))
    found = tmp_path / "search" / "recipe.yaml"
    run("search", base, "--channels", channels, "--n-items", "2-3", "--trials", "2", "--tune-prompts", "4",
        "--held-out-prompts", "4", "--kl-budget", "1", "--max-ioi-drop", "100", "--out", found)
    assert len(json.loads(found.with_suffix(".search.json").read_text())["trials"]) == 2

    run("subspace", base, "--n-items", "2-3", "--n-prompts", "4", "--grid", "2", "--traverse-prompts", "2",
        "--components", "1.0:0,1.1:0,1.2:1", "--movers", "2.3", "--out", tmp_path / "sub")

    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"base_model": str(base), "seed": 0, "edits": [
        {"layer": 1, "head": 1, "circuit": "ov", "components": [0], "scale": 2.0},
        {"layer": 2, "head": 0, "circuit": "qk", "components": [0], "scale": 0.5}]}))
    result = run("bench", base, "--compare", recipe, "--n-items", "2", "--n-prompts", "3", "--kl-texts", "2", "--json")
    report = json.loads(result.stdout)
    assert report["side_effects"]["neutral_kl"]["mean_nats_per_token"] > 0  # the edit changed the model
    if found.exists():  # the search chose an edit: it applies as a recipe
        run("apply", found, "--no-bench", "--out", tmp_path / "edited")
