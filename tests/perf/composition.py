"""Benchmark (run by hand): all-pairs composition scores, time and memory, against TransformerLens.

    python tests/perf/composition.py [--tl-python /work/venvs/tl/bin/python] [--skip-1b] [--skip-accuracy]

Every phase runs in its own fresh process; "peak above base" is the process's VmHWM at the end
minus its VmRSS just before the measured work (imports, config and the lazy checkpoint handle
already in; weights are read *inside* the measured work). Wall and CPU time (user + system) are
measured around the work only; on a shared machine CPU time is the steadier number.

Phases:
  * ours on `smollm2-135m` (30 layers × 9 heads, d_model 576, d_head 64, 3 KV groups): per-head
    SVD factors from the checkpoint, then q, k and v scores, full and per-component, every pair.
    Goals (issue 10): ≤ 5 s and ≤ 1.5 GB above base.
  * ours on a synthetic 1B-class shape (16 layers × 32 heads, 8 KV groups, d_model 2048, d_head 64,
    random weights generated per tensor, no files). Goal: completes within 4 GB.
  * ours and TransformerLens on the GPT-2-small shape (12 × 12 heads, d_model 768), random weights:
    TransformerLens 4.x's `TransformerBridge.all_composition_scores(mode)` (the HookedTransformer
    logic: FactoredMatrix products of every pair, full scores only) on a `boot_native` model, one
    mode per process, run with the python of a venv that has transformer-lens (never installed in
    th-edit's). Without it, a naive per-pair loop over the same factors is the baseline instead.
    TransformerLens is never run on SmolLM2 or larger: it needs ≈ 24 GB there.
  * accuracy: float32 scores on `smollm2-135m` against float64 dense d×d products, sampled pairs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEFAULT_TL_PYTHON = "/work/venvs/tl/bin/python"
GB = 1e9

COMMON = r"""
import json, resource, sys, time
import torch

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024

def cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
"""

OURS = COMMON + r"""
import zlib
from th_edit import ui
ui.configure(quiet=True, verbose=False)
from th_edit.arch import adapter_for
from th_edit.channels import composition_scores, head_factors

class RandomTensors:
    '''Random weights of a config's model, generated per tensor on request (nothing on disk, nothing kept).'''

    def __init__(self, config):
        from transformers import AutoModelForCausalLM
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        self.shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}

    def __contains__(self, name):
        return name in self.shapes

    def get(self, name):
        generator = torch.Generator().manual_seed(zlib.crc32(name.encode()))
        values = torch.randn(self.shapes[name], generator=generator)
        if "norm" in name or ".ln_" in name:
            return (1.0 + 0.1 * values) if name.endswith("weight") else 0.1 * values
        return 0.02 * values

def synthetic(shape):
    from transformers import GPT2Config, LlamaConfig
    if shape == "gpt2-small-shape":
        return GPT2Config(n_layer=12, n_head=12, n_embd=768)
    return LlamaConfig(num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8, hidden_size=2048,
                       head_dim=64, intermediate_size=8192, vocab_size=128256)

shape = sys.argv[1]
if shape == "smollm2-135m":
    from th_edit.models import load_config, resolve
    resolved = resolve(shape)
    config, source = load_config(resolved), resolved.tensors()
else:
    config = synthetic(shape)
    source = RandomTensors(config)
adapter = adapter_for(config)
base = status("VmRSS")
wall0, cpu0 = time.perf_counter(), cpu()
factors = head_factors(adapter, source)
wall1, cpu1 = time.perf_counter(), cpu()
peak_factors = status("VmHWM")
scores = composition_scores(factors)
wall2, cpu2 = time.perf_counter(), cpu()
result_bytes = sum(t.numel() * t.element_size() for t in (*scores.components.values(), *scores.full.values()))
print(json.dumps({
    "heads": adapter.n_layers * adapter.n_heads, "d_model": adapter.d_model, "d_head": adapter.d_head,
    "factors_s": wall1 - wall0, "factors_cpu_s": cpu1 - cpu0, "scores_s": wall2 - wall1, "scores_cpu_s": cpu2 - cpu1,
    "base_bytes": base, "peak_factors_bytes": peak_factors, "peak_bytes": status("VmHWM"), "result_bytes": result_bytes,
    "threads": torch.get_num_threads(),
}))
"""

TRANSFORMER_LENS = COMMON + r"""
from transformer_lens.model_bridge import TransformerBridge
import transformer_lens
torch.set_grad_enabled(False)  # the kindest setting for it: no autograd graph is kept
mode = sys.argv[1]
bridge = TransformerBridge.boot_native(dict(n_layers=12, d_model=768, n_heads=12, d_head=64, d_mlp=3072,
                                            d_vocab=50257, n_ctx=1024, act_fn="gelu", seed=0))
base = status("VmRSS")
wall0, cpu0 = time.perf_counter(), cpu()
scores = bridge.all_composition_scores(mode)
wall1, cpu1 = time.perf_counter(), cpu()
assert tuple(scores.scores.shape) == (12, 12, 12, 12)
version = getattr(transformer_lens, "__version__", None)
if version is None:
    from importlib.metadata import version as package_version
    version = package_version("transformer-lens")
print(json.dumps({"mode": mode, "scores_s": wall1 - wall0, "scores_cpu_s": cpu1 - cpu0, "base_bytes": base,
                  "peak_bytes": status("VmHWM"), "version": version}))
"""

NAIVE = COMMON + r"""
import zlib
from th_edit import ui
ui.configure(quiet=True, verbose=False)
from th_edit.arch import adapter_for
from th_edit.channels import head_factors, read_side
from transformers import GPT2Config
exec(sys.argv[1])  # RandomTensors, shared with OURS
config = GPT2Config(n_layer=12, n_head=12, n_embd=768)
adapter = adapter_for(config)
factors = head_factors(adapter, RandomTensors(config))
torch.set_num_threads(1)  # thousands of small products: one thread is fastest for them on a shared machine
base = status("VmRSS")
wall0, cpu0 = time.perf_counter(), cpu()
L, H = factors.n_layers, factors.n_heads
for mode in ("q", "k", "v"):
    side = read_side(factors, mode)
    for la in range(L):
        for ha in range(H):
            write = factors.ov.V[la, ha]
            weights = factors.ov.S[la, ha].square() / factors.ov.S[la, ha].square().sum()
            for lb in range(la + 1, L):
                for hb in range(H):
                    read = side.directions[lb, hb] * (side.singular_values[lb, hb] / side.singular_values[lb, hb].norm())
                    components = (write.T @ read).norm(dim=-1)
                    full = (weights @ components.square()).sqrt()
wall1, cpu1 = time.perf_counter(), cpu()
print(json.dumps({"mode": "qkv", "scores_s": wall1 - wall0, "scores_cpu_s": cpu1 - cpu0, "base_bytes": base,
                  "peak_bytes": status("VmHWM"), "version": "naive per-pair loop"}))
"""

ACCURACY = COMMON + r"""
from th_edit import ui
ui.configure(quiet=True, verbose=False)
from th_edit.arch import adapter_for
from th_edit.channels import HeadId, composition_scores, head_factors
from th_edit.linalg import single_threaded
from th_edit.models import load_config, resolve
resolved = resolve("smollm2-135m")
adapter, source = adapter_for(load_config(resolved)), resolved.tensors()
scores = composition_scores(head_factors(adapter, source))
n_pairs = int(sys.argv[1])
generator = torch.Generator().manual_seed(0)
worst = {"full": 0.0, "components": 0.0, "components_rel": 0.0}
with single_threaded():
    weights = [adapter.layer_weights(source, layer, dtype=torch.float64) for layer in range(adapter.n_layers)]
    rank = adapter.d_head
    for _ in range(n_pairs):
        la, lb = sorted(torch.randperm(adapter.n_layers, generator=generator)[:2].tolist())
        a = HeadId(la, int(torch.randint(adapter.n_heads, (1,), generator=generator)))
        b = HeadId(lb, int(torch.randint(adapter.n_heads, (1,), generator=generator)))
        ov_a = weights[a.layer].W_V[a.head] @ weights[a.layer].W_O[a.head]
        write = torch.linalg.svd(ov_a).Vh[:rank]
        qk_b = weights[b.layer].W_Q[b.head] @ weights[b.layer].W_K[b.head].T
        ov_b = weights[b.layer].W_V[b.head] @ weights[b.layer].W_O[b.head]
        for mode, matrix in (("q", qk_b), ("k", qk_b.T), ("v", ov_b)):
            full = torch.linalg.norm(ov_a @ matrix) / (torch.linalg.norm(ov_a) * torch.linalg.norm(matrix))
            components = torch.linalg.vector_norm(write @ matrix, dim=-1) / torch.linalg.norm(matrix)
            pair = scores.pair(a, b, mode)
            worst["full"] = max(worst["full"], abs(pair.full - float(full)))
            error = (pair.components - components).abs()
            worst["components"] = max(worst["components"], float(error.max()))
            worst["components_rel"] = max(worst["components_rel"], float((error / components).max()))
print(json.dumps({"pairs": n_pairs, **worst}))
"""


def child(python: str, code: str, *args: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([python, "-c", code, *args], capture_output=True, text=True, env=env)
    if out.returncode:
        raise RuntimeError(f"child failed ({python}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def available_memory() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def show_ours(name: str, run: dict) -> None:
    total = run["factors_s"] + run["scores_s"]
    print(f"{name}: {run['heads']} heads, d_model {run['d_model']}, d_head {run['d_head']}, {run['threads']} threads")
    print(f"  head SVD factors   {run['factors_s']:6.2f} s wall  {run['factors_cpu_s']:6.2f} s cpu   "
          f"peak above base {(run['peak_factors_bytes'] - run['base_bytes']) / GB:.3f} GB")
    print(f"  q+k+v, per-comp.   {run['scores_s']:6.2f} s wall  {run['scores_cpu_s']:6.2f} s cpu   "
          f"peak above base {(run['peak_bytes'] - run['base_bytes']) / GB:.3f} GB  (result {run['result_bytes'] / GB:.3f} GB)")
    print(f"  total              {total:6.2f} s wall  peak RSS {run['peak_bytes'] / GB:.3f} GB "
          f"(base {run['base_bytes'] / GB:.3f} GB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tl-python", default=DEFAULT_TL_PYTHON, help="python of a venv with transformer-lens 4.x")
    parser.add_argument("--skip-1b", action="store_true", help="skip the synthetic 1B-class shape (≈ 1 min)")
    parser.add_argument("--skip-accuracy", action="store_true", help="skip the float32-vs-dense check")
    parser.add_argument("--skip-baseline", action="store_true", help="skip the GPT-2-shape comparison (≈ 6 min)")
    parser.add_argument("--accuracy-pairs", type=int, default=60)
    args = parser.parse_args()
    python = sys.executable

    smol = child(python, OURS, "smollm2-135m")
    show_ours("ours, smollm2-135m", smol)
    smol_total = smol["factors_s"] + smol["scores_s"]
    smol_peak = (smol["peak_bytes"] - smol["base_bytes"]) / GB
    smol_cpu = (smol["factors_cpu_s"] + smol["scores_cpu_s"]) / smol["threads"]
    print(f"  goals: time {smol_total:.2f} s wall (≤ 5 s: {'met' if smol_total <= 5 else 'NOT met'}; "
          f"cpu / {smol['threads']} threads = {smol_cpu:.2f} s, the wall time if the cores were ours alone), "
          f"peak above base {smol_peak:.2f} GB (≤ 1.5 GB: {'met' if smol_peak <= 1.5 else 'NOT met'})")
    print(f"  machine load average while it ran: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")

    if not args.skip_1b:
        big = child(python, OURS, "llama-1b-shape")
        show_ours("\nours, synthetic 1B-class shape (16 × 32 heads, 8 KV groups)", big)
        print(f"  goal: peak RSS {big['peak_bytes'] / GB:.2f} GB (≤ 4 GB: {'met' if big['peak_bytes'] <= 4 * GB else 'NOT met'})")

    if not args.skip_baseline:
        compare_on_gpt2_shape(python, args.tl_python)

    if not args.skip_accuracy:
        accuracy = child(python, ACCURACY, str(args.accuracy_pairs))
        print(f"\naccuracy, smollm2-135m, float32 scores vs float64 dense d×d products, "
              f"{accuracy['pairs']} random pairs × 3 modes: "
              f"max |Δ full| {accuracy['full']:.2e}, max |Δ C_k| {accuracy['components']:.2e} "
              f"(relative {accuracy['components_rel']:.2e})")


def compare_on_gpt2_shape(python: str, tl_python: str) -> None:
    gpt2 = child(python, OURS, "gpt2-small-shape")
    show_ours("\nours, GPT-2-small shape (random weights)", gpt2)
    baseline_runs = []
    if Path(tl_python).exists():
        for mode in ("Q", "K", "V"):
            if available_memory() < 12 * GB:
                print(f"TransformerLens {mode}: skipped, less than 12 GB of memory available")
                continue
            baseline_runs.append(child(tl_python, TRANSFORMER_LENS, mode))
        label = (f"TransformerLens {baseline_runs[0]['version']} all_composition_scores, GPT-2-small shape "
                 "(full scores only, one mode per process)") if baseline_runs else ""
    else:
        print(f"{tl_python} not found: TransformerLens is not installed, comparing with a naive per-pair loop")
        random_tensors = OURS.split("class RandomTensors:")[1].split("def synthetic")[0]
        baseline_runs.append(child(python, NAIVE, "class RandomTensors:" + random_tensors))
        label = "naive per-pair loop over the same factors, GPT-2-small shape (q, k, v, full and per-component)"
    if baseline_runs:
        print(f"{label}:")
        for run in baseline_runs:
            print(f"  mode {run['mode']:<4} {run['scores_s']:6.2f} s wall  {run['scores_cpu_s']:6.2f} s cpu   "
                  f"peak above base {(run['peak_bytes'] - run['base_bytes']) / GB:.3f} GB")
        their_time = sum(run["scores_s"] for run in baseline_runs)
        their_cpu = sum(run["scores_cpu_s"] for run in baseline_runs)
        their_peak = max(run["peak_bytes"] - run["base_bytes"] for run in baseline_runs)
        our_peak = gpt2["peak_bytes"] - gpt2["base_bytes"]
        modes = "".join(run["mode"] for run in baseline_runs)
        print(f"ratios (theirs / ours, ours = factors + all three modes with per-component scores; theirs = modes {modes}): "
              f"wall {their_time / (gpt2['factors_s'] + gpt2['scores_s']):.1f}×, "
              f"cpu {their_cpu / (gpt2['factors_cpu_s'] + gpt2['scores_cpu_s']):.1f}×, "
              f"peak memory above base {their_peak / our_peak:.2g}×")


if __name__ == "__main__":
    main()
