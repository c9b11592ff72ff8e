"""Benchmark (run by hand): the README demo's `apply`, quick (`--bench quick`, what `make demo`
runs) against the full benchmark (the recipe's own, what the demo ran before), in the same run.

    python tests/perf/demo_speed.py [--recipe recipes/smollm2-135m-recall.yaml] [--only quick|full]

Each side is the `th-edit apply RECIPE --force --out DIR` command in a fresh process (model load,
edit, benchmark, checkpoint write: what a user waits for), timed from start to exit; the quick side
runs first. The 1-minute load average is printed beside each time (the machine is shared: a time
measured under load is longer than on a quiet machine), and the benchmark's own wall time from
provenance.json. The target: quick under 90 s on a quiet 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SIDES = {"quick": ["--bench", "quick"], "full": []}


def run_side(recipe: Path, extra: list[str], out: Path) -> tuple[float, float, float, dict]:
    """(wall seconds, load average before, after, the benchmark report) of one `th-edit apply`."""
    command = [sys.executable, "-m", "th_edit", "--quiet", "apply", str(recipe), "--force", "--out", str(out), *extra]
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    load_after = os.getloadavg()[0]
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr}")
    report = json.loads((out / "provenance.json").read_text())["benchmark"]
    return seconds, load_before, load_after, report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=ROOT / "recipes" / "smollm2-135m-recall.yaml")
    parser.add_argument("--only", choices=list(SIDES))
    args = parser.parse_args()
    print(f"{args.recipe.name} on {os.cpu_count()} CPU(s), OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '(unset)')}",
          flush=True)
    with tempfile.TemporaryDirectory() as scratch:
        for side, extra in SIDES.items():
            if args.only and side != args.only:
                continue
            seconds, before, after, report = run_side(args.recipe, extra, Path(scratch) / side)
            kl = report["side_effects"]["neutral_kl"]
            print(f"  {side:>5}: apply {seconds:6.1f} s (benchmark {report['wall_seconds']:.1f} s of it; "
                  f"{report['prompt_counts']['total']} prompts, {kl['n_texts'] if kl else 0} neutral texts)  "
                  f"load average {before:.2f} -> {after:.2f}", flush=True)


if __name__ == "__main__":
    main()
