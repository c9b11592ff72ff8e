"""Benchmark (run by hand): `th-edit apply` (no benchmark) against a plain save_pretrained.

    python tests/perf/apply_memory.py

Base: the float32 SmolLM2-135M checkpoint (safetensors) that `smollm2-135m` dequantizes to.
Each step runs in its own fresh process; peak RSS is the child's ru_maxrss, wall time is
measured around the work inside the child (imports excluded, reported separately).
Goals (issue 3): apply peak RSS <= 1.3x the checkpoint size; apply wall time <= 2x a plain
save_pretrained of the unedited model.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

COMMON = r"""
import json, resource, sys, time
t0 = time.perf_counter()
import torch, transformers
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer  # both sides: imports are not timed
from th_edit import ui
ui.configure(quiet=True, verbose=False)
imported = time.perf_counter()
"""

SAVE_PRETRAINED = COMMON + r"""
from transformers import AutoModelForCausalLM
base, out = sys.argv[1], sys.argv[2]
start = time.perf_counter()
model = AutoModelForCausalLM.from_pretrained(base)
loaded = time.perf_counter()
model.save_pretrained(out)
done = time.perf_counter()
print(json.dumps({"import_s": imported - t0, "load_s": loaded - start, "save_s": done - loaded, "total_s": done - start,
                  "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""

APPLY = COMMON + r"""
from pathlib import Path
from th_edit.apply import compute, prepare_file, resolve_target, write
from th_edit.export import check_target
recipe, out = Path(sys.argv[1]), Path(sys.argv[2])
start = time.perf_counter()
prepared = prepare_file(recipe)
target = resolve_target(prepared, out)
check_target(target, False, prepared.base.inputs())
write(prepared, compute(prepared), target, force=False)
done = time.perf_counter()
print(json.dumps({"import_s": imported - t0, "total_s": done - start,
                  "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""

BASELINE_RSS = COMMON + r"""
print(json.dumps({"peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""

RECIPE = """base_model: {base}
edits:
  - {{layer: 3, head: 1, circuit: ov, components: [0, 1], scale: 2.0}}
  - {{layer: 9, head: 4, circuit: qk, components: [0], scale: 0.5}}
  - {{layer: 20, head: 8, circuit: ov, components: [2], scale: 0.0}}
"""


def child(code: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code, *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    from th_edit.models import resolve

    base = resolve("smollm2-135m").path  # float32 safetensors
    size = sum(p.stat().st_size for p in base.glob("*.safetensors"))
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        recipe = tmp_path / "recipe.yaml"
        recipe.write_text(RECIPE.format(base=base))
        imports_only = child(BASELINE_RSS)
        plain = child(SAVE_PRETRAINED, str(base), str(tmp_path / "plain"))
        applied = child(APPLY, str(recipe), str(tmp_path / "edited"))
    gb = 1e9
    print(f"checkpoint: {base.name}  {size / gb:.3f} GB float32 safetensors")
    print(f"python + torch + transformers after import:   peak RSS {imports_only['peak_rss_bytes'] / gb:.3f} GB")
    print(f"plain from_pretrained + save_pretrained:       peak RSS {plain['peak_rss_bytes'] / gb:.3f} GB"
          f" ({plain['peak_rss_bytes'] / size:.2f}x checkpoint); load {plain['load_s']:.2f} s + save {plain['save_s']:.2f} s")
    print(f"th-edit apply (3 edits, no benchmark):          peak RSS {applied['peak_rss_bytes'] / gb:.3f} GB"
          f" ({applied['peak_rss_bytes'] / size:.2f}x checkpoint); {applied['total_s']:.2f} s")
    print(f"ratios: apply RSS / checkpoint = {applied['peak_rss_bytes'] / size:.2f} (goal <= 1.3); "
          f"apply time / save_pretrained = {applied['total_s'] / plain['save_s']:.2f}, "
          f"apply time / (load + save_pretrained) = {applied['total_s'] / plain['total_s']:.2f} (goal <= 2)")


if __name__ == "__main__":
    main()
