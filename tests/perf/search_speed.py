"""Benchmark (run by hand): search trials per minute, th-edit's evaluator vs the naive loop, same run.

    python tests/perf/search_speed.py [--model smollm2-135m] [--trials 4] [--layer 17]

Both sides evaluate the same random channel edits (OV components of heads in layers ≥ --layer) on
laundry N = 4..8 with 50 tuning prompts per N, 50 IOI prompts and the KL on 48 neutral texts:
  * naive: swap the edit in, full forward of every prompt, and the KL from a full forward of the
    unedited and of the edited model on every neutral text, per trial;
  * th-edit (`TrialEvaluator`): the tokenized batches, the residual stream below --layer, the
    unedited model's log-probs on the neutral texts and its scores are computed once; a trial runs
    layers ≥ --layer only. Its full evaluation is timed (the quick first look is cheaper still).
Prints trials per minute of each and their ratio; asserts both give the same accuracies.
"""

from __future__ import annotations

import argparse
import random
import time

import th_edit
from th_edit import ui
from th_edit.bench import Variant, kl_sum, score_prompts
from th_edit.recipe import Edit
from th_edit.search.evaluate import TrialEvaluator
from th_edit.search.pipeline import SearchSettings, split_neutral, tuning_prompts
from th_edit.tasks.neutral import neutral_set


def random_edits(session, layer: int, rng: random.Random) -> list[Edit]:
    info = session.info
    heads = rng.sample([(lay, h) for lay in range(layer, info.n_layers) for h in range(info.n_heads)], 3)
    return [Edit(layer=lay, head=h, circuit="ov", components=sorted(rng.sample(range(8), 2)),
                 scale=round(rng.uniform(0.5, 3.0), 2)) for lay, h in heads]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--layer", type=int, default=17)
    args = parser.parse_args()
    ui.configure(quiet=True, verbose=False)
    session = th_edit.load(args.model)
    prompts = tuning_prompts(session, SearchSettings())
    neutral = split_neutral(neutral_set(session.tokenizer))[0].limited(48)
    rng = random.Random(0)
    trials = [session.compute(random_edits(session, args.layer, rng), measure=False) for _ in range(args.trials)]

    started = time.perf_counter()
    evaluator = TrialEvaluator(session, prompts, neutral, args.layer)
    setup = time.perf_counter() - started
    started = time.perf_counter()
    fast = [evaluator.evaluate(edit) for edit in trials]
    fast_seconds = time.perf_counter() - started

    started = time.perf_counter()
    naive = []
    for edit in trials:
        with session.edited(edit):
            scores = score_prompts(session.model, session.tokenizer, prompts)
        kl_sum(Variant(session.model).forward, session.variant(edit).forward, session.tokenizer, None,
               encoded=neutral.encoded)
        naive.append([s.candidate_correct for s in scores])
    naive_seconds = time.perf_counter() - started

    for edit, result, plain in zip(trials, fast, naive):
        by_n: dict[int, list[bool]] = {}
        for prompt, correct in zip(prompts, plain):
            if prompt.task == "laundry":
                by_n.setdefault(prompt.n_items, []).append(correct)
        assert {n: sum(v) / len(v) for n, v in by_n.items()} == result.laundry, (result.laundry, by_n)
    per_minute_fast, per_minute_naive = 60 * len(trials) / fast_seconds, 60 * len(trials) / naive_seconds
    print(f"model {args.model}: {len(prompts)} tuning prompts, {len(neutral.encoded)} neutral texts, "
          f"edits in layers >= {args.layer}, {len(trials)} trials")
    print(f"  naive loop (full forward + KL from two full passes): {per_minute_naive:6.2f} trials/min")
    print(f"  th-edit TrialEvaluator (full evaluation):           {per_minute_fast:6.2f} trials/min "
          f"(one-off caching {setup:.1f} s)")
    print(f"  ratio: {per_minute_fast / per_minute_naive:.2f}x (same accuracies)")


if __name__ == "__main__":
    main()
