"""Benchmark (run by hand): `search --method gradient` against TPE, same model, same held-out prompts, same run.

    python tests/perf/search_gradient.py [--model smollm2-135m] [--tpe-trials 10] [--shipped recipes/...yaml]

Both methods start from the candidates `th-edit search MODEL` finds itself (the channel step, then the
attribution ranking, timed once and shared) with the default settings (N = 4..8, 50 tuning prompts per N,
KL budget 0.02, IOI drop ≤ 2 points, seed 0). Printed, with the machine's load (os.getloadavg) before and
after each phase:
  * gradient: the fit and its exact checks on the tuning set, then the held-out judgement (the chosen
    recipe, the five whole-head scales and, with --shipped, the shipped recipe as the baseline row);
  * TPE with --tpe-trials trials (0: skipped), and the held-out judgement of its chosen recipe only;
  * held-out mean gain over N (points), KL and IOI change of each, and the time ratios.
The held-out prompts are the search's own (seed 7919, frames and templates no search sees).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from pathlib import Path

import th_edit
from th_edit import ui
from th_edit.commands.search import _write_outputs
from th_edit.search.candidates import channel_candidates
from th_edit.recipe import load_recipe
from th_edit.search import pipeline
from th_edit.search.gradient import GradientSettings
from th_edit.search.optimize import Limits
from th_edit.search.pipeline import SearchSettings, ranked_candidates, search


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def timed(what: str, call):
    before = load()
    started = time.perf_counter()
    value = call()
    seconds = time.perf_counter() - started
    print(f"{what}: {seconds:7.1f} s   (load avg before {before}, after {load()})", flush=True)
    return value, seconds


def row(label: str, held) -> str:
    gains = " ".join(f"{100 * held.gain(n):+5.1f}" for n in (4, 5, 6, 7, 8))
    ioi = held.ioi_change
    chat = "" if held.chat_agreement is None else f"  chat same {100 * held.chat_agreement:.0f}%"
    by_n = {r["n_items"]: r["metrics"]["top1"]["accuracy_change"] for r in held.paired["laundry"]["by_n"]}
    top1 = " ".join(f"{100 * by_n[n]:+5.1f}" for n in (4, 5, 6, 7, 8))
    ioi_top1 = held.ioi_top1_change
    return (f"  {label:<34} N=4..8 {gains}  mean {100 * held.mean_gain():+5.1f}  KL {held.kl:.4f}  "
            f"IOI {100 * (ioi or 0):+.1f}{chat}\n"
            f"  {'':<34} top-1  {top1}  mean {100 * sum(by_n.values()) / len(by_n):+5.1f}  "
            f"IOI top-1 {100 * (ioi_top1 or 0):+.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tpe-trials", type=int, default=10)
    parser.add_argument("--shipped", help="a recipe judged on the same held-out prompts, as the baseline row")
    parser.add_argument("--steps", type=int, default=GradientSettings.steps)
    parser.add_argument("--no-whole-head", action="store_true", help="skip the five whole-head baselines (faster)")
    parser.add_argument("--objective", default="candidate", help="the search objective (candidate or top1)")
    parser.add_argument("--min-chat-agreement", type=float, help="percent, as `search --min-chat-agreement`")
    parser.add_argument("--out", type=Path, help="write the gradient search's recipe, search.json and frontier here "
                        "(as `th-edit search --out`)")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    ui.configure(quiet=not args.verbose, verbose=args.verbose)
    print(f"cores {os.cpu_count()}, load avg {load()}", flush=True)
    session, load_seconds = timed(f"load {args.model}", lambda: th_edit.load(args.model))
    settings = dataclasses.replace(
        SearchSettings(whole_head_scales=()) if args.no_whole_head else SearchSettings(), objective=args.objective,
        limits=Limits(min_chat_agreement=None if args.min_chat_agreement is None else args.min_chat_agreement / 100))
    print(f"objective {settings.objective}, limits {settings.limits}", flush=True)
    (candidates, _draft), channel_seconds = timed("channel step (candidate heads)",
                                                  lambda: channel_candidates(session, "inhibition", None, 0, 8))
    candidates, rank_seconds = timed("attribution ranking", lambda: ranked_candidates(session, candidates, settings))
    print("candidates: " + ", ".join(f"{c.name} ({len(c.components)})" for c in candidates), flush=True)

    proper: dict[str, float] = {}  # the search itself (fit + exact checks, or the trials), per method

    chosen_at: dict[str, float] = {}  # perf_counter when each method had chosen its recipe (before any judging)

    def timing(name: str, real):
        def wrapped(*a, **k):
            result, proper[name] = timed(f"  {name}: the search itself (no caching, no held-out)", lambda: real(*a, **k))
            chosen_at[name] = time.perf_counter()
            return result
        return wrapped

    real = pipeline.gradient_search, pipeline.run_search
    pipeline.gradient_search, pipeline.run_search = timing("gradient", real[0]), timing("tpe", real[1])
    judging: dict[str, float] = {"seconds": 0.0}  # the held-out judgement and the transfer forms, per search call
    real_judges = pipeline.evaluate_held_out, pipeline.evaluate_transfer

    def judged(real_judge):
        def wrapped(*a, **k):
            started = time.perf_counter()
            try:
                return real_judge(*a, **k)
            finally:
                judging["seconds"] += time.perf_counter() - started
        return wrapped
    pipeline.evaluate_held_out, pipeline.evaluate_transfer = (judged(j) for j in real_judges)
    shipped = load_recipe(Path(args.shipped))[0].edits if args.shipped else None
    gradient = GradientSettings(steps=args.steps)
    before_search = load_seconds + channel_seconds + rank_seconds  # shared by both methods
    search_started = time.perf_counter()
    report, gradient_seconds = timed("gradient search (tuning cache, fit, held-out"
                                     + ("" if args.no_whole_head else " with 5 whole-head scales")
                                     + (" and the shipped recipe)" if shipped else ")"),
                                     lambda: search(session, candidates, settings, draft=shipped, ranked=True,
                                                    method="gradient", gradient=gradient))
    for trial in report.result.trials:
        print(f"  exact check {trial.number}: {sum(len(e.components) for e in trial.edits)} components, tuning "
              f"{100 * trial.scores.mean_laundry:.1f}% (unedited {100 * report.base_tuning.mean_laundry:.1f}%), "
              f"KL {trial.scores.kl:.4f}, IOI {trial.scores.ioi}"
              + ("" if trial.scores.chat_agreement is None else f", chat same {100 * trial.scores.chat_agreement:.0f}%")
              + f", {'ok' if trial.feasible else 'over limits'}")
    print("held-out (the search's held-out prompts, seed 7919):", flush=True)
    for held in report.held_out:
        print(row("shipped recipe" if held.kind == "draft" else held.label, held))
    for task, paired in (report.transfer or {}).items():
        for metric, pick in (("candidate", lambda r: r), ("top-1", lambda r: r["metrics"]["top1"])):
            gains = " ".join(f"{100 * pick(r)['accuracy_change']:+5.1f}" for r in paired["by_n"])
            print(f"  forms never seen, {task} ({metric}): N=4..8 {gains} (unedited "
                  + " ".join(f"{100 * pick(r)['before_accuracy']:.0f}%" for r in paired["by_n"]) + ")")
    whole = load_seconds + channel_seconds + rank_seconds + gradient_seconds
    print(f"gradient, the whole command's work: {whole:.1f} s (load {load_seconds:.1f}, channels {channel_seconds:.1f}, "
          f"ranking {rank_seconds:.1f}, search call {gradient_seconds:.1f} of which the fit and its checks "
          f"{proper.get('gradient', 0):.1f} and the held-out recipes' scoring {judging['seconds']:.1f}); "
          f"until the recipe is chosen: {before_search + chosen_at['gradient'] - search_started:.1f} s "
          "(load, channels, ranking, the tuning set's caching, the fit and its exact scorings)", flush=True)
    if args.out is not None:
        _write_outputs(report, args.model, [args.out, args.out.with_suffix(".search.json"),
                                            args.out.with_suffix(".frontier.png")], force=True)
        print(f"wrote {args.out}")
    if report.chosen is not None:
        print("gradient recipe: " + "; ".join(f"{e.layer}.{e.head} {len(e.components)}x{e.scale:g}"
                                              for e in report.chosen.edits))

    if args.tpe_trials:
        tpe_settings = dataclasses.replace(settings, trials=args.tpe_trials, whole_head_scales=())
        judging["seconds"] = 0.0
        search_started = time.perf_counter()
        tpe, tpe_seconds = timed(f"TPE search call, {args.tpe_trials} trials (+ held-out of its recipe only)",
                                 lambda: search(session, candidates, tpe_settings, ranked=True))
        if tpe.chosen is not None:
            print(row(f"TPE ({args.tpe_trials} trials)", tpe.chosen))
        else:
            print("  TPE chose nothing (no feasible fully scored trial)")
        print(f"TPE until the recipe is chosen: {before_search + chosen_at['tpe'] - search_started:.1f} s "
              "(channels and ranking shared with the gradient run)")
        print(f"ratio, the search itself: TPE ({args.tpe_trials} trials) {proper.get('tpe', 0):.1f} s / gradient "
              f"{proper.get('gradient', 0):.1f} s = {proper.get('tpe', 0) / max(proper.get('gradient', 0), 1e-9):.2f}x")
    pipeline.gradient_search, pipeline.run_search = real
    pipeline.evaluate_held_out, pipeline.evaluate_transfer = real_judges
    print(f"load avg at the end {load()}")


if __name__ == "__main__":
    main()
