"""Exported config and tokenizer files read the same under transformers 5.x and 4.x (tiny models).

The 4.x side runs in the `.venv-tf4` virtual environment (`make tf4`); those tests skip, saying
so, when it is absent. The pure-function tests run everywhere.
"""

import json

import pytest
from click.testing import CliRunner
from test_apply import write_recipe
from tf4 import probe, probe_here, tf4_python
from tiny import FAMILIES, tiny_model
from transformers import AutoConfig

from th_edit.cli import main
from th_edit.compat import portable_config, portable_tokenizer_config, shortest_float32

# Non-default RoPE everywhere: with transformers' defaults a config that 4.x misreads would still
# load right by luck (that is how the SmolLM2 bug hid: only its rope_theta differs from 10000).
ROPE = {
    "gpt_neox": {"rope_type": "linear", "factor": 2.0, "rope_theta": 12345.0, "partial_rotary_factor": 0.5},
    "llama": {"rope_type": "linear", "factor": 2.0, "rope_theta": 12345.0},
    "mistral": {"rope_type": "default", "rope_theta": 23456.0},
    "qwen2": {"rope_type": "linear", "factor": 3.0, "rope_theta": 34567.0},
    "qwen3": {"rope_type": "default", "rope_theta": 45678.0},
    "mixtral": {"rope_type": "default", "rope_theta": 56789.0},
    "qwen2_moe": {"rope_type": "linear", "factor": 2.0, "rope_theta": 67890.0},
    "qwen3_moe": {"rope_type": "default", "rope_theta": 78901.0},
    "olmoe": {"rope_type": "linear", "factor": 2.0, "rope_theta": 89012.0},
    "smollm3": {"rope_type": "default", "rope_theta": 11111.0},
    "granite": {"rope_type": "linear", "factor": 2.0, "rope_theta": 22222.0},
    "phi3": {"rope_type": "longrope", "short_factor": [1.0, 1.1, 1.2, 1.3, 1.4, 1.5],
             "long_factor": [2.0, 2.5, 3.0, 3.5, 4.0, 4.5], "original_max_position_embeddings": 64, "rope_theta": 33333.0,
             "partial_rotary_factor": 1.0},
    "gemma2": {"rope_type": "default", "rope_theta": 44444.0},
    "olmo": {"rope_type": "linear", "factor": 2.0, "rope_theta": 55555.0},
    "olmo2": {"rope_type": "default", "rope_theta": 66666.0},
    "cohere": {"rope_type": "default", "rope_theta": 77777.0},
    "cohere2": {"rope_type": "default", "rope_theta": 88888.0},
    "gemma3_text": {"full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 55555.0},
                    "sliding_attention": {"rope_type": "default", "rope_theta": 777.0}},
}
# Phi-1/2, StableLM, Falcon (GPT-J's rotary_dim and OPT's learned positions are no rope_parameters)
ROPE |= {
    "phi": {"rope_type": "linear", "factor": 2.0, "rope_theta": 12345.0, "partial_rotary_factor": 0.5},
    "stablelm": {"rope_type": "default", "rope_theta": 23456.0, "partial_rotary_factor": 0.5},
    "falcon": {"rope_type": "linear", "factor": 3.0, "rope_theta": 34567.0},
}
OVERRIDES = {family: {"rope_parameters": rope} for family, rope in ROPE.items()}
OVERRIDES["gemma3_text"]["layer_types"] = ["sliding_attention", "full_attention", "sliding_attention"]
IDS = [[1, 5, 9, 33, 2, 7, 8, 40, 50, 60, 70, 80, 90, 3, 4], [17, 3, 99, 42]]
EDIT = [{"layer": 1, "head": 1, "circuit": "ov", "components": [0], "scale": 2.0}]

# What the GGUF reader and transformers 5 wrote for the offline SmolLM2 (abridged).
SMOLLM2_CONFIG = {
    "_model_name_or_path": "Smollm2 135M 8k Lc100K Mix1 Ep2", "model_type": "llama", "dtype": "float32",
    "rms_norm_eps": 9.999999747378752e-06, "rope_parameters": {"rope_theta": 100000.0, "rope_type": "default"},
    "initializer_range": 0.02, "num_hidden_layers": 30,
}
GEMMA3_CONFIG = {
    "_model_name_or_path": "Gemma 3 270m", "model_type": "gemma3_text", "num_hidden_layers": 12,
    "rms_norm_eps": 9.999999974752427e-07, "layer_types": ["sliding_attention"] * 5 + ["full_attention"]
    + ["sliding_attention"] * 5 + ["full_attention"],
    "rope_parameters": {"full_attention": {"rope_theta": 1000000.0, "rope_type": "default"},
                        "sliding_attention": {"rope_theta": 10000.0, "rope_type": "default"}},
}


def test_smollm2_config_gets_legacy_rope_and_loses_gguf_leftovers():
    config = portable_config(SMOLLM2_CONFIG)
    assert "_model_name_or_path" not in config and "_name_or_path" not in config
    assert config["rms_norm_eps"] == 1e-05
    assert config["rope_theta"] == 100000.0 and config["rope_scaling"] is None
    assert config["rope_parameters"] == SMOLLM2_CONFIG["rope_parameters"]  # 5.x's own keys untouched
    assert config["torch_dtype"] == config["dtype"] == "float32"
    assert config["initializer_range"] == 0.02
    assert "rope_theta" not in SMOLLM2_CONFIG  # a new dict


def test_gemma3_config_gets_global_and_local_rope_and_window_pattern():
    config = portable_config(GEMMA3_CONFIG)
    assert (config["rope_theta"], config["rope_local_base_freq"], config["rope_scaling"]) == (1000000.0, 10000.0, None)
    assert config["sliding_window_pattern"] == 6
    assert config["rms_norm_eps"] == 1e-06
    irregular = portable_config({**GEMMA3_CONFIG, "layer_types": ["full_attention"] + ["sliding_attention"] * 11})
    assert "sliding_window_pattern" not in irregular  # no 4.50-style pattern describes it


@pytest.mark.parametrize("value, expected", [
    (9.999999747378752e-06, 1e-05), (9.999999974752427e-07, 1e-06), (0.10000000149011612, 0.1),
    (1e-05, 1e-05), (0.02, 0.02), (100000.0, 100000.0), (1 / 3, 1 / 3), (1e300, 1e300), (7, 7), ("x", "x"),
])
def test_shortest_float32(value, expected):
    result = shortest_float32(value)
    assert result == expected and type(result) is type(expected)


def test_tokenizer_config_names_a_class_both_versions_know():
    written = {"backend": "tokenizers", "tokenizer_class": "TokenizersBackend", "is_local": True,
               "local_files_only": False, "bos_token": "<|im_start|>"}
    portable = portable_tokenizer_config(written)
    assert portable == {"backend": "tokenizers", "tokenizer_class": "PreTrainedTokenizerFast",
                        "model_input_names": ["input_ids", "attention_mask"], "bos_token": "<|im_start|>"}
    assert portable_tokenizer_config({"tokenizer_class": "GemmaTokenizer"}) == {"tokenizer_class": "GemmaTokenizer"}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Tiny checkpoints with non-default RoPE, exported by `apply` (one edit each)."""
    root = tmp_path_factory.mktemp("compat")
    outs = {}
    for family in FAMILIES:
        base = root / family
        tiny_model(family, **OVERRIDES.get(family, {})).save_pretrained(base)
        recipe = write_recipe(root / f"{family}.yaml", base, edits=EDIT)
        outs[family] = root / f"{family}-edited"
        result = CliRunner().invoke(main, ["--quiet", "apply", str(recipe), "--out", str(outs[family])])
        assert result.exit_code == 0, result.output
    return outs


@pytest.mark.parametrize("family", sorted(ROPE))
def test_transformers5_reads_the_same_rope(family, exported):
    """The legacy keys beside rope_parameters do not change what 5.x reads."""
    read = dict(AutoConfig.from_pretrained(exported[family]).rope_parameters)
    if "type" in read and read["type"] == read.get("rope_type"):  # Phi-3's 4.x spelling, read as the same type
        del read["type"]
    assert read == tiny_model(family, **OVERRIDES[family]).config.rope_parameters


def test_transformers4_computes_what_transformers5_does(exported, tmp_path):
    dirs = [str(exported[family]) for family in FAMILIES]
    spec = {"dirs": dirs, "ids": IDS}
    old, new = probe(tf4_python(), spec, tmp_path, "tf4"), probe_here(spec)
    for family, path in zip(FAMILIES, dirs):
        assert old[path]["version"].startswith("4.") and new[path]["version"].startswith("5.")
        assert not any(old[path]["loading_info"].values()), (family, old[path]["loading_info"])
        for before, after in zip(new[path]["logits"], old[path]["logits"]):
            assert (before - after).abs().max() <= 1e-4, family


def test_exported_files_are_strict_json(exported):
    for path in exported["llama"].glob("*.json"):
        json.loads(path.read_text(), parse_constant=lambda name: pytest.fail(f"{path.name}: bare {name}"))
    config = json.loads((exported["llama"] / "config.json").read_text())
    assert config["rope_theta"] == 12345.0 and config["rope_scaling"] == {"rope_type": "linear", "factor": 2.0}
    assert "_name_or_path" not in config


def test_llama3_rope_scaling_reads_the_same_in_transformers4(tmp_path):
    """Llama 3.x checkpoints scale RoPE with rope_type llama3: exported, 4.x computes what 5.x does."""
    rope = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8, "rope_theta": 500000.0}
    tiny_model("llama", rope_parameters=rope).save_pretrained(tmp_path / "m")
    recipe = write_recipe(tmp_path / "r.yaml", tmp_path / "m", edits=EDIT)
    result = CliRunner().invoke(main, ["--quiet", "apply", str(recipe), "--out", str(tmp_path / "e")])
    assert result.exit_code == 0, result.output
    assert AutoConfig.from_pretrained(tmp_path / "e").rope_parameters == rope
    spec = {"dirs": [str(tmp_path / "e")], "ids": IDS}
    old, new = probe(tf4_python(), spec, tmp_path, "tf4"), probe_here(spec)
    path = str(tmp_path / "e")
    assert not any(old[path]["loading_info"].values())
    for before, after in zip(new[path]["logits"], old[path]["logits"]):
        assert (before - after).abs().max() <= 1e-4
