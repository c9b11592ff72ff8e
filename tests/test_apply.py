"""`apply` on tiny models of every family: exact edits, only the right slices, plain reload."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli_helpers import one_line_error, run_cli
from click.testing import CliRunner
from safetensors import safe_open
from tiny import FAMILIES, VOCAB, tiny_model
from transformers import AutoModelForCausalLM

from th_edit.apply import compute, prepare_file
from th_edit.arch import adapter_for
from th_edit.checkpoint import CheckpointTensors
from th_edit.cli import main
from th_edit.linalg import ov_svd, qk_svd
from th_edit.session import swapped_parameters

EDITS = [
    {"layer": 1, "head": 1, "circuit": "ov", "components": [0, 2], "scale": 2.5},
    {"layer": 1, "head": 1, "circuit": "qk", "components": [1], "scale": 0.0},
    {"layer": 2, "head": 0, "circuit": "qk", "components": [0], "scale": 1.7},
    {"layer": 2, "head": 3, "circuit": "ov", "components": [3], "scale": 0.0},
]


def write_recipe(path: Path, base: Path, edits=EDITS, **output) -> Path:
    import yaml

    recipe = {"base_model": str(base), "seed": 0, "edits": edits, "output": output}
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def apply_cli(*args):
    result = CliRunner().invoke(main, ["--quiet", "apply", *map(str, args)])
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    """A saved tiny checkpoint per family."""
    root = tmp_path_factory.mktemp("bases")
    paths = {}
    for family in FAMILIES:
        paths[family] = root / family
        tiny_model(family).save_pretrained(paths[family])
    return paths


@pytest.fixture(scope="module")
def applied(bases, tmp_path_factory):
    root = tmp_path_factory.mktemp("applied")
    outs = {}
    for family, base in bases.items():
        recipe = write_recipe(root / f"{family}.yaml", base)
        outs[family] = root / f"{family}-edited"
        apply_cli(recipe, "--out", outs[family])
    return outs


def _svds(path: Path, layer: int):
    tensors = CheckpointTensors(path)
    adapter = adapter_for(AutoModelForCausalLM.from_pretrained(path).config)
    weights = adapter.layer_weights(tensors, layer, dtype=torch.float64)
    return adapter, weights, ov_svd(weights), qk_svd(weights)


def _scales(layer: int, head: int, circuit: str) -> dict[int, float]:
    chosen = [e for e in EDITS if (e["layer"], e["head"], e["circuit"]) == (layer, head, circuit)]
    return {k: e["scale"] for e in chosen for k in e["components"]}


@pytest.mark.parametrize("family", FAMILIES)
def test_edits_are_exact_dense_identities(family, bases, applied):
    """OV' = OV (I + Σ(α−1) v vᵀ) and QK' = (I + Σ(α−1) a aᵀ) QK, checked on dense d×d matrices."""
    for layer in (1, 2):
        _, before, ov, qk = _svds(bases[family], layer)
        _, after, _, _ = _svds(applied[family], layer)
        for head in range(before.W_Q.shape[0]):
            d = before.W_Q.shape[1]
            ov_scales, qk_scales = _scales(layer, head, "ov"), _scales(layer, head, "qk")
            M_ov = torch.eye(d, dtype=torch.float64)
            for k, a in ov_scales.items():
                M_ov += (a - 1) * torch.outer(ov.V[head][:, k], ov.V[head][:, k])
            M_qk = torch.eye(d, dtype=torch.float64)
            for k, a in qk_scales.items():
                M_qk += (a - 1) * torch.outer(qk.U[head][:, k], qk.U[head][:, k])
            OV, OV_new = before.W_V[head] @ before.W_O[head], after.W_V[head] @ after.W_O[head]
            QK, QK_new = before.W_Q[head] @ before.W_K[head].T, after.W_Q[head] @ after.W_K[head].T
            assert torch.allclose(OV_new, OV @ M_ov, atol=1e-5 * OV.abs().max()), (family, layer, head)
            assert torch.allclose(QK_new, M_qk @ QK, atol=1e-5 * QK.abs().max()), (family, layer, head)


@pytest.mark.parametrize("family", FAMILIES)
def test_only_the_heads_slices_change(family, bases, applied):
    base, out = CheckpointTensors(bases[family]), CheckpointTensors(applied[family])
    adapter = adapter_for(AutoModelForCausalLM.from_pretrained(bases[family]).config)
    allowed: dict[str, torch.Tensor] = {}
    for e in EDITS:
        slot = (adapter.o_slot if e["circuit"] == "ov" else adapter.q_slot)(e["layer"], e["head"])
        mask = allowed.setdefault(base.resolve(slot.param), torch.zeros(base.entry(slot.param).shape, dtype=torch.bool))
        mask[slot.index] = True
    assert set(base.entries) == set(out.entries)
    for name in base.entries:
        old, new = base.get(name), out.get(name)
        assert old.dtype == new.dtype and old.shape == new.shape
        changed = old != new
        if name in allowed:
            assert changed.any(), name
            assert not (changed & ~allowed[name]).any(), f"{name} changed outside the edited heads' slices"
        else:
            assert not changed.any(), f"{name} changed but no edit targets it"


@pytest.mark.parametrize("family", FAMILIES)
def test_realized_singular_values_in_provenance(family, applied):
    record = json.loads((applied[family] / "provenance.json").read_text())
    for entry in record["edits"]:
        for c in entry["components"]:
            assert c["realized"] == pytest.approx(c["target"], rel=1e-5, abs=1e-5), (family, entry, c)
        assert entry["max_untouched_relative_change"] < 1e-5


def test_plain_transformers_reload_matches_in_memory_edit(bases, applied, tmp_path):
    """A process that never imports th_edit loads every output; logits equal th-edit's in-memory edit."""
    input_ids = torch.randint(0, VOCAB, (2, 11), generator=torch.Generator().manual_seed(3))
    torch.save(input_ids, tmp_path / "ids.pt")
    script = (
        "import sys, torch\n"
        "from transformers import AutoModelForCausalLM\n"
        "ids = torch.load(sys.argv[1])\n"
        "out = {}\n"
        "for path in sys.argv[3:]:\n"
        "    m = AutoModelForCausalLM.from_pretrained(path).eval()\n"
        "    with torch.no_grad(): out[path] = m(ids).logits\n"
        "assert not any(k.startswith('th_edit') for k in sys.modules), 'th_edit was imported'\n"
        "torch.save(out, sys.argv[2])\n"
    )
    paths = [str(applied[f]) for f in FAMILIES]
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "ids.pt"), str(tmp_path / "logits.pt"), *paths],
                   check=True, cwd=tmp_path)
    reloaded = torch.load(tmp_path / "logits.pt")
    for family in FAMILIES:
        recipe = write_recipe(tmp_path / f"{family}.yaml", bases[family])
        computed = compute(prepare_file(recipe))
        model = AutoModelForCausalLM.from_pretrained(bases[family]).eval()
        with torch.no_grad():
            before = model(input_ids).logits
        with torch.no_grad(), swapped_parameters(model, computed.cast):
            edited = model(input_ids).logits
        assert (edited - before).abs().max() > 1e-3, family  # the edit does something
        assert (reloaded[str(applied[family])] - edited).abs().max() < 1e-4, family


@pytest.mark.parametrize("family", ["gpt2", "llama", "gemma3_text"])
def test_identity_recipe_is_bit_identical(family, bases, tmp_path):
    edits = [{"layer": 0, "head": 0, "circuit": c, "components": [0, 1], "scale": 1.0} for c in ("ov", "qk")]
    out = tmp_path / "same"
    apply_cli(write_recipe(tmp_path / "r.yaml", bases[family], edits), "--out", out)
    base, new = CheckpointTensors(bases[family]), CheckpointTensors(out)
    for name in base.entries:
        assert torch.equal(base.get(name).view(torch.uint8), new.get(name).view(torch.uint8)), name


def test_deterministic_bytes(bases, tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", bases["llama"])
    apply_cli(recipe, "--out", tmp_path / "a")
    apply_cli(recipe, "--out", tmp_path / "b")
    for file in ("model.safetensors",):
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes()


def test_sharding_and_dtype(bases, tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", bases["gemma3_text"], dtype="bfloat16", max_shard_size="40KB")
    out = tmp_path / "sharded"
    apply_cli(recipe, "--out", out)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 3 and all((out / s).is_file() for s in shards)
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    with safe_open(out / shards[0], "pt") as f:
        assert all(f.get_tensor(k).dtype == torch.bfloat16 for k in f.keys())
    model = AutoModelForCausalLM.from_pretrained(out)
    assert next(model.parameters()).dtype == torch.bfloat16
    provenance = json.loads((out / "provenance.json").read_text())
    assert set(provenance["weights_sha256"]) == set(shards) | {"model.safetensors.index.json"}


def test_bfloat16_cast_loss_is_warned(bases, tmp_path):
    edits = [{"layer": 0, "head": 0, "circuit": "ov", "components": [5], "scale": 1.001}]
    recipe = write_recipe(tmp_path / "r.yaml", bases["llama"], edits, dtype="bfloat16")
    result = CliRunner().invoke(main, ["apply", str(recipe), "--out", str(tmp_path / "o")])
    assert result.exit_code == 0
    assert "warning:" in result.stderr and "loses" in result.stderr


@pytest.mark.parametrize("family", ["gpt2", "gemma3_text"])
def test_tied_embeddings_stay_tied(family, bases, applied):
    out = CheckpointTensors(applied[family])
    assert not any(name.startswith("lm_head") for name in out.entries)
    model = AutoModelForCausalLM.from_pretrained(applied[family])
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()


def test_model_card_and_side_files(bases, applied):
    out = applied["llama"]
    card = (out / "README.md").read_text()
    front = card.split("---")[1]
    assert "library_name: transformers" in front and "th-edit" in front and "model-editing" in front
    assert "base_model" not in front  # a local path is not a hub model
    assert (out / "recipe.yaml").read_text() in card
    original = (Path(str(out).replace("-edited", "") + ".yaml")).read_text()
    # Verbatim, except that the local base is named by its directory name only.
    assert (out / "recipe.yaml").read_text() == original.replace(str(bases["llama"]), '"llama"')
    assert (out / "generation_config.json").is_file()
    record = json.loads((out / "provenance.json").read_text())
    assert record["base"]["kind"] == "local" and record["base"]["weight_files_sha256"]
    assert {"torch", "transformers", "safetensors", "th-edit"} <= set(record["libraries"])


def test_legacy_unprefixed_keys_are_kept(bases, tmp_path):
    """GPT-2 checkpoints on the Hub store `h.0.attn...` without `transformer.`: keep their names."""
    from safetensors.torch import load_file, save_file

    legacy = tmp_path / "legacy"
    legacy.mkdir()
    for file in bases["gpt2"].iterdir():
        if file.suffix != ".safetensors":
            (legacy / file.name).write_bytes(file.read_bytes())
    state = load_file(bases["gpt2"] / "model.safetensors")
    save_file({k.removeprefix("transformer."): v for k, v in state.items()}, legacy / "model.safetensors", {"format": "pt"})
    out = tmp_path / "out"
    apply_cli(write_recipe(tmp_path / "r.yaml", legacy), "--out", out)
    keys = set(CheckpointTensors(out).entries)
    assert "h.1.attn.c_proj.weight" in keys and not any(k.startswith("transformer.") for k in keys)
    edited = AutoModelForCausalLM.from_pretrained(out)
    direct = tmp_path / "direct"
    apply_cli(write_recipe(tmp_path / "d.yaml", bases["gpt2"]), "--out", direct)
    ids = torch.arange(10)[None]
    with torch.no_grad():
        assert torch.equal(edited(ids).logits, AutoModelForCausalLM.from_pretrained(direct)(ids).logits)


def test_cast_loss_is_measured_per_head(bases, tmp_path):
    """A large edit on one head must not hide a lossy small edit on another head of the same tensor."""
    edits = [{"layer": 0, "head": 0, "circuit": "ov", "components": [0], "scale": 3.0},
             {"layer": 0, "head": 1, "circuit": "ov", "components": [5], "scale": 1.001}]
    recipe = write_recipe(tmp_path / "r.yaml", bases["llama"], edits, dtype="bfloat16")
    result = CliRunner().invoke(main, ["apply", str(recipe), "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if "loses" in line]
    assert len(warnings) == 1 and "layer 0 head 1 OV" in warnings[0], result.stderr


def test_overflowing_scale_is_a_user_error(tmp_path):
    """A scale within the bound (100) can still overflow float16 on a base with large weights."""
    import torch

    model = tiny_model("llama")
    with torch.no_grad():
        model.model.layers[0].self_attn.o_proj.weight.mul_(30000.0)  # entries of several hundred: fine in float16
    model.save_pretrained(tmp_path / "base")
    edits = [{"layer": 0, "head": 0, "circuit": "ov", "components": [0], "scale": 100.0}]
    recipe = write_recipe(tmp_path / "r.yaml", tmp_path / "base", edits, dtype="float16")
    one_line_error(run_cli("apply", recipe, "--out", tmp_path / "o"), "edits[0].scale", "overflow float16", alone=True)
    assert not (tmp_path / "o").exists()


def test_output_that_would_swallow_an_input_is_refused(bases, tmp_path):
    """--force must never delete what the run reads: a target containing the base or the recipe."""
    import shutil

    nest = tmp_path / "nest"
    shutil.copytree(bases["llama"], nest / "base")
    recipe = write_recipe(nest / "r.yaml", nest / "base")
    for target in (nest, nest / "base", nest / "base" / "inner", tmp_path):
        result = CliRunner().invoke(main, ["apply", str(recipe), "--out", str(target), "--force"])
        assert result.exit_code == 2 and "would overlap" in result.output, (target, result.output)
    assert (nest / "base" / "config.json").is_file() and recipe.is_file()
    assert not (nest / "base" / "inner").exists()


def test_output_under_a_file_is_refused_before_editing(bases, tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    recipe = write_recipe(tmp_path / "r.yaml", bases["llama"])
    result = CliRunner().invoke(main, ["apply", str(recipe), "--out", str(blocker / "sub")])
    assert result.exit_code == 2 and "is not a directory" in result.output
    assert len(result.output.strip().splitlines()) == 1 and "σ" not in result.output  # refused before the edit table


@pytest.mark.parametrize("scales, expected", [
    ({1: 2.0}, [1]),  # its tied neighbour 2 keeps scale 1: which direction is "component 1" matters
    ({2: 2.0}, [2]),
    ({1: 2.0, 2: 2.0}, []),  # the whole tied pair scaled alike: the same edit in any basis of the pair
    ({1: 2.0, 2: 3.0}, [1, 2]),
    ({0: 2.0, 3: 0.5}, []),  # untied components
    ({4: 2.0, 5: 2.0}, [4, 5]),  # a run of three (4, 5, 6): 6 is left at 1
    ({4: 2.0, 5: 2.0, 6: 2.0}, []),
])
@pytest.mark.math
def test_near_tied_components_are_ambiguous_unless_their_whole_run_is_scaled_alike(scales, expected):
    from th_edit.edit import ambiguous_components

    singular_values = torch.tensor([9.0, 7.0, 7.0 * (1 - 1e-4), 5.0, 3.0, 3.0, 3.0 * (1 - 1e-5), 1.0])
    assert ambiguous_components(scales, singular_values) == expected


def test_apply_prints_a_summary_and_the_full_table_only_with_verbose(bases, tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", bases["llama"])
    quiet = apply_cli(recipe, "--out", tmp_path / "a").stdout
    assert "σ realized" not in quiet
    assert "edits: 3 OV component(s) in 2 head(s), 2 QK component(s) in 2 head(s); scales 0 to 2.5" in quiet
    assert "realized singular values: within" in quiet and "th-edit -v apply" in quiet
    verbose = CliRunner().invoke(main, ["-v", "apply", str(recipe), "--out", str(tmp_path / "b")])
    assert verbose.exit_code == 0, verbose.output
    table = [line for line in verbose.stdout.splitlines() if line.strip()][:6]
    assert "σ realized" in table[0] and len(table) == 6
    # Right-aligned σ columns line up on the decimal point (fixed decimals).
    points = {line.rindex(".") for line in table[1:] if not line.endswith("-")}
    assert len(points) == 1, table
    # The model card has every component.
    card = (tmp_path / "a" / "README.md").read_text()
    assert card.count("| OV |") + card.count("| QK |") == 5


@pytest.mark.parametrize("family", [f for f in FAMILIES if "moe" in f or f == "mixtral"])
def test_moe_experts_pass_through_bit_identical(family, bases, applied):
    """Mixture-of-experts: every expert tensor is in the export, bit for bit (and reloads: see above)."""
    base, out = CheckpointTensors(bases[family]), CheckpointTensors(applied[family])
    experts = [name for name in base.entries if ".experts." in name]
    assert len(experts) >= 4 * 3 * 3  # 4 experts × 3 matrices × 3 layers
    for name in experts:
        assert torch.equal(base.get(name), out.get(name)), name
