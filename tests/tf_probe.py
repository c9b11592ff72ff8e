"""What a checkpoint computes under whatever transformers is installed; run by tests in two venvs.

Usage: python tf_probe.py SPEC.json OUT.pt, where SPEC holds {"dirs": [...]} and either
"prompts" (texts: tokenized by the checkpoint's own AutoTokenizer, plus greedy generation) or
"ids" (token ids, for tokenizer-less tiny models). OUT.pt gets {dir: record}. Only torch and
transformers are imported, so it runs in the transformers 4.x venv that has nothing else.
"""

import json
import sys

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

# Texts whose tokenization differs between tokenizer setups: whitespace runs, non-ASCII, special
# tokens written as text, a leading space.
TRICKY = ["  Hello  world\n\ttabs", "café naïve 日本語 🤖", "<|im_start|>user hi<|im_end|>", "<bos><eos> x", " leading"]


def probe(path: str, spec: dict) -> dict:
    # Eager attention on both sides: 4.x's SDPA path silently drops Gemma 2's score soft-capping (a
    # 4.x kernel difference, not a config one; this probe compares what the two read from the files).
    model, info = AutoModelForCausalLM.from_pretrained(path, output_loading_info=True, attn_implementation="eager")
    model.eval()
    record = {"version": transformers.__version__, "loading_info": {k: [str(x) for x in v] for k, v in info.items()},
              "logits": [], "generated": [], "ids": []}
    with torch.no_grad():
        if "ids" in spec:
            for ids in spec["ids"]:
                record["logits"].append(model(torch.tensor([ids])).logits[0, -1])
            return record
        tokenizer = AutoTokenizer.from_pretrained(path)
        record["tokenizer"] = {
            "tricky": [tokenizer(text)["input_ids"] for text in TRICKY],
            "decoded": [tokenizer.decode(tokenizer(text)["input_ids"]) for text in TRICKY],
            "special": [tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id],
            "chat": tokenizer.apply_chat_template([{"role": "user", "content": "Hi there"}], tokenize=False,
                                                  add_generation_prompt=True) if tokenizer.chat_template else None,
        }
        for i, text in enumerate(spec["prompts"]):
            encoded = tokenizer(text, return_tensors="pt")  # everything it returns must be accepted
            record["ids"].append(encoded["input_ids"][0].tolist())
            # Last-token logits only: all of them would be [tokens x vocab] (700 MB for Gemma 3).
            record["logits"].append(model(**encoded, logits_to_keep=1).logits[0, -1])
            if i < spec.get("generate_prompts", len(spec["prompts"])):
                generated = model.generate(**encoded, max_new_tokens=spec.get("generate", 20), do_sample=False)
                record["generated"].append(generated[0, encoded["input_ids"].shape[1]:].tolist())
    return record


if __name__ == "__main__":
    spec = json.loads(open(sys.argv[1]).read())
    torch.save({path: probe(path, spec) for path in spec["dirs"]}, sys.argv[2])
