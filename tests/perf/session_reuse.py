"""Benchmark (run by hand): five recipes on one loaded model vs five `th-edit bench --compare` processes.

    python tests/perf/session_reuse.py [--model smollm2-135m] [--n-prompts 50]

Both sides produce the same paired reports (laundry N=4..6, before/after accuracy, McNemar, and the
KL on the shipped neutral texts) for five recipes that scale different components of the same
heads. The API side loads the model once and calls `th_edit.bench.paired` per recipe: the session
keeps the unedited model's scores and neutral-text logits after the first call, and each edit is
swapped in memory; the CLI side is five separate processes, each loading the model and scoring both
sides. A third side,
`th_edit.search.evaluate.TrialEvaluator` (what `search` uses; public API), also reuses the unedited
model's neutral-text log-probabilities and the residual stream below the edited layers. Prints the
wall times and the ratios; accuracies must agree and the KLs match.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

SCALES = (0.0, 0.5, 1.5, 2.0, 3.0)


def recipes(directory: Path, model: str) -> list[Path]:
    paths = []
    for i, scale in enumerate(SCALES):
        recipe = {"base_model": model, "edits": [
            {"layer": 20, "head": 0, "circuit": "ov", "components": [0, 1], "scale": scale},
            {"layer": 23, "head": 3, "circuit": "qk", "components": [0], "scale": scale},
        ]}
        path = directory / f"r{i}.yaml"
        path.write_text(yaml.safe_dump(recipe, sort_keys=False))
        paths.append(path)
    return paths


def api_side(model: str, paths: list[Path], n_prompts: int) -> tuple[float, list[dict]]:
    """What a notebook user writes: one session, `th_edit.bench.paired` per recipe."""
    import th_edit
    from th_edit import ui

    ui.configure(quiet=True, verbose=False)
    started = time.perf_counter()
    session = th_edit.load(model)
    reports = [th_edit.bench.paired(session, th_edit.Recipe.from_yaml(path), tasks=("laundry",), n_items=[4, 5, 6],
                                    n_prompts=n_prompts, seed=0) for path in paths]
    return time.perf_counter() - started, reports


def evaluator_side(model: str, paths: list[Path], n_prompts: int) -> tuple[float, list]:
    import th_edit
    from th_edit import bench, ui
    from th_edit.search.evaluate import TrialEvaluator
    from th_edit.tasks.neutral import neutral_set

    ui.configure(quiet=True, verbose=False)
    started = time.perf_counter()
    session = th_edit.load(model)
    prompts, _ = bench.prompt_set(session, ("laundry",), [4, 5, 6], n_prompts, 0)
    recipes = [th_edit.Recipe.from_yaml(path) for path in paths]
    lowest = min(e.layer for r in recipes for e in r.edits)
    evaluator = TrialEvaluator(session, prompts, neutral_set(session.tokenizer), lowest)
    scores = [evaluator.evaluate(session.compute(recipe, measure=False)) for recipe in recipes]
    return time.perf_counter() - started, scores


def cli_side(model: str, paths: list[Path], n_prompts: int) -> tuple[float, list[dict]]:
    started = time.perf_counter()
    reports = []
    for path in paths:
        result = subprocess.run([sys.executable, "-m", "th_edit", "--quiet", "bench", model, "--compare", str(path),
                                 "--task", "laundry", "--n-items", "4-6", "--n-prompts", str(n_prompts), "--json"],
                                check=True, capture_output=True, text=True)
        reports.append(json.loads(result.stdout))
    return time.perf_counter() - started, reports


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--n-prompts", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        paths = recipes(Path(tmp), args.model)
        cli_seconds, cli_reports = cli_side(args.model, paths, args.n_prompts)
        api_seconds, api_reports = api_side(args.model, paths, args.n_prompts)
        evaluator_seconds, evaluator_scores = evaluator_side(args.model, paths, args.n_prompts)
    for mine, theirs in zip(api_reports, cli_reports):
        a, b = mine["paired"]["laundry"]["overall"], theirs["paired"]["laundry"]["overall"]
        assert (a["before_accuracy"], a["after_accuracy"]) == (b["before_accuracy"], b["after_accuracy"]), (a, b)
        kl_a, kl_b = (r["side_effects"]["neutral_kl"]["mean_nats_per_token"] for r in (mine, theirs))
        assert abs(kl_a - kl_b) <= 1e-6 * max(kl_b, 1e-6), (kl_a, kl_b)
    for scores, theirs in zip(evaluator_scores, cli_reports):
        by_n = {row["n_items"]: row["after_accuracy"] for row in theirs["paired"]["laundry"]["by_n"]}
        assert scores.laundry == by_n, (scores.laundry, by_n)
        kl = theirs["side_effects"]["neutral_kl"]["mean_nats_per_token"]
        assert abs(scores.kl - kl) <= 1e-3 * max(kl, 1e-6), (scores.kl, kl)
    print(f"model {args.model}, 5 recipes, laundry N=4..6, {args.n_prompts} prompts per N, KL on the neutral texts")
    print(f"  five `th-edit bench --compare` processes: {cli_seconds:7.1f} s")
    print(f"  one loaded session (th_edit API):         {api_seconds:7.1f} s")
    print(f"  ratio: {cli_seconds / api_seconds:.2f}x faster with one session (reports agree)")
    print(f"  one session + TrialEvaluator (cached base log-probs, lower layers): {evaluator_seconds:7.1f} s, "
          f"{cli_seconds / evaluator_seconds:.2f}x faster than the processes (same accuracies and KL)")


if __name__ == "__main__":
    main()
