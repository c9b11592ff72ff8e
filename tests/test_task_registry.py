"""The task registry: every task is one registered `Task`, and a new one (people, list recall of
names in other phrasings) works everywhere through the registry alone."""

import json

import pytest
from click.testing import CliRunner
from tiny import tiny_model, word_tokenizer

import th_edit
from th_edit.bench import render_report
from th_edit.cli import main
from th_edit.errors import UserError
from th_edit.recipe import parse_recipe
from th_edit.session import Session
from th_edit.tasks import read_jsonl, registry
from th_edit.tasks.mentions import locate_mentions
from th_edit.tasks.sets import build_prompts, setup_record


@pytest.fixture(scope="module")
def tok():
    from th_edit.models import load_tokenizer, resolve

    return load_tokenizer(resolve("smollm2-135m"))


def test_the_default_set_is_unchanged_by_a_new_task():
    assert registry.names()[:2] == ("laundry", "ioi") and "people" in registry.names()
    assert registry.default_names() == ("laundry", "ioi")
    assert registry.objective().name == "laundry" and [t.name for t in registry.guards()] == ["ioi"]
    assert parse_recipe("base_model: x\nedits: [{layer: 0, head: 0, circuit: ov, components: [0], scale: 2}]\n"
                        "benchmark: {}\n").benchmark.tasks == ["laundry", "ioi"]


def test_labels_come_from_the_task():
    laundry, ioi, people = (registry.get(name) for name in ("laundry", "ioi", "people"))
    assert (laundry.label(5), people.label(3), ioi.label(2)) == ("N=5", "N=3", "ioi")
    assert (laundry.position_name(1), ioi.position_name(0), ioi.position_name(1)) == ("p1", "ABBA", "BABA")
    with pytest.raises(UserError, match="unknown task 'sudoku'"):
        registry.get("sudoku")


def test_people_prompts_have_the_list_recall_shape(tok):
    prompts = build_prompts(tok, ["people"], [3, 5], 12, seed=1)
    assert {p.task for p in prompts} == {"people"} and sorted({p.n_items for p in prompts}) == [3, 5]
    names = set(th_edit.tasks.ioi.NAMES)
    for p in prompts:
        assert {c.strip() for c in p.candidates} <= names and p.candidates[p.answer_position] == p.answer
    # The answer is mentioned once, every other name twice, on tokens of their own (what the roles read).
    located, skipped = locate_mentions(tok, prompts)
    assert len(located) == len(prompts) and not skipped
    # Same seed, same prompts; laundry's prompts are not changed by the new task's registration.
    assert build_prompts(tok, ["people"], [3, 5], 12, seed=1) == prompts
    assert setup_record(tok, ["people"], [3, 5])["n_items"] == [3, 5] and "people_lexicon" in setup_record(tok, ["people"], [3])


def test_people_tuning_and_held_out_forms_are_disjoint(tok):
    people = registry.get("people")
    tuning = people.prompts(tok, [4], 20, 0, "tuning")
    held_out = people.prompts(tok, [4], 20, 0, "held_out")
    assert {p.template for p in tuning} == set(people.splits["tuning"])
    assert {p.template for p in held_out} == set(people.splits["held_out"])
    assert not set(people.splits["tuning"]) & set(people.splits["held_out"])


def test_people_through_the_cli_api_and_reports(tok, tmp_path):
    path = tmp_path / "people.jsonl"
    result = CliRunner().invoke(main, ["--quiet", "bench", "smollm2-135m", "--task", "people", "--n-items", "3,4",
                                       "--n-prompts", "3", "--export-prompts", str(path)])
    assert result.exit_code == 0, result.output
    prompts = read_jsonl(path)  # the file format validates the registered task
    assert len(prompts) == 6 and {p.task for p in prompts} == {"people"}
    # Scored and rendered like laundry: rows per N, positions p0.., no IOI-style single row.
    tokenizer = word_tokenizer()
    session = Session(tiny_model("llama", vocab_size=len(tokenizer)), tokenizer, reference="tiny")
    report = th_edit.bench.run(session, ("people", "ioi"), n_items=[3, 4], n_prompts=4, seed=0)
    assert list(report["results"]) == ["ioi", "people"]  # registration order
    assert [row["n_items"] for row in report["results"]["people"]["by_n"]] == [3, 4]
    text = render_report(report)
    assert "people: tiny, 8 prompts" in text and "N=3" in text and "ABBA" in text
    from th_edit.plots import plot_accuracy

    plot_accuracy(json.loads(json.dumps(report)), tmp_path / "accuracy.png")
    assert (tmp_path / "accuracy.png").stat().st_size > 0


def test_held_out_forms_cannot_change_what_the_search_tunes_on(tok):
    """The search tunes on the objective's tuning frames (and the guard's tuning templates) in
    completion form only: rewriting every held-out frame (its phrasing and what it lists) leaves
    the tuning prompts identical, and no other list task (people, places) or chat form enters them."""
    from dataclasses import replace
    from types import SimpleNamespace

    from th_edit.search.pipeline import SearchSettings, tuning_prompts
    from th_edit.tasks.laundry import FRAMES, HELD_OUT_FRAMES, TUNING_FRAMES, list_task

    def task(frames):
        return registry.Task("laundry", "", list_task("laundry", "", "laundry-list", frames, TUNING_FRAMES,
                                                      HELD_OUT_FRAMES).generate)

    rewritten = tuple(replace(f, text="Something else entirely: {first}; {handled}; and so the", lexicon=tuple(
        reversed(f.lexicon))) if f.name in HELD_OUT_FRAMES else f for f in FRAMES)
    assert task(FRAMES).prompts(tok, [4, 6], 12, 3, "tuning") == task(rewritten).prompts(tok, [4, 6], 12, 3, "tuning")
    assert task(FRAMES).prompts(tok, [4], 12, 3, "held_out") != task(rewritten).prompts(tok, [4], 12, 3, "held_out")

    prompts = tuning_prompts(SimpleNamespace(tokenizer=tok), SearchSettings(n_items=(4,), tune_prompts=6))  # no model needed
    assert {p.task for p in prompts} == {"laundry", "ioi"}
    assert {p.template for p in prompts if p.task == "laundry"} <= set(TUNING_FRAMES)
