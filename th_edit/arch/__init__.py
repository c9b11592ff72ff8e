"""Architecture adapters: all per-family knowledge of th-edit lives in this package.

Families are data (families.py: one FamilySpec each, spec.py) read by one adapter class
(family.py); code exists only where a family's math differs."""

from __future__ import annotations

from th_edit.arch.base import Adapter, ArchInfo, LayerWeights, NormSpec, Slot
from th_edit.arch.families import ADAPTERS
from th_edit.errors import UserError

SUPPORTED_MODEL_TYPES = tuple(t for adapter in ADAPTERS for t in adapter.model_types)


def adapter_for(config) -> Adapter:
    return adapter_class(getattr(config, "model_type", None))(config)


def adapter_class(model_type: object) -> type[Adapter]:
    for adapter in ADAPTERS:
        if model_type in adapter.model_types:
            return adapter
    raise unsupported_architecture(model_type)


def unsupported_architecture(model_type: object) -> UserError:
    return UserError(
        f"unsupported architecture: model_type '{model_type}'; supported model_types: {', '.join(SUPPORTED_MODEL_TYPES)}"
    )


__all__ = ["ADAPTERS", "SUPPORTED_MODEL_TYPES", "Adapter", "ArchInfo", "LayerWeights", "NormSpec", "Slot", "adapter_class",
           "adapter_for", "unsupported_architecture"]
