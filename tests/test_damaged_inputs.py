"""Damaged or inconsistent inputs are one `error:` line with exit code 2, and nothing is written:
weights cut short, NaN/Inf weights, a damaged shard index or side file, configs that do not match
their weights or make no sense, deeply nested JSON or YAML, absurd counts; and JSON output is
strict (no bare NaN)."""

import json
import math
import shutil
import struct
import time
from pathlib import Path

import pytest
import torch
from cli_helpers import one_line_error, run_cli
from click.testing import CliRunner
from test_apply import write_recipe
from tiny import tiny_model

from th_edit import limits, models, strict_json
from th_edit.checkpoint import read_header
from th_edit.cli import main
from th_edit.commands.options import parse_n_items
from th_edit.errors import UserError
from th_edit.tasks.prompts import read_jsonl

EDIT = [{"layer": 1, "head": 1, "circuit": "ov", "components": [0], "scale": 2.0}]
ATTENTION = "model.layers.1.self_attn.v_proj.weight"  # read by inspect --svd and by the edit
UNTOUCHED = "model.layers.2.mlp.up_proj.weight"  # only copied by apply


run = run_cli  # `th-edit --quiet ARGS`; errors are held to one line on stderr (stdout may hold what was computed
# before: apply's edit table comes before the untouched tensors are read, which happens while they are copied)


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("llama") / "base"
    tiny_model("llama").save_pretrained(path)
    return path


@pytest.fixture
def copy(llama, tmp_path):
    """A private copy of the tiny base, to damage."""
    def make(name: str = "damaged") -> Path:
        target = tmp_path / name
        shutil.copytree(llama, target)
        return target
    return make


def poison(directory: Path, tensor: str, value: float = math.nan, index: int = 5) -> None:
    """Overwrite one float32 element of a stored tensor in place."""
    entries, _ = read_header(directory / "model.safetensors")
    with open(directory / "model.safetensors", "r+b") as f:
        f.seek(entries[tensor].start + 4 * index)
        f.write(struct.pack("<f", value))


def edit_config(directory: Path, **changes) -> None:
    config = json.loads((directory / "config.json").read_text())
    config.update(changes)
    (directory / "config.json").write_text(json.dumps(config))


# ---- weights cut short or with impossible offsets ---------------------------------------------


@pytest.mark.parametrize("svd", [False, True])
def test_truncated_weights(copy, svd):
    model = copy()
    data = (model / "model.safetensors").read_bytes()
    (model / "model.safetensors").write_bytes(data[: len(data) * 2 // 3])
    one_line_error(run("inspect", model, *(["--svd"] if svd else [])), "model.safetensors is cut short", "ends at byte")


def test_header_offsets_that_do_not_fit_the_shape(tmp_path, llama):
    model = tmp_path / "m"
    model.mkdir()
    shutil.copy(llama / "config.json", model)
    header = json.dumps({"w": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 8]}}).encode()
    (model / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + bytes(8))
    one_line_error(run("inspect", model), "tensor w's byte range 0..8 does not fit its shape [4, 4]")


def shift_tensors_from(directory: Path, index: int, shift: int) -> str:
    """Move the stored tensors from the `index`-th (in offset order) on by `shift` bytes: +4 leaves a
    4-byte gap before it, -4 makes it overlap the previous tensor's last 4 bytes. The file stays
    exactly as long as its last tensor (only the layout is wrong). Returns the moved tensor's name."""
    path = directory / "model.safetensors"
    data = path.read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + header_len])
    names = sorted((n for n in header if n != "__metadata__"), key=lambda n: header[n]["data_offsets"])
    cut = header[names[index]]["data_offsets"][0]
    for name in names[index:]:
        header[name]["data_offsets"] = [o + shift for o in header[name]["data_offsets"]]
    body = data[8 + header_len:]
    body = body[:cut] + bytes(shift) + body[cut:] if shift > 0 else body[:cut + shift] + body[cut:]
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + body)
    return names[index]


def _verify_against(base: Path, tmp_path: Path):
    """verify --base with a damaged base: the checkpoint was written from a clean copy first."""
    clean = tmp_path / "clean"
    shutil.copytree(base, clean)
    shutil.copy(clean / "model.safetensors.orig", clean / "model.safetensors")
    recipe = write_recipe(tmp_path / "v.yaml", clean, edits=EDIT)
    assert run("apply", recipe, "--out", tmp_path / "checked").exit_code == 0
    return run("verify", tmp_path / "checked", "--base", base)


LAYOUT_COMMANDS = {
    "inspect": lambda model, tmp_path: run("inspect", model),
    "inspect --svd": lambda model, tmp_path: run("inspect", model, "--svd"),
    "apply": lambda model, tmp_path: run("apply", write_recipe(tmp_path / "r.yaml", model, edits=EDIT), "--out",
                                         tmp_path / "out"),
    "bench": lambda model, tmp_path: run("bench", model, "--n-items", "3", "--n-prompts", "2", "--out",
                                         tmp_path / "out"),
    "verify --base": _verify_against,
}


@pytest.mark.parametrize("command", sorted(LAYOUT_COMMANDS))
@pytest.mark.parametrize("shift, fragment", [(4, "a gap of 4 bytes after tensor"),
                                             (-4, "an overlap of 4 bytes after tensor")])
def test_tensors_with_a_gap_or_an_overlap_between_them(copy, tmp_path, command, shift, fragment):
    """Every command reads the headers first: a hole or shared bytes between two tensors' data is
    one line naming the file and the tensor, before any work and with nothing written."""
    model = copy()
    shutil.copy(model / "model.safetensors", model / "model.safetensors.orig")
    moved = shift_tensors_from(model, 3, shift)
    before = sorted(p.name for p in tmp_path.iterdir())
    one_line_error(LAYOUT_COMMANDS[command](model, tmp_path), f"{model / 'model.safetensors'} is damaged", fragment,
                   f"(tensor {moved} starts at data byte")
    written = sorted(p.name for p in tmp_path.iterdir())
    assert "out" not in written and set(written) - set(before) <= {"r.yaml", "v.yaml", "clean", "checked"}


def test_bytes_after_the_last_tensor(copy):
    model = copy()
    with open(model / "model.safetensors", "ab") as f:
        f.write(bytes(12))
    one_line_error(run("inspect", model), "is damaged: 12 bytes after the last tensor's data")


def test_a_clean_header_reads_as_the_safetensors_library_reads_it(llama):
    """The layout checks accept what safetensors itself writes (tensors of every size, zero included)."""
    from safetensors.torch import save_file

    entries, _ = read_header(llama / "model.safetensors")
    assert entries
    path = llama.parent / "with-empty.safetensors"
    save_file({"a": torch.zeros(0), "b": torch.ones(3), "c": torch.zeros(0, 4), "d": torch.ones(2, 2)}, path)
    assert sorted(read_header(path)[0]) == ["a", "b", "c", "d"]


# ---- NaN / Inf in the base weights --------------------------------------------------------------


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_weights_in_inspect_svd(copy, value):
    model = copy()
    poison(model, ATTENTION, value)
    one_line_error(run("inspect", model, "--svd"), f"tensor {ATTENTION} contains NaN or infinite values")


@pytest.mark.parametrize("tensor", [ATTENTION, UNTOUCHED])
def test_non_finite_weights_in_apply_write_nothing(copy, tmp_path, tensor):
    model = copy()
    poison(model, tensor)
    recipe = write_recipe(tmp_path / "r.yaml", model, edits=EDIT)
    out = tmp_path / "out"
    one_line_error(run("apply", recipe, "--out", out), f"tensor {tensor} contains NaN or infinite values")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["damaged", "r.yaml"]  # no output, no staging leftovers


def test_non_finite_weights_in_verify(copy, tmp_path):
    model = copy()
    recipe = write_recipe(tmp_path / "r.yaml", model, edits=EDIT)
    out = tmp_path / "out"
    assert run("apply", recipe, "--out", out).exit_code == 0
    poison(model, UNTOUCHED, math.inf)  # the base is damaged after the fact
    one_line_error(run("verify", out), f"tensor {UNTOUCHED} contains NaN or infinite values")


def test_non_finite_weights_when_loading_a_model(copy):
    """bench loads with transformers: the same refusal, for any parameter."""
    model = copy()
    poison(model, UNTOUCHED)
    with pytest.raises(UserError, match=f"tensor {UNTOUCHED} contains NaN"):
        models.load_model(models.resolve(str(model)))


# ---- configs that do not match the weights ------------------------------------------------------


@pytest.mark.parametrize("layers, fragment", [(4, "9 missing tensors (model.layers.3."),
                                              (2, "9 unexpected tensors (model.layers.2.")])
def test_layer_count_that_does_not_match_the_weights(copy, tmp_path, layers, fragment):
    model = copy()
    recipe = write_recipe(tmp_path / "r.yaml", model, edits=EDIT)
    out = tmp_path / "out"
    assert run("apply", recipe, "--out", out).exit_code == 0
    edit_config(model, num_hidden_layers=layers)
    for args in (["inspect", model], ["apply", recipe, "--out", tmp_path / "out2"], ["verify", out]):
        one_line_error(run(*args), "the weights do not match config.json", fragment)
    with pytest.raises(UserError, match="the weights do not match config.json: " + fragment.split(" (")[0]):
        models.load_model(models.resolve(str(model)))  # what bench loads
    assert not (tmp_path / "out2").exists()


def test_shape_that_does_not_match_the_weights(copy):
    model = copy()
    edit_config(model, intermediate_size=100)
    one_line_error(run("inspect", model), "9 misshapen tensors, e.g. model.layers.0.mlp.down_proj.weight has shape "
                                          "[48, 96], config.json implies [48, 100]")
    with pytest.raises(UserError, match="misshapen tensors"):
        models.load_model(models.resolve(str(model)))


@pytest.mark.parametrize("changes, fragment", [
    ({"num_attention_heads": 7}, "not a multiple of the number of attention heads (7)"),
    ({"num_key_value_heads": 4}, "num_attention_heads 6 does not split into num_key_value_heads 4"),
    ({"num_hidden_layers": 0}, "num_hidden_layers must be a positive integer"),
    ({"num_attention_heads": 0}, "num_attention_heads must be a positive integer, not 0"),
    ({"hidden_size": "48"}, 'hidden_size must be a positive integer, not "48"'),
    ({"num_attention_heads": None}, "num_attention_heads must be a positive integer, not null"),
    ({"num_attention_heads": 6.0}, "num_attention_heads must be a positive integer, not 6.0"),
    ({"num_key_value_heads": True}, "num_key_value_heads must be a positive integer, not true"),
    ({"intermediate_size": -96}, "intermediate_size must be a positive integer, not -96"),
    ({"num_hidden_layers": 1e11}, "num_hidden_layers must be a positive integer, not 100000000000.0"),
    # Checked before transformers reads the config: it builds a per-layer list (MemoryError in
    # inspect; apply grew to 20 GB before this check existed).
    ({"num_hidden_layers": 10**11}, "num_hidden_layers must be at most 100,000, not 100000000000"),
    ({"vocab_size": 10**30}, "vocab_size must be at most 10,000,000, not 100000000000000000000000…"),
])
def test_configs_that_make_no_sense(copy, tmp_path, changes, fragment):
    model = copy()
    recipe = write_recipe(tmp_path / "r.yaml", model, edits=EDIT)
    edit_config(model, **changes)
    one_line_error(run("inspect", model), "config.json", fragment)
    one_line_error(run("apply", recipe, "--out", tmp_path / "out"), "config.json", fragment)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("family, changes, fragment", [
    ("gpt2", {"n_head": 0}, "n_head must be a positive integer, not 0"),
    ("gpt2", {"num_hidden_layers": 10**11}, "num_hidden_layers must be at most 100,000"),  # transformers' alias of n_layer
    ("gpt2", {"n_inner": 1.5}, "n_inner must be a positive integer, not 1.5"),
    ("gemma3_text", {"sliding_window_pattern": 0}, "sliding_window_pattern must be a positive integer, not 0"),
])
def test_family_spellings_of_sizes_are_checked_too(tmp_path, family, changes, fragment):
    tiny_model(family).save_pretrained(tmp_path)
    edit_config(tmp_path, **changes)
    one_line_error(run("inspect", tmp_path), "config.json", fragment)


@pytest.mark.parametrize("config_text, fragment", [
    ('{"model_type": "llama", ', "config.json"),
    (json.dumps({"model_type": "customthing", "auto_map": {"AutoConfig": "c.C", "AutoModelForCausalLM": "m.M"}}),
     "needs its own code to load"),
])
def test_bench_refuses_a_broken_or_code_requiring_config_in_one_line(copy, config_text, fragment):
    model = copy()
    (model / "config.json").write_text(config_text)
    one_line_error(run("bench", model), fragment)


# ---- a damaged shard index -----------------------------------------------------------------------

INDEX = "model.safetensors.index.json"
DEEP = "[" * 20000 + "]" * 20000  # beyond what Python's json and yaml parsers recurse into
NESTED = '{"a": ' * 200 + "1" + "}" * 200  # parses, but deeper than any file th-edit reads (readers.MAX_NESTING)


@pytest.fixture(scope="module")
def sharded(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("sharded") / "base"
    tiny_model("llama").save_pretrained(path, max_shard_size="100KB")
    assert len(list(path.glob("*.safetensors"))) > 1
    return path


def _set_shard(shard: object):
    def damage(model: Path, record: dict) -> str:
        record["weight_map"]["lm_head.weight"] = shard
        return json.dumps(record)
    return damage


def _remove_a_shard(model: Path, record: dict) -> str:
    (model / record["weight_map"]["lm_head.weight"]).unlink()
    return json.dumps(record)


@pytest.mark.parametrize("damage, fragment", [
    (lambda model, record: '{"weight_map": ', "invalid JSON (Expecting value at line 1, column 16)"),
    (lambda model, record: DEEP, "invalid JSON (nested too deeply)"),
    (lambda model, record: b"\xff\xfe{}", "not UTF-8 text (byte 0xff at offset 0)"),
    (lambda model, record: json.dumps({"metadata": record["metadata"]}), "has no 'weight_map' object"),
    (lambda model, record: json.dumps({"weight_map": list(record["weight_map"])}), "has no 'weight_map' object"),
    (_set_shard("../x.safetensors"), "tensor lm_head.weight's shard \"../x.safetensors\" is not a file name"),
    (_set_shard(5), "tensor lm_head.weight's shard 5 is not a file name"),
    (_remove_a_shard, "which is missing from"),
])
def test_a_damaged_shard_index_is_one_line_naming_it(sharded, tmp_path, damage, fragment):
    model = tmp_path / "m"
    shutil.copytree(sharded, model)
    shutil.copy(next(model.glob("*.safetensors")), tmp_path / "x.safetensors")  # ../x.safetensors exists, and stays unread
    text = damage(model, json.loads((model / INDEX).read_text()))
    (model / INDEX).write_bytes(text if isinstance(text, bytes) else text.encode())
    recipe = write_recipe(tmp_path / "r.yaml", model, edits=EDIT)
    one_line_error(run("inspect", model), f"{model / INDEX}", fragment)
    one_line_error(run("apply", recipe, "--out", tmp_path / "out"), f"{model / INDEX}", fragment)
    assert not (tmp_path / "out").exists()


# ---- side files: each must parse before apply does any work ---------------------------------------


@pytest.mark.parametrize("name, content, fragment", [
    ("config.json", DEEP, "invalid JSON (nested too deeply)"),
    ("generation_config.json", DEEP, "invalid JSON (nested too deeply)"),
    ("tokenizer_config.json", DEEP, "invalid JSON (nested too deeply)"),
    ("tokenizer_config.json", NESTED, "invalid JSON (nested too deeply)"),
    ("tokenizer.json", DEEP, "invalid JSON (nested too deeply)"),
    ("tokenizer.json", '{"version": "1.0", ', "invalid JSON"),
    ("generation_config.json", "{bad", "invalid JSON"),
    ("chat_template.json", '{"chat_template": ', "invalid JSON"),
    ("special_tokens_map.json", "[]", "expected a JSON object"),
    ("chat_template.jinja", b"{{ bos_token }}\xff", "not UTF-8 text (byte 0xff at offset 15)"),
])
def test_apply_refuses_a_damaged_side_file_before_any_work(copy, tmp_path, name, content, fragment):
    """apply used to copy these into the output (exit 0), or fail with a RecursionError traceback."""
    model = copy()
    (model / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    recipe = write_recipe(tmp_path / "r.yaml", model, edits=EDIT)
    one_line_error(run("apply", recipe, "--out", tmp_path / "out"), f"{model / name}", fragment)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["damaged", "r.yaml"]  # no output, no staging leftovers
    one_line_error(run("inspect", model), f"{model / name}", fragment)  # the same check for every command


# ---- deeply nested user files: one reader for every JSON and YAML file ---------------------------


@pytest.mark.parametrize("text", [DEEP, NESTED.replace('"a": ', "a: ")])
def test_a_deeply_nested_recipe(tmp_path, text):
    recipe = tmp_path / "deep.yaml"
    recipe.write_text(text + "\n")
    one_line_error(run("apply", recipe, "--out", tmp_path / "out"), f"{recipe}: malformed YAML: nested too deeply")


@pytest.mark.parametrize("old, new", [("layer: 1", "layer: " + "9" * 5000), ("seed: 0", "seed: " + "1" * 5000)])
def test_an_integer_of_5000_digits_in_a_recipe(llama, tmp_path, old, new):
    """Python refuses to convert integers of more than 4300 digits: that was a ValueError traceback."""
    recipe = write_recipe(tmp_path / "r.yaml", llama, edits=EDIT)
    recipe.write_text(recipe.read_text().replace(old, new, 1))
    line = one_line_error(run("apply", recipe, "--out", tmp_path / "out"), f"{recipe}: malformed YAML", "5000 digits")
    assert "set_int_max_str_digits" not in line and not (tmp_path / "out").exists()


def test_a_long_integer_in_a_recipe_is_shown_cut_short(llama, tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", llama, edits=EDIT)
    recipe.write_text(recipe.read_text().replace("scale: 2.0", "scale: " + "9" * 4000, 1))
    line = one_line_error(run("apply", recipe, "--out", tmp_path / "out"), "edits[0].scale", "9" * 20 + "…")
    assert len(line) < 300 and not (tmp_path / "out").exists()


def test_a_yaml_alias_that_contains_itself_is_infinitely_deep(tmp_path):
    recipe = tmp_path / "loop.yaml"
    recipe.write_text("base_model: m\nedits: &e [*e]\n")
    one_line_error(run("apply", recipe), f"{recipe}: malformed YAML: nested too deeply")


@pytest.mark.parametrize("text", [DEEP, NESTED])
def test_a_deeply_nested_provenance_in_verify_and_push(llama, tmp_path, text):
    recipe = write_recipe(tmp_path / "r.yaml", llama, edits=EDIT)
    out = tmp_path / "out"
    assert run("apply", recipe, "--out", out, "--no-bench").exit_code == 0
    (out / "provenance.json").write_text(text)
    for args in (["verify", out], ["push", out, "me/repo", "--dry-run"]):
        one_line_error(run(*args), f"{out / 'provenance.json'}: invalid JSON (nested too deeply)")


@pytest.mark.parametrize("command", ["search", "subspace"])
@pytest.mark.parametrize("text", [DEEP, NESTED])
def test_a_deeply_nested_channels_file(llama, tmp_path, command, text):
    channels = tmp_path / "channels.json"
    channels.write_text(text)
    out = ["--out", tmp_path / "o" / "recipe.yaml"] if command == "search" else ["--out", tmp_path / "o"]
    one_line_error(run(command, llama, "--channels", channels, *out), f"{channels}: invalid JSON (nested too deeply)")
    assert not (tmp_path / "o").exists()


# ---- prompt files and options -------------------------------------------------------------------


@pytest.mark.parametrize("line", ["[" * 20000 + "]" * 20000,
                                  '{"task": "laundry", "extra": ' + "[" * 20000 + "]" * 20000 + "}"])
def test_deeply_nested_jsonl(tmp_path, line):
    path = tmp_path / "p.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(UserError, match="line 1: invalid JSON \\(nested too deeply\\)"):
        read_jsonl(path)


@pytest.mark.parametrize("text, fragment", [
    ("2-99999999999999999999", "got 99999999999999999999"), ("2-300000000", "got 300000000"),
    ("2-" + "9" * 5000, "got 99999999999999999999…"), ("3," + "0" * 5000 + "1", "got 1"),
])
def test_n_items_bounds_are_checked_before_any_range_is_built(text, fragment):
    started = time.monotonic()
    with pytest.raises(UserError, match="--n-items: N must be between 2 and 10") as caught:
        parse_n_items(text)
    assert fragment in str(caught.value) and time.monotonic() - started < 1
    assert parse_n_items("3," + "0" * 5000 + "7") == [3, 7]


COUNT_OPTIONS = [
    ("bench", "--n-prompts", limits.MAX_PROMPTS), ("bench", "--kl-texts", limits.MAX_KL_TEXTS),
    ("bench", "--batch-size", limits.MAX_BATCH_SIZE),
    ("channels", "--n-prompts", limits.MAX_PROMPTS), ("channels", "--check-prompts", limits.MAX_PROMPTS),
    ("channels", "--top", limits.MAX_HEADS),
    ("search", "--trials", limits.MAX_TRIALS), ("search", "--tune-prompts", limits.MAX_PROMPTS),
    ("search", "--held-out-prompts", limits.MAX_PROMPTS), ("search", "--heads", limits.MAX_HEADS),
    ("subspace", "--n-prompts", limits.MAX_PROMPTS), ("subspace", "--traverse-prompts", limits.MAX_PROMPTS),
    ("subspace", "--grid", limits.MAX_GRID), ("subspace", "--dims", limits.MAX_DIMS),
    ("subspace", "--batch-size", limits.MAX_BATCH_SIZE), ("subspace", "--traverse-n", 10),
    ("inspect", "--top", limits.MAX_SINGULAR_VALUES),
]


@pytest.mark.parametrize("command, option, maximum", COUNT_OPTIONS)
@pytest.mark.parametrize("value", ["99999999999999999999", "MAX+1"])
def test_every_count_option_has_a_documented_maximum(llama, command, option, maximum, value):
    """`bench --n-prompts 99999999999999999999` used to print nothing and allocate ~115 MB/s."""
    value = str(maximum + 1) if value == "MAX+1" else value
    started = time.monotonic()
    line = one_line_error(run(command, llama, option, value), f"Invalid value for '{option}'", f"<={maximum}.")
    assert time.monotonic() - started < 5, line
    help_text = run(command, "--help").stdout
    assert f"<={maximum}]" in " ".join(help_text.split()), f"{command} --help does not show the maximum of {option}"


@pytest.mark.parametrize("command", ["bench", "channels", "search", "subspace"])
@pytest.mark.parametrize("value", ["-1", str(limits.MAX_SEED + 1)])
def test_seeds_are_what_numpy_and_optuna_take(llama, command, value):
    """A negative seed was a numpy/Optuna traceback in subspace and search."""
    one_line_error(run(command, llama, "--seed", value), "Invalid value for '--seed'")


@pytest.mark.parametrize("old, new, field", [("seed: 0", "seed: -1", "seed"),
                                             ("seed: 0", "seed: 0\nbenchmark: {seed: 4294967296}", "benchmark.seed")])
def test_recipe_seeds_are_bounded_too(llama, tmp_path, old, new, field):
    recipe = write_recipe(tmp_path / "r.yaml", llama, edits=EDIT)
    recipe.write_text(recipe.read_text().replace(old, new))
    one_line_error(run("apply", recipe, "--out", tmp_path / "out"), f"{field} must be")
    assert not (tmp_path / "out").exists()


# ---- strict JSON --------------------------------------------------------------------------------


def test_strict_json_writes_null_for_non_finite_numbers():
    text = strict_json.dumps({"a": math.nan, "b": [1.5, math.inf, (-math.inf, 2)], "c": "NaN"})
    assert json.loads(text, parse_constant=lambda name: pytest.fail(f"bare {name}")) == {
        "a": None, "b": [1.5, None, [None, 2]], "c": "NaN"}


def test_provenance_is_strict_json_even_with_a_non_finite_number(llama, tmp_path, monkeypatch):
    import th_edit.apply

    real = th_edit.apply.provenance
    monkeypatch.setattr(th_edit.apply, "provenance", lambda *a, **k: {**real(*a, **k), "some_mean": math.nan})
    recipe = write_recipe(tmp_path / "r.yaml", llama, edits=EDIT)
    assert run("apply", recipe, "--out", tmp_path / "out").exit_code == 0
    record = json.loads((tmp_path / "out" / "provenance.json").read_text(),
                        parse_constant=lambda name: pytest.fail(f"bare {name} in provenance.json"))
    assert record["some_mean"] is None


@pytest.mark.real
def test_bench_json_output_is_strict(monkeypatch):
    """`bench --json` (and bench.json, written by the same call) never contains a bare NaN."""
    from types import SimpleNamespace

    import th_edit.bench
    import th_edit.commands.bench as command

    session = SimpleNamespace(model=None, device="cpu", dtype=torch.float32, max_length=None)
    monkeypatch.setattr(command, "load_session", lambda *a, **k: session)
    monkeypatch.setattr(th_edit.bench, "tokenize_prompts", lambda *a, **k: None)
    monkeypatch.setattr(th_edit.bench, "run_single", lambda *a, **k: {"accuracy": math.nan, "n": 3})
    result = run("bench", "smollm2-135m", "--task", "ioi", "--n-prompts", "2", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout, parse_constant=lambda name: pytest.fail(f"bare {name}")) == {"accuracy": None, "n": 3}


def test_a_clean_base_is_still_copied_byte_for_byte(llama, tmp_path):
    """The finiteness check on copied tensors only reads: a clean base applies, untouched bytes unchanged."""
    recipe = write_recipe(tmp_path / "r.yaml", llama, edits=EDIT)
    assert run("apply", recipe, "--out", tmp_path / "a").exit_code == 0
    from safetensors.torch import load_file

    written, base = load_file(tmp_path / "a" / "model.safetensors"), load_file(llama / "model.safetensors")
    assert torch.equal(written[UNTOUCHED], base[UNTOUCHED])


def test_legacy_gpt2_layout_still_matches(tmp_path):
    """Hub GPT-2 checkpoints store keys without the `transformer.` prefix, plus causal-mask buffers
    (`h.0.attn.bias`) that transformers ignores: neither is a mismatch."""
    from safetensors.torch import save_file

    model = tiny_model("gpt2")
    model.config.save_pretrained(tmp_path)
    state = {name.removeprefix("transformer."): tensor.contiguous() for name, tensor in model.state_dict().items()
             if name != "lm_head.weight"}
    state["h.0.attn.bias"] = torch.ones(1, 1, 8, 8)
    save_file(state, tmp_path / "model.safetensors")
    assert run("inspect", tmp_path, "--svd").exit_code == 0
    del state["h.1.ln_1.weight"]
    save_file(state, tmp_path / "model.safetensors")
    one_line_error(run("inspect", tmp_path), "1 missing tensor (transformer.h.1.ln_1.weight)")


def test_scales_beyond_the_documented_bound_are_refused(llama, tmp_path):
    from th_edit.recipe import MAX_SCALE

    recipe = write_recipe(tmp_path / "r.yaml", llama, edits=[{**EDIT[0], "scale": 1e30}])
    one_line_error(run("apply", recipe, "--out", tmp_path / "out"), "edits[0].scale", f"at most {MAX_SCALE:g}")
    assert not (tmp_path / "out").exists()
    recipe = write_recipe(tmp_path / "ok.yaml", llama, edits=[{**EDIT[0], "scale": MAX_SCALE}])
    assert run("apply", recipe, "--out", tmp_path / "ok", "--no-bench").exit_code == 0


def test_a_large_scale_in_bfloat16_warns_about_the_untouched_components(llama, tmp_path):
    """The realized change of the components no edit names is measured after the cast; over 1% warns."""
    edits = [{**EDIT[0], "scale": 100.0}]
    loud = CliRunner().invoke(main, ["apply", str(write_recipe(tmp_path / "b.yaml", llama, edits=edits, dtype="bfloat16")),
                                     "--out", str(tmp_path / "b"), "--no-bench"])
    assert loud.exit_code == 0 and "components the recipe does not name changed by up to" in loud.stderr
    quiet = CliRunner().invoke(main, ["apply", str(write_recipe(tmp_path / "f.yaml", llama, edits=edits, dtype="float32")),
                                      "--out", str(tmp_path / "f"), "--no-bench"])
    assert quiet.exit_code == 0 and "does not name" not in quiet.stderr
    record = json.loads((tmp_path / "b" / "provenance.json").read_text())
    assert "max_untouched_relative_change" in json.dumps(record)
