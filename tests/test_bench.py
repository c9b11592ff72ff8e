"""Scoring engine, side-effect KL, reports and the `bench` command."""

import copy
import json
import random
import re

import pytest
import torch
from cli_helpers import one_line_error
from click.testing import CliRunner
from tiny import VOCAB, tiny_model

from th_edit import bench
from th_edit.bench import (
    PromptScore,
    Variant,
    build_prompts,
    compare,
    left_padded,
    length_batches,
    neutral_kl,
    render_report,
    run_paired,
    score_prompts,
    summarize,
    tokenize_prompts,
)
from th_edit.errors import UserError
from th_edit.tasks.laundry import FRAMES, lexicon_survival
from th_edit.tasks.neutral import neutral_prompts
from th_edit.tasks.prompts import TaskPrompt, read_jsonl, write_jsonl

WORDS = [f"w{i}" for i in range(40)]


class WordTokenizer:
    """A tokenizer for the tiny models: every space-prefixed word is one token, BOS is 1, pad 0."""

    pad_token_id = 0
    eos_token_id = 2

    def __init__(self) -> None:
        self.vocab: dict[str, int] = {}

    def _id(self, piece: str) -> int:
        if piece not in self.vocab:
            self.vocab[piece] = 3 + len(self.vocab)
            assert self.vocab[piece] < VOCAB, "too many distinct words for the tiny vocabulary"
        return self.vocab[piece]

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        ids = [self._id(piece) for piece in re.findall(r" ?[^ ]+", text)]
        return [1] + ids if add_special_tokens else ids

    def __call__(self, texts, add_special_tokens: bool = True) -> dict:
        return {"input_ids": [self.encode(t, add_special_tokens) for t in texts]}

    def __len__(self) -> int:
        return VOCAB


def random_prompts(count: int, seed: int = 0) -> list[TaskPrompt]:
    rng = random.Random(seed)
    prompts = []
    for _ in range(count):
        n = rng.randint(2, 4)
        candidates = tuple(" " + w for w in rng.sample(WORDS, n))
        position = rng.randrange(n)
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 14)))
        prompts.append(TaskPrompt("laundry", text, candidates[position], candidates, n, position))
    return prompts


def reference_score(model, tokenizer, prompt: TaskPrompt) -> tuple[torch.Tensor, PromptScore]:
    """One prompt alone: no padding, no mask, no position ids, full logits."""
    ids = torch.tensor([tokenizer.encode(prompt.prompt, add_special_tokens=True)])
    with torch.no_grad():
        last = model(input_ids=ids).logits[0, -1]
    candidate_ids = [tokenizer.encode(c)[0] for c in prompt.candidates]
    answer = prompt.candidates.index(prompt.answer)
    return last, bench.scoring.score_row(last, candidate_ids, answer)


def assert_scores_close(got: list[PromptScore], want: list[PromptScore], tol: float = 1e-4) -> None:
    for a, b in zip(got, want, strict=True):
        assert a.logit_diff == pytest.approx(b.logit_diff, abs=tol)
        assert (a.candidate_correct, a.top1_correct) == (b.candidate_correct, b.top1_correct)


# ----------------------------------------------------------------------------------------------
# Batching


def test_length_batches_sort_and_respect_limits():
    lengths = [5, 1, 9, 3, 7, 2]
    batches = length_batches(lengths, batch_size=2)
    assert batches == [[1, 5], [3, 0], [4, 2]]
    limited = length_batches(lengths, batch_size=10, max_tokens=10)
    for batch in limited:
        assert len(batch) * max(lengths[i] for i in batch) <= 10 or len(batch) == 1
    assert sorted(i for b in limited for i in b) == list(range(6))


def test_left_padding_layout():
    batch = left_padded([[7, 8, 9], [5]], pad_id=0)
    assert batch["input_ids"].tolist() == [[7, 8, 9], [0, 0, 5]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert batch["position_ids"].tolist() == [[0, 1, 2], [0, 0, 0]]


@pytest.mark.pipeline
@pytest.mark.parametrize("family, attention", [
    ("llama", "eager"), ("llama", "sdpa"), ("gemma3_text", "eager"), ("gemma3_text", "sdpa"), ("gpt2", "sdpa"),
])
def test_batched_left_padded_scores_equal_single_prompt_scores(family, attention):
    model = tiny_model(family, attn_implementation=attention)
    tokenizer = WordTokenizer()
    prompts = random_prompts(23)
    batched = score_prompts(model, tokenizer, prompts, batch_size=6)
    reference = [reference_score(model, tokenizer, p)[1] for p in prompts]
    assert_scores_close(batched, reference)
    # and the whole last-position row, not just the candidates
    encoded = [tokenizer.encode(p.prompt, add_special_tokens=True) for p in prompts[:6]]
    with torch.no_grad():
        rows = model(**left_padded(encoded, tokenizer.pad_token_id), logits_to_keep=1).logits[:, -1]
    for row, prompt in zip(rows, prompts[:6]):
        torch.testing.assert_close(row, reference_score(model, tokenizer, prompt)[0], atol=1e-4, rtol=0)


def test_ambiguous_candidates_are_a_user_error():
    tokenizer = WordTokenizer()
    prompt = TaskPrompt("laundry", "w1 w2", " w3", (" w3", " w3 w4"), 2, 0)
    with pytest.raises(UserError, match="prompt 1: two candidates start with the same token"):
        score_prompts(tiny_model("llama"), tokenizer, [prompt])


def test_ambiguous_candidates_in_a_file_name_the_file_line(tmp_path):
    path = tmp_path / "p.jsonl"
    good = TaskPrompt("laundry", "w1 w2", " w3", (" w3", " w4"), 2, 0)
    write_jsonl([good], path)
    with path.open("a") as file:  # a blank line, then the bad prompt on line 3
        file.write("\n" + json.dumps({"task": "laundry", "prompt": "w1", "answer": " w5",
                                      "candidates": [" w5", " w5 w6"], "n_items": 2, "answer_position": 0}) + "\n")
    prompts = read_jsonl(path)
    with pytest.raises(UserError, match=rf"^{re.escape(str(path))} line 3: two candidates start with the same"):
        tokenize_prompts(WordTokenizer(), prompts, path)
    # without a file, the prompt's place in the list
    with pytest.raises(UserError, match="^prompt 2: two candidates"):
        tokenize_prompts(WordTokenizer(), prompts)


# ----------------------------------------------------------------------------------------------
# Variants and KL


def _perturbed(model, name: str, seed: int = 3) -> torch.Tensor:
    weight = model.get_parameter(name).detach()
    return weight + 0.05 * torch.randn(weight.shape, generator=torch.Generator().manual_seed(seed))


def test_swapped_parameters_are_restored():
    model = tiny_model("llama")
    name = "model.layers.1.self_attn.o_proj.weight"
    original = model.get_parameter(name).detach().clone()
    variant = Variant(model, {name: _perturbed(model, name)})
    with variant.active():
        assert not torch.equal(model.get_parameter(name), original)
    assert torch.equal(model.get_parameter(name), original)
    with pytest.raises(RuntimeError), variant.active():
        raise RuntimeError("boom")
    assert torch.equal(model.get_parameter(name), original)


@pytest.mark.pipeline
def test_kl_of_a_model_with_itself_is_zero_and_positive_after_a_change():
    model, tokenizer = tiny_model("llama"), WordTokenizer()
    texts = [p.prompt for p in random_prompts(9)]
    base = Variant(model)
    assert neutral_kl(base.forward, base.forward, tokenizer, texts, batch_size=4) == 0.0
    name = "model.layers.0.self_attn.o_proj.weight"
    edited = Variant(model, {name: _perturbed(model, name)})
    assert neutral_kl(base.forward, edited.forward, tokenizer, texts, batch_size=4) > 1e-6


def test_chunked_kl_equals_dense_reference(monkeypatch):
    model, tokenizer = tiny_model("gemma3_text"), WordTokenizer()
    name = "model.layers.1.self_attn.o_proj.weight"
    replacement = _perturbed(model, name)
    other = copy.deepcopy(model)  # an independent edited model for the reference
    with torch.no_grad():
        other.get_parameter(name).copy_(replacement)
    texts = [p.prompt for p in random_prompts(11, seed=4)]

    total, count = 0.0, 0
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([tokenizer.encode(text, add_special_tokens=True)])
            log_p = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
            log_q = torch.log_softmax(other(input_ids=ids).logits[0].double(), -1)
            total += float((log_p.exp() * (log_p - log_q)).sum())
            count += ids.shape[1]
    dense = total / count

    # Force several batches (≤ 20 tokens each) and 3-position chunks.
    monkeypatch.setattr(bench.side_effects, "KL_MAX_BATCH_LOGITS", 20 * VOCAB)
    monkeypatch.setattr(bench.side_effects, "KL_CHUNK_LOGITS", 3 * VOCAB)
    swapped = neutral_kl(Variant(model).forward, Variant(model, {name: replacement}).forward, tokenizer, texts, 4)
    two_models = neutral_kl(Variant(model).forward, Variant(other).forward, tokenizer, texts, 4)
    assert swapped == pytest.approx(dense, rel=1e-5)
    assert two_models == pytest.approx(dense, rel=1e-5)


# ----------------------------------------------------------------------------------------------
# Aggregation


def test_summary_and_paired_counts():
    prompts = [TaskPrompt("laundry", "w1", " a", (" a", " b"), 2, 0)] * 4 + \
              [TaskPrompt("laundry", "w1", " c", (" a", " b", " c"), 3, 2)] * 2
    before = [PromptScore(True, True, 1.0), PromptScore(True, False, 2.0), PromptScore(False, False, -1.0),
              PromptScore(False, False, -2.0), PromptScore(True, True, 0.5), PromptScore(True, True, 0.5)]
    after = [PromptScore(True, True, 2.0), PromptScore(False, False, -1.0), PromptScore(True, True, 1.0),
             PromptScore(True, True, 1.0), PromptScore(True, True, 0.5), PromptScore(True, True, 1.5)]
    summary = summarize(prompts, before)["laundry"]
    assert summary["overall"]["n"] == 6 and summary["overall"]["candidate_accuracy"] == pytest.approx(4 / 6)
    assert [(r["n_items"], r["n"], r["candidate_accuracy"]) for r in summary["by_n"]] == [(2, 4, 0.5), (3, 2, 1.0)]
    assert [(r["n_items"], r["answer_position"]) for r in summary["by_position"]] == [(2, 0), (3, 2)]
    paired = compare(prompts, before, after)["laundry"]
    n2 = paired["by_n"][0]
    assert (n2["b_right_to_wrong"], n2["c_wrong_to_right"]) == (1, 2)
    assert n2["accuracy_change"] == pytest.approx(0.25)
    # mean of (1, -3, 2, 3) = 0.75
    assert n2["mean_logit_diff_change"] == pytest.approx(0.75)
    assert paired["overall"]["mcnemar_p"] == 1.0  # b = 1, c = 2


# ----------------------------------------------------------------------------------------------
# Generated prompt sets


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    from th_edit.models import load_tokenizer, resolve

    return load_tokenizer(resolve("smollm2-135m"))


@pytest.mark.real  # the real SmolLM2 tokenizer
def test_build_prompts_counts_a_repeated_n_once(smollm2_tokenizer):
    prompts = build_prompts(smollm2_tokenizer, ["laundry", "ioi"], [2, 2, 3], 5, seed=0)
    counts = {(p.task, p.n_items): sum(q.task == p.task and q.n_items == p.n_items for q in prompts) for p in prompts}
    assert counts == {("laundry", 2): 5, ("laundry", 3): 5, ("ioi", 2): 5}


@pytest.mark.real  # the real SmolLM2 tokenizer
def test_build_prompts_says_how_many_lexicon_items_survive(smollm2_tokenizer, capsys):
    build_prompts(smollm2_tokenizer, ["laundry"], [2, 3], 2, seed=0)
    err = capsys.readouterr().err
    assert "laundry-list lexicon: 7 frames, 31-47 single-token items each (of 50-59)\n" in err
    assert "warning" not in err  # SmolLM2 keeps at least 31 items per frame: every frame serves every N
    build_prompts(smollm2_tokenizer, ["ioi"], [2, 3], 2, seed=0)
    assert "lexicon" not in capsys.readouterr().err


class FewWordsTokenizer:
    """Single tokens: all of the 'laundry' frame's lexicon and the first 3 words of the others'."""

    def __init__(self) -> None:
        self.single = set(FRAMES[0].lexicon) | {w for f in FRAMES for w in f.lexicon[:3]}

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [7] if text.strip() in self.single else [7, 8]


def test_frames_too_small_for_an_n_are_named_in_a_warning(capsys):
    tokenizer = FewWordsTokenizer()
    usable = {name: count for name, (count, _) in lexicon_survival(tokenizer).items()}
    small = {name for name, count in usable.items() if count < 5}
    assert small == {"cleaning", "gardening", "tools"}  # the premise (words shared with 'laundry' add some)
    prompts = build_prompts(tokenizer, ["laundry"], [2, 5], 20, seed=0)
    assert {p.template for p in prompts if p.n_items == 5} == set(usable) - small
    assert {p.template for p in prompts if p.n_items == 2} == set(usable)
    err = capsys.readouterr().err
    assert f"laundry-list lexicon: 7 frames, {min(usable.values())}-{max(usable.values())} single-token" in err
    for name in usable:
        warning = f"warning: laundry frame '{name}' has only {usable[name]} single-token items, so it is not used for N=5\n"
        assert (warning in err) == (name in small)


# ----------------------------------------------------------------------------------------------
# Plots


def _report_results(seed: int) -> dict:
    rng = random.Random(seed)
    prompts = [TaskPrompt("laundry", "w1", " a", (" a", " b"), 2, 0)] * 6 + \
              [TaskPrompt("laundry", "w1", " c", (" a", " b", " c"), 3, 2)] * 6 + \
              [TaskPrompt("ioi", "w1", " a", (" a", " b"), 2, 0)] * 6
    scores = [PromptScore(rng.random() < 0.6, False, rng.uniform(-1, 1)) for _ in prompts]
    return summarize(prompts, scores)


def _plotted_x(figure) -> dict[str, list[float]]:
    return {container.get_label(): list(container.lines[0].get_xdata()) for container in figure.axes[0].containers}


@pytest.mark.pipeline
@pytest.mark.parametrize("paired", [False, True])
def test_ioi_has_its_own_column_in_the_accuracy_plot(paired, tmp_path):
    from th_edit.plots import accuracy_figure, plot_accuracy

    if paired:
        report = {"kind": "paired", "before": {"model": {"reference": "m"}, "results": _report_results(0)},
                  "after": {"model": {"reference": "m + e"}, "results": _report_results(1)}}
    else:
        report = {"kind": "single", "model": {"reference": "m"}, "results": _report_results(0)}
    figure = accuracy_figure(report)
    x = _plotted_x(figure)
    laundry = [v for label, xs in x.items() if label.startswith("laundry") for v in xs]
    ioi = [v for label, xs in x.items() if label.startswith("ioi") for v in xs]
    assert len(ioi) == (2 if paired else 1) and len(laundry) == 2 * len(ioi)
    assert min(ioi) > max(laundry) + 1  # well clear of laundry N=3, let alone N=2
    ticks = figure.axes[0].get_xticks()
    labels = [label.get_text() for label in figure.axes[0].get_xticklabels()]
    assert labels == ["2", "3", "IOI"] and min(ioi) == pytest.approx(ticks[-1], abs=0.1)
    plot_accuracy(report, tmp_path / "accuracy.png")
    assert (tmp_path / "accuracy.png").read_bytes().startswith(b"\x89PNG")


# ----------------------------------------------------------------------------------------------
# Real model


@pytest.fixture(scope="module")
def smollm2():
    from th_edit.models import load_model, load_tokenizer, resolve

    resolved = resolve("smollm2-135m")
    return load_model(resolved, dtype="float32"), load_tokenizer(resolved)


@pytest.mark.real
def test_real_batched_scores_equal_single_prompt_scores(smollm2):
    model, tokenizer = smollm2
    prompts = build_prompts(tokenizer, ["laundry", "ioi"], [2, 3, 5], 4, seed=0)
    batched = score_prompts(model, tokenizer, prompts, batch_size=8)
    assert_scores_close(batched, [reference_score(model, tokenizer, p)[1] for p in prompts])


@pytest.mark.real
def test_real_paired_run_with_an_ablated_head(smollm2):
    model, tokenizer = smollm2
    name = "model.layers.3.self_attn.o_proj.weight"
    d_head = model.config.head_dim
    ablated = model.get_parameter(name).detach().clone()
    ablated[:, 2 * d_head:3 * d_head] = 0  # head 2 writes nothing
    original = model.get_parameter(name).detach().clone()

    prompts = build_prompts(tokenizer, ["laundry", "ioi"], [2, 3], 10, seed=0)
    report = run_paired(Variant(model), Variant(model, {name: ablated}), tokenizer, prompts,
                        before_info={"reference": "smollm2-135m"}, after_info={"reference": "ablated"},
                        setup={"seed": 0}, batch_size=8, neutral_texts=neutral_prompts()[:12])
    assert torch.equal(model.get_parameter(name), original)
    json.dumps(report, allow_nan=False)  # bench.json must be plain JSON
    assert report["kind"] == "paired" and report["prompt_counts"] == {"laundry": 20, "ioi": 10, "total": 30}
    for task in ("laundry", "ioi"):
        for row in [report["paired"][task]["overall"], *report["paired"][task]["by_n"]]:
            b, c, n = row["b_right_to_wrong"], row["c_wrong_to_right"], row["n"]
            assert 0 <= b + c <= n and 0.0 <= row["mcnemar_p"] <= 1.0
            assert row["after_accuracy"] - row["before_accuracy"] == pytest.approx((c - b) / n)
        before = report["before"]["results"][task]["overall"]["candidate_accuracy"]
        assert report["paired"][task]["overall"]["before_accuracy"] == before
    assert [r["n_items"] for r in report["paired"]["laundry"]["by_n"]] == [2, 3]
    kl = report["side_effects"]["neutral_kl"]
    assert kl["mean_nats_per_token"] > 0 and kl["n_texts"] == 12
    assert report["side_effects"]["ioi_accuracy_change"] == report["paired"]["ioi"]["overall"]["accuracy_change"]
    text = render_report(report)
    assert "McNemar p" in text and "KL(before ‖ after)" in text

    # Reusing the base scores gives the same report.
    base = score_prompts(model, tokenizer, prompts, batch_size=8)
    again = run_paired(Variant(model), Variant(model, {name: ablated}), tokenizer, prompts,
                       before_info={}, after_info={}, setup={}, batch_size=8, before_scores=base,
                       neutral_texts=neutral_prompts()[:12])
    assert again["paired"] == report["paired"]


# ----------------------------------------------------------------------------------------------
# The command


@pytest.fixture(scope="module")
def cli():
    from th_edit.cli import main
    from th_edit.commands.bench import bench_command

    main.add_command(bench_command)
    runner = CliRunner()
    return lambda *args: runner.invoke(main, ["--quiet", "bench", *args])


@pytest.mark.cli
def test_cli_export_prompts(cli, tmp_path):
    path = tmp_path / "p.jsonl"
    result = cli("smollm2-135m", "--task", "laundry", "--n-items", "2,4", "--n-prompts", "5", "--export-prompts", str(path))
    assert result.exit_code == 0, result.output
    lines = path.read_text().splitlines()
    assert len(lines) == 10 and {json.loads(line)["n_items"] for line in lines} == {2, 4}


@pytest.mark.cli
def test_cli_bad_prompt_file_is_one_line(cli, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"task": "laundry"}\n')
    assert "bad.jsonl line 1: missing key" in one_line_error(cli("--prompts", str(path)))


@pytest.fixture
def no_model(monkeypatch):
    """Loading a model fails the test: the errors below must come before any model is loaded."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")
    monkeypatch.setattr("th_edit.commands.bench.load_session", refuse)


GOOD_LINE = json.dumps({"task": "laundry", "prompt": "I washed the", "answer": " sock",
                        "candidates": [" sock", " shirt"], "n_items": 2, "answer_position": 0})


@pytest.mark.cli
def test_cli_indistinguishable_candidates_name_the_file_line(cli, tmp_path, no_model):
    ioi = json.dumps({"task": "ioi", "prompt": "When Mary and John left, John waved to", "answer": " Mary",
                      "candidates": [" Mary", " John"], "n_items": 2, "answer_position": 0})
    bad = json.dumps({**json.loads(GOOD_LINE), "candidates": [" sock", " sockpuppet"]})  # both start with " sock"
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join([ioi, "", GOOD_LINE, bad]) + "\n")
    line = one_line_error(cli("--prompts", str(path), "--task", "laundry"))
    assert line.startswith(f"error: {path} line 4: two candidates start with the same token")


@pytest.mark.cli
@pytest.mark.parametrize("compare", [False, True])
def test_cli_a_prompt_longer_than_either_models_context_names_the_file_line(cli, tmp_path, no_model, compare):
    """The shortest context of the models compared counts (the second model's used to be ignored:
    an IndexError after loading both, or, with rotary embeddings, silent scoring past the context)."""
    from tiny import tiny_checkpoint

    long_context = tiny_checkpoint(tmp_path / "long", "gpt2", n_positions=128)
    short_context = tiny_checkpoint(tmp_path / "short", "gpt2", n_positions=24)
    path = tmp_path / "p.jsonl"
    prompt = "I washed the sock and the shirt and the towel and the hat and the scarf and the coat. " * 2 + "I dried the"
    path.write_text(GOOD_LINE + "\n" + json.dumps({**json.loads(GOOD_LINE), "prompt": prompt}) + "\n")
    first, other = (long_context, short_context) if compare else (short_context, long_context)
    line = one_line_error(cli(str(first), "--prompts", str(path), *(["--compare", str(other)] if compare else [])))
    assert line.startswith(f"error: {path} line 2: the prompt is") and "context of 24" in line


@pytest.mark.cli
def test_cli_export_prompts_creates_missing_directories(cli, tmp_path):
    path = tmp_path / "new" / "dir" / "p.jsonl"
    result = cli("--task", "ioi", "--n-prompts", "3", "--export-prompts", str(path))
    assert result.exit_code == 0, result.output
    assert len(read_jsonl(path)) == 3


@pytest.mark.parametrize("option, target, message", [
    ("--export-prompts", "afile/p.jsonl", "{afile} is not a directory"),
    ("--out", "afile/sub", "{afile} is not a directory"),
    ("--out", "afile", "'{afile}' is a file"),  # click's own check of the option
])
@pytest.mark.cli
def test_cli_unwritable_destinations_are_refused_up_front(cli, tmp_path, no_model, option, target, message):
    afile = tmp_path / "afile"
    afile.write_text("")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(GOOD_LINE + "\n")
    source = ["--prompts", str(prompts)] if option == "--out" else ["--task", "ioi", "--n-prompts", "3"]
    line = one_line_error(cli(*source, option, str(tmp_path / target)))
    assert message.format(afile=afile) in line


@pytest.mark.real  # the real SmolLM2 tokenizer
def test_generated_setup_records_the_lexicon_survival(smollm2_tokenizer):
    from th_edit.commands.bench import _load_prompts

    _, setup = _load_prompts(smollm2_tokenizer, ("laundry", "ioi"), None, "2,3", 2, 0)
    survival = lexicon_survival(smollm2_tokenizer)
    assert setup["laundry_lexicon"] == {frame: {"single_token_items": usable, "lexicon_items": total}
                                        for frame, (usable, total) in survival.items()}
    assert min(r["single_token_items"] for r in setup["laundry_lexicon"].values()) == 31
    _, ioi_only = _load_prompts(smollm2_tokenizer, ("ioi",), None, "2,3", 2, 0)
    assert "laundry_lexicon" not in ioi_only


@pytest.mark.parametrize("args, message", [
    (["--n-items", "1-4"], "between 2 and 10"),
    (["--n-items", "2-x"], "expected a range"),
    (["--n-items", "5-3"], "is empty"),
    (["--prompts", "p.jsonl", "--seed", "3"], "cannot be combined with --prompts"),
    (["--export-prompts", "p.jsonl", "--json"], "cannot be combined with --json"),
])
@pytest.mark.cli
def test_cli_option_errors(cli, args, message):
    assert message in one_line_error(cli(*args))


@pytest.mark.real
def test_cli_single_and_compare_runs(cli, tmp_path):
    prompts = tmp_path / "p.jsonl"
    write_jsonl([
        TaskPrompt("laundry", "I washed the sock and the shirt. I dried the sock, so I still had to dry the",
                   " shirt", (" sock", " shirt"), 2, 1),
        TaskPrompt("ioi", "When Mary and John went to the store, John gave a drink to", " Mary",
                   (" Mary", " John"), 2, 0),
    ], prompts)
    result = cli("--prompts", str(prompts), "--json", "--out", str(tmp_path / "one"))
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["kind"] == "single" and report["prompt_counts"]["total"] == 2
    assert (tmp_path / "one" / "bench.json").is_file() and (tmp_path / "one" / "accuracy.png").stat().st_size > 0

    result = cli("--prompts", str(prompts), "--compare", "smollm2-135m", "--out", str(tmp_path / "two"))
    assert result.exit_code == 0, result.output
    assert "McNemar p" in result.stdout
    paired = json.loads((tmp_path / "two" / "bench.json").read_text())
    assert paired["side_effects"]["neutral_kl"]["mean_nats_per_token"] == pytest.approx(0.0, abs=1e-9)
    assert paired["paired"]["laundry"]["overall"]["b_right_to_wrong"] == 0
