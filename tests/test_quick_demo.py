"""The README demo on a tiny model: `apply --bench quick` (what `make demo` runs) exits 0 with a
smaller benchmark that `verify` accepts; --n-prompts sizes it; a sizing record that does not match
the benchmark is caught."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from cli_helpers import one_line_error, run_cli
from tiny import tiny_checkpoint

from th_edit.recipe import QUICK_KL_TEXTS, QUICK_PROMPTS

pytestmark = pytest.mark.cli
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def recipe(tmp_path_factory) -> Path:
    """The shipped SmolLM2 recipe's benchmark section (200 prompts per N = 2..10) on a tiny model."""
    root = tmp_path_factory.mktemp("demo")
    base = tiny_checkpoint(root / "m", "llama", seed=2)
    shipped = yaml.safe_load((ROOT / "recipes" / "smollm2-135m-recall.yaml").read_text())
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump({"base_model": str(base), "seed": 3,
                                    "edits": [{"layer": 1, "head": 0, "circuit": "ov", "components": [0], "scale": 2.0}],
                                    "benchmark": shipped["benchmark"]}, sort_keys=False))
    return path


def test_the_makefile_demo_runs_apply_quick():
    demo = re.search(r"^demo:.*?(?=^\S)", (ROOT / "Makefile").read_text(), re.M | re.S).group(0)
    assert "apply recipes/smollm2-135m-recall.yaml --force --bench quick" in demo


def test_the_quick_demo_exits_0_and_verifies(recipe, tmp_path):
    out = tmp_path / "out"
    result = run_cli("apply", recipe, "--force", "--bench", "quick", "--out", out)
    assert result.exit_code == 0, result.output
    assert "without --bench quick" in result.stdout  # says how to get the full table
    assert result.stderr == ""  # --quiet: no bar, no status line
    benchmark = json.loads((out / "provenance.json").read_text())["benchmark"]
    assert benchmark["setup"]["n_prompts_per_n"] == QUICK_PROMPTS
    assert benchmark["side_effects"]["neutral_kl"]["n_texts"] == QUICK_KL_TEXTS
    assert benchmark["setup"]["sizing"] == {"bench": "quick", "n_prompts": None}
    assert "without --bench quick" in (out / "README.md").read_text()  # the card says so too
    verified = run_cli("verify", out)
    assert verified.exit_code == 0, verified.output

    # a report whose sizing record does not match its prompts is caught
    record = json.loads((out / "provenance.json").read_text())
    del record["benchmark"]["setup"]["sizing"]
    (out / "provenance.json").write_text(json.dumps(record))
    tampered = run_cli("verify", out)
    assert tampered.exit_code != 0 and "n_prompts_per_n is 30, but the recipe asks for 200" in tampered.output


def test_n_prompts_sizes_the_benchmark_and_no_bench_contradicts_it(recipe, tmp_path):
    out = tmp_path / "out"
    result = run_cli("apply", recipe, "--n-prompts", "4", "--out", out)
    assert result.exit_code == 0, result.output
    setup = json.loads((out / "provenance.json").read_text())["benchmark"]["setup"]
    assert setup["n_prompts_per_n"] == 4 and setup["sizing"] == {"bench": "full", "n_prompts": 4}
    assert run_cli("verify", out).exit_code == 0
    one_line_error(run_cli("apply", recipe, "--no-bench", "--bench", "quick", "--out", tmp_path / "x"), "--no-bench")
    assert not (tmp_path / "x").exists()
