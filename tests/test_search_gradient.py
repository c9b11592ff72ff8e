"""`th-edit search --method gradient`: the differentiable edit is the weight edit, the fit is seeded and
sees tuning prompts only, rounding drops scales near 1."""

import dataclasses
import math

import pytest
import torch
from tiny import tiny_checkpoint

import th_edit
from th_edit.hooks import ComponentScales, components_scaled, ov_components
from th_edit.recipe import Edit
from th_edit.search import pipeline
from th_edit.edit import ambiguous_components
from th_edit.search.gradient import GradientSettings, rounded_edits, tied_runs
from th_edit.search.evaluate import TrialScores
from th_edit.search.optimize import Limits
from th_edit.search.pipeline import SearchSettings, search
from th_edit.search.report import held_out_table
from th_edit.tasks import registry
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


def test_rounding_scales_a_run_of_tied_singular_values_alike():
    # Components 2, 3, 4 are near-tied: any rotation among them is an equally valid SVD, so a recipe
    # must scale all three alike. 2 and 3 were fitted (ln 2, ln 4), 4 was not (0): the run's mean ln 2.
    singular_values = torch.tensor([9.0, 5.0, 3.0, 3.0001, 2.9999, 1.0], dtype=torch.float64)
    runs = tied_runs(singular_values)
    assert runs == [[2, 3, 4]]
    candidate = Candidate(0, 0, "ov", (3, 2, 0))
    theta = torch.log(torch.tensor([4.0, 2.0, 3.0], dtype=torch.float64))
    edits = rounded_edits([candidate], [theta], quantum=0.05, tolerance=0.05, ties=[runs])
    assert [e.components for e in edits] == [[2, 3, 4], [0]]  # by ascending scale
    assert [e.scale for e in edits] == pytest.approx([2.0, 3.0], rel=0.03)
    assert not ambiguous_components({k: e.scale for e in edits for k in e.components}, singular_values)
    # without the ties the same fit names the tied components with different scales: ambiguous
    untied = rounded_edits([candidate], [theta], quantum=0.05, tolerance=0.05)
    assert ambiguous_components({k: e.scale for e in untied for k in e.components}, singular_values)


class _KLGrowsWithScale:
    """A stand-in evaluator: KL is the sum of (ln α)² over the recipe, accuracy rises with it up to a peak."""

    def __init__(self, peak: float):
        self.prompts, self.objective, self.peak, self.scored, self.interrupt_at = [], "candidate", peak, [], None
        self.base = TrialScores({4: 0.2}, 1.0, 0.0, 10)

    def evaluate(self, edit, desc=None):
        if len(self.scored) == self.interrupt_at:
            raise KeyboardInterrupt
        size = sum(math.log(a) ** 2 for head_edit, _ in edit.result.written for a in head_edit.scales.values())
        self.scored.append(size)
        return TrialScores({4: 0.2 + min(size, self.peak) - max(0.0, size - self.peak)}, 1.0, size, 10)


@pytest.mark.parametrize("peak, budget, expected", [
    (10.0, 1.0, "grown"),  # KL 0.08 at the fit's scales, target 0.7: grown while accuracy rises and the KL allows
    (10.0, 0.05, "shrunk"),  # over the budget at the fit's scales: shrunk until within
    (0.05, 1.0, "kept"),  # budget left but accuracy falls when grown: the fit's own scales are chosen
])
def test_rounded_recipe_is_grown_or_shrunk_along_the_fitted_direction(session, monkeypatch, peak, budget, expected):
    from th_edit.search import gradient

    theta = torch.full((2,), math.log(1.22), dtype=torch.float64)  # two components, KL (ln 1.22)² · 2 = 0.08
    monkeypatch.setattr(gradient, "fit_log_scales", lambda *a, **k: [theta.clone()])
    evaluator = _KLGrowsWithScale(peak)
    limits = Limits(kl_budget=budget, max_ioi_drop=0.5)
    result = gradient.gradient_search(session, evaluator, [Candidate(1, 0, "ov", (0, 1))], None, limits, 0, GradientSettings())
    kls = [t.scores.kl for t in result.trials]
    chosen = result.best
    if expected == "grown":
        assert len(kls) >= 3 and kls == sorted(kls) and chosen.scores.kl > kls[0]
        assert all(kl < 0.7 * budget for kl in kls[:-1])  # grown only while under the fit's KL target
    elif expected == "shrunk":
        assert kls == sorted(kls, reverse=True) and not result.trials[0].feasible and chosen.feasible
        assert chosen is result.trials[-1]
    else:
        assert len(kls) == 2 and kls[1] > kls[0] and chosen is result.trials[0]


def test_ctrl_c_during_the_exact_scorings_keeps_the_finished_ones(session, monkeypatch):
    from th_edit.search import gradient

    theta = torch.full((2,), math.log(1.22), dtype=torch.float64)
    monkeypatch.setattr(gradient, "fit_log_scales", lambda *a, **k: [theta.clone()])
    evaluator = _KLGrowsWithScale(10.0)
    evaluator.interrupt_at = 2  # the third scoring is stopped by Ctrl-C
    result = gradient.gradient_search(session, evaluator, [Candidate(1, 0, "ov", (0, 1))], None, Limits(1.0, 0.5), 0,
                                      GradientSettings())
    assert result.interrupted and len(result.trials) == 2 and result.best is result.trials[1]


def test_a_binding_limit_is_met_by_shrinking_past_six_scorings(session, monkeypatch):
    """A limit the fitted direction meets only at a fifth of its size (as --min-chat-agreement can be) is
    met: the line search keeps shrinking (here 8 shrinks, 9 scorings) instead of giving up at 6."""
    from th_edit.search import gradient

    theta = torch.full((2,), math.log(2.0), dtype=torch.float64)  # KL 2·(ln 2)² = 0.96 at the fit's scales
    monkeypatch.setattr(gradient, "fit_log_scales", lambda *a, **k: [theta.clone()])
    result = gradient.gradient_search(session, _KLGrowsWithScale(10.0), [Candidate(1, 0, "ov", (0, 1))], None,
                                      Limits(kl_budget=0.04, max_ioi_drop=0.5), 0, GradientSettings())
    assert len(result.trials) > 6 and not any(t.feasible for t in result.trials[:-1])
    assert result.best is result.trials[-1] and result.best.scores.kl <= 0.04


@pytest.mark.parametrize("objective", ["candidate", "top1"])
def test_the_fit_guards_ioi_by_the_objectives_measure(session, monkeypatch, objective):
    """Under --objective top1 the fit's recall term and its IOI guard both use the answer's log-probability
    over the whole vocabulary (what greedy decoding emits); under candidate both use it among the candidates."""
    from th_edit.search import gradient
    from th_edit.tasks.neutral import neutral_set

    calls = []
    plain = gradient._answer_log_probs

    def recording(cache, b, group, targets, over_vocabulary=False):
        calls.append(over_vocabulary)
        return plain(cache, b, group, targets, over_vocabulary)

    monkeypatch.setattr(gradient, "_answer_log_probs", recording)
    prompts = build_prompts(session.tokenizer, ("laundry", "ioi"), [2, 3], 4, 0)
    gradient.fit_log_scales(session, prompts, neutral_set(session.tokenizer, limit=3), CANDIDATES,
                            SETTINGS.limits, 0, dataclasses.replace(GRADIENT, steps=2), objective)
    assert len(calls) >= 3 and set(calls) == {objective == "top1"}  # base guard, then objective + guard per step


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

    def corrupted_transfer(session, settings):
        prompts = pipeline.transfer_prompts(session, settings)
        return [dataclasses.replace(p, answer=next(c for c in p.candidates if c != p.answer)) for p in prompts]

    second = _run(session, held_out=corrupted, transfer=corrupted_transfer)
    assert [t.as_dict() for t in second.result.trials] == [t.as_dict() for t in first.result.trials]
    best = first.result.best
    assert best is not None and best.edits  # limits this loose let the first rounded recipe through
    assert second.result.best.edits == best.edits
    assert second.chosen.paired != first.chosen.paired  # the corruption did reach the held-out numbers
    # The forms no search tunes on, judged after the choice: every transfer form, per N, candidate and top-1.
    # (the tiny tokenizer starts two of places' cities with one token: that form is left out with a warning)
    assert {t.name for t in registry.transfer_forms()} == {"people", "places"} and set(first.transfer) == {"people"}
    for paired in first.transfer.values():
        assert [row["n_items"] for row in paired["by_n"]] == list(SETTINGS.n_items)
        assert all(row["n"] == SETTINGS.held_out_prompts and "top1" in row["metrics"] for row in paired["by_n"])
    assert second.transfer != first.transfer
    table = held_out_table(first)
    assert "forms the search never saw" in table and "people (top-1)" in table and "people (candidate)" in table
    assert "IOI top-1 Δ" in table and first.chosen.ioi_top1_change is not None
    header = pipeline.evidence_header(first)  # the written recipe's comment: candidate and top-1 per N, IOI both
    assert header.count("; top-1 ") == len(SETTINGS.n_items) and "IOI change" in header and "(top-1 " in header
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
            "--max-ioi-drop", "100", "--min-chat-agreement", "0", "--out", str(out)]
    refused = CliRunner().invoke(main, [*args, "--resume"])
    assert refused.exit_code == 2 and "--method tpe" in refused.stderr and not out.parent.exists()
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    report = json.loads(out.with_suffix(".search.json").read_text())
    assert report["method"] == "gradient" and report["gradient"]["steps"] == 3
    assert report["settings"]["limits"]["min_chat_agreement"] == 0.0
    assert all(t["scores"]["neutral_chat_agreement"] is not None for t in report["trials"])
    assert not out.with_suffix(".study.log").exists()
    applied = CliRunner().invoke(main, ["--quiet", "apply", str(out), "--no-bench", "--out", str(tmp_path / "edited")])
    assert applied.exit_code == 0, applied.output
