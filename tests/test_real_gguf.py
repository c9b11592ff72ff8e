"""llama.cpp itself runs the patched GGUF of the shipped SmolLM2 recipe (llama-cpp-python, the test extra).

Four next-token distributions per prompt: llama.cpp on the base file and on the patched file, and
transformers in float32 on the dequantized base and on th-edit's float32 edit. llama.cpp never
matches float32 exactly (it computes quantized dot products), so the patched file is judged by the
base's own gap: llama.cpp-patched vs the float edit must stay within a small multiple of
llama.cpp-base vs the float base, and far below what the edit itself changes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from th_edit.cli import main
from th_edit.models import load_model, load_tokenizer, resolve

pytestmark = pytest.mark.real
llama_cpp = pytest.importorskip("llama_cpp")
RECIPE = Path(__file__).parent.parent / "recipes" / "smollm2-135m-recall.yaml"
ITEMS = ["shirt", "sock", "towel", "scarf", "glove", "hat"]
TEMPLATES = [
    "I packed a {a}, a {b} and a {c}. I took out the {b} and the {a}, so the bag still held the",
    "The shop sold a {a} and a {b}. Anna bought the {b}. The one left on the shelf was the",
    "Tom washed the {a}, the {b} and the {c}. He dried the {c} first, then the",
    "My favourite things are the {a} and the {b}.",
    "Question: which is warmer, a {a} or a {b}? Answer:",
    "She lost her {a} on the train, found it, and then lost her",
]


def _prompts() -> list[str]:
    return [t.format(a=ITEMS[i % 6], b=ITEMS[(i + 2) % 6], c=ITEMS[(i + 4) % 6])
            for i in range(6) for t in TEMPLATES]  # 36 prompts


def _llama_logprobs(path: Path, prompts: list[list[int]]) -> np.ndarray:
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=128, n_threads=2, logits_all=True, verbose=False)
    rows = []
    for ids in prompts:
        llm.reset()
        llm.eval(ids)
        logits = np.asarray(llm.scores[llm.n_tokens - 1], dtype=np.float64)
        rows.append(logits - np.logaddexp.reduce(logits))
    # Generation runs in an instance without logits_all (llama-cpp-python 0.3.36 fails to sample with it).
    generator = llama_cpp.Llama(model_path=str(path), n_ctx=128, n_threads=2, verbose=False)
    text = generator("The capital of France is", max_tokens=6, temperature=0.0)["choices"][0]["text"]
    assert text.strip(), "llama.cpp generated nothing"
    return np.stack(rows)


def _float_logprobs(model, prompts: list[list[int]]) -> np.ndarray:
    with torch.no_grad():
        rows = [torch.log_softmax(model(torch.tensor([ids])).logits[0, -1].double(), -1).numpy() for ids in prompts]
    return np.stack(rows)


def _kl(p_log: np.ndarray, q_log: np.ndarray) -> float:
    """Mean KL(p || q) over prompts, nats."""
    return float(np.mean(np.sum(np.exp(p_log) * (p_log - q_log), axis=1)))


def test_llama_cpp_runs_the_patched_smollm2_and_agrees_with_the_float_edit(tmp_path):
    out = tmp_path / "patched"
    result = CliRunner().invoke(main, ["--quiet", "apply", str(RECIPE), "--out", str(out), "--no-bench",
                                       "--format", "safetensors", "--format", "gguf"])
    assert result.exit_code == 0, result.output
    (patched,) = out.glob("*.gguf")
    base = resolve("smollm2-135m")
    tokenizer = load_tokenizer(base)
    prompts = [tokenizer(p)["input_ids"] for p in _prompts()]

    llama_base = _llama_logprobs(base.gguf_path, prompts)
    llama_patched = _llama_logprobs(patched, prompts)
    float_base = _float_logprobs(load_model(base, dtype="float32"), prompts)
    float_edit = _float_logprobs(load_model(resolve(str(out)), dtype="float32"), prompts)

    base_gap = _kl(float_base, llama_base)  # llama.cpp vs float32 on identical weights
    patched_gap = _kl(float_edit, llama_patched)  # plus the re-quantization of the edited tensors
    edit_effect = _kl(float_edit, float_base)
    print(f"KL float||llama.cpp: base {base_gap:.4f}, patched {patched_gap:.4f}; edit effect {edit_effect:.4f} nats")
    assert patched_gap < 2 * base_gap + 0.005
    assert patched_gap < 0.5 * edit_effect  # llama.cpp runs the edit, not the base
    assert _kl(float_edit, llama_base) > 2 * patched_gap
    agree = np.mean(llama_patched.argmax(1) == float_edit.argmax(1))
    assert agree >= np.mean(llama_base.argmax(1) == float_base.argmax(1)) - 0.1
