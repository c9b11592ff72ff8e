"""How llama.cpp's GGUF files lay out the attention weights th-edit edits, per GGUF architecture name
(family knowledge, so it lives here; th_edit.gguf_export reads it)."""

from __future__ import annotations

# GGUF architectures whose files th-edit can patch, and whether their q/k rows are stored in
# llama.cpp's interleaved rotary order (convert_hf_to_gguf permutes q/k for these only).
PATCHABLE_ARCHS: dict[str, bool] = {"llama": True, "gemma3": False, "qwen2": False, "qwen3": False}
