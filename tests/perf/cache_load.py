"""Benchmark (run by hand): first vs cached load of an offline GGUF alias.

    python tests/perf/cache_load.py [smollm2-135m]

Each load runs in a fresh process with an empty (first) or warm (second) cache directory and
times resolve + from_pretrained + tokenizer, excluding Python/torch import time. Goal (issue 2):
the cached load of smollm2-135m takes <= 3 s.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

CHILD = r"""
import json, sys, time
import torch, transformers  # imports are not part of the load
from th_edit.models import load_model, load_tokenizer, resolve
from th_edit import ui
ui.configure(quiet=True, verbose=False)
start = time.perf_counter()
resolved = resolve(sys.argv[1])
model = load_model(resolved)
tokenizer = load_tokenizer(resolved)
print(json.dumps({"seconds": time.perf_counter() - start, "params": sum(p.numel() for p in model.parameters())}))
"""


def timed_load(alias: str, cache: str) -> dict:
    env = dict(os.environ, TH_EDIT_CACHE=cache)
    out = subprocess.run([sys.executable, "-c", CHILD, alias], env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    alias = sys.argv[1] if len(sys.argv) > 1 else "smollm2-135m"
    with tempfile.TemporaryDirectory() as cache:
        first = timed_load(alias, cache)
        second = timed_load(alias, cache)
    print(f"model: {alias} ({first['params']:,} parameters)")
    print(f"first load (dequantize GGUF + write cache): {first['seconds']:6.2f} s")
    print(f"second load (cached safetensors):           {second['seconds']:6.2f} s")
    print(f"speed-up: {first['seconds'] / second['seconds']:.1f}x   goal: second load <= 3 s -> "
          f"{'met' if second['seconds'] <= 3 else 'NOT met'}")


if __name__ == "__main__":
    main()
