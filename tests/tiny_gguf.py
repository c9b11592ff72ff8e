"""Tiny GGUF files written in the test, as llama.cpp's converter lays them out (no downloads).

Tensors are random, drawn directly in GGUF form: floats quantized with the gguf package, and the
K-quant (which the gguf package cannot quantize) as random blocks with sane scales. The names and
layouts are written here independently of th_edit.gguf_export: the llama q/k rows interleaved for
llama.cpp's rotary, Gemma norms stored as 1 + w. transformers' GGUF loader reads them back.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

VOCAB = 257  # the byte alphabet of a GPT-2 style byte-level tokenizer, and one merge ("a b" -> "ab")
LAYERS = 2


def _bytes_alphabet() -> list[str]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return [bytes_to_unicode()[b] for b in range(256)] + ["ab"]


def _random_q4_k(rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    """Random Q4_K blocks (d, dmin as float16, then 12 scale bytes and 128 nibble bytes)."""
    import gguf

    block_size, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q4_K]
    n_blocks = rows * cols // block_size
    blocks = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)
    scales = np.abs(rng.normal(2e-3, 5e-4, size=(n_blocks, 2))).astype(np.float16)
    blocks[:, :4] = scales.view(np.uint8).reshape(n_blocks, 4)
    return blocks.reshape(rows, cols // block_size * type_size)


def _tensor(rng: np.random.Generator, shape: tuple[int, ...], qtype, centre: float = 0.0):
    import gguf

    if qtype == gguf.GGMLQuantizationType.Q4_K:
        return _random_q4_k(*shape, rng)
    values = (centre + 0.08 * rng.standard_normal(shape)).astype(np.float32)
    if qtype == gguf.GGMLQuantizationType.F32:
        return values
    return gguf.quants.quantize(values, qtype)


def write_tiny_gguf(path: Path, arch: str, seed: int = 0) -> Path:
    """A tiny `llama` (GQA, permuted q/k, attn_q Q8_0, attn_output Q4_1) or `gemma3` (attn_q Q5_0,
    attn_output Q4_K) GGUF file at `path`."""
    import gguf

    Q = gguf.GGMLQuantizationType
    rng = np.random.default_rng(seed)
    hidden, n_head, n_kv, ff = 64, 4, 2, 64
    # Gemma: 256 = transformers' default query_pre_attn_scalar, llama.cpp's 1/sqrt(head_dim)
    head_dim = 16 if arch == "llama" else 256
    types = ({"attn_q": Q.Q8_0, "attn_k": Q.Q5_1, "attn_v": Q.Q8_0, "attn_output": Q.Q4_1, "ffn": Q.Q4_0}
             if arch == "llama" else
             {"attn_q": Q.Q5_0, "attn_k": Q.Q4_0, "attn_v": Q.Q8_0, "attn_output": Q.Q4_K, "ffn": Q.Q8_0})
    writer = gguf.GGUFWriter(path, arch)
    writer.add_name(f"tiny-{arch}")
    writer.add_context_length(128)
    writer.add_embedding_length(hidden)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_rope_freq_base(10000.0)
    if arch == "llama":
        writer.add_rope_dimension_count(head_dim)
        writer.add_vocab_size(VOCAB)
    else:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
        writer.add_sliding_window(64)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(_bytes_alphabet())
    writer.add_token_types([gguf.TokenType.NORMAL] * VOCAB)
    writer.add_token_scores([0.0] * VOCAB)
    writer.add_token_merges(["a b"])  # llama.cpp refuses a BPE vocabulary without merges
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_chat_template("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}")

    norm = 1.0  # llama's γ and Gemma's stored 1 + w are both near one
    tensors: list[tuple[str, tuple[int, ...], object, float]] = [("token_embd.weight", (VOCAB, hidden), Q.F16, 0.0)]
    for i in range(LAYERS):
        b = f"blk.{i}"
        tensors += [
            (f"{b}.attn_norm.weight", (hidden,), Q.F32, norm),
            (f"{b}.attn_q.weight", (n_head * head_dim, hidden), types["attn_q"], 0.0),
            (f"{b}.attn_k.weight", (n_kv * head_dim, hidden), types["attn_k"], 0.0),
            (f"{b}.attn_v.weight", (n_kv * head_dim, hidden), types["attn_v"], 0.0),
            (f"{b}.attn_output.weight", (hidden, n_head * head_dim), types["attn_output"], 0.0),
            (f"{b}.ffn_gate.weight", (ff, hidden), types["ffn"], 0.0),
            (f"{b}.ffn_up.weight", (ff, hidden), types["ffn"], 0.0),
            (f"{b}.ffn_down.weight", (hidden, ff), types["ffn"], 0.0),
            (f"{b}.ffn_norm.weight", (hidden,), Q.F32, norm),
        ]
        if arch == "gemma3":
            tensors += [
                (f"{b}.attn_q_norm.weight", (head_dim,), Q.F32, norm),
                (f"{b}.attn_k_norm.weight", (head_dim,), Q.F32, norm),
                (f"{b}.post_attention_norm.weight", (hidden,), Q.F32, norm),
                (f"{b}.post_ffw_norm.weight", (hidden,), Q.F32, norm),
            ]
    tensors.append(("output_norm.weight", (hidden,), Q.F32, norm))
    if arch == "llama":  # Gemma ties the output projection to the embedding
        tensors.append(("output.weight", (VOCAB, hidden), Q.Q8_0, 0.0))
    for name, shape, qtype, centre in tensors:
        if qtype == Q.F16:
            writer.add_tensor(name, (centre + 0.08 * rng.standard_normal(shape)).astype(np.float16))
        else:
            writer.add_tensor(name, _tensor(rng, shape, qtype, centre), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
