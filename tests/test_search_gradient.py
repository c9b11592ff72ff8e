"""`th-edit search --method gradient`: the differentiable edit is the weight edit, the fit is seeded and
sees tuning prompts only, rounding drops scales near 1."""

import dataclasses

import pytest
import torch
from tiny import tiny_checkpoint

import th_edit
from th_edit.hooks import ComponentScales, components_scaled, ov_components
from th_edit.recipe import Edit
from th_edit.search import pipeline
from th_edit.search.gradient import GradientSettings, rounded_edits
from th_edit.search.optimize import Limits
from th_edit.search.pipeline import SearchSettings, search
from th_edit.search.space import Candidate
from th_edit.tasks.sets import build_prompts

CANDIDATES = [Candidate(1, 0, "ov", (0, 1, 3)), Candidate(2, 1, "ov", (0, 2))]
SETTINGS = SearchSettings(n_items=(2, 3), seed=1, limits=Limits(kl_budget=0.5, max_ioi_drop=0.5), tune_prompts=8,
                          held_out_prompts=6, quick_prompts=3, tune_kl_texts=8, batch_size=8, whole_head_scales=(2.0,),
                          attribution=False)
GRADIENT = GradientSettings(steps=6, learning_rate=0.2, batch_prompts=6, batch_guard_prompts=4, batch_texts=3)


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    return th_edit.load(str(tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "m", "llama", seed=2)))


def test_differentiable_edit_equals_the_weight_edit(session):
    """Per-component scales through the z hook (differentiable in α) give the forward pass of the weights
    `plan_edit` writes for the same scales (each component its own recipe edit)."""
    heads = {(1, 0): [0, 1, 3], (2, 1): [0, 2, 5], (2, 3): [1]}
    alphas = {(1, 0): [2.5, 0.5, 1.3], (2, 1): [3.0, 1.7, 0.0], (2, 3): [1.9]}
    edits = [Edit(layer=layer, head=head, circuit="ov", components=[k], scale=a)
             for (layer, head), ks in heads.items() for k, a in zip(ks, alphas[(layer, head)])]
    prompts = build_prompts(session.tokenizer, ("laundry",), [3], 3, 0)
    batch = session.tokenizer([p.prompt for p in prompts[:1]], return_tensors="pt")
    with torch.no_grad():
        before = session.model(**batch).logits
        with session.edited(edits):
            weights = session.model(**batch).logits
    thetas = {h: torch.tensor(a, dtype=torch.float64, requires_grad=True) for h, a in alphas.items()}
    scales = [ComponentScales(layer, head, *(t.float() for t in ov_components(session, layer, head, ks)), thetas[(layer, head)])
              for (layer, head), ks in heads.items()]
    with components_scaled(session.model, session.adapter, scales):
        hooked = session.model(**batch).logits
    assert (weights - before).abs().max() > 1e-2  # the edit does something
    torch.testing.assert_close(hooked, weights, atol=2e-5, rtol=1e-4)
    hooked.sum().backward()
    assert all(t.grad is not None and bool(t.grad.abs().sum() > 0) for t in thetas.values())


def test_rounding_drops_scales_near_one_and_groups_equal_ones():
    candidates = [Candidate(3, 1, "ov", (4, 0, 7, 2)), Candidate(1, 0, "ov", (5,))]
    thetas = [torch.log(torch.tensor([2.0, 1.03, 0.97, 2.02], dtype=torch.float64)),
              torch.log(torch.tensor([0.5], dtype=torch.float64))]
    edits = rounded_edits(candidates, thetas, quantum=0.05, tolerance=0.05)
    assert [(e.layer, e.head, e.components) for e in edits] == [(1, 0, [5]), (3, 1, [2, 4])]
    assert edits[1].scale == pytest.approx(2.0, rel=0.03) and edits[0].scale == pytest.approx(0.5, rel=0.03)
    assert rounded_edits(candidates, [t * 0 for t in thetas], 0.05, 0.05) == []


def _run(session, **kwargs):
    return search(session, CANDIDATES, SETTINGS, method="gradient", gradient=GRADIENT, **kwargs)


@pytest.mark.pipeline
def test_gradient_search_is_deterministic_and_ignores_held_out_prompts(session):
    first = _run(session)
    assert first.method == "gradient" and first.result.trials
    assert all(t.stage == "full" for t in first.result.trials)

    def corrupted(session, settings):
        """Held-out prompts whose answers are all wrong: they may change the held-out numbers only."""
        prompts = pipeline.held_out_prompts(session, settings)
        return [dataclasses.replace(p, answer=next(c for c in p.candidates if c != p.answer)) for p in prompts]

    second = _run(session, held_out=corrupted)
    assert [t.as_dict() for t in second.result.trials] == [t.as_dict() for t in first.result.trials]
    best = first.result.best
    assert best is not None and best.edits  # limits this loose let the first rounded recipe through
    assert second.result.best.edits == best.edits
    assert second.chosen.paired != first.chosen.paired  # the corruption did reach the held-out numbers
    assert [h.kind for h in first.held_out] == ["search", "whole-head"]
    assert {(e.layer, e.head) for e in best.edits} <= {(c.layer, c.head) for c in CANDIDATES}


@pytest.mark.cli
def test_search_command_with_method_gradient_writes_a_recipe_that_apply_accepts(tmp_path):
    import json

    from click.testing import CliRunner

    from th_edit.cli import main

    base = tiny_checkpoint(tmp_path / "m", "llama", seed=2)
    channels = tmp_path / "channels.json"
    channels.write_text(json.dumps({"channels": {"inhibition": []}, "pairs": [
        {"sender": "1.0", "receiver": "2.1", "channel": "inhibition", "z": [3.0, 1.0, 0.5]}]}))
    out = tmp_path / "s" / "recipe.yaml"
    args = ["--quiet", "search", str(base), "--channels", str(channels), "--n-items", "2-3", "--method", "gradient",
            "--steps", "3", "--rank-by", "weights", "--tune-prompts", "4", "--held-out-prompts", "4", "--kl-budget", "1",
            "--max-ioi-drop", "100", "--out", str(out)]
    refused = CliRunner().invoke(main, [*args, "--resume"])
    assert refused.exit_code == 2 and "--method tpe" in refused.stderr and not out.parent.exists()
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    report = json.loads(out.with_suffix(".search.json").read_text())
    assert report["method"] == "gradient" and report["gradient"]["steps"] == 3
    assert not out.with_suffix(".study.log").exists()
    applied = CliRunner().invoke(main, ["--quiet", "apply", str(out), "--no-bench", "--out", str(tmp_path / "edited")])
    assert applied.exit_code == 0, applied.output
