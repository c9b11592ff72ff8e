"""`search --min-chat-agreement`: greedy agreement on neutral chat prompts, measured on every fully scored
trial and on the held-out chat prompts, as a constraint of both search methods."""

import pytest
from tiny import tiny_checkpoint

import th_edit
from th_edit.errors import UserError
from th_edit.recipe import Edit
from th_edit.runtime import pad_id
from th_edit.runtime.generate import greedy_continuations
from th_edit.search.evaluate import TrialEvaluator, TrialScores
from th_edit.search.gradient import GradientSettings
from th_edit.search.optimize import Limits
from th_edit.search.pipeline import SearchSettings, search, split_chat
from th_edit.search.space import Candidate
from th_edit.search.study import check_same
from th_edit.tasks.sets import build_prompts


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    return th_edit.load(str(tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "m", "llama", seed=2)))


def test_the_chat_limit_is_a_constraint_only_when_set():
    base = TrialScores({4: 0.5}, 0.9, 0.0, 10)
    scores = TrialScores({4: 0.6}, 0.9, 0.01, 10, chat_agreement=0.75)
    assert Limits(0.02, 0.02).violations(scores, base) == pytest.approx([-0.01, -0.02])  # as before: two constraints
    assert Limits(0.02, 0.02, 0.9).violations(scores, base) == pytest.approx([-0.01, -0.02, 0.15])
    unmeasured = TrialScores({4: 0.6}, 0.9, 0.01, 10)  # a quick look measures no chat replies
    assert Limits(0.02, 0.02, 0.9).violations(unmeasured, base)[2] <= 0


def test_a_study_recorded_before_the_limit_existed_resumes_without_it():
    recorded = {"settings": {"limits": {"kl_budget": 0.02, "max_ioi_drop": 0.02}}}
    check_same(recorded, {"settings": {"limits": {"kl_budget": 0.02, "max_ioi_drop": 0.02, "min_chat_agreement": None}}},
               "study")
    with pytest.raises(UserError, match="min_chat_agreement"):
        check_same(recorded, {"settings": {"limits": {"kl_budget": 0.02, "max_ioi_drop": 0.02,
                                                      "min_chat_agreement": 0.9}}}, "study")


@pytest.mark.pipeline
def test_full_scoring_measures_chat_agreement_as_a_plain_greedy_run_does(session):
    prompts = build_prompts(session.tokenizer, ("laundry", "ioi"), [2], 4, 0)
    chats, held = split_chat(session)
    assert len(chats) == len(held) == 16 and chats != held
    evaluator = TrialEvaluator(session, prompts, None, layer=1, batch_size=8, chat=chats)
    edit = session.compute([Edit(layer=1, head=h, circuit="ov", components=list(range(8)), scale=0.0) for h in range(4)]
                           + [Edit(layer=2, head=h, circuit="ov", components=list(range(8)), scale=3.0) for h in range(4)],
                           measure=False)
    full, quick = evaluator.evaluate(edit), evaluator.evaluate(edit, quick=True)
    assert quick.chat_agreement is None and evaluator.evaluate(None).chat_agreement is None
    tokens = 16
    base = greedy_continuations(session.model, session.tokenizer, chats, tokens, 8, pad_id(session.tokenizer))
    with session.edited(edit):
        after = greedy_continuations(session.model, session.tokenizer, chats, tokens, 8, pad_id(session.tokenizer))
    expected = sum(a == b for a, b in zip(base, after)) / len(chats)
    assert full.chat_agreement == pytest.approx(expected) and expected < 1.0  # the edit does change replies
    assert evaluator.chat_agreement_of(edit) == pytest.approx(expected)
    unchanged = session.compute([Edit(layer=2, head=0, circuit="ov", components=[0], scale=1.0)], measure=False)
    assert evaluator.evaluate(unchanged).chat_agreement == 1.0


@pytest.mark.pipeline
def test_a_search_with_the_limit_judges_every_full_trial_by_it(session):
    settings = SearchSettings(n_items=(2, 3), seed=1, limits=Limits(kl_budget=0.5, max_ioi_drop=0.5, min_chat_agreement=1.0),
                              tune_prompts=6, held_out_prompts=4, quick_prompts=2, tune_kl_texts=6, batch_size=8,
                              whole_head_scales=(), attribution=False)
    report = search(session, [Candidate(1, 0, "ov", (0, 1, 3)), Candidate(2, 1, "ov", (0, 2))], settings,
                    method="gradient", gradient=GradientSettings(steps=4, learning_rate=0.5, batch_prompts=6,
                                                                  batch_guard_prompts=4, batch_texts=3))
    assert report.result.trials
    for trial in report.result.trials:
        assert trial.scores.chat_agreement is not None
        assert trial.feasible == (trial.scores.chat_agreement >= 1.0 and trial.scores.kl <= 0.5
                                  and report.base_tuning.ioi - trial.scores.ioi <= 0.5)
    assert all(h.chat_agreement is not None for h in report.held_out)  # the held-out chat prompts: always measured


@pytest.mark.cli
@pytest.mark.parametrize("method", ["tpe", "gradient"])
def test_the_limit_on_a_model_without_a_chat_format_is_one_line_and_writes_nothing(tmp_path, method):
    import json

    from click.testing import CliRunner

    from th_edit.cli import main

    base = tiny_checkpoint(tmp_path / "m", "llama", seed=2)
    (base / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((base / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (base / "tokenizer_config.json").write_text(json.dumps(config))
    out = tmp_path / "s" / "recipe.yaml"
    result = CliRunner().invoke(main, ["--quiet", "search", str(base), "--method", method, "--min-chat-agreement", "90",
                                       "--n-items", "2-3", "--out", str(out)])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--min-chat-agreement needs the model's chat format" in lines[0]
    assert not out.parent.exists() or not any(out.parent.iterdir())


def test_a_top1_study_recorded_before_ioi_was_judged_by_top1_is_refused_and_a_candidate_one_resumes():
    """`--objective top1` once judged the IOI guard by candidate accuracy: resuming such a study would mix
    trials judged two ways. A candidate study (whose guard never changed) resumes as before."""
    from th_edit.search.study import settings_record

    options = {"kind": "ov", "heads": 8, "rank_by": "attribution", "channels_sha256": None}
    for objective, refused in (("candidate", False), ("top1", True)):
        mine = settings_record(SearchSettings(objective=objective), options)
        old = {k: v for k, v in mine.items() if k != "guard_measure"}  # what a study of the older th-edit holds
        check_same(mine, mine, "study")
        if refused:
            with pytest.raises(UserError, match="recorded before IOI was judged by the objective"):
                check_same(old, mine, "study")
        else:
            check_same(old, mine, "study")
