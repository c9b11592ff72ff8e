"""`th-edit search`: the fast trial evaluator, determinism, held-out isolation, interruption, resume."""

import dataclasses

import pytest
import torch
from tiny import tiny_checkpoint

import th_edit
from th_edit.bench import kl_sum, score_prompts
from th_edit.errors import UserError
from th_edit.recipe import Edit
from th_edit.search import optimize, pipeline
from th_edit.search.evaluate import TrialEvaluator
from th_edit.search.optimize import Limits
from th_edit.search.pipeline import SearchSettings, search
from th_edit.search.space import Candidate, candidates_from_channels, edits_for, whole_head_edits
from th_edit.session import Variant
from th_edit.tasks.neutral import neutral_set
from th_edit.tasks.sets import build_prompts

CANDIDATES = [Candidate(1, 0, "ov", (0, 1)), Candidate(1, 2, "ov", (1,)), Candidate(2, 1, "ov", (0, 2)),
              Candidate(2, 3, "qk", (0,))]
SETTINGS = SearchSettings(n_items=(2, 3), trials=6, seed=1, limits=Limits(kl_budget=0.5, max_ioi_drop=0.5),
                          tune_prompts=8, held_out_prompts=8, quick_prompts=3, tune_kl_texts=10, batch_size=8,
                          whole_head_scales=(1.5, 2.0))


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    return th_edit.load(str(tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "m", "llama", seed=2)))


@pytest.mark.pipeline
def test_evaluator_equals_a_plain_forward_pass(session):
    prompts = build_prompts(session.tokenizer, ("laundry", "ioi"), [2, 3], 7, 0)
    neutral = neutral_set(session.tokenizer, 12)
    evaluator = TrialEvaluator(session, prompts, neutral, layer=1, batch_size=4, quick_prompts=2)
    edit = session.compute([Edit(layer=1, head=0, circuit="ov", components=[0, 1], scale=4.0),
                            Edit(layer=2, head=3, circuit="qk", components=[0], scale=0.0)], measure=False)
    fast = evaluator.prompt_scores(edit)
    with session.edited(edit):
        plain = score_prompts(session.model, session.tokenizer, prompts, batch_size=5)
    assert [s.candidate_correct for s in fast] == [s.candidate_correct for s in plain]
    assert [s.logit_diff for s in fast] == pytest.approx([s.logit_diff for s in plain], abs=1e-5)
    total, count = kl_sum(Variant(session.model).forward, session.variant(edit).forward, session.tokenizer, None,
                          encoded=neutral.encoded)
    assert evaluator.kl_of(edit) == pytest.approx(total / count, rel=1e-4)
    assert total / count > 1e-6
    assert evaluator.evaluate(None).kl == pytest.approx(0.0, abs=1e-7)


def test_the_top1_objective_counts_the_argmax_over_the_vocabulary(session):
    """--objective top1: a trial's list-recall accuracy is the share of prompts whose answer is the
    argmax over the vocabulary, and so is IOI's (the guard: kept by what a user sees); an unknown one is refused."""
    prompts = build_prompts(session.tokenizer, ("laundry", "ioi"), [2, 3], 6, 0)
    plain = score_prompts(session.model, session.tokenizer, prompts, batch_size=5)
    for objective, field in (("candidate", "candidate_correct"), ("top1", "top1_correct")):
        scores = TrialEvaluator(session, prompts, None, layer=1, batch_size=4, objective=objective).base
        for n in (2, 3):
            right = [getattr(s, field) for p, s in zip(prompts, plain) if p.task == "laundry" and p.n_items == n]
            assert scores.laundry[n] == pytest.approx(sum(right) / len(right))
        ioi = [getattr(s, field) for p, s in zip(prompts, plain) if p.task == "ioi"]
        assert scores.ioi == pytest.approx(sum(ioi) / len(ioi))
    with pytest.raises(UserError, match="unknown search objective"):
        TrialEvaluator(session, prompts, None, layer=1, objective="generation")


def test_an_edit_below_the_cached_layer_is_refused(session):
    prompts = build_prompts(session.tokenizer, ("laundry",), [2], 4, 0)
    evaluator = TrialEvaluator(session, prompts, None, layer=2, batch_size=4)
    with pytest.raises(ValueError, match="below the cached layer"):
        evaluator.evaluate(session.compute([Edit(layer=1, head=0, circuit="ov", components=[0], scale=2.0)]))


def _run(session, tmp_path=None, **kwargs):
    return search(session, CANDIDATES, SETTINGS, draft=[Edit(layer=1, head=0, circuit="ov", components=[0], scale=2.0)],
                  **kwargs)


@pytest.mark.pipeline
def test_search_is_deterministic_and_ignores_held_out_prompts(session):
    first = _run(session)
    assert len(first.result.trials) == SETTINGS.trials
    assert {t.stage for t in first.result.trials} <= {"quick", "full"}

    def corrupted(session, settings):
        """Held-out prompts whose answers are all wrong: they may change the held-out numbers only."""
        prompts = pipeline.held_out_prompts(session, settings)
        return [dataclasses.replace(p, answer=next(c for c in p.candidates if c != p.answer)) for p in prompts]

    second = _run(session, held_out=corrupted)
    assert [t.as_dict() for t in second.result.trials] == [t.as_dict() for t in first.result.trials]
    assert (second.result.best is None) == (first.result.best is None)
    if first.result.best is not None:
        assert second.result.best.edits == first.result.best.edits
        assert second.chosen.paired != first.chosen.paired  # the corruption did reach the held-out numbers
        kinds = [h.kind for h in first.held_out]
        assert kinds[0] == "search" and kinds.count("whole-head") == 2 and kinds[-1] == "draft"


@pytest.mark.pipeline
def test_ctrl_c_keeps_the_trials_so_far_and_resume_continues(session, tmp_path, monkeypatch):
    journal = tmp_path / "study.log"
    real = optimize.choices_of
    calls = {"n": 0}

    def interrupting(trial, candidates):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(trial, candidates)

    monkeypatch.setattr(optimize, "choices_of", interrupting)
    interrupted = _run(session, storage=journal)
    assert interrupted.result.interrupted and len(interrupted.result.trials) == 3
    monkeypatch.setattr(optimize, "choices_of", real)
    resumed = _run(session, storage=journal)
    assert not resumed.result.interrupted and len(resumed.result.trials) == SETTINGS.trials
    assert [t.as_dict() for t in resumed.result.trials[:3]] == [t.as_dict() for t in interrupted.result.trials]


def test_edits_for_takes_the_first_k_components_of_each_head():
    edits = edits_for({Candidate(2, 1, "ov", (3, 0, 5)): (2, 2.0), Candidate(1, 0, "qk", (0,)): (1, 1.5),
                       Candidate(3, 0, "ov", (1,)): (0, 3.0)})
    assert [(e.layer, e.head, e.circuit, e.components, e.scale) for e in edits] == [
        (1, 0, "qk", [0], 1.5), (2, 1, "ov", [0, 3], 2.0)]
    assert Candidate(1, 0, "ov", tuple(range(40))).k_choices() == [0, 1, 2, 4, 8, 16, 32, 40]
    assert Candidate(1, 0, "ov", (4, 2, 7)).k_choices() == [0, 1, 2, 3]


@pytest.mark.pipeline
def test_attribution_orders_each_heads_components_by_their_gain(session):
    """Components are re-ranked by the hooked gradient on the prompts given; only helpful ones stay."""
    from th_edit.search.attribution import component_gradients, ranked_by_attribution

    prompts = build_prompts(session.tokenizer, ("laundry",), [2, 3], 6, 0)
    candidates = [Candidate(1, 0, "ov", (0,), "from channels"), Candidate(2, 3, "qk", (1,))]
    ranked = ranked_by_attribution(session, prompts, candidates)
    gradient = component_gradients(session, prompts, [(1, 0)])[(1, 0)]
    helpful = [int(k) for k in torch.argsort(gradient, descending=True) if gradient[k] > 0]
    assert 0 < len(helpful) < len(gradient)  # some help, some hurt: the ranking has something to do
    assert ranked[0].components == tuple(helpful) and ranked[0].evidence.startswith("from channels; ")
    assert ranked[1] == candidates[1]


def test_whole_head_scaling_scales_w_o(session):
    """Every OV component scaled by α is W_O scaled by α (the blunt baseline)."""
    edit = session.compute(whole_head_edits([(1, 2)], 2.0, session.info.d_head), measure=False)
    (name, value), = edit.values.items()
    original = session.parameters.get(name)
    slot = session.adapter.o_slot(1, 2)
    assert torch.allclose(slot.read({name: value}), 2.0 * slot.read({name: original}), atol=1e-5)


def test_candidates_from_channels_json():
    record = {"channels": {"inhibition": [
        {"sender": {"layer": 20, "head": 0, "component": 1}, "receiver": {"layer": 23, "head": 3}, "weight_score": 0.4,
         "z": 5.0},
        {"sender": {"layer": 20, "head": 0, "component": 1}, "receiver": {"layer": 25, "head": 1}, "weight_score": 0.3,
         "z": 4.0},
        {"sender": {"layer": 18, "head": 2, "component": 0}, "receiver": {"layer": 23, "head": 3}, "weight_score": 0.2,
         "z": 6.0},
    ]}}
    found = candidates_from_channels(record)
    assert [(c.layer, c.head, c.circuit, c.components) for c in found] == [(18, 2, "ov", (0,)), (20, 0, "ov", (1,))]
    assert "23.3" in found[0].evidence
    record["pairs"] = [{"sender": "20.0", "receiver": "23.3", "channel": "inhibition", "z": [1.0, 9.0, 2.5, 0.1]},
                       {"sender": "17.5", "receiver": "23.3", "channel": "inhibition", "z": [0.5, 2.0]},
                       {"sender": "9.9", "receiver": "23.3", "channel": "duplicate_token", "z": [8.0]}]
    filled = candidates_from_channels(record)
    # reported components first (by z), then the rest of the head's components by their best z
    assert [(c.layer, c.head, c.components) for c in filled] == [(18, 2, (0,)), (20, 0, (1, 2, 0, 3)), (17, 5, (1, 0))]
    assert "below the channel threshold" in filled[2].evidence
    assert [c.name for c in candidates_from_channels(record, limit=2)] == ["18.2.ov", "20.0.ov"]
    below_threshold_only = candidates_from_channels({"channels": {"inhibition": []}, "pairs": record["pairs"]})
    assert [(c.layer, c.head, c.components) for c in below_threshold_only] == [(20, 0, (1, 2, 0, 3)), (17, 5, (1, 0))]
    with pytest.raises(UserError, match="no 'inhibition' channel"):
        candidates_from_channels({"channels": {}})
    with pytest.raises(UserError, match=r"channels.inhibition\[0\]"):
        candidates_from_channels({"channels": {"inhibition": [{"sender": {}}]}})


@pytest.mark.pipeline
def test_a_search_without_channels_json_offers_as_many_heads_as_heads_asks_for(session):
    """The search's own channel analysis examines max(5, --heads) heads per role: `--heads 8` used
    to be capped at the 5 senders of a 5-heads-per-role analysis."""
    from th_edit.search.candidates import channel_candidates

    for heads in (3, 8):
        candidates, _ = channel_candidates(session, "inhibition", None, 0, heads)
        assert len(candidates) == heads


@pytest.mark.cli
def test_search_command_writes_a_recipe_that_apply_accepts(tmp_path):
    """The CLI end to end on a tiny model: recipe, report, frontier plot; the recipe applies."""
    import json

    from click.testing import CliRunner

    from th_edit.cli import main

    base = tiny_checkpoint(tmp_path / "m", "llama", seed=2)
    channels = tmp_path / "channels.json"
    channels.write_text(json.dumps({"channels": {"inhibition": []}, "pairs": [
        {"sender": "1.0", "receiver": "2.1", "channel": "inhibition", "z": [3.0, 1.0, 0.5]},
        {"sender": "1.2", "receiver": "2.1", "channel": "inhibition", "z": [0.1, 2.0]}]}))
    out = tmp_path / "s" / "recipe.yaml"
    args = ["--quiet", "search", str(base), "--channels", str(channels), "--n-items", "2-3", "--trials", "10",
            "--tune-prompts", "4", "--held-out-prompts", "4", "--kl-budget", "1", "--max-ioi-drop", "100",
            "--out", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    report = json.loads(out.with_suffix(".search.json").read_text())
    assert [c["layer"] for c in report["candidates"]] and len(report["trials"]) == 10
    again = CliRunner().invoke(main, args)  # the outputs exist now: refused, nothing replaced
    assert again.exit_code == 2 and "--force" in again.stderr
    assert out.with_suffix(".frontier.png").stat().st_size > 0  # limits this loose always let a trial through
    applied = CliRunner().invoke(main, ["--quiet", "apply", str(out), "--no-bench", "--out", str(tmp_path / "edited")])
    assert applied.exit_code == 0, applied.output


# ----------------------------------------------------------------------------------------------
# Write failures: one line, and no journal left that holds nothing to resume


@pytest.fixture(scope="module")
def search_args(tmp_path_factory):
    import json

    root = tmp_path_factory.mktemp("search-cli")
    base = tiny_checkpoint(root / "m", "llama", seed=2)
    channels = root / "channels.json"
    channels.write_text(json.dumps({"channels": {"inhibition": []}, "pairs": [
        {"sender": "1.0", "receiver": "2.1", "channel": "inhibition", "z": [3.0, 1.0, 0.5]}]}))
    return ["--quiet", "search", str(base), "--channels", str(channels), "--n-items", "2-3", "--trials", "2",
            "--tune-prompts", "4", "--held-out-prompts", "4", "--kl-budget", "1", "--max-ioi-drop", "100"]


def _search(args, out):
    from click.testing import CliRunner

    from th_edit.cli import main

    return CliRunner().invoke(main, [*args, "--out", str(out)])


def _one_line(result, *fragments):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if not line.startswith("warning: ")]  # a search's own warnings
    assert len(lines) == 1 and lines[0].startswith("error: ") and all(f in lines[0] for f in fragments), result.stderr
    return lines[0]


def _full_journal(monkeypatch, when):
    """The journal's disk fills: at its first write, or as a trial's result is written."""
    import errno
    import os

    from optuna.storages.journal import JournalFileBackend

    real = JournalFileBackend.append_logs

    def append_logs(self, logs):
        if when(logs):
            with open(self._file_path, "ab") as f:
                f.write(b'{"op_code": 6, "trial')  # half a line, as a full disk leaves it
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, logs)

    monkeypatch.setattr(JournalFileBackend, "append_logs", append_logs)


@pytest.mark.cli
@pytest.mark.parametrize("when", ["creating the study", "telling a trial"])
def test_a_full_disk_under_the_journal_is_one_line_and_leaves_nothing(search_args, tmp_path, monkeypatch, when):
    """Optuna hides a failed write of a trial's result behind an AssertionError: still one line."""
    _full_journal(monkeypatch, (lambda logs: True) if when == "creating the study" else
                  (lambda logs: logs[0]["op_code"] == 6))  # SET_TRIAL_STATE_VALUES
    out = tmp_path / "new" / "recipe.yaml"
    _one_line(_search(search_args, out), f"writing {out.with_suffix('.study.log')} failed: no space left on device")
    assert list(tmp_path.iterdir()) == []  # no journal stub (it would block the next run), no directory


@pytest.mark.cli
def test_finished_trials_survive_a_failure_and_the_error_says_how_to_resume(search_args, tmp_path, monkeypatch):
    from pathlib import Path

    real = Path.write_text

    def full_at_the_report(self, *args, **kwargs):
        if ".search.json" in self.name:
            raise OSError(28, "No space left on device")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full_at_the_report)
    out = tmp_path / "recipe.yaml"
    journal = out.with_suffix(".study.log")
    _one_line(_search(search_args, out), "no space left on device",
              f"{journal} keeps 2 finished trial(s): run again with --resume")
    assert sorted(p.name for p in tmp_path.iterdir()) == [journal.name]
    kept = journal.read_bytes()
    _full_journal(monkeypatch, lambda logs: True)  # resumed, and the disk is still full: the journal stays as it was
    _one_line(_search([*search_args, "--trials", "3", "--resume"], out), "no space left on device", "--resume")
    assert journal.read_bytes() == kept and optimize.finished_trials(journal) == 2
    monkeypatch.undo()  # space again: the search resumes from the kept trials
    resumed = _search([*search_args, "--trials", "3", "--resume"], out)
    assert resumed.exit_code == 0, resumed.output
    assert optimize.finished_trials(journal) == 3 and out.with_suffix(".search.json").is_file()


@pytest.mark.parametrize("content,kept", [(b"", b""), (b"half", b""), (b"a\nb\n", b"a\nb\n"), (b"a\nb\nhal", b"a\nb\n"),
                                          (b"x" * 70000 + b"\n" + b"y" * 70000, b"x" * 70000 + b"\n")])
def test_a_record_cut_short_is_trimmed_from_the_journal(tmp_path, content, kept):
    journal = tmp_path / "s.study.log"
    journal.write_bytes(content)
    optimize.trim_partial_record(journal)
    assert journal.read_bytes() == kept


# ----------------------------------------------------------------------------------------------
# Refused before the model loads: --resume with no journal, another model's channels.json


@pytest.fixture
def no_search_model(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")
    monkeypatch.setattr("th_edit.commands.search.load_session", refuse)


@pytest.mark.cli
def test_resume_without_a_journal_is_one_line(search_args, tmp_path, no_search_model):
    out = tmp_path / "nothing-here" / "recipe.yaml"
    _one_line(_search([*search_args, "--resume"], out), "--resume", "no study journal", str(out.with_suffix(".study.log")))
    assert not (tmp_path / "nothing-here").exists()


@pytest.mark.parametrize("sender", ["7.0", "1.9"])  # the tiny llama has 3 layers of 6 heads
@pytest.mark.cli
def test_another_models_channels_are_refused_before_the_model_loads(search_args, tmp_path, no_search_model, sender):
    import json

    channels = tmp_path / "other.json"
    channels.write_text(json.dumps({"model": "some-larger-model", "channels": {"inhibition": []}, "pairs": [
        {"sender": sender, "receiver": "9.1", "channel": "inhibition", "z": [3.0, 1.0]}]}))
    args = [*search_args]
    args[args.index("--channels") + 1] = str(channels)
    _one_line(_search(args, tmp_path / "s" / "recipe.yaml"), str(channels), "is not a channel analysis of",
              "some-larger-model")


def test_search_writes_under_out_by_default():
    from th_edit.commands.search import search_command

    out = next(p for p in search_command.params if p.name == "out")
    assert out.default.parts[0] == "out"


@pytest.mark.parametrize("family", ["phi", "stablelm", "gptj", "falcon", "opt"])
def test_evaluator_equals_a_plain_forward_pass_phi_to_opt(family, tmp_path):
    """The cached-prefix evaluator on other layer conventions (Falcon's layers return a tuple)."""
    test_evaluator_equals_a_plain_forward_pass(th_edit.load(str(tiny_checkpoint(tmp_path / "m", family, seed=2))))


# ----------------------------------------------------------------------------------------------
# Ctrl-C after the first trial: the journal is there from before the first trial, and the best
# recipe so far is written (judged when the held-out evaluation finished, marked when it did not)


@pytest.mark.cli
@pytest.mark.parametrize("where", ["trials", "held-out", "both"])
def test_ctrl_c_after_the_first_trial_keeps_a_usable_recipe(search_args, tmp_path, monkeypatch, where):
    import json

    import yaml
    from click.testing import CliRunner

    from th_edit.cli import main

    out = tmp_path / "recipe.yaml"
    journal = out.with_suffix(".study.log")
    real_choices, real_held_out = optimize.choices_of, pipeline.evaluate_held_out
    calls = {"trials": 0}

    def choices(trial, candidates):
        assert "th_edit_settings" in journal.read_text()  # the journal holds the study before the first trial
        calls["trials"] += 1
        if where != "held-out" and calls["trials"] == 3:
            raise KeyboardInterrupt
        return real_choices(trial, candidates)

    def held_out(*args, **kwargs):
        if where != "trials":
            raise KeyboardInterrupt
        return real_held_out(*args, **kwargs)

    monkeypatch.setattr(optimize, "choices_of", choices)
    monkeypatch.setattr(optimize, "_worth_full", lambda *args: True)  # every trial fully scored: one can be chosen
    monkeypatch.setattr(pipeline, "evaluate_held_out", held_out)
    result = _search([*search_args, "--trials", "4"], out)
    report = json.loads(out.with_suffix(".search.json").read_text())
    recipe_text = out.read_text()
    assert report["interrupted"] == (where != "held-out") and report["held_out_interrupted"] == (where != "trials")
    assert len(report["trials"]) == (2 if where != "held-out" else 4)
    if where == "trials":  # judged on held-out prompts as usual
        assert result.exit_code == 0, result.output
        assert "NOT judged" not in recipe_text and out.with_suffix(".frontier.png").is_file()
        assert [line for line in result.stderr.splitlines() if not line.startswith("warning: ")] == []  # --quiet
    else:
        assert result.exit_code == 130, result.output
        lines = [line for line in result.stderr.splitlines() if not line.startswith("warning: ")]
        assert len(lines) == 1 and "NOT judged on held-out prompts" in lines[0] and "--resume" in lines[0], result.stderr
        assert "BEST SO FAR, NOT judged on held-out prompts" in recipe_text
        assert "NOT judged" in yaml.safe_load(recipe_text)["description"]
        assert report["held_out"] == [] and not out.with_suffix(".frontier.png").exists()
        chosen = next(t for t in report["trials"] if t["number"] == report["chosen_trial"])
        assert yaml.safe_load(recipe_text)["edits"] == chosen["edits"]
    assert journal.is_file()
    applied = CliRunner().invoke(main, ["--quiet", "apply", str(out), "--no-bench", "--out", str(tmp_path / "edited")])
    assert applied.exit_code == 0, applied.output
    if where != "trials":  # --resume --force judges the recipe
        monkeypatch.undo()
        resumed = _search([*search_args, "--trials", "4", "--resume", "--force"], out)
        assert resumed.exit_code == 0, resumed.output
        assert "NOT judged" not in out.read_text() and out.with_suffix(".frontier.png").is_file()
