"""Side files that transformers 4.x (>= 4.50) and 5.x read the same way.

transformers 5 writes config.json and tokenizer_config.json in spellings 4.x does not know, and
4.x does not fail on them: it ignores `rope_parameters` and silently uses its default rope_theta
(10000 where SmolLM2 has 100000), and it has no `TokenizersBackend` class. 5.x still reads the
4.x spellings, so an exported checkpoint carries both, derived from the 5.x values (which stay
authoritative and unchanged). Loading-time leftovers (the GGUF model name, float32-rounded
constants, machine-local loader flags) are dropped on the way.

Pure functions on parsed JSON, and `portable_file` that applies them to the bytes of a file.
Per-family spellings live in th_edit/arch (Adapter.legacy_config_keys).
"""

from __future__ import annotations

import math
import struct

from th_edit import strict_json
from th_edit.arch import SUPPORTED_MODEL_TYPES, adapter_class
from th_edit.errors import UserError
from th_edit.readers import parse_json

# Written by the loader about the load, not about the model: a name or path of the machine that
# produced the file (transformers' `_name_or_path`; the GGUF reader's `_model_name_or_path`, e.g.
# "Smollm2 135M 8k Lc100K Mix1 Ep2") or how it was loaded.
LOADER_CONFIG_KEYS = ("_name_or_path", "_model_name_or_path", "_commit_hash")
LOADER_TOKENIZER_KEYS = ("name_or_path", "is_local", "local_files_only")
# transformers 5's generic tokenizer class, reading tokenizer.json as it is; 4.x calls the same
# thing PreTrainedTokenizerFast (5.x keeps that name as an alias of TokenizersBackend).
GENERIC_TOKENIZER = {"TokenizersBackend": "PreTrainedTokenizerFast"}
# TokenizersBackend returns these; 4.x's PreTrainedTokenizerFast adds token_type_ids, which
# decoder-only models reject in generate().
GENERIC_MODEL_INPUTS = ["input_ids", "attention_mask"]


def portable_config(config: dict) -> dict:
    """config.json as both transformers 4.x and 5.x read it (a new dict; `config` is unchanged)."""
    out = {key: shortest_float32(value) for key, value in config.items() if key not in LOADER_CONFIG_KEYS}
    model_type = out.get("model_type")
    if model_type in SUPPORTED_MODEL_TYPES:
        out.update(adapter_class(model_type).legacy_config_keys(out))
    if "dtype" in out:  # 4.50-4.55 read torch_dtype only
        out["torch_dtype"] = out["dtype"]
    return out


def portable_tokenizer_config(tokenizer_config: dict) -> dict:
    """tokenizer_config.json as both transformers 4.x and 5.x read it (a new dict)."""
    out = {key: value for key, value in tokenizer_config.items() if key not in LOADER_TOKENIZER_KEYS}
    name = out.get("tokenizer_class")
    if name in GENERIC_TOKENIZER:
        out["tokenizer_class"] = GENERIC_TOKENIZER[name]
        out.setdefault("model_input_names", list(GENERIC_MODEL_INPUTS))
    return out


def shortest_float32(value: object) -> object:
    """A float that is exactly a float32 (what GGUF stores: 9.999999747378752e-06) becomes the
    shortest decimal that rounds to the same float32 (1e-05); anything else is returned as is.
    The model computes these constants in float32 or lower, so the value it uses is unchanged."""
    if isinstance(value, dict):
        return {key: shortest_float32(item) for key, item in value.items()}
    if isinstance(value, list):
        return [shortest_float32(item) for item in value]
    if not isinstance(value, float) or not math.isfinite(value) or _float32(value) != value:
        return value
    for digits in range(1, 10):  # 9 significant digits always round-trip a float32
        short = float(f"{value:.{digits}g}")
        if _float32(short) == value:
            return short if len(repr(short)) < len(repr(value)) else value
    return value


def _float32(value: float) -> float:
    try:
        return struct.unpack("<f", struct.pack("<f", value))[0]
    except OverflowError:  # beyond float32's range: cannot be a float32 value
        return math.nan


def portable_file(name: str, data: bytes) -> bytes:
    """config.json and tokenizer_config.json rewritten as both transformers 4.x and 5.x read them;
    any other file unchanged."""
    convert = {"config.json": portable_config, "tokenizer_config.json": portable_tokenizer_config}.get(name)
    if convert is None:
        return data
    document = parse_json(data, f"the base model's {name}")
    if not isinstance(document, dict):
        raise UserError(f"the base model's {name} is not a JSON object")
    return (base_json(name, convert(document)) + "\n").encode("utf-8")


def base_json(name: str, document: object) -> str:
    """A base model's JSON file `name` written back: a NaN or Infinity in it is refused, not
    turned into null (it is damage to the base, not a number th-edit could not compute)."""
    try:
        return strict_json.dumps(document, non_finite="refuse", indent=2, sort_keys=True, ensure_ascii=False)
    except ValueError:
        raise UserError(f"the base model's {name} contains NaN or Infinity, which is not JSON") from None
