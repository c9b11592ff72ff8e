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
    return _finish(writer, tensors, rng, path)


# --- one tiny GGUF per family transformers' GGUF reader supports ---------------------------------------------
# Tensor names come from gguf's own tables (MODEL_TENSORS / TENSOR_NAMES); shapes are numpy (rows, cols), the
# reverse of GGUF's dims, as llama.cpp's converter writes them.
FAMILY_ARCHS = ("qwen2", "qwen3", "qwen2moe", "qwen3moe", "phi3", "gemma2", "stablelm", "gpt2", "falcon")
EXPERTS = 4


def _family_tensors(arch, hidden: int, n_head: int, n_kv: int, head_dim: int, ff: int, ctx: int, expert_ff: int,
                    shared_ff: int):
    """(MODEL_TENSOR, shape, centre) for every tensor of `arch` that the tiny model has."""
    import gguf

    T = gguf.MODEL_TENSOR
    q, kv = n_head * head_dim, n_kv * head_dim
    shapes = {
        T.TOKEN_EMBD: (VOCAB, hidden), T.POS_EMBD: (ctx, hidden), T.OUTPUT_NORM: (hidden,), T.OUTPUT: (VOCAB, hidden),
        T.ATTN_NORM: (hidden,), T.ATTN_Q: (q, hidden), T.ATTN_K: (kv, hidden), T.ATTN_V: (kv, hidden),
        T.ATTN_QKV: (q + 2 * kv, hidden), T.ATTN_OUT: (hidden, q), T.ATTN_Q_NORM: (head_dim,), T.ATTN_K_NORM: (head_dim,),
        T.FFN_NORM: (hidden,), T.FFN_GATE: (ff, hidden), T.FFN_UP: (ff, hidden), T.FFN_DOWN: (hidden, ff),
        T.ATTN_POST_NORM: (hidden,), T.FFN_PRE_NORM: (hidden,), T.FFN_POST_NORM: (hidden,), T.FFN_GATE_INP: (EXPERTS, hidden),
        T.FFN_GATE_EXP: (EXPERTS, expert_ff, hidden), T.FFN_UP_EXP: (EXPERTS, expert_ff, hidden),
        T.FFN_DOWN_EXP: (EXPERTS, hidden, expert_ff), T.FFN_GATE_INP_SHEXP: (hidden,), T.FFN_GATE_SHEXP: (shared_ff, hidden),
        T.FFN_UP_SHEXP: (shared_ff, hidden), T.FFN_DOWN_SHEXP: (hidden, shared_ff),
    }
    name = gguf.MODEL_ARCH_NAMES[arch]
    moe = name in ("qwen2moe", "qwen3moe")  # llama's table lists experts too, but a Mistral GGUF has none
    skip = {T.ATTN_ROT_EMBD, T.ROPE_FREQS, T.ROPE_FACTORS_LONG, T.ROPE_FACTORS_SHORT}
    if moe:  # experts replace the dense MLP
        skip |= {T.FFN_GATE, T.FFN_UP, T.FFN_DOWN}
    if name == "phi3":  # fused q/k/v and gate/up, as llama.cpp's converter writes Phi-3
        skip |= {T.ATTN_Q, T.ATTN_K, T.ATTN_V, T.FFN_GATE}
        shapes[T.FFN_UP] = (2 * ff, hidden)
    elif name == "stablelm":  # StableLM 2: separate q/k/v; no q/k norms
        skip |= {T.ATTN_QKV, T.ATTN_Q_NORM, T.ATTN_K_NORM}
    elif name == "gpt2":
        skip |= {T.ATTN_Q, T.ATTN_K, T.ATTN_V}
    elif name == "falcon":  # Falcon-7B's layout: multi-query, one LayerNorm, tied output (transformers ties it)
        skip |= {T.ATTN_NORM_2, T.OUTPUT}
    norms = {T.OUTPUT_NORM, T.ATTN_NORM, T.FFN_NORM, T.ATTN_Q_NORM, T.ATTN_K_NORM, T.ATTN_POST_NORM, T.FFN_PRE_NORM,
             T.FFN_POST_NORM}
    for kind in gguf.MODEL_TENSORS[arch]:
        if kind in shapes and kind not in skip:
            yield kind, shapes[kind], 1.0 if kind in norms else 0.0


def write_tiny_family_gguf(path: Path, arch_name: str, seed: int = 0) -> Path:
    """A tiny GGUF of llama.cpp architecture `arch_name` (one of FAMILY_ARCHS, or "mistral":
    llama.cpp's layout of a Mistral model, which transformers cannot read with the installed gguf package):
    F32 norms and biases, F16 embeddings, attention q (or the fused qkv) in Q8_0, everything else F16."""
    import gguf


    Q = gguf.GGMLQuantizationType
    # Mistral GGUFs are llama.cpp's `llama` architecture; transformers tells them apart by a general.name of
    # exactly "mistral"
    gguf_name = "llama" if arch_name == "mistral" else arch_name
    arch = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == gguf_name)
    rng = np.random.default_rng(seed)
    layer_norm = arch_name in ("stablelm", "gpt2", "falcon")  # LayerNorm families: norms carry biases
    hidden, n_head, ff, ctx = 64, 4, 64, 128
    if arch_name == "gpt2":  # transformers' reader maps neither n_positions nor n_inner: GPT-2's defaults
        ff, ctx = 4 * hidden, 1024
    if arch_name == "falcon":  # nor Falcon's ffn_hidden_size
        ff = 4 * hidden
    n_kv = {"gpt2": n_head, "phi3": n_head, "falcon": 1}.get(arch_name, 2)
    # transformers' reader maps no head_dim for qwen3 nor the expert widths: those configs' defaults
    head_dim = {"gemma2": 32, "qwen3": 128}.get(arch_name, 16)
    expert_ff, shared_ff = {"qwen2moe": (1408, 5632), "qwen3moe": (768, 0)}.get(arch_name, (ff, ff))
    writer = gguf.GGUFWriter(path, gguf_name)
    writer.add_name("mistral" if arch_name == "mistral" else f"tiny-{arch_name}")
    writer.add_context_length(ctx)
    writer.add_embedding_length(hidden)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    if layer_norm:
        writer.add_layer_norm_eps(1e-5)
    else:
        writer.add_layer_norm_rms_eps(1e-6)
    if arch_name not in ("gpt2", "falcon"):
        writer.add_rope_freq_base(10000.0)
        writer.add_rope_dimension_count(head_dim // 4 if arch_name == "stablelm" else head_dim)
        writer.add_vocab_size(VOCAB)
    if arch_name in ("gemma2", "qwen3moe"):
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    if arch_name == "gemma2":
        writer.add_sliding_window(64)
    if arch_name in ("qwen2moe", "qwen3moe"):
        writer.add_expert_count(EXPERTS)
        writer.add_expert_used_count(2)
        writer.add_expert_feed_forward_length(expert_ff)
        if arch_name == "qwen2moe":
            writer.add_expert_shared_feed_forward_length(shared_ff)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(_bytes_alphabet())
    writer.add_token_types([gguf.TokenType.NORMAL] * VOCAB)
    writer.add_token_merges(["a b"])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(0)

    tensors = []
    for kind, shape, centre in _family_tensors(arch, hidden, n_head, n_kv, head_dim, ff, ctx, expert_ff, shared_ff):
        template = gguf.TENSOR_NAMES[kind]
        for i in range(LAYERS) if "{bid}" in template else [None]:
            name = template.format(bid=i)
            qtype = Q.Q8_0 if kind in (gguf.MODEL_TENSOR.ATTN_Q, gguf.MODEL_TENSOR.ATTN_QKV) else (
                Q.F32 if len(shape) == 1 else Q.F16)
            tensors.append((f"{name}.weight", shape, qtype, centre))
            has_bias = (layer_norm and len(shape) == 1 and centre == 1.0) or (
                arch_name in ("qwen2", "qwen2moe") and kind in (gguf.MODEL_TENSOR.ATTN_Q, gguf.MODEL_TENSOR.ATTN_K,
                                                                 gguf.MODEL_TENSOR.ATTN_V)) or (
                arch_name == "gpt2" and len(shape) == 2 and kind not in (gguf.MODEL_TENSOR.TOKEN_EMBD,
                                                                         gguf.MODEL_TENSOR.POS_EMBD,
                                                                         gguf.MODEL_TENSOR.OUTPUT))
            if has_bias:
                tensors.append((f"{name}.bias", shape[:1], Q.F32, 0.0))
    return _finish(writer, tensors, rng, path)


def _finish(writer, tensors: list, rng: np.random.Generator, path: Path) -> Path:
    """Add `tensors` ((name, shape, type, centre), random around centre) and write the file."""
    import gguf

    Q = gguf.GGMLQuantizationType
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
