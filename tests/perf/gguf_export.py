"""GGUF output of a shipped recipe, measured (run by hand, through /work/heavy on a shared machine):

    python tests/perf/gguf_export.py [smollm2-135m|gemma-3-270m] [--recall] [--n-prompts 200] [--gguf-requant auto|keep]

Reports the output sizes (patched GGUF vs the base GGUF vs the float32 safetensors checkpoint), the
time to write each format against copying the base file, llama.cpp's agreement with the float32
edit (mean next-token KL on 36 prompts, with the base's own llama.cpp-vs-float gap beside it; needs
llama-cpp-python), and with --recall the recall gain kept after quantization per N: `th-edit bench
--compare` of the base against the patched GGUF (read by th-edit's own GGUF loading) and against
the recipe's float32 edit, on identical prompts (seed 0).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
RECIPES = {"smollm2-135m": "smollm2-135m-recall.yaml", "gemma-3-270m": "gemma-3-270m-recall.yaml"}


def th_edit(*args: str) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "th_edit", "--quiet", *args], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"th-edit {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
    return time.perf_counter() - started, done.stdout


def _retyped(base: Path, patched: Path) -> list[str]:
    """'name TYPE->TYPE' for each tensor whose bytes differ from the base's."""
    import gguf

    before = {t.name: t for t in gguf.GGUFReader(base).tensors}
    return [f"{t.name} {before[t.name].tensor_type.name}->{t.tensor_type.name}" for t in gguf.GGUFReader(patched).tensors
            if bytes(t.data) != bytes(before[t.name].data)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", nargs="?", default="smollm2-135m", choices=sorted(RECIPES))
    parser.add_argument("--recall", action="store_true", help="also bench recall at N = 4..8 (minutes)")
    parser.add_argument("--n-prompts", type=int, default=200)
    parser.add_argument("--gguf-requant", choices=("auto", "keep"), default="auto")
    parser.add_argument("--float-gains", metavar="JSON", help="the float32 gains per N that an earlier run printed "
                        "(same model, prompts and seed): skips that bench")
    args = parser.parse_args()
    from th_edit.models import resolve

    recipe = ROOT / "recipes" / RECIPES[args.model]
    base = resolve(args.model)
    assert base.gguf_path is not None
    work = Path(tempfile.mkdtemp(prefix="th-edit-gguf-perf-"))
    try:
        started = time.perf_counter()
        shutil.copyfile(base.gguf_path, work / "copy.gguf")
        copy_s = time.perf_counter() - started
        extra = {"gguf": ["--gguf-requant", args.gguf_requant], "lora": ["--format", "safetensors"]}
        times = {fmt: th_edit("apply", str(recipe), "--out", str(work / fmt), "--no-bench", "--format", fmt,
                              *extra.get(fmt, []))[0]
                 for fmt in ("safetensors", "gguf", "lora")}
        (patched,) = (work / "gguf").glob("*.gguf")
        st_bytes = sum(p.stat().st_size for p in (work / "safetensors").glob("*.safetensors"))
        lora_bytes = sum(p.stat().st_size for p in (work / "lora" / "adapter").glob("*"))
        base_bytes = base.gguf_path.stat().st_size
        print(f"{args.model}: base GGUF {base_bytes / 1e6:.1f} MB, patched GGUF {patched.stat().st_size / 1e6:.1f} MB "
              f"({patched.stat().st_size - base_bytes:+,} bytes, --gguf-requant {args.gguf_requant}), float32 "
              f"safetensors {st_bytes / 1e6:.1f} MB, LoRA adapter directory {lora_bytes / 1e6:.2f} MB")
        print(f"edited tensors: {', '.join(_retyped(base.gguf_path, patched))}")
        print(f"time: copying the base file {copy_s:.2f} s; apply --format gguf {times['gguf']:.1f} s; "
              f"apply --format safetensors {times['safetensors']:.1f} s; apply --format safetensors --format lora "
              f"{times['lora']:.1f} s (each run includes loading the base and computing the edit)")
        try:
            import test_real_gguf as agreement
        except Exception:  # pytest.importorskip raises its own Skipped when llama-cpp-python is missing
            agreement = None
        if agreement is not None:
            from th_edit.models import load_model, load_tokenizer

            prompts = [load_tokenizer(base)(p)["input_ids"] for p in agreement._prompts()]
            float_base = agreement._float_logprobs(load_model(base, dtype="float32"), prompts)
            float_edit = agreement._float_logprobs(load_model(resolve(str(work / "safetensors")), dtype="float32"),
                                                   prompts)
            base_gap = agreement._kl(float_base, agreement._llama_logprobs(base.gguf_path, prompts))
            patched_gap = agreement._kl(float_edit, agreement._llama_logprobs(patched, prompts))
            print(f"llama.cpp vs float32, mean next-token KL on {len(prompts)} prompts: base {base_gap:.4f} nats, "
                  f"patched {patched_gap:.4f} nats (edit effect in float32: "
                  f"{agreement._kl(float_edit, float_base):.4f} nats)")
        if args.recall:
            bench = ["bench", args.model, "--task", "laundry", "--n-items", "4-8", "--n-prompts", str(args.n_prompts),
                     "--seed", "0", "--no-kl", "--json", "--compare"]
            gains = {}
            if args.float_gains:
                gains["float32"] = {int(n): gain for n, gain in json.loads(args.float_gains).items()}
            for label, other in (("float32", str(recipe)), ("gguf", str(patched))):
                if label in gains:
                    continue
                seconds, text = th_edit(*bench, other)
                rows = json.loads(text)["paired"]["laundry"]["by_n"]
                gains[label] = {row["n_items"]: row["accuracy_change"] for row in rows}
                print(f"bench --compare {label}: {seconds:.0f} s; gains {json.dumps(gains[label])}")
            for n, float_gain in gains["float32"].items():
                kept = gains["gguf"][n] / float_gain if float_gain else float("nan")
                print(f"N={n}: gain float32 {100 * float_gain:+.1f} pts, GGUF {100 * gains['gguf'][n]:+.1f} pts, "
                      f"kept {kept:.0%}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
