"""Benchmark (run by hand): `channels` with the attribution data check vs the exact one, same run.

    python tests/perf/datacheck_speed.py [--model smollm2-135m] [--check-prompts 16] [--confirm 1 2] [--json FILE]
                                         [--exact-json channels.json]   # agreement only, against a saved exact run

Both sides run `find_channels` with the `channels` defaults (roles, weights, data check; the same
targets: the seed fixes them) on one loaded model; the attribution runs (one per --confirm K: the
components per pair removed exactly) go first, so the first pays for the per-head SVDs all use.
Prints the computation time of each (model load excluded) with the machine's load average beside it,
and per checked pair (sender, receiver, mode):
  * top-1: the component with the largest data score (|attention shift| on removal) by each method,
    and whether they agree (the goal: ≥ 90% of pairs);
  * ρ estimate: Spearman, over the pair's checked components, between the first-order estimate of
    the removal effect (|estimated shift at α = 0|) and the exact data score — how well attribution
    ranks before any confirmation;
  * confirmed: how many of the pair's components the attribution run ablated exactly.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import th_edit
from th_edit import ui
from th_edit.channels import datacheck, find
from th_edit.channels.datacheck import CONFIRM_TOP
from th_edit.channels.find import ChannelSettings, find_channels
from th_edit.stats import spearman


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg()) + f" ({os.cpu_count()} CPUs)"


PHASES: dict[str, float] = {}


def phase_timer(module, name: str, label: str) -> None:
    """Wrap module.name so that the seconds spent in it add up under `label` in PHASES."""
    inner = getattr(module, name)

    def wrapped(*args, **kwargs):
        started = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            PHASES[label] = PHASES.get(label, 0.0) + time.perf_counter() - started
    setattr(module, name, wrapped)


def timed(session, settings: ChannelSettings):
    PHASES.clear()
    before = load()
    started = time.perf_counter()
    report = find_channels(session, settings=settings)
    seconds = time.perf_counter() - started
    phases = ", ".join(f"{label} {value:.1f} s" for label, value in PHASES.items())
    return report, seconds, f"{before} before, {load()} after; of which {phases}"


def pair_key(pair: dict) -> str:
    return f"{pair['sender']} -> {pair['receiver']} {pair['mode']}"


def top1(pair: dict) -> int:
    return max(pair["checks"], key=lambda c: c["data_score"])["sender"]["component"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--check-prompts", type=int, default=ChannelSettings.check_prompts)
    parser.add_argument("--confirm", type=int, nargs="+", default=sorted({1, 2, CONFIRM_TOP}))
    parser.add_argument("--exact-json", help="compare against this channels.json of an exact run with the same settings "
                        "instead of running the exact check here (its time is then not measured)")
    parser.add_argument("--json", help="also write the numbers here")
    args = parser.parse_args()
    ui.configure(quiet=True, verbose=False)
    phase_timer(find, "check_components", "data check")
    phase_timer(datacheck, "estimate_derivatives", "attribution")
    phase_timer(datacheck, "_ablate", "ablations")
    session = th_edit.load(args.model)
    common = dict(check_prompts=args.check_prompts)
    print(f"model {args.model}, {args.check_prompts} check prompts, seed 0; computation of the whole `channels` run, "
          "model load excluded", flush=True)
    fast_runs = []
    for k in args.confirm:
        report, seconds, machine = timed(session, ChannelSettings(check_method="attribution", check_confirm=k, **common))
        fast_runs.append((k, report.as_dict(), seconds, machine))
        print(f"attribution, confirm {k}: {seconds:7.1f} s  ({machine}; {ablations(fast_runs[-1][1])} ablations)", flush=True)
    if args.exact_json:
        with open(args.exact_json) as f:
            exact = json.load(f)
        exact_s, exact_load = None, f"read from {args.exact_json}, not timed in this run"
        # A saved run may predate settings added since (recorded with their defaults now): compare the shared ones.
        ours, theirs = fast_runs[0][1]["settings"], exact["settings"]
        shared = (ours.keys() & theirs.keys()) - {"check_method", "check_confirm"}
        differing = sorted(k for k in shared if ours[k] != theirs[k])
        assert not differing, f"the exact run used other settings: {differing}"
        if ours.keys() - theirs.keys():
            print(f"(settings the saved exact run does not record, here at their defaults: "
                  f"{', '.join(sorted(ours.keys() - theirs.keys() - {'check_method', 'check_confirm'}))})")
    else:
        report, exact_s, exact_load = timed(session, ChannelSettings(check_method="exact", **common))
        exact = report.as_dict()
    timing = "" if exact_s is None else f"{exact_s:7.1f} s  "
    print(f"exact:                  {timing}({exact_load}; {ablations(exact)} ablations)")
    results = []
    for k, fast, fast_s, fast_load in fast_runs:
        rows, rate, median, mean, same = compare(fast, exact)
        speed = "" if exact_s is None else f", speed-up {exact_s / fast_s:.1f}x"
        print(f"\nattribution, confirm {k} per pair ({fast_s:.1f} s{speed}), against exact:")
        print("| pair | channel | checked | confirmed | top-1 exact | top-1 attribution | agrees | ρ estimate |")
        print("|---|---|---|---|---|---|---|---|")
        for r in rows:
            rho = "-" if r["spearman_estimate"] is None else f"{r['spearman_estimate']:+.2f}"
            print(f"| {r['pair']} | {r['channel']} | {r['checked']} | {r['confirmed']} | {r['top1_exact']} | "
                  f"{r['top1_attribution']} | {'yes' if r['agrees'] else 'NO'} | {rho} |")
        print(f"top-1 agrees on {sum(r['agrees'] for r in rows)}/{len(rows)} pairs ({rate:.0%}; goal ≥ 90%); Spearman of "
              f"the estimate against the exact data score: median {median:+.2f}, mean {mean:+.2f}; same channel "
              f"components reported: {same}")
        results.append({"confirm": k, "seconds": fast_s, "load": fast_load, "ablations": ablations(fast),
                        "top1_agreement": rate, "median_spearman_estimate": median, "pairs": rows})
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "exact_s": exact_s, "exact_load": exact_load, "exact_ablations": ablations(exact),
                       "attribution": results}, f, indent=2)


def ablations(record: dict) -> int:
    """Distinct hooked forward passes the record's checks were measured with."""
    return len({(c["sender"]["layer"], c["sender"]["head"], c["sender"]["component"], c["mode"] == "q", alpha)
                for p in record["pairs"] for c in p["checks"] for alpha in c.get("measured", c["attention_shift"])})


def channel_components(record: dict) -> dict[str, list]:
    return {kind: sorted((e["sender"]["layer"], e["sender"]["head"], e["sender"]["component"]) for e in entries)
            for kind, entries in record["channels"].items()}


def compare(fast: dict, exact: dict):
    """Per checked pair: top-1 by each method, and the estimate's Spearman against the exact data scores."""
    exact_pairs = {pair_key(p): p for p in exact["pairs"] if p["checks"]}
    rows, rhos = [], []
    for pair in fast["pairs"]:
        if not pair["checks"]:
            continue
        truth = exact_pairs[pair_key(pair)]
        components = [c["sender"]["component"] for c in pair["checks"]]
        assert components == [c["sender"]["component"] for c in truth["checks"]], "both runs check the same components"
        exact_scores = {c["sender"]["component"]: c["data_score"] for c in truth["checks"]}
        rho = spearman([abs(c["estimated_attention_shift"]["0.0"]) for c in pair["checks"]],
                       [exact_scores[k] for k in components])
        if rho is not None:
            rhos.append(rho)
        rows.append({"pair": pair_key(pair), "channel": pair["channel"], "checked": len(components),
                     "confirmed": sum("0.0" in c["measured"] for c in pair["checks"]), "top1_exact": top1(truth),
                     "top1_attribution": top1(pair), "agrees": top1(pair) == top1(truth), "spearman_estimate": rho})
    rate = sum(r["agrees"] for r in rows) / len(rows) if rows else float("nan")
    median = statistics.median(rhos) if rhos else float("nan")
    mean = statistics.fmean(rhos) if rhos else float("nan")
    return rows, rate, median, mean, channel_components(fast) == channel_components(exact)


if __name__ == "__main__":
    main()
