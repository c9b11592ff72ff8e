"""The Python API: sessions, in-memory edits, exact restore, edit_model == apply, hooks, offload."""

import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from tiny import FAMILIES, VOCAB, tiny_checkpoint, tiny_model
from transformers import AutoModelForCausalLM

import th_edit
from th_edit import hooks
from th_edit.checkpoint import CheckpointTensors
from th_edit.cli import main
from th_edit.recipe import Edit, Recipe, parse_recipe
from th_edit.session import Session, edit_model

EDITS = [
    {"layer": 1, "head": 1, "circuit": "ov", "components": [0, 2], "scale": 2.5},
    {"layer": 1, "head": 1, "circuit": "qk", "components": [1], "scale": 0.0},
    {"layer": 2, "head": 0, "circuit": "qk", "components": [0], "scale": 1.7},
    {"layer": 2, "head": 3, "circuit": "ov", "components": [3], "scale": 0.0},
]
IDS = torch.randint(0, VOCAB, (2, 11), generator=torch.Generator().manual_seed(3))
README = Path(__file__).parent.parent / "README.md"


def recipe_file(path: Path, base: Path, edits=EDITS) -> Path:
    path.write_text(yaml.safe_dump({"base_model": str(base), "edits": edits}, sort_keys=False))
    return path


def logits(model, ids=IDS) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


def ulps(a: torch.Tensor, b: torch.Tensor) -> int:
    """Largest distance in units in the last place between two tensors of the same float dtype."""
    assert a.dtype == b.dtype and a.shape == b.shape
    integer = {2: torch.int16, 4: torch.int32}[a.element_size()]
    ai, bi = a.contiguous().view(integer).long(), b.contiguous().view(integer).long()
    # Map the sign-magnitude bit patterns onto a monotonic integer line.
    top = 1 << (8 * a.element_size() - 1)
    ai = torch.where(ai < 0, -top - ai, ai)
    bi = torch.where(bi < 0, -top - bi, bi)
    return int((ai - bi).abs().max())


# ----------------------------------------------------------------------------------------------
# In-memory edit == exported checkpoint


@pytest.mark.cli
@pytest.mark.parametrize("family, dtype", [(family, torch.float32) for family in FAMILIES] + [
    (family, dtype) for family in ("llama", "gemma3_text", "gpt2") for dtype in (torch.bfloat16, torch.float16)])
def test_edit_model_then_save_pretrained_equals_apply(family, dtype, tmp_path):
    base = tmp_path / "base"
    tiny_model(family).to(dtype).save_pretrained(base)
    out = tmp_path / "applied"
    result = CliRunner().invoke(main, ["--quiet", "apply", str(recipe_file(tmp_path / "r.yaml", base)), "--out", str(out)])
    assert result.exit_code == 0, result.output

    model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    computed = edit_model(model, Recipe.from_yaml(tmp_path / "r.yaml"))
    assert set(computed.values) and all(model.get_parameter(n).dtype == dtype for n in computed.values)
    saved = tmp_path / "saved"
    model.save_pretrained(saved)
    mine, theirs = CheckpointTensors(saved), CheckpointTensors(out)
    changed = 0
    for name in theirs.entries:
        a, b = mine.get(name), theirs.get(name)
        assert ulps(a, b) <= 1, (name, ulps(a, b))
        changed += not torch.equal(a, before[name] if name in before else a)
    assert changed == len(computed.values)  # the edit did change exactly the edited parameters

    reloaded = AutoModelForCausalLM.from_pretrained(saved, dtype=torch.float32)  # plain transformers reload
    applied = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert (logits(reloaded) - logits(applied)).abs().max() < 1e-3


def test_edit_model_computes_from_the_models_own_weights(tmp_path):
    """A model whose weights differ from any file: the edit is exact on *its* weights."""
    model = tiny_model("llama", seed=5)
    svd_before = Session(model).svd(1, 1, "ov")
    edit_model(model, [Edit(layer=1, head=1, circuit="ov", components=[0], scale=3.0)])
    svd_after = Session(model).svd(1, 1, "ov")
    assert float(svd_after.S[0]) == pytest.approx(3.0 * float(svd_before.S[0]), rel=1e-5)
    assert torch.allclose(svd_after.S[1:], svd_before.S[1:], rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# Swapping is exact


def _state(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_edited_restores_every_parameter_bit_for_bit(dtype):
    model = tiny_model("gemma3_text").to(dtype)
    session = Session(model)
    original = _state(model)
    recipe = [Edit(**e) for e in EDITS]
    with session.edited(recipe) as computed:
        assert any(not torch.equal(model.get_parameter(n), original[n]) for n in computed.values)
    assert all(torch.equal(p, original[n]) for n, p in _state(model).items())
    with pytest.raises(ZeroDivisionError), session.edited(recipe):
        1 / 0
    assert all(torch.equal(p, original[n]) for n, p in _state(model).items())


def test_edits_do_not_nest():
    session = Session(tiny_model("llama"))
    with session.edited([Edit(**EDITS[0])]), pytest.raises(RuntimeError, match="already active"):
        with session.edited([Edit(**EDITS[2])]):
            pass


@pytest.mark.cli
def test_many_edits_share_one_decomposition_per_head(monkeypatch):
    """No reload, no re-SVD: each head is decomposed once however many edits use it, and a head no
    edit touches is never decomposed."""
    import th_edit.decompose as decompose

    calls = []
    real = decompose.factored_svd
    monkeypatch.setattr(decompose, "factored_svd", lambda *a: calls.append(a[0].shape) or real(*a))
    session = Session(tiny_model("llama"))
    for scale in (0.0, 0.5, 2.0, 3.0, 1.5):
        with session.edited([Edit(layer=1, head=2, circuit="ov", components=[0], scale=scale),
                             Edit(layer=2, head=0, circuit="qk", components=[1], scale=scale)]):
            pass
    assert len(calls) == 2  # (1.2, ov) and (2.0, qk), once each
    assert session.svd(1, 2, "OV") is session.svd(1, 2, "ov")
    assert len(calls) == 2


@pytest.mark.cli
def test_edited_model_equals_apply_on_logits(tmp_path):
    """`with session.edited(recipe)` runs exactly the model that `th-edit apply` writes."""
    base = tmp_path / "base"
    tiny_model("qwen3").save_pretrained(base)
    out = tmp_path / "out"
    assert CliRunner().invoke(main, ["--quiet", "apply", str(recipe_file(tmp_path / "r.yaml", base)),
                                     "--out", str(out)]).exit_code == 0
    session = th_edit.load(str(base))
    with session.edited(Recipe.from_yaml(tmp_path / "r.yaml")):
        inside = logits(session.model)
    applied = AutoModelForCausalLM.from_pretrained(out)
    assert torch.equal(inside, logits(applied))


def test_recipe_yaml_round_trip(tmp_path):
    recipe = Recipe(base_model="smollm2-135m", seed=3, description="two edits\nand a note",
                    edits=[Edit(layer=20, head=0, circuit="ov", components=[1, 0], scale=2.5),
                           Edit(layer=3, head=8, circuit="qk", components=[0], scale=1e-3)])
    text = recipe.to_yaml(tmp_path / "r.yaml", header="found by th-edit search\nseed 3")
    assert text.startswith("# found by th-edit search\n# seed 3\n")
    assert Recipe.from_yaml(tmp_path / "r.yaml") == recipe == parse_recipe(text)


# ----------------------------------------------------------------------------------------------
# Hooks


@pytest.mark.parametrize("family", FAMILIES)
def test_hook_with_scale_one_changes_nothing(family):
    session = Session(tiny_model(family))
    read, write = hooks.ov_component(session, 1, 1, 0)
    expected = logits(session.model)
    with hooks.scaled(session.model, session.adapter, [hooks.DirectionScale(1, 1, read, write, 1.0)]):
        assert torch.equal(logits(session.model), expected)


@pytest.mark.parametrize("family", FAMILIES)
def test_hook_scaling_an_ov_component_equals_the_weight_edit(family):
    """Scaling OV component k's share of the head output by α at every position == the weight edit."""
    session = Session(tiny_model(family))
    scales = [hooks.DirectionScale(1, 1, *hooks.ov_component(session, 1, 1, 0), 2.5),
              hooks.DirectionScale(1, 1, *hooks.ov_component(session, 1, 1, 2), 2.5),
              hooks.DirectionScale(2, 3, *hooks.ov_component(session, 2, 3, 3), 0.0)]
    recipe = [Edit(**e) for e in EDITS if e["circuit"] == "ov"]
    base = logits(session.model)
    with hooks.scaled(session.model, session.adapter, scales):
        hooked = logits(session.model)
    with session.edited(recipe):
        weighted = logits(session.model)
    assert (hooked - base).abs().max() > 1e-3  # the edit does something
    assert float((hooked - weighted).norm() / weighted.norm()) < 1e-5


def test_hook_positions_limit_the_change():
    session = Session(tiny_model("llama"))
    scale = hooks.DirectionScale(1, 1, *hooks.ov_component(session, 1, 1, 0), 0.0, positions=-1)
    base = logits(session.model)
    with hooks.scaled(session.model, session.adapter, [scale]):
        hooked = logits(session.model)
    assert torch.equal(hooked[:, :-1], base[:, :-1]) and not torch.equal(hooked[:, -1], base[:, -1])


@pytest.mark.parametrize("family", ["gpt2", "llama", "gemma3_text", "phi", "stablelm", "gptj", "falcon", "opt"])
def test_recording_reads_the_modules_own_patterns_and_outputs(family):
    model = tiny_model(family, attn_implementation="sdpa")
    session = Session(model)
    with hooks.recording(model, session.adapter, [1, 2], attention=True, z=True, residual=True) as rec:
        with torch.no_grad():
            out = model(IDS, output_hidden_states=True)
    assert model.config._attn_implementation == "sdpa"  # switched back after recording
    pattern = rec.attention[2][0]
    assert pattern.shape == (2, session.info.n_heads, 11, 11)
    assert torch.allclose(pattern.sum(-1), torch.ones(2, session.info.n_heads, 11), atol=1e-5)
    assert rec.z[1][0].shape == (2, 11, session.info.n_heads, session.info.d_head)
    assert torch.allclose(rec.residual[1][0], out.hidden_states[2], atol=1e-6)
    with hooks.recording(model, session.adapter, [2], attention=True, positions=-1) as last:
        logits(model)
    assert torch.equal(last.attention[2][0], pattern[:, :, -1:])


def test_residual_added_moves_the_last_position_only():
    model = tiny_model("llama")
    session = Session(model)
    base = logits(model)
    with hooks.residual_added(model, session.adapter, 1, torch.ones(session.info.d_model)):
        moved = logits(model)
    assert torch.equal(moved[:, :-1], base[:, :-1]) and not torch.equal(moved[:, -1], base[:, -1])


# ----------------------------------------------------------------------------------------------
# Devices: offload


@pytest.mark.pipeline
def test_offloaded_model_scores_and_edits_like_the_plain_one(tmp_path):
    base = tiny_checkpoint(tmp_path / "base", "llama")
    plain = th_edit.load(str(base))
    offloaded = th_edit.load(str(base), device="auto", max_memory={"cpu": "600KB"}, offload_folder=str(tmp_path / "off"))
    placed = set(offloaded.model.hf_device_map.values())
    assert "disk" in placed and "cpu" in placed, placed  # partly offloaded
    kwargs = {"n_items": [2, 3], "n_prompts": 8}
    _same_scores(th_edit.bench.run(offloaded, **kwargs)["results"], th_edit.bench.run(plain, **kwargs)["results"])
    recipe = [Edit(**e) for e in EDITS]
    ids = IDS % len(plain.tokenizer)
    before = logits(offloaded.model, ids)
    with plain.edited(recipe), offloaded.edited(recipe):
        assert torch.allclose(logits(offloaded.model, ids), logits(plain.model, ids), atol=1e-5)
        assert not torch.allclose(logits(offloaded.model, ids), before, atol=1e-4)
    assert torch.equal(logits(offloaded.model, ids), before)


def _same_scores(actual, expected) -> None:
    """Accuracies identical; logit differences equal to float32 rounding (the offloaded weights
    take another path into the matmuls)."""
    if isinstance(expected, dict):
        assert actual.keys() == expected.keys()
        for key in expected:
            _same_scores(actual[key], expected[key])
    elif isinstance(expected, list):
        assert len(actual) == len(expected)
        for a, e in zip(actual, expected):
            _same_scores(a, e)
    elif isinstance(expected, float):
        assert actual == pytest.approx(expected, rel=1e-5, abs=1e-6)
    else:
        assert actual == expected


def test_device_errors_are_one_line(tmp_path):
    from th_edit.errors import UserError

    base = tiny_checkpoint(tmp_path / "base", "llama")
    with pytest.raises(UserError, match="needs --device auto"):
        th_edit.load(str(base), max_memory={"cpu": "1GB"})
    with pytest.raises(UserError, match="unknown device"):
        th_edit.load(str(base), device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA device"):
            th_edit.load(str(base), device="cuda")


# ----------------------------------------------------------------------------------------------
# The README's example


def readme_api_example() -> str:
    text = README.read_text()
    section = text[text.index("## Python API"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.pipeline
def test_readme_api_example_runs_on_a_tiny_model(tmp_path, monkeypatch):
    """The example exactly as written, with the model reference pointed at a tiny checkpoint of the
    same shape family (24 layers so that the example's layer 20 exists)."""
    base = tiny_checkpoint(tmp_path / "tiny", "llama", num_hidden_layers=24, num_attention_heads=9,
                           num_key_value_heads=3, head_dim=8, hidden_size=72)
    code = readme_api_example()
    assert '"smollm2-135m"' in code
    (tmp_path / "recipes").symlink_to(README.parent / "recipes")
    monkeypatch.chdir(tmp_path)  # the example may write files (a recipe): not into the repository
    namespace: dict = {}
    exec(compile(code.replace('"smollm2-135m"', repr(str(base))), "README.md", "exec"), namespace)
    assert namespace["report"]["kind"] == "single"
    assert (tmp_path / "tiny").exists()


# ----------------------------------------------------------------------------------------------
# One session, many paired benchmarks: the unedited model is scored once


def _counting_forwards(model) -> list[int]:
    calls = [0]
    model.register_forward_pre_hook(lambda module, args: calls.__setitem__(0, calls[0] + 1))
    return calls


def _paired_numbers(report) -> tuple:
    overall = report["paired"]["laundry"]["overall"]
    return (overall["before_accuracy"], overall["after_accuracy"], overall["mean_logit_diff_change"],
            report["side_effects"]["neutral_kl"]["mean_nats_per_token"])


@pytest.fixture(scope="module")
def word_checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("words") / "tiny", "llama")


PAIRED = dict(tasks=("laundry",), n_items=[3, 4], n_prompts=6, kl_texts=12, batch_size=4)


@pytest.mark.pipeline
def test_many_paired_runs_on_one_session_score_the_unedited_model_once(word_checkpoint):
    recipes = [[Edit(layer=1, head=1, circuit="ov", components=[0, 1], scale=s)] for s in (0.0, 2.0, 3.0)]
    fresh = [th_edit.bench.paired(th_edit.load(str(word_checkpoint)), r, **PAIRED) for r in recipes]
    m = th_edit.load(str(word_checkpoint))
    calls = _counting_forwards(m.model)
    reused = []
    for recipe in recipes:
        before = calls[0]
        reused.append(th_edit.bench.paired(m, recipe, **PAIRED))
        calls.append(calls[0] - before)
    # The first run scores before and after and runs both sides of the KL; later ones only "after".
    assert calls[1] == 2 * calls[2] == 2 * calls[3] > 0
    for mine, theirs in zip(reused, fresh):
        assert _paired_numbers(mine) == _paired_numbers(theirs)  # bit for bit, KL included


@pytest.mark.pipeline
def test_unedited_results_are_not_taken_from_an_edit_or_kept_after_apply(word_checkpoint):
    first = [Edit(layer=1, head=1, circuit="ov", components=[0], scale=0.0)]
    second = [Edit(layer=2, head=0, circuit="qk", components=[0], scale=3.0)]
    m = th_edit.load(str(word_checkpoint))
    with m.edited(first):
        inside = th_edit.bench.paired(m, second, **PAIRED)  # "before" is the edited model here
    outside = th_edit.bench.paired(m, second, **PAIRED)
    assert _paired_numbers(outside) == _paired_numbers(th_edit.bench.paired(th_edit.load(str(word_checkpoint)), second,
                                                                            **PAIRED))
    m.apply(first)  # the edited weights are the unedited model from now on
    assert _paired_numbers(th_edit.bench.paired(m, second, **PAIRED)) == _paired_numbers(inside)


@pytest.mark.cli
@pytest.mark.parametrize("setting, expected", [("kl: false", None), ("kl_texts: 5", 5)])
def test_apply_benchmark_sizes_or_skips_the_neutral_text_kl(word_checkpoint, tmp_path, setting, expected):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"base_model: {word_checkpoint}\nedits:\n  - {{layer: 1, head: 1, circuit: ov, components: [0], "
                      f"scale: 2.0}}\nbenchmark: {{tasks: [laundry], n_items: [3], n_prompts: 4, {setting}}}\n")
    result = CliRunner().invoke(main, ["--quiet", "apply", str(recipe), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    kl = json.loads((tmp_path / "out" / "provenance.json").read_text())["benchmark"]["side_effects"]["neutral_kl"]
    assert (kl is None) if expected is None else kl["n_texts"] == expected
    assert ("KL not measured" in result.stdout) == (expected is None)
    assert CliRunner().invoke(main, ["--quiet", "verify", str(tmp_path / "out")]).stdout.strip() == "ok"


@pytest.mark.cli
def test_verify_checks_the_recorded_benchmark_setup_against_the_recipe(word_checkpoint, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"base_model: {word_checkpoint}\nedits:\n  - {{layer: 1, head: 1, circuit: ov, components: [0], "
                      "scale: 2.0}\nbenchmark: {tasks: [laundry], n_items: [3], n_prompts: 4, kl_texts: 3}\n")
    out = tmp_path / "out"
    assert CliRunner().invoke(main, ["--quiet", "apply", str(recipe), "--out", str(out)]).exit_code == 0
    assert CliRunner().invoke(main, ["--quiet", "verify", str(out)]).stdout.strip() == "ok"
    record = json.loads((out / "provenance.json").read_text())
    record["benchmark"]["setup"]["n_prompts_per_n"] = 200  # claims a larger benchmark than the recipe ran
    (out / "provenance.json").write_text(json.dumps(record))
    result = CliRunner().invoke(main, ["--quiet", "verify", str(out)])
    assert result.exit_code == 1 and "benchmark.setup.n_prompts_per_n is 200, but the recipe asks for 4" in result.stderr
    record["benchmark"]["setup"]["n_prompts_per_n"] = 4
    record["benchmark"]["side_effects"]["neutral_kl"]["n_texts"] = 146  # claims the KL of every neutral text
    (out / "provenance.json").write_text(json.dumps(record))
    result = CliRunner().invoke(main, ["--quiet", "verify", str(out)])
    assert result.exit_code == 1 and "neutral_kl.n_texts is 146, but the recipe asks for at most 3" in result.stderr
    record["benchmark"]["side_effects"]["neutral_kl"] = None  # a KL the recipe asked for, gone
    (out / "provenance.json").write_text(json.dumps(record))
    result = CliRunner().invoke(main, ["--quiet", "verify", str(out)])
    assert result.exit_code == 1 and "neutral_kl is missing, but the recipe asks for it" in result.stderr


# ----------------------------------------------------------------------------------------------
# One edit computation (th_edit.edit.plan_edit) for apply and the API


def _tied_session(tokenizer=None) -> tuple[Session, float]:
    """A llama session whose layer 1 head 0 OV has components 0 and 1 tied: component 0 was scaled
    onto component 1's singular value for good."""
    vocab = {} if tokenizer is None else {"vocab_size": len(tokenizer)}
    session = Session(tiny_model("llama", **vocab), tokenizer)
    s = session.svd(1, 0, "ov").S
    session.apply([Edit(layer=1, head=0, circuit="ov", components=[0], scale=float(s[1] / s[0]))])
    return session, float(s[1])


@pytest.mark.parametrize("measure", [True, False])
def test_the_api_warns_about_near_tied_components_as_apply_does(measure, capsys):
    session, _ = _tied_session()
    capsys.readouterr()
    tied = session.compute([Edit(layer=1, head=0, circuit="ov", components=[0], scale=2.0)], measure=measure)
    assert [w for w in tied.warnings if "layer 1 head 0 OV component 0" in w and "not stable" in w]
    with session.edited([Edit(layer=1, head=0, circuit="ov", components=[0], scale=2.0)]):
        pass
    assert "not stable" in capsys.readouterr().err
    # Scaling the whole tied run alike is the same edit in any basis: no warning.
    alike = session.compute([Edit(layer=1, head=0, circuit="ov", components=[0, 1], scale=2.0)], measure=measure)
    assert not [w for w in alike.warnings if "not stable" in w]


def test_bench_compare_and_search_warn_about_near_tied_components(capsys):
    from tiny import word_tokenizer

    from th_edit import ui

    session, _ = _tied_session(word_tokenizer())
    capsys.readouterr()
    tied = [Edit(layer=1, head=0, circuit="ov", components=[0], scale=2.0)]
    th_edit.bench.paired(session, tied, tasks=["ioi"], n_prompts=2, kl=False)  # what `bench --compare` runs
    assert capsys.readouterr().err.count("not stable") == 1
    # A search computes without measuring and shows each distinct warning once over its trials.
    shown: set[str] = set()
    for _ in range(3):
        ui.warn_new(session.compute(tied, measure=False).warnings, shown)
    assert capsys.readouterr().err.count("not stable") == 1


def test_apply_and_the_api_share_one_edit_computation(tmp_path):
    from th_edit.apply import compute, prepare_file

    base = tiny_checkpoint(tmp_path / "base", "llama")
    prepared = prepare_file(recipe_file(tmp_path / "r.yaml", base))
    checkpoint = compute(prepared)
    live = Session(AutoModelForCausalLM.from_pretrained(base)).compute(parse_recipe(
        (tmp_path / "r.yaml").read_text(), "r.yaml"))
    assert type(checkpoint) is type(live)
    assert checkpoint.values.keys() == live.values.keys()
    for name in checkpoint.values:
        assert torch.equal(checkpoint.values[name], live.values[name])
    assert [r.as_dict() for r in checkpoint.reports] == [r.as_dict() for r in live.reports]


def test_reports_come_in_recipe_order():
    session = Session(tiny_model("llama"))
    edits = [Edit(layer=2, head=3, circuit="ov", components=[1], scale=2.0),
             Edit(layer=0, head=1, circuit="qk", components=[0], scale=0.5),
             Edit(layer=2, head=0, circuit="ov", components=[0], scale=3.0)]
    computed = session.compute(edits)
    assert [(r.layer, r.head, r.circuit) for r in computed.reports] == [(2, 3, "ov"), (0, 1, "qk"), (2, 0, "ov")]
    assert computed.reports[0].components[0].target == pytest.approx(2.0 * float(session.svd(2, 3, "ov").S[1]))


def test_a_report_made_inside_an_edited_block_says_the_model_is_edited():
    session = Session(tiny_model("llama"), reference="tiny")
    assert session.label == "tiny" and not session.is_edited
    with session.edited([Edit(layer=1, head=0, circuit="ov", components=[0], scale=2.0)]):
        assert session.is_edited and session.label == "tiny (edited)"
    assert session.label == "tiny"


@pytest.mark.parametrize("scale", [float("nan"), float("inf"), -1.0])
def test_a_bad_edit_built_in_python_is_a_one_line_user_error(scale):
    with pytest.raises(th_edit.UserError) as caught:
        Edit(layer=0, head=0, circuit="ov", components=[0], scale=scale)
    assert "\n" not in str(caught.value) and str(caught.value).startswith("Edit: scale ")
