"""Recipe validation: every mistake is one line naming the field, exit code 2, nothing written."""

import re
from pathlib import Path

import pytest
import transformers
from click.testing import CliRunner
from tiny import tiny_model

from th_edit.cli import main
from th_edit.recipe import Recipe, field_path, parse_recipe


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    path = tmp_path_factory.mktemp("base")
    tiny_model("llama").save_pretrained(path)  # 3 layers, 6 heads, d_head 8
    return path


GOOD_EDIT = "  - {layer: 1, head: 2, circuit: ov, components: [0], scale: 2.0}\n"


def recipe_text(base, edits=GOOD_EDIT, extra="", base_line=None):
    base_line = base_line if base_line is not None else f"base_model: {base}\n"
    return f"{base_line}seed: 0\nedits:\n{edits}output:\n  dir: OUT\n{extra}"


CASES = [
    # (edits block, extra top-level text, expected fragments)
    ("  - {layer: 1, head: 2, circuit: ov, components: [0], scale: 2.0, gain: 3}\n", "", ["edits[0].gain", "unknown key"]),
    ("  - {layer: 1, head: 2, circuit: vo, components: [0], scale: 2.0}\n", "", ["edits[0].circuit", "'ov' or 'qk'"]),
    ("  - {layer: one, head: 2, circuit: ov, components: [0], scale: 2.0}\n", "", ["edits[0].layer", "integer"]),
    ("  - {layer: 1, head: 2, circuit: ov, components: [0, x], scale: 2.0}\n", "", ["edits[0].components[1]"]),
    ("  - {layer: 1, head: 2, circuit: ov, components: [], scale: 2.0}\n", "", ["edits[0].components"]),
    ("  - {layer: 1, head: 2, circuit: ov, components: [0], scale: -1}\n", "", ["edits[0].scale", ">= 0"]),
    ("  - {layer: 1, head: 2, circuit: ov, components: [0], scale: .nan}\n", "", ["edits[0].scale", "finite"]),
    ("  - {layer: 1, head: 2, circuit: ov, components: [0], scale: .inf}\n", "", ["edits[0].scale", "finite"]),
    ("  - {layer: 1, head: 2, circuit: ov, components: [0], scale: yes}\n", "", ["edits[0].scale", "number"]),
    ("  - {layer: 1, head: 2, circuit: ov, components: [0]}\n", "", ["edits[0].scale", "required"]),
    (GOOD_EDIT + "  - {layer: 1, head: 2, circuit: ov, components: [3, 0], scale: 0.5}\n", "",
     ["edits[1].components[1]", "repeats edits[0]", "layer 1, head 2, ov, component 0"]),
    (GOOD_EDIT, "colour: red\n", ["colour", "unknown key"]),
    (GOOD_EDIT, "benchmark:\n  tasks: [laundry, sudoku]\n", ["benchmark.tasks[1]"]),
    ("  - {layer: 3, head: 2, circuit: ov, components: [0], scale: 2.0}\n", "", ["edits[0].layer", "0..2"]),
    ("  - {layer: 1, head: 6, circuit: qk, components: [0], scale: 2.0}\n", "", ["edits[0].head", "0..5"]),
    ("  - {layer: 1, head: 2, circuit: qk, components: [1, 8], scale: 2.0}\n", "", ["edits[0].components[1]", "0..7"]),
    (GOOD_EDIT, "benchmark:\n  n_items: [2, 3, 2]\n", ["benchmark.n_items", "repeats 2"]),
    (GOOD_EDIT, "benchmark:\n  tasks: [ioi, ioi]\n", ["benchmark.tasks", "repeats ioi"]),
    # Counts are bounded (th_edit/limits.py) before anything is built from them.
    (GOOD_EDIT, "benchmark:\n  n_prompts: 99999999999999999999\n", ["benchmark.n_prompts", "less than or equal to 100000"]),
    (GOOD_EDIT, "benchmark:\n  batch_size: 4097\n", ["benchmark.batch_size", "less than or equal to 4096"]),
    (GOOD_EDIT, "edits:\n" + GOOD_EDIT, ["line 7", "the key 'edits' appears twice"]),
    ("  - {layer: 1, head: 2, circuit: ov, components: [0], scale: 2.0, scale: 3.0}\n", "", ["line 4", "'scale' appears twice"]),
] + [
    (GOOD_EDIT, f"  max_shard_size: {size}\n", ["output.max_shard_size", expected])
    for size, expected in [(0, "at least 1 byte"), (-5, "at least 1 byte"), ("0.1B", "not a size"), ("infGB", "not a size"),
                           ("nanMB", "not a size"), (1.5, "must be a size"), ("true", "must be a size")]
]


@pytest.mark.parametrize("edits,extra,fragments", CASES)
def test_bad_recipes(base, tmp_path, edits, extra, fragments):
    out = tmp_path / "out"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(recipe_text(base, edits, extra).replace("OUT", str(out)))
    result = CliRunner().invoke(main, ["apply", str(recipe)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert not out.exists() and list(tmp_path.iterdir()) == [recipe]


@pytest.mark.parametrize("text,fragments", [
    ("base_model: x\nedits: [\n", ["line 3", "malformed YAML"]),
    ("edits:\n" + GOOD_EDIT, ["base_model", "required"]),
    ("- just\n- a list\n", ["YAML mapping"]),
    ("base_model: no-such-alias\nedits:\n" + GOOD_EDIT + "output: {dir: o}\n", ["base_model", "unknown model"]),
    ("base_model: ./missing\nedits:\n" + GOOD_EDIT + "output: {dir: o}\n", ["base_model", "no such file"]),
])
def test_bad_files(tmp_path, text, fragments):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(text)
    result = CliRunner().invoke(main, ["apply", str(recipe)])
    assert result.exit_code == 2
    line = result.output.strip()
    assert "\n" not in line and line.startswith("error: ")
    for fragment in fragments:
        assert fragment in line, line


def test_missing_recipe_file(tmp_path):
    result = CliRunner().invoke(main, ["apply", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2 and "recipe file not found" in result.output


def test_output_dir_defaults_to_out_and_the_recipe_name(base, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = tmp_path / "my-edit.yaml"
    recipe.write_text(f"base_model: {base}\nedits:\n{GOOD_EDIT}")
    result = CliRunner().invoke(main, ["--quiet", "apply", str(recipe)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "my-edit" / "model.safetensors").is_file()


def test_every_problem_is_listed(base, tmp_path):
    """Not "(and 2 more problems)": each one on its own line, the first on the error line."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(recipe_text(base, "  - {layer: 1, head: 2, circuit: ov, components: [0], scale: -1, gain: 3}\n"
                                        "  - {layer: x, head: 2, circuit: ov, components: [0], scale: 2.0}\n"))
    result = CliRunner().invoke(main, ["apply", str(recipe)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 3 and lines[0].startswith("error: ") and "more problem" not in result.output
    for fragment in ("edits[0].scale", "edits[0].gain", "edits[1].layer"):
        assert sum(fragment in line for line in lines) == 1, (fragment, lines)


def test_every_index_problem_is_listed(base, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(recipe_text(base, "  - {layer: 9, head: 9, circuit: qk, components: [0, 99], scale: 2.0}\n"
                                        + GOOD_EDIT))
    result = CliRunner().invoke(main, ["apply", str(recipe)])
    assert result.exit_code == 2
    assert all(f in result.output for f in ("edits[0].layer", "edits[0].head", "edits[0].components[1]"))
    recipe.write_text(recipe_text(base, GOOD_EDIT * 3))
    result = CliRunner().invoke(main, ["apply", str(recipe)])
    assert result.exit_code == 2 and "edits[1].components[0] repeats" in result.output
    assert "edits[2].components[0] repeats" in result.output


def test_schema_repeat_and_index_problems_are_listed_together(base, tmp_path):
    """A schema problem used to hide the repeats, and repeats the indices: fix one, rerun, see the next."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(recipe_text(base, "  - {layer: 1, head: 2, circuit: ov, components: [0, 0, 99], scale: 2.0}\n"
                                        "  - {layer: 7, head: 2, circuit: qk, components: [1], scale: 2.0}\n"
                                        "  - {layer: 1, head: 2, circuit: ov, components: [3], scale: -1}\n",
                                  base_line=f"base_model: {base}\nseeds: 3\n"))
    out = tmp_path / "OUT"
    result = CliRunner().invoke(main, ["apply", str(recipe), "--out", str(out)])
    assert result.exit_code == 2 and "Traceback" not in result.output and not out.exists()
    lines = result.output.strip().splitlines()
    for fragment in ("seeds", "edits[2].scale", "edits[0].components[1] repeats", "edits[0].components[2] 99",
                     "edits[1].layer 7"):
        assert sum(fragment in line for line in lines) == 1, (fragment, lines)
    assert len(lines) == 5 and lines[0].startswith("error: ")


def test_a_base_model_that_cannot_be_found_is_listed_with_the_other_problems(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(recipe_text(None, "  - {layer: 1, head: 2, circuit: ov, components: [0], scale: -1}\n",
                                  base_line=f"base_model: {tmp_path / 'nowhere'}\n"))
    lines = CliRunner().invoke(main, ["apply", str(recipe)]).output.strip().splitlines()
    assert any("edits[0].scale" in line for line in lines) and any("base_model:" in line for line in lines), lines


@pytest.mark.parametrize("circuit", ["OV", "Ov", "QK", "qK"])
def test_circuit_in_any_case(circuit):
    recipe = parse_recipe(f"base_model: m\nedits:\n  - {{layer: 0, head: 0, circuit: {circuit}, components: [0], scale: 2}}\n")
    assert recipe.edits[0].circuit == circuit.lower()


def test_yaml_is_loaded_safely(tmp_path):
    text = "base_model: !!python/object/apply:os.system ['echo pwned']\nedits: []\n"
    with pytest.raises(Exception) as excinfo:
        parse_recipe(text)
    assert "malformed YAML" in str(excinfo.value)


def test_defaults_and_field_paths():
    recipe = parse_recipe("base_model: smollm2-135m\nedits:\n" + GOOD_EDIT)
    assert isinstance(recipe, Recipe)
    assert recipe.output.dtype == "keep" and recipe.seed == 0 and recipe.benchmark is None
    assert field_path(("edits", 2, "components", 0)) == "edits[2].components[0]"
    assert field_path(("output", "dtype")) == "output.dtype"


def test_replace_values_keeps_everything_else():
    from th_edit.recipe import replace_values

    text = "# a comment\nbase_model: /home/me/models/base   # mine\nedits: []\noutput: {dir: /home/me/out/x, dtype: keep}\n"
    new = replace_values(text, {("base_model",): "base", ("output", "dir"): "x", ("missing",): "y"})
    assert new == '# a comment\nbase_model: "base"   # mine\nedits: []\noutput: {dir: "x", dtype: keep}\n'


def test_existing_output_refused_then_forced(base, tmp_path):
    out = tmp_path / "out"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(recipe_text(base).replace("OUT", str(out)))
    assert CliRunner().invoke(main, ["--quiet", "apply", str(recipe)]).exit_code == 0
    marker = out / "README.md"  # a file of the checkpoint (--force refuses one it did not write)
    marker.write_text("old")
    refused = CliRunner().invoke(main, ["apply", str(recipe)])
    assert refused.exit_code == 2 and "already exists" in refused.output and marker.read_text() == "old"
    forced = CliRunner().invoke(main, ["--quiet", "apply", str(recipe), "--force"])
    assert forced.exit_code == 0 and marker.read_text() != "old" and (out / "model.safetensors").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_exponent_floats_are_numbers():
    """YAML 1.1 (PyYAML) reads 1e-3 as a string; a recipe reads it as the number users mean."""
    recipe = parse_recipe("base_model: m\nedits:\n  - {layer: 0, head: 0, circuit: ov, components: [0], scale: 1e-3}\n")
    assert recipe.edits[0].scale == 0.001


def test_shard_size_error_names_the_field_only(tmp_path):
    with pytest.raises(Exception) as excinfo:
        parse_recipe("base_model: m\nedits:\n" + GOOD_EDIT + "output: {max_shard_size: 1.5}\n")
    message = str(excinfo.value)
    assert "output.max_shard_size must be a size" in message and ".str" not in message and "more problem" not in message


HUB_RECIPE_SHAPES = {  # the hub models' configs, built here: nothing is downloaded
    "gpt2-small-inhibition.yaml": lambda: transformers.GPT2Config(),
    "pythia-160m-inhibition.yaml": lambda: transformers.GPTNeoXConfig(
        hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
}


@pytest.mark.parametrize("name", sorted(HUB_RECIPE_SHAPES))
def test_shipped_hub_recipes_parse_and_fit_their_models_shape(name):
    from th_edit.arch import adapter_for
    from th_edit.recipe import check_against_model, load_recipe

    path = Path(__file__).resolve().parent.parent / "recipes" / name
    recipe, _ = load_recipe(path)
    check_against_model(recipe, adapter_for(HUB_RECIPE_SHAPES[name]()), name)
    assert recipe.edits and "NOT RUN HERE" in path.read_text()


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parent.parent / "recipes").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_shipped_recipes_name_no_local_path(path):
    """A shipped recipe is read by others: its comments name no scratch directory of the machine it came from."""
    text = path.read_text()
    assert not re.search(r"(?<![\w.])(/tmp/|/work/|/home/|/root/|~/)", text), path.name
