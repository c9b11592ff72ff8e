"""Where a model runs: device and dtype choices (CLI `--device/--dtype`, `th_edit.load`)."""

from __future__ import annotations

import torch

from th_edit.errors import UserError

DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "float32", "bfloat16", "float16")


def input_device(model: torch.nn.Module) -> torch.device:
    """Where a batch must be for `model`: its embedding's device. An offloaded embedding (meta)
    means accelerate's hooks move inputs themselves, so the CPU is right."""
    weight = model.get_input_embeddings().weight
    return torch.device("cpu") if weight.device.type == "meta" else weight.device


def placement(device: str, max_memory: dict | None = None, offload_folder: str | None = None) -> dict[str, object]:
    """`from_pretrained` keyword arguments that put the model on `device`.

    "auto" lets accelerate spread the model over the available GPUs, the CPU and, past
    `max_memory`, disk (`offload_folder`); the other choices put the whole model on one device.
    """
    kind = device.split(":", 1)[0]
    if kind not in DEVICES:
        raise UserError(f"unknown device '{device}': choose one of {', '.join(DEVICES)} (or cuda:N)")
    if kind == "auto":
        options: dict[str, object] = {"device_map": "auto"}
        if max_memory:
            options["max_memory"] = max_memory
        if offload_folder:
            options["offload_folder"] = str(offload_folder)
        return options
    if max_memory or offload_folder:
        raise UserError("a memory limit or offload folder needs --device auto (accelerate decides the placement)")
    if kind == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available here (use --device cpu or auto)")
    if kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError("--device mps: the Apple MPS backend is not available here (use --device cpu or auto)")
    return {} if kind == "cpu" else {"device_map": {"": device}}


def torch_dtype(name: str) -> torch.dtype | None:
    """None for "auto" (keep the checkpoint's dtype)."""
    if name not in DTYPES:
        raise UserError(f"unknown dtype '{name}': choose one of {', '.join(DTYPES)}")
    return None if name == "auto" else getattr(torch, name)
