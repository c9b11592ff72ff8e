"""Tiny random models of every supported family, built from configs (no files, no downloads).

Every parameter is randomized, norm weights and biases included, so that folding mistakes
(a missing (1+w), a dropped LayerNorm bias, a wrong GQA group) cannot hide behind ones and zeros.
"""

from __future__ import annotations

import torch
from transformers import (
    AutoModelForCausalLM,
    Cohere2Config,
    CohereConfig,
    Gemma2Config,
    Gemma3TextConfig,
    GPT2Config,
    GPTNeoXConfig,
    GraniteConfig,
    LlamaConfig,
    MistralConfig,
    MixtralConfig,
    Olmo2Config,
    OlmoConfig,
    OlmoeConfig,
    Phi3Config,
    Qwen2Config,
    Qwen2MoeConfig,
    Qwen3Config,
    Qwen3MoeConfig,
    SmolLM3Config,
)

VOCAB = 101


def _configs() -> dict[str, object]:
    common = dict(vocab_size=VOCAB, num_hidden_layers=3, intermediate_size=96, max_position_embeddings=128)
    return {
        "gpt2": GPT2Config(n_embd=48, n_layer=3, n_head=4, vocab_size=VOCAB, n_positions=128),
        "gpt_neox": GPTNeoXConfig(
            hidden_size=48, num_attention_heads=4, use_parallel_residual=True,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25}, **common,
        ),
        "llama": LlamaConfig(hidden_size=48, num_attention_heads=6, num_key_value_heads=2, **common),
        "mistral": MistralConfig(hidden_size=48, num_attention_heads=4, num_key_value_heads=4, sliding_window=None, **common),
        "qwen2": Qwen2Config(hidden_size=48, num_attention_heads=4, num_key_value_heads=2, **common),
        "qwen3": Qwen3Config(hidden_size=48, num_attention_heads=4, num_key_value_heads=2, head_dim=16, **common),
        "gemma3_text": Gemma3TextConfig(
            hidden_size=48, num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=4,
            query_pre_attn_scalar=16, **common,
        ),
        # mixture-of-experts: 4 experts, 2 per token (the experts are random like everything else)
        "mixtral": MixtralConfig(hidden_size=48, num_attention_heads=4, num_key_value_heads=2, num_local_experts=4,
                                 num_experts_per_tok=2, **common),
        "qwen2_moe": Qwen2MoeConfig(hidden_size=48, num_attention_heads=4, num_key_value_heads=2, num_experts=4,
                                    num_experts_per_tok=2, moe_intermediate_size=32, shared_expert_intermediate_size=40,
                                    **common),
        "qwen3_moe": Qwen3MoeConfig(hidden_size=48, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                    num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, **common),
        "olmoe": OlmoeConfig(hidden_size=48, num_attention_heads=4, num_key_value_heads=2, num_experts=4,
                             num_experts_per_tok=2, **common),
        "smollm3": SmolLM3Config(hidden_size=48, num_attention_heads=4, num_key_value_heads=2,
                                 no_rope_layers=[1, 1, 0], pad_token_id=0, **common),
        "granite": GraniteConfig(hidden_size=48, num_attention_heads=4, num_key_value_heads=2, attention_multiplier=0.3,
                                 residual_multiplier=0.7, embedding_multiplier=3.0, logits_scaling=2.0, **common),
        "phi3": Phi3Config(hidden_size=48, num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, **common),
        "gemma2": Gemma2Config(hidden_size=48, num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=4,
                               query_pre_attn_scalar=24, attn_logit_softcapping=2.0, final_logit_softcapping=5.0,
                               **common),
        "olmo": OlmoConfig(hidden_size=48, num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, **common),
        "olmo2": Olmo2Config(hidden_size=48, num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, **common),
        "cohere": CohereConfig(hidden_size=48, num_attention_heads=4, num_key_value_heads=2, use_qk_norm=True,
                               logit_scale=0.5, pad_token_id=0, **common),
        "cohere2": Cohere2Config(hidden_size=48, num_attention_heads=4, num_key_value_heads=2, sliding_window=4,
                                 logit_scale=0.5, pad_token_id=0, **common),
    } | _configs_phi_to_opt(common)


# ---- Phi-1/2, StableLM, GPT-J, Falcon, OPT: each with its options that change the layout turned on
# (biases, GQA, per-head QK LayerNorms, Falcon's grouped fused q/k/v); tests/test_arch_exactness.py
# covers the other layouts of each.


def _configs_phi_to_opt(common: dict) -> dict[str, object]:
    from transformers import FalconConfig, GPTJConfig, OPTConfig, PhiConfig, StableLmConfig

    def rope(fraction: float) -> dict:
        return {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": fraction}

    sizes = dict(vocab_size=VOCAB, num_hidden_layers=3, hidden_size=48, num_attention_heads=4, max_position_embeddings=128)
    return {
        "phi": PhiConfig(hidden_size=48, num_attention_heads=4, num_key_value_heads=2, rope_parameters=rope(0.5), **common),
        "stablelm": StableLmConfig(
            hidden_size=48, num_attention_heads=4, num_key_value_heads=2, use_qkv_bias=True, qk_layernorm=True,
            use_parallel_residual=False, rope_parameters=rope(0.5), **common,
        ),
        "gptj": GPTJConfig(n_embd=48, n_layer=3, n_head=4, rotary_dim=6, vocab_size=VOCAB, n_positions=128,
                           bos_token_id=None, eos_token_id=None),
        "falcon": FalconConfig(new_decoder_architecture=True, num_kv_heads=2, bias=True, ffn_hidden_size=96, **sizes),
        "opt": OPTConfig(ffn_dim=96, word_embed_proj_dim=48, enable_bias=True, **sizes),
    }


FAMILIES = tuple(_configs())


def tiny_config(model_type: str, **overrides):
    config = _configs()[model_type]
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def tiny_model(model_type: str, seed: int = 0, attn_implementation: str = "eager", **overrides):
    config = tiny_config(model_type, **overrides)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation, dtype=torch.float32)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name or name.split(".")[-2].startswith("ln"):
                if name.endswith("weight"):
                    # Gemma stores γ and uses (1 + γ); others use γ directly.
                    centre = 0.0 if model_type.startswith("gemma") else 1.0
                    param.copy_(centre + 0.5 * (torch.rand(param.shape, generator=generator) - 0.5) * 2)
                else:
                    param.copy_(0.3 * torch.randn(param.shape, generator=generator))
            else:
                param.copy_(0.08 * torch.randn(param.shape, generator=generator))
    model.eval()
    return model


# ----------------------------------------------------------------------------------------------
# A tiny checkpoint with a real (word-level) tokenizer, for API and benchmark tests


def word_tokenizer():
    """A fast tokenizer in which every word of th-edit's task texts is one token (with or without
    its leading space), with BOS/EOS/PAD and a simple chat template."""
    import re

    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from th_edit.tasks.ioi import NAMES, TEMPLATES
    from th_edit.tasks.laundry import FRAMES
    from th_edit.tasks.neutral import neutral_chats, neutral_prompts

    texts = [f.text for f in FRAMES] + [w for f in FRAMES for w in f.lexicon] + list(TEMPLATES) + list(NAMES)
    texts += neutral_prompts() + [m["content"] for chat in neutral_chats() for m in chat] + ["a an the my user assistant :"]
    words = sorted({w for text in texts for w in re.findall(r"\w+|[^\w\s]+", text)})
    specials = ["[PAD]", "[UNK]", "[BOS]", "[EOS]"]
    vocab = {token: i for i, token in enumerate(specials + words)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]",
                                        bos_token="[BOS]", eos_token="[EOS]")
    tokenizer.chat_template = "{% for m in messages %}[BOS] {{ m['role'] }} : {{ m['content'] }} [EOS] {% endfor %}"
    return tokenizer


def tiny_checkpoint(path, model_type: str = "llama", seed: int = 0, dtype=torch.float32, **overrides):
    """Save a tiny random model of `model_type` with the word tokenizer at `path`; returns `path`."""
    tokenizer = word_tokenizer()
    model = tiny_model(model_type, seed=seed, vocab_size=len(tokenizer), **overrides)
    model.to(dtype).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path

