"""Throughput of `th-edit bench`'s pipeline against a plain batched transformers forward pass.

Run by hand (pytest does not collect it):

    TH_EDIT_CACHE=... python tests/perf/bench_throughput.py [--model smollm2-135m] [--n-prompts 20]

Both sides score the same prompts with the same batch size in the same process. th-edit's side
is what `th-edit bench` runs once the model is loaded (`run_single`: tokenize and check the
prompts, score, summarize with intervals). The plain side is what one would write without
th-edit: tokenize each batch with left padding, take `model(**batch).logits[:, -1]`. The two
are run alternately several times and the best time of each is kept, so a noisy neighbour on a
shared machine penalizes both alike.
"""

from __future__ import annotations

import argparse
import time

import torch

from th_edit import ui
from th_edit.bench import build_prompts, run_single
from th_edit.models import load_model, load_tokenizer, resolve


def plain_forward(model, tokenizer, texts: list[str], batch_size: int) -> torch.Tensor:
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    rows = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True)
            rows.append(model(**batch).logits[:, -1])
    return torch.cat(rows)


def timed(function) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--n-prompts", type=int, default=20, help="per N (laundry N=2..8) and for IOI")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    ui.configure(quiet=True, verbose=False)  # progress bars would interleave with the results

    resolved = resolve(args.model)
    model, tokenizer = load_model(resolved, dtype="float32"), load_tokenizer(resolved)
    prompts = build_prompts(tokenizer, ["laundry", "ioi"], range(2, 9), args.n_prompts, seed=0)
    texts = [p.prompt for p in prompts]
    tokens = sum(len(ids) for ids in tokenizer(texts)["input_ids"])
    print(f"{args.model}: {len(prompts)} prompts, {tokens} tokens, batch size {args.batch_size}, "
          f"{torch.get_num_threads()} threads")

    ours = lambda: run_single(model, tokenizer, prompts, model_info={}, setup={},  # noqa: E731
                              batch_size=args.batch_size)
    plain = lambda: plain_forward(model, tokenizer, texts, args.batch_size)  # noqa: E731
    ours(), plain()  # warm-up: first calls pay for allocator and kernel setup
    ours_times, plain_times = [], []
    for _ in range(args.repeats):  # alternate, so background load hits both sides
        ours_times.append(timed(ours))
        plain_times.append(timed(plain))
    ours_rate, plain_rate = len(prompts) / min(ours_times), len(prompts) / min(plain_times)
    print(f"th-edit run_single:    {ours_rate:7.1f} prompts/s  (best of {args.repeats}: {min(ours_times):.2f} s)")
    print(f"plain forward:         {plain_rate:7.1f} prompts/s  (best of {args.repeats}: {min(plain_times):.2f} s)")
    print(f"ratio th-edit / plain: {ours_rate / plain_rate:.2f}x  (goal >= 0.9x)")


if __name__ == "__main__":
    main()
