"""GPU check, run by hand on a machine with CUDA (not a pytest test):

    python tests/gpu/check_gpu.py            # smollm2-135m; one GPU, a few minutes

Checks that th-edit on the GPU gives what it gives on the CPU, for smollm2-135m:
  1. loads with --device cuda and auto, in float32 and bfloat16;
  2. composition scores (from the session's own weights) agree with the CPU's;
  3. `channels` finds the same inhibition channels (senders and receivers);
  4. a short `search` with one seed chooses the same recipe (same heads and components, scales
     within 1e-3) in float32;
  5. `apply`: the edited tensors computed on the GPU-loaded model are identical to the CPU's;
and prints the time of each step on both. Exits 0 with one line when no GPU is present, 1 when a
check fails. `--device cpu` puts the CPU in the GPU's place (a check of the script itself).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

MODEL = "smollm2-135m"
RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "smollm2-135m-recall.yaml"
COMPOSITION_TOLERANCE = 1e-4  # absolute, on composition scores (float64 SVDs of float32 weights)
SCALE_TOLERANCE = 1e-3


def timed(label: str, timings: dict, function, *args, **kwargs):
    started = time.perf_counter()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    value = function(*args, **kwargs)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    timings[label] = time.perf_counter() - started
    return value


def main(argv: list[str]) -> int:
    # `--device cpu` runs every step with the CPU in the GPU's place: a check of this script itself.
    device = argv[argv.index("--device") + 1] if "--device" in argv else "cuda"
    model = argv[argv.index("--model") + 1] if "--model" in argv else MODEL  # another: a quick self-test
    if device == "cuda" and not torch.cuda.is_available():
        print("check_gpu: no CUDA GPU here, nothing checked")
        return 0
    import th_edit
    from th_edit.channels import HeadId, composition_scores, head_factors
    from th_edit.channels.find import ChannelSettings, find_channels
    from th_edit.search.optimize import Limits
    from th_edit.search.pipeline import SearchSettings, search
    from th_edit.search.space import candidates_from_channels

    failures: list[str] = []
    cpu_t: dict[str, float] = {}
    gpu_t: dict[str, float] = {}

    def check(ok: bool, what: str) -> None:
        print(f"  {'ok  ' if ok else 'FAIL'} {what}")
        if not ok:
            failures.append(what)

    name = torch.cuda.get_device_name(0) if device == "cuda" else "none (--device cpu: the script checks itself)"
    print(f"GPU: {name}; torch {torch.__version__}; th-edit {th_edit.__version__}")
    cpu = timed("load", cpu_t, th_edit.load, model, device="cpu", dtype="float32")
    gpu = timed("load", gpu_t, th_edit.load, model, device=device, dtype="float32")
    print("1. loads")
    for where, dtype in (("cuda", "bfloat16"), ("auto", "float32"), ("auto", "bfloat16")) if device == "cuda" else ():
        session = th_edit.load(model, device=where, dtype=dtype)
        check(session.device.type == "cuda" and str(session.dtype) == f"torch.{dtype}",
              f"--device {where} --dtype {dtype}: on {session.device}, {session.dtype}")
        del session
        torch.cuda.empty_cache()

    print("2. composition scores")
    cpu_scores = timed("composition", cpu_t, lambda: composition_scores(head_factors(cpu.adapter, cpu.parameters)))
    gpu_scores = timed("composition", gpu_t, lambda: composition_scores(head_factors(gpu.adapter, gpu.parameters)))
    for mode in ("q", "k", "v"):
        for kind, of in (("full", lambda x: x.full_scores(mode)), ("per-component", lambda x: x.component_scores(mode))):
            a, b = of(cpu_scores).double().cpu(), of(gpu_scores).double().cpu()
            finite = torch.isfinite(a)
            worst = float((a[finite] - b[finite]).abs().max())
            check(bool((finite == torch.isfinite(b)).all()) and worst <= COMPOSITION_TOLERANCE,
                  f"{kind} scores, mode {mode}: largest difference {worst:.2e}")
    receiver = HeadId(cpu.info.n_layers - 1, 0)
    top_cpu = [str(c).split("(")[0] for c in cpu_scores.top_components(receiver, "q", n=5)]
    top_gpu = [str(c).split("(")[0] for c in gpu_scores.top_components(receiver, "q", n=5)]
    check(top_cpu == top_gpu, f"top 5 components into {receiver} (q) agree")

    print("3. channels")
    settings = ChannelSettings(seed=0, data_check=False)
    cpu_channels = timed("channels", cpu_t, find_channels, cpu, ("inhibition",), settings).as_dict()
    gpu_channels = timed("channels", gpu_t, find_channels, gpu, ("inhibition",), settings).as_dict()

    def links(record):
        return [(c["sender"]["layer"], c["sender"]["head"], c["sender"]["component"], c["receiver"]["layer"],
                 c["receiver"]["head"]) for c in record["channels"]["inhibition"]]

    check(links(cpu_channels) == links(gpu_channels), f"same inhibition channels ({len(links(cpu_channels))})")

    print("4. search (float32, seed 0, 12 trials)")
    candidates = candidates_from_channels(cpu_channels, "inhibition", 4)
    search_settings = SearchSettings(n_items=(4, 5, 6), trials=12, seed=0, limits=Limits(0.02, 0.02), tune_prompts=20,
                                     held_out_prompts=20, whole_head_scales=(2.0,))
    cpu_report = timed("search", cpu_t, search, cpu, candidates, search_settings)
    gpu_report = timed("search", gpu_t, search, gpu, candidates, search_settings)
    cpu_best, gpu_best = cpu_report.result.best, gpu_report.result.best
    same = (cpu_best is None) == (gpu_best is None)
    if same and cpu_best is not None:
        same = ([(e.layer, e.head, e.circuit, e.components) for e in cpu_best.edits]
                == [(e.layer, e.head, e.circuit, e.components) for e in gpu_best.edits]
                and all(abs(a.scale - b.scale) <= SCALE_TOLERANCE for a, b in zip(cpu_best.edits, gpu_best.edits)))
    check(same, f"same chosen recipe (cpu trial {cpu_best and cpu_best.number}, gpu trial {gpu_best and gpu_best.number})")
    differing = sum(a.scores.mean_laundry != b.scores.mean_laundry
                    for a, b in zip(cpu_report.result.trials, gpu_report.result.trials))
    print(f"       trials whose tuning accuracy differs between CPU and GPU: {differing} of {len(cpu_report.result.trials)}")

    print("5. apply (the shipped recipe)" if model == MODEL else "5. apply (one edit)")
    recipe = (th_edit.Recipe.from_yaml(str(RECIPE)) if model == MODEL else
              th_edit.Recipe(base_model=model, edits=[th_edit.Edit(layer=1, head=0, circuit="ov", components=[0, 1], scale=2.0)]))
    cpu_edit = timed("apply (compute)", cpu_t, cpu.compute, recipe)
    gpu_edit = timed("apply (compute)", gpu_t, gpu.compute, recipe)
    identical = cpu_edit.values.keys() == gpu_edit.values.keys() and all(
        torch.equal(cpu_edit.values[name].cpu(), gpu_edit.values[name].cpu()) for name in cpu_edit.values)
    check(identical, f"identical edited tensors ({len(cpu_edit.values)})")

    print(f"\ntimings (s)      cpu  {device:>7}")
    for label in cpu_t:
        print(f"  {label:<16}{cpu_t[label]:7.2f}  {gpu_t.get(label, float('nan')):7.2f}")
    print("check_gpu: " + ("all checks passed" if not failures else f"{len(failures)} check(s) failed: {'; '.join(failures)}"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
