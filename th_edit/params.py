"""Read and write a loaded model's parameters by state-dict name, wherever they live.

A model may sit on a GPU, in bfloat16, or be dispatched by accelerate (`device_map="auto"`) with some
modules offloaded to CPU or disk. Offloaded parameters are on the `meta` device; the real tensor is
in the module hook's weights map and is copied in for each forward pass. Edits must reach that copy,
so reads and writes go through here instead of `model.get_parameter(name)`.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping

import torch


class LiveParameters:
    """A `TensorSource` over a loaded model that can also write parameters back in place.

    `get` returns a detached tensor on the CPU in the parameter's own dtype (no copy when it already
    lives on the CPU: callers must not modify it). `set` casts to the parameter's dtype and device.
    """

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self._params = dict(model.named_parameters(remove_duplicate=False))

    def __contains__(self, name: object) -> bool:
        return name in self._params

    def get(self, name: str) -> torch.Tensor:
        parameter = self._params[name]
        if parameter.device.type == "meta":
            weights, key = _offloaded(self.model, name)
            return weights[key].detach().to("cpu")
        return parameter.detach().to("cpu")

    def dtype(self, name: str) -> torch.dtype:
        return self._params[name].dtype

    def set(self, name: str, value: torch.Tensor) -> None:
        parameter = self._params[name]
        if tuple(value.shape) != tuple(parameter.shape):
            raise ValueError(f"{name}: new value has shape {tuple(value.shape)}, the parameter {tuple(parameter.shape)}")
        with torch.no_grad():
            if parameter.device.type == "meta":
                weights, key = _offloaded(self.model, name)
                _store(weights, key, value.detach().to(device="cpu", dtype=parameter.dtype).clone())
            else:
                parameter.copy_(value.to(parameter.dtype))


def _offloaded(model: torch.nn.Module, name: str) -> tuple[Mapping, str]:
    """The weights map that holds an offloaded parameter, and its key there.

    accelerate attaches an AlignDevicesHook with a prefixed weights map to the offloaded module (or
    to an ancestor that places its submodules): walk up from the parameter's module to find it.
    """
    parts = name.split(".")
    for depth in range(len(parts) - 1, -1, -1):
        module = model.get_submodule(".".join(parts[:depth]))
        for hook in _hooks(getattr(module, "_hf_hook", None)):
            weights = getattr(hook, "weights_map", None)
            key = ".".join(parts[depth:])
            if getattr(hook, "offload", False) and weights is not None and key in weights:
                return weights, key
    raise RuntimeError(f"{name} is on the meta device but no accelerate offload hook holds it")


def _hooks(hook: object) -> list[object]:
    if hook is None:
        return []
    return list(getattr(hook, "hooks", [hook]))  # SequentialHook wraps several


def _store(weights: Mapping, key: str, value: torch.Tensor) -> None:
    """Replace one entry of an accelerate weights map (a PrefixedDataset over a dict or over an
    OffloadedWeightsLoader, whose in-memory `state_dict` takes priority over its disk index)."""
    dataset = getattr(weights, "dataset", weights)
    full_key = getattr(weights, "prefix", "") + key
    target = getattr(dataset, "state_dict", dataset)
    if not isinstance(target, MutableMapping):
        raise RuntimeError(f"cannot write the offloaded parameter {full_key}: its weights map is read-only")
    target[full_key] = value
